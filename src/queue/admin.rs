//! Operator-side queue operations (`step-worker stats`, `enqueue`, `pause`, `resume`): reading
//! the registry and flipping the pause switches. Kept apart from the worker's hot path.

use std::time::Duration;

use redis::RedisResult;

use super::RedisQueue;

/// A registered worker as `stats` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerInfo {
    pub worker_id: String,
    /// Milliseconds since its last heartbeat, by the Redis clock.
    pub last_heartbeat_ms_ago: i64,
    /// Jobs in its in-flight list.
    pub in_flight: u64,
}

impl RedisQueue {
    /// Registered workers, given the deadline they register with (to turn a deadline back into
    /// the time of the beat).
    pub async fn workers(&self, deadline: Duration) -> RedisResult<Vec<WorkerInfo>> {
        let mut conn = self.conn.clone();
        let (time, entries): ((i64, i64), Vec<(String, f64)>) = redis::pipe()
            .cmd("TIME")
            .cmd("ZRANGE")
            .arg(&self.keys.workers)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let mut pipe = redis::pipe();
        for (wid, _) in &entries {
            pipe.cmd("LLEN").arg(self.keys.proc(wid));
        }
        let lens: Vec<u64> = if entries.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await?
        };
        Ok(entries
            .into_iter()
            .zip(lens)
            .map(|((worker_id, deadline_ms), in_flight)| WorkerInfo {
                worker_id,
                last_heartbeat_ms_ago: now_ms - (deadline_ms as i64 - deadline.as_millis() as i64),
                in_flight,
            })
            .collect())
    }

    /// Per rate-limited step: how long until its next start conforms (0: a start may go now),
    /// from its GCRA state and the server's clock.
    pub async fn rate_ahead(&self) -> RedisResult<Vec<(String, u64)>> {
        if self.rates.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(&self.keys.rate_tat);
        for (step, _, _) in self.rates.iter() {
            hmget.arg(step);
        }
        let (tats, time): (Vec<Option<f64>>, (u64, u64)) = redis::pipe()
            .add_command(hmget)
            .cmd("TIME")
            .query_async(&mut conn)
            .await?;
        let now = time.0 as f64 * 1000.0 + time.1 as f64 / 1000.0;
        Ok(self
            .rates
            .iter()
            .zip(tats)
            .map(|((step, interval, burst), tat)| {
                let tau = f64::from(burst.saturating_sub(1)) * interval;
                let ahead = tat.unwrap_or(0.0) - tau - now;
                (step.clone(), ahead.max(0.0).ceil() as u64)
            })
            .collect())
    }

    /// The paused steps and how many jobs each holds.
    pub async fn paused_steps(&self) -> RedisResult<Vec<(String, u64)>> {
        let mut conn = self.conn.clone();
        let steps: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.keys.paused_steps)
            .query_async(&mut conn)
            .await?;
        let mut pipe = redis::pipe();
        for s in &steps {
            pipe.cmd("LLEN").arg(self.keys.held(s));
        }
        let lens: Vec<u64> = if steps.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await?
        };
        Ok(steps.into_iter().zip(lens).collect())
    }

    /// Pauses or resumes claiming on every worker.
    pub async fn set_paused(&self, paused: bool) -> RedisResult<()> {
        let mut cmd = if paused { redis::cmd("SET") } else { redis::cmd("DEL") };
        cmd.arg(&self.keys.paused);
        if paused {
            cmd.arg("1");
        }
        cmd.query_async::<()>(&mut self.conn.clone()).await
    }

    pub async fn pause_step(&self, step: &str) -> RedisResult<()> {
        redis::cmd("SADD")
            .arg(&self.keys.paused_steps)
            .arg(step)
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    /// Resumes a step; returns how many held jobs went back to ready.
    pub async fn resume_step(&self, step: &str) -> RedisResult<u64> {
        let k = &self.keys;
        self.scripts
            .resume_step
            .key(&k.paused_steps)
            .key(k.held(step))
            .key(&k.ready)
            .arg(step)
            .invoke_async(&mut self.conn.clone())
            .await
    }

    /// Pushes many payloads onto the ready list in one round trip.
    pub async fn push_many(&self, payloads: &[Vec<u8>]) -> RedisResult<()> {
        if payloads.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("LPUSH");
        cmd.arg(&self.keys.ready);
        for p in payloads {
            cmd.arg(&p[..]);
        }
        cmd.query_async::<i64>(&mut self.conn.clone()).await.map(|_| ())
    }

    /// Schedules a payload to enter ready after `delay`.
    pub async fn schedule(&self, payload: &[u8], delay: Duration) -> RedisResult<()> {
        self.scripts
            .schedule
            .key(&self.keys.delayed)
            .arg(delay.as_millis() as u64)
            .arg(payload)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
    }

    /// Forgets the attempt and recovery counters of a payload (a replay starts fresh).
    pub async fn reset_counters(&self, payloads: &[Vec<u8>]) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        for p in payloads {
            let h = super::sha1_hex(p);
            pipe.cmd("HDEL").arg(&self.keys.attempts).arg(&h).ignore();
            pipe.cmd("HDEL").arg(&self.keys.interrupts).arg(&h).ignore();
        }
        pipe.query_async(&mut self.conn.clone()).await
    }
}
