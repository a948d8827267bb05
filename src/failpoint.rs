//! Fault-injection points for the fault suite (`tests/chaos`). Off unless the process was started
//! with `STEP_WORKER_FAILPOINTS`, which is read once and is deliberately not part of [`Config`]:
//! it is a test instrument, not a setting, and production never sets it.
//!
//! The points, as `name=<probability>` (several separated by commas):
//! - `after_commit` aborts the process right after a batch of outcomes is committed to Postgres
//!   and before it is settled in Redis, the window in which a crash makes a job run again (design
//!   note §3.8, W2). Example: `STEP_WORKER_FAILPOINTS=after_commit=0.02`.
//! - `before_step` panics on a job's path outside its step (after the decode, before the step
//!   runs), as a bug there would: the job must be handed back, not stranded.
//!
//! [`Config`]: crate::Config

use std::sync::OnceLock;

/// The variable that arms the failpoints.
pub const VAR: &str = "STEP_WORKER_FAILPOINTS";

/// The probability armed for the point `name` in `spec`, if any.
fn probability_in(spec: &str, name: &str) -> Option<f64> {
    let p = spec
        .split(',')
        .find_map(|part| part.trim().strip_prefix(name)?.strip_prefix('='))?
        .parse::<f64>()
        .ok()?;
    (p > 0.0).then_some(p.min(1.0))
}

/// Probability of aborting after a commit, if armed.
fn after_commit_probability() -> Option<f64> {
    static P: OnceLock<Option<f64>> = OnceLock::new();
    *P.get_or_init(|| probability_in(&std::env::var(VAR).ok()?, "after_commit"))
}

/// Probability of a panic before a step, if armed.
fn before_step_probability() -> Option<f64> {
    static P: OnceLock<Option<f64>> = OnceLock::new();
    *P.get_or_init(|| probability_in(&std::env::var(VAR).ok()?, "before_step"))
}

/// Called on a job's path just before its step runs: panics when armed and the dice say so.
pub fn before_step() {
    if let Some(p) = before_step_probability()
        && rand::random::<f64>() < p
    {
        panic!("failpoint before_step: a panic outside the step");
    }
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

#[cfg(test)]
mod tests {
    use super::probability_in;

    #[test]
    fn points_are_read_by_name_from_a_comma_separated_spec() {
        let spec = "after_commit=0.02, before_step=0.5";
        assert_eq!(probability_in(spec, "after_commit"), Some(0.02));
        assert_eq!(probability_in(spec, "before_step"), Some(0.5));
        assert_eq!(probability_in("after_commit=0", "after_commit"), None);
        assert_eq!(probability_in("after_commit=2", "after_commit"), Some(1.0));
        assert_eq!(probability_in(spec, "other"), None);
    }
}
