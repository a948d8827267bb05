//! step-worker: a durable executor for workflow steps pushed as JSON onto a Redis list.
//!
//! The job's path, one module each: [`claimer`] (claim from Redis) → [`job`] (decode) →
//! [`runner`] (run the step under its timeout) → [`pipeline`] (persist to Postgres, then settle
//! in Redis). [`queue`] is the Redis protocol, [`store`] the Postgres schema, [`lease`] and
//! [`maintenance`] keep workers honest (heartbeat, fencing, reaping, retries). [`worker`] wires
//! it together and [`drain`] takes it apart at shutdown; [`http`] serves health and metrics,
//! and [`console`] the operators' web console on the same port.
//! [`http_step`] runs steps that have no native handler by calling their HTTP endpoint
//! (docs/http-steps.md). [`trace`] joins each attempt to its producer's trace and exports the
//! spans over OTLP when configured (docs/tracing.md).
//!
//! Embedding native steps:
//! ```no_run
//! use step_worker::{Config, Registry, Shutdown, StepError};
//! # async fn demo() -> anyhow::Result<()> {
//! let registry = Registry::new().register("email.send", |_ctx, input: serde_json::Value| async move {
//!     let to = input["to"].as_str().ok_or_else(|| StepError::permanent("input.to is required"))?;
//!     Ok(serde_json::json!({ "sent_to": to }))
//! });
//! step_worker::worker::run(Config::from_env()?, registry, Shutdown::new()).await
//! # }
//! ```

pub mod admin;
pub mod backoff;
pub mod builtin;
pub mod cancel;
pub mod capacity;
pub mod claimer;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod dedup;
pub mod drain;
pub mod failpoint;
pub mod handler;
pub mod health;
pub mod http;
pub mod http_conn;
pub mod http_jobs;
pub mod http_pace;
pub mod http_step;
pub mod inflight;
pub mod job;
pub mod lease;
pub mod maintenance;
pub mod merge;
pub mod metrics;
pub mod notify;
pub mod outcome;
pub mod pause;
pub mod pipeline;
pub mod queue;
pub mod redact;
pub mod redis_guard;
pub mod runner;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod trace;
pub mod worker;

pub use config::Config;
pub use handler::{Handler, Registry, Retry, StepContext, StepError, StepResult};
pub use shutdown::Shutdown;
