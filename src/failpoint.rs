//! Fault-injection points for the fault suite (`tests/chaos`). Off unless the process was started
//! with `STEP_WORKER_FAILPOINTS`, which is read once and is deliberately not part of [`Config`]:
//! it is a test instrument, not a setting, and production never sets it.
//!
//! The one point: `after_commit=<probability>` aborts the process right after a batch of outcomes
//! is committed to Postgres and before it is settled in Redis, the window in which a crash makes a
//! job run again (design note §3.8, W2). Example: `STEP_WORKER_FAILPOINTS=after_commit=0.02`.
//!
//! [`Config`]: crate::Config

use std::sync::OnceLock;

/// The variable that arms the failpoints.
pub const VAR: &str = "STEP_WORKER_FAILPOINTS";

/// Probability of aborting after a commit, if armed.
fn after_commit_probability() -> Option<f64> {
    static P: OnceLock<Option<f64>> = OnceLock::new();
    *P.get_or_init(|| {
        let spec = std::env::var(VAR).ok()?;
        let p = spec.strip_prefix("after_commit=")?.parse::<f64>().ok()?;
        (p > 0.0).then_some(p.min(1.0))
    })
}

/// Called between the commit of a batch and its settle: aborts the process when armed and the
/// dice say so. A no-op (one atomic load) when not armed.
pub fn after_commit() {
    if let Some(p) = after_commit_probability()
        && rand::random::<f64>() < p
    {
        eprintln!("failpoint after_commit: aborting between commit and settle");
        std::process::abort();
    }
}
