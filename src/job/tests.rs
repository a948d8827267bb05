use super::*;

fn ok(s: &str) -> Job {
    decode(s.as_bytes()).unwrap()
}

fn err(s: &str) -> (DecodeError, Salvage) {
    decode(s.as_bytes()).unwrap_err()
}

#[test]
fn minimal_job_gets_the_documented_defaults() {
    let job = ok(r#"{"id":"j1","step":"builtin.noop"}"#);
    assert_eq!(job.input, Value::Null);
    assert_eq!(job.correlation_id, "j1");
    assert_eq!(job.run_id, None);
    assert!(job.extra.is_empty());
}

#[test]
fn correlation_defaults_to_run_id_and_unknown_fields_are_kept() {
    let job = ok(r#"{"id":"j1","step":"s","run_id":"r9","input":{"a":1},"tenant":"acme"}"#);
    assert_eq!(job.correlation_id, "r9");
    assert_eq!(job.input["a"], 1);
    assert_eq!(job.extra["tenant"], "acme");
}

#[test]
fn enqueued_at_accepts_epoch_millis_and_rfc3339() {
    let a = ok(r#"{"id":"j","step":"s","enqueued_at":1700000000123}"#)
        .enqueued_at
        .unwrap();
    let b = ok(r#"{"id":"j","step":"s","enqueued_at":"2023-11-14T22:13:20.123Z"}"#)
        .enqueued_at
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn overrides_are_parsed() {
    let job = ok(r#"{"id":"j","step":"s","max_retries":0,"timeout_ms":250}"#);
    assert_eq!(job.max_retries, Some(0));
    assert_eq!(job.timeout, Some(Duration::from_millis(250)));
}

#[test]
fn invalid_json_is_reported_as_such() {
    let (e, salvage) = err("{not json");
    assert_eq!(e.reason(), "invalid_json");
    assert!(e.to_string().contains("not valid JSON"));
    assert_eq!(salvage, Salvage::default());
}

#[test]
fn non_object_payload_is_an_invalid_envelope() {
    let (e, _) = err("[1,2]");
    assert_eq!(e.reason(), "invalid_envelope");
    assert!(e.to_string().contains("must be a JSON object, got an array"), "{e}");
}

#[test]
fn missing_id_and_step_are_named() {
    assert!(
        err(r#"{"step":"s"}"#)
            .0
            .to_string()
            .contains("missing required field `id`")
    );
    let (e, salvage) = err(r#"{"id":"j7"}"#);
    assert!(e.to_string().contains("missing required field `step`"), "{e}");
    assert_eq!(salvage.id.as_deref(), Some("j7"));
}

#[test]
fn ids_must_be_short_non_empty_strings() {
    assert!(
        err(r#"{"id":"","step":"s"}"#)
            .0
            .to_string()
            .contains("field `id` must be a string of 1 to 200")
    );
    assert!(err(r#"{"id":42,"step":"s"}"#).0.to_string().contains("got a number"));
    let long = format!(r#"{{"id":"{}","step":"s"}}"#, "x".repeat(201));
    let (e, salvage) = err(&long);
    assert!(e.to_string().contains("a string of 201 characters"), "{e}");
    assert_eq!(salvage.id, None);
}

#[test]
fn wrong_types_of_optional_fields_are_named() {
    assert!(
        err(r#"{"id":"j","step":"s","max_retries":-1}"#)
            .0
            .to_string()
            .contains("`max_retries`")
    );
    assert!(
        err(r#"{"id":"j","step":"s","timeout_ms":0}"#)
            .0
            .to_string()
            .contains("`timeout_ms`")
    );
    assert!(
        err(r#"{"id":"j","step":"s","enqueued_at":"yesterday"}"#)
            .0
            .to_string()
            .contains("`enqueued_at`")
    );
    assert!(
        err(r#"{"id":"j","step":"s","run_id":7}"#)
            .0
            .to_string()
            .contains("`run_id`")
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    for bytes in [&b"\xff\xfe\x00"[..], b"", b"null", b"\"str\"", b"{\"id\":\"\xc3\x28\"}"] {
        assert!(decode(bytes).is_err());
    }
}

#[test]
fn an_id_with_a_nul_character_is_a_bad_envelope() {
    // Postgres text cannot store NUL, so such an id would be filed under a different key and
    // could collide with a real one.
    let (e, salvage) = err(r#"{"id":"a\u0000b","step":"s"}"#);
    assert_eq!(e.reason(), "invalid_envelope");
    assert!(e.to_string().contains("NUL"), "{e}");
    assert_eq!(salvage.id, None);
}

#[test]
fn max_retries_beyond_its_range_is_refused_not_wrapped() {
    // 4294967295 fits u32, so `1 + max_retries` used to wrap to zero attempts.
    for bad in ["4294967295", "4294967296", "1001", "1.5", "-1"] {
        let (e, _) = err(&format!(r#"{{"id":"j","step":"s","max_retries":{bad}}}"#));
        assert_eq!(e.reason(), "invalid_envelope");
        assert!(
            e.to_string()
                .contains("`max_retries` must be an integer from 0 to 1000"),
            "{e}"
        );
    }
    assert_eq!(
        ok(r#"{"id":"j","step":"s","max_retries":1000}"#).max_retries,
        Some(MAX_RETRIES)
    );
}

#[test]
fn timeout_ms_beyond_its_range_is_refused() {
    for bad in ["0", "86400001", "18446744073709551615", "2.5"] {
        let (e, _) = err(&format!(r#"{{"id":"j","step":"s","timeout_ms":{bad}}}"#));
        assert!(
            e.to_string()
                .contains("`timeout_ms` must be an integer from 1 to 86400000"),
            "{e}"
        );
    }
    let job = ok(r#"{"id":"j","step":"s","timeout_ms":86400000}"#);
    assert_eq!(job.timeout, Some(Duration::from_millis(MAX_TIMEOUT_MS)));
}

#[test]
fn the_enqueued_at_range_is_what_rfc3339_can_write() {
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
    assert_eq!(MIN_ENQUEUED_AT_MS, at("0000-01-01T00:00:00Z"));
    assert_eq!(MAX_ENQUEUED_AT_MS, at("9999-12-31T23:59:59.999Z"));
    for edge in [MIN_ENQUEUED_AT_MS, MAX_ENQUEUED_AT_MS] {
        let job = ok(&format!(r#"{{"id":"j","step":"s","enqueued_at":{edge}}}"#));
        assert_eq!(job.enqueued_at.unwrap().timestamp_millis(), edge);
    }
}

#[test]
fn enqueued_at_outside_the_range_is_refused_at_decode() {
    // Postgres refused these only after the step had run, filing the outcome under no id.
    for bad in [
        "-8000000000000000",
        "-62167219200001",
        "253402300800000",
        "9223372036854775807",
        "18446744073709551615",
        "1e300",
        r#""-4714-11-24T00:00:00Z""#,
        r#""9999-12-31T23:00:00-05:00""#,
    ] {
        let (e, salvage) = err(&format!(r#"{{"id":"j","step":"s","enqueued_at":{bad}}}"#));
        assert_eq!(e.reason(), "invalid_envelope", "{bad}");
        assert!(
            e.to_string()
                .contains("from 0000-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"),
            "{e}"
        );
        assert_eq!(salvage.id.as_deref(), Some("j"));
    }
}

#[test]
fn fractional_epoch_millis_are_accepted_to_the_microsecond() {
    // What Python's `time.time() * 1000` produces.
    let job = ok(r#"{"id":"j","step":"s","enqueued_at":1796032109893.725}"#);
    let t = job.enqueued_at.unwrap();
    assert_eq!(t.timestamp_millis(), 1_796_032_109_893);
    assert_eq!(t.timestamp_subsec_micros() % 1000, 725);
    let negative = ok(r#"{"id":"j","step":"s","enqueued_at":-1.5}"#).enqueued_at.unwrap();
    assert_eq!(negative.timestamp_micros(), -1500);
}

#[test]
fn a_traceparent_is_the_jobs_trace_context_not_an_extra_field() {
    let job = ok(
        r#"{"id":"j","step":"s","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"congo=t61rcWkgMzE"}"#,
    );
    let remote = job.trace.expect("a valid traceparent is kept");
    assert_eq!(remote.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(remote.headers().tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
    assert_eq!(job.trace_ignored, None);
    assert!(job.extra.is_empty());
}

#[test]
fn a_malformed_trace_context_is_ignored_and_the_job_still_runs() {
    for bad in [r#""not-a-traceparent""#, "42", r#"{"a":1}"#] {
        let job = ok(&format!(r#"{{"id":"j","step":"s","traceparent":{bad}}}"#));
        assert_eq!(job.trace, None, "{bad}");
        assert!(
            job.trace_ignored.is_some_and(|why| why.contains("traceparent")),
            "{bad}"
        );
    }
}

#[test]
fn run_at_accepts_epoch_millis_and_rfc3339_like_enqueued_at() {
    let a = ok(r#"{"id":"j","step":"s","run_at":1700000000123}"#).run_at;
    let b = ok(r#"{"id":"j","step":"s","run_at":"2023-11-14T22:13:20.123Z"}"#).run_at;
    assert_eq!(a, b);
    assert!(a.is_some());
}

#[test]
fn a_malformed_run_at_is_refused_naming_the_field() {
    for bad in [
        r#""tomorrow""#,
        "true",
        "253402300800000",
        r#""10000-01-01T00:00:00Z""#,
        "[1]",
    ] {
        let (e, salvage) = err(&format!(r#"{{"id":"j","step":"s","run_at":{bad}}}"#));
        assert_eq!(e.reason(), "invalid_envelope");
        assert!(e.to_string().contains("field `run_at` must be"), "{bad}: {e}");
        assert_eq!(salvage.id.as_deref(), Some("j"), "filed under the job's id");
    }
}

#[test]
fn delay_ms_is_an_integer_from_zero_to_a_year() {
    let max = MAX_DELAY_MS;
    assert_eq!(max, 31_536_000_000);
    let job = ok(&format!(r#"{{"id":"j","step":"s","delay_ms":{max}}}"#));
    assert_eq!(job.delay, Some(Duration::from_millis(max)));
    assert_eq!(ok(r#"{"id":"j","step":"s","delay_ms":0}"#).delay, Some(Duration::ZERO));
    let over = max + 1;
    for bad in ["-1", "1.5", r#""1500""#, &over.to_string(), "18446744073709551616"] {
        let (e, _) = err(&format!(r#"{{"id":"j","step":"s","delay_ms":{bad}}}"#));
        assert_eq!(e.reason(), "invalid_envelope");
        assert!(
            e.to_string()
                .contains("field `delay_ms` must be an integer from 0 to 31536000000"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn run_at_and_delay_ms_together_are_refused_naming_both() {
    let (e, _) = err(r#"{"id":"j","step":"s","run_at":1,"delay_ms":1}"#);
    assert_eq!(e.reason(), "invalid_envelope");
    assert!(e.to_string().contains("`run_at` and `delay_ms` are exclusive"), "{e}");
    let nulls = ok(r#"{"id":"j","step":"s","run_at":null,"delay_ms":5}"#);
    assert_eq!((nulls.run_at, nulls.delay), (None, Some(Duration::from_millis(5))));
}

#[test]
fn peek_id_reads_the_id_decode_would_accept_and_nothing_else() {
    let peek = |s: &str| peek_id(s.as_bytes());
    assert_eq!(
        peek(r#"{"step":"s","input":{"id":"inner"},"id":"j\"1"}"#),
        Some("j\"1".to_owned())
    );
    assert_eq!(
        peek(r#"{"id":"j1","step":"s"}"#),
        ok(r#"{"id":"j1","step":"s"}"#).id.into()
    );
    for bad in [
        r#"{"id":""}"#,
        r#"{"id":7}"#,
        r#"{"id":"a\u0000b"}"#,
        r#"{"step":"s"}"#,
        "[1]",
        "not json",
    ] {
        assert_eq!(peek(bad), None, "{bad}");
    }
    assert_eq!(peek(&format!(r#"{{"id":"{}"}}"#, "x".repeat(MAX_ID_LEN + 1))), None);
}
