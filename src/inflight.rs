//! The payloads this process currently holds, by identity: what to restore if Redis forgets our
//! claims, and what to compare our Redis list against after a blocking-connection error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::lease::Identity;
use crate::queue::Payload;

#[derive(Default)]
pub struct InFlight {
    jobs: Mutex<HashMap<u64, (Payload, Arc<Identity>)>>,
    next: std::sync::atomic::AtomicU64,
}

/// Removes its entry when dropped, so every exit path of a job (settled, dropped, panicked
/// pipeline) keeps the table exact.
pub struct Ticket {
    table: Arc<InFlight>,
    key: u64,
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

impl InFlight {
    pub fn track(self: &Arc<Self>, payload: Payload, identity: Arc<Identity>) -> Ticket {
        let key = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.jobs.lock().unwrap().insert(key, (payload, identity));
        Ticket {
            table: self.clone(),
            key,
        }
    }

    pub fn payloads_of(&self, identity: &Identity) -> Vec<Payload> {
        self.jobs
            .lock()
            .unwrap()
            .values()
            .filter(|(_, id)| id.wid == identity.wid)
            .map(|(p, _)| p.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
