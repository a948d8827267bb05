//! When a job may start: its due time from `run_at` or `delay_ms`, judged at the moment it was
//! claimed. A job claimed before it is due is not an attempt: the runner sends it to the delayed
//! set (where retries wait) and the promoter hands it back to ready once it is due.
//!
//! The rules (README, "The job contract"):
//! - `run_at` is the due time as given.
//! - `delay_ms` counts from `enqueued_at`. A producer that `LPUSH`es without `enqueued_at` leaves
//!   no push time a worker can read, so the first claim stands in for it: the payload sent to the
//!   delayed set is stamped with `enqueued_at` set to that claim. Without the stamp every later
//!   claim would start the delay again and the job would never run.
//! - Due times are read on the worker's clock; the wait in the delayed set is measured on Redis's,
//!   as a retry's backoff is.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Job;

/// What a claim of a job should do about its due time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Run it now.
    Now,
    /// Not yet: schedule `payload` (the claimed bytes, or a stamped copy, see the module) to
    /// re-enter the queue `after` from now, whole milliseconds rounded up so it is never early.
    Later { after: Duration, payload: Option<Vec<u8>> },
}

impl Job {
    /// When the job becomes due, if it gives `run_at`, or `delay_ms` and `enqueued_at`.
    pub fn due_at(&self) -> Option<DateTime<Utc>> {
        match (self.run_at, self.delay, self.enqueued_at) {
            (Some(at), _, _) => Some(at),
            (None, Some(delay), Some(enqueued)) => Some(enqueued + delay),
            _ => None,
        }
    }

    /// Since when the job has been waiting to run: the later of its enqueue and its due time.
    /// A job due before it was pushed waited only from its push.
    pub fn waiting_since(&self) -> Option<DateTime<Utc>> {
        match (self.enqueued_at, self.due_at()) {
            (Some(e), Some(d)) => Some(e.max(d)),
            (e, d) => e.or(d),
        }
    }

    /// Whether a claim of `payload` (this job's bytes) at `now` may run it.
    pub fn due(&self, payload: &[u8], now: DateTime<Utc>) -> Due {
        if let (None, Some(delay), None) = (self.run_at, self.delay, self.enqueued_at) {
            if delay.is_zero() {
                return Due::Now;
            }
            // Stamped to the millisecond, the unit the next claim reads it back in.
            let ms = now.timestamp_millis();
            return match stamped(payload, ms) {
                Some(payload) => Due::Later {
                    after: ceil_ms(delay.as_micros() as i64 - sub_ms_micros(now)),
                    payload: Some(payload),
                },
                // Unreachable for a payload `decode` accepted; running at once beats looping.
                None => Due::Now,
            };
        }
        match self.due_at() {
            Some(due) if due > now => Due::Later {
                after: ceil_ms((due - now).num_microseconds().unwrap_or(i64::MAX)),
                payload: None,
            },
            _ => Due::Now,
        }
    }
}

/// The microseconds `now` lies past its whole millisecond: the stamp drops them, so the delay
/// left is that much shorter.
fn sub_ms_micros(now: DateTime<Utc>) -> i64 {
    i64::from(now.timestamp_subsec_micros() % 1000)
}

fn ceil_ms(micros: i64) -> Duration {
    Duration::from_millis((micros.max(0) as u64).div_ceil(1000))
}

/// `payload` with `"enqueued_at": ms`. The producer's bytes are kept as they are, the field
/// inserted after the opening brace; only an explicit `"enqueued_at": null` (which would then
/// appear twice) makes it re-serialise the object.
fn stamped(payload: &[u8], ms: i64) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(payload) else {
        return None;
    };
    if map.contains_key("enqueued_at") {
        map.insert("enqueued_at".into(), ms.into());
        return serde_json::to_vec(&map).ok();
    }
    // The object holds `id` and `step` at least, so a comma always follows the new field.
    let open = payload.iter().position(|b| *b == b'{')?;
    let mut out = Vec::with_capacity(payload.len() + 32);
    out.extend_from_slice(&payload[..=open]);
    out.extend_from_slice(format!("\"enqueued_at\":{ms},").as_bytes());
    out.extend_from_slice(&payload[open + 1..]);
    Some(out)
}

#[cfg(test)]
mod tests;
