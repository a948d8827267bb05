//! Configuration: one flat, typed struct read once from the environment at startup.
//!
//! Rules: every variable has a documented default (or is required in production); a bad value
//! stops the process with one line naming the variable and the form it expects; secrets are
//! wrapped in [`Secret`] so they never reach a log line. envy maps the environment onto a flat
//! struct of raw strings; parsing happens here so each error can name its variable precisely.

mod http_steps;
mod limits;
mod notify;
mod otel;
mod parse;
mod retention;
mod secret;

use std::time::Duration;

use serde::Deserialize;

pub use http_steps::HttpSteps;
pub use limits::{Limits, Rate};
pub use notify::Notify;
pub use otel::{Otel, OtlpProtocol, Sampler};
pub use parse::{ConfigError, MIN_TOKEN_LEN};
use parse::{Var, parse_bool, parse_int, parse_one_of, parse_token};
pub use retention::Retention;
pub use secret::{Secret, redact_url, redact_url_path};

/// The raw environment, as envy sees it: every variable optional, every value a string.
/// Keep it flat: `#[serde(flatten)]` breaks non-string fields in envy.
#[derive(Debug, Default, Deserialize)]
struct RawEnv {
    app_env: Option<String>,
    node_env: Option<String>,
    queue_driver: Option<String>,
    memory_queue_max_jobs: Option<String>,
    redis_url: Option<String>,
    database_url: Option<String>,
    worker_concurrency: Option<String>,
    step_timeout_ms: Option<String>,
    step_timeout_max_ms: Option<String>,
    max_retry_attempts: Option<String>,
    retry_backoff_ms: Option<String>,
    retry_backoff_max_ms: Option<String>,
    shutdown_timeout_ms: Option<String>,
    database_pool_size: Option<String>,
    database_migrate: Option<String>,
    database_statement_timeout_ms: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    health_check_enabled: Option<String>,
    health_check_port: Option<String>,
    health_check_host: Option<String>,
    port: Option<String>,
    queue_key: Option<String>,
    redis_allow_eviction: Option<String>,
    redis_ca_file: Option<String>,
    admin_token: Option<String>,
    metrics_token: Option<String>,
    sentry_dsn: Option<String>,
    slack_webhook: Option<String>,
    slack_dead_letter_window_ms: Option<String>,
    slack_outage_threshold_ms: Option<String>,
    pii_redact_keys: Option<String>,
    heartbeat_interval_ms: Option<String>,
    worker_deadline_ms: Option<String>,
    result_retention: Option<String>,
    retention_check_ms: Option<String>,
    max_recoveries: Option<String>,
    claim_block_ms: Option<String>,
    claim_batch_size: Option<String>,
    persist_batch_size: Option<String>,
    commit_backlog: Option<String>,
    duplicate_check: Option<String>,
    step_handler_url: Option<String>,
    step_handler_token: Option<String>,
    step_routes: Option<String>,
    supabase_url: Option<String>,
    supabase_service_role_key: Option<String>,
    step_signing_secret: Option<String>,
    step_response_max_bytes: Option<String>,
    metrics_steps: Option<String>,
    otel_exporter_otlp_endpoint: Option<String>,
    otel_exporter_otlp_protocol: Option<String>,
    otel_exporter_otlp_headers: Option<String>,
    otel_service_name: Option<String>,
    otel_traces_sampler: Option<String>,
    otel_traces_sampler_arg: Option<String>,
    step_concurrency: Option<String>,
    step_rate_limits: Option<String>,
}

/// Where the process runs; production turns on JSON logs and refuses local defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Test,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// `QUEUE_DRIVER`: where the queue lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueDriver {
    /// Redis: shared by every replica, survives restarts (with AOF). Production uses this.
    Redis,
    /// This process's memory: a first run or local development; lost on exit.
    Memory,
}

/// The effective configuration. Durations are already converted; secrets are wrapped.
#[derive(Debug, Clone)]
pub struct Config {
    pub app_env: AppEnv,
    pub queue_driver: QueueDriver,
    /// `MEMORY_QUEUE_MAX_JOBS`: most jobs the memory queue holds (ready, delayed, in flight).
    pub memory_queue_max_jobs: usize,
    pub redis_url: Secret,
    pub database_url: Secret,
    pub concurrency: usize,
    pub step_timeout: Duration,
    pub step_timeout_max: Duration,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub shutdown_timeout: Duration,
    pub database_pool_size: u32,
    pub database_migrate: bool,
    /// `DATABASE_STATEMENT_TIMEOUT_MS`: the server-side bound on each Postgres statement.
    pub database_statement_timeout: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub health_check_enabled: bool,
    pub health_check_port: u16,
    /// `HEALTH_CHECK_HOST`: the address the HTTP server listens on; `None` is every interface.
    /// Unset, it is loopback outside production without `ADMIN_TOKEN`, since `POST /jobs` and
    /// the console's actions are then open to anyone who can reach it.
    pub health_check_host: Option<std::net::IpAddr>,
    pub queue_key: String,
    /// Start in production even when Redis may evict keys (an explicit, documented risk).
    pub redis_allow_eviction: bool,
    /// `REDIS_CA_FILE`: the path and PEM contents of the CA that signed a private Redis's TLS
    /// certificate (public CAs, as Upstash uses, need nothing).
    pub redis_ca: Option<(String, Vec<u8>)>,
    /// `ADMIN_TOKEN`: bearer token for `/jobs` and the console's `/api/` (without it they are
    /// open outside production and disabled in production).
    pub admin_token: Option<Secret>,
    /// `METRICS_TOKEN`: bearer token `/metrics` requires when set (open without it).
    pub metrics_token: Option<Secret>,
    pub heartbeat_interval: Duration,
    pub worker_deadline: Duration,
    pub max_recoveries: u32,
    pub claim_block: Duration,
    pub claim_batch_size: usize,
    pub persist_batch_size: usize,
    /// `COMMIT_BACKLOG`: the most finished jobs one worker holds awaiting their Postgres commit and
    /// Redis settle, beyond the `concurrency` running ones, 0 to 10000. A worker therefore holds at
    /// most `concurrency + commit_backlog` jobs, and that many re-run after it is killed. Unset,
    /// it is `persist_batch_size`: one full batch can wait for its commit while steps keep
    /// running. 0 makes a finished job keep its run slot until it is settled.
    pub commit_backlog: usize,
    /// `DUPLICATE_CHECK` (default on): a claimed job whose id already has a terminal result is
    /// settled without running, and two copies of one id never run at once ([`crate::dedup`],
    /// README guarantee 8). Off trusts producers' ids to be unique and saves the check's cost
    /// (about half the peak rate of no-op steps, see docs/benchmark.md).
    pub duplicate_check: bool,
    /// Dispatch of steps without a native handler to HTTP endpoints (off unless routed).
    pub http_steps: HttpSteps,
    /// `RESULT_RETENTION` and `RETENTION_CHECK_MS`.
    pub retention: Retention,
    /// `STEP_CONCURRENCY`, `STEP_RATE_LIMITS`: per-step caps and rates across every replica.
    pub limits: Limits,
    pub notify: Notify,
    /// Trace export over OTLP (off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set).
    pub otel: Otel,
}

/// Local services on their standard ports: what `cargo run` and the test suite use.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";
/// The results store of a first run: a SQLite file in the working directory, created on start.
pub const DEFAULT_SQLITE_URL: &str = "sqlite://step-worker.db";

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads configuration from `(NAME, value)` pairs; tests build configs this way instead of
    /// mutating the process environment.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        // Empty values count as unset, as platforms often render an unset variable as "".
        let pairs = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(_, v)| !v.trim().is_empty());
        let raw: RawEnv = envy::from_iter(pairs)
            .map_err(|e| ConfigError::new("environment", "readable variables", &e.to_string()))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawEnv) -> Result<Self, ConfigError> {
        let app_env = match (&raw.app_env, &raw.node_env) {
            (Some(v), _) => parse_app_env(Var::new("APP_ENV", v))?,
            (None, Some(v)) => parse_app_env(Var::new("NODE_ENV", v))?,
            (None, None) => AppEnv::Development,
        };
        let production = app_env == AppEnv::Production;
        // Before the fields below are moved out of `raw`.
        let http_steps = http_steps::parse(&raw)?;
        let notify = notify::parse(&raw)?;
        let retention = retention::parse(&raw)?;
        let otel = otel::parse(&raw)?;
        let limits = limits::parse(raw.step_concurrency.as_deref(), raw.step_rate_limits.as_deref())?;
        let queue_driver = parse_queue_driver(raw.queue_driver.as_deref(), raw.redis_url.is_some(), production)?;
        let redis_url = url_var(
            "REDIS_URL",
            raw.redis_url,
            DEFAULT_REDIS_URL,
            production && queue_driver == QueueDriver::Redis,
            &["redis://", "rediss://"],
        )?;
        check_redis_seeds(&redis_url)?;
        // The embedded defaults go together: the memory queue records results in a local SQLite
        // file, so a first run needs no server at all.
        let default_database = match queue_driver {
            QueueDriver::Memory => DEFAULT_SQLITE_URL,
            QueueDriver::Redis => DEFAULT_DATABASE_URL,
        };
        let database_url = url_var(
            "DATABASE_URL",
            raw.database_url,
            default_database,
            production,
            &["postgres://", "postgresql://", "sqlite:"],
        )?;
        if production && database_url.expose().starts_with("sqlite:") {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "a PostgreSQL URL (postgres:// or postgresql://) when APP_ENV=production: SQLite is one local file, for a first run only",
                &redact_url(database_url.expose()),
            ));
        }
        let ms = |name: &'static str, raw: &Option<String>, default: u64, min: u64, max: u64| {
            parse_int(name, raw.as_deref(), default, min, max).map(Duration::from_millis)
        };
        let step_timeout = ms("STEP_TIMEOUT_MS", &raw.step_timeout_ms, 30_000, 1, 86_400_000)?;
        let step_timeout_max = ms("STEP_TIMEOUT_MAX_MS", &raw.step_timeout_max_ms, 900_000, 1, 86_400_000)?;
        let retry_backoff = ms("RETRY_BACKOFF_MS", &raw.retry_backoff_ms, 1_000, 0, 86_400_000)?;
        let retry_backoff_max = ms(
            "RETRY_BACKOFF_MAX_MS",
            &raw.retry_backoff_max_ms,
            600_000,
            0,
            86_400_000,
        )?;
        let heartbeat_interval = ms("HEARTBEAT_INTERVAL_MS", &raw.heartbeat_interval_ms, 5_000, 100, 60_000)?;
        let worker_deadline = ms("WORKER_DEADLINE_MS", &raw.worker_deadline_ms, 30_000, 1_000, 600_000)?;
        if worker_deadline < heartbeat_interval * 3 {
            return Err(ConfigError::new(
                "WORKER_DEADLINE_MS",
                "at least 3 × HEARTBEAT_INTERVAL_MS, so a live worker survives two missed beats",
                &worker_deadline.as_millis().to_string(),
            ));
        }
        let log_format = match &raw.log_format {
            Some(v) => match parse_one_of(Var::new("LOG_FORMAT", v), &["json", "pretty", "text"])? {
                "json" => LogFormat::Json,
                _ => LogFormat::Pretty,
            },
            None if production => LogFormat::Json,
            None => LogFormat::Pretty,
        };
        let health_check_port = match (&raw.health_check_port, &raw.port) {
            (Some(v), _) => parse_int("HEALTH_CHECK_PORT", Some(v), 3001, 0, 65_535)? as u16,
            (None, Some(v)) => parse_int("PORT", Some(v), 3001, 0, 65_535)? as u16,
            (None, None) => 3001,
        };
        let health_check_host = match &raw.health_check_host {
            Some(v) => match v.trim().parse::<std::net::IpAddr>() {
                Ok(ip) if ip.is_unspecified() => None,
                Ok(ip) => Some(ip),
                Err(_) => {
                    return Err(ConfigError::new(
                        "HEALTH_CHECK_HOST",
                        "an IP address: 127.0.0.1 (this machine only) or 0.0.0.0 / :: (every interface)",
                        v,
                    ));
                }
            },
            None if production || raw.admin_token.is_some() => None,
            None => Some(std::net::Ipv4Addr::LOCALHOST.into()),
        };
        let queue_key = raw.queue_key.unwrap_or_else(|| "step.ready".to_owned());
        if queue_key.contains(['{', '}']) || queue_key.len() > 200 {
            return Err(ConfigError::new(
                "QUEUE_KEY",
                "a Redis key of at most 200 characters without `{` or `}`",
                &queue_key,
            ));
        }
        let persist_batch_size =
            parse_int("PERSIST_BATCH_SIZE", raw.persist_batch_size.as_deref(), 500, 1, 10_000)? as usize;
        Ok(Config {
            app_env,
            queue_driver,
            memory_queue_max_jobs: parse_int(
                "MEMORY_QUEUE_MAX_JOBS",
                raw.memory_queue_max_jobs.as_deref(),
                crate::queue::MEMORY_DEFAULT_MAX_JOBS as u64,
                1,
                10_000_000,
            )? as usize,
            redis_url,
            database_url,
            concurrency: parse_int("WORKER_CONCURRENCY", raw.worker_concurrency.as_deref(), 10, 1, 10_000)? as usize,
            step_timeout,
            step_timeout_max,
            max_retries: parse_int("MAX_RETRY_ATTEMPTS", raw.max_retry_attempts.as_deref(), 3, 0, 1_000)? as u32,
            retry_backoff,
            retry_backoff_max,
            shutdown_timeout: ms("SHUTDOWN_TIMEOUT_MS", &raw.shutdown_timeout_ms, 25_000, 0, 3_600_000)?,
            database_pool_size: parse_int("DATABASE_POOL_SIZE", raw.database_pool_size.as_deref(), 5, 1, 1_000)? as u32,
            database_migrate: parse_bool("DATABASE_MIGRATE", raw.database_migrate.as_deref(), true)?,
            database_statement_timeout: ms(
                "DATABASE_STATEMENT_TIMEOUT_MS",
                &raw.database_statement_timeout_ms,
                crate::store::DEFAULT_STATEMENT_TIMEOUT.as_millis() as u64,
                100,
                3_600_000,
            )?,
            log_level: parse_log_level(raw.log_level)?,
            log_format,
            health_check_enabled: parse_bool("HEALTH_CHECK_ENABLED", raw.health_check_enabled.as_deref(), true)?,
            health_check_port,
            health_check_host,
            queue_key,
            redis_ca: match raw.redis_ca_file {
                Some(path) => match std::fs::read(&path) {
                    Ok(pem) if pem.starts_with(b"-----BEGIN") => Some((path, pem)),
                    _ => {
                        return Err(ConfigError::new(
                            "REDIS_CA_FILE",
                            "the path of a readable PEM certificate file",
                            &path,
                        ));
                    }
                },
                None => None,
            },
            admin_token: parse_token("ADMIN_TOKEN", raw.admin_token)?,
            metrics_token: parse_token("METRICS_TOKEN", raw.metrics_token)?,
            redis_allow_eviction: parse_bool("REDIS_ALLOW_EVICTION", raw.redis_allow_eviction.as_deref(), false)?,
            heartbeat_interval,
            worker_deadline,
            max_recoveries: parse_int("MAX_RECOVERIES", raw.max_recoveries.as_deref(), 3, 0, 1_000)? as u32,
            claim_block: ms("CLAIM_BLOCK_MS", &raw.claim_block_ms, 30_000, 100, 300_000)?,
            claim_batch_size: parse_int("CLAIM_BATCH_SIZE", raw.claim_batch_size.as_deref(), 64, 1, 1_000)? as usize,
            persist_batch_size,
            commit_backlog: parse_int(
                "COMMIT_BACKLOG",
                raw.commit_backlog.as_deref(),
                persist_batch_size as u64,
                0,
                10_000,
            )? as usize,
            duplicate_check: parse_bool("DUPLICATE_CHECK", raw.duplicate_check.as_deref(), true)?,
            http_steps,
            retention,
            limits,
            notify,
            otel,
        })
    }

    /// The PEM of `REDIS_CA_FILE`, when set.
    pub fn redis_ca_pem(&self) -> Option<&[u8]> {
        self.redis_ca.as_ref().map(|(_, pem)| pem.as_slice())
    }

    /// The effective configuration as `NAME=value` lines, secrets redacted: what
    /// `step-worker config check` prints.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let ms = |d: Duration| d.as_millis().to_string();
        let mut lines = vec![
            ("APP_ENV", format!("{:?}", self.app_env).to_lowercase()),
            ("QUEUE_DRIVER", format!("{:?}", self.queue_driver).to_lowercase()),
            ("MEMORY_QUEUE_MAX_JOBS", self.memory_queue_max_jobs.to_string()),
            ("REDIS_URL", self.redis_url.redacted()),
            ("DATABASE_URL", self.database_url.redacted()),
            ("QUEUE_KEY", self.queue_key.clone()),
            ("REDIS_ALLOW_EVICTION", self.redis_allow_eviction.to_string()),
            (
                "ADMIN_TOKEN",
                self.admin_token.as_ref().map(Secret::redacted).unwrap_or_default(),
            ),
            (
                "METRICS_TOKEN",
                self.metrics_token.as_ref().map(Secret::redacted).unwrap_or_default(),
            ),
            (
                "REDIS_CA_FILE",
                self.redis_ca.as_ref().map(|(p, _)| p.clone()).unwrap_or_default(),
            ),
            ("WORKER_CONCURRENCY", self.concurrency.to_string()),
            ("STEP_TIMEOUT_MS", ms(self.step_timeout)),
            ("STEP_TIMEOUT_MAX_MS", ms(self.step_timeout_max)),
            ("MAX_RETRY_ATTEMPTS", self.max_retries.to_string()),
            ("RETRY_BACKOFF_MS", ms(self.retry_backoff)),
            ("RETRY_BACKOFF_MAX_MS", ms(self.retry_backoff_max)),
            ("SHUTDOWN_TIMEOUT_MS", ms(self.shutdown_timeout)),
            ("DATABASE_POOL_SIZE", self.database_pool_size.to_string()),
            ("DATABASE_MIGRATE", self.database_migrate.to_string()),
            ("DATABASE_STATEMENT_TIMEOUT_MS", ms(self.database_statement_timeout)),
            ("LOG_LEVEL", self.log_level.clone()),
            ("LOG_FORMAT", format!("{:?}", self.log_format).to_lowercase()),
            ("HEALTH_CHECK_ENABLED", self.health_check_enabled.to_string()),
            ("HEALTH_CHECK_PORT", self.health_check_port.to_string()),
            (
                "HEALTH_CHECK_HOST",
                self.health_check_host.map_or("::".to_owned(), |ip| ip.to_string()),
            ),
            ("HEARTBEAT_INTERVAL_MS", ms(self.heartbeat_interval)),
            ("WORKER_DEADLINE_MS", ms(self.worker_deadline)),
            ("MAX_RECOVERIES", self.max_recoveries.to_string()),
            ("CLAIM_BLOCK_MS", ms(self.claim_block)),
            ("CLAIM_BATCH_SIZE", self.claim_batch_size.to_string()),
            ("PERSIST_BATCH_SIZE", self.persist_batch_size.to_string()),
            ("COMMIT_BACKLOG", self.commit_backlog.to_string()),
            (
                "DUPLICATE_CHECK",
                if self.duplicate_check { "on" } else { "off" }.to_owned(),
            ),
        ];
        lines.extend(self.http_steps.describe());
        lines.extend(self.limits.describe());
        lines.extend(self.notify.describe());
        lines.extend(self.retention.describe());
        lines.extend(self.otel.describe());
        lines
    }
}

fn parse_app_env(var: Var<'_>) -> Result<AppEnv, ConfigError> {
    Ok(
        match parse_one_of(var, &["development", "dev", "test", "production", "prod", "staging"])? {
            "production" | "prod" | "staging" => AppEnv::Production,
            "test" => AppEnv::Test,
            _ => AppEnv::Development,
        },
    )
}

/// `QUEUE_DRIVER`, or its default: Redis when a Redis is configured or in production (where it
/// must be), the memory queue on a bare development machine.
fn parse_queue_driver(raw: Option<&str>, redis_set: bool, production: bool) -> Result<QueueDriver, ConfigError> {
    let driver = match raw {
        Some(v) => match parse_one_of(Var::new("QUEUE_DRIVER", v), &["redis", "memory"])? {
            "memory" => QueueDriver::Memory,
            _ => QueueDriver::Redis,
        },
        None if redis_set || production => QueueDriver::Redis,
        None => QueueDriver::Memory,
    };
    if production && driver == QueueDriver::Memory {
        return Err(ConfigError::new(
            "QUEUE_DRIVER",
            "redis when APP_ENV=production (the memory queue keeps jobs only in this process: they are lost on every restart and replicas cannot share them)",
            "memory",
        ));
    }
    Ok(driver)
}

/// A connection URL: required in production (a local default there would point a deployed worker
/// at nothing), defaulted to the local service elsewhere.
fn url_var(
    name: &'static str,
    raw: Option<String>,
    default: &str,
    production: bool,
    schemes: &[&str],
) -> Result<Secret, ConfigError> {
    let expected = format!("a URL starting with {}", schemes.join(" or "));
    let value = match raw {
        Some(v) => v,
        None if production => {
            return Err(ConfigError::new(
                name,
                &format!("{expected} (required when APP_ENV=production)"),
                "",
            ));
        }
        None => default.to_owned(),
    };
    if !schemes.iter().any(|s| value.starts_with(s)) {
        return Err(ConfigError::new(name, &expected, &redact_url(&value)));
    }
    // A URL the client library cannot parse would only fail at the first connection, which is
    // retried forever: refuse it here, where the operator sees which variable it is.
    if !client_parses(&value) {
        let expected = format!(
            "{expected} that parses as one (percent-encode `/`, `?`, `#`, `@` and `:` in the user name and password)"
        );
        return Err(ConfigError::new(name, &expected, &redact_url(&value)));
    }
    Ok(Secret::new(value))
}

/// A comma-separated `REDIS_URL` lists seed nodes of one Redis Cluster: each must be a URL of the
/// same scheme (the cluster client takes TLS from the first, and a cluster is all TLS or none).
fn check_redis_seeds(url: &Secret) -> Result<(), ConfigError> {
    let seeds: Vec<&str> = url.expose().split(',').map(str::trim).collect();
    if seeds.len() < 2 {
        return Ok(());
    }
    let scheme = |s: &str| s.split_once("://").map(|(scheme, _)| scheme.to_owned());
    let first = scheme(seeds[0]);
    if seeds.iter().any(|s| s.is_empty() || scheme(s) != first) {
        return Err(ConfigError::new(
            "REDIS_URL",
            "one URL (redis:// or rediss://), or for a Redis Cluster several node URLs of one scheme separated by commas",
            &url.redacted(),
        ));
    }
    Ok(())
}

/// Whether the client library for `url`'s scheme accepts it, without connecting.
fn client_parses(url: &str) -> bool {
    use std::str::FromStr;
    if url.starts_with("redis") {
        // A Redis Cluster's seed list: every node URL must parse.
        url.split(',')
            .all(|node| redis::IntoConnectionInfo::into_connection_info(node.trim()).is_ok())
    } else if url.starts_with("postgres") {
        sqlx::postgres::PgConnectOptions::from_str(url).is_ok()
    } else {
        sqlx::sqlite::SqliteConnectOptions::from_str(url).is_ok()
    }
}

fn parse_log_level(raw: Option<String>) -> Result<String, ConfigError> {
    let Some(v) = raw else {
        return Ok("info".to_owned());
    };
    // Either a plain level or a full tracing filter directive such as `info,step_worker=debug`.
    // A bare word is a level; EnvFilter would otherwise take a typo for a target name and log nothing.
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let directive = v.contains(['=', ',']);
    let valid = if directive {
        tracing_subscriber::EnvFilter::try_new(&v).is_ok()
    } else {
        LEVELS.contains(&v.trim().to_ascii_lowercase().as_str())
    };
    match valid {
        true => Ok(v.trim().to_ascii_lowercase()),
        false => Err(ConfigError::new(
            "LOG_LEVEL",
            "one of error, warn, info, debug, trace (or a tracing filter such as info,step_worker=debug)",
            &v,
        )),
    }
}

#[cfg(test)]
mod tests;
