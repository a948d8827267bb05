//! Built-in diagnostic steps, always available: smoke tests, load tests and our own tests use them.
//! - `builtin.noop`: output = input.
//! - `builtin.sleep` `{"ms": n}`: waits n ms (asynchronously), outputs `{"slept_ms": n}`.
//! - `builtin.fail` `{"message", "permanent", "times"}`: fails the first `times` attempts (always,
//!   when `times` is absent), then succeeds; `permanent: true` makes the failure permanent.
//! - `builtin.panic`: panics, to prove that a panicking step is a failed attempt, not a dead worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::handler::{Handler, StepContext, StepError, StepResult};

pub const PREFIX: &str = "builtin.";

pub(crate) fn register(map: &mut HashMap<String, Arc<dyn Handler>>) {
    map.insert("builtin.noop".into(), Arc::new(noop));
    map.insert("builtin.sleep".into(), Arc::new(sleep));
    map.insert("builtin.fail".into(), Arc::new(fail));
    map.insert("builtin.panic".into(), Arc::new(panic));
}

async fn noop(_: StepContext, input: Value) -> StepResult {
    Ok(input)
}

async fn sleep(_: StepContext, input: Value) -> StepResult {
    let ms = input
        .get("ms")
        .and_then(Value::as_u64)
        .ok_or_else(|| StepError::permanent("builtin.sleep needs input {\"ms\": <non-negative integer>}"))?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json!({ "slept_ms": ms }))
}

async fn fail(ctx: StepContext, input: Value) -> StepResult {
    let times = input.get("times").and_then(Value::as_u64);
    if times.is_some_and(|n| u64::from(ctx.attempt) > n) {
        return Ok(json!({ "succeeded_on_attempt": ctx.attempt }));
    }
    let message = input
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("builtin.fail failed as asked");
    if input.get("permanent").and_then(Value::as_bool).unwrap_or(false) {
        Err(StepError::permanent(message))
    } else {
        Err(StepError::retryable(message))
    }
}

async fn panic(_: StepContext, input: Value) -> StepResult {
    let message = input
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("builtin.panic panicked as asked");
    panic!("{message}");
}
