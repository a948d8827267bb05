//! `STEP_CONCURRENCY` on the memory queue: the bookkeeping `claim.lua`, `settle.lua` and
//! `reap.lua` keep in Redis (`cap_used`, each worker's `slots`, each step's `throttled` list),
//! held here under the memory queue's lock. Same rules: a job over its step's cap is not claimed
//! and waits; a slot is owned by the worker's in-flight list and freed when its job leaves it;
//! each freed slot lets one waiting job back to the consumer end of ready.

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
}

/// What the claim decided for one payload.
pub enum Admission {
    /// Uncapped (or no step to read): runs.
    Free,
    /// Took a slot of this step: runs.
    Slot(String),
    /// Every slot of this step is held: waits.
    Wait(String),
}

impl Caps {
    pub fn set(&mut self, limits: HashMap<String, u32>) {
        self.limits = limits;
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Decides for `p` and counts the slot it takes (recorded by [`Caps::hold`] once claimed).
    pub fn admit(&mut self, p: &Payload) -> Admission {
        let Some(step) = step_of(p) else {
            return Admission::Free;
        };
        let Some(cap) = self.limits.get(&step).copied() else {
            return Admission::Free;
        };
        let used = self.used.entry(step.clone()).or_default();
        if *used >= cap {
            return Admission::Wait(step);
        }
        *used += 1;
        Admission::Slot(step)
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

    /// Jobs waiting per capped step.
    pub fn waiting(&self) -> Vec<(String, u64)> {
        self.waiting.iter().map(|(s, l)| (s.clone(), l.len() as u64)).collect()
    }

    /// Slots held per capped step, with its cap.
    pub fn usage(&self) -> Vec<(String, u32, u32)> {
        self.limits
            .iter()
            .map(|(s, cap)| (s.clone(), self.used.get(s).copied().unwrap_or(0), *cap))
            .collect()
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
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
