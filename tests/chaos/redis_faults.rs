//! Faults of Redis: SIGKILL and restart from the AOF, an outage longer than the deadline, the
//! script cache flushed in a loop, and memory full (with an evicting policy as the negative
//! control).

use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Opts};
use crate::common::wait_for;
use crate::oracle;
use crate::report::Row;
use crate::worker_faults::settle;
use crate::workload::{Durations, Expect, Job, Workload};
use crate::{scale, serial, until};

const DURATIONS: Durations = Durations {
    min_ms: 20,
    max_ms: 150,
};

async fn ready_len(c: &Cluster) -> i64 {
    until("Redis to answer", Duration::from_secs(10), || async {
        oracle::redis_state(c).await.ok()
    })
    .await
    .ready
}

#[tokio::test]
async fn redis_killed_and_restarted_from_its_aof_loses_nothing_and_reaps_no_live_worker() {
    let _serial = serial().await;
    let opts = Opts::default();
    let w = Workload::mixed("aof", scale(2_500, 30_000), DURATIONS, 11);
    let mut c = Cluster::start(opts).await;
    w.push(&c.redis_conn, &c.queue_key).await;
    let crashes = scale(3, 6);
    for _ in 0..crashes {
        // The fault schedule: crash Redis at a steady pace under load, down for a moment.
        tokio::time::sleep(scale(Duration::from_secs(2), Duration::from_secs(10))).await;
        c.redis().kill();
        tokio::time::sleep(scale(Duration::from_secs(1), Duration::from_secs(2))).await;
        c.redis().restart();
    }
    let under_load = ready_len(&c).await > 0;
    let (v, log, restarts) = settle(&mut c, &w).await;
    let reaps = c.log_lines("returned a dead worker's jobs");
    // The restarted Redis has no scripts: the workers must reload them without surfacing errors.
    let noscript = c.log_lines("NOSCRIPT").len() + c.log_lines("NoScript").len();
    let row = Row {
        fault: "3 Redis SIGKILL + AOF restart".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: String::new(),
        notes: format!(
            "{crashes} crashes, {} reaps, {} tombstones, {noscript} NOSCRIPT errors",
            reaps.len(),
            v.redis.reaped
        ),
        pass: v.clean() && reaps.is_empty() && v.redis.reaped == 0 && restarts == 0 && noscript == 0,
    };
    row.emit();
    assert!(under_load, "the last crash came after the queue had drained: raise N");
    v.assert_clean();
    assert_eq!(v.redis.reaped, 0, "a live worker was reaped after a Redis restart");
    assert!(reaps.is_empty(), "a live worker's jobs were reaped: {reaps:?}");
    assert_eq!(restarts, 0, "a replica crashed");
    assert_eq!(noscript, 0, "NOSCRIPT errors reached the workers' logs");
}

/// Every replica's `/health` status.
async fn health_all(c: &Cluster) -> Vec<u16> {
    let mut out = Vec::new();
    for slot in 0..c.replicas.len() {
        out.push(c.health(slot).await);
    }
    out
}

#[tokio::test]
#[ignore = "heavy fault: run by scripts/chaos"]
async fn redis_unreachable_past_the_deadline_fences_workers_that_stay_up_and_resume() {
    let _serial = serial().await;
    let opts = Opts::default();
    let w = Workload::mixed("outage", scale(2_500, 30_000), DURATIONS, 12);
    let mut c = Cluster::start(opts.clone()).await;
    w.push(&c.redis_conn, &c.queue_key).await;
    oracle::wait_results(&c, 100).await;
    c.redis().kill();
    let down_at = Instant::now();
    let not_ready = until("every replica to report not ready", opts.deadline() * 2, || async {
        let h = health_all(&c).await;
        h.iter().all(|s| *s == 503).then_some(h)
    })
    .await;
    let outage = opts.deadline() * 2;
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    let crashed_during = c.supervise();
    c.redis().restart();
    wait_for("every replica to report ready again", opts.deadline() * 3, || async {
        health_all(&c).await.iter().all(|s| *s == 200)
    })
    .await;
    let (v, log, restarts) = settle(&mut c, &w).await;
    let fenced = c.log_lines("no heartbeat for too long").len();
    let reaps = c.log_lines("returned a dead worker's jobs");
    let row = Row {
        fault: "4 Redis unreachable > deadline".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: format!("outage {:.1} s", outage.as_secs_f64()),
        notes: format!(
            "{fenced} fenced, health {not_ready:?} while down, {} reaps",
            reaps.len()
        ),
        pass: v.clean() && fenced >= opts.replicas && reaps.is_empty() && crashed_during + restarts == 0,
    };
    row.emit();
    v.assert_clean();
    assert!(fenced >= opts.replicas, "every worker fenced itself ({fenced})");
    assert!(reaps.is_empty(), "a live worker was reaped after the outage: {reaps:?}");
    assert_eq!(crashed_during + restarts, 0, "a replica exited");
    assert!(log.overlaps(&c.gone, None).is_empty(), "overlapping executions");
}

#[tokio::test]
#[ignore = "heavy fault: run by scripts/chaos"]
async fn script_cache_flushed_in_a_loop_under_load_loses_nothing() {
    let _serial = serial().await;
    let w = Workload::mixed("flush", scale(2_500, 30_000), DURATIONS, 13);
    let mut c = Cluster::start(Opts::default()).await;
    w.push(&c.redis_conn, &c.queue_key).await;
    let mut conn = c.redis_conn.clone();
    let flusher = tokio::spawn(async move {
        let mut flushes = 0u64;
        loop {
            if redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async::<()>(&mut conn)
                .await
                .is_ok()
            {
                flushes += 1;
            }
            // The fault's pace.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if flushes > 1_000_000 {
                return flushes;
            }
        }
    });
    let (v, log, restarts) = settle(&mut c, &w).await;
    flusher.abort();
    // A flush can land between a reload and its retry, failing that one operation (the caller
    // retries it): counted, not a failure of this test.
    let noscript = c.log_lines("NOSCRIPT").len() + c.log_lines("NoScript").len();
    let row = Row {
        fault: "9 SCRIPT FLUSH loop".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: String::new(),
        notes: format!("flush every 100 ms; {noscript} operations failed with NOSCRIPT and were retried"),
        pass: v.clean() && restarts == 0,
    };
    row.emit();
    v.assert_clean();
    assert_eq!(restarts, 0, "a replica crashed");
}

/// Pushes jobs one at a time for `during`, keeping those Redis accepted. Returns them and the
/// number of OOM refusals.
async fn produce_until_full(c: &Cluster, during: Duration) -> (Workload, u64) {
    let mut conn = c.redis_conn.clone();
    let mut w = Workload::default();
    let mut refused = 0;
    let padding = "p".repeat(2_000);
    let until = Instant::now() + during;
    let mut i = 0;
    while Instant::now() < until {
        let id = format!("full-{i}");
        i += 1;
        let payload = serde_json::json!({"id": id, "step": "chaos.exec", "input": {"ms": 20, "pad": padding}});
        let payload = payload.to_string().into_bytes();
        match redis::cmd("LPUSH")
            .arg(&c.queue_key)
            .arg(&payload)
            .query_async::<i64>(&mut conn)
            .await
        {
            Ok(_) => w.push_job(Job {
                id: Some(id),
                payload,
                expect: Expect::Succeeded,
            }),
            Err(e) if e.to_string().contains("OOM") => {
                refused += 1;
                // A producer backing off, as it should on OOM.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("unexpected Redis error: {e}"),
        }
    }
    (w, refused)
}

/// Lowers maxmemory to `by` bytes under the memory in use; returns `by`.
async fn squeeze(c: &Cluster, by: u64) -> u64 {
    let mut conn = c.redis_conn.clone();
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used.saturating_sub(by))
        .query_async(&mut conn)
        .await
        .unwrap();
    by
}

fn tiny_redis(policy: &str) -> Opts {
    Opts {
        redis_args: ["--maxmemory", "6mb", "--maxmemory-policy", policy]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Opts::default()
    }
}

#[tokio::test]
#[ignore = "heavy fault: run by scripts/chaos"]
async fn full_redis_with_noeviction_refuses_producers_while_workers_drain() {
    let _serial = serial().await;
    let mut c = Cluster::start(tiny_redis("noeviction")).await;
    let (w, refused) = produce_until_full(&c, scale(Duration::from_secs(8), Duration::from_secs(60))).await;
    // Then hold Redis over its limit (as when an operator lowers maxmemory, or other data grows)
    // so that only what the workers drain brings it back under.
    let squeezed = squeeze(&c, 1 << 20).await;
    let (v, log, restarts) = settle(&mut c, &w).await;
    let row = Row {
        fault: "11 Redis full, noeviction".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: String::new(),
        notes: format!(
            "{refused} pushes refused (OOM), then maxmemory set {squeezed} B under use; evicted_keys {}",
            v.evicted_keys
        ),
        pass: v.clean() && refused > 0 && restarts == 0,
    };
    row.emit();
    assert!(refused > 0, "Redis never filled up: lower maxmemory");
    v.assert_clean();
    assert_eq!(restarts, 0, "a replica crashed");
}

/// The negative control: the same run with an evicting policy. It is expected to lose jobs
/// (Redis deletes whole queue keys to make room), which is why production Redis must run with
/// `noeviction` and why the worker complains at startup otherwise.
#[tokio::test]
#[ignore = "heavy fault: run by scripts/chaos"]
async fn negative_control_full_redis_with_allkeys_lru_loses_jobs() {
    let _serial = serial().await;
    let mut c = Cluster::start(tiny_redis("allkeys-lru")).await;
    let (w, refused) = produce_until_full(&c, scale(Duration::from_secs(8), Duration::from_secs(30))).await;
    oracle::wait_quiet(&mut c, &w, Duration::from_secs(20)).await;
    let v = oracle::check(&c, &w).await;
    // What src/redis_guard.rs logs at startup on an evicting policy.
    let warned = c.log_lines("Redis maxmemory-policy is allkeys-lru").len();
    let row = Row {
        fault: "11b negative control: allkeys-lru".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: 0,
        overlaps: 0,
        recovery: String::new(),
        notes: format!(
            "expected to lose jobs: evicted_keys {}, {refused} refused, {warned} startup warnings",
            v.evicted_keys
        ),
        pass: v.evicted_keys > 0 && !v.lost.is_empty() && warned == c.replicas.len(),
    };
    row.emit();
    assert!(
        v.evicted_keys > 0,
        "Redis evicted nothing: the control did not exercise eviction"
    );
    assert!(!v.lost.is_empty(), "no job was lost under allkeys-lru");
    assert_eq!(
        warned,
        c.replicas.len(),
        "every worker warned about the policy at startup"
    );
}
