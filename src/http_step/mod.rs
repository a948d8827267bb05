//! HTTP steps: the registry's fallback handler, which runs a step by POSTing it to the endpoint
//! configured for its name and lets the answer decide the attempt's outcome.
//!
//! The worker stays the durable executor: it claims the job, and owns timeouts, retries, dead
//! letters and the records in Postgres; the endpoint only does the work. Rules:
//! - the URL comes from configuration ([`route`]); a job only names its step;
//! - every attempt of a job carries the same `Idempotency-Key` (the job id), so the endpoint can
//!   recognise a retry of work it already did;
//! - the call gets the attempt's remaining timeout, and its answer is read against a size limit
//!   ([`response`]);
//! - native handlers keep precedence: this handler only sees names the registry does not know;
//! - the attempt's W3C `traceparent` (and `tracestate`) go with the call, beside `X-Correlation-Id`.

mod response;
pub mod route;
pub mod signature;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::future::BoxFuture;
use prometheus::IntCounterVec;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{HttpSteps, Secret, redact_url, redact_url_path};
use crate::handler::{Handler, Registry, StepContext, StepError, StepResult};
use crate::metrics::Metrics;
use response::Class;
use route::Routes;
use signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};

const USER_AGENT: &str = concat!("step-worker/", env!("CARGO_PKG_VERSION"));
/// The runner cuts the attempt at `ctx.timeout` and records it as `timed_out`, like any step. The
/// client's own timer is only a backstop for callers outside the runner, so it is set this much
/// later: when both fire together the inner one wins the race and would record a plain failure.
const CLIENT_TIMEOUT_GRACE: Duration = Duration::from_secs(1);

/// Installs the HTTP dispatcher as `registry`'s fallback when `config` routes steps anywhere.
/// A fallback the embedding application installed itself is kept: code wins over environment.
pub fn install(registry: Registry, config: &HttpSteps, metrics: &Arc<Metrics>) -> anyhow::Result<Registry> {
    let Some(dispatcher) = HttpDispatcher::from_config(config, metrics.clone())? else {
        return Ok(registry);
    };
    if registry.has_fallback() {
        tracing::warn!("the application installed its own fallback handler; HTTP step routing is not used");
        return Ok(registry);
    }
    tracing::info!(
        template = config.routes().template.as_ref().map(|t| redact_url(t.as_str())),
        overrides = config.routes.len(),
        "steps without a native handler are sent to their HTTP endpoint"
    );
    Ok(registry.with_fallback(dispatcher))
}

/// Runs steps by calling their HTTP endpoint. Clones share one connection pool.
#[derive(Clone)]
pub struct HttpDispatcher {
    inner: Arc<Dispatcher>,
}

struct Dispatcher {
    client: reqwest::Client,
    routes: Routes,
    /// `Authorization` for every endpoint outside the Supabase origin.
    token: Option<HeaderValue>,
    /// The Supabase origin and the `Authorization` with its service role key, which is sent
    /// there and nowhere else.
    supabase: Option<(String, HeaderValue)>,
    signing_secret: Option<Secret>,
    max_bytes: usize,
    metrics: Arc<Metrics>,
    /// The steps that keep a metric label of their own ([`HttpSteps::is_known_step`]).
    config: HttpSteps,
}

/// The request body: the job as an endpoint needs it.
#[derive(Serialize)]
struct RequestBody<'a> {
    id: &'a str,
    step: &'a str,
    run_id: Option<&'a str>,
    correlation_id: &'a str,
    input: &'a Value,
    attempt: u32,
    max_attempts: u32,
}

impl HttpDispatcher {
    /// The dispatcher for `config`, or `None` when no route is configured.
    pub fn from_config(config: &HttpSteps, metrics: Arc<Metrics>) -> anyhow::Result<Option<Self>> {
        let routes = config.routes();
        if routes.is_empty() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            // A redirect would turn the POST into a GET, or send the job to a URL nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("cannot build the HTTP client for HTTP steps")?;
        let supabase = match (&config.supabase_url, &config.supabase_key) {
            (Some(url), Some(key)) => Some((url.origin().ascii_serialization(), bearer(key)?)),
            _ => None,
        };
        Ok(Some(HttpDispatcher {
            inner: Arc::new(Dispatcher {
                client,
                routes,
                token: config.token.as_ref().map(bearer).transpose()?,
                supabase,
                signing_secret: config.signing_secret.clone(),
                max_bytes: config.response_max_bytes,
                metrics,
                config: config.clone(),
            }),
        }))
    }
}

impl Handler for HttpDispatcher {
    fn run(&self, ctx: StepContext, input: Value) -> BoxFuture<'static, StepResult> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.call(ctx, input).await })
    }
}

impl Dispatcher {
    async fn call(&self, ctx: StepContext, input: Value) -> StepResult {
        let url = self.routes.resolve(&ctx.step).map_err(StepError::permanent)?;
        let body = serde_json::to_vec(&RequestBody {
            id: &ctx.job_id,
            step: &ctx.step,
            run_id: ctx.run_id.as_deref(),
            correlation_id: &ctx.correlation_id,
            input: &input,
            attempt: ctx.attempt,
            max_attempts: ctx.max_attempts,
        })
        .expect("a JSON value with string keys always serialises");
        let mut request = self
            .client
            .post(url.clone())
            .timeout(ctx.timeout + CLIENT_TIMEOUT_GRACE)
            .header(CONTENT_TYPE, "application/json")
            .header("idempotency-key", header_value(&ctx.job_id))
            .header("x-correlation-id", header_value(&ctx.correlation_id))
            .header("x-step-attempt", ctx.attempt);
        // The attempt's trace context, so the endpoint's own spans join the producer's trace.
        // Both were checked (or made) by the worker: valid header values.
        if let Some(trace) = &ctx.trace {
            request = request.header("traceparent", &trace.traceparent);
            if let Some(state) = &trace.tracestate {
                request = request.header("tracestate", state);
            }
        }
        if let Some(authorization) = self.authorization(&url) {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        if let Some(secret) = &self.signing_secret {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            request = request
                .header(TIMESTAMP_HEADER, now)
                .header(SIGNATURE_HEADER, sign(secret.expose().as_bytes(), now, &body));
        }
        let label = match self.config.is_known_step(&ctx.step) {
            true => ctx.step.as_str(),
            false => crate::runner::OTHER,
        };
        let mut tally = Tally {
            counter: &self.metrics.http_step_responses,
            step: label,
            cancel: &ctx.cancel,
            class: None,
        };
        let (class, result) = match request.body(body).send().await {
            Ok(response) => response::judge(response, self.max_bytes).await,
            Err(e) => {
                // A route may carry its token in the path or query: the host only.
                let what = format!("POST {}", redact_url_path(url.as_str()));
                (Class::of_error(&e), Err(response::transport_failure(e, what)))
            }
        };
        tally.class = Some(class);
        tracing::debug!(class = class.label(), "HTTP step answered");
        result
    }

    /// The Supabase key for the Supabase origin; `STEP_HANDLER_TOKEN` everywhere else.
    fn authorization(&self, url: &Url) -> Option<&HeaderValue> {
        match &self.supabase {
            Some((origin, key)) if url.origin().ascii_serialization() == *origin => Some(key),
            _ => self.token.as_ref(),
        }
    }
}

/// `Bearer <token>`, marked sensitive so it never shows in a debug print of the request.
fn bearer(token: &Secret) -> anyhow::Result<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .context("a bearer token is not a valid header value")?;
    value.set_sensitive(true);
    Ok(value)
}

/// An id as a header value: as it is when it is visible ASCII without `%`, otherwise with the
/// other bytes (and `%`) percent-encoded, so distinct ids stay distinct keys.
fn header_value(id: &str) -> HeaderValue {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).expect("visible ASCII is a valid header value")
}

/// Counts the call once in `step_worker_http_step_responses_total`, even when it never returns.
/// The runner enforces the step timeout by dropping the attempt, so a call dropped without a
/// verdict timed out; unless the attempt was cancelled (shutdown, lost lease), which says nothing
/// about the endpoint.
struct Tally<'a> {
    counter: &'a IntCounterVec,
    step: &'a str,
    cancel: &'a CancellationToken,
    class: Option<Class>,
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        let class = match self.class {
            Some(class) => class,
            None if self.cancel.is_cancelled() => return,
            None => Class::Timeout,
        };
        self.counter.with_label_values(&[self.step, class.label()]).inc();
    }
}
