//! `QUEUE_DRIVER=memory`: the same queue protocol held in this process's memory, for a first run
//! and for local development without Redis. Every operation mirrors its Lua script (see
//! `lua/*.lua`) on in-process structures under one lock, so the claimer, pipeline and heartbeat
//! run unchanged on top of it.
//!
//! What it does not guarantee: the queue lives and dies with the process. Jobs still ready,
//! scheduled for a retry or running when the process exits are gone (the shutdown path logs how
//! many). Producers must run in the same process (`POST /jobs`, or an embedding application
//! pushing through [`MemoryQueue::named`]). That is why production refuses this driver.
//!
//! There is nothing to reap: a worker cannot die without the queue dying with it, so the reaper
//! and the poison outbox are always empty here.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::memory_caps::{Admission, Caps, SCAN_EXTRA};

mod cancel;
use super::{Beat, BeatMode, BeatStatus, ClaimReply, Counters, Depths, Keys, Payload, SettleOp};

/// Due retries moved per promotion, as `scripts::PROMOTE_LIMIT` does for Redis.
const PROMOTE_LIMIT: usize = 500;
/// Jobs a memory queue holds (ready, delayed and in flight) until told otherwise
/// (`MEMORY_QUEUE_MAX_JOBS`): about 25 MB of small jobs, far beyond a first run's needs, far
/// below what exhausts a laptop.
pub const DEFAULT_MAX_JOBS: usize = 100_000;

/// A push refused because the queue would hold more than its limit; nothing was pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the memory queue is full: it holds {held} jobs, {adding} more would pass MEMORY_QUEUE_MAX_JOBS ({max})")]
pub struct Full {
    pub held: usize,
    pub adding: usize,
    pub max: usize,
}

/// The in-process queue named by one `QUEUE_KEY`. Cheap to clone; clones share the queue.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

struct Inner {
    /// The same key names as on Redis: workers' in-flight lists are named by them.
    keys: Keys,
    state: Mutex<State>,
    /// Most jobs held at once ([`DEFAULT_MAX_JOBS`] until [`MemoryQueue::set_max_jobs`]).
    max_jobs: AtomicUsize,
    /// Wakes a blocked claim: a push, a promoted retry, a requeue, or `unblock`.
    wake: Notify,
}

#[derive(Default)]
struct State {
    /// Front is the producer end (`LPUSH`), back the consumer end, as the Redis list.
    ready: VecDeque<Payload>,
    /// Each worker's claimed, unsettled jobs, by in-flight list name.
    procs: HashMap<String, VecDeque<Payload>>,
    /// Registered workers and their heartbeat deadlines (ms since the epoch).
    workers: HashMap<String, u64>,
    /// Workers that deregistered or were replaced: their claims are fenced.
    gone: HashSet<String>,
    /// Scheduled retries by (due ms, insertion order).
    delayed: BTreeMap<(u64, u64), Payload>,
    seq: u64,
    /// Failed attempts per payload (the Redis driver keys them by the payload's SHA-1).
    attempts: HashMap<Payload, u32>,
    /// `STEP_CONCURRENCY`: slots held and jobs waiting for one.
    caps: Caps,
    /// Job id → the worker running a copy of it (active.lua).
    active: HashMap<String, String>,
    /// `<in-flight list>\n<job id>` of the claimed jobs an operator cancelled (cancel.lua's
    /// hash, keyed by list rather than worker id: the list is what a claim records here).
    cancel: HashSet<String>,
    /// The cancelled outbox: `attempts|at_ms|by|payload` entries waiting for their rows.
    cancelled: VecDeque<Vec<u8>>,
}

/// Every memory queue of this process, by queue key, so producers in the process (the HTTP
/// server, tests, an embedding application) reach the queue the worker claims from.
static QUEUES: LazyLock<Mutex<HashMap<String, MemoryQueue>>> = LazyLock::new(Default::default);

/// Now in ms with a fraction, for the rates' GCRA (an interval may be a fraction of a ms).
fn now_ms_precise() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl MemoryQueue {
    /// The process's queue for `queue_key`, created empty on first use.
    pub fn named(queue_key: &str) -> Self {
        let mut queues = QUEUES.lock().unwrap_or_else(|e| e.into_inner());
        queues
            .entry(queue_key.to_owned())
            .or_insert_with(|| MemoryQueue {
                inner: Arc::new(Inner {
                    keys: Keys::new(queue_key),
                    state: Mutex::new(State::default()),
                    max_jobs: AtomicUsize::new(DEFAULT_MAX_JOBS),
                    wake: Notify::new(),
                }),
            })
            .clone()
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Sets the most jobs this queue holds at once (`MEMORY_QUEUE_MAX_JOBS`); pushes past it are
    /// refused with [`Full`]. Jobs already held stay.
    pub fn set_max_jobs(&self, max: usize) {
        self.inner.max_jobs.store(max, Ordering::Relaxed);
    }

    /// Enforces `STEP_CONCURRENCY` on this queue's claims, as `RedisQueue::with_caps` does.
    pub fn set_caps(&self, limits: &crate::config::Limits) {
        self.state().caps.set(limits);
    }

    /// hold_step.lua: holds `step` for `hold`; claims move its jobs to the delayed set until then.
    pub fn hold_step(&self, step: &str, hold: Duration) {
        self.state()
            .caps
            .hold_step(step, now_ms_precise() + hold.as_secs_f64() * 1000.0);
    }

    // A panic while holding the lock cannot leave the state half-changed in a way that matters
    // more than stopping the whole queue would, so a poisoned lock is simply taken over.
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// heartbeat.lua: record the deadline, promote due retries.
    pub fn heartbeat(&self, wid: &str, deadline: Duration, mode: BeatMode) -> Beat {
        let status = {
            let mut s = self.state();
            let mut status = BeatStatus::Ok;
            if mode == BeatMode::Beat && !s.workers.contains_key(wid) {
                if s.gone.contains(wid) {
                    return beat(BeatStatus::Reaped, None);
                }
                status = BeatStatus::Reregistered;
            }
            s.workers.insert(wid.to_owned(), now_ms() + deadline.as_millis() as u64);
            status
        };
        let (_, next_due) = self.promote();
        let mut beat = beat(status, next_due);
        (beat.cancel, beat.cancelled_pending) = self.cancels_for(wid);
        beat
    }

    /// claim.lua: move up to `n` of the oldest ready jobs into `proc`, with attempt counts. No
    /// payload is ever a suspect here: none can be recovered from a dead worker (see above).
    pub fn claim(&self, wid: &str, proc: &str, n: usize, extra: &[Payload]) -> ClaimReply {
        let mut s = self.state();
        if !s.workers.contains_key(wid) {
            return ClaimReply {
                fenced: true,
                ..ClaimReply::default()
            };
        }
        if !s.caps.is_empty() {
            return s.claim_capped(proc, n, extra);
        }
        let mut taken = Vec::with_capacity(n);
        while taken.len() < n {
            let Some(p) = s.ready.pop_back() else { break };
            taken.push(p);
        }
        let list = s.procs.entry(proc.to_owned()).or_default();
        for p in &taken {
            list.push_front(p.clone());
        }
        let jobs = taken
            .into_iter()
            .map(|p| {
                let c = s.counters(&p);
                (p, c)
            })
            .collect();
        let extra = extra.iter().map(|p| s.counters(p)).collect();
        ClaimReply {
            fenced: false,
            jobs,
            extra,
            suspect_waiting: false,
            throttled: Vec::new(),
            rate_wake: None,
        }
    }

    /// BLMOVE: waits up to `block` for one job and moves it into `proc`. `None` on timeout or
    /// when woken by [`MemoryQueue::unblock`].
    pub async fn blocking_claim(&self, proc: &str, block: Duration) -> Option<Payload> {
        let notified = self.inner.wake.notified();
        tokio::pin!(notified);
        // Registered before the first look, so a push between the look and the wait still wakes.
        notified.as_mut().enable();
        if let Some(p) = self.take_one(proc) {
            return Some(p);
        }
        tokio::select! {
            _ = notified => self.take_one(proc),
            _ = tokio::time::sleep(block) => None,
        }
    }

    fn take_one(&self, proc: &str) -> Option<Payload> {
        let mut s = self.state();
        let p = s.ready.pop_back()?;
        s.procs.entry(proc.to_owned()).or_default().push_front(p.clone());
        Some(p)
    }

    /// CLIENT UNBLOCK: ends a blocked claim now.
    pub fn unblock(&self) {
        self.inner.wake.notify_one();
    }

    /// active.lua: grants each id to `wid` unless a live worker (or an earlier id of `ids`)
    /// holds it.
    pub fn take_active(&self, wid: &str, ids: &[&str]) -> Vec<bool> {
        let mut s = self.state();
        let s = &mut *s;
        ids.iter()
            .map(|id| {
                let free = match s.active.get(*id) {
                    None => true,
                    Some(holder) => holder != wid && !s.workers.contains_key(holder),
                };
                if free {
                    s.active.insert((*id).to_owned(), wid.to_owned());
                }
                free
            })
            .collect()
    }

    /// settle.lua: each op applies only if the payload is still in `proc`.
    pub fn settle(&self, proc: &str, ops: &[SettleOp]) -> Vec<bool> {
        let now = now_ms();
        let wid = proc.strip_prefix(self.keys().proc_prefix()).unwrap_or(proc);
        let mut s = self.state();
        let mut woke = false;
        let mut last = false;
        let res = ops
            .iter()
            .filter_map(|op| {
                let p = match op {
                    // As settle.lua: only after its job's op found the job ours; no reply entry.
                    SettleOp::Release { id } => {
                        if last {
                            s.active.remove(id);
                        }
                        return None;
                    }
                    SettleOp::Done(p)
                    | SettleOp::Retry(p, _)
                    | SettleOp::Delay(p, _, _)
                    | SettleOp::Requeue(p)
                    | SettleOp::Hold(p, _) => p,
                };
                last = s.remove_from(proc, p);
                if !last {
                    return Some(false);
                }
                if let Some(freed) = s.caps.release(proc, p) {
                    s.ready.push_back(freed);
                    woke = true;
                }
                if cancel::divert_if_cancelled(&mut s, (proc, wid), p, op) {
                    return Some(true);
                }
                match op {
                    SettleOp::Done(p) => {
                        s.attempts.remove(p);
                    }
                    SettleOp::Retry(p, delay) => {
                        *s.attempts.entry(p.clone()).or_default() += 1;
                        s.schedule(p.clone(), now + delay.as_millis() as u64);
                    }
                    SettleOp::Delay(p, delay, scheduled) => {
                        // As settle.lua: a stamped copy's counters start afresh.
                        if scheduled != p {
                            s.attempts.remove(p);
                        }
                        s.schedule(scheduled.clone(), now + delay.as_millis() as u64);
                    }
                    // Steps cannot be paused here (no operator reaches this process's memory),
                    // so a held job simply goes back to ready, as settle.lua does for a step that
                    // was resumed meanwhile.
                    SettleOp::Requeue(p) | SettleOp::Hold(p, _) => {
                        s.ready.push_back(p.clone());
                        woke = true;
                    }
                    SettleOp::Release { .. } => unreachable!("handled above"),
                }
                Some(true)
            })
            .collect();
        drop(s);
        if woke {
            self.inner.wake.notify_one();
        }
        res
    }

    /// promote.lua: moves due retries to ready; returns how many and when the next is due.
    pub fn promote(&self) -> (u64, Option<Duration>) {
        let now = now_ms();
        let mut s = self.state();
        let moved = s.promote(now);
        let next = s.next_due(now);
        drop(s);
        if moved > 0 {
            self.inner.wake.notify_one();
        }
        (moved as u64, next)
    }

    /// adopt.lua: puts payloads still running here back into `proc` if they are missing.
    pub fn adopt(&self, proc: &str, payloads: &[Payload]) -> u64 {
        let mut s = self.state();
        let list = s.procs.entry(proc.to_owned()).or_default();
        let mut added = 0;
        for p in payloads {
            if !list.contains(p) {
                list.push_front(p.clone());
                added += 1;
            }
        }
        added
    }

    pub fn list(&self, proc: &str) -> Vec<Vec<u8>> {
        let s = self.state();
        s.procs
            .get(proc)
            .map(|l| l.iter().map(|p| p.to_vec()).collect())
            .unwrap_or_default()
    }

    /// The worker leaves: a later heartbeat or claim of `wid` is fenced.
    pub fn deregister(&self, wid: &str) {
        let mut s = self.state();
        s.workers.remove(wid);
        s.gone.insert(wid.to_owned());
    }

    pub fn depths(&self) -> Depths {
        let s = self.state();
        Depths {
            ready: s.ready.len() as u64,
            delayed: s.delayed.len() as u64,
            in_flight: s.procs.values().map(|l| l.len() as u64).sum(),
            workers: s.workers.len() as u64,
            poison: 0,
            cancelled: s.cancelled.len() as u64,
            held: 0,
            paused: false,
            waiting: s.caps.waiting(),
            caps: s.caps.usage(),
        }
    }

    /// The ready payloads, newest first (as `LRANGE 0 -1` lists them).
    pub fn ready(&self) -> Vec<Vec<u8>> {
        self.state().ready.iter().map(|p| p.to_vec()).collect()
    }

    /// Payloads with a failed-attempt counter (the `attempts` hash's length on Redis).
    pub fn attempt_counters(&self) -> usize {
        self.state().attempts.len()
    }

    /// `LPUSH`, as a producer does.
    pub fn push(&self, payload: &[u8]) -> Result<(), Full> {
        self.push_many(&[payload])
    }

    /// One `LPUSH` of several payloads, under one lock: a claim sees all of them or none, and a
    /// queue without room for all of them takes none.
    pub fn push_many<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(), Full> {
        let mut s = self.state();
        let held =
            s.ready.len() + s.delayed.len() + s.procs.values().map(VecDeque::len).sum::<usize>() + s.caps.waiting_len();
        let max = self.inner.max_jobs.load(Ordering::Relaxed);
        if held.saturating_add(payloads.len()) > max {
            return Err(Full {
                held,
                adding: payloads.len(),
                max,
            });
        }
        for p in payloads {
            s.ready.push_front(Payload::from(p.as_ref()));
        }
        drop(s);
        self.inner.wake.notify_one();
        Ok(())
    }
}

/// A heartbeat's answer: nothing is ever reaped, poisoned or paused in memory.
fn beat(status: BeatStatus, next_due: Option<Duration>) -> Beat {
    Beat {
        status,
        next_due,
        reap_needed: false,
        poison_pending: 0,
        paused: false,
        paused_steps: Vec::new(),
        cancel: Vec::new(),
        cancelled_pending: 0,
        cancel_orphans: Vec::new(),
    }
}

impl State {
    fn counters(&self, p: &Payload) -> Counters {
        Counters {
            failures: self.attempts.get(p).copied().unwrap_or(0),
            suspect: false,
            throttled: false,
        }
    }

    /// claim.lua with caps: jobs over their step's cap wait aside, the batch goes on past them.
    fn claim_capped(&mut self, proc: &str, n: usize, extra: &[Payload]) -> ClaimReply {
        let now = now_ms_precise();
        let mut wake: Option<f64> = None;
        let mut throttled = Vec::new();
        let mut extra_counters = Vec::with_capacity(extra.len());
        for p in extra {
            let mut c = self.counters(p);
            match self.caps.admit(p, now) {
                Admission::Free => {}
                Admission::Slot(step) => self.caps.hold(proc, p, step),
                Admission::Wait(step, reason) => {
                    self.remove_from(proc, p);
                    self.park(step.clone(), reason, p.clone(), &mut wake);
                    throttled.push((step, reason.to_owned()));
                    c.throttled = true;
                }
                Admission::Held(step, until) => {
                    self.remove_from(proc, p);
                    self.delay_held(p.clone(), until, &mut wake);
                    throttled.push((step, "backpressure".to_owned()));
                    c.throttled = true;
                }
            }
            extra_counters.push(c);
        }
        let mut taken = Vec::with_capacity(n);
        let mut scanned = 0;
        while taken.len() < n && scanned < n + SCAN_EXTRA {
            let Some(p) = self.ready.pop_back() else { break };
            scanned += 1;
            match self.caps.admit(&p, now) {
                Admission::Free => taken.push(p),
                Admission::Slot(step) => {
                    self.caps.hold(proc, &p, step);
                    taken.push(p);
                }
                Admission::Wait(step, reason) => {
                    self.park(step.clone(), reason, p, &mut wake);
                    throttled.push((step, reason.to_owned()));
                }
                Admission::Held(step, until) => {
                    self.delay_held(p, until, &mut wake);
                    throttled.push((step, "backpressure".to_owned()));
                }
            }
        }
        let list = self.procs.entry(proc.to_owned()).or_default();
        for p in &taken {
            list.push_front(p.clone());
        }
        let jobs = taken
            .into_iter()
            .map(|p| {
                let c = self.counters(&p);
                (p, c)
            })
            .collect();
        ClaimReply {
            fenced: false,
            jobs,
            extra: extra_counters,
            suspect_waiting: false,
            throttled,
            rate_wake: wake.map(|at| Duration::from_micros(((at - now).max(0.0) * 1000.0) as u64)),
        }
    }

    /// A job of a held step waits in the delayed set until the hold ends (not an attempt).
    fn delay_held(&mut self, p: Payload, until: f64, wake: &mut Option<f64>) {
        self.schedule(p, until.ceil() as u64);
        *wake = Some(wake.map_or(until, |w| w.min(until)));
    }

    /// Parks a job that may not run now in its step's waiting list for `reason`.
    fn park(&mut self, step: String, reason: &str, p: Payload, wake: &mut Option<f64>) {
        match reason {
            "rate" => {
                let at = self.caps.wait_rate(step, p);
                *wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            _ => self.caps.wait(step, p),
        }
    }

    /// `LREM proc -1 p`: removes the occurrence nearest the back (the oldest claim).
    fn remove_from(&mut self, proc: &str, p: &Payload) -> bool {
        let Some(list) = self.procs.get_mut(proc) else {
            return false;
        };
        match list.iter().rposition(|x| x == p) {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        }
    }

    fn schedule(&mut self, p: Payload, due: u64) {
        self.seq += 1;
        self.delayed.insert((due, self.seq), p);
    }

    /// Due retries go to the producer end: they wait behind jobs already queued.
    fn promote(&mut self, now: u64) -> usize {
        let woken = self.caps.wake_rates(now_ms_precise());
        let rate_woken = woken.len();
        self.ready.extend(woken);
        let mut moved = 0;
        while moved < PROMOTE_LIMIT {
            match self.delayed.first_entry() {
                Some(e) if e.key().0 <= now => {
                    let p = e.remove();
                    self.ready.push_front(p);
                    moved += 1;
                }
                _ => break,
            }
        }
        moved + rate_woken
    }

    fn next_due(&self, now: u64) -> Option<Duration> {
        let retry = self.delayed.keys().next().map(|(due, _)| *due);
        let wake = self.caps.next_wake().map(|at| at.ceil().max(0.0) as u64);
        [retry, wake]
            .into_iter()
            .flatten()
            .min()
            .map(|due| Duration::from_millis(due.saturating_sub(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> MemoryQueue {
        MemoryQueue::named(&uuid::Uuid::new_v4().to_string())
    }

    #[test]
    fn claims_oldest_first_and_settles_only_what_is_still_claimed() {
        let q = queue();
        q.push(b"a").unwrap();
        q.push(b"b").unwrap();
        assert!(q.claim("w", "proc:w", 1, &[]).fenced, "unregistered workers are fenced");
        q.heartbeat("w", Duration::from_secs(30), BeatMode::Register);
        let r = q.claim("w", "proc:w", 5, &[]);
        let got: Vec<&[u8]> = r.jobs.iter().map(|(p, _)| &p[..]).collect();
        assert_eq!(got, vec![&b"a"[..], &b"b"[..]]);
        let a = r.jobs[0].0.clone();
        assert_eq!(q.settle("proc:w", &[SettleOp::Done(a.clone())]), vec![true]);
        assert_eq!(
            q.settle("proc:w", &[SettleOp::Done(a)]),
            vec![false],
            "a second settle is a no-op"
        );
        assert_eq!(q.depths().in_flight, 1);
    }

    #[test]
    fn a_retry_counts_the_attempt_and_waits_until_due() {
        let q = queue();
        q.heartbeat("w", Duration::from_secs(30), BeatMode::Register);
        q.push(b"job").unwrap();
        let p = q.claim("w", "proc:w", 1, &[]).jobs.remove(0).0;
        q.settle("proc:w", &[SettleOp::Retry(p.clone(), Duration::from_secs(60))]);
        let d = q.depths();
        assert_eq!((d.ready, d.delayed, d.in_flight), (0, 1, 0));
        assert!(q.promote().1.is_some_and(|due| due > Duration::from_secs(50)));
        q.state().delayed = BTreeMap::from([((0, 0), p)]);
        assert_eq!(q.promote().0, 1);
        assert_eq!(
            q.claim("w", "proc:w", 1, &[]).jobs[0].1.failures,
            1,
            "one failed attempt counted"
        );
    }

    #[test]
    fn a_delay_schedules_the_given_payload_without_counting_an_attempt() {
        let q = queue();
        q.heartbeat("w", Duration::from_secs(30), BeatMode::Register);
        q.push(b"job").unwrap();
        let p = q.claim("w", "proc:w", 1, &[]).jobs.remove(0).0;
        let stamped = Payload::from(&b"stamped job"[..]);
        let op = SettleOp::Delay(p.clone(), Duration::from_secs(60), stamped.clone());
        assert_eq!(q.settle("proc:w", std::slice::from_ref(&op)), vec![true]);
        assert_eq!(q.settle("proc:w", &[op]), vec![false], "a second settle is a no-op");
        let d = q.depths();
        assert_eq!((d.ready, d.delayed, d.in_flight), (0, 1, 0));
        assert_eq!(q.attempt_counters(), 0, "no attempt counted");
        let (_, scheduled) = q.state().delayed.pop_first().unwrap();
        q.state().delayed.insert((0, 0), scheduled);
        assert_eq!(q.promote().0, 1);
        let again = q.claim("w", "proc:w", 1, &[]).jobs.remove(0);
        assert_eq!((&again.0[..], again.1.failures), (&b"stamped job"[..], 0));
    }

    #[test]
    fn a_deregistered_worker_is_fenced() {
        let q = queue();
        q.heartbeat("w", Duration::from_secs(30), BeatMode::Register);
        q.deregister("w");
        assert_eq!(
            q.heartbeat("w", Duration::from_secs(30), BeatMode::Beat).status,
            BeatStatus::Reaped
        );
        q.push(b"x").unwrap();
        assert!(q.claim("w", "proc:w", 1, &[]).fenced);
    }

    #[tokio::test]
    async fn a_push_wakes_a_blocked_claim() {
        let q = queue();
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.blocking_claim("proc:w", Duration::from_secs(30)).await })
        };
        // The push may land before or after the claim starts waiting: both must deliver it.
        q.push(b"x").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.as_deref(), Some(&b"x"[..]));
        assert_eq!(q.list("proc:w"), vec![b"x".to_vec()]);
    }

    #[test]
    fn a_full_queue_refuses_the_whole_push_and_names_its_limit() {
        let q = queue();
        q.set_max_jobs(3);
        q.push_many(&[b"a", b"b"]).unwrap();
        let full = q.push_many(&[b"c", b"d"]).unwrap_err();
        assert_eq!(
            full,
            Full {
                held: 2,
                adding: 2,
                max: 3
            }
        );
        assert!(full.to_string().contains("MEMORY_QUEUE_MAX_JOBS (3)"), "{full}");
        assert_eq!(q.ready().len(), 2, "all or nothing");
        // Claimed jobs still count: they are held until settled.
        q.heartbeat("w", Duration::from_secs(30), BeatMode::Register);
        assert_eq!(q.claim("w", "proc:w", 2, &[]).jobs.len(), 2);
        q.push(b"c").unwrap();
        assert!(q.push(b"d").is_err());
    }
}
