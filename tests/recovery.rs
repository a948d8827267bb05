//! Crash recovery, fencing, poison pills and sharing one queue between workers.

mod common;

use std::time::Duration;

use common::{TestEnv, WorkerProcess};
use redis::AsyncCommands;
use serde_json::json;
use sqlx::Connection;
use step_worker::queue::{BeatMode, BeatStatus, Counters, Payload, RedisQueue, SettleOp, Suspects, sha1_hex};

const WAIT: Duration = Duration::from_secs(30);
/// A worker's claim with the default MAX_RECOVERIES (suspects from two recoveries), not alone.
const ISOLATE: Suspects = Suspects::Isolate { at: 2, alone: false };

#[tokio::test]
async fn jobs_of_a_killed_worker_are_completed_by_another_exactly_once() {
    let env = TestEnv::new().await;
    let mut doomed = WorkerProcess::spawn(&env, &[("WORKER_CONCURRENCY", "8")]);
    for i in 0..5 {
        env.push_job(&format!("crash-{i}"), "builtin.sleep", json!({"ms": 1500}))
            .await;
    }
    common::wait_for("the doomed worker to claim all five", WAIT, || async {
        env.in_flight_len().await == 5
    })
    .await;
    doomed.kill();
    assert_eq!(
        env.count("SELECT count(*) FROM step_results").await,
        0,
        "killed before finishing"
    );

    let rescuer = env.start(&[]).await;
    env.wait_count("five rows", "SELECT count(*) FROM step_results", 5, WAIT)
        .await;
    for i in 0..5 {
        let row = env.result(&format!("crash-{i}")).await.unwrap();
        assert_eq!(
            (row.status.as_str(), row.attempts),
            ("succeeded", 1),
            "a crash is not a failed attempt"
        );
        assert_eq!(row.worker_id, rescuer.worker_id);
    }
    common::wait_for("redis drained", WAIT, || async { env.in_flight_len().await == 0 }).await;
    assert_eq!(env.ready_len().await, 0);
    let (_, metrics) = common::get(&format!("http://{}/metrics", rescuer.http_addr.unwrap())).await;
    assert_eq!(common::metric(&metrics, "step_worker_recovered_jobs_total"), Some(5.0));
    rescuer.stop().await.unwrap();
}

/// A killed worker's finished jobs whose commit had not happened yet run again too: the re-run
/// window is every job it held, `WORKER_CONCURRENCY + COMMIT_BACKLOG`, not only the running ones.
#[tokio::test]
async fn finished_jobs_awaiting_their_commit_rerun_after_their_worker_is_killed() {
    let env = TestEnv::new().await;
    // The duplicate check off: it asks Postgres before a job runs, so with the table locked no
    // job would finish its step; what this checks is what happens to those that did.
    let mut doomed = WorkerProcess::spawn(
        &env,
        &[
            ("WORKER_CONCURRENCY", "1"),
            ("COMMIT_BACKLOG", "2"),
            ("DUPLICATE_CHECK", "off"),
        ],
    );
    // Registered means migrated: the lock below cannot stall the worker's migrations.
    common::wait_for("the doomed worker to register", WAIT, || async {
        env.live_workers().await == 1
    })
    .await;
    let mut locker = sqlx::PgConnection::connect(&env.database_url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE step_results IN EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    for i in 0..5 {
        env.push_job(&format!("held-{i}"), "builtin.noop", json!({})).await;
    }
    // One run slot: three jobs held means two of them finished their step and wait for a commit.
    common::wait_for("the doomed worker to hold 1 + 2 jobs", WAIT, || async {
        env.in_flight_len().await == 3 && env.ready_len().await == 2
    })
    .await;
    doomed.kill();
    sqlx::raw_sql("ROLLBACK").execute(&mut locker).await.unwrap();
    locker.close().await.unwrap();

    let rescuer = env.start(&[]).await;
    env.wait_count("five rows", "SELECT count(*) FROM step_results", 5, WAIT)
        .await;
    common::wait_for("redis drained", WAIT, || async {
        env.in_flight_len().await == 0 && env.ready_len().await == 0
    })
    .await;
    assert_eq!(env.count("SELECT count(DISTINCT job_id) FROM step_results").await, 5);
    for i in 0..5 {
        let row = env.result(&format!("held-{i}")).await.unwrap();
        assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 1), "held-{i}");
    }
    let (_, metrics) = common::get(&format!("http://{}/metrics", rescuer.http_addr.unwrap())).await;
    assert_eq!(
        common::metric(&metrics, "step_worker_recovered_jobs_total"),
        Some(3.0),
        "every job the killed worker held was returned, finished ones included"
    );
    rescuer.stop().await.unwrap();
}

#[tokio::test]
async fn two_workers_on_one_queue_share_it_without_duplicate_rows() {
    let env = TestEnv::new().await;
    let a = env
        .start(&[("WORKER_CONCURRENCY", "4"), ("CLAIM_BATCH_SIZE", "2")])
        .await;
    let b = env
        .start(&[("WORKER_CONCURRENCY", "4"), ("CLAIM_BATCH_SIZE", "2")])
        .await;
    for i in 0..300 {
        env.push_job(&format!("shared-{i}"), "builtin.sleep", json!({"ms": 2}))
            .await;
    }
    env.wait_count("300 rows", "SELECT count(*) FROM step_results", 300, WAIT)
        .await;
    assert_eq!(env.count("SELECT count(DISTINCT job_id) FROM step_results").await, 300);
    let by_a: i64 = sqlx::query_scalar("SELECT count(*) FROM step_results WHERE worker_id = $1")
        .bind(&a.worker_id)
        .fetch_one(&env.pg)
        .await
        .unwrap();
    assert!(by_a > 0 && by_a < 300, "both workers took part (a ran {by_a})");
    common::wait_for("redis drained", WAIT, || async { env.in_flight_len().await == 0 }).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_reaped_worker_can_no_longer_settle_its_jobs() {
    let env = TestEnv::new().await;
    let queue = RedisQueue::connect(&env.redis_url, &env.queue_key).await.unwrap();
    let keys = queue.keys().clone();
    let wid = "ghost-host:1:deadbeef";
    let proc = keys.proc(wid);
    queue
        .heartbeat(wid, Duration::from_millis(50), BeatMode::Register, Duration::ZERO)
        .await
        .unwrap();
    env.push_job("fenced-1", "builtin.noop", json!(null)).await;
    let claimed = queue.claim(wid, &proc, 1, &[], ISOLATE).await.unwrap();
    assert_eq!(claimed.jobs.len(), 1);
    let payload = claimed.jobs[0].0.clone();

    // Its deadline passes without a beat: any live worker may reap it.
    common::wait_for("the ghost's deadline to pass", WAIT, || async {
        queue.reap(wid, Duration::ZERO, 3).await.unwrap() == Some((1, 0, 0))
    })
    .await;
    assert_eq!(env.ready_len().await, 1, "the job is back in ready");
    // Every exit path of the stale worker is now a no-op…
    assert_eq!(
        queue.settle(&proc, &[SettleOp::Done(payload.clone())]).await.unwrap(),
        vec![false]
    );
    assert_eq!(
        queue
            .settle(&proc, &[SettleOp::Retry(payload.clone(), Duration::ZERO)])
            .await
            .unwrap(),
        vec![false]
    );
    assert_eq!(
        queue.settle(&proc, &[SettleOp::Requeue(payload)]).await.unwrap(),
        vec![false]
    );
    assert_eq!(env.ready_len().await, 1, "no duplicate was pushed");
    assert_eq!(env.zcard(&env.key("delayed")).await, 0);
    // …it learns it was reaped on its next beat, and cannot claim under the old identity.
    let beat = queue
        .heartbeat(wid, Duration::from_secs(5), BeatMode::Beat, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(beat.status, BeatStatus::Reaped);
    assert!(queue.claim(wid, &proc, 1, &[], ISOLATE).await.unwrap().fenced);
}

#[tokio::test]
async fn a_job_that_keeps_killing_its_workers_is_dead_lettered_after_max_recoveries() {
    let env = TestEnv::new().await;
    let mut redis = env.redis.clone();
    let poison = r#"{"id":"poison-1","step":"builtin.noop"}"#;
    let healthy = r#"{"id":"healthy-1","step":"builtin.noop"}"#;
    // Two dead workers: one held the poison job, already recovered 3 times; one a healthy job.
    for (wid, payload, recoveries) in [("dead-a:1:01", poison, 3), ("dead-b:1:02", healthy, 0)] {
        let _: () = redis.zadd(env.key("workers"), wid, 0).await.unwrap();
        let _: () = redis.lpush(env.key(&format!("proc:{wid}")), payload).await.unwrap();
        let _: () = redis
            .hset(env.key("interrupts"), sha1_hex(payload.as_bytes()), recoveries)
            .await
            .unwrap();
    }
    // The poison job had also failed an attempt before: its attempt counter must not outlive it.
    let _: () = redis
        .hset(env.key("attempts"), sha1_hex(poison.as_bytes()), 1)
        .await
        .unwrap();
    let worker = env.start(&[("MAX_RECOVERIES", "3")]).await;
    let row = env.wait_result("poison-1", WAIT).await;
    assert_eq!(row.status, "dead");
    assert!(row.error.unwrap().contains("interrupted"));
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].reason.as_str(), letters[0].job_id.as_deref()),
        ("interrupted", Some("poison-1"))
    );
    assert_eq!(letters[0].payload, poison.as_bytes());
    assert_eq!(env.wait_result("healthy-1", WAIT).await.status, "succeeded");
    common::wait_for("the poison outbox to empty", WAIT, || async {
        env.llen(&env.key("poison")).await == 0
    })
    .await;
    let counters: i64 = env.redis.clone().hlen(env.key("attempts")).await.unwrap();
    assert_eq!(counters, 0, "a poisoned job's attempt counter is forgotten with it");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_claim_never_batches_a_suspect_and_takes_one_only_alone() {
    let env = TestEnv::new().await;
    let queue = RedisQueue::connect(&env.redis_url, &env.queue_key).await.unwrap();
    let wid = "claimer-host:1:5e5e5e5e";
    let proc = queue.keys().proc(wid);
    queue
        .heartbeat(wid, Duration::from_secs(30), BeatMode::Register, Duration::ZERO)
        .await
        .unwrap();
    let mut redis = env.redis.clone();
    let job = |id: &str| format!(r#"{{"id":"{id}","step":"builtin.noop"}}"#);
    // Oldest first: a, b (recovered once: not yet a suspect), c (recovered twice), d.
    for id in ["a", "b", "c", "d"] {
        env.push(&job(id)).await;
    }
    interrupted(&env, &job("b"), 1).await;
    interrupted(&env, &job("c"), 2).await;
    let _: () = redis
        .hset(env.key("attempts"), sha1_hex(job("c").as_bytes()), 1)
        .await
        .unwrap();
    let ids = |jobs: &[(Payload, Counters)]| -> Vec<String> {
        jobs.iter()
            .map(|(p, _)| {
                serde_json::from_slice::<serde_json::Value>(p).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };

    // The batch stops before the suspect and says it is waiting.
    let r = queue.claim(wid, &proc, 4, &[], ISOLATE).await.unwrap();
    assert_eq!(ids(&r.jobs), ["a", "b"]);
    assert!(r.jobs.iter().all(|(_, c)| !c.suspect));
    assert!(r.suspect_waiting);
    // A suspect at the head of the queue is not taken by a claim that is not alone.
    let r = queue.claim(wid, &proc, 4, &[], ISOLATE).await.unwrap();
    assert!(r.jobs.is_empty() && r.suspect_waiting);
    assert_eq!(env.ready_len().await, 2);
    // Claiming alone takes the suspect and nothing after it, with its counters.
    let alone = Suspects::Isolate { at: 2, alone: true };
    let r = queue.claim(wid, &proc, 4, &[], alone).await.unwrap();
    assert_eq!(ids(&r.jobs), ["c"]);
    assert_eq!(
        r.jobs[0].1,
        Counters {
            failures: 1,
            suspect: true,
            throttled: false,
        }
    );
    assert!(!r.suspect_waiting);
    // Alone with no suspect first: an ordinary batch.
    let r = queue.claim(wid, &proc, 4, &[], alone).await.unwrap();
    assert_eq!(ids(&r.jobs), ["d"]);

    // A suspect that BLMOVE took gets no company, and is reported as one.
    for id in ["e", "f"] {
        env.push(&job(id)).await;
    }
    interrupted(&env, &job("e"), 2).await;
    let moved: Vec<u8> = redis::cmd("LMOVE")
        .arg(&env.queue_key)
        .arg(&proc)
        .arg("RIGHT")
        .arg("LEFT")
        .query_async(&mut redis)
        .await
        .unwrap();
    let moved = Payload::from(moved);
    let r = queue.claim(wid, &proc, 3, &[moved], ISOLATE).await.unwrap();
    assert!(r.jobs.is_empty());
    assert_eq!(
        r.extra,
        [Counters {
            failures: 0,
            suspect: true,
            throttled: false,
        }]
    );
    assert_eq!(env.ready_len().await, 1, "f is left for others");

    // With MAX_RECOVERIES = 1 one recovery makes a suspect; a purge ignores suspects.
    for id in ["g", "h"] {
        env.push(&job(id)).await;
    }
    interrupted(&env, &job("g"), 1).await;
    let strict = Suspects::Isolate { at: 1, alone: false };
    let r = queue.claim(wid, &proc, 3, &[], strict).await.unwrap();
    assert_eq!(ids(&r.jobs), ["f"]);
    assert!(r.suspect_waiting);
    let r = queue.claim(wid, &proc, 3, &[], Suspects::Ignore).await.unwrap();
    assert_eq!(ids(&r.jobs), ["g", "h"]);
    assert!(r.jobs.iter().all(|(_, c)| !c.suspect));
    assert!(!r.suspect_waiting);
    assert_eq!(env.llen(&proc).await, 8, "every claimed job is in the worker's list");
}

/// Sets how often a payload was recovered from dead workers.
async fn interrupted(env: &TestEnv, payload: &str, times: u32) {
    let _: () = env
        .redis
        .clone()
        .hset(env.key("interrupts"), sha1_hex(payload.as_bytes()), times)
        .await
        .unwrap();
}
