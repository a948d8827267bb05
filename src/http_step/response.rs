//! What an endpoint's answer means for the attempt: the status decides success, retry or dead
//! letter; `Retry-After` moves the next attempt; the body becomes the output. Bodies are read
//! chunk by chunk against a limit, never buffered whole first, because an endpoint (or a proxy
//! in front of it) can answer with anything.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::handler::{StepError, StepResult};

/// How much of an error body goes into the stored error: enough for a validation message,
/// small enough for a log line and a dead-letter row.
pub const EXCERPT_BYTES: usize = 512;

/// The `class` label of `step_worker_http_step_responses_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Status(u16),
    Timeout,
    ConnectError,
    /// The connection broke after it was made (reset, malformed response).
    TransportError,
    TooLarge,
}

impl Class {
    pub fn label(self) -> &'static str {
        match self {
            Class::Status(s) => match s / 100 {
                1 => "1xx",
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                5 => "5xx",
                _ => "other",
            },
            Class::Timeout => "timeout",
            Class::ConnectError => "connect_error",
            Class::TransportError => "transport_error",
            Class::TooLarge => "too_large",
        }
    }

    pub fn of_error(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            Class::Timeout
        } else if e.is_connect() {
            Class::ConnectError
        } else {
            Class::TransportError
        }
    }
}

/// A failed exchange: retryable (the next attempt may reach a healthy endpoint), with the
/// reqwest error kept as the cause. The URL is left out of the cause: the caller names it redacted.
pub fn transport_failure(e: reqwest::Error, what: String) -> StepError {
    StepError::from(anyhow::Error::new(e.without_url()).context(what))
}

/// Turns a response into the attempt's result and its metric class.
pub async fn judge(mut response: Response, max_bytes: usize) -> (Class, StepResult) {
    let status = response.status();
    let class = Class::Status(status.as_u16());
    if status.is_success() {
        return match read_bounded(&mut response, max_bytes).await {
            Ok(Some(body)) => (class, Ok(output(&body))),
            Ok(None) => (
                Class::TooLarge,
                // Permanent: a retry calls the endpoint again with the same Idempotency-Key, and it
                // would answer the same oversized body.
                Err(StepError::permanent(format!(
                    "the endpoint answered {status} with a body over STEP_RESPONSE_MAX_BYTES ({max_bytes} bytes)"
                ))),
            ),
            Err(e) => (
                Class::of_error(&e),
                Err(transport_failure(e, format!("reading the {status} body"))),
            ),
        };
    }
    let retry_after = retry_after(response.headers(), SystemTime::now());
    let location = location_of(response.headers());
    let excerpt = excerpt(&mut response).await;
    let message = match (status.is_redirection(), location) {
        (true, Some(to)) => {
            format!("HTTP {status} redirect to {to}: configure the final URL, redirects are not followed")
        }
        _ if excerpt.is_empty() => format!("HTTP {status}"),
        _ => format!("HTTP {status}: {excerpt}"),
    };
    let error = if is_retryable(status) {
        match retry_after {
            // The service says when any caller may come back, not only this job.
            Some(after) if matches!(status.as_u16(), 429 | 503) => StepError::throttled(message, after),
            Some(after) => StepError::retryable(message).with_retry_after(after),
            None => StepError::retryable(message),
        }
    } else {
        StepError::permanent(message)
    };
    (class, Err(error))
}

/// 408 (request timeout), 425 (too early), 429 (too many requests) and every 5xx say "not now";
/// every other non-2xx says the request itself is wrong, which retrying cannot fix.
pub fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429)
}

/// A 2xx body as the step's output: JSON as is, anything else as a JSON string, empty as null.
pub fn output(body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// `Retry-After` as delay-seconds or an HTTP date; a date in the past means "now".
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The body, or `None` as soon as it is known to exceed `max` bytes.
async fn read_bounded(response: &mut Response, max: usize) -> reqwest::Result<Option<Vec<u8>>> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The start of an error body, cut at a character boundary. A body that fails to arrive only
/// loses its excerpt: the status already decided the outcome.
async fn excerpt(response: &mut Response) -> String {
    let mut body = Vec::new();
    while body.len() <= EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    cut(&String::from_utf8_lossy(&body), EXCERPT_BYTES)
}

/// A redirect's target, shortened: it goes into the error, not into a request.
fn location_of(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(LOCATION)?;
    Some(cut(&String::from_utf8_lossy(value.as_bytes()), 200))
}

/// `text` trimmed to at most `max` bytes, marked with `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
