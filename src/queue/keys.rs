//! Redis key names. Every key except the public ready list carries the hash tag `{<queue>}`, so
//! all of them live in the ready list's Cluster slot (Redis hashes only the text between the first
//! `{` and `}`, and `step.ready` has no braces, so its whole name is that text). Scripts and
//! BLMOVE may therefore touch any pair of them on Redis Cluster, while producers and dashboards
//! keep using the plain `LPUSH step.ready` / `LLEN step.ready`.

/// The key names of one queue.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Pending payloads; producers `LPUSH`, workers take from the right.
    pub ready: String,
    /// ZSET of live workers: wid → heartbeat deadline (ms, Redis server time).
    pub workers: String,
    /// ZSET of reaped workers: wid → reaped at; their lists are re-drained for a while.
    pub reaped: String,
    /// ZSET of scheduled retries: payload → due time (ms).
    pub delayed: String,
    /// HASH sha1(payload) → failed attempts so far.
    pub attempts: String,
    /// HASH sha1(payload) → times recovered from a dead worker.
    pub interrupts: String,
    /// LIST outbox of poison payloads taken out by the reaper, waiting for their dead-letter row.
    pub poison: String,
    /// STRING lock so one replica at a time scans for dead workers.
    pub reaper_lock: String,
    /// STRING whose presence pauses claiming on every worker (`step-worker pause`).
    pub paused: String,
    /// SET of paused step names (`step-worker pause --step`); their jobs wait in `held` lists.
    pub paused_steps: String,
    /// HASH job id → worker id: the copy of that id running now (`active.lua`), so two copies
    /// of one id never run at once.
    pub active: String,
    /// STRING, a random value written once and never removed: only Redis data loss removes or
    /// replaces it, so a heartbeat can prove (not guess) that a registration was lost.
    pub epoch: String,
    /// HASH step → cap slots held across every replica (`STEP_CONCURRENCY`).
    pub cap_used: String,
    /// HASH step → GCRA theoretical arrival time, ms (`STEP_RATE_LIMITS`).
    pub rate_tat: String,
    /// ZSET step → when its jobs waiting on the rate are woken, ms.
    pub rate_wake: String,
    /// ZSET step → held on every replica until, ms (back-pressure: a 429 or 503 with
    /// Retry-After).
    pub step_holds: String,
    /// HASH `<wid>\n<job id>` → requested at (ms): cancellations of jobs in a worker's
    /// in-flight list, for that worker's heartbeat to fire (`cancel.lua`).
    pub cancel: String,
    /// LIST outbox of cancelled payloads (`attempts|at_ms|by|payload`), waiting for their
    /// `cancelled` result rows.
    pub cancelled: String,
    proc_prefix: String,
}

impl Keys {
    pub fn new(queue: &str) -> Self {
        let tag = format!("{{{queue}}}");
        Keys {
            ready: queue.to_owned(),
            workers: format!("{tag}:workers"),
            reaped: format!("{tag}:reaped"),
            delayed: format!("{tag}:delayed"),
            attempts: format!("{tag}:attempts"),
            interrupts: format!("{tag}:interrupts"),
            poison: format!("{tag}:poison"),
            reaper_lock: format!("{tag}:reaper_lock"),
            paused: format!("{tag}:paused"),
            paused_steps: format!("{tag}:paused_steps"),
            epoch: format!("{tag}:epoch"),
            cap_used: format!("{tag}:cap_used"),
            rate_tat: format!("{tag}:rate_tat"),
            rate_wake: format!("{tag}:rate_wake"),
            step_holds: format!("{tag}:step_holds"),
            active: format!("{tag}:active"),
            cancel: format!("{tag}:cancel"),
            cancelled: format!("{tag}:cancelled"),
            proc_prefix: format!("{tag}:proc:"),
        }
    }

    /// The in-flight list of worker `wid`: the jobs it has claimed and not yet settled.
    pub fn proc(&self, wid: &str) -> String {
        format!("{}{wid}", self.proc_prefix)
    }

    /// Jobs of paused step `step`, waiting for `resume --step`.
    pub fn held(&self, step: &str) -> String {
        format!("{}{step}", self.held_prefix())
    }

    /// HASH of the cap slots worker `wid` holds: sha1(payload) → `<count> <step>`. Per worker,
    /// so the reaper frees a dead worker's slots with its jobs.
    pub fn slots(&self, wid: &str) -> String {
        self.proc_prefix.replace(":proc:", ":slots:") + wid
    }

    /// The slots HASH of the worker whose in-flight list is `proc`.
    pub fn slots_of_proc(&self, proc: &str) -> String {
        self.slots(proc.strip_prefix(&self.proc_prefix).unwrap_or(proc))
    }

    /// Jobs of capped step `step` waiting for a slot (`STEP_CONCURRENCY`).
    pub fn throttled(&self, step: &str) -> String {
        format!("{}{step}", self.proc_prefix.replace(":proc:", ":throttled:"))
    }

    /// Jobs of rate-limited step `step` waiting for their start (`STEP_RATE_LIMITS`).
    pub fn rate_waiting(&self, step: &str) -> String {
        format!("{}{step}", self.proc_prefix.replace(":proc:", ":rate_waiting:"))
    }

    pub fn held_prefix(&self) -> String {
        self.proc_prefix.replace(":proc:", ":held:")
    }

    pub fn proc_prefix(&self) -> &str {
        &self.proc_prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis Cluster's slot function hashes the hash tag when there is one.
    fn hashed_part(key: &str) -> &str {
        if let Some(open) = key.find('{')
            && let Some(len) = key[open + 1..].find('}')
            && len > 0
        {
            return &key[open + 1..open + 1 + len];
        }
        key
    }

    #[test]
    fn every_key_hashes_to_the_ready_lists_slot() {
        let k = Keys::new("step.ready");
        for key in [
            &k.workers,
            &k.reaped,
            &k.delayed,
            &k.attempts,
            &k.interrupts,
            &k.poison,
            &k.reaper_lock,
            &k.epoch,
            &k.cap_used,
            &k.rate_tat,
            &k.rate_wake,
            &k.step_holds,
            &k.cancel,
            &k.cancelled,
            &k.rate_waiting("email.send"),
            &k.slots("h:1:ab"),
            &k.throttled("email.send"),
            &k.proc("h:1:ab"),
        ] {
            assert_eq!(hashed_part(key), "step.ready", "{key}");
        }
        assert_eq!(hashed_part(&k.ready), "step.ready");
        assert_eq!(k.ready, "step.ready");
    }
}
