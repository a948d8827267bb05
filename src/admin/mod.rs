//! The operator's commands (`stats`, `enqueue`, `cancel`, `dlq`, `pause`/`resume`, `purge-ready`,
//! `smoke`, `load`). They read the same environment configuration as the daemon and talk to the same Redis
//! keys and Postgres tables through the same protocol, so nothing here can bypass the delivery
//! rules: jobs move only by the queue's scripts, and nothing is deleted from `step.ready` without
//! first being written to the dead-letter table.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 invalid configuration or arguments, 3 not
//! confirmed (a destructive command without `--yes` and without a terminal to ask on).

pub mod cancel;
pub mod control;
pub mod dlq;
pub mod enqueue;
pub mod load;
pub mod results;
pub mod stats;

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;

use crate::config::{Config, QueueDriver};
use crate::queue::RedisQueue;
use crate::store::Store;

/// Returned when an operator did not confirm a destructive command: exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("not confirmed: nothing was changed (pass --yes to skip the question)")]
pub struct NotConfirmed;

/// The configuration cannot serve this command (a variable names the wrong kind of server):
/// exit code 2, like every other configuration error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Misconfigured(pub &'static str);

/// Connections for one admin command.
pub struct Admin {
    pub config: Config,
    pub queue: RedisQueue,
    pub store: Store,
    /// The store's Postgres connections (the commands need Postgres: they run beside a deployed
    /// worker).
    pub pg: crate::store::Pg,
}

impl Admin {
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        // The memory queue lives inside the worker process: nothing outside it can reach it.
        if config.queue_driver == QueueDriver::Memory {
            return Err(Misconfigured(
                "QUEUE_DRIVER=memory: the queue lives inside the running worker, where these commands cannot reach it; set REDIS_URL (or QUEUE_DRIVER=redis) to manage a Redis queue, or use the worker's HTTP port: POST /jobs to enqueue, DELETE /jobs/{id} to cancel",
            )
            .into());
        }
        let ca = config.redis_ca_pem();
        let queue = RedisQueue::connect_with_ca(config.redis_url.expose(), &config.queue_key, ca)
            .await
            .with_context(|| format!("connecting to Redis at {}", config.redis_url))?
            .with_caps(&config.limits);
        let store = Store::connect_lazy_with(config.database_url.expose(), 2, config.database_statement_timeout)
            .context("DATABASE_URL")?;
        let pg = store.postgres().cloned().ok_or(Misconfigured(
            "DATABASE_URL: the admin commands need a PostgreSQL URL (postgres://...)",
        ))?;
        Ok(Admin {
            config,
            queue,
            store,
            pg,
        })
    }
}

/// Asks the operator to type `yes`, unless `yes` was given on the command line.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(NotConfirmed.into());
    }
    print!("{question} Type yes to continue: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(NotConfirmed.into())
    }
}

/// A progress bar on stderr for long operations (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Parses `--since`/`--older-than` style values: a duration ago (`30m`, `2h`, `7d`) or an RFC 3339
/// timestamp.
pub fn parse_time(value: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(value)
        .map_err(|_| format!("expected a duration such as 30m, 2h, 7d, or an RFC 3339 time; got {value:?}"))?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(ago).map_err(|e| e.to_string())?)
}
