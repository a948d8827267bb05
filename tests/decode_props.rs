//! Property tests of the envelope parser, `step_worker::job::decode`: whatever the bytes, it
//! returns (never panics), and what it accepts honours the contract.

use proptest::prelude::*;
use serde_json::{Value, json};
use step_worker::job::{
    MAX_ENQUEUED_AT_MS, MAX_ID_LEN, MAX_RETRIES, MAX_STEP_LEN, MAX_TIMEOUT_MS, MIN_ENQUEUED_AT_MS, decode,
};

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        // Short decimals: serde_json (without `float_roundtrip`) may move a long float by an ulp.
        (-1_000_000i64..1_000_000).prop_map(|n| Value::from(n as f64 / 1000.0)),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Envelope-shaped objects whose fields are sometimes right and sometimes anything at all.
fn envelope() -> impl Strategy<Value = Value> {
    let field = |good: BoxedStrategy<Value>| prop_oneof![3 => good, 1 => json_value(), 1 => Just(Value::Null)];
    (
        field("[^\u{0}]{1,210}".prop_map(Value::from).boxed()),
        field("[a-z.]{1,210}".prop_map(Value::from).boxed()),
        json_value(),
        field(prop_oneof![(0u64..10).prop_map(Value::from), any::<u64>().prop_map(Value::from)].boxed()),
        field(
            prop_oneof![
                (1u64..100_000).prop_map(Value::from),
                any::<u64>().prop_map(Value::from)
            ]
            .boxed(),
        ),
        field(
            prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                (-1e15f64..1e15).prop_map(Value::from),
            ]
            .boxed(),
        ),
    )
        .prop_map(|(id, step, input, retries, timeout, enqueued)| {
            json!({"id": id, "step": step, "input": input, "max_retries": retries,
                   "timeout_ms": timeout, "enqueued_at": enqueued, "tenant": "acme"})
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn any_bytes_decode_to_a_job_or_a_reason(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err((e, _)) = decode(&bytes) {
            prop_assert!(["invalid_json", "invalid_envelope"].contains(&e.reason()));
        }
    }

    #[test]
    fn truncated_envelopes_are_rejected(v in envelope(), cut in 0.0f64..1.0) {
        let text = v.to_string();
        let end = ((text.len() as f64) * cut) as usize;
        prop_assert!(decode(&text.as_bytes()[..end]).is_err());
    }

    #[test]
    fn accepted_jobs_honour_the_contract(v in envelope()) {
        let bytes = v.to_string().into_bytes();
        match decode(&bytes) {
            Ok(job) => {
                prop_assert_eq!(Some(job.id.as_str()), v["id"].as_str());
                prop_assert_eq!(Some(job.step.as_str()), v["step"].as_str());
                prop_assert!(!job.id.is_empty() && job.id.chars().count() <= MAX_ID_LEN);
                prop_assert!(!job.id.contains('\0'));
                prop_assert!(job.step.chars().count() <= MAX_STEP_LEN);
                prop_assert_eq!(&job.input, &v["input"]);
                prop_assert_eq!(job.extra.get("tenant"), Some(&json!("acme")));
                // Every number within its documented range: nothing downstream can overflow.
                prop_assert!(job.max_retries.is_none_or(|n| n <= MAX_RETRIES));
                prop_assert!(job.timeout.is_none_or(|t| (1..=MAX_TIMEOUT_MS as u128).contains(&t.as_millis())));
                let in_range = |t: chrono::DateTime<chrono::Utc>| (MIN_ENQUEUED_AT_MS..=MAX_ENQUEUED_AT_MS).contains(&t.timestamp_millis());
                prop_assert!(job.enqueued_at.is_none_or(in_range));
            }
            Err((e, salvage)) => {
                prop_assert_eq!(e.reason(), "invalid_envelope");
                if let Some(id) = salvage.id {
                    prop_assert_eq!(Some(id.as_str()), v["id"].as_str());
                }
            }
        }
    }

    #[test]
    fn well_formed_envelopes_are_accepted(id in "[^\u{0}]{1,200}", step in "[a-z][a-z.]{0,199}", input in json_value()) {
        let bytes = json!({"id": id, "step": step, "input": input}).to_string().into_bytes();
        let job = decode(&bytes).map_err(|(e, _)| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(job.id, id);
        prop_assert_eq!(job.step, step);
        prop_assert_eq!(job.input, input);
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack(depth in 100usize..50_000) {
        let text = format!(r#"{{"id":"d","step":"s","input":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
        let result = decode(text.as_bytes());
        prop_assert_eq!(result.is_ok(), depth < 127);
    }
}
