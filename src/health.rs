//! What `/health` reports: Redis and Postgres reachability, claim-loop progress, draining, and
//! during startup what the worker is still waiting for.
//! Signals are passive where possible (the heartbeat already proves Redis every few seconds, the
//! pipeline proves Postgres on every flush), so a probe costs no Redis command; Postgres is
//! pinged only when nothing has proven it recently.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long claims may keep failing, with no success in between, before `/health` turns 503.
/// Long enough that a lost connection (reconnected within a second or two) does not flip
/// readiness; short enough that a Redis that refuses a command the claim needs is seen at once.
pub const CLAIM_FAILING_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default, Serialize)]
pub struct Check {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Dep {
    ok_at: Option<Instant>,
    error: Option<String>,
    /// When the current run of failures began.
    failing_since: Option<Instant>,
}

pub struct Health {
    started: AtomicBool,
    draining: AtomicBool,
    redis: Mutex<Dep>,
    postgres: Mutex<Dep>,
    claim: Mutex<ClaimState>,
    /// During startup: what the worker is waiting for, and the last error.
    waiting_for: Mutex<Option<(String, String)>>,
}

struct ClaimState {
    /// The last sign of life of the claim loop.
    at: Instant,
    /// Waiting for a free slot (not a stall).
    waiting: bool,
    /// Since when every pass has failed, and the last failure.
    failing: Option<(Instant, String)>,
}

impl Default for Health {
    fn default() -> Self {
        let dep = || {
            Mutex::new(Dep {
                ok_at: None,
                error: Some("not checked yet".to_owned()),
                failing_since: None,
            })
        };
        Health {
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            redis: dep(),
            postgres: dep(),
            claim: Mutex::new(ClaimState {
                at: Instant::now(),
                waiting: true,
                failing: None,
            }),
            waiting_for: Mutex::new(None),
        }
    }
}

impl Health {
    pub fn set_started(&self) {
        *self.waiting_for.lock().unwrap() = None;
        self.started.store(true, Ordering::Release);
    }

    /// Startup is waiting for `what` (`"redis"`, `"postgres"`), which last failed with `error`.
    pub fn set_waiting_for(&self, what: &str, error: &dyn std::fmt::Display) {
        *self.waiting_for.lock().unwrap() = Some((what.to_owned(), error.to_string()));
    }

    /// What startup is waiting for and its last error; `None` once started or before any wait.
    pub fn waiting_for(&self) -> Option<(String, String)> {
        self.waiting_for.lock().unwrap().clone()
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn redis_ok(&self) {
        ok(&self.redis);
    }

    pub fn redis_failed(&self, e: &dyn std::fmt::Display) {
        failed(&self.redis, e);
    }

    pub fn postgres_ok(&self) {
        ok(&self.postgres);
    }

    pub fn postgres_failed(&self, e: &dyn std::fmt::Display) {
        failed(&self.postgres, e);
    }

    /// The claim loop finished a pass without an error.
    pub fn claim_progress(&self) {
        let mut c = self.claim.lock().unwrap();
        c.at = Instant::now();
        c.failing = None;
    }

    /// A pass of the claim loop failed with `e` (`op: error`). The loop is alive, but a run of
    /// these longer than [`CLAIM_FAILING_LIMIT`] makes the worker unready.
    pub fn claim_failed(&self, e: &dyn std::fmt::Display) {
        let mut c = self.claim.lock().unwrap();
        let now = Instant::now();
        c.at = now;
        let since = c.failing.as_ref().map_or(now, |(t, _)| *t);
        c.failing = Some((since, e.to_string()));
    }

    /// Waiting for a slot is not a stall: the running jobs have their own timeouts.
    pub fn claim_waiting(&self, waiting: bool) {
        let mut c = self.claim.lock().unwrap();
        c.at = Instant::now();
        c.waiting = waiting;
    }

    /// How long Redis has been failing, with the last error (`None` while it answers).
    pub fn redis_down_for(&self) -> Option<(Duration, String)> {
        down_for(&self.redis)
    }

    pub fn postgres_down_for(&self) -> Option<(Duration, String)> {
        down_for(&self.postgres)
    }

    /// Redis is healthy if the last heartbeat succeeded and was recent.
    pub fn redis_check(&self, max_age: Duration) -> Check {
        check(&self.redis, max_age)
    }

    /// Postgres as last seen; `None` when no operation has proven it within `max_age`.
    pub fn postgres_check(&self, max_age: Duration) -> Option<Check> {
        let d = self.postgres.lock().unwrap();
        if d.error.is_some() {
            return Some(Check {
                ok: false,
                error: d.error.clone(),
            });
        }
        d.ok_at
            .filter(|t| t.elapsed() <= max_age)
            .map(|_| Check { ok: true, error: None })
    }

    /// The claim loop is healthy when its claims have not kept failing for
    /// [`CLAIM_FAILING_LIMIT`], and it is waiting for a slot or has completed a pass within
    /// `max_quiet` (a blocking claim's block time plus slack).
    pub fn claim_check(&self, max_quiet: Duration) -> Check {
        let c = self.claim.lock().unwrap();
        if let Some((since, e)) = &c.failing
            && since.elapsed() >= CLAIM_FAILING_LIMIT
        {
            return Check {
                ok: false,
                error: Some(format!("claims have failed for {} s: {e}", since.elapsed().as_secs())),
            };
        }
        if c.waiting || c.at.elapsed() <= max_quiet {
            Check { ok: true, error: None }
        } else {
            Check {
                ok: false,
                error: Some(format!("no claim-loop progress for {} s", c.at.elapsed().as_secs())),
            }
        }
    }
}

fn ok(dep: &Mutex<Dep>) {
    let mut d = dep.lock().unwrap();
    d.ok_at = Some(Instant::now());
    d.error = None;
    d.failing_since = None;
}

fn failed(dep: &Mutex<Dep>, e: &dyn std::fmt::Display) {
    let mut d = dep.lock().unwrap();
    d.error = Some(e.to_string());
    d.failing_since.get_or_insert_with(Instant::now);
}

fn check(dep: &Mutex<Dep>, max_age: Duration) -> Check {
    let d = dep.lock().unwrap();
    match (&d.error, d.ok_at) {
        (Some(e), _) => Check {
            ok: false,
            error: Some(e.clone()),
        },
        (None, Some(t)) if t.elapsed() <= max_age => Check { ok: true, error: None },
        (None, _) => Check {
            ok: false,
            error: Some(format!("no successful heartbeat for over {} s", max_age.as_secs())),
        },
    }
}

fn down_for(dep: &Mutex<Dep>) -> Option<(Duration, String)> {
    let d = dep.lock().unwrap();
    d.failing_since
        .map(|t| (t.elapsed(), d.error.clone().unwrap_or_default()))
}
