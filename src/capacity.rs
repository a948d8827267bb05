//! How much work this worker takes on: a run slot for each step that may run at once
//! (`WORKER_CONCURRENCY`), and a hold for every job claimed and not yet settled.
//!
//! Both are taken before a job is claimed, so the worker never claims a job it cannot start at
//! once. The run slot frees when the step's attempt ends; the hold frees only when the job has
//! been settled in Redis, after its outcome is committed. Finished jobs therefore wait for their
//! Postgres commit without keeping the next steps from starting, up to one persist batch of them
//! (`PERSIST_BATCH_SIZE`) beyond the running ones. Fast steps are committed in group batches as
//! large as the commit latency calls for, instead of `WORKER_CONCURRENCY` per round trip; and
//! while Postgres is down the holds run out and claiming stops by itself.

use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, SemaphorePermit};

pub struct Capacity {
    run: Arc<Semaphore>,
    held: Arc<Semaphore>,
    hold_max: usize,
}

/// The capacity one claimed job uses. Dropping it frees everything it still holds.
#[derive(Debug)]
pub struct Slot {
    run: Option<OwnedSemaphorePermit>,
    _held: OwnedSemaphorePermit,
}

impl Slot {
    /// The step's attempt is over: let another step start while this job waits to be settled.
    pub fn step_ended(&mut self) {
        self.run = None;
    }
}

impl Capacity {
    /// `concurrency` steps at once; at most `backlog` finished jobs waiting to be settled.
    pub fn new(concurrency: usize, backlog: usize) -> Self {
        let hold_max = concurrency + backlog;
        Capacity {
            run: Arc::new(Semaphore::new(concurrency)),
            held: Arc::new(Semaphore::new(hold_max)),
            hold_max,
        }
    }

    /// Waits for a run slot and a hold.
    pub async fn acquire(&self) -> Slot {
        let held = self.held.clone().acquire_owned().await;
        let run = self.run.clone().acquire_owned().await;
        Slot {
            run: Some(run.expect("the run semaphore is never closed")),
            _held: held.expect("the hold semaphore is never closed"),
        }
    }

    /// A slot if one is free right now.
    pub fn try_acquire(&self) -> Option<Slot> {
        let held = self.held.clone().try_acquire_owned().ok()?;
        let run = self.run.clone().try_acquire_owned().ok()?;
        Some(Slot {
            run: Some(run),
            _held: held,
        })
    }

    /// Jobs claimed and not yet settled.
    pub fn held(&self) -> usize {
        self.hold_max - self.held.available_permits()
    }

    /// Resolves once every claimed job has been settled (and keeps new claims out meanwhile).
    pub async fn all_settled(&self) -> Result<SemaphorePermit<'_>, AcquireError> {
        self.held.acquire_many(self.hold_max as u32).await
    }
}
