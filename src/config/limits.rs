//! `STEP_CONCURRENCY`: flow control across replicas. A capped step runs at most N attempts at once
//! across every replica sharing the queue; the queue enforces it atomically (see
//! `queue/lua/claim.lua`). Every replica must be given the same caps: each enforces the caps it
//! was given.

use std::collections::BTreeMap;

use super::ConfigError;

/// Most capped steps: each adds a key to every claim and settle script call.
pub const MAX_CAPPED_STEPS: usize = 100;
/// Largest cap: beyond this a cap is no cap (no replica set runs that many attempts at once).
pub const MAX_CAP: u64 = 100_000;

/// The flow limits of the queue's steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `STEP_CONCURRENCY`: step → most attempts running at once across every replica.
    pub concurrency: BTreeMap<String, u32>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.concurrency.is_empty()
    }

    /// `step-worker config check`'s lines.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let caps = self
            .concurrency
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        vec![("STEP_CONCURRENCY", caps)]
    }
}

/// Parses `STEP_CONCURRENCY`: comma-separated `step=N` entries. A bad entry stops startup with
/// the entry named, not the whole value: the operator sees which one to fix.
pub fn parse(raw: Option<&str>) -> Result<Limits, ConfigError> {
    const VAR: &str = "STEP_CONCURRENCY";
    let expected = format!(
        "comma-separated step=N entries (a step name of A-Z, a-z, 0-9, `.`, `_`, `-`; N from 1 to {MAX_CAP}; each step once; at most {MAX_CAPPED_STEPS})"
    );
    let mut concurrency = BTreeMap::new();
    for entry in raw.unwrap_or_default().split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || ConfigError::new(VAR, &expected, entry);
        let (step, n) = entry.split_once('=').ok_or_else(bad)?;
        let step = step.trim();
        crate::http_step::route::check_step_name(step).map_err(|_| bad())?;
        let n = n.trim().parse::<u64>().ok().filter(|n| (1..=MAX_CAP).contains(n)).ok_or_else(bad)?;
        if concurrency.insert(step.to_owned(), n as u32).is_some() || concurrency.len() > MAX_CAPPED_STEPS {
            return Err(bad());
        }
    }
    Ok(Limits { concurrency })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_and_bad_entries_are_named() {
        let l = parse(Some(" email.send=5, charge=2 ")).unwrap();
        assert_eq!(l.concurrency.get("email.send"), Some(&5));
        assert_eq!(l.concurrency.get("charge"), Some(&2));
        assert!(parse(None).unwrap().is_empty());
        for (raw, bad) in [
            ("email.send=5,charge", "charge"),
            ("a=0", "a=0"),
            ("a=x", "a=x"),
            ("bad step=1", "bad step=1"),
            ("a=1,a=2", "a=2"),
            ("=3", "=3"),
        ] {
            let e = parse(Some(raw)).unwrap_err();
            assert_eq!((e.variable.as_str(), e.got.as_str()), ("STEP_CONCURRENCY", bad), "{raw}");
        }
    }
}
