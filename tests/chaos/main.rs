//! The fault-injection suite: real worker processes (`step-worker-chaos`, several replicas)
//! against a redis-server and a PostgreSQL the suite starts itself, so it can kill, stop and
//! restart them. Each test injects one fault under load, waits for the system to go quiet, and
//! checks the oracle (see `oracle`); it also reads the execution log (`execlog`) to count
//! duplicate and overlapping executions and recovery times.
//!
//! The fast subset (worker SIGKILL, Redis restart, Redis Cluster failover, Postgres outage,
//! poison pill among replicas and on a lone one, rolling SIGTERM, bad input, a Redis that refuses
//! `CLIENT`, a Redis or Postgres partition at shutdown, the lease faults: a replica back after its
//! tombstone was trimmed, a table lock with poison pending, a step that blocks the runtime, a
//! panic outside a step) runs in `cargo test` at small N. The rest are `#[ignore]`d and run, with
//! large N, by `scripts/chaos` (`CHAOS_FULL=1`), which prints the table of results.
//!
//! Tests run one at a time (`serial`): each starts several processes on a small machine, and
//! timing-sensitive assertions (recovery within a bound) need the CPU they assume.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod cluster;
mod execlog;
mod lease_faults;
mod oracle;
mod partition;
mod postgres_faults;
mod proxy;
mod redis_cluster;
mod redis_faults;
mod refused_commands;
mod report;
mod soak;
mod worker_faults;
mod workload;

use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};

/// Holds the suite to one fault test at a time (released on panic too).
pub async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// `CHAOS_FULL=1` selects the full run's sizes.
pub fn full() -> bool {
    std::env::var("CHAOS_FULL").is_ok_and(|v| v == "1")
}

/// `small` in the fast subset, `large` in the full run.
pub fn scale<T>(small: T, large: T) -> T {
    if full() { large } else { small }
}

/// How long a test may wait for the system to go quiet after its fault.
pub fn quiet() -> Duration {
    scale(Duration::from_secs(120), Duration::from_secs(900))
}

/// Polls `probe` until it yields a value, failing the test after `within`.
pub async fn until<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
