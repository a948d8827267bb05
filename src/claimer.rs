//! The claim loop: take a slot, move jobs from the ready list into this worker's own list, and
//! start them. A slot (a run slot and a hold, see [`crate::capacity`]) is taken *before* a job is
//! claimed, so the worker never claims a job it cannot start at once; the hold is released only
//! after the job is settled.
//!
//! Under load, claims are non-blocking batches (`claim.lua`, up to `CLAIM_BATCH_SIZE` jobs per
//! command, as many as there are free slots). When the queue is empty the loop parks in a
//! `BLMOVE` with a long block on a connection of its own, which costs two commands a minute at
//! idle. That call is never abandoned mid-flight: shutdown wakes it with `CLIENT UNBLOCK`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capacity::{Capacity, Slot};
use crate::config::Config;
use crate::health::Health;
use crate::inflight::InFlight;
use crate::lease::{Identity, Lease};
use crate::metrics::Metrics;
use crate::outcome::{Claimed, Finished};
use crate::queue::{Blocking, Payload, Queue, SettleOp};
use crate::runner::Runner;

/// Pause after a failed claim before trying again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

pub struct Claimer {
    pub config: Arc<Config>,
    pub queue: Queue,
    pub lease: Arc<Lease>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub inflight: Arc<InFlight>,
    pub capacity: Arc<Capacity>,
    pub runner: Arc<Runner>,
    pub finished: UnboundedSender<Finished>,
    pub tasks: TaskTracker,
    /// The blocking connection's server-side id, for `CLIENT UNBLOCK` at shutdown (0: none).
    pub blocking_id: Arc<AtomicI64>,
    pub pause: Arc<crate::pause::Pause>,
}

/// What one pass of the claim loop did.
#[derive(Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    Claimed(usize),
    Empty,
    Fenced,
    Failed,
    Stopped,
}

impl Claimer {
    pub async fn run(self, stop: CancellationToken) {
        let mut blocking: Option<Blocking> = None;
        let mut queue_was_empty = false;
        let mut audit = false;
        while !stop.is_cancelled() {
            if audit && self.self_audit().await {
                audit = false;
            }
            let outcome = self.pass(&mut blocking, &mut queue_was_empty, &stop).await;
            self.health.claim_progress();
            match outcome {
                ClaimOutcome::Failed => {
                    blocking = None;
                    audit = true;
                    tokio::select! { _ = tokio::time::sleep(ERROR_PAUSE) => {}, _ = stop.cancelled() => {} }
                }
                ClaimOutcome::Fenced => audit = true,
                _ => {}
            }
        }
        self.blocking_id.store(0, Ordering::SeqCst);
    }

    /// One pass: wait for a valid lease and a free slot, claim what is ready (or block until
    /// something is), start the claimed jobs.
    pub async fn pass(
        &self,
        blocking: &mut Option<Blocking>,
        queue_was_empty: &mut bool,
        stop: &CancellationToken,
    ) -> ClaimOutcome {
        self.lease.wait_valid(stop).await;
        self.health.claim_waiting(true);
        // Paused by an operator: running jobs finish, nothing new is claimed.
        self.pause.wait_unpaused(stop).await;
        let first = tokio::select! {
            slot = self.capacity.acquire() => slot,
            _ = stop.cancelled() => return ClaimOutcome::Stopped,
        };
        self.health.claim_waiting(false);
        if stop.is_cancelled() {
            return ClaimOutcome::Stopped;
        }
        let identity = self.lease.identity();
        let mut slots = vec![first];
        if !*queue_was_empty {
            self.take_more(&mut slots);
            match self
                .queue
                .claim(&identity.wid, &identity.proc_key, slots.len(), &[])
                .await
            {
                Ok(r) if r.fenced => return ClaimOutcome::Fenced,
                Ok(r) if !r.jobs.is_empty() => {
                    let n = r.jobs.len();
                    self.start(r.jobs, slots, &identity);
                    return ClaimOutcome::Claimed(n);
                }
                Ok(_) => *queue_was_empty = true,
                Err(e) => return self.failed("claim", e),
            }
            slots.truncate(1);
        }
        if blocking.is_none() {
            match self.queue.blocking_conn(self.config.claim_block, &identity.wid).await {
                Ok(conn) => {
                    self.blocking_id.store(conn.client_id(), Ordering::SeqCst);
                    *blocking = Some(conn);
                }
                Err(e) => return self.failed("connect", e),
            }
        }
        if stop.is_cancelled() {
            return ClaimOutcome::Stopped;
        }
        let conn = blocking.as_mut().expect("connected above");
        let payload = match conn.claim(&identity.proc_key, self.config.claim_block).await {
            Ok(Some(p)) => p,
            Ok(None) => return ClaimOutcome::Empty,
            Err(e) => return self.failed("blmove", e),
        };
        *queue_was_empty = false;
        // Top up with whatever else is ready, and learn the claimed job's attempt count.
        self.take_more(&mut slots);
        let extra = [payload.clone()];
        let wanted = slots.len() - 1;
        match self
            .queue
            .claim(&identity.wid, &identity.proc_key, wanted, &extra)
            .await
        {
            Ok(r) if r.fenced => ClaimOutcome::Fenced,
            Ok(r) => {
                // A short top-up emptied the queue: the next pass can block at once instead of
                // first asking again (one command less per job when jobs trickle in).
                *queue_was_empty = wanted > 0 && r.jobs.len() < wanted;
                let mut jobs = Vec::with_capacity(1 + r.jobs.len());
                jobs.push((payload, r.extra_attempts.first().copied().unwrap_or(0)));
                jobs.extend(r.jobs);
                let n = jobs.len();
                self.start(jobs, slots, &identity);
                ClaimOutcome::Claimed(n)
            }
            // The payload stays in our list unknown to memory; the self-audit hands it back.
            Err(e) => self.failed("claim", e),
        }
    }

    fn take_more(&self, slots: &mut Vec<Slot>) {
        while slots.len() < self.config.claim_batch_size {
            match self.capacity.try_acquire() {
                Some(slot) => slots.push(slot),
                None => break,
            }
        }
    }

    fn failed(&self, op: &str, e: redis::RedisError) -> ClaimOutcome {
        self.metrics.redis_errors.with_label_values(&[op]).inc();
        tracing::warn!(error = %e, op, "claiming failed; retrying");
        ClaimOutcome::Failed
    }

    /// Starts one task per claimed job. Unused slots are dropped here (freed).
    fn start(&self, jobs: Vec<(Payload, u32)>, slots: Vec<Slot>, identity: &Arc<Identity>) {
        let claimed_at = chrono::Utc::now();
        let claimed_clock = std::time::Instant::now();
        for ((payload, failures), slot) in jobs.into_iter().zip(slots) {
            let ticket = self.inflight.track(payload.clone(), identity.clone());
            let claimed = Claimed {
                payload,
                identity: identity.clone(),
                failures,
                claimed_at,
                claimed_clock,
                slot,
                ticket,
            };
            let cancel = self.lease.exec_token().child_token();
            let runner = self.runner.clone();
            let finished = self.finished.clone();
            self.tasks.spawn(async move {
                let mut f = runner.run(claimed, cancel).await;
                f.claimed.slot.step_ended();
                // The pipeline outlives every job task; if it is gone the process is exiting
                // and the job stays in our Redis list for the reaper.
                let _ = finished.send(f);
            });
        }
    }

    /// Hands back payloads that sit in our Redis list but are unknown to this process: a claim
    /// whose reply was lost (connection error) or that arrived while fenced. True when done.
    async fn self_audit(&self) -> bool {
        let identity = self.lease.identity();
        let listed = match self.queue.list(&identity.proc_key).await {
            Ok(l) => l,
            Err(_) => return false,
        };
        let mut known: HashMap<Payload, usize> = HashMap::new();
        for p in self.inflight.payloads_of(&identity) {
            *known.entry(p).or_default() += 1;
        }
        let mut strays = Vec::new();
        for p in listed {
            let p = Payload::from(p);
            match known.get_mut(&p) {
                Some(n) if *n > 0 => *n -= 1,
                _ => strays.push(SettleOp::Requeue(p)),
            }
        }
        if strays.is_empty() {
            return true;
        }
        match self.queue.settle(&identity.proc_key, &strays).await {
            Ok(_) => {
                tracing::warn!(
                    count = strays.len(),
                    "handed back claimed jobs this worker had no record of"
                );
                true
            }
            Err(_) => false,
        }
    }
}
