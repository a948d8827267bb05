//! Logging setup: JSON lines in production, human-readable elsewhere, filtered by `LOG_LEVEL`;
//! panics are logged through it too. Trace export (OTLP) is installed here as one more layer
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and only then.
//!
//! Each layer has its own filter: `LOG_LEVEL` decides what is logged, not what is traced, so a
//! worker logging at `warn` still exports every attempt's span.

use std::io::IsTerminal;

use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{Config, LogFormat};
use crate::redact::{Redactor, printable};

/// What [`init`] started that must be stopped at exit: the trace export, when on.
#[must_use = "dropping it skips the bounded flush of queued spans at exit"]
pub struct Telemetry {
    export: Option<crate::trace::export::Export>,
}

impl Telemetry {
    /// Stops the trace export, first flushing queued spans (for at most
    /// [`crate::trace::export::SHUTDOWN_FLUSH`]) when `flush`. Call it off the runtime's threads,
    /// before the runtime shuts down.
    pub fn shutdown(self, flush: bool) {
        if let Some(export) = self.export {
            export.shutdown(flush);
        }
    }
}

/// Installs the global subscriber: the log format of `LOG_FORMAT`, filtered by `LOG_LEVEL`, plus
/// a Sentry layer (errors become events, lower levels breadcrumbs) when `SENTRY_DSN` is set, plus
/// the OpenTelemetry layer when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Safe to call more than once
/// (later calls are ignored), which tests rely on. With gRPC export, call it with a Tokio runtime
/// entered.
pub fn init(config: &Config) -> Telemetry {
    let logs = || {
        let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
        quiet_server_notices(filter, &config.log_level)
    };
    let (json, pretty) = match config.log_format {
        LogFormat::Json => (
            Some(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_filter(logs()),
            ),
            None,
        ),
        // Colour codes only for a terminal: in a file or a platform's log view they are noise.
        LogFormat::Pretty => (
            None,
            Some(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stdout().is_terminal())
                    .fmt_fields(escaped_fields())
                    .with_filter(logs()),
            ),
        ),
    };
    let sentry = config.notify.sentry_dsn.is_some().then(|| {
        sentry::integrations::tracing::ErrorLayer::new()
            .with_filter(LevelFilter::ERROR.and(logs()))
            .and_then(sentry::integrations::tracing::BreadcrumbLayer::new().with_filter(LevelFilter::INFO.and(logs())))
    });
    let (otel, export) = match crate::trace::export::start(&config.otel) {
        Ok(Some((tracer, export))) => {
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // The job's own fields are the attributes; thread and code locations are noise.
                .with_threads(false)
                .with_location(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                // Nothing reads the OpenTelemetry context from the thread (the step span and the
                // headers take the job span's context explicitly), and activating it costs a
                // thread-local push on every poll of every job.
                .with_context_activation(false)
                // The worker's spans (the attempts) and, as their events, its log lines at info
                // and above: nothing from libraries.
                .with_filter(
                    Targets::new()
                        .with_target("step_worker", LevelFilter::INFO)
                        .with_target(crate::trace::attempt::UNTRACED, LevelFilter::OFF),
                );
            (Some(layer), Some(export))
        }
        Ok(None) => (None, None),
        Err(e) => {
            // Logging is not up yet; traces are an aid, never a reason not to run jobs.
            eprintln!("trace export is off: {}", error_chain(e.as_ref()));
            (None, None)
        }
    };
    let _ = tracing_subscriber::registry()
        .with(otel)
        .with(json)
        .with(pretty)
        .with(sentry)
        .try_init();
    install_panic_hook(Redactor::new(&config.notify.pii_keys));
    Telemetry { export }
}

/// Field formatting for the human format: the default's `name=value` layout with control
/// characters escaped, since ids, step names and errors come from producers and steps, and a
/// newline or an ANSI sequence in them would forge a line or drive the terminal. (JSON lines
/// escape them already.)
pub fn escaped_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    fmt::format::debug_fn(|w: &mut Writer<'_>, field: &Field, value: &dyn std::fmt::Debug| {
        let text = format!("{value:?}");
        match field.name() {
            "message" => write!(w, "{}", printable(&text)),
            name => write!(w, "{name}={}", printable(&text)),
        }
    })
    .delimited(" ")
}

/// Routes panic messages through the logger, masked and bounded like any error text. The default
/// hook writes plain lines to stderr, which break a JSON log stream and print whatever the
/// message holds. A panic inside a job's span is a step's (the runner records it as a failed
/// attempt), so it is a warning; anywhere else it is the worker's own error.
fn install_panic_hook(redactor: Redactor) {
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        let message = redactor.error_text(&message, &serde_json::Value::Null);
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let in_step = tracing::Span::current().metadata().is_some_and(|m| m.name() == "job");
        if in_step {
            tracing::warn!(panic = %message, location, "a step panicked");
        } else {
            tracing::error!(panic = %message, location, "panicked");
        }
    }));
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
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(bytes)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn human_logs_escape_what_producers_control() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(escaped_fields())
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let id = "j1\n2026-01-01T00:00:00Z  INFO forged line\x1b[2J";
            let span = tracing::info_span!("job", job.id = %id);
            let _entered = span.enter();
            tracing::warn!(error = %"bad\r\ninput", step = "s\u{202e}", "failed: {}", "x\ny");
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\x1b') && !out.contains('\u{202e}'), "{out}");
        assert!(out.contains(r"job.id=j1\n2026") && out.contains(r"\u{1b}[2J"), "{out}");
        assert!(
            out.contains(r"failed: x\ny") && out.contains(r"error=bad\r\ninput"),
            "{out}"
        );
    }

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
