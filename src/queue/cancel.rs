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
    /// The envelope field that names the wanted jobs, and its value.
    fn field_and_value(&self) -> (&'static str, &str) {
        match self {
            CancelTarget::Id(id) => ("id", id),
            CancelTarget::Run(run) => ("run_id", run),
        }
    }

    /// Whether a decoded payload is one of the wanted jobs: its id when it is.
    pub fn matches<'a>(&self, job: &'a serde_json::Value) -> Option<&'a str> {
        let (field, want) = self.field_and_value();
        (job.get(field)?.as_str()? == want).then_some(())?;
        job.get("id")?.as_str()
    }
}

/// What a cancellation did in the queue.
#[derive(Debug, Default)]
pub struct CancelReply {
    /// Outbox entries (`attempts|at_ms|by|held|payload`) of the waiting jobs it removed.
    pub removed: Vec<Vec<u8>>,
    /// (worker id, job id) of each job found in a worker's in-flight list: that worker stops it
    /// within one heartbeat.
    pub running: Vec<(String, String)>,
    /// Nothing matched, but a job of this id is in the cancelled outbox: it was cancelled and
    /// its row is not written yet.
    pub pending: bool,
}

/// Keys a `SCAN` step looks at: the queue's keys are few, the whole keyspace may not be.
const SCAN_COUNT: u64 = 1000;
/// `LREM`s per round trip when clearing outbox entries.
const REMOVE_CHUNK: usize = 500;

/// `pattern` with the glob's special characters escaped, so a queue name matches literally.
fn glob_escape(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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
        let (field, value) = target.field_and_value();
        // The outbox entry separates its fields with `|`.
        let by = by.replace('|', "_");
        let mut conn = self.conn.clone();
        let waiting = self.waiting_lists().await?;
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
                .arg(field)
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
            for list in &waiting {
                inv.key(list);
            }
            let reply: Vec<redis::Value> = inv.invoke_async(&mut conn).await?;
            let mut it = reply.into_iter();
            let fresh: i64 = redis::from_redis_value(it.next().unwrap_or(redis::Value::Int(0)))?;
            if fresh == 0 {
                continue;
            }
            let (Some(removed), Some(running), Some(pending)) = (it.next(), it.next(), it.next()) else {
                return Err(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "cancel.lua: short reply",
                )));
            };
            let removed: Vec<Vec<u8>> = redis::from_redis_value(removed)?;
            let running: Vec<String> = redis::from_redis_value(running)?;
            let running = running.chunks_exact(2).map(|c| (c[0].clone(), c[1].clone())).collect();
            let pending: i64 = redis::from_redis_value(pending)?;
            return Ok(CancelReply {
                removed,
                running,
                pending: pending == 1,
            });
        }
        Err(RedisError::from((
            redis::ErrorKind::Client,
            "cancel: workers registered or steps were paused faster than the cancellation could read them",
        )))
    }

    /// Every list of jobs waiting on a flow limit: those of the limits this process is
    /// configured with, and any other `throttled:` or `rate_waiting:` list found in Redis (a
    /// replica with other limits, or a limit since removed, may have left jobs waiting there).
    /// The search runs where the queue's slot lives (on a cluster, the owner of that slot).
    async fn waiting_lists(&self) -> RedisResult<Vec<String>> {
        let k = &self.keys;
        let mut lists: Vec<String> = self.caps.iter().map(|(step, _)| k.throttled(step)).collect();
        lists.extend(self.rates.iter().map(|(step, _, _)| k.rate_waiting(step)));
        for prefix in [k.throttled(""), k.rate_waiting("")] {
            let pattern = format!("{}*", glob_escape(&prefix));
            let mut cursor = 0u64;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(SCAN_COUNT);
                let (next, found): (u64, Vec<String>) =
                    redis::from_redis_value(self.conn.query_at_owner(cmd, &k.ready).await?)?;
                lists.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        lists.sort_unstable();
        lists.dedup();
        Ok(lists)
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
        self.oldest(&self.keys.cancelled, n).await
    }

    /// Removes cancelled outbox entries whose rows are committed. `newest` says where they sit:
    /// at the head (just written by a cancellation, in `entries`' order) or at the tail (read by
    /// [`RedisQueue::cancelled_peek`]). Each `LREM` then finds its entry at once, where scanning
    /// from the other end would make removing n entries cost n² comparisons.
    pub async fn cancelled_remove(&self, entries: &[Vec<u8>], newest: bool) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        let ordered: Vec<&Vec<u8>> = match newest {
            // LPUSH put the last entry at the head.
            true => entries.iter().rev().collect(),
            false => entries.iter().collect(),
        };
        let count = if newest { 1 } else { -1 };
        for chunk in ordered.chunks(REMOVE_CHUNK) {
            let mut pipe = redis::pipe();
            for e in chunk {
                pipe.cmd("LREM")
                    .arg(&self.keys.cancelled)
                    .arg(count)
                    .arg(&e[..])
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        Ok(())
    }
}
