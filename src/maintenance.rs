//! Background duties that keep the protocol moving: the heartbeat (which keeps the lease and
//! learns what else needs doing), the reaper that rescues dead workers' jobs, the promoter that
//! returns due retries to the ready list, the drain of the poison outbox into Postgres, and the
//! worker's side of cancellations.
//!
//! Idle cost matters (managed Redis bills per command): the heartbeat script also promotes due
//! retries and reports whether reaping or a poison drain is needed, so an idle worker sends one
//! command per heartbeat and nothing else on a timer.
//!
//! The beat does nothing but beat. What it reports is done by a task of its own ([`Duties`]):
//! reaping waits on Redis and the poison drain on Postgres (a table lock, a slow statement), and
//! liveness must never wait on either. The lease's watchdog (see [`crate::lease`]) fences this
//! worker by the clock alone when beats stop, whatever the reason.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Health;
use crate::inflight::InFlight;
use crate::lease::{Identity, Lease};
use crate::metrics::Metrics;
use crate::queue::{Beat, BeatMode, BeatStatus, Queue};
use crate::store::Store;

mod cancelled;
mod poison;
mod promoter;
pub mod retention;

pub use promoter::Promoter;

pub struct Maintenance {
    pub config: Arc<Config>,
    pub queue: Queue,
    pub store: Store,
    pub lease: Arc<Lease>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub inflight: Arc<InFlight>,
    pub promoter: Arc<Promoter>,
    pub notifier: Arc<crate::notify::Notifier>,
    pub pause: Arc<crate::pause::Pause>,
    /// The claim loop's blocking connection id, to wake it when a pause begins.
    pub blocking_id: Arc<std::sync::atomic::AtomicI64>,
    /// What the last beat said needs doing, handed from the heartbeat to the duties task.
    pub duties: Duties,
    /// Cancelled ids the last beat found this worker not holding (see `forget_cancels`).
    pub cancels_missing: Mutex<std::collections::HashSet<String>>,
}

/// The latest beat's report, waiting for the duties task. Only the latest matters: each beat
/// reports the whole state, so a report not yet acted on is simply replaced.
#[derive(Default)]
pub struct Duties {
    latest: Mutex<Option<Beat>>,
    wake: Notify,
}

impl Duties {
    fn post(&self, beat: Beat) {
        *self.latest.lock().unwrap() = Some(beat);
        self.wake.notify_one();
    }

    fn take(&self) -> Option<Beat> {
        self.latest.lock().unwrap().take()
    }
}

impl Maintenance {
    /// The grace the reaper adds to a deadline before declaring a worker dead.
    fn grace(&self) -> Duration {
        self.config.heartbeat_interval
    }

    /// Registers this worker. Called before the first claim, so no other worker can ever see our
    /// in-flight list without a registry entry.
    pub async fn register(&self) -> redis::RedisResult<()> {
        let id = self.lease.identity();
        let sent = Instant::now();
        self.queue
            .heartbeat(&id.wid, self.config.worker_deadline, BeatMode::Register, self.grace())
            .await?;
        id.set_registered();
        self.lease.beat_ok(sent);
        self.health.redis_ok();
        Ok(())
    }

    /// Beats every `HEARTBEAT_INTERVAL_MS` until `stop` is cancelled.
    pub async fn run_heartbeat(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            self.beat_once().await;
        }
    }

    /// Acts on what the heartbeats report (pause changes, due retries, dead workers, poison
    /// entries) until `stop` is cancelled. Separate from the heartbeat so that none of it can
    /// delay a beat.
    pub async fn run_duties(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.duties.wake.notified() => {}
                _ = stop.cancelled() => return,
            }
            if let Some(beat) = self.duties.take() {
                self.duties_once(&beat).await;
            }
        }
    }

    /// One heartbeat, and nothing else: the lease and the identity. What the beat reports is
    /// left for [`Maintenance::run_duties`]. Public so tests can drive it.
    ///
    /// A beat that has no answer within one heartbeat interval counts as failed. Without that
    /// bound, a beat waiting on a reconnect (Redis down) neither failed nor succeeded, so the
    /// worker never fenced itself however long the outage lasted. Dropping the call is safe: the
    /// script only moves this worker's own deadline forward, whenever it runs.
    pub async fn beat_once(&self) {
        let id = self.lease.identity();
        let sent = Instant::now();
        // A new identity whose registration failed registers with its next beat: a plain beat
        // for an id the registry has never seen would be answered "reaped".
        let mode = if id.is_registered() {
            BeatMode::Beat
        } else {
            BeatMode::Register
        };
        let beat = self
            .queue
            .heartbeat(&id.wid, self.config.worker_deadline, mode, self.grace());
        match tokio::time::timeout(self.config.heartbeat_interval, beat).await {
            Ok(Ok(beat)) => {
                self.health.redis_ok();
                if self.on_beat(&id, beat.status, sent).await {
                    self.fire_cancels(&beat);
                    self.duties.post(beat);
                }
            }
            Ok(Err(e)) => self.beat_failed(&e),
            Err(_) => self.beat_failed(&"no reply within the heartbeat interval"),
        }
    }

    fn beat_failed(&self, e: &dyn std::fmt::Display) {
        self.metrics.redis_errors.with_label_values(&["heartbeat"]).inc();
        self.health.redis_failed(e);
        if self.lease.beat_failed() {
            self.metrics.fenced.inc();
            tracing::error!(error = %e, "no heartbeat for too long: stopped running jobs until Redis answers again");
        } else {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }

    /// Applies a beat's status to the lease; false when the beat's report is void (this worker
    /// was reaped and has just re-registered).
    async fn on_beat(&self, id: &Identity, status: BeatStatus, sent: Instant) -> bool {
        match status {
            BeatStatus::Ok => {
                id.set_registered();
                if self.lease.beat_ok(sent) {
                    tracing::info!("heartbeat restored; the lease is valid again");
                }
            }
            BeatStatus::Reaped => {
                let new = self.take_new_identity().await;
                tracing::error!(new_worker_id = %new, "this worker was declared dead and its jobs given to others; stopped them and re-registered");
                return false;
            }
            // Redis lost its data, our registration with it. If our lease was still good, nobody
            // can have reaped us before the loss (reaping needs deadline + grace without a beat),
            // so what we still run is ours and goes back in our list. If it had lapsed, a reap
            // before the loss cannot be ruled out: those jobs may be running elsewhere, so they
            // are dropped like a reaped worker's, under a new identity.
            BeatStatus::Reregistered if !self.lease_was_fresh() => {
                let new = self.take_new_identity().await;
                tracing::error!(new_worker_id = %new, "Redis lost its data while this worker had no valid lease: stopped its jobs and re-registered under a new id");
                return false;
            }
            BeatStatus::Reregistered => {
                id.set_registered();
                self.lease.beat_ok(sent);
                let payloads = self.inflight.payloads_of(id);
                let adopt = self.queue.adopt(&id.proc_key, &payloads);
                match tokio::time::timeout(self.config.heartbeat_interval, adopt).await {
                    Ok(Ok(n)) => tracing::warn!(
                        restored = n,
                        "Redis had lost its data, this worker's registration with it; re-registered and restored its claims"
                    ),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "restoring claims after a registry loss failed")
                    }
                    Err(_) => tracing::warn!("restoring claims after a registry loss timed out"),
                }
            }
        }
        true
    }

    /// Whether the last good beat is recent enough that no reaper can have acted on us: the
    /// registry deadline counts from a beat's arrival, later than our clock's `sent`.
    fn lease_was_fresh(&self) -> bool {
        self.lease
            .since_last_ok()
            .is_some_and(|d| d < self.config.worker_deadline)
    }

    /// Fences, takes a new worker id and registers it (or leaves that to the next beat).
    async fn take_new_identity(&self) -> String {
        self.metrics.fenced.inc();
        let new = self.lease.reaped(self.queue.keys());
        match tokio::time::timeout(self.config.heartbeat_interval, self.register()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "re-registration failed; retrying on the next beat"),
            Err(_) => tracing::warn!("re-registration timed out; retrying on the next beat"),
        }
        new.wid.clone()
    }

    /// Does what one beat reported. Public so tests can drive it.
    pub async fn duties_once(&self, beat: &Beat) {
        if self.pause.update(beat.paused, beat.paused_steps.clone()) {
            // Wake our blocked claim so it does not take one more job after the pause.
            let id = self.blocking_id.load(std::sync::atomic::Ordering::SeqCst);
            if id != 0 {
                let _ = self.queue.unblock(id).await;
            }
        }
        if let Some(due) = beat.next_due {
            self.promoter.schedule(due);
        }
        if beat.reap_needed && self.lease.streak() >= self.config.worker_deadline {
            self.reap().await;
        }
        if beat.poison_pending > 0 {
            self.drain_poison().await;
        }
        let following = !self.cancels_missing.lock().unwrap().is_empty();
        if !beat.cancel.is_empty() || !beat.cancel_orphans.is_empty() || following {
            self.settle_cancels(beat).await;
        }
        if beat.cancelled_pending > 0 {
            self.drain_cancelled().await;
        }
    }

    /// Rescues the jobs of every worker whose deadline has passed. Public so tests can drive it.
    pub async fn reap(&self) {
        let owner = self.lease.identity().wid.clone();
        let victims = match self
            .queue
            .reap_candidates(self.grace(), self.config.heartbeat_interval, &owner)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                self.metrics.redis_errors.with_label_values(&["reap"]).inc();
                tracing::warn!(error = %e, "listing dead workers failed");
                return;
            }
        };
        for victim in victims.iter().filter(|v| **v != owner) {
            match self.queue.reap(victim, self.grace(), self.config.max_recoveries).await {
                Ok(Some((moved, poisoned, cancelled))) if moved + poisoned + cancelled > 0 => {
                    self.metrics.recovered.inc_by(moved);
                    tracing::warn!(worker = %victim, recovered = moved, poisoned, cancelled, "returned a dead worker's jobs to the queue");
                    if cancelled > 0 {
                        self.drain_cancelled().await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.redis_errors.with_label_values(&["reap"]).inc();
                    tracing::warn!(worker = %victim, error = %e, "reaping failed");
                }
            }
        }
    }
}
