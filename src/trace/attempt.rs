//! The attempt's span: the job's `tracing` span (the one every log line of the job is under),
//! joined to the producer's trace and exported while export is on.
//!
//! The span model (docs/tracing.md): one `job` span per attempt, from its decode to its settle in
//! Redis, child of the producer's span when the job carries a `traceparent`; a `step` child span
//! around the step itself (what an HTTP step's `traceparent` names as the caller); the claim, the
//! commit and the settle as events. With export off nothing here does any work beyond one check,
//! except passing the producer's own context on to HTTP steps and its trace id to the logs.

use std::time::SystemTime;

use opentelemetry::trace::{Span as _, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::context::{Remote, TraceHeaders, headers};
use super::export;

/// The target of a job span that is not traced: the OpenTelemetry layer's filter excludes it, so
/// the span costs what a log span costs; the logs see it as any other (`step_worker::runner`
/// directives match it). See [`export::admit`].
pub const UNTRACED: &str = "step_worker::runner::untraced";

/// Whether `span` is exported: export is on and the span was admitted.
fn traced(span: &Span) -> bool {
    export::tracer().is_some() && span.metadata().is_some_and(|m| m.target() != UNTRACED)
}

/// Joins `span` (the job's, before it is first entered) to the producer's trace when there is
/// one, and records the trace and span ids on it for the logs. With export off the logs still
/// get the producer's trace id; there is no span id of the worker's own.
pub fn begin(span: &Span, remote: Option<&Remote>, claimed_at: SystemTime) {
    if !traced(span) || span.is_disabled() {
        if let Some(remote) = remote {
            span.record("trace_id", tracing::field::display(remote.trace_id));
        }
        return;
    }
    if let Some(remote) = remote {
        let _ = span.set_parent(Context::new().with_remote_span_context(remote.span_context()));
    }
    let cx = span.context();
    let ids = cx.span().span_context().clone();
    span.record("trace_id", tracing::field::display(ids.trace_id()));
    span.record("span_id", tracing::field::display(ids.span_id()));
    // At its own time, a moment before the span opened: the claim is what started the attempt.
    span.add_event_with_timestamp("claimed", claimed_at, Vec::new());
}

/// The outcome of the attempt (and the error, for a failure), on the job's span.
pub fn outcome(span: &Span, outcome: &'static str, error: Option<&str>) {
    span.record("outcome", outcome);
    if let Some(error) = error
        && traced(span)
    {
        span.set_status(Status::error(error.to_owned()));
    }
}

/// The attempt's rows are committed to Postgres, with those of `jobs` jobs in all (one statement).
pub fn committed(span: &Span, jobs: usize) {
    if traced(span) {
        span.add_event("committed", vec![KeyValue::new("batch.jobs", jobs as i64)]);
    }
}

/// The job left this worker's list in Redis (`how`: done, retry, requeue, hold); the span ends
/// here, when its last handle is dropped.
pub fn settled(span: &Span, how: &'static str) {
    if traced(span) {
        span.add_event("settled", vec![KeyValue::new("settle", how)]);
        // An exported span ends when it was last exited: entering it once more moves its end from
        // the step's end to now.
        span.in_scope(|| {});
    }
}

/// The `step` span: the step's own run inside the attempt, the parent of whatever the step calls.
pub struct Step {
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl Step {
    /// Opens the step span under `attempt` (the job's span); nothing while export is off.
    pub fn start(attempt: &Span) -> Self {
        let Some(tracer) = export::tracer().filter(|_| traced(attempt)) else {
            return Step { span: None };
        };
        let cx = attempt.context();
        if !cx.span().span_context().is_valid() {
            return Step { span: None };
        }
        Step {
            span: Some(tracer.start_with_context("step", &cx)),
        }
    }

    /// The `traceparent` and `tracestate` the step sends with its calls: this span's, or with
    /// export off the producer's own, passed through so the callee still joins its trace.
    pub fn headers(&self, remote: Option<&Remote>) -> Option<TraceHeaders> {
        match &self.span {
            Some(span) => {
                let ids = span.span_context();
                Some(headers(
                    ids.trace_id(),
                    ids.span_id(),
                    ids.trace_flags(),
                    ids.trace_state(),
                ))
            }
            None => remote.map(Remote::headers),
        }
    }

    /// Ends the span with the attempt's outcome.
    pub fn end(self, outcome: &'static str, error: Option<&str>) {
        let Some(mut span) = self.span else { return };
        span.set_attribute(KeyValue::new("outcome", outcome));
        if let Some(error) = error {
            span.set_status(Status::error(error.to_owned()));
        }
        span.end();
    }
}
