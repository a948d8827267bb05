//! How much work this worker takes on: a run slot for each step that may run at once
//! (`WORKER_CONCURRENCY`), and a hold for every job claimed and not yet settled
//! (`WORKER_CONCURRENCY + COMMIT_BACKLOG` of them).
//!
//! Both are taken before a job is claimed, so the worker never claims a job it cannot start at
//! once. The run slot frees when the step's attempt ends; the hold frees only when the job has
//! been settled in Redis, after its outcome is committed. Finished jobs therefore wait for their
//! Postgres commit without keeping the next steps from starting, up to `COMMIT_BACKLOG` of them
//! beyond the running ones. Fast steps are committed in group batches as large as the commit
//! latency calls for, instead of `WORKER_CONCURRENCY` per round trip; and while Postgres is down
//! the holds run out and claiming stops by itself, after at most
//! `WORKER_CONCURRENCY + COMMIT_BACKLOG` completions. The holds are also the bound on this
//! worker's in-flight list, so on what a SIGKILL sends round again.
//!
//! A suspected poison pill (see `claim.lua`) runs with *every* slot: [`Capacity::acquire_all`]
//! waits until every other job has finished and been settled, so a crash takes no bystander down
//! and leaves no finished outcome unsettled in our list for the reaper to send round again.

use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, SemaphorePermit};

pub struct Capacity {
    run: Arc<Semaphore>,
    held: Arc<Semaphore>,
    /// Lent run slots: a job waiting for its duplicate check may give its run slot to the next
    /// claim and take one of these instead, `concurrency` of them, so checks overlap running
    /// steps while a replica holds at most `concurrency` checked-or-waiting jobs beyond its
    /// running ones (it never hoards the queue).
    checking: Arc<Semaphore>,
    concurrency: usize,
    hold_max: usize,
}

/// The capacity one claimed job uses. Dropping it frees everything it still holds.
#[derive(Debug)]
pub struct Slot {
    run: Option<OwnedSemaphorePermit>,
    _held: OwnedSemaphorePermit,
    /// Taken in place of the run slot while the job is checked ([`Capacity::lend_run_slot`]).
    checking: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// The step's attempt is over: let another step start while this job waits to be settled.
    pub fn step_ended(&mut self) {
        self.run = None;
        self.checking = None;
    }
}

impl Capacity {
    /// `concurrency` steps at once; at most `backlog` finished jobs waiting to be settled beside
    /// them (`backlog` 0: a job keeps its run slot's worth of hold until it is settled, so at
    /// most `concurrency` jobs are held, running or not).
    pub fn new(concurrency: usize, backlog: usize) -> Self {
        let hold_max = concurrency + backlog;
        Capacity {
            run: Arc::new(Semaphore::new(concurrency)),
            held: Arc::new(Semaphore::new(hold_max)),
            checking: Arc::new(Semaphore::new(concurrency)),
            concurrency,
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
            checking: None,
        }
    }

    /// A slot if one is free right now.
    pub fn try_acquire(&self) -> Option<Slot> {
        let held = self.held.clone().try_acquire_owned().ok()?;
        let run = self.run.clone().try_acquire_owned().ok()?;
        Some(Slot {
            run: Some(run),
            _held: held,
            checking: None,
        })
    }

    /// Waits until nothing is running or waiting to be settled, then takes every slot: one per
    /// run slot, the last one also holding the backlog's holds. While the claim loop runs it is
    /// the only caller that acquires, so this cannot starve behind a stream of single acquires.
    pub async fn acquire_all(&self) -> Vec<Slot> {
        let closed = "the semaphores are never closed";
        let mut held = self
            .held
            .clone()
            .acquire_many_owned(self.hold_max as u32)
            .await
            .expect(closed);
        let mut run = self
            .run
            .clone()
            .acquire_many_owned(self.concurrency as u32)
            .await
            .expect(closed);
        let mut slots = Vec::with_capacity(self.concurrency);
        while run.num_permits() > 1 {
            slots.push(Slot {
                run: run.split(1),
                _held: held.split(1).expect("at least as many holds as run slots"),
                checking: None,
            });
        }
        slots.push(Slot {
            run: Some(run),
            _held: held,
            checking: None,
        });
        slots
    }

    /// Lets the next claim use `slot`'s run slot while the job waits for its duplicate check
    /// ([`crate::dedup`]), if a lent slot is free; otherwise the job keeps its run slot.
    pub fn lend_run_slot(&self, slot: &mut Slot) {
        if slot.run.is_some()
            && let Ok(checking) = self.checking.clone().try_acquire_owned()
        {
            slot.checking = Some(checking);
            slot.run = None;
        }
    }

    /// Takes a run slot again for a job whose check is over (nothing if it kept its own), and
    /// gives the lent slot back.
    pub async fn run_again(&self, slot: &mut Slot) {
        if slot.run.is_none() {
            let run = self.run.clone().acquire_owned().await;
            slot.run = Some(run.expect("the run semaphore is never closed"));
        }
        slot.checking = None;
    }

    /// Jobs claimed and not yet settled, plus the holds [`Capacity::acquire_all`] has taken (it
    /// collects them as jobs settle, and keeps them while a suspect runs).
    pub fn held(&self) -> usize {
        self.hold_max - self.held.available_permits()
    }

    /// Resolves once every claimed job has been settled (and keeps new claims out meanwhile).
    pub async fn all_settled(&self) -> Result<SemaphorePermit<'_>, AcquireError> {
        self.held.acquire_many(self.hold_max as u32).await
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn jobs_being_checked_lend_their_run_slots_at_most_concurrency_at_once() {
        let capacity = Capacity::new(2, 10);
        let mut checked: Vec<Slot> = (0..2).map(|_| capacity.try_acquire().unwrap()).collect();
        assert!(capacity.try_acquire().is_none());
        for slot in &mut checked {
            capacity.lend_run_slot(slot);
        }
        // Both run slots are free for the next claim...
        let mut next: Vec<Slot> = (0..2).map(|_| capacity.try_acquire().unwrap()).collect();
        // ...whose jobs cannot lend theirs too: two are lent already.
        for slot in &mut next {
            capacity.lend_run_slot(slot);
        }
        assert!(capacity.try_acquire().is_none(), "at most 2 running and 2 checked");
        // A checked job waits for a run slot, and gives its lent one back when it has it.
        let (first, second) = checked.split_at_mut(1);
        let waiting = capacity.run_again(&mut first[0]);
        tokio::pin!(waiting);
        assert!((&mut waiting).now_or_never().is_none(), "no run slot is free");
        next[0].step_ended();
        waiting.await;
        next[1].step_ended();
        second[0].step_ended();
        // checked[0] runs; the other lent slot is back, so one job can be checked again.
        let mut again = capacity.try_acquire().unwrap();
        capacity.lend_run_slot(&mut again);
        assert!(again.run.is_none() && again.checking.is_some());
    }

    #[tokio::test]
    async fn a_finished_job_awaiting_its_settle_frees_its_run_slot_within_the_backlog() {
        let capacity = Capacity::new(1, 3);
        let mut finished = Vec::new();
        for n in 0..4 {
            let mut slot = capacity.try_acquire().unwrap_or_else(|| panic!("job {n} can start"));
            assert!(capacity.try_acquire().is_none(), "one step runs at once");
            slot.step_ended();
            finished.push(slot);
        }
        assert_eq!(capacity.held(), 4, "concurrency + backlog jobs held");
        assert!(capacity.try_acquire().is_none(), "the backlog is full: no fifth claim");
        let fifth = capacity.acquire();
        tokio::pin!(fifth);
        assert!((&mut fifth).now_or_never().is_none());
        finished.remove(0);
        assert!((&mut fifth).now_or_never().is_some(), "a settle makes room");
    }

    #[tokio::test]
    async fn a_job_that_gave_its_run_slot_up_waits_for_one_before_it_runs() {
        let capacity = Capacity::new(1, 1);
        let mut waiting = capacity.try_acquire().expect("a free slot");
        waiting.step_ended();
        let mut running = capacity.try_acquire().expect("its run slot was given up");
        let again = capacity.run_again(&mut waiting);
        tokio::pin!(again);
        assert!((&mut again).now_or_never().is_none(), "one step runs at once");
        running.step_ended();
        assert!((&mut again).now_or_never().is_some());
    }

    #[tokio::test]
    async fn without_a_backlog_a_finished_job_keeps_the_worker_from_claiming_until_settled() {
        let capacity = Capacity::new(1, 0);
        let mut slot = capacity.try_acquire().expect("a free slot");
        slot.step_ended();
        assert!(capacity.try_acquire().is_none());
        assert_eq!(capacity.held(), 1);
        drop(slot);
        assert!(capacity.try_acquire().is_some());
    }

    #[tokio::test]
    async fn acquire_all_waits_for_every_finished_job_of_the_backlog() {
        let capacity = Capacity::new(1, 3);
        let mut finished = Vec::new();
        for n in 0..3 {
            // Not `acquire`: without the backlog this would wait for ever instead of failing.
            let mut slot = capacity.try_acquire().unwrap_or_else(|| panic!("job {n} can start"));
            slot.step_ended();
            finished.push(slot);
        }
        let all = capacity.acquire_all();
        tokio::pin!(all);
        while finished.len() > 1 {
            finished.pop();
            assert!((&mut all).now_or_never().is_none(), "a finished job is not settled yet");
        }
        finished.pop();
        let slots = all.await;
        assert_eq!(slots.len(), 1);
        assert_eq!(capacity.held(), 4, "every hold, the backlog's included");
        assert!(capacity.try_acquire().is_none());
    }

    #[tokio::test]
    async fn acquire_all_waits_until_every_job_is_settled_then_takes_every_slot() {
        let capacity = Capacity::new(3, 1);
        let mut running = capacity.acquire().await;
        let all = capacity.acquire_all();
        tokio::pin!(all);
        assert!((&mut all).now_or_never().is_none(), "a step is running");
        running.step_ended();
        assert!((&mut all).now_or_never().is_none(), "its job is not settled yet");
        drop(running);
        let slots = all.await;
        assert_eq!(slots.len(), 3, "one slot per run slot");
        assert!(capacity.try_acquire().is_none(), "nothing starts beside them");
        assert_eq!(capacity.held(), 4, "the backlog's holds are taken too");
        drop(slots);
        assert_eq!(capacity.held(), 0);
        assert!(capacity.try_acquire().is_some());
    }
}
