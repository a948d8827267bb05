//! The duplicate check between claim and run: a claimed job whose id already has a terminal
//! result (`step_results`) is not run again. It is settled off this worker's list without an
//! attempt and counted as `step_worker_jobs_total{outcome="duplicate"}`; its row is left as it
//! is. This covers a producer's retried `LPUSH` and the commit-then-crash window (a worker killed
//! after its commit and before its settle: the reaper re-delivers a job that already finished).
//!
//! Rules:
//! - At most one store round trip per claim batch ([`Store::finished`]), asked before any job of
//!   the batch starts; batches claimed while a query is in flight share the next one
//!   ([`crate::merge`]). The claim loop does not wait for it (the batch's task does), and the
//!   jobs being checked lend their run slots to the next claim meanwhile, up to
//!   `WORKER_CONCURRENCY` lent at once ([`crate::capacity::Capacity::lend_run_slot`]; a suspect
//!   keeps every slot), so the check overlaps running steps and a replica holds at most that many
//!   checked-or-waiting jobs beyond its running ones.
//! - When the store cannot answer, the batch waits and asks again with backoff, its jobs still
//!   in this worker's list: an outage stops claiming once the lent and run slots are taken (at
//!   most `2 × WORKER_CONCURRENCY` jobs waiting a replica). Running the batch unchecked instead
//!   would run a finished job's step again exactly when no result can be written anyway. A lost
//!   lease or the shutdown drain ends the wait: the jobs are handed back, not counted as
//!   attempts.
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
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::merge::Merged;
use crate::metrics::Metrics;
use crate::queue::Payload;
use crate::queue::Queue;
use crate::store::Store;

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
    /// `Queue::take_active`, merged across the batches claimed while a call is in flight.
    marks: Merged<String, bool, Arc<redis::RedisError>>,
    /// `Store::finished`, merged the same way: one round trip for every batch waiting on it.
    checks: Merged<String, bool, Arc<sqlx::Error>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Dedup {
    pub fn new(store: Store, queue: Queue, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        let marks = Merged::spawn(move |wid, ids: Vec<String>| {
            let queue = queue.clone();
            async move {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                queue.take_active(&wid, &ids).await.map_err(Arc::new)
            }
        });
        let checks = Merged::spawn(move |_, ids: Vec<String>| {
            let store = store.clone();
            async move {
                let found = store.finished(&ids).await.map_err(Arc::new)?;
                Ok(ids.iter().map(|id| found.contains(id)).collect())
            }
        });
        Dedup {
            marks,
            checks,
            metrics,
            health,
        }
    }

    /// The verdict for each of `payloads` (claimed by worker `wid`), in order: the running mark
    /// first, then the store's check of the ids it granted. In that order, a copy claimed while
    /// another copy's worker commits and settles either finds the mark still taken, or (the
    /// commit comes before the settle that releases the mark) finds the committed row.
    pub async fn check(&self, wid: &str, payloads: &[Payload], stop: &CancellationToken) -> Vec<Verdict> {
        let ids: Vec<Option<String>> = payloads.iter().map(|p| crate::job::peek_id(p)).collect();
        let marks = self.mark(wid, &ids).await;
        let to_check: Vec<Option<String>> = ids
            .iter()
            .zip(&marks)
            .map(|(id, mark)| id.clone().filter(|_| *mark != Mark::Refused))
            .collect();
        let finished = self.finished(&to_check, stop).await;
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
        let asked: Vec<String> = ids.iter().flatten().cloned().collect();
        if asked.is_empty() {
            return vec![Mark::Unmarked; ids.len()];
        }
        let jobs = asked.len();
        let mut granted = match self.marks.ask(wid, asked).await {
            Some(Ok(granted)) => granted.into_iter(),
            failed => {
                let e = failed.map_or_else(
                    || "the runtime is shutting down".to_owned(),
                    |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
                );
                self.metrics.redis_errors.with_label_values(&["active"]).inc();
                tracing::warn!(error = %e, jobs,
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
    pub async fn finished(&self, ids: &[Option<String>], stop: &CancellationToken) -> Option<Vec<bool>> {
        let mut asked: Vec<String> = ids.iter().flatten().cloned().collect();
        asked.sort_unstable();
        asked.dedup();
        let found = self.ask(&asked, stop).await?;
        Some(
            ids.iter()
                .map(|id| id.as_ref().is_some_and(|id| found.contains(id)))
                .collect(),
        )
    }

    async fn ask(&self, ids: &[String], stop: &CancellationToken) -> Option<HashSet<String>> {
        let mut pause = RETRY_MIN;
        loop {
            if stop.is_cancelled() {
                return None;
            }
            let answer = tokio::select! {
                r = self.checks.ask("", ids.to_vec()) => r,
                _ = stop.cancelled() => return None,
            };
            let Some(answer) = answer else {
                // The runtime is shutting down: hand the jobs back.
                return None;
            };
            match answer {
                Ok(flags) => {
                    self.health.postgres_ok();
                    return Some(
                        ids.iter()
                            .zip(flags)
                            .filter(|(_, f)| *f)
                            .map(|(id, _)| id.clone())
                            .collect(),
                    );
                }
                // Asking again cannot help; the jobs run as they did before this check, and their
                // result write still keeps the first terminal outcome.
                Err(e) if crate::store::is_data_error(e.as_ref()) => {
                    self.metrics.postgres_errors.with_label_values(&["dedup_data"]).inc();
                    tracing::error!(error = %e, jobs = ids.len(), "the store refused the duplicate check for its data; the batch runs unchecked");
                    return Some(HashSet::new());
                }
                Err(e) => {
                    self.metrics.postgres_errors.with_label_values(&["dedup"]).inc();
                    self.health.postgres_failed(&e);
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, jobs = ids.len(),
                        "checking claimed jobs for a finished result failed; they wait and it is retried");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return None,
            }
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}
