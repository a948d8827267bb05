//! Delayed jobs from any producer (`run_at`, `delay_ms` in the envelope): a job claimed before its
//! due time goes to the delayed set without running and without counting an attempt, frees its
//! slot at once, and runs once it is due. On both driver pairs.

#[macro_use]
mod common;

use std::time::Duration;

use chrono::Utc;
use common::TestEnv;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);
const DELAY: Duration = Duration::from_millis(1500);
/// How late a due job may start: the promoter wakes at the due time, so this is scheduling
/// slack on a busy test machine, not a resolution the worker needs.
const SLACK: Duration = Duration::from_secs(2);

on_each_driver!(
    a_job_with_delay_ms_runs_after_its_delay_without_an_extra_attempt_and_frees_its_slot,
    a_retry_of_a_delayed_job_is_not_delayed_again,
    a_run_at_in_the_past_runs_at_once,
    a_run_at_given_as_rfc3339_starts_no_earlier,
    malformed_run_at_and_delay_ms_are_dead_lettered_naming_the_field,
    post_jobs_keeps_delay_ms_and_refuses_it_beside_run_at,
    queue_wait_counts_from_the_due_time_not_from_the_push,
);

async fn metrics(worker: &step_worker::worker::Running) -> String {
    let addr = worker.http_addr.expect("metrics are served");
    common::get(&format!("http://{addr}/metrics")).await.1
}

async fn a_job_with_delay_ms_runs_after_its_delay_without_an_extra_attempt_and_frees_its_slot(env: TestEnv) {
    let worker = env.start(&[("WORKER_CONCURRENCY", "1")]).await;
    let pushed = Utc::now();
    env.push(r#"{"id":"later-1","step":"builtin.noop","delay_ms":1500,"input":{"n":1}}"#)
        .await;
    common::wait_for("the early claim to send the job to the delayed set", WAIT, || async {
        env.delayed_len().await == 1
    })
    .await;
    // One slot: a job pushed after the delayed one can only run if that slot was freed.
    env.push_job("plain-1", "builtin.noop", json!({})).await;
    env.wait_result("plain-1", WAIT).await;
    assert!(
        env.result("later-1").await.is_none(),
        "the delayed job ran before its time"
    );
    let row = env.wait_result("later-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 1));
    assert_eq!(row.output, Some(json!({"n": 1})));
    let waited = (row.started_at.unwrap() - pushed).to_std().unwrap();
    assert!(waited >= DELAY, "started {waited:?} after the push");
    assert!(waited < DELAY + SLACK, "started {waited:?} after the push");
    assert!(
        env.attempts("later-1").await.is_empty(),
        "the early claim is no attempt"
    );
    let text = metrics(&worker).await;
    let count = |outcome: &str| {
        common::metric(
            &text,
            &format!(r#"step_worker_jobs_total{{outcome="{outcome}",step="builtin.noop"}}"#),
        )
    };
    assert_eq!(count("succeeded"), Some(2.0));
    assert_eq!(count("delayed"), Some(1.0));
    common::wait_for("the queue to drain", WAIT, || async { env.in_flight_len().await == 0 }).await;
    assert_eq!((env.ready_len().await, env.delayed_len().await), (0, 0));
    assert_eq!(env.attempt_counters().await, 0);
    worker.stop().await.unwrap();
}

async fn a_retry_of_a_delayed_job_is_not_delayed_again(env: TestEnv) {
    let worker = env.start(&[("RETRY_BACKOFF_MS", "50")]).await;
    let pushed = Utc::now();
    env.push(r#"{"id":"later-2","step":"builtin.fail","delay_ms":1500,"input":{"times":1}}"#)
        .await;
    let row = env.wait_result("later-2", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 2));
    let attempts = env.attempts("later-2").await;
    assert_eq!(attempts.len(), 1, "one failed attempt, and no row for the early claim");
    assert_eq!((attempts[0].attempt, attempts[0].outcome.as_str()), (1, "failed"));
    assert!((attempts[0].started_at - pushed).to_std().unwrap() >= DELAY);
    // The delay counts from the first claim, stamped into the payload: the retry waits only its
    // backoff, not another delay.
    let gap = (row.started_at.unwrap() - attempts[0].finished_at).to_std().unwrap();
    assert!(gap < DELAY, "the retry waited {gap:?}: the delay started again");
    worker.stop().await.unwrap();
}

async fn a_run_at_in_the_past_runs_at_once(env: TestEnv) {
    let worker = env.start(&[]).await;
    let pushed = Utc::now();
    let run_at = pushed.timestamp_millis() - 60_000;
    env.push(&json!({"id": "past-1", "step": "builtin.noop", "run_at": run_at}).to_string())
        .await;
    let row = env.wait_result("past-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 1));
    let waited = (row.started_at.unwrap() - pushed).to_std().unwrap();
    assert!(waited < Duration::from_secs(1), "a due job waited {waited:?}");
    let text = metrics(&worker).await;
    assert_eq!(
        common::metric(
            &text,
            r#"step_worker_jobs_total{outcome="delayed",step="builtin.noop"}"#
        ),
        None,
        "never sent to the delayed set"
    );
    worker.stop().await.unwrap();
}

async fn a_run_at_given_as_rfc3339_starts_no_earlier(env: TestEnv) {
    let worker = env.start(&[]).await;
    let run_at = Utc::now() + DELAY;
    let stamp = run_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    env.push(&json!({"id": "rfc-1", "step": "builtin.noop", "run_at": stamp}).to_string())
        .await;
    let row = env.wait_result("rfc-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 1));
    let started = row.started_at.unwrap();
    assert!(started >= run_at, "started at {started}, due at {run_at}");
    assert!(
        (started - run_at).to_std().unwrap() < SLACK,
        "started at {started}, due at {run_at}"
    );
    worker.stop().await.unwrap();
}

async fn malformed_run_at_and_delay_ms_are_dead_lettered_naming_the_field(env: TestEnv) {
    let worker = env.start(&[]).await;
    let bad = [
        (
            "bad-run-at",
            json!({"run_at": "next tuesday"}),
            "field `run_at` must be",
        ),
        (
            "bad-run-at-range",
            json!({"run_at": 253_402_300_800_000_i64}),
            "field `run_at` must be",
        ),
        (
            "bad-delay-negative",
            json!({"delay_ms": -1}),
            "field `delay_ms` must be",
        ),
        (
            "bad-delay-fraction",
            json!({"delay_ms": 1.5}),
            "field `delay_ms` must be",
        ),
        (
            "bad-delay-bound",
            json!({"delay_ms": 31_536_000_001_u64}),
            "field `delay_ms` must be",
        ),
        (
            "bad-both",
            json!({"delay_ms": 1, "run_at": 1}),
            "`run_at` and `delay_ms` are exclusive",
        ),
    ];
    for (id, fields, _) in &bad {
        let mut job = json!({"id": id, "step": "builtin.noop"});
        job.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        env.push(&job.to_string()).await;
    }
    env.wait_count("the dead letters", "SELECT count(*) FROM step_dead_letters", 6, WAIT)
        .await;
    let letters = env.dead_letters().await;
    for (id, _, says) in &bad {
        let letter = letters
            .iter()
            .find(|l| l.job_id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no dead letter for {id}"));
        assert_eq!(letter.reason, "invalid_envelope");
        assert_eq!(letter.attempts, 0);
        let error = letter.error.as_deref().unwrap_or_default();
        assert!(error.contains(says), "{id}: {error}");
    }
    assert_eq!(env.delayed_len().await, 0);
    worker.stop().await.unwrap();
}

async fn post_jobs_keeps_delay_ms_and_refuses_it_beside_run_at(env: TestEnv) {
    let worker = env.start(&[]).await;
    let url = format!("http://{}/jobs", worker.http_addr.unwrap());
    let post = |body: serde_json::Value| reqwest::Client::new().post(&url).json(&body).send();
    let both = json!({"id": "post-2", "step": "builtin.noop", "delay_ms": 1, "run_at": 1});
    let refused = post(both).await.unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    assert!(refused.text().await.unwrap().contains("exclusive"));
    let posted = Utc::now();
    let accepted = post(json!({"id": "post-1", "step": "builtin.noop", "delay_ms": 1500}))
        .await
        .unwrap();
    assert_eq!(accepted.status().as_u16(), 202);
    let row = env.wait_result("post-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 1));
    let waited = (row.started_at.unwrap() - posted).to_std().unwrap();
    assert!(
        waited >= DELAY && waited < DELAY + SLACK,
        "started {waited:?} after the request"
    );
    assert!(env.result("post-2").await.is_none());
    worker.stop().await.unwrap();
}

async fn queue_wait_counts_from_the_due_time_not_from_the_push(env: TestEnv) {
    let worker = env.start(&[]).await;
    // Pushed 10 s ago, due 100 ms ago: it waited for a worker 0.1 s, not 10 s.
    let enqueued_at = Utc::now().timestamp_millis() - 10_000;
    let job = json!({"id": "wait-1", "step": "builtin.noop", "enqueued_at": enqueued_at, "delay_ms": 9_900});
    env.push(&job.to_string()).await;
    env.wait_result("wait-1", WAIT).await;
    let text = metrics(&worker).await;
    let count = common::metric(&text, r#"step_worker_queue_wait_seconds_count{step="builtin.noop"}"#);
    let sum = common::metric(&text, r#"step_worker_queue_wait_seconds_sum{step="builtin.noop"}"#).unwrap();
    assert_eq!(count, Some(1.0));
    assert!((0.1..5.0).contains(&sum), "queue wait {sum} s");
    worker.stop().await.unwrap();
}

/// The settle script's `delay` op, next to a `retry` in one call (their ARGV widths differ): it
/// schedules the stamped copy without counting an attempt, and once the worker is reaped its
/// delay is a no-op, as every settle of a job that is no longer its own.
#[tokio::test]
async fn a_delay_settle_counts_no_attempt_and_a_reaped_worker_cannot_move_the_job() {
    use step_worker::queue::{BeatMode, Payload, RedisQueue, SettleOp, Suspects};
    let env = TestEnv::new().await;
    let queue = RedisQueue::connect(&env.redis_url, &env.queue_key).await.unwrap();
    let wid = "delay-host:1:0000cccc";
    let proc = queue.keys().proc(wid);
    let beat = |deadline| queue.heartbeat(wid, deadline, BeatMode::Register, Duration::ZERO);
    beat(Duration::from_secs(30)).await.unwrap();
    env.push(r#"{"id":"d-1","step":"builtin.noop","delay_ms":60000}"#).await;
    env.push(r#"{"id":"r-1","step":"builtin.noop"}"#).await;
    let claimed = queue.claim(wid, &proc, 2, &[], Suspects::Ignore).await.unwrap().jobs;
    let (d, r) = (claimed[0].0.clone(), claimed[1].0.clone());
    let stamped = Payload::from(&br#"{"enqueued_at":1,"id":"d-1","step":"builtin.noop","delay_ms":60000}"#[..]);
    let minute = Duration::from_secs(60);
    // A recovery counted against the claimed bytes: the stamped copy must not leave it behind.
    let interrupts = env.key("interrupts");
    let d_sum = step_worker::queue::sha1_hex(&d);
    let _: () = redis::AsyncCommands::hset(&mut env.redis.clone(), &interrupts, &d_sum, 1)
        .await
        .unwrap();
    let ops = [
        SettleOp::Delay(d.clone(), minute, stamped.clone()),
        SettleOp::Retry(r.clone(), minute),
    ];
    assert_eq!(queue.settle(&proc, &ops).await.unwrap(), [true, true]);
    let mut redis = env.redis.clone();
    let delayed: Vec<Vec<u8>> = redis::AsyncCommands::zrange(&mut redis, env.key("delayed"), 0, -1)
        .await
        .unwrap();
    assert!(delayed.contains(&stamped.to_vec()), "the stamped copy is scheduled");
    assert!(!delayed.contains(&d.to_vec()), "not the claimed bytes");
    assert_eq!(env.attempt_counters().await, 1, "only the retry counted an attempt");
    let left: bool = redis::AsyncCommands::hexists(&mut redis, &interrupts, &d_sum)
        .await
        .unwrap();
    assert!(!left, "the claimed bytes' counters are forgotten");

    // A second job, claimed and then taken from this worker by the reaper.
    env.push(r#"{"id":"d-2","step":"builtin.noop","delay_ms":60000}"#).await;
    let d2 = queue.claim(wid, &proc, 1, &[], Suspects::Ignore).await.unwrap().jobs[0]
        .0
        .clone();
    beat(Duration::from_millis(1)).await.unwrap();
    common::wait_for("the reaper to take the worker's jobs", WAIT, || async {
        queue.reap(wid, Duration::ZERO, 10).await.unwrap().is_some()
    })
    .await;
    let late = [SettleOp::Delay(d2.clone(), minute, d2.clone())];
    assert_eq!(queue.settle(&proc, &late).await.unwrap(), [false]);
    assert_eq!(env.delayed_len().await, 2, "the reaped job was not moved");
    assert_eq!(env.ready_payloads().await, [String::from_utf8(d2.to_vec()).unwrap()]);
}
