//! The persist-then-settle pipeline. Finished jobs queue up here; each flush writes all waiting
//! outcomes to Postgres in one statement, and only after that commit settles them in Redis with
//! one script call. Never the other order: settling first would lose the result if the process
//! died before the commit.
//!
//! Batching is natural (group commit): a flush takes whatever is waiting, up to
//! `PERSIST_BATCH_SIZE`, so an idle worker writes one row at once and a busy one writes hundreds
//! per round trip. Up to `CONCURRENT_FLUSHES` flushes overlap, each persisting then settling its
//! own jobs, so a job that finishes during a commit does not wait for that commit before its own
//! starts. Failed writes are retried with backoff for as long as it takes; the jobs stay
//! in this worker's Redis list meanwhile, and their holds stay taken, so a Postgres outage
//! stops claiming by itself. Jobs whose lease was lost are neither persisted nor settled here:
//! they belong to whoever the reaper gave them to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::lease::Lease;
use crate::maintenance::Promoter;
use crate::metrics::Metrics;
use crate::outcome::{Finished, Settle};
use crate::queue::{Queue, SettleOp};
use crate::store::{self, Batch, Store};

/// Retry pauses for Postgres and Redis writes: quick at first, then no more than every 30 s.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Flushes in flight at once. Two hide one commit's latency behind the next batch's; more would
/// only split busy batches into smaller statements.
const CONCURRENT_FLUSHES: usize = 2;

pub struct Pipeline {
    pub store: Store,
    pub queue: Queue,
    pub lease: Arc<Lease>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub promoter: Arc<Promoter>,
    pub notifier: Arc<crate::notify::Notifier>,
    pub batch_size: usize,
}

impl Pipeline {
    /// Flushes until the channel closes. `give_up` (the end of the shutdown drain) turns
    /// persistence failures into hand-backs and ends settle retries, so shutdown is bounded.
    pub async fn run(self, mut rx: UnboundedReceiver<Finished>, give_up: CancellationToken) {
        let mut items = Vec::with_capacity(self.batch_size);
        let mut flushes = FuturesUnordered::new();
        let mut open = true;
        while open || !flushes.is_empty() {
            tokio::select! {
                n = rx.recv_many(&mut items, self.batch_size), if open && flushes.len() < CONCURRENT_FLUSHES => {
                    if n == 0 {
                        open = false;
                    } else {
                        flushes.push(self.flush(std::mem::take(&mut items), &give_up));
                    }
                }
                Some(()) = flushes.next(), if !flushes.is_empty() => {}
            }
        }
    }

    async fn flush(&self, items: Vec<Finished>, give_up: &CancellationToken) {
        let mut items = self.drop_rescued(items);
        let mut committed = None;
        if items.iter().any(Finished::has_rows) {
            self.lease.wait_valid(give_up).await;
            items = self.drop_rescued(items);
            if !self.lease.is_valid() {
                // Shutdown with no lease (Redis unreachable): leave the jobs in our list, where
                // the other workers' reapers will find them.
                return;
            }
            if !self.persist(&mut items, give_up).await {
                for item in &mut items {
                    item.settle = Settle::Requeue;
                }
            } else {
                crate::failpoint::after_commit();
                committed = Some(Instant::now());
                let jobs = items.iter().filter(|f| f.has_rows()).count();
                for item in items.iter().filter(|f| f.has_rows()) {
                    crate::trace::attempt::committed(&item.span, jobs);
                }
            }
        }
        self.settle(items, give_up, committed).await;
    }

    /// Jobs claimed under an identity that was reaped now run elsewhere: forget them.
    fn drop_rescued(&self, items: Vec<Finished>) -> Vec<Finished> {
        let (keep, lost): (Vec<_>, Vec<_>) = items.into_iter().partition(|f| !f.claimed.identity.is_reaped());
        for f in &lost {
            tracing::debug!(step = %f.step_label, "outcome dropped: the job was rescued after this worker lost its lease");
            self.metrics.job(&f.step_label, "abandoned");
        }
        keep
    }

    /// Writes the rows of `items`; false when it gave up (shutdown) before a commit.
    async fn persist(&self, items: &mut [Finished], give_up: &CancellationToken) -> bool {
        let batch = batch_of(items.iter());
        let mut pause = RETRY_MIN;
        loop {
            match self.store.persist(&batch).await {
                Ok(written) => {
                    self.health.postgres_ok();
                    self.metrics.persist_batch.observe(batch.len() as f64);
                    let duplicates = batch.results.len().saturating_sub(written.len());
                    self.metrics.duplicate_completions.inc_by(duplicates as u64);
                    return true;
                }
                Err(e) if store::is_data_error(&e) => {
                    tracing::error!(error = %e, "a batch was refused for its data; writing its rows one by one");
                    self.metrics.postgres_errors.with_label_values(&["persist_data"]).inc();
                    self.persist_each(items).await;
                    return true;
                }
                Err(e) => {
                    self.metrics.postgres_errors.with_label_values(&["persist"]).inc();
                    self.health.postgres_failed(&e);
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, rows = batch.len(), "persisting outcomes failed; retrying");
                    if sleep_or(pause, give_up).await {
                        return false;
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Last resort for a batch Postgres refuses: each item alone, and an item that still fails is
    /// reduced to a dead letter holding its raw payload and the database's error.
    async fn persist_each(&self, items: &mut [Finished]) {
        for item in items.iter_mut() {
            let one = batch_of(std::iter::once(&*item));
            let Err(e) = self.store.persist(&one).await else {
                continue;
            };
            let mut stored = false;
            for reduced in item.unstorable(&e.to_string()) {
                match self.store.persist(&reduced).await {
                    Ok(_) => {
                        stored = true;
                        break;
                    }
                    Err(e) => tracing::error!(error = %e, "a reduced outcome was refused too"),
                }
            }
            if !stored {
                tracing::error!(
                    "an outcome could not be stored even as a dead letter; the job stays claimed until recovered"
                );
                item.settle = Settle::Requeue;
                continue;
            }
            item.settle = Settle::Done;
        }
    }

    /// `committed`: when this batch's rows were committed (none were written: `None`).
    async fn settle(&self, items: Vec<Finished>, give_up: &CancellationToken, committed: Option<Instant>) {
        let mut groups: HashMap<&str, Vec<&Finished>> = HashMap::new();
        for item in &items {
            groups
                .entry(item.claimed.identity.proc_key.as_str())
                .or_default()
                .push(item);
        }
        for (proc, group) in groups {
            // A release right after its job's own op: the copy is marked running until it has
            // left our list, and the mark goes only if it did (see `SettleOp::Release`).
            let mut ops: Vec<SettleOp> = Vec::with_capacity(group.len() * 2);
            for f in &group {
                ops.push(settle_op(f));
                ops.extend(release_op(f));
            }
            let mut pause = RETRY_MIN;
            let owned = loop {
                if group[0].claimed.identity.is_reaped() {
                    break None;
                }
                match self.queue.settle(proc, &ops).await {
                    Ok(owned) => break Some(owned),
                    Err(e) => {
                        self.metrics.redis_errors.with_label_values(&["settle"]).inc();
                        tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "settling jobs in Redis failed; retrying");
                        if sleep_or(pause, give_up).await {
                            break None;
                        }
                        pause = (pause * 2).min(RETRY_MAX);
                    }
                }
            };
            let Some(owned) = owned else { continue };
            for (f, owned) in group.iter().zip(owned) {
                self.count(f, owned, committed);
            }
        }
    }

    fn count(&self, f: &Finished, owned: bool, committed: Option<Instant>) {
        crate::trace::attempt::settled(&f.span, if owned { settle_name(&f.settle) } else { "gone" });
        if !owned {
            tracing::debug!(step = %f.step_label, "settle found the job gone from our list (settled before, or rescued)");
            return;
        }
        match &f.settle {
            Settle::Done if let Some(letter) = &f.dead_letter => {
                self.metrics.job(&f.step_label, "dead");
                self.notifier.dead_lettered(letter);
            }
            Settle::Done => {
                let now = Instant::now();
                let overhead = now.duration_since(f.claimed.claimed_clock).saturating_sub(f.ran_for);
                self.metrics.job_overhead.observe(overhead.as_secs_f64());
                if let (Some(ended), Some(committed)) = (f.claimed.ended_clock, committed) {
                    let before = ended.duration_since(f.claimed.claimed_clock).saturating_sub(f.ran_for);
                    let phases = &self.metrics.overhead_phases;
                    phases.before_step_end.observe(before.as_secs_f64());
                    phases
                        .step_end_to_commit
                        .observe(committed.duration_since(ended).as_secs_f64());
                    phases
                        .commit_to_settled
                        .observe(now.duration_since(committed).as_secs_f64());
                }
            }
            Settle::Retry(delay) => {
                self.metrics.job(&f.step_label, "retried");
                self.promoter.schedule(*delay);
            }
            Settle::Delay { after, .. } => {
                self.metrics.job(&f.step_label, "delayed");
                self.promoter.schedule(*after);
            }
            Settle::Requeue => self.metrics.job(&f.step_label, "requeued"),
            Settle::Duplicate => self.metrics.job(&f.step_label, "duplicate"),
            Settle::Hold(_) => self.metrics.job(&f.step_label, "held"),
        }
    }
}

/// How a job left this worker's list, as its span's `settled` event says.
fn settle_name(settle: &Settle) -> &'static str {
    match settle {
        Settle::Done => "done",
        Settle::Retry(_) => "retry",
        Settle::Delay { .. } => "delay",
        Settle::Duplicate => "duplicate",
        Settle::Requeue => "requeue",
        Settle::Hold(_) => "hold",
    }
}

fn settle_op(f: &Finished) -> SettleOp {
    let p = f.claimed.payload.clone();
    match &f.settle {
        // A duplicate leaves the list as a done job does: its counters are forgotten too (the
        // copy that finished forgot them already).
        Settle::Done | Settle::Duplicate => SettleOp::Done(p),
        Settle::Retry(delay) => SettleOp::Retry(p, *delay),
        Settle::Delay { after, payload } => SettleOp::Delay(p, *after, payload.clone()),
        Settle::Requeue => SettleOp::Requeue(p),
        Settle::Hold(step) => SettleOp::Hold(p, step.clone()),
    }
}

/// The running mark this job's copy took before it started ([`crate::dedup`]), if any.
fn release_op(f: &Finished) -> Option<SettleOp> {
    f.claimed
        .verdict
        .active()
        .map(|id| SettleOp::Release { id: id.to_owned() })
}

/// The rows of some finished jobs, with at most one result row per job id (Postgres refuses a
/// statement that would upsert one key twice; the first outcome wins, as it would across batches).
fn batch_of<'a>(items: impl Iterator<Item = &'a Finished>) -> Batch {
    let mut batch = Batch::default();
    let mut seen = std::collections::HashSet::new();
    for f in items {
        if matches!(
            f.settle,
            Settle::Requeue | Settle::Hold(_) | Settle::Delay { .. } | Settle::Duplicate
        ) {
            continue;
        }
        if let Some(r) = &f.result {
            if !seen.insert(r.job_id.clone()) {
                continue;
            }
            batch.results.push(r.clone());
        }
        batch.dead_letters.extend(f.dead_letter.clone());
        batch.attempts.extend(f.attempt.clone());
    }
    batch
}

/// Sleeps for `pause`; true if `stop` was cancelled first.
async fn sleep_or(pause: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => false,
        _ = stop.cancelled() => true,
    }
}
