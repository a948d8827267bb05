//! Cancellation on the Redis queue (`cancel.lua`): waiting jobs leave for the cancelled outbox,
//! running ones are flagged for their worker's heartbeat. See [`crate::cancel`] for the whole
//! operation (rows, answers).

use redis::{RedisError, RedisResult};

use super::RedisQueue;

/// Which jobs a cancellation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelTarget {
    /// The job with this id (every copy of it).
    Id(String),
    /// Every job of this workflow run (`run_id`).
    Run(String),
}

impl CancelTarget {
    fn mode_and_value(&self) -> (&'static str, &str) {
        match self {
            CancelTarget::Id(id) => ("id", id),
            CancelTarget::Run(run) => ("run", run),
        }
    }

    /// Whether a decoded payload is one of the wanted jobs: its id when it is.
    pub fn matches<'a>(&self, job: &'a serde_json::Value) -> Option<&'a str> {
        let (field, want) = match self {
            CancelTarget::Id(id) => ("id", id),
            CancelTarget::Run(run) => ("run_id", run),
        };
        (job.get(field)?.as_str()? == want).then_some(())?;
        job.get("id")?.as_str()
    }
}

/// What a cancellation did in the queue.
#[derive(Debug, Default)]
pub struct CancelReply {
    /// Outbox entries (`attempts|at_ms|by|payload`) of the waiting jobs it removed.
    pub removed: Vec<Vec<u8>>,
    /// (worker id, job id) of each job found in a worker's in-flight list: that worker stops it
    /// within one heartbeat.
    pub running: Vec<(String, String)>,
}

/// Attempts before giving up when workers register or steps are paused faster than a
/// cancellation can read them (each attempt is two round trips).
const STALE_RETRIES: usize = 5;

impl RedisQueue {
    /// Cancels `target`'s jobs (see `cancel.lua`). `by` names who cancels, in the rows.
    ///
    /// Errors: Redis failed or refused (a full Redis refuses flagging a running job), or the
    /// registered workers kept changing between the read and the script.
    pub async fn cancel(&self, target: &CancelTarget, by: &str) -> RedisResult<CancelReply> {
        let k = &self.keys;
        let (mode, value) = target.mode_and_value();
        // The outbox entry separates its fields with `|`.
        let by = by.replace('|', "_");
        let mut conn = self.conn.clone();
        for _ in 0..STALE_RETRIES {
            let (workers, paused): (Vec<String>, Vec<String>) = redis::pipe()
                .zrange(&k.workers, 0, -1)
                .smembers(&k.paused_steps)
                .query_async(&mut conn)
                .await?;
            let mut inv = self.scripts.cancel.key(&k.ready);
            inv.key(&k.delayed)
                .key(&k.attempts)
                .key(&k.interrupts)
                .key(&k.cancel)
                .key(&k.cancelled)
                .key(&k.workers)
                .key(&k.paused_steps)
                .arg(mode)
                .arg(value)
                .arg(&by)
                .arg(workers.len());
            for w in &workers {
                inv.key(k.proc(w)).arg(w);
            }
            inv.arg(paused.len());
            for s in &paused {
                inv.key(k.held(s)).arg(s);
            }
            for (step, _) in self.caps.iter() {
                inv.key(k.throttled(step));
            }
            for (step, _, _) in self.rates.iter() {
                inv.key(k.rate_waiting(step));
            }
            let reply: Vec<redis::Value> = inv.invoke_async(&mut conn).await?;
            let mut it = reply.into_iter();
            let fresh: i64 = redis::from_redis_value(it.next().unwrap_or(redis::Value::Int(0)))?;
            if fresh == 0 {
                continue;
            }
            let (Some(removed), Some(running)) = (it.next(), it.next()) else {
                return Err(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "cancel.lua: short reply",
                )));
            };
            let removed: Vec<Vec<u8>> = redis::from_redis_value(removed)?;
            let running: Vec<String> = redis::from_redis_value(running)?;
            let running = running.chunks_exact(2).map(|c| (c[0].clone(), c[1].clone())).collect();
            return Ok(CancelReply { removed, running });
        }
        Err(RedisError::from((
            redis::ErrorKind::Client,
            "cancel: workers registered or steps were paused faster than the cancellation could read them",
        )))
    }

    /// Forgets the cancellations of `ids` addressed to worker `wid`: it no longer holds them.
    pub async fn cancel_forget(&self, wid: &str, ids: &[String]) -> RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(&self.keys.cancel);
        for id in ids {
            cmd.arg(format!("{wid}\n{id}"));
        }
        cmd.query_async::<i64>(&mut self.conn.clone()).await.map(|_| ())
    }

    /// The oldest entries of the cancelled outbox (without removing them).
    pub async fn cancelled_peek(&self, n: usize) -> RedisResult<Vec<Vec<u8>>> {
        let n = n.max(1) as isize;
        redis::cmd("LRANGE")
            .arg(&self.keys.cancelled)
            .arg(-n)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Removes cancelled outbox entries whose rows are committed.
    pub async fn cancelled_remove(&self, entries: &[Vec<u8>]) -> RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.cmd("LREM").arg(&self.keys.cancelled).arg(1).arg(&e[..]).ignore();
        }
        pipe.query_async(&mut self.conn.clone()).await
    }
}
