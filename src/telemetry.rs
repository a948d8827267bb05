//! Logging setup: JSON lines in production, human-readable elsewhere, filtered by `LOG_LEVEL`.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{Config, LogFormat};

/// Installs the global subscriber: the log format of `LOG_FORMAT`, filtered by `LOG_LEVEL`, plus
/// a Sentry layer (errors become events, lower levels breadcrumbs) when `SENTRY_DSN` is set.
/// Safe to call more than once (later calls are ignored), which tests rely on.
pub fn init(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (json, pretty) = match config.log_format {
        LogFormat::Json => (
            Some(fmt::layer().json().with_current_span(true).with_span_list(false)),
            None,
        ),
        LogFormat::Pretty => (None, Some(fmt::layer().with_target(false))),
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

/// For tests: logs at `warn` (or `TEST_LOG`), captured by the test harness.
pub fn init_for_tests() {
    let level = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
