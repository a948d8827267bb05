//! `RESULT_RETENTION`: every `RETENTION_CHECK_MS`, delete the outcomes older than their kind's
//! retention, in bounded batches (see [`crate::store::Prune`]). On Postgres one replica at a
//! time prunes (the others find the lock taken and wait for their next check). A failed pass is
//! logged and counted, and the next check tries again: retention never stops the worker.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::Retention;
use crate::metrics::Metrics;
use crate::store::{Prune, Store};

pub struct Retainer {
    pub store: Store,
    pub retention: Retention,
    pub metrics: Arc<Metrics>,
}

impl Retainer {
    /// The kinds with a retention, and the age past which each is deleted.
    fn targets(&self) -> Vec<(Prune, std::time::Duration)> {
        let r = &self.retention;
        [
            (Prune::Results("succeeded"), r.succeeded),
            (Prune::Results("cancelled"), r.cancelled),
            (Prune::Results("dead"), r.dead),
            (Prune::Attempts, r.attempts),
            (Prune::DeadLetters, r.dead_letters),
        ]
        .into_iter()
        .filter_map(|(what, age)| age.map(|a| (what, a)))
        .collect()
    }

    /// One pass at `now`: for each kind, batches until one comes back short. Returns the rows
    /// deleted. Stops between batches when `stop` is cancelled.
    pub async fn prune_once(&self, now: DateTime<Utc>, stop: &CancellationToken) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        for (what, age) in self.targets() {
            let before = now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
            let pruned = self.metrics.pruned_rows.with_label_values(&[what.table()]);
            total += self
                .store
                .prune_expired(what, before, |n| {
                    pruned.inc_by(n);
                    !stop.is_cancelled()
                })
                .await?;
        }
        Ok(total)
    }

    /// Checks every `RETENTION_CHECK_MS` until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.retention.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            match self.prune_once(Utc::now(), &stop).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "deleted outcomes past RESULT_RETENTION"),
                Err(e) => {
                    self.metrics.postgres_errors.with_label_values(&["retention"]).inc();
                    tracing::warn!(error = %e, "deleting outcomes past RESULT_RETENTION failed; trying again at the next check");
                }
            }
        }
    }
}
