//! Pacing of the observability requests (`/health`, `/health/live`, `/metrics`): at most
//! [`RATE_PER_SEC`] a second after a burst of [`BURST`]; beyond that a request waits its turn
//! instead of being refused, so a probe behind a flood is late, never failed. Anyone who reaches
//! the port can send these requests flat out, and each answered one costs CPU on the machine the
//! job path runs on (and the sender's loop, often on the same machine, costs more): paced, a flood
//! costs a few hundred answers a second. `/jobs` is not paced: producers' enqueues are the work.
//!
//! The schedule is GCRA (the generic cell rate algorithm): a theoretical arrival time advances by
//! one interval per request, and a request waits until it is at most `BURST` intervals ahead.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Sustained observability requests answered per second: platforms probe every few seconds and
/// Prometheus scrapes every 15 s, so 200 leaves room for dozens of probers and scrapers.
pub const RATE_PER_SEC: u32 = 200;
/// Requests answered at once before pacing starts: a dashboard's or a fleet's probes arriving
/// together are not delayed.
pub const BURST: u32 = 50;

/// The shared schedule. The lock is held only to read and advance one instant.
pub struct Pacer {
    interval: Duration,
    burst: Duration,
    tat: Mutex<Option<Instant>>,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new(RATE_PER_SEC, BURST)
    }
}

impl Pacer {
    /// `rate` requests a second (at least 1), after `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Self {
        let interval = Duration::from_secs(1) / rate.max(1);
        Pacer {
            interval,
            burst: interval * burst,
            tat: Mutex::new(None),
        }
    }

    /// Waits for this request's turn.
    pub async fn wait(&self) {
        let now = Instant::now();
        let start = {
            let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
            let next = tat.map_or(now, |t| t.max(now)) + self.interval;
            *tat = Some(next);
            next.checked_sub(self.burst + self.interval).unwrap_or(now)
        };
        if start > now {
            tokio::time::sleep_until(start).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::Pacer;

    /// 200 requests at once at 100 a second after a burst of 10: the first 11 go at once, the
    /// last waits (200 - 11) intervals, and no request is refused.
    #[tokio::test(start_paused = true)]
    async fn a_flood_is_answered_at_the_rate_after_the_burst() {
        let pacer = Arc::new(Pacer::new(100, 10));
        let start = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..200 {
            let pacer = pacer.clone();
            waits.push(tokio::spawn(async move {
                pacer.wait().await;
                start.elapsed()
            }));
        }
        let mut done = Vec::new();
        for w in waits {
            done.push(w.await.unwrap());
        }
        done.sort();
        assert_eq!(done.iter().filter(|d| d.is_zero()).count(), 11, "{done:?}");
        let last = *done.last().unwrap();
        assert!(
            last >= Duration::from_millis(1890) && last < Duration::from_millis(1900),
            "{last:?}"
        );
    }

    /// Requests spaced at the rate never wait, however many.
    #[tokio::test(start_paused = true)]
    async fn requests_at_the_rate_never_wait() {
        let pacer = Pacer::new(100, 0);
        for _ in 0..50 {
            let before = Instant::now();
            pacer.wait().await;
            assert_eq!(before.elapsed(), Duration::ZERO);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
