//! The oracle, checked once the system is quiet (after Jepsen's total-queue checker): nothing
//! lost, nothing unexpected, one row per job, every queue structure in Redis drained, every
//! expected dead letter present with its reason, nothing evicted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::Row;

use crate::cluster::Cluster;
use crate::workload::{Expect, Workload};

/// What Redis holds for a queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RedisState {
    pub ready: i64,
    pub delayed: i64,
    pub in_flight: i64,
    pub poison: i64,
    pub attempts: i64,
    pub interrupts: i64,
    pub workers: i64,
    pub reaped: i64,
}

impl RedisState {
    pub fn drained(&self) -> bool {
        self.ready == 0 && self.delayed == 0 && self.in_flight == 0 && self.poison == 0
    }
}

#[derive(Debug, Default)]
pub struct Verdict {
    /// Valid jobs with no result row.
    pub lost: Vec<String>,
    /// Result rows for ids that were never enqueued.
    pub unexpected: Vec<String>,
    /// Result rows whose status is not the expected one.
    pub wrong_status: Vec<(String, String)>,
    /// Ids with more than one result row (impossible with the primary key; checked anyway).
    pub multi_rows: i64,
    /// Expected dead letters that are missing (id or payload prefix, reason).
    pub missing_dead_letters: Vec<(String, String)>,
    /// Dead letters beyond the expected ones (duplicates filed by re-runs).
    pub extra_dead_letters: usize,
    pub redis: RedisState,
    pub evicted_keys: i64,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.unexpected.is_empty()
            && self.wrong_status.is_empty()
            && self.multi_rows == 0
            && self.missing_dead_letters.is_empty()
            && self.redis.drained()
            && self.redis.attempts == 0
            && self.redis.interrupts == 0
            && self.evicted_keys == 0
    }

    pub fn assert_clean(&self) {
        assert!(
            self.clean(),
            "oracle: lost {} {:?}, unexpected {:?}, wrong status {:?}, multi rows {}, missing dead letters {:?}, redis {:?}, evicted {}",
            self.lost.len(),
            &self.lost[..self.lost.len().min(10)],
            &self.unexpected[..self.unexpected.len().min(10)],
            &self.wrong_status[..self.wrong_status.len().min(10)],
            self.multi_rows,
            &self.missing_dead_letters[..self.missing_dead_letters.len().min(10)],
            self.redis,
            self.evicted_keys
        );
    }
}

pub async fn redis_state(c: &Cluster) -> redis::RedisResult<RedisState> {
    let mut conn = c.redis_conn.clone();
    let procs: Vec<String> = redis::cmd("KEYS").arg(c.key("proc:*")).query_async(&mut conn).await?;
    let mut pipe = redis::pipe();
    pipe.llen(&c.queue_key)
        .zcard(c.key("delayed"))
        .llen(c.key("poison"))
        .hlen(c.key("attempts"))
        .hlen(c.key("interrupts"))
        .zcard(c.key("workers"))
        .zcard(c.key("reaped"));
    for p in &procs {
        pipe.llen(p);
    }
    let v: Vec<i64> = pipe.query_async(&mut conn).await?;
    Ok(RedisState {
        ready: v[0],
        delayed: v[1],
        poison: v[2],
        attempts: v[3],
        interrupts: v[4],
        workers: v[5],
        reaped: v[6],
        in_flight: v[7..].iter().sum(),
    })
}

/// Keys Redis evicted, summed over every node (one on a single server).
pub async fn evicted_keys(c: &Cluster) -> i64 {
    let mut cmd = redis::cmd("INFO");
    cmd.arg("stats");
    let replies = c.redis_conn.query_each_node(cmd).await.unwrap();
    replies
        .into_iter()
        .map(|v| {
            let info: String = redis::from_redis_value(v).unwrap();
            info.lines()
                .find_map(|l| l.strip_prefix("evicted_keys:"))
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap()
        })
        .sum()
}

async fn count(c: &Cluster, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&c.pg_pool).await.unwrap_or(-1)
}

/// Waits until at least `n` jobs have their result row: the load is running.
pub async fn wait_results(c: &Cluster, n: i64) {
    crate::until("the first results", Duration::from_secs(60), || async {
        (count(c, "SELECT count(*) FROM step_results").await >= n).then_some(())
    })
    .await;
}

/// Waits until Redis is drained and Postgres holds every expected row and dead letter,
/// restarting replicas that crash meanwhile (as a platform would). Returns how many it restarted.
pub async fn wait_quiet(c: &mut Cluster, w: &Workload, within: Duration) -> usize {
    let rows = w
        .valid()
        .map(|j| j.id.clone())
        .collect::<std::collections::HashSet<_>>()
        .len() as i64;
    let letters = w.jobs.iter().filter(|j| !matches!(j.expect, Expect::Succeeded)).count() as i64;
    let deadline = Instant::now() + within;
    let mut restarts = 0;
    loop {
        restarts += c.supervise();
        let state = redis_state(c).await.ok();
        let done = state.is_some_and(|s| s.drained())
            && count(c, "SELECT count(*) FROM step_results").await >= rows
            && count(c, "SELECT count(*) FROM step_dead_letters").await >= letters;
        if done {
            return restarts;
        }
        if Instant::now() > deadline {
            eprintln!("not quiet after {within:?}: redis {state:?}");
            return restarts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn check(c: &Cluster, w: &Workload) -> Verdict {
    let rows = sqlx::query("SELECT job_id, status FROM step_results")
        .fetch_all(&c.pg_pool)
        .await
        .unwrap();
    let got: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut v = Verdict {
        multi_rows: count(c, "SELECT count(*) - count(DISTINCT job_id) FROM step_results").await,
        ..Default::default()
    };
    let mut expected: HashMap<&str, &Expect> = HashMap::new();
    for j in w.valid() {
        expected.insert(j.id.as_deref().unwrap(), &j.expect);
    }
    for (id, expect) in &expected {
        match (got.get(*id), expect) {
            (None, _) => v.lost.push(id.to_string()),
            (Some(s), Expect::Succeeded) if s != "succeeded" => v.wrong_status.push((id.to_string(), s.clone())),
            (Some(s), Expect::Dead(_)) if s != "dead" => v.wrong_status.push((id.to_string(), s.clone())),
            _ => {}
        }
    }
    v.unexpected = got
        .keys()
        .filter(|k| !expected.contains_key(k.as_str()))
        .cloned()
        .collect();

    let letters = sqlx::query("SELECT job_id, reason, payload FROM step_dead_letters")
        .fetch_all(&c.pg_pool)
        .await
        .unwrap();
    // Multisets keyed by (job id, reason) and by (payload, reason).
    let mut by_id: HashMap<(String, String), usize> = HashMap::new();
    let mut by_payload: HashMap<(Vec<u8>, String), usize> = HashMap::new();
    for l in &letters {
        let (id, reason, payload): (Option<String>, String, Vec<u8>) = (l.get(0), l.get(1), l.get(2));
        if let Some(id) = id {
            *by_id.entry((id, reason.clone())).or_default() += 1;
        }
        *by_payload.entry((payload, reason)).or_default() += 1;
    }
    let mut matched = 0;
    for j in &w.jobs {
        let hit = match &j.expect {
            Expect::Succeeded => continue,
            Expect::Dead(reason) => take(&mut by_id, (j.id.clone().unwrap(), reason.to_string())),
            Expect::Malformed(reason) => take(&mut by_payload, (j.payload.clone(), reason.to_string())),
        };
        if hit {
            matched += 1;
        } else {
            let what =
                j.id.clone()
                    .unwrap_or_else(|| String::from_utf8_lossy(&j.payload[..j.payload.len().min(60)]).into_owned());
            let reason = match &j.expect {
                Expect::Dead(r) | Expect::Malformed(r) => r.to_string(),
                Expect::Succeeded => unreachable!(),
            };
            v.missing_dead_letters.push((what, reason));
        }
    }
    v.extra_dead_letters = letters.len() - matched;
    v.redis = redis_state(c).await.unwrap();
    v.evicted_keys = evicted_keys(c).await;
    v
}

fn take<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K) -> bool {
    match m.get_mut(&k) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}
