//! The duplicate check between claim and run: a claimed job whose id already has a terminal
//! result (`step_results`) is not run again. It is settled off this worker's list without an
//! attempt and counted as `step_worker_jobs_total{outcome="duplicate"}`; its row is left as it
//! is. This covers a producer's retried `LPUSH` and the commit-then-crash window (a worker killed
//! after its commit and before its settle: the reaper re-delivers a job that already finished).
//!
//! Rules:
//! - One store round trip per claim batch ([`Store::finished`]), asked before any job of the
//!   batch starts; the claim loop does not wait for it (the batch's task does).
//! - When the store cannot answer, the batch waits and asks again with backoff, its jobs still
//!   in this worker's list. They give their run slots up while they wait (from the first
//!   failure, or once an answer takes longer than a healthy store ever does) and keep their holds,
//!   so an outage stops claiming once the holds are taken, exactly as failing commits do
//!   (`WORKER_CONCURRENCY + COMMIT_BACKLOG` jobs a replica); each takes a run slot again before
//!   it starts. Running the batch unchecked instead would run a finished job's step again
//!   exactly when no result can be written anyway. A lost lease or the shutdown drain ends the
//!   wait: the jobs are handed back, not counted as attempts.
//! - A statement the store refuses for its data cannot be helped by asking again: that batch
//!   runs unchecked, as every batch did before this check (its result write keeps the first
//!   terminal outcome).
//! - Re-arming is `dlq replay`'s: it deletes the `dead` row, so the replayed job runs again.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::queue::Payload;
use crate::store::Store;

/// A check unanswered this long gives its batch's run slots up (see the module): far above a
/// healthy round trip (milliseconds), and short beside the pool's own wait for a connection
/// (5 s, which is how long an unreachable server takes to fail), so an outage fills the holds
/// within seconds.
const SLOW: Duration = Duration::from_secs(1);
/// First pause after a failed check: short, as a blip should delay the batch by little.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause: the batch's jobs wait on it, so a returning store is noticed within seconds
/// (the pipeline's writes, which hold nothing up but slots, back off to 30 s).
const RETRY_MAX: Duration = Duration::from_secs(5);

pub struct Dedup {
    store: Store,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The last check failed: the next batches give their run slots up at once instead of
    /// after [`SLOW`], so an outage fills the holds at the pace of claims, not of timeouts.
    failing: AtomicBool,
}

impl Dedup {
    pub fn new(store: Store, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Dedup {
            store,
            metrics,
            health,
            failing: AtomicBool::new(false),
        }
    }

    /// For each of `payloads`, in order, whether its id already has a terminal result. Retries
    /// until the store answers; `None` when `stop` was cancelled first (hand the jobs back).
    /// `waiting` is called once, when the batch starts to wait: the first answer failed, or took
    /// longer than [`SLOW`].
    pub async fn finished(
        &self,
        payloads: &[Payload],
        stop: &CancellationToken,
        waiting: impl FnOnce(),
    ) -> Option<Vec<bool>> {
        let ids: Vec<Option<String>> = payloads.iter().map(|p| crate::job::peek_id(p)).collect();
        let mut asked: Vec<String> = ids.iter().flatten().cloned().collect();
        asked.sort_unstable();
        asked.dedup();
        let found = self.ask(&asked, stop, waiting).await?;
        Some(
            ids.iter()
                .map(|id| id.as_ref().is_some_and(|id| found.contains(id)))
                .collect(),
        )
    }

    async fn ask(&self, ids: &[String], stop: &CancellationToken, waiting: impl FnOnce()) -> Option<HashSet<String>> {
        let mut pause = RETRY_MIN;
        let mut waiting = Some(waiting);
        if self.failing.load(Ordering::Relaxed)
            && let Some(waiting) = waiting.take()
        {
            waiting();
        }
        loop {
            if stop.is_cancelled() {
                return None;
            }
            let query = self.store.finished(ids);
            tokio::pin!(query);
            let answer = tokio::select! {
                r = &mut query => r,
                // A store that does not answer at once is not waited for with run slots held.
                _ = tokio::time::sleep(SLOW), if waiting.is_some() => {
                    if let Some(waiting) = waiting.take() {
                        waiting();
                    }
                    tokio::select! {
                        r = &mut query => r,
                        _ = stop.cancelled() => return None,
                    }
                }
                _ = stop.cancelled() => return None,
            };
            match answer {
                Ok(found) => {
                    self.failing.store(false, Ordering::Relaxed);
                    self.health.postgres_ok();
                    return Some(found);
                }
                // Asking again cannot help; the jobs run as they did before this check, and their
                // result write still keeps the first terminal outcome.
                Err(e) if crate::store::is_data_error(&e) => {
                    self.metrics.postgres_errors.with_label_values(&["dedup_data"]).inc();
                    tracing::error!(error = %e, jobs = ids.len(), "the store refused the duplicate check for its data; the batch runs unchecked");
                    return Some(HashSet::new());
                }
                Err(e) => {
                    self.failing.store(true, Ordering::Relaxed);
                    self.metrics.postgres_errors.with_label_values(&["dedup"]).inc();
                    self.health.postgres_failed(&e);
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, jobs = ids.len(),
                        "checking claimed jobs for a finished result failed; they wait and it is retried");
                }
            }
            if let Some(waiting) = waiting.take() {
                waiting();
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return None,
            }
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}
