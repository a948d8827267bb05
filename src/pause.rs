//! The operator's pause switches as this worker last saw them. Heartbeats refresh them (no extra
//! Redis command), so every worker stops claiming within one heartbeat of `step-worker pause`.

use std::collections::HashSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Pause {
    paused: AtomicBool,
    steps: RwLock<HashSet<String>>,
    changed: Notify,
}

impl Pause {
    /// Records what the last heartbeat saw; true if the whole queue has just become paused.
    pub fn update(&self, paused: bool, steps: Vec<String>) -> bool {
        let was = self.paused.swap(paused, Ordering::AcqRel);
        let steps: HashSet<String> = steps.into_iter().collect();
        let mut current = self.steps.write().unwrap();
        let changed = was != paused || *current != steps;
        if *current != steps {
            *current = steps;
        }
        drop(current);
        if changed {
            if paused != was {
                tracing::warn!(paused, "queue pause switched by an operator");
            }
            self.changed.notify_waiters();
        }
        paused && !was
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn is_step_paused(&self, step: &str) -> bool {
        self.steps.read().unwrap().contains(step)
    }

    pub fn paused_steps(&self) -> Vec<String> {
        let mut v: Vec<String> = self.steps.read().unwrap().iter().cloned().collect();
        v.sort();
        v
    }

    /// Waits while the queue is paused (or until `stop`).
    pub async fn wait_unpaused(&self, stop: &CancellationToken) {
        while self.is_paused() && !stop.is_cancelled() {
            let notified = self.changed.notified();
            tokio::select! {
                _ = notified => {}
                _ = stop.cancelled() => return,
                // A notification that raced the check above is caught on the next round.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
