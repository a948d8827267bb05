//! Which copy of a job id is running (`active.lua`): the guard that keeps two copies of one id
//! from running at once on any replicas. One script call per claim batch; entries are released
//! by the settle script, so the hot path sends one command more per batch, none per job.

use redis::RedisResult;

use super::RedisQueue;

impl RedisQueue {
    /// See [`super::Queue::take_active`].
    pub async fn take_active(&self, wid: &str, ids: &[&str]) -> RedisResult<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.active.key(&self.keys.active);
        inv.key(&self.keys.workers).arg(wid);
        for id in ids {
            inv.arg(*id);
        }
        let granted: Vec<i64> = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(granted.into_iter().map(|g| g == 1).collect())
    }
}
