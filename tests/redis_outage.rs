//! Redis outages, with a redis-server of the test's own: workers fence themselves while they
//! cannot heartbeat, and a restart does not make them reap each other.

mod common;

use std::time::Duration;

use common::TestEnv;
use common::servers::PrivateRedis;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_redis_restart_longer_than_the_deadline_makes_no_worker_reap_another() {
    let mut redis = PrivateRedis::start(&[]);
    let env = TestEnv::with_servers(&redis.url(), &common::admin_database_url()).await;
    let a = env.start(&[("WORKER_CONCURRENCY", "2")]).await;
    let b = env.start(&[("WORKER_CONCURRENCY", "2")]).await;
    for i in 0..4 {
        env.push_job(&format!("outage-{i}"), "builtin.sleep", json!({"ms": 2500}))
            .await;
    }
    common::wait_for("all four claimed", WAIT, || async { env.in_flight_len().await == 4 }).await;

    redis.kill();
    // The fault itself: the outage must outlast WORKER_DEADLINE_MS (1.5 s in tests), so that every
    // heartbeat deadline has passed when Redis comes back. This is its duration, not a wait for
    // something to happen.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.restart();

    env.wait_count("four rows", "SELECT count(*) FROM step_results", 4, WAIT)
        .await;
    for i in 0..4 {
        let row = env.result(&format!("outage-{i}")).await.unwrap();
        assert_eq!(
            (row.status.as_str(), row.attempts),
            ("succeeded", 1),
            "a fenced run is not a failed attempt"
        );
    }
    assert_eq!(env.zcard(&env.key("reaped")).await, 0, "no live worker was reaped");
    for w in [&a, &b] {
        let (_, metrics) = common::get(&format!("http://{}/metrics", w.http_addr.unwrap())).await;
        assert_eq!(common::metric(&metrics, "step_worker_recovered_jobs_total"), Some(0.0));
        assert!(
            common::metric(&metrics, "step_worker_fenced_total").unwrap() >= 1.0,
            "both fenced during the outage"
        );
    }
    common::wait_for("redis drained", WAIT, || async {
        env.in_flight_len().await == 0 && env.ready_len().await == 0
    })
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn held_jobs_never_exceed_concurrency_plus_the_commit_backlog() {
    let env = TestEnv::new().await;
    let worker = env.start(&[("WORKER_CONCURRENCY", "3"), ("COMMIT_BACKLOG", "2")]).await;
    for i in 0..15 {
        env.push_job(&format!("slot-{i}"), "builtin.sleep", json!({"ms": 60}))
            .await;
    }
    let proc = env.key(&format!("proc:{}", worker.worker_id));
    let max = std::sync::atomic::AtomicI64::new(0);
    common::wait_for("all fifteen rows", WAIT, || async {
        max.fetch_max(env.llen(&proc).await, std::sync::atomic::Ordering::Relaxed);
        env.count("SELECT count(*) FROM step_results").await == 15
    })
    .await;
    let max_seen = max.into_inner();
    assert!(
        max_seen <= 3 + 2,
        "held {max_seen} jobs with 3 run slots and a backlog of 2"
    );
    assert!(max_seen >= 3, "all run slots were used (held at most {max_seen})");
    worker.stop().await.unwrap();
}
