//! The shutdown drain, and why it always ends in bounded time.
//!
//! Order, each step with a deadline (the margins below add up to [`EXIT_MARGIN`]):
//! 1. stop claiming at once, and wake the blocked `BLMOVE` with `CLIENT UNBLOCK` where Redis
//!    allows it; meanwhile running steps finish, until `SHUTDOWN_TIMEOUT_MS` or a second signal;
//! 2. a claim still blocked then is abandoned (see below); running steps are interrupted: their
//!    jobs go back to ready, not counted as an attempt ([`SETTLE_GRACE`] to end and be settled);
//! 3. the pipeline persists and settles what finished, then is stopped, by abort if it has not
//!    ended within [`PIPELINE_GRACE`] (Postgres or Redis unreachable), *before* the hand-back:
//!    a pipeline still running would settle or commit jobs the hand-back is giving to others;
//! 4. the heartbeat stops, *before* deregistering: a beat after the deregistration would put the
//!    exiting worker back in the registry;
//! 5. whatever is left in our list goes back to ready and we deregister ([`HAND_BACK_GRACE`]).
//!    If Redis does not answer in time, the jobs stay in our list and our registry entry stays
//!    too, so the other workers' reapers return them after our deadline.
//!
//! A second signal cuts every remaining wait so that the drain ends within [`HARD_EXIT`].
//!
//! Abandoning a blocking claim. Dropping a `BLMOVE` future does not stop the server: if a job
//! arrives before the server notices the closed connection, it still moves it into our list.
//! That is why the claim is abandoned only at a deadline (Redis unreachable, or a Redis without
//! `CLIENT` whose block outlasts `SHUTDOWN_TIMEOUT_MS`), and why the worker then exits *without
//! deregistering*: a job moved after the hand-back sits in the list of a registered worker whose
//! deadline passes, and the reaper returns it like any dead worker's job. Nothing is lost; such a
//! job waits for the deadline.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capacity::Capacity;
use crate::config::Config;
use crate::health::Health;
use crate::lease::Lease;
use crate::queue::{Queue, SettleOp};
use crate::shutdown::Shutdown;
use crate::store::Store;

/// How long after `SHUTDOWN_TIMEOUT_MS` the process has exited at the latest, whatever Redis and
/// Postgres do: the sum of the waits after it (5 + 2 + 1 + 5 + 0.5 s), then in `main.rs` the trace
/// export's last flush (1 s, when on) and the runtime's shutdown (0.3 s), and the rest to spare. Platforms
/// must allow at least `SHUTDOWN_TIMEOUT_MS` + this before SIGKILL (docs/deploy.md).
pub const EXIT_MARGIN: Duration = Duration::from_secs(15);
/// After a second signal, the drain ends within this; with the runtime's own shutdown (see
/// `main.rs`) the process is gone within two seconds.
pub const HARD_EXIT: Duration = Duration::from_millis(1_500);
/// After interrupting running steps: for them to end and their jobs to be settled.
const SETTLE_GRACE: Duration = Duration::from_secs(5);
/// After that, for the pipeline's last flushes, which no longer retry.
const PIPELINE_GRACE: Duration = Duration::from_secs(2);
/// For the heartbeat and promoter to stop.
const BACKGROUND_GRACE: Duration = Duration::from_secs(1);
/// For the hand-back and deregistration (a few commands, each answered within 5 s or failed).
const HAND_BACK_GRACE: Duration = Duration::from_secs(5);
/// What the steps before the hand-back leave for it when a second signal has shortened the exit.
const HAND_BACK_RESERVE: Duration = Duration::from_secs(1);
/// For the database pool to close (taken from the spare second of [`EXIT_MARGIN`]).
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// How often a blocked claim is woken again (a wake-up sent just before the call starts is lost).
const UNBLOCK_EVERY: Duration = Duration::from_millis(250);

/// The tasks the drain stops, in the order it stops them.
pub struct Tasks {
    pub claimer: JoinHandle<()>,
    pub pipeline: JoinHandle<()>,
    pub heartbeat: JoinHandle<()>,
    /// Reaping, the poison drain and what else a beat asks for (see `maintenance`).
    pub duties: JoinHandle<()>,
    pub promoter: JoinHandle<()>,
}

pub struct Drain {
    pub config: Arc<Config>,
    pub queue: Queue,
    /// Closed last: SQLite folds its write-ahead log back into the file on close.
    pub store: Store,
    pub lease: Arc<Lease>,
    pub health: Arc<Health>,
    pub capacity: Arc<Capacity>,
    /// The job tasks.
    pub tasks: TaskTracker,
    pub blocking_id: Arc<AtomicI64>,
    pub claim_stop: CancellationToken,
    /// Tells the pipeline to stop retrying.
    pub give_up: CancellationToken,
    pub background: CancellationToken,
    pub http_stop: CancellationToken,
}

impl Drain {
    pub async fn run(self, shutdown: &Shutdown, t: Tasks) {
        let (mut claimer, mut pipeline) = (Some(t.claimer), Some(t.pipeline));
        let (mut heartbeat, mut promoter) = (Some(t.heartbeat), Some(t.promoter));
        let mut duties = Some(t.duties);
        let clock = Clock::new(self.config.shutdown_timeout + EXIT_MARGIN, shutdown.hard.clone());
        self.health.set_draining();
        self.claim_stop.cancel();

        // 1. The claim loop ends and running steps finish, until the timeout or a second signal.
        let claim_and_steps = async {
            self.stop_claimer(&mut claimer).await;
            let _ = self.capacity.all_settled().await;
        };
        let on_time = tokio::select! {
            r = clock.within(self.config.shutdown_timeout, HAND_BACK_RESERVE, claim_and_steps) => r.is_some(),
            _ = shutdown.hard.cancelled() => false,
        };
        let abandoned = claimer.is_some() && !self.queue.is_memory();
        if claimer.is_some() {
            // Its blocking connection closes with it; see the module comment for what a `BLMOVE`
            // the server still completes means, and why we then stay registered.
            abort(&claimer);
            tracing::warn!(
                "the blocked claim did not end in time: abandoned; this worker stays registered so that a job it may still take is returned by the reaper"
            );
        }
        // An aborted task stops at its next await: this waits for that (it frees its slot).
        let _ = clock
            .within(BACKGROUND_GRACE, HAND_BACK_RESERVE, ended(&mut claimer))
            .await;

        // 2. Interrupt what still runs.
        if !on_time && self.capacity.held() > 0 {
            tracing::warn!(
                running = self.tasks.len(),
                "steps still running at the end of the drain: handing them back"
            );
            self.lease.interrupt_all();
            let _ = clock
                .within(SETTLE_GRACE, HAND_BACK_RESERVE, self.capacity.all_settled())
                .await;
        }

        // 3. The pipeline's last flushes, then it stops, before anything is handed back.
        self.give_up.cancel();
        self.tasks.close();
        let pipeline_done = async {
            self.tasks.wait().await;
            ended(&mut pipeline).await;
        };
        if clock
            .within(PIPELINE_GRACE, HAND_BACK_RESERVE, pipeline_done)
            .await
            .is_none()
        {
            abort(&pipeline);
            tracing::warn!(
                "persisting and settling did not end in time: stopped; unsettled jobs are handed back (a commit already sent may still land: the job's re-run then writes nothing new)"
            );
        }

        // 4. The heartbeat stops before we deregister.
        self.background.cancel();
        let background = async {
            ended(&mut heartbeat).await;
            ended(&mut duties).await;
            ended(&mut promoter).await;
        };
        if clock
            .within(BACKGROUND_GRACE, HAND_BACK_RESERVE, background)
            .await
            .is_none()
        {
            abort(&heartbeat);
            abort(&duties);
            abort(&promoter);
        }
        let aborted = async {
            ended(&mut pipeline).await;
            ended(&mut heartbeat).await;
            ended(&mut duties).await;
            ended(&mut promoter).await;
        };
        let _ = clock.within(BACKGROUND_GRACE, HAND_BACK_RESERVE, aborted).await;

        // 5. Hand back and deregister.
        if clock
            .within(
                HAND_BACK_GRACE,
                Duration::ZERO,
                self.hand_back_and_deregister(abandoned),
            )
            .await
            .is_none()
        {
            tracing::warn!("Redis did not answer in time at exit: this worker's jobs will be recovered by the others");
        }
        self.http_stop.cancel();
        if clock
            .within(CLOSE_GRACE, Duration::ZERO, self.store.close())
            .await
            .is_none()
        {
            tracing::warn!("closing the database connections timed out");
        }
        tracing::info!("worker stopped");
    }

    /// Wakes the blocked `BLMOVE` until the claim loop has exited. Without a client id (a Redis
    /// that refuses `CLIENT`) there is nothing to send: the claim returns when its block ends.
    async fn stop_claimer(&self, claimer: &mut Option<JoinHandle<()>>) {
        while claimer.is_some() {
            let id = self.blocking_id.load(Ordering::SeqCst);
            if id != 0 {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.queue.unblock(id)).await;
            }
            tokio::select! {
                _ = ended(claimer) => {}
                _ = tokio::time::sleep(UNBLOCK_EVERY) => {}
            }
        }
    }

    /// Whatever is still in our list (a settle that failed, a stray) goes back to ready; then we
    /// leave the registry, unless `stay` (a blocking claim was abandoned and may still move a job
    /// here). With jobs left and Redis unreachable we stay registered, so the reaper will find
    /// and return them.
    async fn hand_back_and_deregister(&self, stay: bool) {
        let id = self.lease.identity();
        let Ok(left) = self.queue.list(&id.proc_key).await else {
            return tracing::warn!("Redis unreachable at exit: this worker's jobs will be recovered by the others");
        };
        let ops: Vec<SettleOp> = left.into_iter().map(|p| SettleOp::Requeue(p.into())).collect();
        if !ops.is_empty() {
            if self.queue.settle(&id.proc_key, &ops).await.is_err() {
                return tracing::warn!("handing back jobs failed: they will be recovered by the other workers");
            }
            tracing::info!(count = ops.len(), "handed jobs back to the queue");
        }
        if stay {
            return;
        }
        if let Err(e) = self.queue.deregister(&id.wid).await {
            tracing::warn!(error = %e, "deregistration failed; the registry entry expires by itself");
        }
        self.report_memory_leftovers().await;
    }

    /// A memory queue ends with the process: say what it takes with it rather than drop it
    /// silently.
    async fn report_memory_leftovers(&self) {
        if !self.queue.is_memory() {
            return;
        }
        if let Ok(d) = self.queue.depths().await {
            let left = d.ready + d.delayed + d.in_flight;
            if left > 0 {
                tracing::warn!(
                    ready = d.ready,
                    delayed = d.delayed,
                    in_flight = d.in_flight,
                    "QUEUE_DRIVER=memory: {left} jobs still queued are discarded when this process exits"
                );
            }
        }
    }
}

/// Waits for a task to end, then forgets it (a finished handle must not be awaited again).
async fn ended(task: &mut Option<JoinHandle<()>>) {
    if let Some(handle) = task {
        let _ = handle.await;
        *task = None;
    }
}

fn abort(task: &Option<JoinHandle<()>>) {
    if let Some(handle) = task {
        handle.abort();
    }
}

/// The exit deadline: `SHUTDOWN_TIMEOUT_MS` + [`EXIT_MARGIN`] after the first signal, brought
/// forward to [`HARD_EXIT`] after a second one.
struct Clock {
    end: Instant,
    hard: CancellationToken,
    hard_at: Mutex<Option<Instant>>,
}

impl Clock {
    fn new(budget: Duration, hard: CancellationToken) -> Self {
        Clock {
            end: Instant::now() + budget,
            hard,
            hard_at: Mutex::new(None),
        }
    }

    fn end(&self) -> Instant {
        match *self.hard_at.lock().unwrap() {
            Some(at) => self.end.min(at + HARD_EXIT),
            None => self.end,
        }
    }

    /// Runs `f` for at most `cap`, and never past the exit deadline less `reserve` (what later
    /// steps need); `None` when cut short. A second signal arriving meanwhile moves the deadline.
    async fn within<F: Future>(&self, cap: Duration, reserve: Duration, f: F) -> Option<F::Output> {
        let started = Instant::now();
        tokio::pin!(f);
        loop {
            let end = self.end();
            let until = (started + cap).min(end.checked_sub(reserve).unwrap_or(end));
            let seen = self.hard_at.lock().unwrap().is_some();
            tokio::select! {
                v = &mut f => return Some(v),
                _ = tokio::time::sleep_until(until) => return None,
                _ = self.hard.cancelled(), if !seen => {
                    self.hard_at.lock().unwrap().get_or_insert_with(Instant::now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
