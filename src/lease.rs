//! This worker's identity and lease: the heartbeat that keeps it registered, and the fence that
//! stops it from executing or persisting once it can no longer prove it is alive.
//!
//! The timing argument: the registry deadline is `WORKER_DEADLINE_MS` after a beat *arrives*, and
//! others reap only after deadline + grace. We fence ourselves `FENCE_FRACTION` of the deadline
//! after the last successful beat was *sent* (monotonic clock), which is always earlier. So unless
//! the whole process is frozen (SIGSTOP, VM pause), a worker stops executing before anyone can
//! take its jobs, and the jobs of a fenced worker are never run twice at the same time.
//!
//! The fence is kept by the clock, not by the heartbeat: a [`watchdog`] on a plain OS thread
//! cancels running steps once the last good beat is older than the fence time, so a heartbeat
//! that cannot run (a runtime whose threads a step blocks, a beat stuck behind other work) still
//! fences. A step that blocks its thread cannot observe the cancellation; its outcome is then
//! held back by the same clock ([`Lease::is_valid`]) until a beat proves the job is still ours.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Fence after 2/3 of the deadline without a successful beat (20 s of the default 30 s), leaving
/// a third for the reaper's side of the race plus clock-rate differences.
const FENCE_NUM: u32 = 2;
const FENCE_DEN: u32 = 3;

/// One registration of this process in the worker registry. A reaped worker re-registers under a
/// new identity; jobs claimed under the old one keep a reference to it and are dropped.
#[derive(Debug)]
pub struct Identity {
    pub wid: String,
    pub proc_key: String,
    reaped: AtomicBool,
    /// The registry has accepted this id at least once.
    registered: AtomicBool,
}

impl Identity {
    /// A new registration: a new worker id and its own in-flight list.
    fn fresh(queue_keys: &crate::queue::Keys) -> Arc<Self> {
        let wid = new_worker_id();
        Arc::new(Identity {
            proc_key: queue_keys.proc(&wid),
            wid,
            reaped: AtomicBool::new(false),
            registered: AtomicBool::new(false),
        })
    }

    pub fn is_reaped(&self) -> bool {
        self.reaped.load(Ordering::Acquire)
    }

    /// Whether the registry has accepted this id (a beat for an id it never saw means "reaped").
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }

    pub fn set_registered(&self) {
        self.registered.store(true, Ordering::Release);
    }
}

/// A new worker id: hostname, pid and a random part, never a configured name (replicas share
/// their configuration; container restarts reuse pids).
pub fn new_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().replace(['{', '}', '|'], "_"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{host}:{}:{:08x}", std::process::id(), rand::random::<u32>())
}

struct State {
    identity: Arc<Identity>,
    last_ok_sent: Option<Instant>,
    /// Start of the current unbroken run of successful beats.
    streak_since: Option<Instant>,
    exec: CancellationToken,
}

pub struct Lease {
    state: Mutex<State>,
    deadline: Duration,
    changed: Notify,
}

impl Lease {
    pub fn new(queue_keys: &crate::queue::Keys, deadline: Duration) -> Self {
        let identity = Identity::fresh(queue_keys);
        Lease {
            state: Mutex::new(State {
                identity,
                last_ok_sent: None,
                streak_since: None,
                exec: CancellationToken::new(),
            }),
            deadline,
            changed: Notify::new(),
        }
    }

    pub fn identity(&self) -> Arc<Identity> {
        self.state.lock().unwrap().identity.clone()
    }

    pub fn fence_after(&self) -> Duration {
        self.deadline * FENCE_NUM / FENCE_DEN
    }

    /// Whether this worker may claim, execute and persist right now.
    pub fn is_valid(&self) -> bool {
        let s = self.state.lock().unwrap();
        !s.identity.is_reaped() && s.last_ok_sent.is_some_and(|t| t.elapsed() < self.fence_after())
    }

    /// How long this worker may still hold a claim: the time until the fence, zero once fenced.
    /// A blocking claim never waits longer, so a worker whose lease lapses has none outstanding
    /// (a reaper returns jobs to the end a still-waiting claim would take them from).
    pub fn time_left(&self) -> Duration {
        let s = self.state.lock().unwrap();
        if s.identity.is_reaped() {
            return Duration::ZERO;
        }
        s.last_ok_sent
            .map_or(Duration::ZERO, |t| self.fence_after().saturating_sub(t.elapsed()))
    }

    /// Fences (cancels running steps) if the last good beat is older than the fence time.
    /// Returns true if this call fenced. The watchdog calls it; so does a failed beat.
    pub fn check_expired(&self) -> bool {
        let s = self.state.lock().unwrap();
        // Before a first beat (and after a reap) nothing runs under the token: nothing to fence.
        let expired = s.last_ok_sent.is_some_and(|t| t.elapsed() >= self.fence_after());
        if expired && !s.exec.is_cancelled() {
            s.exec.cancel();
            return true;
        }
        false
    }

    /// Time since the last successful beat was sent (`None` before the first).
    pub fn since_last_ok(&self) -> Option<Duration> {
        self.state.lock().unwrap().last_ok_sent.map(|t| t.elapsed())
    }

    /// How long beats have succeeded without a break. The reaper acts only once this exceeds the
    /// deadline: after a Redis restart or our own outage, every other worker's deadline looks
    /// expired until they beat again, and they get a full deadline to do so.
    pub fn streak(&self) -> Duration {
        self.state
            .lock()
            .unwrap()
            .streak_since
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// A token cancelled when the lease is lost; running steps observe a child of it.
    pub fn exec_token(&self) -> CancellationToken {
        self.state.lock().unwrap().exec.clone()
    }

    /// Records a successful beat sent at `sent`. Returns true if this lifted a fence.
    pub fn beat_ok(&self, sent: Instant) -> bool {
        let mut s = self.state.lock().unwrap();
        let was_fenced = s
            .last_ok_sent
            .is_some_and(|t| sent.duration_since(t) >= self.fence_after());
        s.last_ok_sent = Some(sent);
        // The streak counts from when Redis answered, not from when we asked: a beat sent during an
        // outage and answered after it proves nothing about the time in between. A gap as long as
        // the fence breaks the streak as a failed beat would: others' beats may have stalled as
        // long, so their deadlines are no evidence yet.
        if was_fenced {
            s.streak_since = None;
        }
        s.streak_since.get_or_insert_with(Instant::now);
        if s.exec.is_cancelled() {
            s.exec = CancellationToken::new();
        }
        drop(s);
        self.changed.notify_waiters();
        was_fenced
    }

    /// Records a failed beat. Returns true if the lease has just expired and running steps were
    /// cancelled.
    pub fn beat_failed(&self) -> bool {
        self.state.lock().unwrap().streak_since = None;
        self.check_expired()
    }

    /// We were reaped: our jobs belong to others now. Cancel what runs, and take a new identity
    /// (the caller registers it). Returns the new identity.
    pub fn reaped(&self, queue_keys: &crate::queue::Keys) -> Arc<Identity> {
        let mut s = self.state.lock().unwrap();
        s.identity.reaped.store(true, Ordering::Release);
        s.exec.cancel();
        s.exec = CancellationToken::new();
        s.last_ok_sent = None;
        s.streak_since = None;
        s.identity = Identity::fresh(queue_keys);
        let id = s.identity.clone();
        drop(s);
        self.changed.notify_waiters();
        id
    }

    /// Interrupts every running step for good (the end of a shutdown drain).
    pub fn interrupt_all(&self) {
        self.state.lock().unwrap().exec.cancel();
    }

    /// Waits until the lease is valid again (or `stop` is cancelled).
    pub async fn wait_valid(&self, stop: &CancellationToken) {
        loop {
            let notified = self.changed.notified();
            if self.is_valid() || stop.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = stop.cancelled() => return,
                // The lease may also become valid by the passage of time alone (never), or invalid;
                // re-check now and then in case a notification raced the check above.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// How often the watchdog looks at the clock: a small share of the fence time, so a fence comes
/// at most this late, and never so often that it costs anything.
fn watchdog_period(fence_after: Duration) -> Duration {
    (fence_after / 20).clamp(Duration::from_millis(10), Duration::from_millis(500))
}

/// Starts the lease's watchdog: a plain OS thread, so it runs however busy or blocked the async
/// runtime is. It fences the worker once the last good beat is older than the fence time
/// (calling `on_fence` once per fence, for the log and the metric), and ends when `stop` is
/// cancelled or the lease is dropped.
pub fn watchdog(
    lease: &Arc<Lease>,
    stop: CancellationToken,
    on_fence: impl Fn(Duration) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let period = watchdog_period(lease.fence_after());
    let lease = Arc::downgrade(lease);
    std::thread::Builder::new()
        .name("lease-watchdog".to_owned())
        .spawn(move || {
            while !stop.is_cancelled() {
                let Some(lease) = lease.upgrade() else { return };
                if lease.check_expired() {
                    on_fence(lease.since_last_ok().unwrap_or_default());
                }
                drop(lease);
                std::thread::sleep(period);
            }
        })
}
