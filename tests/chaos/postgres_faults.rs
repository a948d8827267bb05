//! Faults of PostgreSQL: an outage under load, and connections terminated mid-commit.

use std::time::Duration;

use crate::cluster::{Cluster, Opts};
use crate::oracle;
use crate::report::Row;
use crate::worker_faults::settle;
use crate::workload::{Durations, Workload};
use crate::{scale, serial, until};

const DURATIONS: Durations = Durations {
    min_ms: 20,
    max_ms: 150,
};

#[tokio::test]
async fn postgres_outage_stops_claiming_acks_nothing_and_loses_nothing() {
    let _serial = serial().await;
    // The duplicate check off: this fault checks the commit backlog's bound, jobs that ran and
    // wait for a commit. With the check on (the default) jobs stop before they run, asking
    // Postgres whether they finished: tests/dedup.rs covers that outage.
    let opts = Opts {
        env: vec![("DUPLICATE_CHECK".into(), "off".into())],
        ..Opts::default()
    };
    let w = Workload::mixed("pgdown", scale(2_500, 30_000), DURATIONS, 21);
    let mut c = Cluster::start(opts.clone()).await;
    w.push(&c.redis_conn, &c.queue_key).await;
    oracle::wait_results(&c, 100).await;
    c.pg.stop("fast");
    // Claiming stops once every replica holds its running steps plus its commit backlog, all
    // finished and waiting for a commit that cannot happen.
    let slots = (opts.replicas * opts.held_max()) as i64;
    let before = until(
        "every hold to fill with finished, unpersisted jobs",
        Duration::from_secs(20),
        || async {
            let state = oracle::redis_state(&c).await.unwrap();
            (state.in_flight == slots).then_some(state)
        },
    )
    .await;
    // The outage's length: long enough for a reaper to act, were heartbeats to stop.
    tokio::time::sleep(scale(opts.deadline() * 2, Duration::from_secs(120))).await;
    let during = oracle::redis_state(&c).await.unwrap();
    let live = live_deadlines(&c).await;
    c.pg.start_server();
    let (v, log, restarts) = settle(&mut c, &w).await;
    let row = Row {
        fault: "5 Postgres outage".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: String::new(),
        notes: format!(
            "in flight {} → {} of {slots}; ready {} → {}; live deadlines {live}/{}; tombstones {}",
            before.in_flight, during.in_flight, before.ready, during.ready, opts.replicas, v.redis.reaped
        ),
        pass: v.clean()
            && during.in_flight == slots
            && during.ready >= before.ready
            && live == opts.replicas
            && v.redis.reaped == 0,
    };
    row.emit();
    assert_eq!(
        during.in_flight, slots,
        "jobs were settled (or claimed) while Postgres was down"
    );
    assert!(
        during.ready >= before.ready,
        "jobs were claimed while every hold was taken"
    );
    assert_eq!(live, opts.replicas, "heartbeats stopped during the outage");
    assert_eq!(v.redis.reaped, 0, "a worker was reaped during the outage");
    v.assert_clean();
    assert_eq!(restarts, 0, "a replica crashed");
    assert_eq!(log.duplicates(), 0, "a job ran twice");
}

/// Registered workers whose deadline is still ahead (Redis time).
async fn live_deadlines(c: &Cluster) -> usize {
    let mut conn = c.redis_conn.clone();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let now_ms = secs * 1000 + micros / 1000;
    let deadlines: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(c.key("workers"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .unwrap();
    deadlines.iter().filter(|(_, d)| *d as u64 > now_ms).count()
}

#[tokio::test]
#[ignore = "heavy fault: run by scripts/chaos"]
async fn postgres_connections_terminated_mid_commit_leave_one_row_per_job() {
    let _serial = serial().await;
    let w = Workload::mixed("pgkill", scale(2_500, 30_000), DURATIONS, 22);
    let mut c = Cluster::start(Opts::default()).await;
    w.push(&c.redis_conn, &c.queue_key).await;
    let pg = c.pg_pool.clone();
    let killer = tokio::spawn(async move {
        let mut terminated = 0i64;
        loop {
            let n: Result<i64, _> = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'step-worker' AND pid <> pg_backend_pid()) t",
            )
            .fetch_one(&pg)
            .await;
            terminated += n.unwrap_or(0);
            // The fault's pace.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if terminated < 0 {
                return terminated;
            }
        }
    });
    let (v, log, restarts) = settle(&mut c, &w).await;
    killer.abort();
    let row = Row {
        fault: "6 pg_terminate_backend loop".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: String::new(),
        notes: "every 200 ms".into(),
        pass: v.clean() && restarts == 0,
    };
    row.emit();
    v.assert_clean();
    assert_eq!(restarts, 0, "a replica crashed");
}
