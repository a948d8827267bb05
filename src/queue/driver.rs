//! `QUEUE_DRIVER`: the queue the worker runs on, Redis (shared by every replica, durable) or the
//! process's memory (one process, nothing survives it). Both speak the same operations, so the
//! claimer, pipeline and maintenance code is the same for either. An enum rather than a trait
//! object: the hot path stays a direct call, and the set of drivers is closed.

use std::time::Duration;

use redis::RedisResult;

use super::memory::{Full, MemoryQueue};
use super::{
    Beat, BeatMode, BlockingConn, CancelReply, CancelTarget, ClaimReply, Depths, Keys, Payload, RedisQueue, SettleOp,
    Suspects,
};

/// Why a push was refused: Redis failed, or the memory queue is at `MEMORY_QUEUE_MAX_JOBS`.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Full(#[from] Full),
}

// A handful of these exist per process (one per component, cloned at startup), so the size
// difference between the variants costs nothing worth an extra indirection on every command.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Queue {
    Redis(RedisQueue),
    Memory(MemoryQueue),
}

/// The claimer's blocking claim: its own Redis connection, or a wait on the memory queue.
pub enum Blocking {
    Redis(BlockingConn),
    Memory(MemoryQueue),
}

/// Stands in for a connection id: `unblock` on the memory queue needs none, but the claimer
/// treats 0 as "no blocking claim to wake".
const MEMORY_CLIENT_ID: i64 = 1;

impl Queue {
    pub fn is_memory(&self) -> bool {
        matches!(self, Queue::Memory(_))
    }

    pub fn keys(&self) -> &Keys {
        match self {
            Queue::Redis(q) => q.keys(),
            Queue::Memory(m) => m.keys(),
        }
    }

    /// The Redis queue, for what only Redis has (its eviction policy check).
    pub fn redis(&self) -> Option<&RedisQueue> {
        match self {
            Queue::Redis(q) => Some(q),
            Queue::Memory(_) => None,
        }
    }

    pub async fn blocking_conn(&self, block: Duration, wid: &str) -> RedisResult<Blocking> {
        match self {
            Queue::Redis(q) => q.blocking_conn(block, wid).await.map(Blocking::Redis),
            Queue::Memory(m) => Ok(Blocking::Memory(m.clone())),
        }
    }

    pub async fn unblock(&self, client_id: i64) -> RedisResult<()> {
        match self {
            Queue::Redis(q) => q.unblock(client_id).await,
            Queue::Memory(m) => {
                m.unblock();
                Ok(())
            }
        }
    }

    pub async fn heartbeat(&self, wid: &str, deadline: Duration, mode: BeatMode, grace: Duration) -> RedisResult<Beat> {
        match self {
            Queue::Redis(q) => q.heartbeat(wid, deadline, mode, grace).await,
            Queue::Memory(m) => Ok(m.heartbeat(wid, deadline, mode)),
        }
    }

    pub async fn claim(
        &self,
        wid: &str,
        proc: &str,
        n: usize,
        extra: &[Payload],
        suspects: Suspects,
    ) -> RedisResult<ClaimReply> {
        match self {
            Queue::Redis(q) => q.claim(wid, proc, n, extra, suspects).await,
            Queue::Memory(m) => Ok(m.claim(wid, proc, n, extra)),
        }
    }

    /// Holds `step` on every replica for `hold` (back-pressure, see `hold_step.lua`).
    pub async fn hold_step(&self, step: &str, hold: Duration) -> RedisResult<()> {
        match self {
            Queue::Redis(q) => q.hold_step(step, hold).await,
            Queue::Memory(m) => {
                m.hold_step(step, hold);
                Ok(())
            }
        }
    }

    /// For each of `ids` (a claimed batch's, in order), whether worker `wid` may run that copy:
    /// no other copy of the id is running on a live worker, nor earlier in `ids`. Granted ids
    /// are released by a [`SettleOp::Release`] in the job's settle.
    pub async fn take_active(&self, wid: &str, ids: &[&str]) -> RedisResult<Vec<bool>> {
        match self {
            Queue::Redis(q) => q.take_active(wid, ids).await,
            Queue::Memory(m) => Ok(m.take_active(wid, ids)),
        }
    }

    pub async fn settle(&self, proc: &str, ops: &[SettleOp]) -> RedisResult<Vec<bool>> {
        match self {
            Queue::Redis(q) => q.settle(proc, ops).await,
            Queue::Memory(m) => Ok(m.settle(proc, ops)),
        }
    }

    /// No candidates in memory: no worker can die without the queue dying with it.
    pub async fn reap_candidates(&self, grace: Duration, lock: Duration, owner: &str) -> RedisResult<Vec<String>> {
        match self {
            Queue::Redis(q) => q.reap_candidates(grace, lock, owner).await,
            Queue::Memory(_) => Ok(Vec::new()),
        }
    }

    pub async fn reap(
        &self,
        victim: &str,
        grace: Duration,
        max_recoveries: u32,
    ) -> RedisResult<Option<(u64, u64, u64)>> {
        match self {
            Queue::Redis(q) => q.reap(victim, grace, max_recoveries).await,
            Queue::Memory(_) => Ok(None),
        }
    }

    /// Cancels `target`'s jobs: waiting ones move to the cancelled outbox, claimed ones are
    /// flagged for their worker's next heartbeat. `by` names who cancels, in the rows.
    pub async fn cancel(&self, target: &CancelTarget, by: &str) -> RedisResult<CancelReply> {
        match self {
            Queue::Redis(q) => q.cancel(target, by).await,
            Queue::Memory(m) => Ok(m.cancel(target, by)),
        }
    }

    /// Forgets the cancellations of `ids` addressed to worker `wid` (it no longer holds them).
    pub async fn cancel_forget(&self, wid: &str, ids: &[String]) -> RedisResult<()> {
        match self {
            Queue::Redis(q) => q.cancel_forget(wid, ids).await,
            Queue::Memory(m) => {
                m.cancel_forget(wid, ids);
                Ok(())
            }
        }
    }

    pub async fn cancelled_peek(&self, n: usize) -> RedisResult<Vec<Vec<u8>>> {
        match self {
            Queue::Redis(q) => q.cancelled_peek(n).await,
            Queue::Memory(m) => Ok(m.cancelled_peek(n)),
        }
    }

    /// Removes outbox entries whose rows are committed: `newest` just written by a cancellation,
    /// else read by [`Queue::cancelled_peek`].
    pub async fn cancelled_remove(&self, entries: &[Vec<u8>], newest: bool) -> RedisResult<()> {
        match self {
            Queue::Redis(q) => q.cancelled_remove(entries, newest).await,
            Queue::Memory(m) => {
                m.cancelled_remove(entries, newest);
                Ok(())
            }
        }
    }

    pub async fn promote(&self) -> RedisResult<(u64, Option<Duration>)> {
        match self {
            Queue::Redis(q) => q.promote().await,
            Queue::Memory(m) => Ok(m.promote()),
        }
    }

    pub async fn adopt(&self, proc: &str, payloads: &[Payload]) -> RedisResult<u64> {
        match self {
            Queue::Redis(q) => q.adopt(proc, payloads).await,
            Queue::Memory(m) => Ok(m.adopt(proc, payloads)),
        }
    }

    pub async fn poison_peek(&self, n: usize) -> RedisResult<Vec<Vec<u8>>> {
        match self {
            Queue::Redis(q) => q.poison_peek(n).await,
            Queue::Memory(_) => Ok(Vec::new()),
        }
    }

    pub async fn poison_remove(&self, entries: &[Vec<u8>]) -> RedisResult<()> {
        match self {
            Queue::Redis(q) => q.poison_remove(entries).await,
            Queue::Memory(_) => Ok(()),
        }
    }

    pub async fn list(&self, proc: &str) -> RedisResult<Vec<Vec<u8>>> {
        match self {
            Queue::Redis(q) => q.list(proc).await,
            Queue::Memory(m) => Ok(m.list(proc)),
        }
    }

    pub async fn deregister(&self, wid: &str) -> RedisResult<()> {
        match self {
            Queue::Redis(q) => q.deregister(wid).await,
            Queue::Memory(m) => {
                m.deregister(wid);
                Ok(())
            }
        }
    }

    pub async fn depths(&self) -> RedisResult<Depths> {
        match self {
            Queue::Redis(q) => q.depths().await,
            Queue::Memory(m) => Ok(m.depths()),
        }
    }

    pub async fn push(&self, payload: &[u8]) -> Result<(), PushError> {
        match self {
            Queue::Redis(q) => Ok(q.push(payload).await?),
            Queue::Memory(m) => Ok(m.push(payload)?),
        }
    }

    /// One `LPUSH` of several payloads: all of them or none.
    pub async fn push_many(&self, payloads: &[Vec<u8>]) -> Result<(), PushError> {
        match self {
            Queue::Redis(q) => Ok(q.push_many(payloads).await?),
            Queue::Memory(m) => Ok(m.push_many(payloads)?),
        }
    }

    pub async fn ping(&self) -> RedisResult<()> {
        match self {
            Queue::Redis(q) => q.ping().await,
            Queue::Memory(_) => Ok(()),
        }
    }
}

impl Blocking {
    /// The id `unblock` wakes this claim by (0 never occurs: it means "none").
    pub fn client_id(&self) -> i64 {
        match self {
            Blocking::Redis(c) => c.client_id(),
            Blocking::Memory(_) => MEMORY_CLIENT_ID,
        }
    }

    /// Waits up to `block` for a job and moves it into `proc`. Never cancel this future on
    /// Redis: the server would still move the job.
    pub async fn claim(&mut self, proc: &str, block: Duration) -> RedisResult<Option<Payload>> {
        match self {
            Blocking::Redis(c) => c.claim(proc, block).await,
            Blocking::Memory(m) => Ok(m.blocking_claim(proc, block).await),
        }
    }
}
