use chrono::TimeZone;

use super::*;
use crate::job::decode;

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).unwrap()
}

fn job(s: &str) -> Job {
    decode(s.as_bytes()).unwrap()
}

#[test]
fn a_job_without_run_at_or_delay_is_due_at_once() {
    let j = job(r#"{"id":"j","step":"s","enqueued_at":1000}"#);
    assert_eq!(j.due(b"", at(500)), Due::Now);
    assert_eq!(j.waiting_since(), Some(at(1000)));
}

#[test]
fn run_at_in_the_future_waits_until_then_and_in_the_past_runs_now() {
    let j = job(r#"{"id":"j","step":"s","run_at":10000}"#);
    let later = Due::Later {
        after: Duration::from_millis(1500),
        payload: None,
    };
    assert_eq!(j.due(b"", at(8500)), later);
    assert_eq!(j.due(b"", at(10000)), Due::Now);
    assert_eq!(j.due(b"", at(99999)), Due::Now);
}

#[test]
fn the_delay_left_is_rounded_up_so_the_job_is_never_early() {
    let j = job(r#"{"id":"j","step":"s","run_at":"1970-01-01T00:00:10Z"}"#);
    let now = Utc.timestamp_micros(8_499_999).unwrap();
    let Due::Later { after, .. } = j.due(b"", now) else {
        panic!("not due yet")
    };
    assert_eq!(after, Duration::from_millis(1501));
}

#[test]
fn delay_ms_counts_from_enqueued_at_and_queue_wait_from_the_due_time() {
    let j = job(r#"{"id":"j","step":"s","enqueued_at":1000,"delay_ms":2000}"#);
    assert_eq!(j.due_at(), Some(at(3000)));
    assert!(matches!(j.due(b"", at(2999)), Due::Later { payload: None, .. }));
    assert_eq!(j.due(b"", at(3000)), Due::Now);
    assert_eq!(j.waiting_since(), Some(at(3000)));
}

#[test]
fn a_run_at_before_the_push_counts_the_wait_from_the_push() {
    let j = job(r#"{"id":"j","step":"s","enqueued_at":5000,"run_at":1000}"#);
    assert_eq!(j.waiting_since(), Some(at(5000)));
}

#[test]
fn delay_ms_without_enqueued_at_stamps_the_first_claim_so_the_delay_does_not_restart() {
    let payload = br#" {"id":"j","step":"s","delay_ms":1500,"input":{"a":[1, 2]}}"#;
    let j = decode(payload).unwrap();
    let Due::Later {
        after,
        payload: Some(stamped),
    } = j.due(payload, at(7000))
    else {
        panic!("a delayed job is stamped")
    };
    assert_eq!(after, Duration::from_millis(1500));
    assert_eq!(
        std::str::from_utf8(&stamped).unwrap(),
        r#" {"enqueued_at":7000,"id":"j","step":"s","delay_ms":1500,"input":{"a":[1, 2]}}"#,
        "the producer's bytes are kept around the new field"
    );
    let again = decode(&stamped).unwrap();
    assert_eq!(again.due_at(), Some(at(8500)));
    assert!(matches!(
        again.due(&stamped, at(8000)),
        Due::Later { payload: None, .. }
    ));
    assert_eq!(again.due(&stamped, at(8500)), Due::Now);
}

#[test]
fn an_explicit_null_enqueued_at_is_replaced_not_repeated() {
    let payload = br#"{"id":"j","step":"s","enqueued_at":null,"delay_ms":10}"#;
    let Due::Later { payload: Some(p), .. } = decode(payload).unwrap().due(payload, at(1)) else {
        panic!("not due yet")
    };
    let v: Value = serde_json::from_slice(&p).unwrap();
    assert_eq!(v["enqueued_at"], 1);
}

#[test]
fn a_zero_delay_is_due_at_once() {
    let payload = br#"{"id":"j","step":"s","delay_ms":0}"#;
    assert_eq!(decode(payload).unwrap().due(payload, at(1)), Due::Now);
}
