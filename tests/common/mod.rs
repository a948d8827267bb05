//! Test harness: every test gets its own queue key (and so its own Redis keys) and its own
//! Postgres database, so tests run in parallel against the shared local servers. Tests that
//! kill or stop a server start their own (see `servers`).
#![allow(dead_code, unused_macros)]

pub mod capture;
pub mod pgbouncer;
pub mod redis_cluster;
pub mod servers;

use std::future::Future;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::Value;
use sqlx::{PgPool, Row, SqlitePool};
use step_worker::queue::MemoryQueue;
use step_worker::worker::Running;
use step_worker::{Config, Registry, Shutdown};

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Replaces the database name at the end of a Postgres URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = &base[..base.rfind('/').expect("database URL has a path")];
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Runs the `step-worker` binary with only `vars` in its environment and waits for it.
pub fn step_worker(vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_step-worker"))
        .env_clear()
        .envs(vars.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Declares each named `async fn(TestEnv)` as two tests, one per driver pair:
/// `redis_postgres::<name>` (what production runs) and `memory_sqlite::<name>` (the embedded
/// defaults), so one suite holds both to the same contract.
macro_rules! on_each_driver {
    ($($name:ident),* $(,)?) => {
        mod redis_postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(crate::common::TestEnv::new().await).await
            })*
        }
        mod memory_sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(crate::common::TestEnv::memory().await).await
            })*
        }
    };
}

/// Runs the same query code on whichever results store the environment uses: the body is
/// compiled once per pool type, so one test suite covers Postgres and SQLite alike.
macro_rules! on_store {
    ($env:expr, |$pool:ident| $body:expr) => {
        match &$env.sqlite {
            Some($pool) => $body,
            None => {
                let $pool = &$env.pg;
                $body
            }
        }
    };
}

/// One test's isolated slice of Redis and Postgres, or, for the embedded drivers
/// ([`TestEnv::memory`]), its own memory queue and SQLite file.
pub struct TestEnv {
    pub queue_key: String,
    pub redis_url: String,
    pub database_url: String,
    admin_url: String,
    db_name: String,
    pub redis: redis::aio::ConnectionManager,
    /// The Postgres database (unused, and never connected, in a memory environment).
    pub pg: PgPool,
    /// The memory queue and the SQLite store, in a memory environment.
    memory: Option<MemoryQueue>,
    /// The SQLite store, in a memory environment (read it through `on_store!`).
    pub sqlite: Option<SqlitePool>,
    sqlite_file: Option<std::path::PathBuf>,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with_servers(&redis_url(), &admin_database_url()).await
    }

    pub async fn with_servers(redis_url: &str, admin_url: &str) -> Self {
        step_worker::telemetry::init_for_tests();
        let db_name = unique("sw_test_");
        let admin = PgPool::connect(admin_url)
            .await
            .expect("connect to the test PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let database_url = with_database(admin_url, &db_name);
        let pg = PgPool::connect(&database_url).await.unwrap();
        let client = redis::Client::open(redis_url).unwrap();
        // A connection manager reconnects by itself, which tests that restart Redis rely on.
        let redis = client
            .get_connection_manager()
            .await
            .expect("connect to the test Redis");
        TestEnv {
            queue_key: unique("t.") + ".ready",
            redis_url: redis_url.to_owned(),
            database_url,
            admin_url: admin_url.to_owned(),
            db_name,
            redis,
            pg,
            memory: None,
            sqlite: None,
            sqlite_file: None,
        }
    }

    /// The embedded defaults: `QUEUE_DRIVER=memory` and a SQLite results file of its own.
    pub async fn memory() -> Self {
        step_worker::telemetry::init_for_tests();
        let queue_key = unique("t.") + ".ready";
        let file = std::env::temp_dir().join(format!("{}.db", unique("sw_test_")));
        let database_url = format!("sqlite://{}", file.display());
        let store = step_worker::store::Store::connect_lazy(&database_url, 1).unwrap();
        store.migrate().await.expect("migrate the test SQLite file");
        let sqlite = SqlitePool::connect(&database_url).await.unwrap();
        // A connection manager needs a server only when it is used, which a memory test never
        // does; it is here so the Redis-side fields keep one type.
        let redis = redis::Client::open(redis_url())
            .unwrap()
            .get_connection_manager()
            .await
            .expect("connect to the test Redis");
        TestEnv {
            memory: Some(MemoryQueue::named(&queue_key)),
            queue_key,
            redis_url: String::new(),
            database_url,
            admin_url: String::new(),
            db_name: String::new(),
            redis,
            pg: PgPool::connect_lazy(&admin_database_url()).unwrap(),
            sqlite: Some(sqlite),
            sqlite_file: Some(file),
        }
    }

    /// The test's own Postgres database (empty in a memory environment).
    pub fn db_name(&self) -> &str {
        &self.db_name
    }

    /// The URL of the server's maintenance database the test database was created from.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    pub fn is_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// The variables a worker of this environment runs with: fast timings, port 0.
    /// Runs the binary with `args` and this environment's variables (nothing else of the test
    /// process's), without blocking the test's runtime, on which an in-process worker may run.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_step-worker"))
            .env_clear()
            .envs(self.vars())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap()
    }

    pub fn vars(&self) -> Vec<(String, String)> {
        let queue: &[(&str, &str)] = match &self.memory {
            Some(_) => &[("QUEUE_DRIVER", "memory")],
            None => &[("REDIS_URL", self.redis_url.as_str())],
        };
        queue
            .iter()
            .copied()
            .chain([
                ("APP_ENV", "test"),
                ("DATABASE_URL", self.database_url.as_str()),
                ("QUEUE_KEY", self.queue_key.as_str()),
                ("HEALTH_CHECK_PORT", "0"),
                ("RETRY_BACKOFF_MS", "50"),
                ("RETRY_BACKOFF_MAX_MS", "2000"),
                ("CLAIM_BLOCK_MS", "2000"),
                ("HEARTBEAT_INTERVAL_MS", "200"),
                ("WORKER_DEADLINE_MS", "1500"),
                ("SHUTDOWN_TIMEOUT_MS", "5000"),
            ])
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    pub fn config(&self, overrides: &[(&str, &str)]) -> Config {
        let mut vars = self.vars();
        for (k, v) in overrides {
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_string(), v.to_string()));
        }
        Config::from_vars(vars).expect("test config is valid")
    }

    pub async fn start(&self, overrides: &[(&str, &str)]) -> Running {
        self.start_with(overrides, Registry::new()).await
    }

    pub async fn start_with(&self, overrides: &[(&str, &str)], registry: Registry) -> Running {
        step_worker::worker::start(self.config(overrides), registry, Shutdown::new())
            .await
            .expect("worker starts")
            .expect("worker was not stopped during startup")
    }

    /// `LPUSH`es a payload. After a Redis restart the first command on the old connection fails
    /// while the manager reconnects, so it is tried again once.
    pub async fn push(&self, payload: &str) {
        if let Some(q) = &self.memory {
            return q.push(payload.as_bytes()).expect("the memory queue has room");
        }
        let mut conn = self.redis.clone();
        if conn.lpush::<_, _, i64>(&self.queue_key, payload).await.is_err() {
            let _: i64 = conn.lpush(&self.queue_key, payload).await.unwrap();
        }
    }

    pub async fn push_job(&self, id: &str, step: &str, input: Value) {
        self.push(&serde_json::json!({ "id": id, "step": step, "input": input }).to_string())
            .await;
    }

    pub fn key(&self, suffix: &str) -> String {
        format!("{{{}}}:{suffix}", self.queue_key)
    }

    pub async fn llen(&self, key: &str) -> i64 {
        // Retried once: after a Redis restart the first command on the old connection fails
        // while the manager reconnects.
        let mut c = self.redis.clone();
        match c.llen(key).await {
            Ok(n) => n,
            Err(_) => c.llen(key).await.unwrap(),
        }
    }

    pub async fn ready_len(&self) -> i64 {
        if let Some(q) = &self.memory {
            return q.depths().ready as i64;
        }
        self.llen(&self.queue_key).await
    }

    /// Retries scheduled and not yet due.
    pub async fn delayed_len(&self) -> i64 {
        if let Some(q) = &self.memory {
            return q.depths().delayed as i64;
        }
        self.zcard(&self.key("delayed")).await
    }

    /// The ready list's payloads, newest first (`LRANGE 0 -1`).
    pub async fn ready_payloads(&self) -> Vec<String> {
        if let Some(q) = &self.memory {
            return q
                .ready()
                .into_iter()
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .collect();
        }
        self.redis.clone().lrange(&self.queue_key, 0, -1).await.unwrap()
    }

    /// Registered workers.
    pub async fn live_workers(&self) -> i64 {
        if let Some(q) = &self.memory {
            return q.depths().workers as i64;
        }
        self.zcard(&self.key("workers")).await
    }

    /// Payloads that still have a failed-attempt counter.
    pub async fn attempt_counters(&self) -> i64 {
        if let Some(q) = &self.memory {
            return q.attempt_counters() as i64;
        }
        self.redis.clone().hlen(self.key("attempts")).await.unwrap()
    }

    pub async fn zcard(&self, key: &str) -> i64 {
        // Retried once: after a Redis restart the first command on the old connection fails
        // while the manager reconnects.
        let mut c = self.redis.clone();
        match c.zcard(key).await {
            Ok(n) => n,
            Err(_) => c.zcard(key).await.unwrap(),
        }
    }

    /// Total length of every worker's in-flight list.
    pub async fn in_flight_len(&self) -> i64 {
        if let Some(q) = &self.memory {
            return q.depths().in_flight as i64;
        }
        let pattern = format!("{{{}}}:proc:*", self.queue_key);
        let mut c = self.redis.clone();
        let keys: Vec<String> = match c.keys(&pattern).await {
            Ok(k) => k,
            Err(_) => c.keys(&pattern).await.unwrap(),
        };
        let mut n = 0;
        for k in keys {
            n += self.llen(&k).await;
        }
        n
    }

    pub async fn result(&self, job_id: &str) -> Option<ResultRow> {
        on_store!(self, |pool| sqlx::query(
            "SELECT status, attempts, output, error, worker_id, started_at FROM step_results WHERE job_id = $1"
        )
        .bind(job_id)
        .fetch_optional(pool)
        .await
        .unwrap()
        .map(|r| ResultRow {
            status: r.get("status"),
            attempts: r.get("attempts"),
            output: r.get("output"),
            error: r.get("error"),
            worker_id: r.get("worker_id"),
            started_at: r.get("started_at"),
        }))
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        on_store!(self, |pool| sqlx::query_scalar(sql).fetch_one(pool).await.unwrap())
    }

    pub async fn dead_letters(&self) -> Vec<DeadLetterRow> {
        on_store!(self, |pool| sqlx::query(
            "SELECT job_id, reason, error, attempts, payload FROM step_dead_letters ORDER BY dead_at"
        )
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| DeadLetterRow {
            job_id: r.get("job_id"),
            reason: r.get("reason"),
            error: r.get("error"),
            attempts: r.get("attempts"),
            payload: r.get("payload"),
        })
        .collect())
    }

    pub async fn attempts(&self, job_id: &str) -> Vec<AttemptRow> {
        on_store!(self, |pool| {
            sqlx::query(
            "SELECT attempt, outcome, error, started_at, finished_at FROM step_attempts WHERE job_id = $1 ORDER BY attempt"
        )
        .bind(job_id)
        .fetch_all(pool)
        .await
            .unwrap()
            .into_iter()
            .map(|r| AttemptRow {
                attempt: r.get("attempt"),
                outcome: r.get("outcome"),
                error: r.get("error"),
                started_at: r.get("started_at"),
                finished_at: r.get("finished_at"),
            })
            .collect()
        })
    }

    /// The (started_at, finished_at) of every result row of `step` that ran, by start.
    pub async fn step_intervals(
        &self,
        step: &str,
    ) -> Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
        on_store!(self, |pool| {
            sqlx::query(
            "SELECT started_at, finished_at FROM step_results WHERE step = $1 AND started_at IS NOT NULL ORDER BY started_at"
        )
        .bind(step)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get("started_at"), r.get("finished_at")))
        .collect()
        })
    }

    /// Waits until `job_id` has a result row.
    pub async fn wait_result(&self, job_id: &str, within: Duration) -> ResultRow {
        wait_for(&format!("a result row for {job_id}"), within, || async {
            self.result(job_id).await.is_some()
        })
        .await;
        self.result(job_id).await.unwrap()
    }

    pub async fn wait_count(&self, what: &str, sql: &'static str, at_least: i64, within: Duration) {
        wait_for(what, within, || async { self.count(sql).await >= at_least }).await;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(file) = &self.sqlite_file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            return;
        }
        let (admin, db) = (self.admin_url.clone(), self.db_name.clone());
        let (redis_url, queue) = (self.redis_url.clone(), self.queue_key.clone());
        // The test's runtime is blocked inside this drop, so the cleanup gets a runtime of its
        // own on a plain thread. FORCE ends the connections still open to the database.
        let _ = std::thread::spawn(move || {
            delete_queue_keys(&redis_url, &queue);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(admin) = PgPool::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Deletes every key of queue `queue` (the ready list and the `{queue}:*` keys beside it), so a
/// test leaves nothing in the shared Redis.
pub fn delete_queue_keys(redis_url: &str, queue: &str) {
    let Ok(mut conn) = redis::Client::open(redis_url).and_then(|c| c.get_connection()) else {
        return;
    };
    let mut keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(format!("{{{queue}}}:*"))
        .clone()
        .iter(&mut conn)
        .map(|it| it.filter_map(Result::ok).collect())
        .unwrap_or_default();
    keys.push(queue.to_owned());
    let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
}

#[derive(Debug, Clone)]
pub struct ResultRow {
    pub status: String,
    pub attempts: i32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub worker_id: String,
    /// When the attempt that settled the job started (none when nothing ran).
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone)]
pub struct DeadLetterRow {
    pub job_id: Option<String>,
    pub reason: String,
    pub error: Option<String>,
    pub attempts: i32,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub attempt: i32,
    pub outcome: String,
    pub error: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
}

/// Polls `cond` until it holds, failing the test after `within`.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// GETs a URL and returns the status code and body.
pub async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("HTTP request");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of a metric line such as `step_worker_jobs_total{outcome="succeeded",step="x"}`.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// A child process killed (and reaped) when dropped, so a failing test leaves no process behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary run as a worker process with `env`'s variables and `extra`, logging warnings to the
/// test's stderr; SIGKILLed when dropped, so a failing test leaves nothing behind.
pub struct WorkerProcess(pub std::process::Child);

impl WorkerProcess {
    pub fn spawn(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_step-worker"))
            .env_clear()
            .envs(env.vars())
            .envs(extra.iter().copied())
            .env("LOG_LEVEL", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        WorkerProcess(child)
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
