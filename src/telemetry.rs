//! Logging setup: JSON lines in production, human-readable elsewhere, filtered by `LOG_LEVEL`.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{Config, LogFormat};

/// Installs the global subscriber. Safe to call more than once (later calls are ignored), which
/// tests rely on.
pub fn init(config: &Config) {
    init_with(&config.log_level, config.log_format);
}

pub fn init_with(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Pretty => builder.with_target(false).try_init(),
    };
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
