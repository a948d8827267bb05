//! A managed Redis that refuses commands: Memorystore and other services refuse the whole
//! `CLIENT` command, and ACL users are often created without `+client`. `CLIENT` is optional:
//! jobs pushed after the queue has been idle (when an idle worker's claim goes through its
//! blocking connection, which `CLIENT` used to name) must all be done.

use std::time::Duration;

use crate::cluster::{Cluster, Opts, WORKER_PASSWORD};
use crate::oracle;
use crate::report::Row;
use crate::serial;
use crate::worker_faults::settle;
use crate::workload::{Durations, Workload};

const DURATIONS: Durations = Durations { min_ms: 5, max_ms: 50 };

#[tokio::test]
async fn redis_with_client_renamed_away_still_gets_jobs_pushed_after_an_idle_queue_done() {
    let opts = Opts {
        redis_conf: vec![r#"rename-command CLIENT """#.to_owned()],
        ..Opts::default()
    };
    jobs_after_idle_are_done("15 CLIENT renamed away", opts, 31).await;
}

#[tokio::test]
async fn redis_acl_user_without_client_still_gets_jobs_pushed_after_an_idle_queue_done() {
    let opts = Opts {
        redis_acl: Some(format!("on >{WORKER_PASSWORD} ~* &* +@all -client -config")),
        ..Opts::default()
    };
    jobs_after_idle_are_done("15b ACL user without +client", opts, 32).await;
}

async fn jobs_after_idle_are_done(fault: &str, opts: Opts, seed: u64) {
    let _serial = serial().await;
    let mut c = Cluster::start(opts).await;
    // Idle first: every replica has found the queue empty and gone to its blocking claim (or,
    // where that fails, logged it: a failure turns `/health` 503 within seconds).
    let idle = crate::until("every replica idle and ready", Duration::from_secs(30), || async {
        let mut all = true;
        for slot in 0..c.replicas.len() {
            all &= c.health(slot).await == 200;
        }
        let blocking_failed = !c.log_lines("claiming failed").is_empty();
        (all || blocking_failed).then_some(all)
    })
    .await;
    let w = Workload::mixed("refused", 1_000, DURATIONS, seed);
    w.push(&c.redis_conn, &c.queue_key).await;
    let (v, log, restarts) = settle(&mut c, &w).await;
    let failed_claims = c.log_lines("claiming failed").len();
    let mut ready_after = Vec::new();
    for slot in 0..c.replicas.len() {
        ready_after.push(c.health(slot).await);
    }
    let row = Row {
        fault: fault.into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: log.duplicates(),
        overlaps: log.overlaps(&c.gone, None).len(),
        recovery: String::new(),
        notes: format!("{failed_claims} failed claims; /health after: {ready_after:?}"),
        pass: v.clean() && idle && failed_claims == 0 && restarts == 0,
    };
    row.emit();
    v.assert_clean();
    assert!(idle, "a replica was not ready while idle");
    assert_eq!(failed_claims, 0, "claims failed: {:?}", c.log_lines("claiming failed"));
    assert!(ready_after.iter().all(|s| *s == 200), "/health after: {ready_after:?}");
    assert_eq!(restarts, 0, "a replica crashed");
    assert_eq!(oracle::redis_state(&c).await.unwrap().workers, c.replicas.len() as i64);
    // The startup line gives the address it serves on, not a debug print of an `Option`.
    for line in c.log_lines("worker started") {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let http = v["fields"]["http"].as_str().unwrap_or_default();
        assert!(
            http.parse::<std::net::SocketAddr>().is_ok(),
            "http = {http:?} in {line}"
        );
    }
}
