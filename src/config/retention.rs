//! `RESULT_RETENTION` and `RETENTION_CHECK_MS`: how long outcomes are kept before the worker
//! deletes them. Unset keeps everything, as before the variable existed.

use std::time::Duration;

use super::RawEnv;
use super::parse::{ConfigError, parse_int};

/// What `RESULT_RETENTION` accepts, for its error message.
const EXPECTED: &str = "comma-separated <kind>=<duration> entries, kind one of succeeded, cancelled, dead, \
    attempts, dead_letters, duration like 36h, 7d or 90d (at least 1s), e.g. \
    \"succeeded=7d,dead=30d,dead_letters=90d\"";
/// Default `RETENTION_CHECK_MS`: a minute is frequent enough that each pass deletes little (a
/// busy queue finishes a few thousand jobs a second at most), and rare enough to cost nothing.
const DEFAULT_CHECK_MS: u64 = 60_000;

/// How long each kind of row is kept, counted from its finish time (results and attempts) or
/// the time it was dead-lettered (dead letters). `None`: kept for ever.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// `step_results` rows with status `succeeded`.
    pub succeeded: Option<Duration>,
    /// `step_results` rows with status `cancelled`.
    pub cancelled: Option<Duration>,
    /// `step_results` rows with status `dead`. Their dead letters keep their own retention.
    pub dead: Option<Duration>,
    /// `step_attempts` rows (one per failed attempt).
    pub attempts: Option<Duration>,
    /// `step_dead_letters` rows, replayed or not.
    pub dead_letters: Option<Duration>,
    /// `RETENTION_CHECK_MS`: how often a replica looks for expired rows.
    pub check_every: Duration,
}

impl Retention {
    /// Whether any kind of row expires: the retention task runs only then.
    pub fn is_enabled(&self) -> bool {
        [
            self.succeeded,
            self.cancelled,
            self.dead,
            self.attempts,
            self.dead_letters,
        ]
        .iter()
        .any(Option::is_some)
    }

    /// The spec as `RESULT_RETENTION` would give it, for `config check`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let kinds = [
            ("succeeded", self.succeeded),
            ("cancelled", self.cancelled),
            ("dead", self.dead),
            ("attempts", self.attempts),
            ("dead_letters", self.dead_letters),
        ];
        let spec: Vec<String> = kinds
            .iter()
            .filter_map(|(k, d)| d.map(|d| format!("{k}={}", humantime::format_duration(d))))
            .collect();
        vec![
            ("RESULT_RETENTION", spec.join(",")),
            ("RETENTION_CHECK_MS", self.check_every.as_millis().to_string()),
        ]
    }
}

pub(super) fn parse(raw: &RawEnv) -> Result<Retention, ConfigError> {
    let check_ms = parse_int(
        "RETENTION_CHECK_MS",
        raw.retention_check_ms.as_deref(),
        DEFAULT_CHECK_MS,
        100,
        86_400_000,
    )?;
    let mut r = Retention {
        check_every: Duration::from_millis(check_ms),
        ..Retention::default()
    };
    let Some(spec) = raw.result_retention.as_deref() else {
        return Ok(r);
    };
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || ConfigError::new("RESULT_RETENTION", EXPECTED, entry);
        let (kind, age) = entry.split_once('=').ok_or_else(bad)?;
        let age = humantime::parse_duration(age.trim()).map_err(|_| bad())?;
        if age < Duration::from_secs(1) {
            return Err(bad());
        }
        let slot = match kind.trim() {
            "succeeded" => &mut r.succeeded,
            "cancelled" => &mut r.cancelled,
            "dead" => &mut r.dead,
            "attempts" => &mut r.attempts,
            "dead_letters" => &mut r.dead_letters,
            _ => return Err(bad()),
        };
        if slot.replace(age).is_some() {
            return Err(ConfigError::new("RESULT_RETENTION", "each kind at most once", entry));
        }
    }
    Ok(r)
}
