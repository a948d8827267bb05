//! The Redis side of the delivery protocol: claiming, settling, heartbeats, reaping, promotion.
//!
//! This module knows keys and scripts and nothing of step semantics. Its rules:
//! - A job never exists only in memory: it is moved atomically from the ready list into the
//!   claiming worker's own list (`BLMOVE` or `claim.lua`), and leaves that list only through a
//!   script that first checks it is still there (`settle.lua`, `reap.lua`). List membership is
//!   the job's ownership, so a rescued job's late settle is a no-op.
//! - A job recovered from dead workers too often (a suspect) is never claimed beside other jobs,
//!   so a poison pill cannot keep killing the same bystanders (`claim.lua`, [`Suspects`]).
//! - Every script is idempotent, because a command whose reply is lost has an unknown outcome and
//!   is simply sent again. `Script::invoke_async` reloads scripts after `NOSCRIPT`.
//! - Blocking claims run on their own connection ([`BlockingConn`]): a blocking command stalls
//!   every command queued behind it on a shared connection, and the redis crate's default 500 ms
//!   response timeout would abandon a `BLMOVE` that the server still completes.

mod active;
mod admin;
mod cancel;
mod conn;
mod driver;
mod keys;
mod memory;
mod memory_caps;
mod scripts;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult};

pub use admin::WorkerInfo;
pub use cancel::{CancelReply, CancelTarget};
pub use conn::Endpoint;
pub use conn::RedisConn;
pub use driver::{Blocking, PushError, Queue};
pub use keys::Keys;
pub use memory::{DEFAULT_MAX_JOBS as MEMORY_DEFAULT_MAX_JOBS, Full, MemoryQueue};
use scripts::Scripts;

/// Raw payload bytes, exactly as the producer pushed them: `LREM` matches on bytes, so they are
/// never re-serialised.
pub type Payload = Arc<[u8]>;

/// Response timeout for ordinary commands and scripts. Long enough for a settle of a large batch,
/// short enough that a dead connection is noticed within a heartbeat or two.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between reconnection attempts: after an outage, workers must be back well within
/// a heartbeat deadline, or a peer that reconnected first could judge them dead.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
/// Extra time allowed for a blocking claim's reply beyond its block time.
const BLOCKING_SLACK: Duration = Duration::from_secs(5);

/// What a heartbeat learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub status: BeatStatus,
    /// When the earliest scheduled retry is due, if any.
    pub next_due: Option<Duration>,
    /// Some worker's deadline has passed (or a tombstone needs re-draining).
    pub reap_needed: bool,
    /// Poison payloads waiting in the outbox for their dead-letter rows.
    pub poison_pending: u64,
    /// An operator paused the whole queue.
    pub paused: bool,
    /// Steps an operator paused.
    pub paused_steps: Vec<String>,
    /// Ids of jobs in this worker's in-flight list that an operator cancelled (`cancel.lua`).
    pub cancel: Vec<String>,
    /// Cancelled payloads in the outbox waiting for their result rows.
    pub cancelled_pending: u64,
    /// Cancellations (`<wid>\n<job id>`) addressed to workers that are gone without being reaped
    /// (they deregistered at shutdown and handed their jobs back): any worker follows them.
    pub cancel_orphans: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatStatus {
    Ok,
    /// This worker was declared dead and its jobs handed to others: fence.
    Reaped,
    /// Redis lost its data, this worker's registration with it (proven by the queue's epoch, see
    /// `heartbeat.lua`): re-registered under the same id.
    Reregistered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatMode {
    Register,
    Beat,
}

/// How a claim treats suspects: payloads recovered from dead workers often enough that they may
/// be the reason those workers died (see `claim.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspects {
    /// No payload is a suspect: for callers that do not run what they claim (a purge).
    Ignore,
    /// Payloads recovered at least `at` times are never claimed with others. One is claimed only
    /// by a caller that claims `alone`: it runs nothing else and holds every slot, so if the
    /// payload kills it, it kills no bystander.
    Isolate { at: u32, alone: bool },
}

/// What Redis knows about a claimed payload.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Failed attempts so far.
    pub failures: u32,
    /// A suspect (see [`Suspects`]): it must run with every slot held.
    pub suspect: bool,
    /// A payload claimed by `BLMOVE` whose step's cap slots were all held: the claim moved it
    /// out of our list to wait for a slot, so it must not run.
    pub throttled: bool,
}

/// The reply to a batch claim.
#[derive(Debug, Default)]
pub struct ClaimReply {
    pub fenced: bool,
    /// Claimed payloads. A suspect is only ever claimed alone, so it is the only one.
    pub jobs: Vec<(Payload, Counters)>,
    /// The counters of the payloads passed as already claimed.
    pub extra: Vec<Counters>,
    /// The next ready payload is a suspect the claim left in the queue: claim again alone.
    pub suspect_waiting: bool,
    /// The step and reason (`concurrency`, `rate`) of each job the claim moved aside to wait on
    /// a flow limit: the ready list was not empty even if nothing was claimed.
    pub throttled: Vec<(String, String)>,
    /// When the jobs this claim moved aside for a rate may start: the promoter wakes then.
    pub rate_wake: Option<Duration>,
}

/// One settle operation, applied only if the payload is still in the worker's list.
#[derive(Debug, Clone)]
pub enum SettleOp {
    /// The outcome is committed in Postgres.
    Done(Payload),
    /// A failed attempt: schedule the retry this far in the future.
    Retry(Payload, Duration),
    /// Claimed before its due time: schedule the second payload (the claimed one, or a copy
    /// stamped with its enqueue time) this far in the future, as a retry that counts no attempt.
    Delay(Payload, Duration, Payload),
    /// Hand back unfinished, not counted as an attempt.
    Requeue(Payload),
    /// Park in the held list of its paused step, not counted as an attempt.
    Hold(Payload, String),
    /// The copy of job id `id` this worker ran is no longer running: remove the id's
    /// [`Queue::take_active`] entry. Put right after the job's own op, and applied only if that
    /// op found the job in our list (the mark is then still ours); it has no entry in the reply.
    Release { id: String },
}

/// Queue depths, read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Depths {
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub workers: u64,
    pub poison: u64,
    /// Cancelled jobs waiting for their `cancelled` rows.
    pub cancelled: u64,
    pub held: u64,
    pub paused: bool,
    /// Jobs waiting on a flow limit, per limited step and reason (`concurrency`, `rate`).
    pub waiting: Vec<(String, &'static str, u64)>,
    /// Per capped step: slots held across every replica, and the cap.
    pub caps: Vec<(String, u32, u32)>,
}

/// The shared, non-blocking side of the queue. Cheap to clone.
#[derive(Clone)]
pub struct RedisQueue {
    endpoint: Arc<Endpoint>,
    conn: RedisConn,
    keys: Arc<Keys>,
    scripts: Arc<Scripts>,
    /// The queue's epoch as the last heartbeat saw it ('' before the first): see `heartbeat.lua`.
    epoch: Arc<std::sync::Mutex<String>>,
    /// `STEP_CONCURRENCY`, as the scripts take it (empty: no cap, and the scripts skip caps).
    caps: Arc<Vec<(String, u32)>>,
    /// `STEP_RATE_LIMITS` as (step, interval ms, burst) (empty: the scripts skip rates).
    pub(crate) rates: Arc<Vec<(String, f64, u32)>>,
}

impl RedisQueue {
    pub async fn connect(url: &str, queue_key: &str) -> RedisResult<Self> {
        Self::connect_with_ca(url, queue_key, None).await
    }

    /// Connects trusting `ca_pem` (PEM) instead of the public roots for a `rediss://` URL.
    /// `url` names one server, any node of a Redis Cluster, or comma-separated cluster seeds
    /// (see [`RedisConn::connect`]).
    pub async fn connect_with_ca(url: &str, queue_key: &str, ca_pem: Option<&[u8]>) -> RedisResult<Self> {
        let keys = Keys::new(queue_key);
        let (conn, endpoint) = RedisConn::connect(url, ca_pem, &keys.ready).await?;
        Ok(RedisQueue {
            endpoint: Arc::new(endpoint),
            conn,
            keys: Arc::new(keys),
            scripts: Arc::new(Scripts::new()),
            epoch: Arc::default(),
            caps: Arc::default(),
            rates: Arc::default(),
        })
    }

    /// Enforces `limits` (per step: most attempts at once, most starts per period, across every
    /// replica) on this queue's claims. Every replica sharing the queue must be given the same.
    pub fn with_caps(mut self, limits: &crate::config::Limits) -> Self {
        self.caps = Arc::new(limits.concurrency.iter().map(|(s, n)| (s.clone(), *n)).collect());
        self.rates = Arc::new(
            limits
                .rates
                .iter()
                .map(|(s, r)| (s.clone(), r.interval_ms(), r.burst()))
                .collect(),
        );
        self
    }

    /// The limits as claim.lua and heartbeat.lua take them: the caps' count and each cap's
    /// throttled list (a key), step and cap; then the rate keys, the rates' count and each rate's
    /// waiting list (a key), step, interval (ms) and burst.
    fn limit_args(&self, inv: &mut redis::ScriptInvocation<'_>) {
        let k = &self.keys;
        inv.arg(self.caps.len());
        for (step, cap) in self.caps.iter() {
            inv.key(k.throttled(step)).arg(step).arg(*cap);
        }
        inv.key(&k.rate_tat).key(&k.rate_wake).arg(self.rates.len());
        for (step, interval, burst) in self.rates.iter() {
            inv.key(k.rate_waiting(step)).arg(step).arg(*interval).arg(*burst);
        }
    }

    fn is_limited(&self) -> bool {
        !self.caps.is_empty() || !self.rates.is_empty()
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A connection reserved for blocking claims, named after the worker so `CLIENT LIST` shows
    /// who is waiting. On a cluster it goes to the master that owns the queue's slot now.
    ///
    /// `CLIENT` is optional: Memorystore and other managed services refuse the whole command, and
    /// ACL users are often created without `+client`. Without it the connection is unnamed and
    /// has no id (0), so shutdown cannot wake its `BLMOVE` early (see `drain`); claims work
    /// the same. Only a connection error is an error here.
    pub async fn blocking_conn(&self, block: Duration, wid: &str) -> RedisResult<BlockingConn> {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(block + BLOCKING_SLACK))
            .set_connection_timeout(Some(COMMAND_TIMEOUT));
        let node = match self.conn.is_cluster() {
            true => self.conn.owner_of(&self.keys.ready, &self.endpoint).await?,
            false => self.endpoint.seed().clone(),
        };
        let mut conn = self
            .endpoint
            .client(node)?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let name: String = format!("step-worker:{wid}")
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        let client_id = match name_and_id(&mut conn, name).await {
            Ok(id) => id,
            Err(e) if is_connection_error(&e) => return Err(e),
            Err(e) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::warn!(error = %e, "Redis refuses CLIENT: claims work, but shutdown cannot wake an idle worker's blocked claim and waits for it (bounded by SHUTDOWN_TIMEOUT_MS)")
                });
                0
            }
        };
        Ok(BlockingConn {
            conn,
            client_id,
            keys: self.keys.clone(),
        })
    }

    /// Wakes a blocked `BLMOVE` (it returns nil), so shutdown need not wait out the block time.
    /// Sent to the node that owns the queue's slot: client ids are per node.
    pub async fn unblock(&self, client_id: i64) -> RedisResult<()> {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(client_id);
        self.conn.query_at_owner(cmd, &self.keys.ready).await.map(|_| ())
    }

    /// Registers or beats for `wid`. The queue remembers the epoch each answer carries, so a later
    /// beat can tell a registration removed on purpose (reaped: [`BeatStatus::Reaped`], however
    /// long ago) from one lost with Redis's data ([`BeatStatus::Reregistered`]).
    pub async fn heartbeat(&self, wid: &str, deadline: Duration, mode: BeatMode, grace: Duration) -> RedisResult<Beat> {
        let k = &self.keys;
        let mode = match mode {
            BeatMode::Register => "register",
            BeatMode::Beat => "beat",
        };
        let known = self.epoch.lock().unwrap().clone();
        let candidate = format!("{:016x}", rand::random::<u64>());
        let mut inv = self.scripts.heartbeat.key(&k.workers);
        inv.key(&k.reaped)
            .key(&k.delayed)
            .key(&k.ready)
            .key(&k.poison)
            .key(&k.paused)
            .key(&k.paused_steps)
            .key(&k.epoch)
            .key(&k.cap_used)
            .arg(wid)
            .arg(deadline.as_millis() as u64)
            .arg(mode)
            .arg(grace.as_millis() as u64)
            .arg(scripts::PROMOTE_LIMIT)
            .arg(known)
            .arg(candidate);
        self.limit_args(&mut inv);
        inv.key(&k.cancel).key(&k.cancelled);
        #[allow(clippy::type_complexity)]
        let (status, next_due, reap, poison, paused, paused_steps, epoch, cancel, cancelled_pending, cancel_orphans): (
            i64,
            i64,
            i64,
            u64,
            i64,
            Vec<String>,
            String,
            Vec<String>,
            u64,
            Vec<String>,
        ) = inv.invoke_async(&mut self.conn.clone()).await?;
        if !epoch.is_empty() {
            *self.epoch.lock().unwrap() = epoch;
        }
        let status = match status {
            0 => BeatStatus::Reaped,
            2 => BeatStatus::Reregistered,
            _ => BeatStatus::Ok,
        };
        Ok(Beat {
            status,
            next_due: due(next_due),
            reap_needed: reap == 1,
            poison_pending: poison,
            paused: paused == 1,
            paused_steps,
            cancel,
            cancelled_pending,
            cancel_orphans,
        })
    }

    /// Claims up to `n` ready jobs into `proc` and reads the counters of `extra` payloads (ones
    /// already claimed by a blocking `BLMOVE`). The batch stops before a suspect, as `suspects`
    /// says; the script is the only place that decides, so every replica applies one rule.
    pub async fn claim(
        &self,
        wid: &str,
        proc: &str,
        n: usize,
        extra: &[Payload],
        suspects: Suspects,
    ) -> RedisResult<ClaimReply> {
        let k = &self.keys;
        let (at, alone) = match suspects {
            Suspects::Ignore => (0, false),
            // A threshold of 0 would make every payload a suspect: nothing could ever be batched.
            Suspects::Isolate { at, alone } => (at.max(1), alone),
        };
        let mut inv = self.scripts.claim.key(&k.ready);
        inv.key(proc)
            .key(&k.workers)
            .key(&k.attempts)
            .key(&k.interrupts)
            .key(&k.cap_used)
            .key(k.slots(wid))
            .arg(wid)
            .arg(n)
            .arg(at)
            .arg(u8::from(alone));
        self.limit_args(&mut inv);
        inv.key(&k.step_holds).key(&k.delayed);
        for p in extra {
            // The payload, not its sha1: its step decides whether it may run (a step may be held
            // with no limit configured). Only the idle path's one BLMOVE'd job goes here.
            inv.arg(&p[..]);
        }
        #[allow(clippy::type_complexity)]
        let (fenced, flat, extra, waiting, throttled, wake): (
            i64,
            Vec<redis::Value>,
            Vec<u32>,
            i64,
            Vec<String>,
            i64,
        ) = inv.invoke_async(&mut self.conn.clone()).await?;
        let throttled = throttled
            .chunks_exact(2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect();
        let mut jobs = Vec::with_capacity(flat.len() / 3);
        let mut it = flat.into_iter();
        while let (Some(p), Some(a), Some(s)) = (it.next(), it.next(), it.next()) {
            let p: Vec<u8> = redis::from_redis_value(p)?;
            let counters = Counters {
                failures: redis::from_redis_value(a)?,
                suspect: redis::from_redis_value::<i64>(s)? == 1,
                throttled: false,
            };
            jobs.push((Payload::from(p), counters));
        }
        let extra = extra
            .chunks_exact(3)
            .map(|c| Counters {
                failures: c[0],
                suspect: c[1] == 1,
                throttled: c[2] == 1,
            })
            .collect();
        Ok(ClaimReply {
            fenced: fenced == 1,
            jobs,
            extra,
            suspect_waiting: waiting == 1,
            throttled,
            rate_wake: due(wake),
        })
    }

    /// Holds `step` on every replica for `hold` (back-pressure): claims move its jobs to the
    /// delayed set until then.
    pub async fn hold_step(&self, step: &str, hold: Duration) -> RedisResult<()> {
        self.scripts
            .hold_step
            .key(&self.keys.step_holds)
            .arg(step)
            .arg(hold.as_millis() as u64)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
    }

    /// Applies settle operations to the jobs in `proc`; returns, per op, whether the job was
    /// still ours.
    pub async fn settle(&self, proc: &str, ops: &[SettleOp]) -> RedisResult<Vec<bool>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let k = &self.keys;
        let mut inv = self.scripts.settle.key(proc);
        inv.key(&k.delayed)
            .key(&k.attempts)
            .key(&k.interrupts)
            .key(&k.ready)
            .key(&k.paused_steps)
            .key(&k.active)
            .key(&k.cap_used)
            .key(k.slots_of_proc(proc))
            .arg(self.caps.len());
        // Held and throttled lists are declared as keys like every other key the script touches
        // (KEYS[10..]); an op or a capped step names its list by its KEYS index.
        for (i, (step, _)) in self.caps.iter().enumerate() {
            inv.key(k.throttled(step)).arg(step).arg(10 + i);
        }
        let first_held = 10 + self.caps.len();
        let mut held: Vec<&str> = Vec::new();
        for op in ops {
            match op {
                SettleOp::Done(p) => inv.arg("done").arg(&p[..]).arg(0),
                SettleOp::Retry(p, delay) => inv.arg("retry").arg(&p[..]).arg(delay.as_millis() as u64),
                SettleOp::Delay(p, delay, scheduled) => inv
                    .arg("delay")
                    .arg(&p[..])
                    .arg(delay.as_millis() as u64)
                    .arg(&scheduled[..]),
                SettleOp::Requeue(p) => inv.arg("requeue").arg(&p[..]).arg(0),
                SettleOp::Hold(p, step) => {
                    let at = held.iter().position(|s| s == step).unwrap_or_else(|| {
                        held.push(step);
                        held.len() - 1
                    });
                    inv.arg("hold").arg(&p[..]).arg(first_held + at)
                }
                SettleOp::Release { id } => inv.arg("release").arg(id),
            };
        }
        for step in held {
            inv.key(k.held(step));
        }
        inv.key(&k.cancel).key(&k.cancelled);
        let res: Vec<i64> = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(res.into_iter().map(|r| r == 1).collect())
    }

    /// Workers whose deadline passed more than `grace` ago, plus tombstones to re-drain. Empty when
    /// another replica holds the reaper lock, which one scan takes for `lock` (one heartbeat
    /// interval: a longer lock would delay the rescue of a worker that dies meanwhile).
    pub async fn reap_candidates(&self, grace: Duration, lock: Duration, owner: &str) -> RedisResult<Vec<String>> {
        let k = &self.keys;
        self.scripts
            .reap_candidates
            .key(&k.workers)
            .key(&k.reaped)
            .key(&k.reaper_lock)
            .arg(grace.as_millis() as u64)
            .arg(lock.as_millis() as u64)
            .arg(scripts::TOMBSTONE_KEEP_MS)
            .arg(owner)
            .invoke_async(&mut self.conn.clone())
            .await
    }

    /// Returns `victim`'s jobs to ready (but those an operator cancelled, which go to the
    /// cancelled outbox); `None` if it turned out to be alive, else (returned, poisoned,
    /// cancelled).
    pub async fn reap(
        &self,
        victim: &str,
        grace: Duration,
        max_recoveries: u32,
    ) -> RedisResult<Option<(u64, u64, u64)>> {
        let k = &self.keys;
        let mut inv = self.scripts.reap.key(&k.workers);
        inv.key(&k.reaped)
            .key(k.proc(victim))
            .key(&k.ready)
            .key(&k.interrupts)
            .key(&k.poison)
            .key(&k.attempts)
            .key(&k.cap_used)
            .key(k.slots(victim))
            .key(&k.cancel)
            .key(&k.cancelled)
            .arg(victim)
            .arg(grace.as_millis() as u64)
            .arg(max_recoveries)
            .arg(self.caps.len());
        for (step, _) in self.caps.iter() {
            inv.key(k.throttled(step)).arg(step);
        }
        let (moved, poisoned, cancelled): (i64, u64, u64) = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok((moved >= 0).then_some((moved as u64, poisoned, cancelled)))
    }

    /// Moves due retries to ready; returns how many and when the next one is due.
    pub async fn promote(&self) -> RedisResult<(u64, Option<Duration>)> {
        let k = &self.keys;
        let mut inv = self.scripts.promote.key(&k.delayed);
        inv.key(&k.ready)
            .key(&k.rate_tat)
            .key(&k.rate_wake)
            .arg(scripts::PROMOTE_LIMIT)
            .arg(self.rates.len());
        for (step, interval, burst) in self.rates.iter() {
            inv.key(k.rate_waiting(step)).arg(step).arg(*interval).arg(*burst);
        }
        let (moved, next): (u64, i64) = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok((moved, due(next)))
    }

    /// Puts still-running payloads back into `proc` if Redis lost them.
    pub async fn adopt(&self, proc: &str, payloads: &[Payload]) -> RedisResult<u64> {
        if payloads.is_empty() {
            return Ok(0);
        }
        let mut inv = self.scripts.adopt.key(proc);
        for p in payloads {
            inv.arg(&p[..]);
        }
        inv.invoke_async(&mut self.conn.clone()).await
    }

    /// The oldest entries of the poison outbox (without removing them).
    pub async fn poison_peek(&self, n: usize) -> RedisResult<Vec<Vec<u8>>> {
        self.oldest(&self.keys.poison, n).await
    }

    /// The oldest `n` (at least one) entries of an outbox list: its tail, as entries are pushed
    /// on the left.
    async fn oldest(&self, list: &str, n: usize) -> RedisResult<Vec<Vec<u8>>> {
        let n = n.max(1) as isize;
        redis::cmd("LRANGE")
            .arg(list)
            .arg(-n)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Removes poison entries whose dead-letter rows are committed.
    pub async fn poison_remove(&self, entries: &[Vec<u8>]) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.cmd("LREM").arg(&self.keys.poison).arg(1).arg(&e[..]).ignore();
        }
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// Everything in a worker's own list (for the self-audit after a blocking-connection error).
    pub async fn list(&self, proc: &str) -> RedisResult<Vec<Vec<u8>>> {
        redis::cmd("LRANGE")
            .arg(proc)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
    }

    pub async fn deregister(&self, wid: &str) -> RedisResult<()> {
        redis::cmd("ZREM")
            .arg(&self.keys.workers)
            .arg(wid)
            .query_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
    }

    /// Queue depths in two round trips: the fixed keys with the lists of workers and paused
    /// steps, then the lengths of their lists. Not one script, because a script must declare
    /// every key it touches and these are known only from the first answer. Two reads a moment
    /// apart may disagree by a job in flight; depths are a gauge, not a ledger.
    pub async fn depths(&self) -> RedisResult<Depths> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        #[allow(clippy::type_complexity)]
        let (ready, delayed, workers, poison, steps, paused, cancelled): (
            u64,
            u64,
            Vec<String>,
            u64,
            Vec<String>,
            bool,
            u64,
        ) = redis::pipe()
            .llen(&k.ready)
            .zcard(&k.delayed)
            .zrange(&k.workers, 0, -1)
            .llen(&k.poison)
            .smembers(&k.paused_steps)
            .exists(&k.paused)
            .llen(&k.cancelled)
            .query_async(&mut conn)
            .await?;
        let mut pipe = redis::pipe();
        for w in &workers {
            pipe.llen(k.proc(w));
        }
        for s in &steps {
            pipe.llen(k.held(s));
        }
        let lens: Vec<u64> = if workers.is_empty() && steps.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await?
        };
        let (in_flight, held) = lens.split_at(workers.len().min(lens.len()));
        let (waiting, caps) = self.cap_depths().await?;
        Ok(Depths {
            ready,
            delayed,
            in_flight: in_flight.iter().sum(),
            workers: workers.len() as u64,
            poison,
            cancelled,
            held: held.iter().sum(),
            paused,
            waiting,
            caps,
        })
    }

    /// Per capped step: jobs waiting for a slot, and slots held against the cap. One more round
    /// trip, only when caps are configured.
    #[allow(clippy::type_complexity)]
    async fn cap_depths(&self) -> RedisResult<(Vec<(String, &'static str, u64)>, Vec<(String, u32, u32)>)> {
        if !self.is_limited() {
            return Ok(Default::default());
        }
        let k = &self.keys;
        let mut pipe = redis::pipe();
        for (step, _) in self.caps.iter() {
            pipe.llen(k.throttled(step)).hget(&k.cap_used, step);
        }
        for (step, _, _) in self.rates.iter() {
            pipe.llen(k.rate_waiting(step));
        }
        let replies: Vec<Option<i64>> = pipe.query_async(&mut self.conn.clone()).await?;
        let (cap_replies, rate_replies) = replies.split_at((2 * self.caps.len()).min(replies.len()));
        let mut waiting = Vec::with_capacity(self.caps.len() + self.rates.len());
        let mut caps = Vec::with_capacity(self.caps.len());
        for ((step, cap), pair) in self.caps.iter().zip(cap_replies.chunks_exact(2)) {
            waiting.push((step.clone(), "concurrency", pair[0].unwrap_or(0).max(0) as u64));
            caps.push((step.clone(), pair[1].unwrap_or(0).max(0) as u32, *cap));
        }
        for ((step, _, _), n) in self.rates.iter().zip(rate_replies) {
            waiting.push((step.clone(), "rate", n.unwrap_or(0).max(0) as u64));
        }
        Ok((waiting, caps))
    }

    /// `LPUSH` onto the ready list, as producers do.
    pub async fn push(&self, payload: &[u8]) -> RedisResult<()> {
        redis::cmd("LPUSH")
            .arg(&self.keys.ready)
            .arg(payload)
            .query_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
    }

    /// Pings the node that holds the queue (on a cluster, the slot's master: a shard that does
    /// not hold the queue being down is no concern of the worker's).
    pub async fn ping(&self) -> RedisResult<()> {
        self.conn
            .query_at_owner(redis::cmd("PING"), &self.keys.ready)
            .await
            .map(|_| ())
    }

    /// `CONFIG GET <name>` on every node (one server: on it); `None` where the provider forbids
    /// `CONFIG` (many managed services). On a cluster each node has its own settings, and any
    /// replica may become a master.
    pub async fn config_get(&self, name: &str) -> Option<Vec<String>> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(name);
        let replies = self.conn.query_each_node(cmd).await.ok()?;
        replies
            .into_iter()
            .map(|v| redis::from_redis_value::<Vec<String>>(v).ok()?.into_iter().nth(1))
            .collect()
    }
}

/// The claimer's own connection, used for nothing but `BLMOVE`.
pub struct BlockingConn {
    conn: MultiplexedConnection,
    client_id: i64,
    keys: Arc<Keys>,
}

impl BlockingConn {
    /// The server-side id, for `CLIENT UNBLOCK` from another connection.
    pub fn client_id(&self) -> i64 {
        self.client_id
    }

    /// Waits up to `block` for a job and moves it into `proc`. Never cancel this future: the
    /// server would still move the job.
    pub async fn claim(&mut self, proc: &str, block: Duration) -> RedisResult<Option<Payload>> {
        let p: Option<Vec<u8>> = redis::cmd("BLMOVE")
            .arg(&self.keys.ready)
            .arg(proc)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(block.as_secs_f64())
            .query_async(&mut self.conn)
            .await?;
        Ok(p.map(Payload::from))
    }
}

/// Names the connection and returns its server-side id.
async fn name_and_id(conn: &mut MultiplexedConnection, name: String) -> RedisResult<i64> {
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name)
        .query_async::<()>(conn)
        .await?;
    redis::cmd("CLIENT").arg("ID").query_async(conn).await
}

/// `redis.sha1hex` of a payload: the key of its counters.
pub fn sha1_hex(payload: &[u8]) -> String {
    sha1_smol::Sha1::from(payload).digest().to_string()
}

fn due(ms: i64) -> Option<Duration> {
    (ms >= 0).then(|| Duration::from_millis(ms as u64))
}

/// Whether an error means the connection (not the command) failed.
pub fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal()
}
