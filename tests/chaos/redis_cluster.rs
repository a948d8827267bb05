//! Redis Cluster failover under load: the master that owns the queue's hash slot is SIGKILLed
//! mid-run, its replica is promoted, and the workers carry on through the cluster client.
//!
//! What Redis itself may lose. Replication is asynchronous: the promoted replica holds a prefix
//! of what the dead master acknowledged. Any prefix is a consistent queue (every job sits in
//! ready, delayed, a worker's list or is settled, since every move is one script), so the
//! protocol loses nothing of it; but a write acknowledged and not yet replicated is gone:
//! - a settle: the job is back in its worker's list, the worker's self-audit hands it back (its
//!   blocking connection broke with the master), and it runs again, upserting its one row;
//! - a claim: the job is back in ready and runs a second time, its late settle a no-op;
//! - a push: the job is gone. So the producer here counts a push as made only once `WAIT 1`
//!   says a replica has it (and a real producer should, or accept that window).
//!
//! Asserted: the replica was promoted; every job pushed has exactly one result row with the
//! expected status and every expected dead letter (0 lost); Redis is drained; no worker crashed
//! or was reaped. Jobs run twice are counted (the execution log), not forbidden.

use std::time::Instant;

use crate::cluster::{Cluster, Opts};
use crate::common::redis_cluster::NODE_TIMEOUT;
use crate::oracle;
use crate::report::Row;
use crate::worker_faults::settle;
use crate::workload::{Durations, Workload};
use crate::{scale, serial};

const DURATIONS: Durations = Durations { min_ms: 10, max_ms: 80 };

#[tokio::test]
async fn redis_cluster_master_of_the_queue_killed_mid_run_fails_over_and_loses_no_job() {
    let _serial = serial().await;
    let opts = Opts {
        replicas: 2,
        concurrency: 16,
        // The deadline outlasts the failover (node timeout plus election) by a wide margin: a
        // worker whose Redis is failing over is alive and must not be reaped.
        heartbeat_ms: 1_000,
        deadline_ms: 10_000,
        redis_cluster: true,
        ..Opts::default()
    };
    let w = Workload::mixed("rcf", scale(5_000, 20_000), DURATIONS, 31);
    let mut c = Cluster::start(opts).await;
    let queue = c.queue_key.clone();
    let before = c.redis_cluster().owner(&queue);
    let replica = before.replica.expect("the queue's master has a replica");

    w.push(&c.redis_conn, &c.queue_key).await;
    // WAIT counts the replicas that have every write this connection made to that node.
    let mut wait = redis::cmd("WAIT");
    wait.arg(1).arg(10_000);
    let replicated = c.redis_conn.query_at_owner(wait, &c.queue_key).await.unwrap();
    assert_eq!(
        redis::from_redis_value::<i64>(replicated).unwrap(),
        1,
        "the pushes reached the replica"
    );

    oracle::wait_results(&c, (w.len() / 5) as i64).await;
    let ready_at_kill = oracle::redis_state(&c).await.unwrap().ready;
    let killed_at = Instant::now();
    c.redis_cluster().kill(before.master);
    let after = c
        .redis_cluster()
        .wait_failover(&queue, before.master, NODE_TIMEOUT * 15);
    let failover = killed_at.elapsed();
    // The old master comes back and rejoins as the new master's replica.
    c.redis_cluster().restart(before.master);

    let (v, log, restarts) = settle(&mut c, &w).await;
    let reaps = c.log_lines("returned a dead worker's jobs");
    let audits = c
        .log_lines("handed back claimed jobs this worker had no record of")
        .len();
    let row = Row {
        fault: "14 Redis Cluster: queue's master SIGKILL, replica promoted".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: format!("failover {:.1} s", failover.as_secs_f64()),
        notes: format!(
            "{ready_at_kill} ready at the kill, {audits} self-audits handed jobs back, {} reaps",
            reaps.len()
        ),
        pass: v.clean() && after.master == replica && restarts == 0 && reaps.is_empty(),
    };
    row.emit();
    assert!(ready_at_kill > 0, "the queue drained before the kill: raise N");
    assert_eq!(after.master, replica, "the dead master's replica took over its slots");
    v.assert_clean();
    assert_eq!(restarts, 0, "a replica crashed");
    assert!(
        reaps.is_empty(),
        "a live worker was reaped during the failover: {reaps:?}"
    );
}
