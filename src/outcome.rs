//! What a finished job hands to the persist-then-settle pipeline: the rows to write and the Redis
//! settle to apply after they are committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capacity::Slot;
use crate::lease::Identity;
use crate::queue::Payload;
use crate::store::{AttemptRecord, Batch, DeadLetterRecord, ResultRecord, Status};

/// A job this worker has moved into its in-flight list. Its slot's hold frees only when the job
/// has been settled (so a Postgres outage stops claiming); its run slot when the step ends.
#[derive(Debug)]
pub struct Claimed {
    pub payload: Payload,
    pub identity: Arc<Identity>,
    /// Failed attempts before this one.
    pub failures: u32,
    pub claimed_at: chrono::DateTime<chrono::Utc>,
    /// The same moment on the monotonic clock, for the per-job overhead metric.
    pub claimed_clock: Instant,
    /// When its step's attempt ended (set by the job's task), for the overhead's phases.
    pub ended_clock: Option<Instant>,
    pub slot: Slot,
    pub ticket: crate::inflight::Ticket,
    /// What the checks before its start decided ([`crate::dedup`]).
    pub verdict: crate::dedup::Verdict,
}

/// How the job leaves this worker's list once its rows are committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Terminal: succeeded or dead-lettered.
    Done,
    /// Failed attempt; try again after this delay.
    Retry(Duration),
    /// Claimed before its due time (`run_at`, `delay_ms`): nothing ran and no attempt is
    /// counted. `payload` re-enters the queue `after` from now: the claimed bytes, or a copy
    /// stamped with its enqueue time (see `job::due`).
    Delay { after: Duration, payload: Payload },
    /// Its id already has a terminal result: nothing ran, no attempt is counted, no row is
    /// written; it leaves the list as a done job does.
    Duplicate,
    /// Unfinished (shutdown or lost lease): back to ready, not counted as an attempt.
    Requeue,
    /// Its step is paused: wait in the step's held list, not counted as an attempt.
    Hold(String),
}

#[derive(Debug)]
pub struct Finished {
    pub claimed: Claimed,
    pub settle: Settle,
    pub result: Option<ResultRecord>,
    pub dead_letter: Option<DeadLetterRecord>,
    pub attempt: Option<AttemptRecord>,
    /// Metric label: the step name when it has a handler, else `unknown` / `invalid`.
    pub step_label: Arc<str>,
    /// How long the attempt ran (zero when nothing ran): the step's share of the job's time.
    pub ran_for: Duration,
    /// The attempt's span, kept open until the job is settled, so the commit and the settle are
    /// part of it ([`crate::trace::attempt`]).
    pub span: tracing::Span,
    /// Back-pressure: hold this step on every replica for this long (see `StepError::throttled`).
    pub hold_step: Option<(String, Duration)>,
}

/// What the runner decided for a job, before it is joined to the claim it came from (kept apart
/// so that a panic while deciding cannot lose the claim).
#[derive(Debug)]
pub struct Decided {
    pub settle: Settle,
    pub result: Option<ResultRecord>,
    pub dead_letter: Option<DeadLetterRecord>,
    pub attempt: Option<AttemptRecord>,
    pub step_label: Arc<str>,
    pub ran_for: Duration,
    pub span: tracing::Span,
    pub hold_step: Option<(String, Duration)>,
}

impl Decided {
    /// Hand back unfinished: no rows, back to ready.
    pub fn requeue(step_label: Arc<str>) -> Self {
        Decided {
            settle: Settle::Requeue,
            result: None,
            dead_letter: None,
            attempt: None,
            step_label,
            ran_for: Duration::ZERO,
            span: tracing::Span::none(),
            hold_step: None,
        }
    }

    pub fn finish(self, claimed: Claimed) -> Finished {
        Finished {
            claimed,
            settle: self.settle,
            result: self.result,
            dead_letter: self.dead_letter,
            attempt: self.attempt,
            step_label: self.step_label,
            ran_for: self.ran_for,
            span: self.span,
            hold_step: self.hold_step,
        }
    }
}

impl Finished {
    pub fn requeue(claimed: Claimed, step_label: Arc<str>) -> Self {
        Decided::requeue(step_label).finish(claimed)
    }

    /// Whether any row must be committed before the settle.
    pub fn has_rows(&self) -> bool {
        self.result.is_some() || self.dead_letter.is_some() || self.attempt.is_some()
    }

    /// What to write instead when Postgres refuses this outcome's rows (`error` says why), most
    /// complete first: a `dead` result and an `unstorable` dead letter under the job's id, so the
    /// job still has a row to look up; then, should even that be refused, the dead letter alone
    /// with nothing but the raw payload and the error.
    pub fn unstorable(&self, error: &str) -> Vec<Batch> {
        let now = chrono::Utc::now();
        let error = format!("the outcome could not be stored: {error}");
        let attempts = self.attempt.as_ref().map_or(0, |a| a.attempt);
        let anonymous = DeadLetterRecord {
            id: uuid::Uuid::now_v7(),
            job_id: None,
            run_id: None,
            step: None,
            reason: "unstorable".to_owned(),
            error: Some(error.clone()),
            attempts,
            payload: self.claimed.payload.clone(),
            worker_id: self.claimed.identity.wid.clone(),
            dead_at: now,
            with_result: false,
        };
        let mut batches = Vec::with_capacity(2);
        let job = match (&self.result, &self.dead_letter, &self.attempt) {
            (Some(r), _, _) => Some((r.job_id.clone(), r.run_id.clone(), Some(r.step.clone()))),
            (None, Some(d), _) => d.job_id.clone().map(|id| (id, d.run_id.clone(), d.step.clone())),
            (None, None, Some(a)) => Some((a.job_id.clone(), None, None)),
            (None, None, None) => None,
        };
        if let Some((job_id, run_id, step)) = job {
            let result = ResultRecord {
                job_id: job_id.clone(),
                run_id: run_id.clone(),
                step: step.clone().unwrap_or_default(),
                status: Status::Dead,
                attempts,
                output: None,
                error: Some(format!("unstorable: {error}")),
                enqueued_at: None,
                started_at: None,
                finished_at: now,
                duration_ms: None,
                worker_id: self.claimed.identity.wid.clone(),
            };
            let letter = DeadLetterRecord {
                id: uuid::Uuid::now_v7(),
                job_id: Some(job_id),
                run_id,
                step,
                with_result: true,
                ..anonymous.clone()
            };
            batches.push(Batch {
                results: vec![result],
                dead_letters: vec![letter],
                ..Batch::default()
            });
        }
        batches.push(Batch {
            dead_letters: vec![anonymous],
            ..Batch::default()
        });
        batches
    }
}
