//! The job contract: decoding a payload from `step.ready` into a [`Job`], or into the reason it
//! must be dead-lettered. This is a public interface (README, "The job contract"); unknown fields
//! are kept, not rejected, so producers can add their own.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

pub use due::Due;
pub use fields::{MAX_DELAY_MS, MAX_ENQUEUED_AT_MS, MAX_RETRIES, MAX_TIMEOUT_MS, MIN_ENQUEUED_AT_MS};

mod due;
mod fields;

/// Longest accepted job id: ids are primary keys and log fields, so they stay short.
pub const MAX_ID_LEN: usize = 200;
/// Longest accepted step name.
pub const MAX_STEP_LEN: usize = 200;

/// A decoded job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub step: String,
    pub input: Value,
    pub run_id: Option<String>,
    pub correlation_id: String,
    /// Within [`MIN_ENQUEUED_AT_MS`]..=[`MAX_ENQUEUED_AT_MS`], at microsecond precision.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// 0 to [`MAX_RETRIES`].
    pub max_retries: Option<u32>,
    /// 1 ms to [`MAX_TIMEOUT_MS`].
    pub timeout: Option<Duration>,
    /// Not before this moment (`run_at`), in the range of `enqueued_at`. Never set together with
    /// `delay`: decode refuses a job that gives both.
    pub run_at: Option<DateTime<Utc>>,
    /// Not before this long after `enqueued_at` (`delay_ms`), 0 to [`MAX_DELAY_MS`].
    pub delay: Option<Duration>,
    /// The producer's trace context (`traceparent`, `tracestate`), the attempt's parent span.
    pub trace: Option<crate::trace::Remote>,
    /// Why the job's `traceparent` or `tracestate` was ignored: a malformed trace context is
    /// logged and left out, never a reason to dead-letter a job whose work it does not touch.
    pub trace_ignored: Option<String>,
    /// Fields the contract does not define, kept as the producer sent them.
    pub extra: Map<String, Value>,
}

/// Why a payload cannot be run at all. The variants are the `reason` codes stored with dead
/// letters; the message says exactly what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidEnvelope(String),
}

impl DecodeError {
    /// The short reason code stored in `step_dead_letters.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::InvalidEnvelope(_) => "invalid_envelope",
        }
    }
}

/// What could be salvaged from a payload that failed to decode: enough to file the dead letter
/// under the job's id when there is a usable one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Salvage {
    pub id: Option<String>,
    pub step: Option<String>,
    pub run_id: Option<String>,
}

/// Decodes a raw payload. On error, returns what could be salvaged with the reason.
pub fn decode(payload: &[u8]) -> Result<Job, (DecodeError, Salvage)> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| (DecodeError::InvalidJson(e.to_string()), Salvage::default()))?;
    let Value::Object(mut map) = value else {
        return Err((
            DecodeError::InvalidEnvelope(format!("payload must be a JSON object, got {}", kind(&value))),
            Salvage::default(),
        ));
    };
    let salvage = Salvage {
        id: map
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| valid_id(s))
            .map(str::to_owned),
        step: map
            .get("step")
            .and_then(Value::as_str)
            .map(|s| truncate(s, MAX_STEP_LEN)),
        run_id: map
            .get("run_id")
            .and_then(Value::as_str)
            .map(|s| truncate(s, MAX_ID_LEN)),
    };
    let envelope = |msg: String| (DecodeError::InvalidEnvelope(msg), salvage.clone());
    let id = required_string(&mut map, "id", MAX_ID_LEN).map_err(envelope)?;
    if id.contains('\0') {
        // Postgres text cannot hold NUL: the result row would be filed under another id.
        return Err(envelope(
            "field `id` must not contain NUL (\\u0000) characters".to_owned(),
        ));
    }
    let step = required_string(&mut map, "step", MAX_STEP_LEN).map_err(envelope)?;
    let input = map.remove("input").unwrap_or(Value::Null);
    let run_id = optional_string(&mut map, "run_id", MAX_ID_LEN).map_err(envelope)?;
    let correlation_id = optional_string(&mut map, "correlation_id", MAX_ID_LEN)
        .map_err(envelope)?
        .or_else(|| run_id.clone())
        .unwrap_or_else(|| id.clone());
    let enqueued_at = optional(&mut map, "enqueued_at", fields::enqueued_at).map_err(envelope)?;
    let max_retries = optional(&mut map, "max_retries", fields::max_retries).map_err(envelope)?;
    let timeout = optional(&mut map, "timeout_ms", fields::timeout_ms).map_err(envelope)?;
    let run_at = optional(&mut map, "run_at", fields::run_at).map_err(envelope)?;
    let delay = optional(&mut map, "delay_ms", fields::delay_ms).map_err(envelope)?;
    if run_at.is_some() && delay.is_some() {
        // Which one wins (the later? the first given?) is a guess either way; a producer that
        // sends both has a bug it should hear about, not a job that runs at a surprising time.
        return Err(envelope(
            "fields `run_at` and `delay_ms` are exclusive: give one of them".to_owned(),
        ));
    }
    let trace =
        crate::trace::context::from_fields(map.remove("traceparent").as_ref(), map.remove("tracestate").as_ref());
    Ok(Job {
        id,
        step,
        input,
        run_id,
        correlation_id,
        enqueued_at,
        max_retries,
        timeout,
        run_at,
        delay,
        trace: trace.remote,
        trace_ignored: trace.ignored,
        extra: map,
    })
}

/// Whether `s` can be a job's id: 1 to [`MAX_ID_LEN`] characters without NUL. Anything else
/// cannot have a result row, so lookups by such an id need not ask the store.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= MAX_ID_LEN && !s.contains('\0')
}

/// The job id of a payload, read without decoding the rest (the duplicate check asks the store
/// about a whole claim batch before any of its jobs is decoded). `None` when the payload has no
/// usable id: [`decode`] then dead-letters it, and there is nothing to check.
pub fn peek_id(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: Option<std::borrow::Cow<'a, str>>,
    }
    let id = serde_json::from_slice::<Id>(payload).ok()?.id?;
    valid_id(&id).then(|| id.into_owned())
}

fn required_string(map: &mut Map<String, Value>, field: &str, max: usize) -> Result<String, String> {
    match map.remove(field) {
        None | Some(Value::Null) => Err(format!("missing required field `{field}`")),
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max => Ok(s),
        Some(v) => Err(format!(
            "field `{field}` must be a string of 1 to {max} characters, got {}",
            describe(&v)
        )),
    }
}

/// `field` parsed by `parse`, or `None` when it is absent or `null`.
fn optional<T>(
    map: &mut Map<String, Value>,
    field: &str,
    parse: fn(&Value) -> Result<T, String>,
) -> Result<Option<T>, String> {
    map.remove(field)
        .filter(|v| !v.is_null())
        .map(|v| parse(&v))
        .transpose()
}

fn optional_string(map: &mut Map<String, Value>, field: &str, max: usize) -> Result<Option<String>, String> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max => Ok(Some(s)),
        Some(v) => Err(format!(
            "field `{field}` must be a string of 1 to {max} characters, got {}",
            describe(&v)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short description of a wrong value: its kind, and its length for strings (the value itself
/// may be huge or sensitive).
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("a string of {} characters", s.chars().count()),
        other => kind(other).to_owned(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests;
