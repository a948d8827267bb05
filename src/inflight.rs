//! The payloads this process currently holds, by identity: what to restore if Redis forgets our
//! claims, what to compare our Redis list against after a blocking-connection error, and whose
//! cancellation token to fire when an operator cancels one of them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::lease::Identity;
use crate::queue::Payload;

#[derive(Default)]
pub struct InFlight {
    jobs: Mutex<HashMap<u64, Entry>>,
    next: std::sync::atomic::AtomicU64,
}

struct Entry {
    payload: Payload,
    identity: Arc<Identity>,
    /// The job's token: its step observes it ([`crate::handler::StepContext::cancel`]).
    cancel: CancellationToken,
    /// An operator cancelled the job (rather than the lease or shutdown stopping it).
    by_operator: bool,
}

/// Removes its entry when dropped, so every exit path of a job (settled, dropped, panicked
/// pipeline) keeps the table exact.
pub struct Ticket {
    table: Arc<InFlight>,
    key: u64,
    cancel: CancellationToken,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.table.jobs.lock().unwrap().remove(&self.key);
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({})", self.key)
    }
}

impl Ticket {
    /// The job's cancellation token: fired when the lease is lost (it is a child of the lease's
    /// execution token), at a hard shutdown, or when an operator cancels the job.
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether an operator cancelled the job. One atomic load while it was not cancelled at all.
    pub fn cancelled_by_operator(&self) -> bool {
        self.cancel.is_cancelled()
            && self
                .table
                .jobs
                .lock()
                .unwrap()
                .get(&self.key)
                .is_some_and(|e| e.by_operator)
    }
}

impl InFlight {
    /// Tracks `payload`, claimed under `identity`, with `cancel` as its job's token.
    pub fn track(self: &Arc<Self>, payload: Payload, identity: Arc<Identity>, cancel: CancellationToken) -> Ticket {
        let key = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = Entry {
            payload,
            identity,
            cancel: cancel.clone(),
            by_operator: false,
        };
        self.jobs.lock().unwrap().insert(key, entry);
        Ticket {
            table: self.clone(),
            key,
            cancel,
        }
    }

    pub fn payloads_of(&self, identity: &Identity) -> Vec<Payload> {
        self.jobs
            .lock()
            .unwrap()
            .values()
            .filter(|e| e.identity.wid == identity.wid)
            .map(|e| e.payload.clone())
            .collect()
    }

    /// Cancels, on an operator's behalf, the jobs of worker `wid` whose id is among `ids`;
    /// returns the ids it holds (the others it no longer holds: settled, or never claimed).
    pub fn cancel(&self, wid: &str, ids: &[String]) -> HashSet<String> {
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut held = HashSet::new();
        for e in self.jobs.lock().unwrap().values_mut().filter(|e| e.identity.wid == wid) {
            let Some(id) = job_id(&e.payload) else { continue };
            if wanted.contains(id.as_str()) {
                e.by_operator = true;
                e.cancel.cancel();
                held.insert(id);
            }
        }
        held
    }

    pub fn len(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A payload's `id`, read only here, where a cancellation needs it (the runner decodes jobs).
fn job_id(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Id>(payload).ok().map(|j| j.id)
}
