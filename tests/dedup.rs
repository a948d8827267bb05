//! A finished id never runs again: a copy of a job whose id already has a terminal result is
//! settled without running, without an attempt and without touching its row, and counted as
//! `outcome="duplicate"`; after `dlq replay` the job runs again. A native step counts its calls
//! per job id, so "not run" is observed where it happens, not inferred from the rows.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestEnv;
use redis::AsyncCommands;
use serde_json::json;
use step_worker::handler::StepError;
use step_worker::worker::Running;
use step_worker::{Registry, StepContext};

const WAIT: Duration = Duration::from_secs(20);
const STEP: &str = "count.calls";
/// The check is on by default (`DUPLICATE_CHECK`); every test here says so anyway, so that it
/// keeps testing the check whatever the default.
const ON: (&str, &str) = ("DUPLICATE_CHECK", "on");

on_each_driver!(
    a_copy_pushed_after_its_job_succeeded_is_settled_without_running,
    a_copy_of_a_dead_job_is_not_run,
    two_copies_pushed_together_never_run_at_once_on_two_workers_and_run_once,
    a_running_mark_is_granted_once_released_with_its_job_and_taken_over_from_a_gone_worker,
    with_the_check_off_a_copy_of_a_finished_job_runs_again,
);

/// Calls of [`STEP`] per job id.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<String, u32>>>);

impl Calls {
    fn of(&self, id: &str) -> u32 {
        self.0.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    /// A registry whose [`STEP`] counts its calls, and fails permanently while a job's calls are
    /// at most its input's `fail` (default 0).
    fn registry(&self) -> Registry {
        let calls = self.0.clone();
        Registry::new().register(STEP, move |ctx: StepContext, input: serde_json::Value| {
            let n = {
                let mut calls = calls.lock().unwrap();
                let n = calls.entry(ctx.job_id.clone()).or_default();
                *n += 1;
                *n
            };
            let fail = input["fail"].as_u64().unwrap_or(0);
            async move {
                match u64::from(n) <= fail {
                    true => Err(StepError::permanent(format!("call {n} fails as asked"))),
                    false => Ok(json!({ "call": n })),
                }
            }
        })
    }
}

/// How many copies of a job ran at once, at most, and how often [`SLOW`] ran.
#[derive(Clone, Default)]
struct Overlap(Arc<Mutex<(u32, u32, u32)>>);

const SLOW: &str = "count.slow";

impl Overlap {
    /// (most copies running at once, calls)
    fn seen(&self) -> (u32, u32) {
        let s = self.0.lock().unwrap();
        (s.1, s.2)
    }

    /// A registry whose [`SLOW`] step runs for 500 ms and records how many copies overlap.
    fn registry(&self) -> Registry {
        let state = self.0.clone();
        Registry::new().register(SLOW, move |_: StepContext, _: serde_json::Value| {
            let state = state.clone();
            async move {
                {
                    let mut s = state.lock().unwrap();
                    s.0 += 1;
                    s.1 = s.1.max(s.0);
                    s.2 += 1;
                }
                // The step's own work: long enough that a second copy claimed meanwhile overlaps.
                tokio::time::sleep(Duration::from_millis(500)).await;
                state.lock().unwrap().0 -= 1;
                Ok(json!({}))
            }
        })
    }
}

async fn jobs_total(worker: &Running, outcome: &str) -> Option<f64> {
    jobs_of(worker, STEP, outcome).await
}

async fn jobs_of(worker: &Running, step: &str, outcome: &str) -> Option<f64> {
    let addr = worker.http_addr.expect("metrics are served");
    let text = common::get(&format!("http://{addr}/metrics")).await.1;
    common::metric(
        &text,
        &format!(r#"step_worker_jobs_total{{outcome="{outcome}",step="{step}"}}"#),
    )
}

async fn wait_duplicates(worker: &Running, n: f64) {
    common::wait_for("the copy to be settled as a duplicate", WAIT, || async {
        jobs_total(worker, "duplicate").await == Some(n)
    })
    .await;
}

async fn assert_drained(env: &TestEnv) {
    common::wait_for("the queue to drain", WAIT, || async { env.in_flight_len().await == 0 }).await;
    assert_eq!((env.ready_len().await, env.delayed_len().await), (0, 0));
    assert_eq!(env.attempt_counters().await, 0);
}

async fn a_copy_pushed_after_its_job_succeeded_is_settled_without_running(env: TestEnv) {
    let calls = Calls::default();
    let worker = env.start_with(&[ON], calls.registry()).await;
    // A producer that retries its push sends the same bytes again.
    let payload = json!({"id": "twice-1", "step": STEP, "input": {}}).to_string();
    env.push(&payload).await;
    let first = env.wait_result("twice-1", WAIT).await;
    env.push(&payload).await;
    wait_duplicates(&worker, 1.0).await;
    assert_eq!(calls.of("twice-1"), 1, "the copy ran the step again");
    let row = env.result("twice-1").await.unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 1));
    assert_eq!(row.started_at, first.started_at, "the row was written again");
    assert_eq!(row.output, Some(json!({"call": 1})));
    assert_eq!(jobs_total(&worker, "succeeded").await, Some(1.0));
    assert_drained(&env).await;
    worker.stop().await.unwrap();
}

/// `DUPLICATE_CHECK=off` trusts ids to be unique: a copy runs its step again (its result row
/// keeps the first outcome), and nothing is marked running in Redis.
async fn with_the_check_off_a_copy_of_a_finished_job_runs_again(env: TestEnv) {
    let calls = Calls::default();
    let worker = env.start_with(&[("DUPLICATE_CHECK", "off")], calls.registry()).await;
    let payload = json!({"id": "unchecked-1", "step": STEP, "input": {}}).to_string();
    env.push(&payload).await;
    env.wait_result("unchecked-1", WAIT).await;
    env.push(&payload).await;
    common::wait_for("the copy to run", WAIT, || async { calls.of("unchecked-1") == 2 }).await;
    assert_drained(&env).await;
    assert_eq!(jobs_total(&worker, "duplicate").await, None);
    let row = env.result("unchecked-1").await.unwrap();
    assert_eq!(row.output, Some(json!({"call": 1})), "the first outcome stands");
    if !env.is_memory() {
        let marks: i64 = env.redis.clone().hlen(env.key("active")).await.unwrap();
        assert_eq!(marks, 0);
    }
    worker.stop().await.unwrap();
}

async fn a_copy_of_a_dead_job_is_not_run(env: TestEnv) {
    let calls = Calls::default();
    let worker = env.start_with(&[ON], calls.registry()).await;
    env.push_job("dead-1", STEP, json!({"fail": 1})).await;
    assert_eq!(env.wait_result("dead-1", WAIT).await.status, "dead");
    env.push_job("dead-1", STEP, json!({"fail": 1})).await;
    wait_duplicates(&worker, 1.0).await;
    assert_eq!(calls.of("dead-1"), 1, "the copy ran the step again");
    let row = env.result("dead-1").await.unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 1));
    assert_eq!(env.attempts("dead-1").await.len(), 1, "the copy counted an attempt");
    assert_eq!(env.dead_letters().await.len(), 1, "the copy filed a dead letter");
    assert_drained(&env).await;
    worker.stop().await.unwrap();
}

/// Two replicas, each free to run two steps: a producer's push sent twice lands two copies of one
/// id at once. One copy runs; the other waits in the delayed set while it does, and is then
/// settled as a duplicate.
async fn two_copies_pushed_together_never_run_at_once_on_two_workers_and_run_once(env: TestEnv) {
    let overlap = Overlap::default();
    let vars = [("WORKER_CONCURRENCY", "2"), ON];
    let workers = [
        env.start_with(&vars, overlap.registry()).await,
        env.start_with(&vars, overlap.registry()).await,
    ];
    let payload = json!({"id": "pair-1", "step": SLOW, "input": {}}).to_string();
    env.push(&payload).await;
    env.push(&payload).await;
    let row = env.wait_result("pair-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 1));
    common::wait_for("the second copy to be settled as a duplicate", WAIT, || async {
        let mut n = 0.0;
        for w in &workers {
            n += jobs_of(w, SLOW, "duplicate").await.unwrap_or(0.0);
        }
        n == 1.0
    })
    .await;
    assert_eq!(overlap.seen(), (1, 1), "(copies running at once, runs)");
    let (mut succeeded, mut delayed) = (0.0, 0.0);
    for w in &workers {
        succeeded += jobs_of(w, SLOW, "succeeded").await.unwrap_or(0.0);
        delayed += jobs_of(w, SLOW, "delayed").await.unwrap_or(0.0);
    }
    assert_eq!(succeeded, 1.0, "one terminal run");
    assert!(
        delayed >= 1.0,
        "the second copy waited in the delayed set while the first ran"
    );
    assert_drained(&env).await;
    if !env.is_memory() {
        let marks: i64 = env.redis.clone().hlen(env.key("active")).await.unwrap();
        assert_eq!(marks, 0, "a running mark was left behind");
    }
    for w in workers {
        w.stop().await.unwrap();
    }
}

/// The queue protocol under the guard above, driven directly: `take_active` and the settle's
/// release op, on the driver the environment uses. A release goes with its job's own op and
/// applies only when that op found the job in the worker's list.
async fn a_running_mark_is_granted_once_released_with_its_job_and_taken_over_from_a_gone_worker(env: TestEnv) {
    use step_worker::queue::{BeatMode, MemoryQueue, Payload, Queue, RedisQueue, SettleOp, Suspects};
    let queue = match env.is_memory() {
        true => Queue::Memory(MemoryQueue::named(&env.queue_key)),
        false => Queue::Redis(RedisQueue::connect(&env.redis_url, &env.queue_key).await.unwrap()),
    };
    let (w1, w2) = ("mark-host:1:0000aaaa", "mark-host:2:0000bbbb");
    for w in [w1, w2] {
        queue
            .heartbeat(w, Duration::from_secs(30), BeatMode::Register, Duration::ZERO)
            .await
            .unwrap();
    }
    let proc = |wid: &str| format!("{{{}}}:proc:{wid}", env.queue_key);
    // One claimed payload in w1's list.
    queue.push(br#"{"id":"a","step":"builtin.noop"}"#).await.unwrap();
    let claimed = queue.claim(w1, &proc(w1), 1, &[], Suspects::Ignore).await.unwrap();
    assert_eq!(claimed.jobs.len(), 1);
    let payload: Payload = claimed.jobs[0].0.clone();
    let done_and_release = |id: &str| [SettleOp::Done(payload.clone()), SettleOp::Release { id: id.to_owned() }];

    assert_eq!(
        queue.take_active(w1, &["a", "a", "b"]).await.unwrap(),
        [true, false, true]
    );
    assert_eq!(queue.take_active(w2, &["a"]).await.unwrap(), [false]);
    // w2 does not have the job: its op finds nothing, so its release removes nothing.
    assert_eq!(queue.settle(&proc(w2), &done_and_release("a")).await.unwrap(), [false]);
    assert_eq!(
        queue.take_active(w2, &["a"]).await.unwrap(),
        [false],
        "w1 still runs it"
    );
    // w1 settles it: the job leaves its list and the mark goes with it (one reply per job op).
    assert_eq!(queue.settle(&proc(w1), &done_and_release("a")).await.unwrap(), [true]);
    assert_eq!(queue.take_active(w2, &["a"]).await.unwrap(), [true]);
    // A worker that is gone (here: deregistered) has handed its jobs on: its marks are free.
    queue.deregister(w2).await.unwrap();
    assert_eq!(queue.take_active(w1, &["a"]).await.unwrap(), [true]);
    if !env.is_memory() {
        let _: () = env.redis.clone().del(env.key("active")).await.unwrap();
    }
    queue.deregister(w1).await.unwrap();
}

/// Runs the binary beside the in-process worker; its stdout, once it succeeded.
async fn cli(env: &TestEnv, args: &[&str]) -> String {
    let out = env.cli(args).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `dlq replay` is a Postgres command: Redis and Postgres only.
#[tokio::test]
async fn a_replayed_dead_job_runs_again_and_can_succeed() {
    let env = TestEnv::new().await;
    let calls = Calls::default();
    let worker = env.start_with(&[ON], calls.registry()).await;
    env.push_job("replay-1", STEP, json!({"fail": 1})).await;
    assert_eq!(env.wait_result("replay-1", WAIT).await.status, "dead");
    let out = cli(&env, &["dlq", "replay", "--step", STEP]).await;
    assert!(out.contains("replayed 1"), "{out}");
    common::wait_for("the replayed job to succeed", WAIT, || async {
        env.result("replay-1").await.is_some_and(|r| r.status == "succeeded")
    })
    .await;
    assert_eq!(calls.of("replay-1"), 2);
    assert_eq!(env.result("replay-1").await.unwrap().output, Some(json!({"call": 2})));
    assert_eq!(jobs_total(&worker, "duplicate").await, None);
    // Once it succeeded, its id is finished again: a later copy is a duplicate.
    env.push_job("replay-1", STEP, json!({"fail": 1})).await;
    wait_duplicates(&worker, 1.0).await;
    assert_eq!(calls.of("replay-1"), 2);
    assert_drained(&env).await;
    worker.stop().await.unwrap();
}

/// The commit-then-crash window: a worker committed a job's result and died before settling it,
/// so the job is still in its in-flight list. The reaper hands it back to ready, and the copy it
/// re-delivers is settled as a duplicate instead of running again. Redis and Postgres only: a
/// dead worker's list is a Redis-level state (the memory queue lives and dies with its process).
#[tokio::test]
async fn a_job_redelivered_after_its_commit_is_settled_as_a_duplicate() {
    let env = TestEnv::new().await;
    let calls = Calls::default();
    let worker = env.start_with(&[ON], calls.registry()).await;
    let payload = json!({"id": "crash-1", "step": STEP, "input": {}}).to_string();
    env.push(&payload).await;
    env.wait_result("crash-1", WAIT).await;
    // A worker whose heartbeat deadline passed long ago, with the finished job still listed and
    // still marked as running there.
    let mut redis = env.redis.clone();
    let _: i64 = redis.lpush(env.key("proc:ghost"), &payload).await.unwrap();
    let _: i64 = redis.hset(env.key("active"), "crash-1", "ghost").await.unwrap();
    let _: i64 = redis.zadd(env.key("workers"), "ghost", 1).await.unwrap();
    wait_duplicates(&worker, 1.0).await;
    assert_eq!(calls.of("crash-1"), 1, "the re-delivered job ran again");
    assert_eq!(env.zcard(&env.key("workers")).await, 1, "the ghost was reaped");
    assert_drained(&env).await;
    let marks: i64 = redis.hlen(env.key("active")).await.unwrap();
    assert_eq!(marks, 0, "the ghost's mark was taken over and released");
    worker.stop().await.unwrap();
}

/// The check never runs a batch blind: while Postgres is down, claimed jobs wait in this
/// worker's list without running (a finished id's copy and a new job alike), and once it is
/// back the new job runs once and the copy is settled as a duplicate.
#[tokio::test]
async fn claimed_jobs_wait_for_an_unreachable_store_instead_of_running_unchecked() {
    let pg = common::servers::PrivatePostgres::start();
    let env = TestEnv::with_servers(&common::redis_url(), &pg.url()).await;
    let calls = Calls::default();
    let worker = env.start_with(&[ON], calls.registry()).await;
    env.push_job("before-1", STEP, json!({})).await;
    env.wait_result("before-1", WAIT).await;
    pg.stop("fast");
    env.push_job("before-1", STEP, json!({})).await;
    env.push_job("during-1", STEP, json!({})).await;
    let addr = worker.http_addr.unwrap();
    common::wait_for("both jobs to wait on the failing check", WAIT, || async {
        let text = common::get(&format!("http://{addr}/metrics")).await.1;
        let failed = common::metric(&text, r#"step_worker_postgres_errors_total{op="dedup"}"#);
        env.in_flight_len().await == 2 && failed.is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(
        (calls.of("before-1"), calls.of("during-1")),
        (1, 0),
        "a job ran unchecked"
    );
    pg.start_server();
    env.wait_result("during-1", WAIT).await;
    wait_duplicates(&worker, 1.0).await;
    assert_eq!((calls.of("before-1"), calls.of("during-1")), (1, 1));
    assert_drained(&env).await;
    worker.stop().await.unwrap();
}
