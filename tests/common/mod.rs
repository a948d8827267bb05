//! Test harness: every test gets its own queue key (and so its own Redis keys) and its own
//! Postgres database, so tests run in parallel against the shared local servers. Tests that
//! kill or stop a server start their own (see `servers`).
#![allow(dead_code)]

pub mod capture;
pub mod servers;

use std::future::Future;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::Value;
use sqlx::{PgPool, Row};
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

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// One test's isolated slice of Redis and Postgres.
pub struct TestEnv {
    pub queue_key: String,
    pub redis_url: String,
    pub database_url: String,
    admin_url: String,
    db_name: String,
    pub redis: redis::aio::ConnectionManager,
    pub pg: PgPool,
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
        }
    }

    /// The variables a worker of this environment runs with: fast timings, port 0.
    pub fn vars(&self) -> Vec<(String, String)> {
        [
            ("APP_ENV", "test"),
            ("REDIS_URL", self.redis_url.as_str()),
            ("DATABASE_URL", self.database_url.as_str()),
            ("QUEUE_KEY", self.queue_key.as_str()),
            ("HEALTH_CHECK_PORT", "0"),
            ("RETRY_BACKOFF_MS", "50"),
            ("RETRY_BACKOFF_MAX_MS", "2000"),
            ("CLAIM_BLOCK_MS", "2000"),
            ("HEARTBEAT_INTERVAL_MS", "200"),
            ("WORKER_DEADLINE_MS", "1500"),
            ("SHUTDOWN_TIMEOUT_MS", "5000"),
        ]
        .into_iter()
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
        self.llen(&self.queue_key).await
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
        sqlx::query("SELECT status, attempts, output, error, worker_id FROM step_results WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(&self.pg)
            .await
            .unwrap()
            .map(|r| ResultRow {
                status: r.get("status"),
                attempts: r.get("attempts"),
                output: r.get("output"),
                error: r.get("error"),
                worker_id: r.get("worker_id"),
            })
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pg).await.unwrap()
    }

    pub async fn dead_letters(&self) -> Vec<DeadLetterRow> {
        sqlx::query("SELECT job_id, reason, error, attempts, payload FROM step_dead_letters ORDER BY dead_at")
            .fetch_all(&self.pg)
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
            .collect()
    }

    pub async fn attempts(&self, job_id: &str) -> Vec<AttemptRow> {
        sqlx::query("SELECT attempt, outcome, error, started_at, finished_at FROM step_attempts WHERE job_id = $1 ORDER BY attempt")
            .bind(job_id)
            .fetch_all(&self.pg)
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
    }

    /// Waits until `job_id` has a result row.
    pub async fn wait_result(&self, job_id: &str, within: Duration) -> ResultRow {
        let pg = self.pg.clone();
        let id = job_id.to_owned();
        wait_for(&format!("a result row for {job_id}"), within, || {
            let (pg, id) = (pg.clone(), id.clone());
            async move {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM step_results WHERE job_id = $1")
                    .bind(id)
                    .fetch_one(&pg)
                    .await
                    .unwrap()
                    > 0
            }
        })
        .await;
        self.result(job_id).await.unwrap()
    }

    pub async fn wait_count(&self, what: &str, sql: &'static str, at_least: i64, within: Duration) {
        let pg = self.pg.clone();
        wait_for(what, within, || {
            let pg = pg.clone();
            async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pg).await.unwrap() >= at_least }
        })
        .await;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let (admin, db) = (self.admin_url.clone(), self.db_name.clone());
        // The test's runtime is blocked inside this drop, so the cleanup gets a runtime of its
        // own on a plain thread. FORCE ends the connections still open to the database.
        let _ = std::thread::spawn(move || {
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

#[derive(Debug, Clone)]
pub struct ResultRow {
    pub status: String,
    pub attempts: i32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub worker_id: String,
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
