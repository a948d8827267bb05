//! The error-tracking and alerting variables: Sentry, Slack and which keys count as personal
//! data. All optional; each integration is off while its variable is unset.

use std::time::Duration;

use super::parse::{ConfigError, parse_int};
use super::{RawEnv, Secret};

#[derive(Debug, Clone)]
pub struct Notify {
    /// `SENTRY_DSN`: dead letters and internal errors are reported there.
    pub sentry_dsn: Option<Secret>,
    /// `SLACK_WEBHOOK`: an incoming-webhook URL for dead-letter and outage messages.
    pub slack_webhook: Option<Secret>,
    /// At most one dead-letter message per step per window, with a count.
    pub slack_window: Duration,
    /// Redis or Postgres unreachable this long is announced (and so is the recovery).
    pub slack_outage_after: Duration,
    /// `PII_REDACT_KEYS`: comma-separated key fragments whose values are masked in reports.
    pub pii_keys: String,
}

pub(super) fn parse(raw: &RawEnv) -> Result<Notify, ConfigError> {
    // A Slack webhook's path is its credential; a Sentry DSN's is its user name.
    let url = |name: &str, v: &Option<String>, secret: fn(String) -> Secret| -> Result<Option<Secret>, ConfigError> {
        match v {
            Some(v) if v.starts_with("https://") || v.starts_with("http://") => Ok(Some(secret(v.clone()))),
            Some(v) => Err(ConfigError::new(
                name,
                "an http:// or https:// URL",
                &secret(v.clone()).redacted(),
            )),
            None => Ok(None),
        }
    };
    let ms = |name, v: &Option<String>, default, min| {
        parse_int(name, v.as_deref(), default, min, 86_400_000).map(Duration::from_millis)
    };
    Ok(Notify {
        sentry_dsn: url("SENTRY_DSN", &raw.sentry_dsn, Secret::new)?,
        slack_webhook: url("SLACK_WEBHOOK", &raw.slack_webhook, Secret::url_with_secret_path)?,
        slack_window: ms(
            "SLACK_DEAD_LETTER_WINDOW_MS",
            &raw.slack_dead_letter_window_ms,
            300_000,
            100,
        )?,
        slack_outage_after: ms("SLACK_OUTAGE_THRESHOLD_MS", &raw.slack_outage_threshold_ms, 60_000, 100)?,
        pii_keys: raw
            .pii_redact_keys
            .clone()
            .unwrap_or_else(|| crate::redact::DEFAULT_KEYS.to_owned()),
    })
}

impl Notify {
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let secret = |s: &Option<Secret>| s.as_ref().map(Secret::redacted).unwrap_or_default();
        vec![
            ("SENTRY_DSN", secret(&self.sentry_dsn)),
            ("SLACK_WEBHOOK", secret(&self.slack_webhook)),
            ("SLACK_DEAD_LETTER_WINDOW_MS", self.slack_window.as_millis().to_string()),
            (
                "SLACK_OUTAGE_THRESHOLD_MS",
                self.slack_outage_after.as_millis().to_string(),
            ),
            ("PII_REDACT_KEYS", self.pii_keys.clone()),
        ]
    }
}
