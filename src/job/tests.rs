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
