//! The claim loop: take a slot, move jobs from the ready list into this worker's own list, and
//! start them. A slot (a run slot and a hold, see [`crate::capacity`]) is taken *before* a job is
//! claimed, so the worker never claims a job it cannot start at once; the hold is released only
//! after the job is settled.
//!
//! Under load, claims are non-blocking batches (`claim.lua`, up to `CLAIM_BATCH_SIZE` jobs per
//! command, as many as there are free slots). When the queue is empty the loop parks in a
//! `BLMOVE` with a long block on a connection of its own, which costs two commands a minute at
//! idle. Shutdown wakes it with `CLIENT UNBLOCK` where Redis allows `CLIENT`; where it does
//! not, shutdown waits for it, and abandons it only at its deadline (see `worker.rs` for why
//! that loses nothing).
//!
//! Suspects. When a worker dies, the reaper returns all of its jobs to the queue together, and a
//! batch claim would put them on one worker together again: a poison pill among them would kill
//! the same bystanders on every run until they too were dead-lettered. So a job recovered from
//! dead workers twice (see [`suspect_threshold`]) is a suspect, and runs alone. `claim.lua` never
//! batches one with other jobs and says when one is next (`suspect_waiting`); the loop then waits
//! for every slot (every job it runs finished *and* settled, so a crash leaves nothing behind to
//! recover), claims alone, and runs the suspect with all slots held until its step ends. A suspect
//! that `BLMOVE` took, blind, gets no company and waits for every slot the same way before it runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capacity::{Capacity, Slot};
use crate::config::Config;
use crate::dedup::Verdict;
use crate::health::Health;
use crate::inflight::InFlight;
use crate::lease::{Identity, Lease};
use crate::metrics::Metrics;
use crate::outcome::{Claimed, Finished};
use crate::queue::{Blocking, ClaimReply, Counters, Payload, Queue, SettleOp, Suspects};
use crate::runner::Runner;

/// Pause after a failed claim before trying again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Taken off the lease's time left when bounding a blocking claim: the server starts its timer
/// when the command arrives, and ends a block only on its next timeout check (`hz`, 10 a second).
const BLOCK_MARGIN: Duration = Duration::from_millis(250);
/// A blocking claim shorter than this is not worth a round trip: the lease is about to lapse.
const MIN_BLOCK: Duration = Duration::from_millis(50);

/// What a job's task needs, cloned into the task that checks a batch before its jobs start.
struct Starter {
    runner: Arc<Runner>,
    finished: UnboundedSender<Finished>,
    tasks: TaskTracker,
    queue: Queue,
    metrics: Arc<Metrics>,
    /// The lease's execution token: a lost lease cancels every running step (each job's own
    /// token, on its ticket, is a child of it).
    exec: CancellationToken,
}

impl Starter {
    /// Runs `claimed` in a task of its own; `escort` (a suspect's other slots) is held until its
    /// step ends.
    fn spawn(&self, claimed: Claimed, escort: Vec<Slot>) {
        let cancel = claimed.ticket.token().clone();
        let (runner, finished) = (self.runner.clone(), self.finished.clone());
        let (queue, metrics) = (self.queue.clone(), self.metrics.clone());
        self.tasks.spawn(async move {
            let mut f = runner.run(claimed, cancel).await;
            if let Some((step, hold)) = &f.hold_step {
                // Now, not with the settle after the commit: every replica stops calling the
                // service at once.
                hold_step(&queue, &metrics, step, *hold).await;
            }
            f.claimed.slot.step_ended();
            f.claimed.ended_clock = Some(std::time::Instant::now());
            // The suspect's step is over, whatever its outcome: others may run beside it.
            drop(escort);
            // The pipeline outlives every job task; if it is gone the process is exiting and the
            // job stays in our Redis list for the reaper.
            let _ = finished.send(f);
        });
    }
}

pub struct Claimer {
    pub config: Arc<Config>,
    pub queue: Queue,
    pub lease: Arc<Lease>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub inflight: Arc<InFlight>,
    pub capacity: Arc<Capacity>,
    pub runner: Arc<Runner>,
    pub dedup: Arc<crate::dedup::Dedup>,
    pub finished: UnboundedSender<Finished>,
    pub tasks: TaskTracker,
    /// The blocking connection's server-side id, for `CLIENT UNBLOCK` at shutdown (0: none).
    pub blocking_id: Arc<AtomicI64>,
    pub pause: Arc<crate::pause::Pause>,
    /// Told when jobs moved aside for a rate may start, so they are woken on time.
    pub promoter: Arc<crate::maintenance::Promoter>,
}

/// What the claim loop carries from one pass to the next.
#[derive(Default)]
pub struct LoopState {
    blocking: Option<Blocking>,
    /// The last claim found nothing: block at once next time instead of asking again first.
    queue_was_empty: bool,
    /// The last claim stopped before a suspect: drain, then claim alone.
    suspect_waiting: bool,
}

/// Recoveries from dead workers that make a job a suspect. Two rather than one, so a crash with
/// an ordinary cause (a lost node, a deploy's SIGKILL) costs its jobs no throughput; a job caught
/// in a second crash runs alone from then on. With `MAX_RECOVERIES` below two the limit itself
/// (and at least one), so every job has run alone at least once before it is dead-lettered.
pub fn suspect_threshold(max_recoveries: u32) -> u32 {
    max_recoveries.clamp(1, 2)
}

/// Holds `step` on every replica (back-pressure). A failure only costs the hold: the job itself
/// is retried after its `Retry-After` as any failed attempt is.
async fn hold_step(queue: &Queue, metrics: &Metrics, step: &str, hold: Duration) {
    tracing::warn!(
        step,
        hold_ms = hold.as_millis() as u64,
        "the service behind the step asked callers to wait: every replica holds the step"
    );
    if let Err(e) = queue.hold_step(step, hold).await {
        metrics.redis_errors.with_label_values(&["hold_step"]).inc();
        tracing::warn!(error = %e, step, "holding the step on every replica failed");
    }
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
        let mut state = LoopState::default();
        let mut audit = false;
        while !stop.is_cancelled() {
            if audit && self.self_audit().await {
                audit = false;
            }
            let outcome = self.pass(&mut state, &stop).await;
            match outcome {
                ClaimOutcome::Failed => {
                    state.blocking = None;
                    // Ask with a batch claim first next time: if only the blocking path fails
                    // (a Redis that refuses `BLMOVE` to this user), jobs are still claimed, one
                    // batch per pause, while `/health` names the failure.
                    state.queue_was_empty = false;
                    audit = true;
                    tokio::select! { _ = tokio::time::sleep(ERROR_PAUSE) => {}, _ = stop.cancelled() => {} }
                }
                ClaimOutcome::Fenced => {
                    self.health.claim_progress();
                    audit = true;
                }
                _ => self.health.claim_progress(),
            }
        }
        self.blocking_id.store(0, Ordering::SeqCst);
    }

    /// One pass: wait for a valid lease and a free slot (every slot when a suspect is next),
    /// claim what is ready (or block until something is), start the claimed jobs.
    pub async fn pass(&self, state: &mut LoopState, stop: &CancellationToken) -> ClaimOutcome {
        self.lease.wait_valid(stop).await;
        self.health.claim_waiting(true);
        // Paused by an operator: running jobs finish, nothing new is claimed.
        self.pause.wait_unpaused(stop).await;
        let alone = state.suspect_waiting;
        let acquire = async {
            if alone {
                self.capacity.acquire_all().await
            } else {
                vec![self.capacity.acquire().await]
            }
        };
        let mut slots = tokio::select! {
            slots = acquire => slots,
            _ = stop.cancelled() => return ClaimOutcome::Stopped,
        };
        self.health.claim_waiting(false);
        if stop.is_cancelled() {
            return ClaimOutcome::Stopped;
        }
        let identity = self.lease.identity();
        if !state.queue_was_empty {
            if !alone {
                self.take_more(&mut slots);
            }
            let n = slots.len().min(self.config.claim_batch_size);
            match self
                .queue
                .claim(&identity.wid, &identity.proc_key, n, &[], self.suspects(alone))
                .await
            {
                Ok(r) if r.fenced => return ClaimOutcome::Fenced,
                Ok(r) => {
                    state.suspect_waiting = r.suspect_waiting;
                    self.count_throttled(&r);
                    // Jobs moved aside for a cap slot were ready: the queue may hold more.
                    if !r.jobs.is_empty() || r.suspect_waiting || !r.throttled.is_empty() {
                        let n = r.jobs.len();
                        self.start(r.jobs, slots, &identity);
                        return ClaimOutcome::Claimed(n);
                    }
                    state.queue_was_empty = true;
                }
                Err(e) => return self.failed("claim", e),
            }
            slots.truncate(1);
        }
        if state.blocking.is_none() {
            match self.queue.blocking_conn(self.config.claim_block, &identity.wid).await {
                Ok(conn) => {
                    self.blocking_id.store(conn.client_id(), Ordering::SeqCst);
                    state.blocking = Some(conn);
                }
                Err(e) => return self.failed("connect", e),
            }
        }
        if stop.is_cancelled() {
            return ClaimOutcome::Stopped;
        }
        // A blocking claim never outlives the lease. If it did, a worker fenced (or frozen) while
        // blocked would still be waiting at the server when a reaper returned its jobs to the end
        // it takes from: it would take one back into a list that is no longer anyone's.
        let block = self
            .config
            .claim_block
            .min(self.lease.time_left().saturating_sub(BLOCK_MARGIN));
        if block < MIN_BLOCK {
            // Let the lease be renewed or lapse (the next pass waits for a valid one) rather
            // than spin on claims too short to be worth sending.
            tokio::select! {
                _ = tokio::time::sleep(self.lease.time_left() + MIN_BLOCK) => {}
                _ = stop.cancelled() => {}
            }
            return ClaimOutcome::Empty;
        }
        let conn = state.blocking.as_mut().expect("connected above");
        let payload = match conn.claim(&identity.proc_key, block).await {
            Ok(Some(p)) => p,
            Ok(None) => return ClaimOutcome::Empty,
            Err(e) => return self.failed("blmove", e),
        };
        state.queue_was_empty = false;
        // Top up with whatever else is ready, and learn the claimed job's counters. The script
        // takes nothing more if the claimed job is a suspect.
        self.take_more(&mut slots);
        let extra = [payload.clone()];
        let wanted = slots.len() - 1;
        match self
            .queue
            .claim(&identity.wid, &identity.proc_key, wanted, &extra, self.suspects(false))
            .await
        {
            Ok(r) if r.fenced => ClaimOutcome::Fenced,
            Ok(r) => {
                let counters = r.extra.first().copied().unwrap_or_default();
                state.suspect_waiting = r.suspect_waiting;
                self.count_throttled(&r);
                // A short top-up emptied the queue: the next pass can block at once instead of
                // first asking again (one command less per job when jobs trickle in). Not when it
                // stopped short for a suspect, nor when it moved jobs aside for a cap slot (its
                // scan is bounded: more may be ready).
                state.queue_was_empty = wanted > 0
                    && r.jobs.len() < wanted
                    && !r.suspect_waiting
                    && !counters.suspect
                    && r.throttled.is_empty();
                if counters.throttled {
                    // Its step's slots are all held: the claim moved it out of our list to wait.
                    let n = r.jobs.len();
                    self.start(r.jobs, slots, &identity);
                    return ClaimOutcome::Claimed(n);
                }
                if counters.suspect {
                    return self.start_alone(payload, counters, slots, &identity, stop).await;
                }
                let mut jobs = Vec::with_capacity(1 + r.jobs.len());
                jobs.push((payload, counters));
                jobs.extend(r.jobs);
                let n = jobs.len();
                self.start(jobs, slots, &identity);
                ClaimOutcome::Claimed(n)
            }
            // The payload stays in our list unknown to memory; the self-audit hands it back.
            Err(e) => self.failed("claim", e),
        }
    }

    /// Counts the jobs a claim moved aside, and wakes the promoter when a rate lets them start.
    fn count_throttled(&self, r: &ClaimReply) {
        for (step, reason) in &r.throttled {
            // A held step may be any step a fallback runs: only names known in advance are labels.
            let known = self.config.limits.concurrency.contains_key(step)
                || self.config.limits.rates.contains_key(step)
                || self.config.http_steps.is_known_step(step)
                || self.runner.registry.is_native(step);
            let label = if known { step.as_str() } else { crate::runner::OTHER };
            self.metrics.throttled.with_label_values(&[label, reason]).inc();
        }
        if let Some(wake) = r.rate_wake {
            self.promoter.schedule(wake);
        }
    }

    fn suspects(&self, alone: bool) -> Suspects {
        Suspects::Isolate {
            at: suspect_threshold(self.config.max_recoveries),
            alone,
        }
    }

    /// Runs a suspect that `BLMOVE` claimed, once every other job has finished and been settled.
    async fn start_alone(
        &self,
        payload: Payload,
        counters: Counters,
        slots: Vec<Slot>,
        identity: &Arc<Identity>,
        stop: &CancellationToken,
    ) -> ClaimOutcome {
        // It is in our Redis list while it waits, so it must be known here as a running job is
        // (a registry loss puts it back); `start` tracks it again before this ticket is dropped.
        let token = self.lease.exec_token().child_token();
        let _waiting = self.inflight.track(payload.clone(), identity.clone(), token);
        // Ours are among the slots to wait for; nothing else acquires meanwhile.
        drop(slots);
        self.health.claim_waiting(true);
        let slots = tokio::select! {
            slots = self.capacity.acquire_all() => slots,
            // It stays in our list, and the shutdown drain hands it back.
            _ = stop.cancelled() => return ClaimOutcome::Stopped,
        };
        self.health.claim_waiting(false);
        if identity.is_reaped() {
            // Declared dead while waiting: the job is another worker's now.
            return ClaimOutcome::Fenced;
        }
        self.start(vec![(payload, counters)], slots, identity);
        ClaimOutcome::Claimed(1)
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
        self.health.claim_failed(&format_args!("{op}: {e}"));
        tracing::warn!(error = %e, op, "claiming failed; retrying");
        ClaimOutcome::Failed
    }

    /// Starts one task per claimed job, after one duplicate check for the whole batch
    /// ([`crate::dedup`]; none with `DUPLICATE_CHECK=off`), which runs in a task of its own so
    /// the claim loop goes on at once.
    /// Unused slots are dropped here (freed). A suspect is only ever claimed alone with every
    /// slot held: it keeps all of them until its step ends, so nothing starts beside it.
    fn start(&self, jobs: Vec<(Payload, Counters)>, slots: Vec<Slot>, identity: &Arc<Identity>) {
        let claimed_at = chrono::Utc::now();
        let claimed_clock = std::time::Instant::now();
        let mut slots = slots.into_iter();
        let mut batch = Vec::with_capacity(jobs.len());
        let exec = self.lease.exec_token();
        for (payload, counters) in jobs {
            let Some(slot) = slots.next() else { break };
            let escort: Vec<Slot> = if counters.suspect {
                tracing::warn!("a job caught in earlier worker crashes runs alone: it may be a poison pill");
                slots.by_ref().collect()
            } else {
                Vec::new()
            };
            // Tracked from the claim on: the job is in our Redis list while it is checked.
            // Its token is a child of the lease's: a lost lease stops it, and so can an operator.
            let ticket = self
                .inflight
                .track(payload.clone(), identity.clone(), exec.child_token());
            let claimed = Claimed {
                payload,
                identity: identity.clone(),
                failures: counters.failures,
                claimed_at,
                claimed_clock,
                ended_clock: None,
                slot,
                ticket,
                verdict: Verdict::Run { active: None },
            };
            batch.push((claimed, escort));
        }
        drop(slots);
        let starter = Starter {
            runner: self.runner.clone(),
            finished: self.finished.clone(),
            tasks: self.tasks.clone(),
            queue: self.queue.clone(),
            metrics: self.metrics.clone(),
            exec,
        };
        if !self.config.duplicate_check {
            // Ids are trusted to be unique: every job starts at once.
            for (claimed, escort) in batch {
                starter.spawn(claimed, escort);
            }
            return;
        }
        let (dedup, capacity) = (self.dedup.clone(), self.capacity.clone());
        let wid = identity.wid.clone();
        self.tasks.spawn(async move {
            let payloads: Vec<Payload> = batch.iter().map(|(c, _)| c.payload.clone()).collect();
            // The jobs being checked lend their run slots to the next claim (at most
            // WORKER_CONCURRENCY lent at once): the check's round trips overlap running steps
            // instead of idling run slots, which at full speed would bound throughput by
            // WORKER_CONCURRENCY / the check's latency. A suspect keeps every slot: nothing may
            // start beside it.
            for (claimed, _) in batch.iter_mut().filter(|(_, escort)| escort.is_empty()) {
                capacity.lend_run_slot(&mut claimed.slot);
            }
            let verdicts = dedup.check(&wid, &payloads, &starter.exec).await;
            for ((mut claimed, escort), verdict) in batch.into_iter().zip(verdicts) {
                // Only a job that runs needs a run slot; every job gives its lent slot back.
                if matches!(verdict, Verdict::Run { .. }) {
                    capacity.run_again(&mut claimed.slot).await;
                } else {
                    claimed.slot.step_ended();
                }
                claimed.verdict = verdict;
                starter.spawn(claimed, escort);
            }
        });
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
