//! The numeric fields of the job contract and their ranges. Each range is checked at decode, so
//! nothing downstream (attempt counting, timers, the `timestamptz` columns) sees a value it cannot
//! hold: a job outside them is an `invalid_envelope` naming the field and the range.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

/// Largest `max_retries`: the bound of `MAX_RETRY_ATTEMPTS`, so `1 + max_retries` attempts and
/// the stored `attempts` (int4) can never overflow.
pub const MAX_RETRIES: u32 = 1_000;
/// Largest `timeout_ms`: one day, the bound of `STEP_TIMEOUT_MAX_MS` (which caps it at run time).
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// Earliest `enqueued_at`, 0000-01-01T00:00:00Z in epoch milliseconds. RFC 3339 writes years
/// 0000–9999 only, so both spellings share that range; it lies inside what Postgres
/// `timestamptz` (4713 BC – 294276 AD), chrono (±262143) and SQLite's text dates can hold.
pub const MIN_ENQUEUED_AT_MS: i64 = -62_167_219_200_000;
/// Latest `enqueued_at`, 9999-12-31T23:59:59.999Z in epoch milliseconds. `run_at` shares the
/// range: one timestamp format across the contract.
pub const MAX_ENQUEUED_AT_MS: i64 = 253_402_300_799_999;
/// Largest `delay_ms`: 365 days. It covers every "remind them in a month" workflow; a larger
/// value is almost always a unit slip (seconds or microseconds where milliseconds were meant),
/// better refused at once than found a decade later in the delayed set. A producer that means a
/// later date gives `run_at`.
pub const MAX_DELAY_MS: u64 = 365 * 86_400_000;

/// `max_retries`: an integer from 0 to [`MAX_RETRIES`]. `Err` is the message.
pub fn max_retries(v: &Value) -> Result<u32, String> {
    v.as_u64()
        .filter(|n| *n <= u64::from(MAX_RETRIES))
        .map(|n| n as u32)
        .ok_or_else(|| {
            format!(
                "field `max_retries` must be an integer from 0 to {MAX_RETRIES}, got {}",
                shown(v)
            )
        })
}

/// `timeout_ms`: an integer from 1 to [`MAX_TIMEOUT_MS`] milliseconds.
pub fn timeout_ms(v: &Value) -> Result<Duration, String> {
    v.as_u64()
        .filter(|n| (1..=MAX_TIMEOUT_MS).contains(n))
        .map(Duration::from_millis)
        .ok_or_else(|| {
            format!(
                "field `timeout_ms` must be an integer from 1 to {MAX_TIMEOUT_MS}, got {}",
                shown(v)
            )
        })
}

/// `delay_ms`: an integer from 0 to [`MAX_DELAY_MS`] milliseconds.
pub fn delay_ms(v: &Value) -> Result<Duration, String> {
    v.as_u64()
        .filter(|n| *n <= MAX_DELAY_MS)
        .map(Duration::from_millis)
        .ok_or_else(|| {
            format!(
                "field `delay_ms` must be an integer from 0 to {MAX_DELAY_MS} (365 days), got {}",
                shown(v)
            )
        })
}

/// `enqueued_at`: see [`timestamp`].
pub fn enqueued_at(v: &Value) -> Result<DateTime<Utc>, String> {
    timestamp("enqueued_at", v)
}

/// `run_at`: see [`timestamp`].
pub fn run_at(v: &Value) -> Result<DateTime<Utc>, String> {
    timestamp("run_at", v)
}

/// A timestamp field: epoch milliseconds (an integer, or with a fraction as `time.time() * 1000`
/// gives; kept to the microsecond Postgres stores) or an RFC 3339 string, from
/// 0000-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z. `Err` names `field`.
fn timestamp(field: &str, v: &Value) -> Result<DateTime<Utc>, String> {
    let t = match v {
        Value::Number(n) => match n.as_i64() {
            Some(ms) => Some(ms)
                .filter(|ms| (MIN_ENQUEUED_AT_MS..=MAX_ENQUEUED_AT_MS).contains(ms))
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            // A fraction, or an integer beyond i64: the range check comes before any cast.
            None => n
                .as_f64()
                .filter(|ms| (MIN_ENQUEUED_AT_MS as f64..=MAX_ENQUEUED_AT_MS as f64).contains(ms))
                .and_then(|ms| Utc.timestamp_micros((ms * 1000.0).round() as i64).single()),
        },
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
            // An offset can carry a 9999 local time past the end of 9999 in UTC.
            .filter(|t| (MIN_ENQUEUED_AT_MS..=MAX_ENQUEUED_AT_MS).contains(&t.timestamp_millis())),
        _ => None,
    };
    t.ok_or_else(|| {
        format!(
            "field `{field}` must be epoch milliseconds (a fraction is allowed) or an RFC 3339 \
             timestamp, from 0000-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z, got {}",
            shown(v)
        )
    })
}

/// The wrong value as the error shows it: numbers as given, short strings quoted, anything else
/// by kind (the value may be huge).
fn shown(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() <= 40 => format!("{s:?}"),
        other => super::describe(other),
    }
}
