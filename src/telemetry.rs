//! Logging setup: JSON lines in production, human-readable elsewhere, filtered by `LOG_LEVEL`.

use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{Config, LogFormat};

/// Installs the global subscriber: the log format of `LOG_FORMAT`, filtered by `LOG_LEVEL`, plus
/// a Sentry layer (errors become events, lower levels breadcrumbs) when `SENTRY_DSN` is set.
/// Safe to call more than once (later calls are ignored), which tests rely on.
pub fn init(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = quiet_server_notices(filter, &config.log_level);
    let (json, pretty) = match config.log_format {
        LogFormat::Json => (
            Some(fmt::layer().json().with_current_span(true).with_span_list(false)),
            None,
        ),
        // Colour codes only for a terminal: in a file or a platform's log view they are noise.
        LogFormat::Pretty => (
            None,
            Some(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stdout().is_terminal()),
            ),
        ),
    };
    let sentry = config.notify.sentry_dsn.is_some().then(|| {
        sentry::integrations::tracing::ErrorLayer::new()
            .with_filter(LevelFilter::ERROR)
            .and_then(sentry::integrations::tracing::BreadcrumbLayer::new().with_filter(LevelFilter::INFO))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(pretty)
        .with(sentry)
        .try_init();
}

/// An error and its causes on one line, `outer: inner: root`, leaving out a cause whose text the
/// line already holds: redis and sqlx errors repeat their source's text in their own message, so
/// `{:#}` printed "Connection refused (os error 111): Connection refused (os error 111)".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// sqlx logs every Postgres NOTICE at INFO, so the migrator's "relation already exists, skipping"
/// would print on every start. Notices are kept at WARN unless `LOG_LEVEL` names sqlx itself.
fn quiet_server_notices(filter: EnvFilter, log_level: &str) -> EnvFilter {
    if log_level.contains("sqlx") {
        return filter;
    }
    match "sqlx::postgres::notice=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// For tests: logs at `warn` (or `TEST_LOG`), captured by the test harness.
pub fn init_for_tests() {
    let level = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(io).context("connecting to Redis: Connection refused");
        let e = e.context("REDIS_URL");
        assert_eq!(
            error_chain(e.as_ref()),
            "REDIS_URL: connecting to Redis: Connection refused"
        );
    }

    #[test]
    fn distinct_causes_are_all_kept() {
        let e = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(error_chain(e.as_ref()), "top: middle: root");
    }
}
