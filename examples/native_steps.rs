//! Embedding step-worker with native Rust steps: `cargo run --example native_steps`.
//!
//! The application builds a [`Registry`] with its own handlers and runs the worker with it; the
//! worker claims jobs, runs them under their timeout, retries and dead-letters them, and records
//! every outcome in Postgres, exactly as for the built-in steps. Configuration comes from the
//! environment, as for the `step-worker` binary. A native handler always wins over HTTP routing
//! for its step name; other names go to `STEP_HANDLER_URL` / `SUPABASE_URL` / `STEP_ROUTES` when
//! they are set (docs/http-steps.md).
//!
//! On the embedded defaults (memory queue, `./step-worker.db`), enqueue through the worker's own
//! HTTP server and read the results back from it:
//! ```text
//! cargo run --example native_steps
//! curl -s -X POST localhost:3001/jobs -H 'Content-Type: application/json' \
//!   -d '[{"id":"demo-1","step":"greet","input":{"name":"Ada"}},
//!        {"id":"demo-2","step":"stock.reserve","input":{"sku":"A-1","qty":2}}]'
//! curl -s localhost:3001/jobs/demo-1
//! curl -s localhost:3001/jobs/demo-2
//! ```
//! With `REDIS_URL` and `DATABASE_URL` set (or `QUEUE_DRIVER=redis` and local servers), any
//! producer pushes instead (`redis-cli LPUSH step.ready '<job json>'`) and the rows are in
//! Postgres (`psql -c "SELECT job_id, status, attempts, output FROM step_results"`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use step_worker::{Config, Registry, Shutdown, StepContext, StepError, StepResult, telemetry};

/// Any `async fn(StepContext, Value) -> StepResult` is a handler. Bad input is a permanent
/// error: the job is dead-lettered at once, because retrying the same input cannot help.
async fn greet(_ctx: StepContext, input: Value) -> StepResult {
    let name = input["name"]
        .as_str()
        .ok_or_else(|| StepError::permanent("input.name must be a string"))?;
    Ok(json!({ "greeting": format!("Hello, {name}!") }))
}

#[derive(Deserialize)]
struct Reservation {
    sku: String,
    qty: u32,
}

/// A step that depends on something that can be busy. A retryable error goes back to the queue
/// with backoff; `with_retry_after` asks for a minimum delay when the step knows one. The
/// context tells which attempt this is, and its `cancel` token fires when the worker must stop
/// the attempt early (shutdown, lost lease), so long work can stop cleanly.
async fn reserve_stock(ctx: StepContext, input: Value) -> StepResult {
    let order: Reservation =
        serde_json::from_value(input).map_err(|e| StepError::permanent(format!("invalid reservation: {e}")))?;
    if ctx.attempt == 1 {
        // Stands in for a busy inventory service: the first attempt is asked to come back later.
        return Err(StepError::retryable("inventory is busy").with_retry_after(Duration::from_secs(1)));
    }
    tokio::select! {
        _ = ctx.cancel.cancelled() => Err(StepError::retryable("interrupted before the reservation was made")),
        _ = tokio::time::sleep(Duration::from_millis(50)) => Ok(json!({
            "sku": order.sku,
            "reserved": order.qty,
            "attempt": ctx.attempt,
            "correlation_id": ctx.correlation_id,
        })),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let telemetry = telemetry::init(&config);
    let registry = Registry::new()
        .register("greet", greet)
        .register("stock.reserve", reserve_stock);
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals()?;
    let result = step_worker::worker::run(config, registry, shutdown).await;
    // Queued spans (with OTEL_EXPORTER_OTLP_ENDPOINT set) are flushed, for a bounded time, off
    // the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown(true)).await;
    result
}
