//! Memory soak: a million jobs through one worker, its resident memory sampled as it goes. A
//! benchmark-style report rather than a timed unit test: it prints RSS after warm-up, at the end,
//! the growth between them and the throughput, and fails only on clear growth.

use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Opts};
use crate::oracle;
use crate::report::Row;
use crate::workload::push_payloads;
use crate::{scale, serial, until};

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Jobs that left Redis: pushed minus what is still ready or in flight.
async fn settled(c: &Cluster, pushed: u64) -> u64 {
    let s = oracle::redis_state(c).await.unwrap();
    pushed - (s.ready + s.in_flight) as u64
}

#[tokio::test]
#[ignore = "soak: run by scripts/chaos"]
async fn a_million_jobs_through_one_worker_keep_its_memory_flat() {
    let _serial = serial().await;
    let total: u64 = std::env::var("CHAOS_SOAK_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(scale(100_000, 1_000_000));
    let opts = Opts {
        replicas: 1,
        concurrency: 32,
        ..Opts::default()
    };
    let mut c = Cluster::start(opts.clone()).await;
    let pid = c.replica(0).pid;
    let warm_up = total / 10;
    let (mut pushed, mut samples) = (0u64, Vec::new());
    let started = Instant::now();
    let mut next_sample = Instant::now();
    loop {
        let done = settled(&c, pushed).await;
        if pushed < total && pushed - done < 20_000 {
            let n = 5_000.min(total - pushed);
            let payloads: Vec<Vec<u8>> = (pushed..pushed + n)
                .map(|i| format!(r#"{{"id":"soak-{i}","step":"builtin.noop","input":{{"i":{i}}}}}"#).into_bytes())
                .collect();
            push_payloads(&c.redis_conn, &c.queue_key, payloads.iter().map(Vec::as_slice)).await;
            pushed += n;
        }
        if Instant::now() >= next_sample {
            samples.push((done, rss_kib(pid).expect("the worker is alive")));
            next_sample += Duration::from_secs(1);
        }
        if done >= total {
            break;
        }
        assert!(c.supervise() == 0, "the worker crashed during the soak");
        // The producer's pace: top up the queue a few times a second.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let rows: i64 = until("every result row", Duration::from_secs(120), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM step_results")
            .fetch_one(&c.pg_pool)
            .await
            .unwrap();
        (n as u64 >= total).then_some(n)
    })
    .await;
    let after_warm_up: Vec<u64> = samples.iter().filter(|(d, _)| *d >= warm_up).map(|(_, r)| *r).collect();
    let base = after_warm_up.first().copied().unwrap_or(0);
    let end = samples.last().map(|s| s.1).unwrap_or(0);
    let peak = after_warm_up.iter().copied().max().unwrap_or(0);
    let growth = (end as f64 - base as f64) / base.max(1) as f64 * 100.0;
    let row = Row {
        fault: "13 memory soak".into(),
        jobs: total as usize,
        lost: total as usize - rows as usize,
        duplicates: 0,
        overlaps: 0,
        recovery: format!("{:.0} jobs/s", total as f64 / elapsed.as_secs_f64()),
        // The rate depends on how many finished jobs may wait for their commit while steps
        // keep running: C + B jobs held at most.
        notes: format!(
            "C={} B={}; RSS after warm-up {} KiB, end {end} KiB, peak {peak} KiB, growth {growth:+.1} %",
            opts.concurrency, opts.commit_backlog, base
        ),
        pass: rows as u64 == total && growth <= 10.0,
    };
    row.emit();
    assert_eq!(rows as u64, total, "every job has its row");
    assert!(growth <= 10.0, "RSS grew {growth:.1} % after warm-up");
}
