//! Cancellations on this worker's side: firing the tokens of the jobs an operator cancelled
//! (what a heartbeat reports), following cancellations of jobs this worker no longer holds, and
//! the drain of the cancelled outbox (jobs removed by a cancellation whose rows are not yet
//! written: the canceller's write failed, or a reaper moved them there).

use std::collections::HashSet;

use super::Maintenance;
use crate::queue::{Beat, CancelTarget};

/// Outbox entries filed per drain.
const DRAIN: usize = 100;

impl Maintenance {
    /// Fires the cancellation of each of this worker's jobs the beat names. Cheap (in memory),
    /// so it runs on the beat itself: a cancellation takes effect within one heartbeat.
    pub(super) fn fire_cancels(&self, beat: &Beat) {
        if !beat.cancel.is_empty() {
            let wid = self.lease.identity().wid.clone();
            self.inflight.cancel(&wid, &beat.cancel);
        }
    }

    /// Settles the cancellations of ids this worker no longer holds: settled, or handed on
    /// (a retry, a requeue at shutdown, a paused step, a due time) before the cancellation
    /// reached it. Each is followed to wherever the job went, then forgotten. An id counts as
    /// no longer held only when two beats in a row found it missing: a job whose claim reply is
    /// still on its way is in our Redis list but not yet in our table. Cancellations of workers
    /// that are gone (`cancel_orphans`) are followed the same way.
    pub(super) async fn settle_cancels(&self, beat: &Beat) {
        let wid = self.lease.identity().wid.clone();
        let held = self.inflight.cancel(&wid, &beat.cancel);
        let missing: HashSet<String> = beat.cancel.iter().filter(|id| !held.contains(*id)).cloned().collect();
        let gone: Vec<String> = {
            let mut previous = self.cancels_missing.lock().unwrap();
            let gone = missing.intersection(&previous).cloned().collect();
            *previous = missing;
            gone
        };
        let mut forget = Vec::with_capacity(gone.len());
        for id in gone {
            if self.follow(&id, &wid, &wid).await {
                forget.push(id);
            }
        }
        self.forget(&wid, &forget).await;
        for field in &beat.cancel_orphans {
            let Some((owner, id)) = field.split_once('\n') else {
                continue;
            };
            if self.follow(id, owner, &wid).await {
                self.forget(owner, &[id.to_owned()]).await;
            }
        }
    }

    /// Cancels job `id` wherever it is now, unless it has a result already (it finished, or was
    /// cancelled). False when its cancellation must stay (the job came back to worker `holder`,
    /// or Redis or Postgres failed: tried again on a later beat).
    async fn follow(&self, id: &str, holder: &str, by: &str) -> bool {
        match self.store.result(id).await {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(e) => {
                self.metrics.postgres_errors.with_label_values(&["cancel"]).inc();
                tracing::warn!(error = %e, job.id = %id, "checking a cancelled job's result failed; retrying on a later beat");
                return false;
            }
        }
        match self.queue.cancel(&CancelTarget::Id(id.to_owned()), by).await {
            Ok(reply) => {
                if !reply.removed.is_empty() {
                    tracing::info!(job.id = %id, "a cancelled job had been handed on before its worker saw the cancellation; cancelled where it went");
                    self.drain_cancelled().await;
                }
                !reply.running.iter().any(|(w, i)| w == holder && i == id)
            }
            Err(e) => {
                self.metrics.redis_errors.with_label_values(&["cancel"]).inc();
                tracing::warn!(error = %e, job.id = %id, "following a cancellation failed; retrying on a later beat");
                false
            }
        }
    }

    async fn forget(&self, wid: &str, ids: &[String]) {
        if let Err(e) = self.queue.cancel_forget(wid, ids).await {
            self.metrics.redis_errors.with_label_values(&["cancel"]).inc();
            tracing::warn!(error = %e, "forgetting settled cancellations failed; retrying on a later beat");
        }
    }

    /// Writes the rows of cancelled outbox entries and removes them.
    pub async fn drain_cancelled(&self) {
        let entries = match self.queue.cancelled_peek(DRAIN).await {
            Ok(e) if !e.is_empty() => e,
            Ok(_) => return,
            Err(e) => {
                self.metrics.redis_errors.with_label_values(&["cancel"]).inc();
                return tracing::warn!(error = %e, "reading the cancelled outbox failed");
            }
        };
        let wid = self.lease.identity().wid.clone();
        let batch = crate::cancel::rows(&entries, &wid);
        if let Err(e) = self.store.persist(&batch).await {
            self.metrics.postgres_errors.with_label_values(&["cancel"]).inc();
            return tracing::warn!(error = %e, "writing cancelled rows failed; retrying on a later beat");
        }
        tracing::info!(count = entries.len(), "recorded cancelled jobs");
        if let Err(e) = self.queue.cancelled_remove(&entries, false).await {
            tracing::warn!(error = %e, "clearing the cancelled outbox failed; entries will be filed again");
        }
    }
}
