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
//! - Two copies of one id never run at once on any replicas: the ids left to run are marked
//!   running in Redis (`Queue::take_active`, one script call per batch, released by the job's
//!   settle). A copy whose id is running elsewhere goes to the delayed set for
//!   [`RUNNING_ELSEWHERE_WAIT`], not an attempt, and is checked again when claimed next: usually
//!   it is a duplicate by then. When Redis cannot answer that call the batch runs unmarked, as
//!   before this guard: its settle needs Redis too, and the job is already in our list.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::queue::Payload;
use crate::queue::Queue;
use crate::store::Store;

/// A check unanswered this long gives its batch's run slots up (see the module): far above a
/// healthy round trip (milliseconds), and short beside the pool's own wait for a connection
/// (5 s, which is how long an unreachable server takes to fail), so an outage fills the holds
/// within seconds.
const SLOW: Duration = Duration::from_secs(1);
/// How long a copy whose id is running on some worker waits in the delayed set before it is
/// claimed and checked again: short, as the other copy is usually about to finish (this one is
/// then a duplicate); long enough that a copy of a long step costs a claim and a settle a
/// second, not a busy loop.
pub const RUNNING_ELSEWHERE_WAIT: Duration = Duration::from_secs(1);

/// What the checks decided for one claimed job, before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Run it. `active`: the id this copy marked running, to release at its settle (none when
    /// it has no usable id or Redis could not be asked).
    Run { active: Option<String> },
    /// Its id already has a terminal result: settle it without running (`active` as above).
    Finished { active: Option<String> },
    /// Another copy of its id is running: delay it without running.
    RunningElsewhere,
    /// The lease was lost, or shutdown began, while the store could not answer: hand it back
    /// unstarted (`active` as above).
    HandBack { active: Option<String> },
}

impl Verdict {
    /// The running mark to release at the job's settle.
    pub fn active(&self) -> Option<&str> {
        match self {
            Verdict::Run { active } | Verdict::Finished { active } | Verdict::HandBack { active } => active.as_deref(),
            Verdict::RunningElsewhere => None,
        }
    }
}

/// A claimed copy's running mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Granted,
    Refused,
    /// No usable id, or Redis could not be asked.
    Unmarked,
}

/// First pause after a failed check: short, as a blip should delay the batch by little.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause: the batch's jobs wait on it, so a returning store is noticed within seconds
/// (the pipeline's writes, which hold nothing up but slots, back off to 30 s).
const RETRY_MAX: Duration = Duration::from_secs(5);

pub struct Dedup {
    store: Store,
    queue: Queue,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The last check failed: the next batches give their run slots up at once instead of
    /// after [`SLOW`], so an outage fills the holds at the pace of claims, not of timeouts.
    failing: AtomicBool,
}

impl Dedup {
    pub fn new(store: Store, queue: Queue, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Dedup {
            store,
            queue,
            metrics,
            health,
            failing: AtomicBool::new(false),
        }
    }

    /// The verdict for each of `payloads` (claimed by worker `wid`), in order: the running mark
    /// first, then the store's check of the ids it granted. In that order, a copy claimed while
    /// another copy's worker commits and settles either finds the mark still taken, or (the
    /// commit comes before the settle that releases the mark) finds the committed row.
    /// `waiting` as for [`Dedup::finished`].
    pub async fn check(
        &self,
        wid: &str,
        payloads: &[Payload],
        stop: &CancellationToken,
        waiting: impl FnOnce(),
    ) -> Vec<Verdict> {
        let ids: Vec<Option<String>> = payloads.iter().map(|p| crate::job::peek_id(p)).collect();
        let marks = self.mark(wid, &ids).await;
        let to_check: Vec<Option<String>> = ids
            .iter()
            .zip(&marks)
            .map(|(id, mark)| id.clone().filter(|_| *mark != Mark::Refused))
            .collect();
        let finished = self.finished(&to_check, stop, waiting).await;
        let verdicts = ids.into_iter().zip(marks).enumerate().map(|(i, (id, mark))| {
            let active = id.filter(|_| mark == Mark::Granted);
            match (mark, finished.as_ref().map(|f| f[i])) {
                (Mark::Refused, _) => Verdict::RunningElsewhere,
                (_, None) => Verdict::HandBack { active },
                (_, Some(true)) => Verdict::Finished { active },
                (_, Some(false)) => Verdict::Run { active },
            }
        });
        verdicts.collect()
    }

    /// Marks the ids as running on `wid` (one script call for the batch).
    async fn mark(&self, wid: &str, ids: &[Option<String>]) -> Vec<Mark> {
        let asked: Vec<&str> = ids.iter().filter_map(|id| id.as_deref()).collect();
        let mut granted = match self.queue.take_active(wid, &asked).await {
            Ok(granted) => granted.into_iter(),
            Err(e) => {
                self.metrics.redis_errors.with_label_values(&["active"]).inc();
                tracing::warn!(error = %e, jobs = asked.len(),
                    "marking claimed jobs as running failed; they run without the mark");
                return vec![Mark::Unmarked; ids.len()];
            }
        };
        ids.iter()
            .map(|id| match id {
                None => Mark::Unmarked,
                Some(_) if granted.next().unwrap_or(true) => Mark::Granted,
                Some(_) => Mark::Refused,
            })
            .collect()
    }

    /// For each of `payloads`, in order, whether its id already has a terminal result. Retries
    /// until the store answers; `None` when `stop` was cancelled first (hand the jobs back).
    /// `waiting` is called once, when the batch starts to wait: the first answer failed, or took
    /// longer than [`SLOW`].
    pub async fn finished(
        &self,
        ids: &[Option<String>],
        stop: &CancellationToken,
        waiting: impl FnOnce(),
    ) -> Option<Vec<bool>> {
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
