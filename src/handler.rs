//! Step handlers: the [`Handler`] trait, the error type that carries the retry decision, and the
//! [`Registry`] that maps step names to handlers (with an optional fallback for every other name,
//! which is how HTTP-dispatched steps plug in). Handlers know nothing of Redis or Postgres.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub job_id: String,
    pub step: String,
    pub run_id: Option<String>,
    pub correlation_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// 1 + the job's max retries.
    pub max_attempts: u32,
    /// The time this attempt may still take; the worker drops the step's future after it.
    pub timeout: Duration,
    /// Cancelled when the worker must stop the attempt early (it lost its lease); cooperative
    /// handlers can select on it to clean up.
    pub cancel: CancellationToken,
    /// The W3C `traceparent` and `tracestate` for the calls the step makes: its own span's while
    /// trace export is on, else the producer's (`None` when the job carries none).
    pub trace: Option<crate::trace::TraceHeaders>,
}

/// Whether a failed attempt may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after backoff (or after `retry_after`, when the handler knows better).
    Retryable { retry_after: Option<Duration> },
    /// Retrying cannot help: dead-letter now.
    Permanent,
}

/// A failed attempt. The `retry` field is the decision the worker acts on.
#[derive(Debug)]
pub struct StepError {
    pub retry: Retry,
    pub message: String,
    /// Back-pressure: the service behind the step asked every caller to wait this long, so
    /// every replica holds the whole step (not only this job) until then.
    pub hold_step: Option<Duration>,
    source: Option<anyhow::Error>,
}

impl StepError {
    pub fn retryable(message: impl fmt::Display) -> Self {
        StepError {
            retry: Retry::Retryable { retry_after: None },
            message: message.to_string(),
            hold_step: None,
            source: None,
        }
    }

    pub fn permanent(message: impl fmt::Display) -> Self {
        StepError {
            retry: Retry::Permanent,
            message: message.to_string(),
            hold_step: None,
            source: None,
        }
    }

    /// Asks for the next attempt no sooner than `after` (it wins over backoff when longer).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        if let Retry::Retryable { retry_after } = &mut self.retry {
            *retry_after = Some(after);
        }
        self
    }

    /// The service behind the step is overloaded or rate-limiting (an HTTP 429 or 503 with
    /// `Retry-After`): this job is retried no sooner than `after`, and every replica holds the
    /// step's other jobs until then too, instead of each of them hitting the limit in turn.
    /// Waiting jobs are not attempts.
    pub fn throttled(message: impl fmt::Display, after: Duration) -> Self {
        let mut e = StepError::retryable(message).with_retry_after(after);
        e.hold_step = Some(after);
        e
    }

    pub fn is_permanent(&self) -> bool {
        self.retry == Retry::Permanent
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source:#}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// An unexpected error from inside a step is retryable: it is most often transient.
impl From<anyhow::Error> for StepError {
    fn from(e: anyhow::Error) -> Self {
        StepError {
            retry: Retry::Retryable { retry_after: None },
            message: "step failed".to_owned(),
            hold_step: None,
            source: Some(e),
        }
    }
}

pub type StepResult = Result<Value, StepError>;

/// A step implementation. `run` gets the job's `input` and returns the output stored in
/// `step_results.output`.
pub trait Handler: Send + Sync + 'static {
    fn run(&self, ctx: StepContext, input: Value) -> BoxFuture<'static, StepResult>;
}

/// Any `Fn(StepContext, Value) -> impl Future<Output = StepResult>` is a handler.
impl<F, Fut> Handler for F
where
    F: Fn(StepContext, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = StepResult> + Send + 'static,
{
    fn run(&self, ctx: StepContext, input: Value) -> BoxFuture<'static, StepResult> {
        Box::pin(self(ctx, input))
    }
}

/// Step name → handler. Built-in diagnostic steps (`builtin.*`) are always present and cannot be
/// replaced, because smoke and load tests rely on their exact behaviour.
#[derive(Clone)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
    fallback: Option<Arc<dyn Handler>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry holding the built-in steps only.
    pub fn new() -> Self {
        let mut r = Registry {
            handlers: HashMap::new(),
            fallback: None,
        };
        crate::builtin::register(&mut r.handlers);
        r
    }

    /// Registers a native handler for `step`. Native handlers take precedence over the fallback.
    ///
    /// # Panics
    /// When `step` starts with `builtin.`.
    pub fn register(mut self, step: impl Into<String>, handler: impl Handler) -> Self {
        let step = step.into();
        assert!(
            !step.starts_with(crate::builtin::PREFIX),
            "step names starting with `builtin.` are reserved"
        );
        self.handlers.insert(step, Arc::new(handler));
        self
    }

    /// The handler for every step name that has no native handler (for example an HTTP dispatcher).
    pub fn with_fallback(mut self, handler: impl Handler) -> Self {
        self.fallback = Some(Arc::new(handler));
        self
    }

    pub fn has_fallback(&self) -> bool {
        self.fallback.is_some()
    }

    /// Whether `step` has a native handler (a name known in advance, unlike the names a fallback
    /// accepts).
    pub fn is_native(&self, step: &str) -> bool {
        self.handlers.contains_key(step)
    }

    pub fn resolve(&self, step: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(step).or(self.fallback.as_ref()).cloned()
    }
}
