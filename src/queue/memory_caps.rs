//! `STEP_CONCURRENCY` and `STEP_RATE_LIMITS` on the memory queue: the bookkeeping `claim.lua`,
//! `settle.lua`, `reap.lua` and `rates.lua` keep in Redis (`cap_used`, each worker's `slots`, each
//! step's waiting lists, the rates' `rate_tat` and `rate_wake`), held here under the memory
//! queue's lock. Same rules: a job over its step's cap or rate is not claimed and waits; a slot is
//! owned by the worker's in-flight list and freed when its job leaves it; each freed slot lets
//! one waiting job back to the consumer end of ready; a rate's waiting jobs are woken when a
//! burst conforms (the same GCRA).

use std::collections::{HashMap, VecDeque};

use super::Payload;

/// Candidates a claim looks at beyond the jobs it wants, as `claim.lua`'s `SCAN_EXTRA`.
pub const SCAN_EXTRA: usize = 256;

#[derive(Default)]
pub struct Caps {
    /// step → most attempts at once (empty: no caps, and nothing here is consulted).
    limits: HashMap<String, u32>,
    /// step → slots held.
    used: HashMap<String, u32>,
    /// In-flight list → payload → (slots it holds, its step).
    slots: HashMap<String, HashMap<Payload, (u32, String)>>,
    /// step → jobs waiting for a slot; front is the producer end, as the Redis list.
    waiting: HashMap<String, VecDeque<Payload>>,
    /// step → (interval ms, tau ms) of its GCRA.
    rates: HashMap<String, (f64, f64)>,
    /// step → theoretical arrival time, ms.
    tat: HashMap<String, f64>,
    /// step → jobs waiting for a start.
    rate_waiting: HashMap<String, VecDeque<Payload>>,
    /// step → when its waiting jobs are woken, ms.
    wake: HashMap<String, f64>,
    /// step → held until, ms (back-pressure).
    holds: HashMap<String, f64>,
}

/// What the claim decided for one payload.
pub enum Admission {
    /// Uncapped (or no step to read): runs.
    Free,
    /// Took a slot of this step: runs.
    Slot(String),
    /// Every slot of this step is held, or its rate allows no start now: waits, for the reason.
    Wait(String, &'static str),
    /// The step is held (back-pressure) until this moment (ms): waits in the delayed set.
    Held(String, f64),
}

impl Caps {
    pub fn set(&mut self, limits: &crate::config::Limits) {
        self.limits = limits.concurrency.iter().map(|(s, n)| (s.clone(), *n)).collect();
        self.rates = limits
            .rates
            .iter()
            .map(|(s, r)| (s.clone(), (r.interval_ms(), f64::from(r.burst() - 1) * r.interval_ms())))
            .collect();
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.rates.is_empty() && self.holds.is_empty()
    }

    /// hold_step.lua: holds `step` until `until` (ms); a later hold never shortens an earlier one.
    pub fn hold_step(&mut self, step: &str, until: f64) {
        let h = self.holds.entry(step.to_owned()).or_insert(until);
        *h = h.max(until);
    }

    /// When `step` is held until, if it is held at `now`.
    fn held_until(&mut self, step: &str, now: f64) -> Option<f64> {
        self.holds.retain(|_, until| *until > now);
        self.holds.get(step).copied()
    }

    /// Decides for `p` at `now` (ms) and counts the slot and the start it takes (the slot is
    /// recorded by [`Caps::hold`] once claimed).
    pub fn admit(&mut self, p: &Payload, now: f64) -> Admission {
        let Some(step) = step_of(p) else {
            return Admission::Free;
        };
        if let Some(until) = self.held_until(&step, now) {
            return Admission::Held(step, until);
        }
        let cap = self.limits.get(&step).copied();
        let rate = self.rates.get(&step).copied();
        if cap.is_none() && rate.is_none() {
            return Admission::Free;
        }
        if let Some(cap) = cap
            && self.used.get(&step).copied().unwrap_or(0) >= cap
        {
            return Admission::Wait(step, "concurrency");
        }
        if let Some((interval, tau)) = rate {
            let tat = self.tat.entry(step.clone()).or_insert(0.0);
            if *tat - tau > now {
                return Admission::Wait(step, "rate");
            }
            *tat = tat.max(now) + interval;
        }
        match cap {
            Some(_) => {
                *self.used.entry(step.clone()).or_default() += 1;
                Admission::Slot(step)
            }
            None => Admission::Free,
        }
    }

    /// Parks `p` until its step's rate lets it start; returns when that is (ms).
    pub fn wait_rate(&mut self, step: String, p: Payload) -> f64 {
        let at = self.tat.get(&step).copied().unwrap_or(0.0);
        let wake = self.wake.entry(step.clone()).or_insert(at);
        *wake = wake.min(at);
        self.rate_waiting.entry(step).or_default().push_front(p);
        at
    }

    /// rates.lua: wakes the steps whose time has come; returns the jobs to put back in ready.
    pub fn wake_rates(&mut self, now: f64) -> Vec<Payload> {
        let due: Vec<String> = self
            .wake
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(s, _)| s.clone())
            .collect();
        let mut woken = Vec::new();
        for step in due {
            let Some((interval, tau)) = self.rates.get(&step).copied() else {
                continue;
            };
            let tat = self.tat.get(&step).copied().unwrap_or(0.0);
            let n = match now >= tat - tau {
                true => ((now + tau - tat.max(now)) / interval).floor() as usize + 1,
                false => 0,
            };
            let list = self.rate_waiting.entry(step.clone()).or_default();
            for _ in 0..n {
                match list.pop_back() {
                    Some(p) => woken.push(p),
                    None => break,
                }
            }
            match list.is_empty() {
                true => self.wake.remove(&step),
                false => self.wake.insert(step, tat.max(now) + n as f64 * interval),
            };
        }
        woken
    }

    /// The earliest wake-up of a rate's waiting jobs, ms.
    pub fn next_wake(&self) -> Option<f64> {
        self.wake.values().copied().reduce(f64::min)
    }

    /// Records the slot `p` took as owned by `proc`.
    pub fn hold(&mut self, proc: &str, p: &Payload, step: String) {
        let entry = self
            .slots
            .entry(proc.to_owned())
            .or_default()
            .entry(p.clone())
            .or_insert((0, step));
        entry.0 += 1;
    }

    /// Parks `p` until a slot of `step` frees.
    pub fn wait(&mut self, step: String, p: Payload) {
        self.waiting.entry(step).or_default().push_front(p);
    }

    /// `p` left `proc`: frees its slot, if it held one, and returns the waiting job (if any)
    /// that goes back to ready.
    pub fn release(&mut self, proc: &str, p: &Payload) -> Option<Payload> {
        let held = self.slots.get_mut(proc)?;
        let (n, step) = held.get_mut(p)?;
        let step = step.clone();
        *n -= 1;
        if *n == 0 {
            held.remove(p);
        }
        if let Some(used) = self.used.get_mut(&step) {
            *used = used.saturating_sub(1);
        }
        self.waiting.get_mut(&step)?.pop_back()
    }

    /// Removes and returns the waiting jobs (for a slot or a start) that `wanted` picks
    /// (a cancellation).
    pub fn remove_waiting(&mut self, mut wanted: impl FnMut(&Payload) -> bool) -> Vec<Payload> {
        let mut removed = Vec::new();
        for list in self.waiting.values_mut().chain(self.rate_waiting.values_mut()) {
            list.retain(|p| {
                let pick = wanted(p);
                if pick {
                    removed.push(p.clone());
                }
                !pick
            });
        }
        removed
    }

    /// Jobs waiting per limited step and reason.
    pub fn waiting(&self) -> Vec<(String, &'static str, u64)> {
        let caps = self
            .waiting
            .iter()
            .map(|(s, l)| (s.clone(), "concurrency", l.len() as u64));
        let rates = self
            .rate_waiting
            .iter()
            .map(|(s, l)| (s.clone(), "rate", l.len() as u64));
        caps.chain(rates).collect()
    }

    /// Slots held per capped step, with its cap.
    pub fn usage(&self) -> Vec<(String, u32, u32)> {
        self.limits
            .iter()
            .map(|(s, cap)| (s.clone(), self.used.get(s).copied().unwrap_or(0), *cap))
            .collect()
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting
            .values()
            .chain(self.rate_waiting.values())
            .map(VecDeque::len)
            .sum()
    }
}

/// The payload's step, read as `claim.lua` reads it: a JSON object's string `step` field.
fn step_of(p: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Step {
        step: String,
    }
    serde_json::from_slice::<Step>(p).ok().map(|s| s.step)
}
