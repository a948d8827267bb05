//! `STEP_CONCURRENCY` and `STEP_RATE_LIMITS`: flow control across replicas. A capped step runs at
//! most N attempts at once, a rate-limited step starts at most N attempts per period, across every
//! replica sharing the queue; the queue enforces both atomically (see `queue/lua/claim.lua`).
//! Every replica must be given the same limits: each enforces the limits it was given.

use std::collections::BTreeMap;

use super::ConfigError;

/// Most capped steps: each adds a key to every claim and settle script call.
pub const MAX_CAPPED_STEPS: usize = 100;
/// Largest cap: beyond this a cap is no cap (no replica set runs that many attempts at once).
pub const MAX_CAP: u64 = 100_000;

/// The shortest time between two wake-ups of a rate-limited step's waiting jobs: each wake-up
/// lets a burst of the starts due in this time go at once, so a fast limit costs a promotion
/// call per tenth of a second, not one per job.
pub const RATE_WAKE_MS: f64 = 100.0;
/// Longest rate period: a day (an hourly or daily quota is still a rate).
const MAX_PERIOD_MS: u64 = 86_400_000;

/// `STEP_RATE_LIMITS`' entry for one step: at most `n` starts per `period_ms`, as a GCRA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub n: u32,
    pub period_ms: u64,
}

impl Rate {
    /// The time one start uses up, in ms (the GCRA's emission interval).
    pub fn interval_ms(&self) -> f64 {
        self.period_ms as f64 / f64::from(self.n)
    }

    /// How many starts may go at once: the starts of [`RATE_WAKE_MS`] (at least one, at most n).
    pub fn burst(&self) -> u32 {
        ((RATE_WAKE_MS / self.interval_ms()).ceil() as u32).clamp(1, self.n)
    }
}

/// The flow limits of the queue's steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `STEP_CONCURRENCY`: step → most attempts running at once across every replica.
    pub concurrency: BTreeMap<String, u32>,
    /// `STEP_RATE_LIMITS`: step → most attempt starts per period across every replica.
    pub rates: BTreeMap<String, Rate>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.concurrency.is_empty() && self.rates.is_empty()
    }

    /// `step-worker config check`'s lines.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let caps = self
            .concurrency
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        let rates = self
            .rates
            .iter()
            .map(|(s, r)| format!("{s}={}/{}ms", r.n, r.period_ms))
            .collect::<Vec<_>>()
            .join(",");
        vec![("STEP_CONCURRENCY", caps), ("STEP_RATE_LIMITS", rates)]
    }
}

/// Parses both variables. A bad entry stops startup with the entry named, not the whole value:
/// the operator sees which one to fix.
pub fn parse(concurrency: Option<&str>, rates: Option<&str>) -> Result<Limits, ConfigError> {
    Ok(Limits {
        concurrency: parse_caps(concurrency)?.concurrency,
        rates: parse_rates(rates)?,
    })
}

/// `STEP_RATE_LIMITS`: comma-separated `step=N/period` entries, the period a number and a unit
/// (`ms`, `s`, `m`, `h`; the number may be left out: `10/s`).
fn parse_rates(raw: Option<&str>) -> Result<BTreeMap<String, Rate>, ConfigError> {
    const VAR: &str = "STEP_RATE_LIMITS";
    let expected = format!(
        "comma-separated step=N/period entries such as email.send=10/1s or openai.chat=500/1m (N from 1 to {MAX_CAP}; a period of 1 ms to 24 h in ms, s, m or h; each step once; at most {MAX_CAPPED_STEPS})"
    );
    let mut rates = BTreeMap::new();
    for entry in raw
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let bad = || ConfigError::new(VAR, &expected, entry);
        let (step, rate) = entry.split_once('=').ok_or_else(bad)?;
        let step = step.trim();
        crate::http_step::route::check_step_name(step).map_err(|_| bad())?;
        let (n, period) = rate.split_once('/').ok_or_else(bad)?;
        let n = n
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_CAP).contains(n))
            .ok_or_else(bad)?;
        let period_ms = parse_period(period.trim()).ok_or_else(bad)?;
        let rate = Rate { n: n as u32, period_ms };
        if rates.insert(step.to_owned(), rate).is_some() || rates.len() > MAX_CAPPED_STEPS {
            return Err(bad());
        }
    }
    Ok(rates)
}

/// `1s`, `500ms`, `m`, `2h` → milliseconds.
fn parse_period(p: &str) -> Option<u64> {
    let split = p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len());
    let (count, unit) = p.split_at(split);
    let count = match count {
        "" => 1,
        c => c.parse::<u64>().ok()?,
    };
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    Some(count.checked_mul(unit_ms)?).filter(|ms| (1..=MAX_PERIOD_MS).contains(ms))
}

/// `STEP_CONCURRENCY`: comma-separated `step=N` entries.
fn parse_caps(raw: Option<&str>) -> Result<Limits, ConfigError> {
    const VAR: &str = "STEP_CONCURRENCY";
    let expected = format!(
        "comma-separated step=N entries (a step name of A-Z, a-z, 0-9, `.`, `_`, `-`; N from 1 to {MAX_CAP}; each step once; at most {MAX_CAPPED_STEPS})"
    );
    let mut concurrency = BTreeMap::new();
    for entry in raw
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let bad = || ConfigError::new(VAR, &expected, entry);
        let (step, n) = entry.split_once('=').ok_or_else(bad)?;
        let step = step.trim();
        crate::http_step::route::check_step_name(step).map_err(|_| bad())?;
        let n = n
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_CAP).contains(n))
            .ok_or_else(bad)?;
        if concurrency.insert(step.to_owned(), n as u32).is_some() || concurrency.len() > MAX_CAPPED_STEPS {
            return Err(bad());
        }
    }
    Ok(Limits {
        concurrency,
        ..Limits::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_and_bad_entries_are_named() {
        let l = parse(Some(" email.send=5, charge=2 "), None).unwrap();
        assert_eq!(l.concurrency.get("email.send"), Some(&5));
        assert_eq!(l.concurrency.get("charge"), Some(&2));
        assert!(parse(None, None).unwrap().is_empty());
        for (raw, bad) in [
            ("email.send=5,charge", "charge"),
            ("a=0", "a=0"),
            ("a=x", "a=x"),
            ("bad step=1", "bad step=1"),
            ("a=1,a=2", "a=2"),
            ("=3", "=3"),
        ] {
            let e = parse(Some(raw), None).unwrap_err();
            assert_eq!(
                (e.variable.as_str(), e.got.as_str()),
                ("STEP_CONCURRENCY", bad),
                "{raw}"
            );
        }
    }

    #[test]
    fn rates_parse_with_their_burst_and_bad_entries_are_named() {
        let l = parse(None, Some("email.send=10/1s,openai.chat=500/1m,fast=10000/s")).unwrap();
        let email = l.rates["email.send"];
        assert_eq!((email.n, email.period_ms, email.burst()), (10, 1_000, 1));
        assert_eq!(l.rates["openai.chat"].period_ms, 60_000);
        assert_eq!(l.rates["fast"].burst(), 1_000, "a tenth of a second's starts at once");
        for (raw, bad) in [
            ("a=10", "a=10"),
            ("a=10/1d", "a=10/1d"),
            ("a=0/1s", "a=0/1s"),
            ("a=5/0s", "a=5/0s"),
            ("a=1/s,a=2/s", "a=2/s"),
        ] {
            let e = parse(None, Some(raw)).unwrap_err();
            assert_eq!(
                (e.variable.as_str(), e.got.as_str()),
                ("STEP_RATE_LIMITS", bad),
                "{raw}"
            );
        }
    }
}
