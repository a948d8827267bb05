//! The promoter: moves due retries from the delayed set back to the ready list, waking at the
//! next known due time instead of polling.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::queue::Queue;

/// Wakes up when the earliest known retry is due and moves due retries back to ready. It learns
/// due times from this worker's own retries and from heartbeats (other workers' retries), so
/// promotion is prompt without polling.
#[derive(Default)]
pub struct Promoter {
    next: Mutex<Option<Instant>>,
    wake: Notify,
}

impl Promoter {
    pub fn schedule(&self, after: Duration) {
        let at = Instant::now() + after;
        let mut next = self.next.lock().unwrap();
        if next.is_none_or(|n| at < n) {
            *next = Some(at);
            drop(next);
            self.wake.notify_one();
        }
    }

    pub async fn run(&self, queue: Queue, metrics: Arc<Metrics>, stop: CancellationToken) {
        loop {
            let next = *self.next.lock().unwrap();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => continue,
                _ = sleep => {}
            }
            *self.next.lock().unwrap() = None;
            match queue.promote().await {
                Ok((_, Some(due))) => self.schedule(due),
                Ok((_, None)) => {}
                Err(e) => {
                    metrics.redis_errors.with_label_values(&["promote"]).inc();
                    tracing::warn!(error = %e, "promoting due retries failed; the next heartbeat retries it");
                }
            }
        }
    }
}
