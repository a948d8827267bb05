//! The lease: a reaped worker is told so however long it was away, only Redis data loss lets a
//! worker re-register its old id, a re-drain of a reaped worker's list is not a recovery, and the
//! watchdog fences a worker whose heartbeat cannot run.

mod common;

use std::time::Duration;

use common::TestEnv;
use redis::AsyncCommands;
use serde_json::json;
use step_worker::queue::{BeatMode, BeatStatus, RedisQueue, Suspects, sha1_hex};

const WAIT: Duration = Duration::from_secs(30);
/// A worker's claim with the default MAX_RECOVERIES (suspects from two recoveries), not alone.
const ISOLATE: Suspects = Suspects::Isolate { at: 2, alone: false };

/// The tombstone a reap leaves is trimmed after a while, and a worker frozen longer than that used
/// to be told "Redis lost your registration": it re-registered its old id and put back jobs that
/// others had long finished. Being reaped is now told apart from Redis data loss by proof (the
/// queue's epoch), whatever the time away.
#[tokio::test]
async fn a_reaped_worker_is_told_so_after_its_tombstone_is_gone_and_only_data_loss_re_registers() {
    let env = TestEnv::new().await;
    let queue = RedisQueue::connect(&env.redis_url, &env.queue_key).await.unwrap();
    let wid = "frozen-host:1:0badf00d";
    let proc = queue.keys().proc(wid);
    let beat = |mode| queue.heartbeat(wid, Duration::from_millis(50), mode, Duration::ZERO);
    beat(BeatMode::Register).await.unwrap();
    env.push_job("late-1", "builtin.noop", json!(null)).await;
    assert_eq!(queue.claim(wid, &proc, 1, &[], ISOLATE).await.unwrap().jobs.len(), 1);
    common::wait_for("the frozen worker to be reaped", WAIT, || async {
        queue.reap(wid, Duration::ZERO, 3).await.unwrap() == Some((1, 0, 0))
    })
    .await;
    // The tombstone is trimmed (as TOMBSTONE_KEEP_MS later), and the worker comes back.
    let mut redis = env.redis.clone();
    let _: () = redis.zrem(env.key("reaped"), wid).await.unwrap();
    assert_eq!(beat(BeatMode::Beat).await.unwrap().status, BeatStatus::Reaped);
    assert_eq!(env.live_workers().await, 0, "the old id was not registered again");
    assert_eq!(
        env.zcard(&env.key("reaped")).await,
        1,
        "tombstoned again, so a late claim into its list is re-drained"
    );

    // Redis loses its data (a restart without persistence): the registry and the epoch go.
    let live = "live-host:1:00c0ffee";
    let live_beat = |mode| queue.heartbeat(live, Duration::from_secs(30), mode, Duration::ZERO);
    live_beat(BeatMode::Register).await.unwrap();
    let _: () = redis
        .del(&[env.key("workers"), env.key("reaped"), env.key("epoch")])
        .await
        .unwrap();
    assert_eq!(
        live_beat(BeatMode::Beat).await.unwrap().status,
        BeatStatus::Reregistered
    );
    assert_eq!(live_beat(BeatMode::Beat).await.unwrap().status, BeatStatus::Ok);
    // Another process that first beats after the loss finds an epoch it never saw: also data loss.
    let other = RedisQueue::connect(&env.redis_url, &env.queue_key).await.unwrap();
    let peer = "peer-host:1:0000beef";
    other
        .heartbeat(peer, Duration::from_secs(30), BeatMode::Register, Duration::ZERO)
        .await
        .unwrap();
    let _: () = redis.del(&[env.key("workers"), env.key("epoch")]).await.unwrap();
    live_beat(BeatMode::Beat).await.unwrap();
    let status = other
        .heartbeat(peer, Duration::from_secs(30), BeatMode::Beat, Duration::ZERO)
        .await
        .unwrap()
        .status;
    assert_eq!(
        status,
        BeatStatus::Reregistered,
        "the epoch was written anew by another worker"
    );
}

/// A reaped worker's late claim puts a job in its tombstoned list; the re-drain returns it, and
/// must not count it as interrupted: it never ran there, and two such counts made an innocent
/// job a suspect, then an `interrupted` dead letter.
#[tokio::test]
async fn a_re_drain_of_a_reaped_workers_list_is_not_counted_as_an_interruption() {
    let env = TestEnv::new().await;
    let queue = RedisQueue::connect(&env.redis_url, &env.queue_key).await.unwrap();
    let wid = "reaped-host:1:00000bad";
    let proc = queue.keys().proc(wid);
    queue
        .heartbeat(wid, Duration::from_millis(50), BeatMode::Register, Duration::ZERO)
        .await
        .unwrap();
    let running = r#"{"id":"was-running","step":"builtin.noop"}"#;
    let late = r#"{"id":"claimed-late","step":"builtin.noop"}"#;
    env.push(running).await;
    assert_eq!(queue.claim(wid, &proc, 1, &[], ISOLATE).await.unwrap().jobs.len(), 1);
    common::wait_for("the worker to be reaped", WAIT, || async {
        queue.reap(wid, Duration::ZERO, 3).await.unwrap() == Some((1, 0, 0))
    })
    .await;
    let mut redis = env.redis.clone();
    let _: () = redis.del(&env.queue_key).await.unwrap();
    // Its BLMOVE, still waiting at the server, takes the next job into the dead list.
    env.push(late).await;
    let _: Vec<u8> = redis::cmd("LMOVE")
        .arg(&env.queue_key)
        .arg(&proc)
        .arg("RIGHT")
        .arg("LEFT")
        .query_async(&mut redis)
        .await
        .unwrap();
    for _ in 0..2 {
        queue.reap(wid, Duration::ZERO, 3).await.unwrap();
    }
    assert_eq!(env.ready_payloads().await, [late], "the late job is back in ready");
    let counts: std::collections::HashMap<String, i64> = redis.hgetall(env.key("interrupts")).await.unwrap();
    assert_eq!(
        counts.get(&sha1_hex(running.as_bytes())),
        Some(&1),
        "the job that was running"
    );
    assert_eq!(
        counts.get(&sha1_hex(late.as_bytes())),
        None,
        "the job that never ran there"
    );
}

/// A native step that blocks its thread stops the async runtime (here the test's own, a single
/// thread), heartbeat included. The beat never *fails*, so the heartbeat alone never fenced: the
/// watchdog, a plain thread, fences by the clock. The step's outcome is persisted only once a
/// beat proves the job is still this worker's.
#[tokio::test]
async fn a_step_that_blocks_the_runtime_is_fenced_by_the_watchdog() {
    let env = TestEnv::new().await;
    let registry = step_worker::Registry::new().register(
        "native.block",
        |_ctx: step_worker::StepContext, _input: serde_json::Value| async move {
            // Longer than the fence (2/3 of the 1 s deadline), shorter than deadline + grace.
            std::thread::sleep(Duration::from_millis(900));
            Ok(json!("done"))
        },
    );
    let worker = env
        .start_with(
            &[("WORKER_DEADLINE_MS", "1000"), ("HEARTBEAT_INTERVAL_MS", "100")],
            registry,
        )
        .await;
    env.push_job("blocker-1", "native.block", json!(null)).await;
    let row = env.wait_result("blocker-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 1));
    let (_, metrics) = common::get(&format!("http://{}/metrics", worker.http_addr.unwrap())).await;
    assert!(
        common::metric(&metrics, "step_worker_fenced_total").unwrap() >= 1.0,
        "the watchdog fenced the blocked worker"
    );
    worker.stop().await.unwrap();
}
