//! Command-line interface. Every subcommand reads the same environment configuration as the
//! daemon; `run` is the default.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "step-worker",
    version,
    about = "Runs workflow steps from a Redis list and records every outcome in Postgres"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker daemon (the default).
    Run,
    /// Apply the embedded database migrations, or revert them all with --revert.
    Migrate {
        /// Revert every migration (drops step-worker's tables).
        #[arg(long)]
        revert: bool,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// GET the local /health endpoint; exit 0 on 200 (for a container HEALTHCHECK without curl).
    Healthcheck {
        /// Override the URL (default: http://127.0.0.1:$HEALTH_CHECK_PORT/health).
        #[arg(long)]
        url: Option<String>,
    },
    /// Queue depths, live workers with their last heartbeat, pause state.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Push jobs after validating them against the job contract.
    Enqueue {
        /// One job as JSON, or - to read it from standard input.
        job: Option<String>,
        /// A file of jobs, one JSON object per line (NDJSON).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Let the jobs enter the queue only after this long (e.g. 30s, 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// W3C trace context for jobs without a `traceparent` of their own: the jobs' spans join
        /// this trace (TRACEPARENT is the OpenTelemetry convention for a process's parent).
        #[arg(long, env = "TRACEPARENT")]
        traceparent: Option<String>,
        /// W3C tracestate to go with --traceparent.
        #[arg(long, env = "TRACESTATE")]
        tracestate: Option<String>,
    },
    /// Cancel jobs: waiting ones are removed, running ones stopped within one heartbeat; each
    /// ends with a `cancelled` result row.
    #[command(override_usage = "step-worker cancel <ID>...\n       step-worker cancel --run <RUN_ID>")]
    Cancel {
        /// Job ids.
        #[arg(value_name = "ID", required_unless_present = "run", conflicts_with = "run")]
        ids: Vec<String>,
        /// Every job of this workflow run (`run_id`) instead.
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
    },
    /// Inspect, replay and purge dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Delete stored outcomes permanently (what RESULT_RETENTION does on a schedule).
    Results {
        #[command(subcommand)]
        command: ResultsCommand,
    },
    /// Stop every worker from claiming (running steps finish), or only jobs of one step.
    Pause {
        #[arg(long)]
        step: Option<String>,
    },
    /// Undo `pause` (with --step: its held jobs go back to the queue).
    Resume {
        #[arg(long)]
        step: Option<String>,
    },
    /// Move every waiting job into the dead-letter table (reason "purged"); never deletes.
    PurgeReady {
        #[arg(long)]
        yes: bool,
    },
    /// Enqueue a builtin.noop job and wait for its succeeded row: the deployment check.
    Smoke {
        /// Give up after this long.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        timeout: Duration,
    },
    /// Generate load with a built-in step and report throughput and latency from the results.
    Load {
        /// How many jobs.
        #[arg(long, default_value_t = 1000)]
        jobs: u64,
        /// Jobs per second (default: all at once).
        #[arg(long)]
        rate: Option<f64>,
        /// With --rate: push for this long (e.g. 2m) instead of a number of jobs.
        #[arg(long, value_parser = humantime::parse_duration, requires = "rate", conflicts_with = "jobs")]
        duration: Option<Duration>,
        #[arg(long, default_value = "builtin.noop")]
        step: String,
        /// The jobs' input, as JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// Give up waiting for results after this long.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the environment and print the effective configuration, secrets redacted.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long, default_value_t = 0)]
        offset: i64,
        /// Include dead letters already replayed.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its payload.
    Show {
        id: uuid::Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Push dead letters back onto the queue with fresh attempts (each is replayed once).
    Replay {
        /// Dead-letter ids (as listed); without ids, the filters select.
        ids: Vec<uuid::Uuid>,
        #[command(flatten)]
        filter: DlqFilter,
        /// Show what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters permanently.
    Purge {
        #[command(flatten)]
        filter: DlqFilter,
        /// Only dead letters older than this (e.g. 30d).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ResultsCommand {
    /// Delete result rows finished longer ago than --older-than; without --status, also the
    /// failed-attempt rows (step_attempts) as old. Dead letters are `dlq purge`'s.
    Purge {
        /// Only rows finished longer ago than this (e.g. 30d, 12h).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
        /// Only result rows of this status.
        #[arg(long, value_parser = ["succeeded", "cancelled", "dead"])]
        status: Option<String>,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct DlqFilter {
    #[arg(long)]
    pub step: Option<String>,
    /// invalid_json, invalid_envelope, unknown_step, permanent_failure, retries_exhausted,
    /// interrupted, unstorable, purged.
    #[arg(long)]
    pub reason: Option<String>,
    /// Dead since: a duration ago (2h) or an RFC 3339 time.
    #[arg(long, value_parser = crate::admin::parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    #[arg(long)]
    pub run_id: Option<String>,
}
