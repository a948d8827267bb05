//! The Lua scripts of the protocol, each headed (in its file) by its KEYS/ARGV/returns contract.

use redis::Script;

/// Due retries moved per promotion call; more are moved by the next call, which follows at once.
pub const PROMOTE_LIMIT: u64 = 500;
/// How long a reaped worker's list keeps being re-drained: covers a BLMOVE that was in flight when
/// its worker was reaped (at most one block time) with a wide margin.
pub const TOMBSTONE_KEEP_MS: u64 = 10 * 60 * 1000;

pub struct Scripts {
    pub heartbeat: Script,
    pub claim: Script,
    pub settle: Script,
    pub reap_candidates: Script,
    pub reap: Script,
    pub promote: Script,
    pub adopt: Script,
    pub resume_step: Script,
    pub schedule: Script,
    pub hold_step: Script,
    pub active: Script,
    pub cancel: Script,
}

/// The type check every payload-moving script runs before its first write (see the file).
const GUARD: &str = include_str!("lua/guard.lua");

/// The rate limits' wake-up of waiting jobs, shared by the scripts that promote (see the file).
const RATES: &str = include_str!("lua/rates.lua");

/// A script that moves payloads, with [`GUARD`] in front of it.
fn guarded(body: &str) -> Script {
    Script::new(&format!("{GUARD}{body}"))
}

/// A script that also wakes rate-limited steps, with [`GUARD`] and [`RATES`] in front of it.
fn waking(body: &str) -> Script {
    Script::new(&format!("{GUARD}{RATES}{body}"))
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            heartbeat: waking(include_str!("lua/heartbeat.lua")),
            claim: guarded(include_str!("lua/claim.lua")),
            settle: guarded(include_str!("lua/settle.lua")),
            reap_candidates: Script::new(include_str!("lua/reap_candidates.lua")),
            reap: guarded(include_str!("lua/reap.lua")),
            promote: waking(include_str!("lua/promote.lua")),
            adopt: guarded(include_str!("lua/adopt.lua")),
            resume_step: Script::new(include_str!("lua/resume_step.lua")),
            schedule: Script::new(include_str!("lua/schedule.lua")),
            hold_step: Script::new(include_str!("lua/hold_step.lua")),
            active: guarded(include_str!("lua/active.lua")),
            cancel: guarded(include_str!("lua/cancel.lua")),
        }
    }
}
