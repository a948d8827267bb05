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

mod admin;
mod driver;
mod keys;
mod memory;
mod scripts;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError, RedisResult};

pub use admin::WorkerInfo;
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatStatus {
    Ok,
    /// This worker was declared dead and its jobs handed to others: fence.
    Reaped,
    /// Redis had forgotten this worker without reaping it (data loss on the Redis side).
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
}

/// One settle operation, applied only if the payload is still in the worker's list.
#[derive(Debug, Clone)]
pub enum SettleOp {
    /// The outcome is committed in Postgres.
    Done(Payload),
    /// A failed attempt: schedule the retry this far in the future.
    Retry(Payload, Duration),
    /// Hand back unfinished, not counted as an attempt.
    Requeue(Payload),
    /// Park in the held list of its paused step, not counted as an attempt.
    Hold(Payload, String),
}

/// Queue depths, read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Depths {
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub workers: u64,
    pub poison: u64,
    pub held: u64,
    pub paused: bool,
}

/// The shared, non-blocking side of the queue. Cheap to clone.
#[derive(Clone)]
pub struct RedisQueue {
    client: Client,
    conn: ConnectionManager,
    keys: Arc<Keys>,
    scripts: Arc<Scripts>,
}

impl RedisQueue {
    pub async fn connect(url: &str, queue_key: &str) -> RedisResult<Self> {
        Self::connect_with_ca(url, queue_key, None).await
    }

    /// Connects trusting `ca_pem` (PEM) instead of the public roots for a `rediss://` URL.
    pub async fn connect_with_ca(url: &str, queue_key: &str, ca_pem: Option<&[u8]>) -> RedisResult<Self> {
        let client = match ca_pem {
            Some(pem) => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            )?,
            None => Client::open(url)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(RedisQueue {
            client,
            conn,
            keys: Arc::new(Keys::new(queue_key)),
            scripts: Arc::new(Scripts::new()),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A connection reserved for blocking claims, named after the worker so `CLIENT LIST` shows
    /// who is waiting.
    pub async fn blocking_conn(&self, block: Duration, wid: &str) -> RedisResult<BlockingConn> {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(block + BLOCKING_SLACK))
            .set_connection_timeout(Some(COMMAND_TIMEOUT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let name: String = format!("step-worker:{wid}")
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .query_async::<()>(&mut conn)
            .await?;
        let client_id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await?;
        Ok(BlockingConn {
            conn,
            client_id,
            keys: self.keys.clone(),
        })
    }

    /// Wakes a blocked `BLMOVE` (it returns nil), so shutdown need not wait out the block time.
    pub async fn unblock(&self, client_id: i64) -> RedisResult<()> {
        redis::cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(client_id)
            .query_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
    }

    pub async fn heartbeat(&self, wid: &str, deadline: Duration, mode: BeatMode, grace: Duration) -> RedisResult<Beat> {
        let k = &self.keys;
        let mode = match mode {
            BeatMode::Register => "register",
            BeatMode::Beat => "beat",
        };
        let (status, next_due, reap, poison, paused, paused_steps): (i64, i64, i64, u64, i64, Vec<String>) = self
            .scripts
            .heartbeat
            .key(&k.workers)
            .key(&k.reaped)
            .key(&k.delayed)
            .key(&k.ready)
            .key(&k.poison)
            .key(&k.paused)
            .key(&k.paused_steps)
            .arg(wid)
            .arg(deadline.as_millis() as u64)
            .arg(mode)
            .arg(grace.as_millis() as u64)
            .arg(scripts::PROMOTE_LIMIT)
            .invoke_async(&mut self.conn.clone())
            .await?;
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
            .arg(wid)
            .arg(n)
            .arg(at)
            .arg(u8::from(alone));
        for p in extra {
            inv.arg(sha1_hex(p));
        }
        let (fenced, flat, extra, waiting): (i64, Vec<redis::Value>, Vec<u32>, i64) =
            inv.invoke_async(&mut self.conn.clone()).await?;
        let mut jobs = Vec::with_capacity(flat.len() / 3);
        let mut it = flat.into_iter();
        while let (Some(p), Some(a), Some(s)) = (it.next(), it.next(), it.next()) {
            let p: Vec<u8> = redis::from_redis_value(p)?;
            let counters = Counters {
                failures: redis::from_redis_value(a)?,
                suspect: redis::from_redis_value::<i64>(s)? == 1,
            };
            jobs.push((Payload::from(p), counters));
        }
        let extra = extra
            .chunks_exact(2)
            .map(|c| Counters {
                failures: c[0],
                suspect: c[1] == 1,
            })
            .collect();
        Ok(ClaimReply {
            fenced: fenced == 1,
            jobs,
            extra,
            suspect_waiting: waiting == 1,
        })
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
            .key(&k.paused_steps);
        for op in ops {
            match op {
                SettleOp::Done(p) => inv.arg("done").arg(&p[..]).arg(0),
                SettleOp::Retry(p, delay) => inv.arg("retry").arg(&p[..]).arg(delay.as_millis() as u64),
                SettleOp::Requeue(p) => inv.arg("requeue").arg(&p[..]).arg(0),
                SettleOp::Hold(p, step) => inv.arg("hold").arg(&p[..]).arg(k.held(step)),
            };
        }
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

    /// Returns `victim`'s jobs to ready; `None` if it turned out to be alive.
    pub async fn reap(&self, victim: &str, grace: Duration, max_recoveries: u32) -> RedisResult<Option<(u64, u64)>> {
        let k = &self.keys;
        let (moved, poisoned): (i64, u64) = self
            .scripts
            .reap
            .key(&k.workers)
            .key(&k.reaped)
            .key(k.proc(victim))
            .key(&k.ready)
            .key(&k.interrupts)
            .key(&k.poison)
            .key(&k.attempts)
            .arg(victim)
            .arg(grace.as_millis() as u64)
            .arg(max_recoveries)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((moved >= 0).then_some((moved as u64, poisoned)))
    }

    /// Moves due retries to ready; returns how many and when the next one is due.
    pub async fn promote(&self) -> RedisResult<(u64, Option<Duration>)> {
        let k = &self.keys;
        let (moved, next): (u64, i64) = self
            .scripts
            .promote
            .key(&k.delayed)
            .key(&k.ready)
            .arg(scripts::PROMOTE_LIMIT)
            .invoke_async(&mut self.conn.clone())
            .await?;
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
        let n = n.max(1) as isize;
        redis::cmd("LRANGE")
            .arg(&self.keys.poison)
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

    pub async fn depths(&self) -> RedisResult<Depths> {
        let k = &self.keys;
        let (ready, delayed, in_flight, workers, poison, held, paused): (u64, u64, u64, u64, u64, u64, i64) = self
            .scripts
            .depths
            .key(&k.ready)
            .key(&k.delayed)
            .key(&k.workers)
            .key(&k.poison)
            .key(&k.paused_steps)
            .key(&k.paused)
            .arg(k.proc_prefix())
            .arg(k.held_prefix())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(Depths {
            ready,
            delayed,
            in_flight,
            workers,
            poison,
            held,
            paused: paused == 1,
        })
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

    pub async fn ping(&self) -> RedisResult<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn.clone())
            .await
            .map(|_| ())
    }

    /// `CONFIG GET <name>`; `None` where the provider forbids `CONFIG` (many managed services).
    pub async fn config_get(&self, name: &str) -> Option<String> {
        let reply: RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut self.conn.clone())
            .await;
        reply.ok().and_then(|v| v.into_iter().nth(1))
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
