//! Each outcome of a job, asserted on what lands in the results store and what is left in the
//! queue. One suite, run twice: on Redis with Postgres, and on the embedded memory queue with
//! SQLite (`QUEUE_DRIVER=memory`), so the two cannot drift apart.

#[macro_use]
mod common;

use std::time::Duration;

use common::TestEnv;
use serde_json::json;
use step_worker::backoff::min_retry_delay;

const WAIT: Duration = Duration::from_secs(20);

on_each_driver!(
    successful_job_is_persisted_once_and_removed_from_the_queue,
    failing_job_is_retried_with_backoff_then_succeeds,
    exhausted_retries_dead_letter_the_job,
    job_max_retries_overrides_the_default,
    permanent_failure_is_dead_lettered_without_retries,
    timed_out_attempt_is_recorded_and_retried,
    panicking_step_is_a_failed_attempt_and_the_worker_lives_on,
    bad_payloads_are_dead_lettered_with_the_reason,
    output_with_nul_characters_is_stored,
    native_handler_registered_by_the_embedding_application_runs,
    a_step_that_blocks_past_its_timeout_is_timed_out_whatever_it_returned,
    a_late_success_never_overwrites_a_dead_result,
    the_largest_max_retries_is_a_job_like_any_other,
);

async fn assert_queue_drained(env: &TestEnv) {
    assert_eq!(env.ready_len().await, 0, "ready list");
    assert_eq!(env.in_flight_len().await, 0, "in-flight lists");
    assert_eq!(env.delayed_len().await, 0, "delayed set");
}

async fn successful_job_is_persisted_once_and_removed_from_the_queue(env: TestEnv) {
    let worker = env.start(&[]).await;
    env.push_job("ok-1", "builtin.noop", json!({"hello": "world"})).await;
    let row = env.wait_result("ok-1", WAIT).await;
    assert_eq!(row.status, "succeeded");
    assert_eq!(row.attempts, 1);
    assert_eq!(row.output, Some(json!({"hello": "world"})));
    assert_eq!(row.worker_id, worker.worker_id);
    common::wait_for("the job to leave the queue", WAIT, || async {
        env.in_flight_len().await == 0
    })
    .await;
    assert_queue_drained(&env).await;
    assert!(env.attempts("ok-1").await.is_empty());
    worker.stop().await.unwrap();
}

async fn failing_job_is_retried_with_backoff_then_succeeds(env: TestEnv) {
    let worker = env.start(&[("RETRY_BACKOFF_MS", "200")]).await;
    env.push_job("retry-1", "builtin.fail", json!({"times": 2, "message": "flaky"}))
        .await;
    let row = env.wait_result("retry-1", WAIT).await;
    assert_eq!(row.status, "succeeded");
    assert_eq!(row.attempts, 3);
    let attempts = env.attempts("retry-1").await;
    assert_eq!(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(), vec![1, 2]);
    assert!(
        attempts
            .iter()
            .all(|a| a.outcome == "failed" && a.error.as_deref() == Some("flaky"))
    );
    // The second attempt started no sooner than the backoff after the first failed.
    let gap = (attempts[1].started_at - attempts[0].finished_at).to_std().unwrap();
    let min = min_retry_delay(1, Duration::from_millis(200), Duration::from_secs(2));
    assert!(gap >= min, "gap {gap:?} shorter than the backoff lower bound {min:?}");
    common::wait_for("queue drained", WAIT, || async { env.in_flight_len().await == 0 }).await;
    assert_queue_drained(&env).await;
    worker.stop().await.unwrap();
}

async fn exhausted_retries_dead_letter_the_job(env: TestEnv) {
    let worker = env.start(&[("MAX_RETRY_ATTEMPTS", "2")]).await;
    env.push_job("exhaust-1", "builtin.fail", json!({"message": "always"}))
        .await;
    let row = env.wait_result("exhaust-1", WAIT).await;
    assert_eq!(row.status, "dead");
    assert_eq!(row.attempts, 3, "1 + MAX_RETRY_ATTEMPTS");
    assert!(row.error.unwrap().contains("retries_exhausted"));
    assert_eq!(env.attempts("exhaust-1").await.len(), 3);
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].job_id.as_deref(), Some("exhaust-1"));
    assert_eq!(letters[0].reason, "retries_exhausted");
    assert_eq!(letters[0].attempts, 3);
    common::wait_for("queue drained", WAIT, || async { env.in_flight_len().await == 0 }).await;
    assert_queue_drained(&env).await;
    assert_eq!(env.attempt_counters().await, 0, "attempt counters are cleaned up");
    worker.stop().await.unwrap();
}

async fn job_max_retries_overrides_the_default(env: TestEnv) {
    let worker = env.start(&[("MAX_RETRY_ATTEMPTS", "5")]).await;
    env.push(r#"{"id":"override-1","step":"builtin.fail","max_retries":0}"#)
        .await;
    let row = env.wait_result("override-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 1));
    worker.stop().await.unwrap();
}

async fn permanent_failure_is_dead_lettered_without_retries(env: TestEnv) {
    let worker = env.start(&[]).await;
    env.push_job(
        "perm-1",
        "builtin.fail",
        json!({"permanent": true, "message": "bad input"}),
    )
    .await;
    let row = env.wait_result("perm-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 1));
    let letters = env.dead_letters().await;
    assert_eq!(letters[0].reason, "permanent_failure");
    assert_eq!(letters[0].error.as_deref(), Some("bad input"));
    worker.stop().await.unwrap();
}

async fn timed_out_attempt_is_recorded_and_retried(env: TestEnv) {
    let worker = env.start(&[]).await;
    env.push(r#"{"id":"slow-1","step":"builtin.sleep","input":{"ms":10000},"timeout_ms":100,"max_retries":1}"#)
        .await;
    let row = env.wait_result("slow-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 2));
    let attempts = env.attempts("slow-1").await;
    assert_eq!(attempts.len(), 2, "the timed-out first attempt was retried");
    for a in &attempts {
        assert_eq!(a.outcome, "timed_out");
        let took = (a.finished_at - a.started_at).to_std().unwrap();
        assert!(
            took < Duration::from_secs(2),
            "the step was cut at its timeout, took {took:?}"
        );
    }
    worker.stop().await.unwrap();
}

async fn panicking_step_is_a_failed_attempt_and_the_worker_lives_on(env: TestEnv) {
    let worker = env.start(&[]).await;
    env.push(r#"{"id":"panic-1","step":"builtin.panic","max_retries":1}"#)
        .await;
    let row = env.wait_result("panic-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 2));
    let attempts = env.attempts("panic-1").await;
    assert!(
        attempts
            .iter()
            .all(|a| a.outcome == "panicked" && a.error.as_deref().unwrap().contains("panicked"))
    );
    env.push_job("after-panic", "builtin.noop", json!(1)).await;
    assert_eq!(env.wait_result("after-panic", WAIT).await.status, "succeeded");
    worker.stop().await.unwrap();
}

async fn bad_payloads_are_dead_lettered_with_the_reason(env: TestEnv) {
    let worker = env.start(&[]).await;
    env.push("{not json").await;
    env.push(r#"{"step":"builtin.noop"}"#).await;
    env.push(r#"{"id":"nostep-1"}"#).await;
    env.push(r#"{"id":"unknown-1","step":"no.such.step"}"#).await;
    env.push("\u{0}\u{1}binary").await;
    env.wait_count("5 dead letters", "SELECT count(*) FROM step_dead_letters", 5, WAIT)
        .await;
    let letters = env.dead_letters().await;
    let find = |needle: &str| {
        letters
            .iter()
            .find(|l| String::from_utf8_lossy(&l.payload).contains(needle))
            .unwrap()
            .clone()
    };
    let invalid = find("{not json");
    assert_eq!(invalid.reason, "invalid_json");
    let no_id = find(r#"{"step":"builtin.noop"}"#);
    assert_eq!(no_id.reason, "invalid_envelope");
    assert!(no_id.error.unwrap().contains("missing required field `id`"));
    let no_step = find("nostep-1");
    assert_eq!(
        (no_step.reason.as_str(), no_step.job_id.as_deref()),
        ("invalid_envelope", Some("nostep-1"))
    );
    assert!(no_step.error.unwrap().contains("`step`"));
    let unknown = find("unknown-1");
    assert_eq!(unknown.reason, "unknown_step");
    assert!(unknown.error.unwrap().contains("no.such.step"));
    // An unknown step is a valid job: it also gets its dead result row. Malformed payloads do
    // not (their id, if any, cannot be trusted to be a job's).
    assert_eq!(env.result("unknown-1").await.unwrap().status, "dead");
    assert!(env.result("nostep-1").await.is_none());
    common::wait_for("queue drained", WAIT, || async { env.in_flight_len().await == 0 }).await;
    assert_queue_drained(&env).await;
    env.push_job("still-alive", "builtin.noop", json!(null)).await;
    assert_eq!(env.wait_result("still-alive", WAIT).await.status, "succeeded");
    worker.stop().await.unwrap();
}

async fn output_with_nul_characters_is_stored(env: TestEnv) {
    let worker = env.start(&[]).await;
    env.push(r#"{"id":"nul-1","step":"builtin.noop","input":{"s":"a\u0000b"}}"#)
        .await;
    let row = env.wait_result("nul-1", WAIT).await;
    assert_eq!(row.status, "succeeded");
    assert_eq!(row.output, Some(json!({"s": "a\u{FFFD}b"})));
    worker.stop().await.unwrap();
}

async fn native_handler_registered_by_the_embedding_application_runs(env: TestEnv) {
    let registry = step_worker::Registry::new().register(
        "math.double",
        |ctx: step_worker::StepContext, input: serde_json::Value| async move {
            Ok(json!({ "double": input["n"].as_i64().unwrap_or(0) * 2, "attempt": ctx.attempt }))
        },
    );
    let worker = env.start_with(&[], registry).await;
    env.push_job("native-1", "math.double", json!({"n": 21})).await;
    let row = env.wait_result("native-1", WAIT).await;
    assert_eq!(row.output, Some(json!({"double": 42, "attempt": 1})));
    worker.stop().await.unwrap();
}

async fn a_step_that_blocks_past_its_timeout_is_timed_out_whatever_it_returned(env: TestEnv) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = runs.clone();
    // Blocks its thread (no await point) on its first run, so the timeout cannot cut it short.
    let registry = step_worker::Registry::new().register(
        "native.block",
        move |_ctx: step_worker::StepContext, _input: serde_json::Value| {
            let first = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move {
                if first {
                    std::thread::sleep(Duration::from_millis(600));
                }
                Ok(json!("returned"))
            }
        },
    );
    // The block stalls this test's one runtime thread, heartbeat included: a deadline well past
    // the block keeps a loaded machine from fencing the worker, which would hand the job back
    // (another fault, tested in the fault suite) instead of recording this attempt.
    // Pushed before the worker starts: the block stalls this runtime, so a push made while it
    // runs could time out at the client after the server took it, and the helper's one retry
    // would queue the job twice (two ids alike run twice: a producer's duplicate, not this fault).
    env.push(r#"{"id":"block-1","step":"native.block","timeout_ms":200,"max_retries":1}"#)
        .await;
    let worker = env.start_with(&[("WORKER_DEADLINE_MS", "10000")], registry).await;
    let row = env.wait_result("block-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 2));
    let attempts = env.attempts("block-1").await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        attempts[0].outcome, "timed_out",
        "it returned Ok, but after its timeout"
    );
    worker.stop().await.unwrap();
}

/// Outside a replay (which deletes the dead row first), a success arriving after a committed
/// `dead` outcome must not turn the row into a success and leave its dead letter live.
async fn a_late_success_never_overwrites_a_dead_result(env: TestEnv) {
    let worker = env.start(&[]).await;
    env.push(r#"{"id":"twice-1","step":"builtin.fail","max_retries":0}"#)
        .await;
    assert_eq!(env.wait_result("twice-1", WAIT).await.status, "dead");
    // The same job id again, as a duplicate delivery or a rescued first run would bring it.
    env.push(r#"{"id":"twice-1","step":"builtin.noop"}"#).await;
    env.push_job("after-twice", "builtin.noop", json!(null)).await;
    env.wait_result("after-twice", WAIT).await;
    common::wait_for("the queue to drain", WAIT, || async { env.in_flight_len().await == 0 }).await;
    let row = env.result("twice-1").await.unwrap();
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("dead", 1),
        "the first outcome stands"
    );
    assert_eq!(env.dead_letters().await.len(), 1);
    worker.stop().await.unwrap();
}

/// `1 + max_retries` overflowed for the largest value: in a debug build a panic outside the
/// step's guard, which left the job in the worker's list with nothing tracking it.
async fn the_largest_max_retries_is_a_job_like_any_other(env: TestEnv) {
    let worker = env.start(&[]).await;
    // The largest value the contract accepts runs; one past anything it accepts (where
    // `1 + max_retries` once overflowed outside the step and stranded the job) is dead-lettered
    // with the range, never stranded.
    env.push(r#"{"id":"huge-1","step":"builtin.noop","max_retries":1000}"#)
        .await;
    env.push(r#"{"id":"huge-2","step":"builtin.noop","max_retries":4294967295}"#)
        .await;
    let row = env.wait_result("huge-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 1));
    common::wait_for("the out-of-range job's dead letter", WAIT, || async {
        env.dead_letters().await.iter().any(|d| d.reason == "invalid_envelope")
    })
    .await;
    let letters = env.dead_letters().await;
    let letter = letters.iter().find(|d| d.reason == "invalid_envelope").unwrap();
    assert!(
        letter.error.as_deref().unwrap_or_default().contains("max_retries"),
        "{letter:?}"
    );
    assert_queue_drained(&env).await;
    worker.stop().await.unwrap();
}
