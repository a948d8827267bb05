//! Shutdown during a partition (packets dropped, no reset) from Redis or from PostgreSQL: whatever
//! they do, a worker exits within `SHUTDOWN_TIMEOUT_MS` + the documented margin, and within two
//! seconds of a second signal; what it could not hand back stays in its list for the reaper.

use std::time::{Duration, Instant};

use step_worker::drain::EXIT_MARGIN;

use crate::cluster::{Cluster, Opts};
use crate::oracle;
use crate::report::Row;
use crate::worker_faults::settle;
use crate::workload::{Durations, Workload};
use crate::{scale, serial};

#[tokio::test]
async fn redis_partition_at_shutdown_bounds_the_exit_and_loses_nothing() {
    let _serial = serial().await;
    // The default block time: the partition catches idle claims blocked for up to 30 s.
    let opts = Opts {
        via_proxy: true,
        ..Opts::default()
    }
    .with_env("CLAIM_BLOCK_MS", "30000");
    let durations = Durations {
        min_ms: 50,
        max_ms: 400,
    };
    let w = Workload::mixed("partition", scale(1_500, 20_000), durations, 21);
    let mut c = Cluster::start(opts.clone()).await;
    w.push(&c.redis_conn, &c.queue_key).await;
    oracle::wait_results(&c, 100).await;

    c.proxy.as_ref().unwrap().partition();
    let bound = Duration::from_millis(opts.shutdown_timeout_ms) + EXIT_MARGIN;
    let (first, took) = c.terminate(0, bound * 3).await;

    // A second signal cuts the drain short.
    c.signal(1, libc::SIGTERM);
    // The fault schedule: the second signal comes while the drain is waiting on Redis.
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.signal(1, libc::SIGTERM);
    let second_at = Instant::now();
    let (second, _) = c.wait_exit(1, bound * 3).await;
    let after_second = second_at.elapsed();

    c.proxy.as_ref().unwrap().heal();
    for slot in [0, 1] {
        c.spawn(slot);
        c.wait_up(slot);
    }
    let (v, log, restarts) = settle(&mut c, &w).await;
    let reaps = c.log_lines("returned a dead worker's jobs").len();
    let hard_bound = Duration::from_secs(2);
    let row = Row {
        fault: "16 Redis partition at SIGTERM".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: format!(
            "exit {:.1} s (bound {:.0} s); {:.1} s after a 2nd signal",
            took.as_secs_f64(),
            bound.as_secs_f64(),
            after_second.as_secs_f64()
        ),
        notes: format!("exits {first:?} {second:?}; {reaps} reaps after healing"),
        pass: v.clean() && took <= bound && after_second <= hard_bound && restarts == 0,
    };
    row.emit();
    assert!(took <= bound, "exit took {took:?} during a partition (bound {bound:?})");
    assert!(
        after_second <= hard_bound,
        "exit took {after_second:?} after a second signal"
    );
    assert!(first.is_some_and(|s| s.success()), "first replica: {first:?}");
    assert!(second.is_some_and(|s| s.success()), "second replica: {second:?}");
    v.assert_clean();
    assert_eq!(restarts, 0, "a replica crashed");
}

/// Outcomes that cannot be committed (the statement is sent and never answered) must not hold
/// the exit: the pipeline is stopped at its deadline and the jobs are handed back (Redis answers).
#[tokio::test]
async fn postgres_partition_at_shutdown_bounds_the_exit_and_loses_nothing() {
    let _serial = serial().await;
    let opts = Opts {
        pg_via_proxy: true,
        ..Opts::default()
    };
    let durations = Durations {
        min_ms: 50,
        max_ms: 400,
    };
    let w = Workload::mixed("pg-partition", scale(1_500, 20_000), durations, 22);
    let mut c = Cluster::start(opts.clone()).await;
    w.push(&c.redis_conn, &c.queue_key).await;
    oracle::wait_results(&c, 100).await;

    c.pg_proxy.as_ref().unwrap().partition();
    let bound = Duration::from_millis(opts.shutdown_timeout_ms) + EXIT_MARGIN;
    let (status, took) = c.terminate(0, bound * 3).await;
    c.pg_proxy.as_ref().unwrap().heal();
    c.spawn(0);
    c.wait_up(0);
    let (v, log, restarts) = settle(&mut c, &w).await;
    let handed_back = c.log_lines("handed jobs back to the queue").len();
    let row = Row {
        fault: "17 Postgres partition at SIGTERM".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: format!("exit {:.1} s (bound {:.0} s)", took.as_secs_f64(), bound.as_secs_f64()),
        notes: format!("exit {status:?}; {handed_back} hand-backs"),
        pass: v.clean() && took <= bound && status.is_some_and(|s| s.success()) && restarts == 0,
    };
    row.emit();
    assert!(took <= bound, "exit took {took:?} during a partition (bound {bound:?})");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    v.assert_clean();
    assert_eq!(restarts, 0, "a replica crashed");
}
