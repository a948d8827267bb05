//! Faults of the lease itself: a worker reaped while frozen that comes back long after, a
//! heartbeat that other work could hold up (a Postgres table lock with a poison entry pending),
//! and a native step that blocks the runtime's only thread; and a panic on a job's path outside
//! its step.

use std::time::Duration;

use crate::cluster::{Cluster, Opts};
use crate::oracle;
use crate::report::Row;
use crate::worker_faults::{settle, started_worker_id};
use crate::workload::{Durations, Expect, Job, Workload, exec};
use crate::{serial, until};

/// A replica frozen (SIGSTOP) while it runs a job is reaped, the job completes elsewhere, and the
/// reap's tombstone is trimmed (as `TOMBSTONE_KEEP_MS` would, here at once, so the test does not
/// wait 10 min). Resumed, the replica must learn it was reaped (not "Redis lost my data"), drop
/// what it ran and take a new id. Its blocking claim must also have ended before the reap: one
/// still waiting at the server takes the jobs the reaper returns back into the dead list.
#[tokio::test]
async fn frozen_replica_back_after_its_tombstone_is_trimmed_is_fenced_and_left_no_claim_behind() {
    let _serial = serial().await;
    // The production block time: a claim that outlives the fence is what is being tested.
    let opts = Opts {
        replicas: 2,
        ..Opts::default()
    }
    .with_env("CLAIM_BLOCK_MS", "30000");
    let mut w = Workload::default();
    w.push_job(exec("held-by-frozen", 6_000, 0, Expect::Succeeded));
    let mut c = Cluster::start(opts.clone()).await;
    w.push(&c.redis_conn, &c.queue_key).await;
    let runner = until("the long job to start", Duration::from_secs(30), || async {
        crate::execlog::ExecLog::read(c.exec_dir()).execs.first().map(|e| e.pid)
    })
    .await;
    let slot = (0..opts.replicas).find(|s| c.replica(*s).pid == runner).unwrap();
    let old_wid = started_worker_id(&c, slot);
    c.signal(slot, libc::SIGSTOP);
    let mut redis = c.redis_conn.clone();
    let reaped_key = c.key("reaped");
    // Reaped once its deadline has passed and a reaper's scan comes round: the full run uses the
    // production deadline (30 s), so the wait is counted in deadlines, not seconds.
    until("the frozen replica to be reaped", opts.deadline() * 3, || {
        let (mut redis, key, wid) = (redis.clone(), reaped_key.clone(), old_wid.clone());
        async move {
            let at: Option<f64> = redis::cmd("ZSCORE")
                .arg(key)
                .arg(wid)
                .query_async(&mut redis)
                .await
                .unwrap();
            at.map(|_| ())
        }
    })
    .await;
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut redis).await.unwrap();
    let still_blocked: Vec<&str> = clients
        .lines()
        .filter(|l| l.contains(&format!("name=step-worker:{old_wid} ")) && l.contains("cmd=blmove"))
        .filter(|l| l.split(' ').any(|f| f.starts_with("flags=") && f.contains('b')))
        .collect();
    // Jobs the reaper returns go to the end a still-blocked claim takes from: send some.
    let mut more = Workload::mixed("after-reap", 40, Durations { min_ms: 10, max_ms: 50 }, 11);
    more.push(&c.redis_conn, &c.queue_key).await;
    w.jobs.append(&mut more.jobs);
    oracle::wait_results(&c, w.valid().count() as i64).await;
    // The tombstone is trimmed; then the frozen replica comes back.
    let _: i64 = redis::cmd("ZREM")
        .arg(&reaped_key)
        .arg(&old_wid)
        .query_async(&mut redis)
        .await
        .unwrap();
    c.signal(slot, libc::SIGCONT);
    // It notices one way or the other: reaped (right), or "Redis lost my data" (the old fault).
    until("the resumed replica to notice", Duration::from_secs(30), || async {
        let noticed = c.log_lines("this worker was declared dead").len() + c.log_lines("restored its claims").len();
        (noticed > 0).then_some(())
    })
    .await;
    let (v, log, restarts) = settle(&mut c, &w).await;
    let restored = c.log_lines("restored its claims").len();
    let old_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM step_results WHERE worker_id = $1")
        .bind(&old_wid)
        .fetch_one(&c.pg_pool)
        .await
        .unwrap();
    let interrupted: i64 = sqlx::query_scalar("SELECT count(*) FROM step_dead_letters WHERE reason = 'interrupted'")
        .fetch_one(&c.pg_pool)
        .await
        .unwrap();
    let foreign = log
        .overlaps(&c.gone, None)
        .iter()
        .filter(|(a, b)| a.pid != runner && b.pid != runner)
        .count();
    let row = Row {
        fault: "7b SIGSTOP past the tombstone".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: String::new(),
        notes: format!(
            "claims still blocked at the reap {}, restored {restored}, rows under the old id {old_rows}",
            still_blocked.len()
        ),
        pass: v.clean() && still_blocked.is_empty() && restored == 0 && old_rows == 0 && foreign == 0,
    };
    row.emit();
    assert!(
        still_blocked.is_empty(),
        "a reaped worker's claim was still waiting: {still_blocked:?}"
    );
    assert_eq!(restored, 0, "the reaped worker re-adopted jobs under its old id");
    assert_eq!(old_rows, 0, "rows persisted under the reaped id");
    assert_eq!(interrupted, 0, "an innocent job was dead-lettered as interrupted");
    assert_eq!(foreign, 0, "overlaps among workers that were never frozen");
    assert_eq!(restarts, 0, "a replica crashed");
    v.assert_clean();
    let workers: Vec<String> = redis::cmd("ZRANGE")
        .arg(c.key("workers"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!workers.contains(&old_wid), "the reaped id is registered again");
    assert_eq!(workers.len(), opts.replicas, "the resumed replica registered a new id");
}

/// Every registered worker's deadline, against Redis's clock: how far past it each one is (ms,
/// negative while the deadline is ahead).
async fn overdue(c: &Cluster) -> Vec<(String, f64)> {
    let mut redis = c.redis_conn.clone();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
    let now = (secs * 1000 + micros / 1000) as f64;
    let deadlines: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(c.key("workers"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut redis)
        .await
        .unwrap();
    deadlines.into_iter().map(|(w, d)| (w, now - d)).collect()
}

/// With a table lock held (a `VACUUM FULL`, an `ALTER TABLE`, a long operator transaction) and a
/// poison entry waiting to be filed, the drain of the poison outbox waits on Postgres. It used to
/// run inside the heartbeat, so beats stopped and workers were reaped with their jobs running.
#[tokio::test]
async fn a_table_lock_with_poison_pending_never_holds_up_a_heartbeat() {
    let _serial = serial().await;
    let opts = Opts::default();
    let durations = Durations {
        min_ms: 20,
        max_ms: 100,
    };
    let mut w = Workload::mixed("locked", 600, durations, 12);
    let mut c = Cluster::start(opts.clone()).await;
    w.push(&c.redis_conn, &c.queue_key).await;
    oracle::wait_results(&c, 50).await;
    let mut lock = c.pg_pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE step_dead_letters IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    // A poison entry as the reaper files it: 'recoveries|at_ms|wid|payload'.
    let pill = br#"{"id":"locked-poison","step":"chaos.exec"}"#;
    let mut entry = b"4|0|gone-host:1:00000000|".to_vec();
    entry.extend_from_slice(pill);
    let _: i64 = redis::cmd("LPUSH")
        .arg(c.key("poison"))
        .arg(entry)
        .query_async(&mut c.redis_conn.clone())
        .await
        .unwrap();
    w.push_job(Job {
        id: Some("locked-poison".into()),
        payload: pill.to_vec(),
        expect: Expect::Dead("interrupted"),
    });
    // Hold the lock for twice the deadline; no registered worker may pass its deadline.
    let held = std::time::Instant::now();
    let mut worst = f64::MIN;
    while held.elapsed() < opts.deadline() * 2 {
        for (_, late) in overdue(&c).await {
            worst = worst.max(late);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lock.rollback().await.unwrap();
    let (v, log, restarts) = settle(&mut c, &w).await;
    let reaps = c.log_lines("returned a dead worker's jobs").len();
    let row = Row {
        fault: "18 table lock, poison pending".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: String::new(),
        notes: format!(
            "lock held {:.1} s, worst deadline overrun {worst:.0} ms, {reaps} reaps",
            held.elapsed().as_secs_f64()
        ),
        pass: v.clean() && worst < 0.0 && reaps == 0 && restarts == 0,
    };
    row.emit();
    assert!(
        worst < 0.0,
        "a worker passed its heartbeat deadline by {worst} ms during the lock"
    );
    assert_eq!(reaps, 0, "a live worker was reaped");
    assert!(log.overlaps(&c.gone, None).is_empty(), "overlapping executions");
    assert_eq!(restarts, 0, "a replica crashed");
    v.assert_clean();
}

/// A native step that blocks its thread (`std::thread::sleep`, a CPU loop) on a runtime with one
/// worker thread (a 1-vCPU container) stops the heartbeat; the beat never fails, so only the
/// watchdog thread can fence. Shorter than the deadline, the job is not reaped: it completes
/// once, on the replica that ran it, after a beat has proved the lease again.
#[tokio::test]
async fn a_step_that_blocks_the_only_runtime_thread_is_fenced_and_never_overlaps() {
    let _serial = serial().await;
    let opts = Opts {
        replicas: 2,
        ..Opts::default()
    }
    .with_env("TOKIO_WORKER_THREADS", "1");
    let mut w = Workload::mixed("blocking", 200, Durations { min_ms: 10, max_ms: 50 }, 13);
    // Past the fence (2/3 of the deadline), short of deadline + grace.
    let block_ms = opts.deadline_ms * 4 / 5;
    for i in 0..3 {
        let payload =
            serde_json::json!({"id": format!("blocker-{i}"), "step": "chaos.block", "input": {"ms": block_ms}});
        w.jobs.insert(
            i * 60,
            Job {
                id: Some(format!("blocker-{i}")),
                payload: payload.to_string().into_bytes(),
                expect: Expect::Succeeded,
            },
        );
    }
    let mut c = Cluster::start(opts).await;
    w.push(&c.redis_conn, &c.queue_key).await;
    let (v, log, restarts) = settle(&mut c, &w).await;
    let fenced = c.log_lines("no heartbeat for too long").len();
    let reaps = c.log_lines("returned a dead worker's jobs").len();
    let overlaps = log.overlaps(&c.gone, None);
    let row = Row {
        fault: "19 step blocks the runtime".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: overlaps.len(),
        recovery: String::new(),
        notes: format!("{fenced} fences by the watchdog, {reaps} reaps, blocks of {block_ms} ms"),
        pass: v.clean() && fenced >= 1 && overlaps.is_empty() && restarts == 0,
    };
    row.emit();
    assert!(
        fenced >= 1,
        "no fence while the runtime was blocked past the fence time"
    );
    assert!(overlaps.is_empty(), "overlapping executions: {overlaps:?}");
    assert_eq!(restarts, 0, "a replica crashed");
    v.assert_clean();
}

/// A panic on a job's path outside its step (here a failpoint, 5 % of jobs, after the decode and
/// before the step) used to kill the job's task with no outcome: the payload stayed in the
/// worker's list, tracked by nothing, until a restart. It is caught and the job handed back.
#[tokio::test]
async fn a_panic_outside_a_step_hands_the_job_back() {
    let _serial = serial().await;
    let opts = Opts::default().with_env("STEP_WORKER_FAILPOINTS", "before_step=0.05");
    let w = Workload::mixed("panics", 400, Durations { min_ms: 10, max_ms: 50 }, 14);
    let mut c = Cluster::start(opts).await;
    w.push(&c.redis_conn, &c.queue_key).await;
    let (v, log, restarts) = settle(&mut c, &w).await;
    let caught = c.log_lines("panicked outside its step").len();
    let row = Row {
        fault: "20 panic outside a step".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: String::new(),
        notes: format!("{caught} panics caught and handed back"),
        pass: v.clean() && caught > 0 && restarts == 0,
    };
    row.emit();
    v.assert_clean();
    assert!(caught > 0, "the failpoint never fired");
    assert_eq!(restarts, 0, "a replica crashed");
}
