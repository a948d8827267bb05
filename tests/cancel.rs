//! Cancel (`DELETE /jobs/{id}`, `step-worker cancel`): a job waiting in the queue, the delayed
//! set, a paused step's held list or a limit's waiting list is removed and gets a `cancelled`
//! row; a running job's step sees its cancellation within one heartbeat and ends `cancelled`, not
//! retried; an unknown id is 404, a finished one 409 with its status. Native steps count their
//! calls per job id, so "never ran" is observed where it would happen.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestEnv;
use redis::AsyncCommands;
use serde_json::{Value, json};
use step_worker::handler::StepError;
use step_worker::worker::Running;
use step_worker::{Registry, StepContext};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);
/// Counts its calls and returns at once.
const COUNT: &str = "count.calls";
/// Counts its calls and returns when the test releases it (or its cancellation fires).
/// A job whose input is `{"fail": true}` fails (retryably) when released.
const BLOCK: &str = "block.until.released";
/// The tests' heartbeat (tests/common): a running job's cancellation must fire within one.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// Scheduling slack on a loaded test machine, on top of the heartbeat.
const SLACK: Duration = Duration::from_millis(1500);

on_each_driver!(
    a_queued_job_is_cancelled_and_never_runs,
    a_delayed_job_is_cancelled,
    a_job_waiting_on_a_cap_is_cancelled,
    a_running_job_sees_its_cancellation_within_a_heartbeat_and_is_not_retried,
    unknown_ids_are_404_and_finished_ones_409_with_their_status,
    a_later_copy_of_a_cancelled_id_is_not_run_with_the_duplicate_check,
    a_job_that_fails_before_its_worker_sees_the_cancellation_is_not_retried,
    a_job_handed_back_at_shutdown_after_its_cancellation_does_not_run_again,
);

/// A heartbeat slow enough that a step can end between a cancellation and the beat that would
/// fire it: what happens to the job then is the job's settle's to decide.
const SLOW_BEAT: [(&str, &str); 2] = [("HEARTBEAT_INTERVAL_MS", "3000"), ("WORKER_DEADLINE_MS", "9000")];

/// The steps' calls per job id, whether each saw its cancellation, and the release switch.
#[derive(Clone)]
struct Steps {
    calls: Arc<Mutex<HashMap<String, u32>>>,
    saw_cancel: Arc<Mutex<HashMap<String, Instant>>>,
    release: watch::Sender<bool>,
}

impl Steps {
    fn new() -> Self {
        Steps {
            calls: Arc::default(),
            saw_cancel: Arc::default(),
            release: watch::channel(false).0,
        }
    }

    fn calls(&self, id: &str) -> u32 {
        self.calls.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    fn registry(&self) -> Registry {
        let count = self.calls.clone();
        let (calls, saw, release) = (self.calls.clone(), self.saw_cancel.clone(), self.release.clone());
        Registry::new()
            .register(COUNT, move |ctx: StepContext, _input: Value| {
                *count.lock().unwrap().entry(ctx.job_id.clone()).or_default() += 1;
                async move { Ok::<_, StepError>(json!(null)) }
            })
            .register(BLOCK, move |ctx: StepContext, input: Value| {
                *calls.lock().unwrap().entry(ctx.job_id.clone()).or_default() += 1;
                let (saw, mut released) = (saw.clone(), release.subscribe());
                let fail = input["fail"] == json!(true);
                async move {
                    tokio::select! {
                        _ = released.wait_for(|r| *r) => match fail {
                            true => Err(StepError::retryable("failed when released")),
                            false => Ok(json!("released")),
                        },
                        _ = ctx.cancel.cancelled() => {
                            saw.lock().unwrap().insert(ctx.job_id.clone(), Instant::now());
                            Err(StepError::retryable("stopped by its cancellation"))
                        }
                    }
                }
            })
    }

    async fn start(&self, env: &TestEnv, vars: &[(&str, &str)]) -> Running {
        env.start_with(vars, self.registry()).await
    }

    /// Starts a [`BLOCK`] job and waits until it runs: with one slot, nothing else is claimed.
    async fn occupy_the_slot(&self, env: &TestEnv, id: &str) {
        env.push_job(id, BLOCK, json!({})).await;
        common::wait_for("the blocking step to run", WAIT, || async { self.calls(id) == 1 }).await;
    }
}

async fn delete(worker: &Running, id: &str) -> (u16, Value) {
    let addr = worker.http_addr.expect("the worker serves HTTP");
    let response = reqwest::Client::new()
        .delete(format!("http://{addr}/jobs/{id}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn a_queued_job_is_cancelled_and_never_runs(env: TestEnv) {
    let steps = Steps::new();
    let worker = steps.start(&env, &[("WORKER_CONCURRENCY", "1")]).await;
    steps.occupy_the_slot(&env, "blocker").await;
    env.push(&json!({"id": "queued-1", "step": COUNT, "run_id": "run-9", "input": {}}).to_string())
        .await;
    assert_eq!(env.ready_len().await, 1);
    let (status, body) = delete(&worker, "queued-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["recorded"].as_bool()),
        (Some("cancelled"), Some(true))
    );
    assert_eq!(env.ready_len().await, 0, "removed from the queue");
    let row = env.result("queued-1").await.expect("a cancelled row at once");
    assert_eq!((row.status.as_str(), row.attempts), ("cancelled", 0));
    assert_eq!(row.worker_id, worker.worker_id, "the replica that cancelled it");
    assert!(row.started_at.is_none());
    steps.release.send_replace(true);
    env.wait_result("blocker", WAIT).await;
    common::wait_for("the queue to settle", WAIT, || async { env.in_flight_len().await == 0 }).await;
    assert_eq!(steps.calls("queued-1"), 0, "the cancelled job never ran");
    assert_eq!(env.result("queued-1").await.unwrap().status, "cancelled");
    assert_eq!(env.attempt_counters().await, 0);
    worker.stop().await.unwrap();
}

async fn a_delayed_job_is_cancelled(env: TestEnv) {
    let steps = Steps::new();
    let worker = steps.start(&env, &[]).await;
    env.push(&json!({"id": "later-1", "step": COUNT, "delay_ms": 60_000}).to_string())
        .await;
    common::wait_for("the job to reach the delayed set", WAIT, || async {
        env.delayed_len().await == 1
    })
    .await;
    let (status, body) = delete(&worker, "later-1").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("cancelled")), "{body}");
    assert_eq!(env.delayed_len().await, 0);
    let row = env.result("later-1").await.expect("a cancelled row");
    assert_eq!((row.status.as_str(), row.attempts), ("cancelled", 0));
    assert_eq!(steps.calls("later-1"), 0);
    worker.stop().await.unwrap();
}

async fn a_job_waiting_on_a_cap_is_cancelled(env: TestEnv) {
    let steps = Steps::new();
    let cap = format!("{BLOCK}=1");
    let worker = steps.start(&env, &[("STEP_CONCURRENCY", cap.as_str())]).await;
    steps.occupy_the_slot(&env, "holder").await;
    env.push_job("capped-1", BLOCK, json!({})).await;
    common::wait_for("the second job to wait for the cap's slot", WAIT, || async {
        let depths = worker.queue.depths().await.unwrap();
        depths.waiting.iter().map(|(_, _, n)| n).sum::<u64>() == 1
    })
    .await;
    let (status, body) = delete(&worker, "capped-1").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("cancelled")), "{body}");
    let depths = worker.queue.depths().await.unwrap();
    assert_eq!(depths.waiting.iter().map(|(_, _, n)| n).sum::<u64>(), 0);
    assert_eq!(env.result("capped-1").await.unwrap().status, "cancelled");
    steps.release.send_replace(true);
    env.wait_result("holder", WAIT).await;
    common::wait_for("the slot to be freed", WAIT, || async {
        env.in_flight_len().await == 0
    })
    .await;
    assert_eq!(steps.calls("capped-1"), 0, "the freed slot let nothing cancelled run");
    worker.stop().await.unwrap();
}

async fn a_running_job_sees_its_cancellation_within_a_heartbeat_and_is_not_retried(env: TestEnv) {
    let steps = Steps::new();
    let worker = steps.start(&env, &[("MAX_RETRIES", "5")]).await;
    steps.occupy_the_slot(&env, "running-1").await;
    let asked = Instant::now();
    let (status, body) = delete(&worker, "running-1").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "cancelling");
    assert_eq!(body["worker_id"], worker.worker_id.as_str());
    let row = env.wait_result("running-1", WAIT).await;
    let seen = steps.saw_cancel.lock().unwrap().get("running-1").copied();
    let seen = seen.expect("the step saw ctx.cancel fire") - asked;
    assert!(seen < HEARTBEAT + SLACK, "the step saw its cancellation after {seen:?}");
    assert_eq!((row.status.as_str(), row.attempts), ("cancelled", 1));
    assert!(row.started_at.is_some(), "it ran, and was stopped");
    assert!(row.error.unwrap().contains("while it ran"));
    common::wait_for("the job to be settled", WAIT, || async {
        env.in_flight_len().await == 0
    })
    .await;
    assert_eq!(env.ready_len().await + env.delayed_len().await, 0, "not retried");
    assert_eq!(steps.calls("running-1"), 1);
    assert!(
        env.attempts("running-1").await.is_empty(),
        "a cancellation is no failed attempt"
    );
    if !env.is_memory() {
        let left: i64 = env.redis.clone().hlen(env.key("cancel")).await.unwrap();
        assert_eq!(left, 0, "the job's settle forgot its cancellation");
    }
    let metrics = common::get(&format!("http://{}/metrics", worker.http_addr.unwrap()))
        .await
        .1;
    let cancelled = format!(r#"step_worker_jobs_total{{outcome="cancelled",step="{BLOCK}"}}"#);
    assert_eq!(common::metric(&metrics, &cancelled), Some(1.0));
    // A second request finds it finished, as cancelled.
    let (status, body) = delete(&worker, "running-1").await;
    assert_eq!((status, body["status"].as_str()), (409, Some("cancelled")), "{body}");
    worker.stop().await.unwrap();
}

async fn unknown_ids_are_404_and_finished_ones_409_with_their_status(env: TestEnv) {
    let steps = Steps::new();
    let worker = steps.start(&env, &[]).await;
    let (status, body) = delete(&worker, "never-pushed").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("never-pushed"));
    env.push_job("done-1", COUNT, json!({})).await;
    env.wait_result("done-1", WAIT).await;
    let (status, body) = delete(&worker, "done-1").await;
    assert_eq!((status, body["status"].as_str()), (409, Some("succeeded")), "{body}");
    assert_eq!(
        env.result("done-1").await.unwrap().status,
        "succeeded",
        "the row is unchanged"
    );
    worker.stop().await.unwrap();
}

async fn a_later_copy_of_a_cancelled_id_is_not_run_with_the_duplicate_check(env: TestEnv) {
    let steps = Steps::new();
    let vars = [("WORKER_CONCURRENCY", "1"), ("DUPLICATE_CHECK", "on")];
    let worker = steps.start(&env, &vars).await;
    steps.occupy_the_slot(&env, "blocker").await;
    env.push_job("copy-1", COUNT, json!({})).await;
    assert_eq!(delete(&worker, "copy-1").await.0, 200);
    steps.release.send_replace(true);
    env.push_job("copy-1", COUNT, json!({})).await;
    env.push_job("after-1", COUNT, json!({})).await;
    env.wait_result("after-1", WAIT).await;
    common::wait_for("the copy to be settled", WAIT, || async {
        env.ready_len().await + env.in_flight_len().await == 0
    })
    .await;
    assert_eq!(steps.calls("copy-1"), 0, "the copy of a cancelled id never ran");
    assert_eq!(env.result("copy-1").await.unwrap().status, "cancelled");
    worker.stop().await.unwrap();
}

// Redis only: what needs the CLI (a paused step's held list, `--run`) or a second process.

#[tokio::test]
async fn the_cli_cancels_a_held_job_and_every_job_of_a_run() {
    let env = TestEnv::new().await;
    let steps = Steps::new();
    let worker = steps.start(&env, &[]).await;
    let paused = env.cli(&["pause", "--step", COUNT]).await;
    assert!(paused.status.success(), "{paused:?}");
    common::wait_for("the worker to see the paused step", WAIT, || async {
        let (_, body) = common::get(&format!("http://{}/health", worker.http_addr.unwrap())).await;
        body.contains(COUNT)
    })
    .await;
    env.push(&json!({"id": "held-1", "step": COUNT}).to_string()).await;
    common::wait_for("the job to be held", WAIT, || async {
        env.llen(&env.key(&format!("held:{COUNT}"))).await == 1
    })
    .await;
    let out = env.cli(&["cancel", "held-1"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("held-1: cancelled before it ran"), "{stdout}");
    assert_eq!(env.llen(&env.key(&format!("held:{COUNT}"))).await, 0);
    let row = env.result("held-1").await.expect("a cancelled row");
    assert_eq!(row.status, "cancelled");
    assert!(row.worker_id.starts_with("cli:"), "{}", row.worker_id);
    worker.stop().await.unwrap();

    // No worker now: every job of run-a waits in the queue, and only they go.
    for i in 0..3 {
        env.push(&json!({"id": format!("a-{i}"), "step": COUNT, "run_id": "run-a"}).to_string())
            .await;
    }
    env.push(&json!({"id": "b-0", "step": COUNT, "run_id": "run-b"}).to_string())
        .await;
    let out = env.cli(&["cancel", "--run", "run-a"]).await;
    assert!(out.status.success(), "{out:?}");
    for i in 0..3 {
        assert_eq!(env.result(&format!("a-{i}")).await.unwrap().status, "cancelled");
    }
    assert!(env.result("b-0").await.is_none());
    assert_eq!(env.ready_payloads().await.len(), 1, "run-b's job stays");
    // Ids are producers' text: shown with control characters escaped.
    let odd = "esc\u{1b}[2J-1";
    env.push(&json!({"id": odd, "step": COUNT}).to_string()).await;
    let out = env.cli(&["cancel", odd]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains(r"esc\u{1b}[2J-1: cancelled"), "{stdout}");
    assert!(!stdout.contains('\u{1b}'), "{stdout}");
    // An unknown id and a finished one fail the command and say why; a cancelled one does not.
    let out = env.cli(&["cancel", "a-0", "nobody", "held-1"]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout.contains("a-0: already cancelled"), "{stdout}");
    assert!(stderr.contains("no job \"nobody\""), "{stderr}");
    assert!(stderr.contains("1 of 3"), "{stderr}");
    let out = env.cli(&["cancel"]).await;
    assert_eq!(out.status.code(), Some(2), "ids or --run are required: {out:?}");
}

/// A worker that dies holding a job it was told to cancel: the reaper files the job as
/// cancelled instead of handing it back to the queue.
#[tokio::test]
async fn a_cancelled_job_of_a_dead_worker_is_not_run_again() {
    let env = TestEnv::new().await;
    let steps = Steps::new();
    let (dead, payload) = ("ghost:1:dead", json!({"id": "orphan-1", "step": COUNT}).to_string());
    let migrated = env.cli(&["migrate"]).await;
    assert!(migrated.status.success(), "{migrated:?}");
    let mut redis = env.redis.clone();
    let workers = env.key("workers");
    // Registered, deadline in the past: alive when the cancel reads the registry, dead after.
    let _: i64 = redis.zadd(&workers, dead, 1).await.unwrap();
    let _: i64 = redis.lpush(env.key(&format!("proc:{dead}")), &payload).await.unwrap();
    let out = env.cli(&["cancel", "orphan-1"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("orphan-1: cancelling on worker ghost:1:dead"),
        "{stdout}"
    );
    let worker = steps.start(&env, &[]).await;
    let row = env.wait_result("orphan-1", WAIT).await;
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("cancelled", 1),
        "the attempt it was in counts"
    );
    assert!(row.error.as_deref().unwrap().contains("while a worker held it"));
    assert_eq!(
        row.worker_id, dead,
        "filed by the reaper under the worker it was sent to"
    );
    common::wait_for("the outbox to drain", WAIT, || async {
        env.llen(&env.key("cancelled")).await == 0
    })
    .await;
    assert_eq!(env.ready_len().await, 0);
    assert_eq!(steps.calls("orphan-1"), 0, "never handed back to run");
    let cancel: i64 = redis.hlen(env.key("cancel")).await.unwrap();
    assert_eq!(cancel, 0, "the dead worker's cancellation is forgotten with it");
    worker.stop().await.unwrap();
}

/// A cancellation that reached Redis while the job was in its worker's list, but the job left
/// that list before the worker's heartbeat fired it (a retry, a requeue at shutdown, a paused
/// step, a due time): the worker follows it to where the job went. So does any worker for a
/// cancellation whose worker is gone without a reap (it deregistered at shutdown). Both are set
/// up directly in Redis, as `cancel.lua` leaves them, with each job already handed on to the
/// delayed set.
#[tokio::test]
async fn a_cancellation_follows_a_job_its_worker_handed_on_and_one_whose_worker_is_gone() {
    let env = TestEnv::new().await;
    let steps = Steps::new();
    let worker = steps.start(&env, &[]).await;
    for id in ["handed-on-1", "orphan-1"] {
        env.push(&json!({"id": id, "step": COUNT, "delay_ms": 600_000}).to_string())
            .await;
    }
    common::wait_for("both jobs to wait in the delayed set", WAIT, || async {
        env.delayed_len().await == 2
    })
    .await;
    let mut redis = env.redis.clone();
    let entries = [
        (format!("{}\nhanded-on-1", worker.worker_id), 1),
        ("gone:1:deregistered\norphan-1".to_owned(), 1),
    ];
    let _: () = redis.hset_multiple(env.key("cancel"), &entries).await.unwrap();
    for id in ["handed-on-1", "orphan-1"] {
        let row = env.wait_result(id, WAIT).await;
        assert_eq!((row.status.as_str(), row.attempts), ("cancelled", 0), "{id}");
    }
    common::wait_for("the cancellations to be forgotten", WAIT, || async {
        let n: i64 = redis.clone().hlen(env.key("cancel")).await.unwrap();
        n == 0
    })
    .await;
    assert_eq!(env.delayed_len().await, 0);
    assert_eq!(steps.calls("handed-on-1") + steps.calls("orphan-1"), 0);
    worker.stop().await.unwrap();
}

async fn a_job_that_fails_before_its_worker_sees_the_cancellation_is_not_retried(env: TestEnv) {
    let steps = Steps::new();
    let worker = steps.start(&env, &SLOW_BEAT).await;
    env.push_job("fails-1", BLOCK, json!({"fail": true})).await;
    common::wait_for("the step to run", WAIT, || async { steps.calls("fails-1") == 1 }).await;
    assert_eq!(delete(&worker, "fails-1").await.0, 202);
    // It fails now, long before the next beat could fire its cancellation: its retry goes to the
    // cancelled outbox instead of the delayed set.
    steps.release.send_replace(true);
    let row = env.wait_result("fails-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("cancelled", 1));
    assert!(row.error.unwrap().contains("while a worker held it"));
    assert_eq!(env.attempts("fails-1").await.len(), 1, "its failed attempt is kept");
    assert_eq!(
        env.delayed_len().await + env.ready_len().await,
        0,
        "no retry is scheduled"
    );
    assert_eq!(steps.calls("fails-1"), 1, "never run again");
    assert_eq!(env.attempt_counters().await, 0);
    worker.stop().await.unwrap();
}

async fn a_job_handed_back_at_shutdown_after_its_cancellation_does_not_run_again(env: TestEnv) {
    let steps = Steps::new();
    let mut vars = SLOW_BEAT.to_vec();
    vars.push(("SHUTDOWN_TIMEOUT_MS", "300"));
    let worker = steps.start(&env, &vars).await;
    steps.occupy_the_slot(&env, "shut-1").await;
    assert_eq!(delete(&worker, "shut-1").await.0, 202);
    // Stopped before a beat fired the cancellation: the step is interrupted and handed back.
    worker.stop().await.unwrap();
    assert!(env.result("shut-1").await.is_none());
    assert_eq!(
        env.ready_len().await,
        0,
        "handed back to the cancelled outbox, not the queue"
    );
    let next = steps.start(&env, &[]).await;
    let row = env.wait_result("shut-1", WAIT).await;
    assert_eq!(row.status, "cancelled");
    assert_eq!(steps.calls("shut-1"), 1, "never run again");
    next.stop().await.unwrap();
}

/// Only jobs with a valid id match: a malformed payload of the run stays where it is, for the
/// worker to dead-letter with its reason, instead of vanishing with no record.
#[tokio::test]
async fn malformed_payloads_are_never_removed_by_a_cancel() {
    let env = TestEnv::new().await;
    let migrated = env.cli(&["migrate"]).await;
    assert!(migrated.status.success(), "{migrated:?}");
    let long = "x".repeat(201);
    for id in ["", "nul\\u0000id", long.as_str()] {
        env.push(&format!(r#"{{"id":"{id}","step":"{COUNT}","run_id":"run-m"}}"#))
            .await;
    }
    env.push(&json!({"id": "fine-1", "step": COUNT, "run_id": "run-m"}).to_string())
        .await;
    let out = env.cli(&["cancel", "--run", "run-m"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(env.result("fine-1").await.unwrap().status, "cancelled");
    assert_eq!(env.ready_len().await, 3, "the malformed payloads stay");
    let out = env.cli(&["cancel", &long]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a job id"),
        "{out:?}"
    );
    assert_eq!(env.ready_len().await, 3);
    assert_eq!(env.llen(&env.key("cancelled")).await, 0);
    assert_eq!(env.count("SELECT count(*) FROM step_dead_letters").await, 0);
}

/// A job waiting on a flow limit is found by a canceller configured without that limit (another
/// replica's `DELETE`, an operator's shell), and a big run's outbox is cleared.
#[tokio::test]
async fn a_canceller_without_the_limits_finds_jobs_waiting_on_them_and_clears_a_big_run() {
    let env = TestEnv::new().await;
    let steps = Steps::new();
    let cap = format!("{BLOCK}=1");
    let worker = steps.start(&env, &[("STEP_CONCURRENCY", cap.as_str())]).await;
    steps.occupy_the_slot(&env, "cap-holder").await;
    env.push_job("cap-waiting", BLOCK, json!({})).await;
    let throttled = env.key(&format!("throttled:{BLOCK}"));
    common::wait_for("the job to wait for the cap", WAIT, || async {
        env.llen(&throttled).await == 1
    })
    .await;
    let out = env.cli(&["cancel", "cap-waiting"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(env.llen(&throttled).await, 0);
    assert_eq!(env.result("cap-waiting").await.unwrap().status, "cancelled");
    steps.release.send_replace(true);
    env.wait_result("cap-holder", WAIT).await;
    worker.stop().await.unwrap();

    const BIG: usize = 20_000;
    let mut redis = env.redis.clone();
    let payloads: Vec<String> = (0..BIG)
        .map(|i| json!({"id": format!("big-{i}"), "step": COUNT, "run_id": "run-big"}).to_string())
        .collect();
    for chunk in payloads.chunks(1000) {
        let _: i64 = redis.lpush(&env.queue_key, chunk).await.unwrap();
    }
    let out = env.cli(&["cancel", "--run", "run-big"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "no warning: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.ready_len().await, 0);
    assert_eq!(env.llen(&env.key("cancelled")).await, 0, "the outbox is cleared");
    let rows = env
        .count("SELECT count(*) FROM step_results WHERE status = 'cancelled'")
        .await;
    assert_eq!(rows, BIG as i64 + 1);
}

/// Postgres refuses the row: the job is out of the queue, waits in the outbox, a second request
/// says it is already cancelled, and a heartbeat writes the row once Postgres takes it.
#[tokio::test]
async fn a_row_postgres_refuses_waits_in_the_outbox_and_the_id_counts_as_cancelled() {
    let env = TestEnv::new().await;
    let steps = Steps::new();
    let worker = steps.start(&env, &[]).await;
    for sql in [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON step_results FOR EACH ROW \
         WHEN (NEW.job_id = 'refused-1') EXECUTE FUNCTION refuse()",
    ] {
        sqlx::query(sql).execute(&env.pg).await.unwrap();
    }
    env.push(&json!({"id": "refused-1", "step": COUNT, "delay_ms": 600_000}).to_string())
        .await;
    common::wait_for("the job to be delayed", WAIT, || async { env.delayed_len().await == 1 }).await;
    let (status, body) = delete(&worker, "refused-1").await;
    assert_eq!((status, body["recorded"].as_bool()), (200, Some(false)), "{body}");
    assert_eq!(env.delayed_len().await, 0);
    let (status, body) = delete(&worker, "refused-1").await;
    assert_eq!((status, body["status"].as_str()), (409, Some("cancelled")), "{body}");
    sqlx::query("DROP TRIGGER refuse ON step_results")
        .execute(&env.pg)
        .await
        .unwrap();
    let row = env.wait_result("refused-1", WAIT).await;
    assert_eq!(row.status, "cancelled");
    common::wait_for("the outbox to drain", WAIT, || async {
        env.llen(&env.key("cancelled")).await == 0
    })
    .await;
    assert_eq!(steps.calls("refused-1"), 0);
    worker.stop().await.unwrap();
}
