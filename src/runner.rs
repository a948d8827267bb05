//! Runs one claimed job: decode, find the handler, execute one attempt under its timeout with
//! panics caught, and decide what happens next (done, retry after backoff, dead letter, requeue).
//! Everything here is per job, inside the job's span; nothing touches Redis or Postgres.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::{Instrument, Span, info_span};
use uuid::Uuid;

use crate::backoff::retry_delay;
use crate::config::Config;
use crate::dedup::{RUNNING_ELSEWHERE_WAIT, Verdict};
use crate::handler::{Registry, Retry, StepContext, StepError};
use crate::job::{self, Job};
use crate::metrics::Metrics;
use crate::outcome::{Claimed, Decided, Finished, Settle};
use crate::queue::Payload;
use crate::redact::Redactor;
use crate::store::{AttemptRecord, DeadLetterRecord, ResultRecord, Status, stored_json};
use crate::trace::attempt as trace;

/// Metric label for payloads that could not be decoded, and for jobs handed back before anything
/// decoded them.
pub const INVALID: &str = "invalid";
/// Metric label for steps with no handler (step names from payloads are unbounded).
const UNKNOWN: &str = "unknown";
/// Metric label shared by the steps a fallback runs that were not named in advance
/// (`STEP_ROUTES`, `METRICS_STEPS`).
pub const OTHER: &str = "other";

/// Longest queue wait the histogram observes: jobs wait minutes, hours in a backlog, days while
/// their step is paused; a longer "wait" says the producer's `enqueued_at` is wrong.
const MAX_PLAUSIBLE_WAIT: Duration = Duration::from_secs(30 * 86_400);

/// How one attempt ended.
enum Attempt {
    Succeeded(Value),
    Failed {
        outcome: &'static str,
        error: String,
        retry: Retry,
    },
    /// Cancelled before it finished (lost lease or shutdown): not an attempt.
    Interrupted,
    /// An operator cancelled the job while it ran: terminal, not retried.
    Cancelled,
}

pub struct Runner {
    pub config: Arc<Config>,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub pause: Arc<crate::pause::Pause>,
}

impl Runner {
    /// Runs `claimed` to a [`Finished`]. `cancel` interrupts the attempt.
    ///
    /// A panic anywhere on the job's path outside its step (the step's own panics are failed
    /// attempts) is caught here, logged once, and the job handed back: a panic must never leave
    /// the payload in this worker's list with nothing tracking it.
    pub async fn run(&self, claimed: Claimed, cancel: CancellationToken) -> Finished {
        match AssertUnwindSafe(self.decide(&claimed, cancel)).catch_unwind().await {
            Ok(decided) => decided.finish(claimed),
            Err(panic) => {
                tracing::error!(
                    error = %panic_message(&panic),
                    "handling a job panicked outside its step; the job goes back to the queue"
                );
                Decided::requeue(INVALID.into()).finish(claimed)
            }
        }
    }

    async fn decide(&self, claimed: &Claimed, cancel: CancellationToken) -> Decided {
        let job = match job::decode(&claimed.payload) {
            Ok(job) => job,
            Err((err, salvage)) => {
                tracing::warn!(job.id = salvage.id.as_deref(), reason = err.reason(), error = %err, "malformed payload dead-lettered");
                let letter = DeadLetterRecord {
                    id: Uuid::now_v7(),
                    job_id: salvage.id,
                    run_id: salvage.run_id,
                    step: salvage.step,
                    reason: err.reason().to_owned(),
                    error: Some(err.to_string()),
                    attempts: 0,
                    payload: claimed.payload.clone(),
                    worker_id: claimed.identity.wid.clone(),
                    dead_at: Utc::now(),
                    with_result: false,
                };
                return Decided {
                    settle: Settle::Done,
                    dead_letter: Some(letter),
                    ..Decided::requeue(INVALID.into())
                };
            }
        };
        // An operator cancelled it between its claim and now: it ends here, whatever else would
        // have happened to it (delayed, held, checked).
        if claimed.ticket.cancelled_by_operator() {
            tracing::info!(job.id = %job.id, job.step = %job.step, "cancelled by an operator before it started");
            self.metrics.job(&self.label(&job.step), "cancelled");
            return cancelled(claimed, &job, self.label(&job.step), claimed.failures, None);
        }
        // Before everything else: a job that already finished, or is running elsewhere, is
        // neither delayed, held nor run.
        match claimed.verdict {
            Verdict::Finished { .. } => {
                tracing::info!(job.id = %job.id, job.step = %job.step,
                    "the job already has a terminal result; this copy is settled without running");
                return Decided {
                    settle: Settle::Duplicate,
                    ..Decided::requeue(self.label(&job.step))
                };
            }
            Verdict::RunningElsewhere => {
                tracing::info!(job.id = %job.id, job.step = %job.step,
                    "another copy of the job is running; this copy waits in the delayed set");
                return Decided {
                    settle: Settle::Delay {
                        after: RUNNING_ELSEWHERE_WAIT,
                        payload: claimed.payload.clone(),
                    },
                    ..Decided::requeue(self.label(&job.step))
                };
            }
            Verdict::HandBack { .. } => return Decided::requeue(self.label(&job.step)),
            Verdict::Run { .. } => {}
        }
        // Before anything that judges the job (its handler, a paused step): by its due time the
        // step may be deployed or resumed. No span either: a claim too early is not an attempt.
        if let job::Due::Later { after, payload } = job.due(&claimed.payload, Utc::now()) {
            tracing::debug!(job.id = %job.id, job.step = %job.step, due_in_ms = after.as_millis() as u64,
                "claimed before its due time; back to the delayed set");
            let payload = payload.map_or_else(|| claimed.payload.clone(), Payload::from);
            return Decided {
                settle: Settle::Delay { after, payload },
                ..Decided::requeue(self.label(&job.step))
            };
        }
        // Counts come from Redis and payloads: never let arithmetic on them panic or wrap.
        let attempt = claimed.failures.saturating_add(1);
        // The trace fields are filled in by `trace::begin`, the outcome and wait on the way.
        // One field list for both targets: the untraced one is left out of export (trace::admit).
        macro_rules! job_span {
            ($($target:tt)*) => {
                info_span!($($target)* "job", job.id = %job.id, job.step = %job.step, run.id = job.run_id.as_deref(),
                    correlation_id = %job.correlation_id, attempt, trace_id = Empty, span_id = Empty, outcome = Empty,
                    queue.wait_ms = Empty)
            };
        }
        let span = match crate::trace::export::admit() {
            true => job_span!(),
            false => job_span!(target: trace::UNTRACED,),
        };
        trace::begin(&span, job.trace.as_ref(), claimed.claimed_at.into());
        let mut decided = self
            .run_job(claimed, job, attempt, cancel, &span)
            .instrument(span.clone())
            .await;
        decided.span = span;
        decided
    }

    /// `span` is the job's, the one this runs in: passed, not looked up, because each lookup of
    /// the current span is a registry read and a handle to drop, for every layer.
    async fn run_job(
        &self,
        claimed: &Claimed,
        mut job: Job,
        attempt: u32,
        cancel: CancellationToken,
        span: &Span,
    ) -> Decided {
        crate::failpoint::before_step();
        if let Some(why) = &job.trace_ignored {
            tracing::warn!(reason = %why, "the job's trace context, or part of it, was ignored");
        }
        let Some(handler) = self.registry.resolve(&job.step) else {
            tracing::warn!("no handler for step; dead-lettered");
            let error = format!("unknown step `{}`: no handler is registered for it", job.step);
            trace::outcome(span, "unknown_step", Some(&error));
            return self.dead(claimed, &job, UNKNOWN.into(), "unknown_step", error, 0, None);
        };
        let label = self.label(&job.step);
        if self.pause.is_step_paused(&job.step) {
            tracing::info!("step paused by an operator; the job waits until it is resumed");
            trace::outcome(span, "held", None);
            return Decided {
                settle: Settle::Hold(job.step.clone()),
                ..Decided::requeue(label)
            };
        }
        // Queue wait is the first attempt's: a retry's wait since enqueue includes its backoff.
        // It counts from when the job was due (`run_at`, `delay_ms`): time spent waiting on
        // purpose is not time spent waiting for a worker. A wait longer than any queue holds a
        // job (a producer's wrong clock or unit: `0` would add 56 years to the sum) is not
        // observed.
        let wait = job
            .waiting_since()
            .filter(|_| claimed.failures == 0)
            .map(|since| (claimed.claimed_at - since).to_std().unwrap_or_default())
            .filter(|wait| *wait <= MAX_PLAUSIBLE_WAIT);
        if let Some(wait) = wait {
            span.record("queue.wait_ms", wait.as_millis() as u64);
            self.metrics
                .queue_wait
                .with_label_values(&[&label])
                .observe(wait.as_secs_f64());
        }
        let max_attempts = job.max_retries.unwrap_or(self.config.max_retries).saturating_add(1);
        let timeout = job
            .timeout
            .map_or(self.config.step_timeout, |t| t.min(self.config.step_timeout_max));
        let step_span = trace::Step::start(span);
        let ctx = StepContext {
            job_id: job.id.clone(),
            step: job.step.clone(),
            run_id: job.run_id.clone(),
            correlation_id: job.correlation_id.clone(),
            attempt,
            max_attempts,
            timeout,
            cancel: cancel.clone(),
            trace: step_span.headers(job.trace.as_ref()),
        };
        let started_at = Utc::now();
        let clock = std::time::Instant::now();
        let running = crate::metrics::Running::start(&self.metrics.steps_running);
        // The input is handed over, not copied: nothing below reads it.
        let input = std::mem::take(&mut job.input);
        let run = AssertUnwindSafe(handler.run(ctx, input)).catch_unwind();
        // Biased: a step that has returned ran to its end, so its outcome stands even when the
        // lease was fenced meanwhile (a step that blocked its thread could not yield earlier);
        // the pipeline holds that outcome back until a beat proves the job is still ours.
        let mut hold_step = None;
        let result = tokio::select! {
            biased;
            r = tokio::time::timeout(timeout, run) => match r {
                Ok(Ok(Ok(output))) => Attempt::Succeeded(output),
                Ok(Ok(Err(e))) => {
                    hold_step = e.hold_step.map(|d| (job.step.clone(), d));
                    failed("failed", &e)
                }
                Ok(Err(panic)) => Attempt::Failed { outcome: "panicked", error: panic_message(&panic), retry: Retry::Retryable { retry_after: None } },
                Err(_) => Attempt::Failed {
                    outcome: "timed_out",
                    error: format!("step timed out after {} ms", timeout.as_millis()),
                    retry: Retry::Retryable { retry_after: None },
                },
            },
            _ = cancel.cancelled() => match claimed.ticket.cancelled_by_operator() {
                true => Attempt::Cancelled,
                false => Attempt::Interrupted,
            },
        };
        let elapsed = clock.elapsed();
        drop(running);
        // A step that blocks its thread cannot be stopped by the timeout (nor by the fence): it
        // returns when it returns. Past its timeout, whatever it returned, the attempt timed out,
        // as it would have had it yielded.
        let result = match result {
            Attempt::Succeeded(_)
            | Attempt::Failed {
                outcome: "failed" | "panicked",
                ..
            } if elapsed > timeout => Attempt::Failed {
                outcome: "timed_out",
                error: format!(
                    "step timed out after {} ms (it blocked its thread and returned after {} ms)",
                    timeout.as_millis(),
                    elapsed.as_millis()
                ),
                retry: Retry::Retryable { retry_after: None },
            },
            other => other,
        };
        // A step that saw its operator's cancellation and returned an error failed because of
        // it: the outcome is the cancellation, not a failure to retry. (One that returned its
        // output finished its work first: that stands.)
        let result = match result {
            Attempt::Failed { .. } if claimed.ticket.cancelled_by_operator() => Attempt::Cancelled,
            other => other,
        };
        let finished_at = Utc::now();
        // What a step says is stored, logged and reported: masked and bounded once, here.
        let result = match result {
            Attempt::Failed { outcome, error, retry } => Attempt::Failed {
                outcome,
                error: Redactor::new(&self.config.notify.pii_keys).job_error_text(&error, &claimed.payload),
                retry,
            },
            other => other,
        };
        let (outcome_label, error) = match &result {
            Attempt::Succeeded(_) => ("succeeded", None),
            Attempt::Failed { outcome, error, .. } => (*outcome, Some(error.as_str())),
            Attempt::Interrupted => ("interrupted", None),
            Attempt::Cancelled => ("cancelled", None),
        };
        step_span.end(outcome_label, error);
        trace::outcome(span, outcome_label, error);
        self.metrics.job(&label, outcome_label);
        self.metrics
            .job_duration
            .with_label_values(&[&label, outcome_label])
            .observe(elapsed.as_secs_f64());
        let mut finished = match result {
            Attempt::Succeeded(output) => {
                tracing::debug!(duration_ms = elapsed.as_millis() as u64, "step succeeded");
                let result = ResultRecord {
                    job_id: job.id,
                    run_id: job.run_id,
                    step: job.step,
                    status: Status::Succeeded,
                    attempts: stored_count(attempt),
                    output: Some(stored_json(&output)),
                    error: None,
                    enqueued_at: job.enqueued_at,
                    started_at: Some(started_at),
                    finished_at,
                    duration_ms: Some(elapsed.as_millis() as i64),
                    worker_id: claimed.identity.wid.clone(),
                };
                Decided {
                    settle: Settle::Done,
                    result: Some(result),
                    ..Decided::requeue(label)
                }
            }
            Attempt::Interrupted => {
                tracing::info!("step interrupted; the job goes back to the queue");
                Decided::requeue(label)
            }
            Attempt::Cancelled => {
                tracing::info!(
                    duration_ms = elapsed.as_millis() as u64,
                    "cancelled by an operator while running"
                );
                cancelled(claimed, &job, label, attempt, Some((started_at, finished_at)))
            }
            Attempt::Failed { outcome, error, retry } => {
                let record = AttemptRecord {
                    id: Uuid::now_v7(),
                    job_id: job.id.clone(),
                    attempt: stored_count(attempt),
                    outcome,
                    error: Some(error.clone()),
                    started_at,
                    finished_at,
                    worker_id: claimed.identity.wid.clone(),
                };
                match retry {
                    Retry::Permanent => {
                        tracing::warn!(error = %error, "step failed permanently; dead-lettered");
                        self.dead(claimed, &job, label, "permanent_failure", error, attempt, Some(record))
                    }
                    Retry::Retryable { .. } if attempt >= max_attempts => {
                        tracing::warn!(error = %error, max_attempts, "retries exhausted; dead-lettered");
                        self.dead(claimed, &job, label, "retries_exhausted", error, attempt, Some(record))
                    }
                    Retry::Retryable { retry_after } => {
                        let delay = retry_delay(
                            attempt,
                            self.config.retry_backoff,
                            self.config.retry_backoff_max,
                            retry_after,
                        );
                        tracing::info!(error = %error, outcome, retry_in_ms = delay.as_millis() as u64, "step failed; will retry");
                        Decided {
                            settle: Settle::Retry(delay),
                            result: None,
                            dead_letter: None,
                            attempt: Some(record),
                            step_label: label,
                            ran_for: Duration::ZERO,
                            span: Span::none(),
                            hold_step: None,
                        }
                    }
                }
            }
        };
        finished.ran_for = elapsed;
        finished.hold_step = hold_step;
        finished
    }

    /// The metric label of a step with a handler. Step names come from payloads, and a fallback
    /// (HTTP steps) runs any of them: only names known in advance are labels, so the series
    /// count is bounded whatever producers send.
    fn label(&self, step: &str) -> Arc<str> {
        if self.registry.resolve(step).is_none() {
            UNKNOWN.into()
        } else if self.registry.is_native(step) || self.config.http_steps.is_known_step(step) {
            step.into()
        } else if crate::http_step::route::check_step_name(step).is_err() {
            INVALID.into()
        } else {
            OTHER.into()
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dead(
        &self,
        claimed: &Claimed,
        job: &Job,
        label: Arc<str>,
        reason: &str,
        error: String,
        attempts: u32,
        attempt: Option<AttemptRecord>,
    ) -> Decided {
        let now = Utc::now();
        let result = ResultRecord {
            job_id: job.id.clone(),
            run_id: job.run_id.clone(),
            step: job.step.clone(),
            status: Status::Dead,
            attempts: stored_count(attempts),
            output: None,
            error: Some(format!("{reason}: {error}")),
            enqueued_at: job.enqueued_at,
            started_at: attempt.as_ref().map(|a| a.started_at),
            finished_at: now,
            duration_ms: attempt
                .as_ref()
                .map(|a| (a.finished_at - a.started_at).num_milliseconds()),
            worker_id: claimed.identity.wid.clone(),
        };
        let letter = DeadLetterRecord {
            id: Uuid::now_v7(),
            job_id: Some(job.id.clone()),
            run_id: job.run_id.clone(),
            step: Some(job.step.clone()),
            reason: reason.to_owned(),
            error: Some(error),
            attempts: stored_count(attempts),
            payload: claimed.payload.clone(),
            worker_id: claimed.identity.wid.clone(),
            dead_at: now,
            with_result: true,
        };
        Decided {
            settle: Settle::Done,
            result: Some(result),
            dead_letter: Some(letter),
            attempt,
            ..Decided::requeue(label)
        }
    }
}

/// The `cancelled` result of a job an operator cancelled: `attempts` counts the attempt it was
/// stopped in, if it had started (`ran`: when it started and stopped). Terminal: settled as done.
fn cancelled(
    claimed: &Claimed,
    job: &Job,
    label: Arc<str>,
    attempts: u32,
    ran: Option<(chrono::DateTime<Utc>, chrono::DateTime<Utc>)>,
) -> Decided {
    let result = ResultRecord {
        job_id: job.id.clone(),
        run_id: job.run_id.clone(),
        step: job.step.clone(),
        status: Status::Cancelled,
        attempts: stored_count(attempts),
        output: None,
        error: Some(crate::cancel::reason(match ran {
            Some(_) => crate::cancel::Stage::Running,
            None => crate::cancel::Stage::Claimed,
        })),
        enqueued_at: job.enqueued_at,
        started_at: ran.map(|(start, _)| start),
        finished_at: ran.map_or_else(Utc::now, |(_, end)| end),
        duration_ms: ran.map(|(start, end)| (end - start).num_milliseconds()),
        worker_id: claimed.identity.wid.clone(),
    };
    Decided {
        settle: Settle::Done,
        result: Some(result),
        ..Decided::requeue(label)
    }
}

fn failed(outcome: &'static str, e: &StepError) -> Attempt {
    Attempt::Failed {
        outcome,
        error: e.to_string(),
        retry: e.retry,
    }
}

/// An attempt count for an int4 column: counts are bounded by the contract, but a corrupted
/// counter in Redis must not wrap into a negative number.
fn stored_count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    format!("step panicked: {msg}")
}
