//! Through a transaction-mode PgBouncer (what Supabase's pooler on port 6543 is): two worker
//! processes, thousands of jobs with failures and dead letters, and every subcommand, with
//! PgBouncer's default settings and only two server connections shared by every client. The
//! oracle counts the rows and reads every log for a prepared-statement error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::pgbouncer::PgBouncer;
use common::servers::free_port;
use common::{TestEnv, wait_for};
use redis::AsyncCommands;
use serde_json::json;
use step_worker::store::Store;
use tokio::process::Command;

/// Enough jobs that the two workers' connections interleave on the two server connections for
/// thousands of transactions; still seconds in a debug build.
const JOBS: usize = 3_000;
const WAIT: Duration = Duration::from_secs(180);

/// What the broken client logged: a statement reaching a server connection that does not hold it.
const PREPARED_STATEMENT_ERRORS: [&str; 3] = ["prepared statement", "bind message", "unsupported startup parameter"];

struct Cli {
    vars: Vec<(String, String)>,
    /// Everything every process printed, for the final search.
    log: String,
}

impl Cli {
    async fn run(&mut self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_step-worker"))
            .env_clear()
            .envs(self.vars.iter().cloned())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        self.log += &format!(
            "$ {args:?}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs a subcommand that must succeed; returns its standard output.
    async fn ok(&mut self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "{args:?} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A `step-worker run` process with its log in a file.
struct Worker {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Worker {
    fn start(vars: &[(String, String)], dir: &Path, n: usize) -> Self {
        let port = free_port();
        let log = dir.join(format!("worker-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_step-worker"))
            .env_clear()
            .envs(vars.iter().cloned())
            .env("HEALTH_CHECK_PORT", port.to_string())
            .arg("run")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Worker { child, port, log }
    }

    /// SIGTERM, then waits for the exit; returns the worker's log.
    fn stop(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "worker did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workers' log folder, removed however the test ends.
struct LogDir(PathBuf);

impl LogDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(common::unique("sw-pooler-"));
        std::fs::create_dir_all(&dir).unwrap();
        LogDir(dir)
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The job mix, by index: what each job does and so which rows it leaves.
fn job(i: usize) -> serde_json::Value {
    let (step, input) = match i % 10 {
        0 => ("builtin.fail", json!({"permanent": true})),
        1 => ("builtin.fail", json!({"times": 1})),
        2 => ("builtin.fail", json!({})),
        3 => ("no.such.step", json!(null)),
        _ => ("builtin.noop", json!({"i": i})),
    };
    json!({"id": format!("p-{i}"), "step": step, "input": input})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_every_subcommand_run_through_a_transaction_pooler_without_prepared_statement_errors() {
    let env = TestEnv::new().await;
    let bouncer = PgBouncer::start(env.admin_url(), env.db_name(), "transaction", 2);
    eprintln!("{}", PgBouncer::version());
    let database_url = format!("{}?pgbouncer=true", bouncer.url(env.db_name()));
    let dir = LogDir::new();
    let vars: Vec<(String, String)> = [
        ("APP_ENV", "test"),
        ("REDIS_URL", env.redis_url.as_str()),
        ("DATABASE_URL", database_url.as_str()),
        ("QUEUE_KEY", env.queue_key.as_str()),
        ("MAX_RETRY_ATTEMPTS", "1"),
        ("RETRY_BACKOFF_MS", "10"),
        ("RETRY_BACKOFF_MAX_MS", "50"),
        ("CLAIM_BLOCK_MS", "500"),
        ("WORKER_CONCURRENCY", "16"),
        // Small batches: many more transactions, so more chances for clients to interleave.
        ("PERSIST_BATCH_SIZE", "20"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut cli = Cli {
        vars: vars.clone(),
        log: String::new(),
    };

    // Three migrators at once: one applies, the others wait for its lock and find it done.
    let migrators: Vec<_> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_step-worker"))
                .env_clear()
                .envs(vars.iter().cloned())
                .arg("migrate")
                .output()
        })
        .collect();
    for out in futures::future::join_all(migrators).await {
        let out = out.unwrap();
        cli.log += &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        env.count("SELECT count(*) FROM _sqlx_migrations WHERE success").await,
        up_migrations()
    );

    let workers: Vec<Worker> = (0..2).map(|n| Worker::start(&vars, &dir.0, n)).collect();
    let mut redis = env.redis.clone();
    let payloads: Vec<String> = (0..JOBS).map(|i| job(i).to_string()).collect();
    for chunk in payloads.chunks(500) {
        let _: i64 = redis.lpush(&env.queue_key, chunk).await.unwrap();
    }
    // /health is sampled while the jobs run: it must not flap.
    let unhealthy = std::cell::RefCell::new(Vec::new());
    wait_for("every job's result row", WAIT, || async {
        for w in &workers {
            let url = format!("http://127.0.0.1:{}/health", w.port);
            match reqwest::get(&url).await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => unhealthy.borrow_mut().push(r.status().to_string()),
                // Not listening yet, right after the start.
                Err(_) => {}
            }
        }
        env.count("SELECT count(*) FROM step_results").await >= JOBS as i64
    })
    .await;
    assert!(unhealthy.borrow().is_empty(), "/health answered {unhealthy:?}");

    let tenth = (JOBS / 10) as i64;
    for (sql, expected) in [
        ("SELECT count(*) FROM step_results", JOBS as i64),
        (
            "SELECT count(*) FROM step_results WHERE status = 'succeeded'",
            7 * tenth,
        ),
        ("SELECT count(*) FROM step_dead_letters", 3 * tenth),
        (
            "SELECT count(*) FROM step_dead_letters WHERE reason = 'permanent_failure'",
            tenth,
        ),
        (
            "SELECT count(*) FROM step_dead_letters WHERE reason = 'retries_exhausted'",
            tenth,
        ),
        (
            "SELECT count(*) FROM step_dead_letters WHERE reason = 'unknown_step'",
            tenth,
        ),
        // permanent: 1 failed attempt; fails once: 1; always fails: 2 (MAX_RETRY_ATTEMPTS=1).
        ("SELECT count(*) FROM step_attempts", 4 * tenth),
    ] {
        assert_eq!(env.count(sql).await, expected, "{sql}");
    }

    // Every subcommand, through the pooler, while the workers run.
    let port = workers[0].port.to_string();
    cli.vars.push(("HEALTH_CHECK_PORT".into(), port));
    cli.ok(&["config", "check"]).await;
    cli.ok(&["healthcheck"]).await;
    let stats = cli.ok(&["stats", "--json"]).await;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["dead_letters_pending"], 3 * tenth, "{stats}");
    cli.ok(&["stats"]).await;
    cli.ok(&["enqueue", r#"{"id":"p-enqueued","step":"builtin.noop"}"#])
        .await;
    cli.ok(&["smoke", "--timeout", "60s"]).await;
    cli.ok(&["load", "--jobs", "200", "--timeout", "120s"]).await;
    assert!(env.result("p-enqueued").await.is_some());
    let listed = cli.ok(&["dlq", "list", "--json", "--limit", "1"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    cli.ok(&["dlq", "show", &id]).await;
    cli.ok(&["dlq", "list", "--reason", "unknown_step"]).await;
    cli.ok(&["dlq", "replay", "--reason", "permanent_failure", "--dry-run"])
        .await;
    cli.ok(&["dlq", "replay", "--reason", "permanent_failure"]).await;
    // The replayed jobs fail again: each files a new dead letter.
    env.wait_count(
        "the replayed jobs' new dead letters",
        "SELECT count(*) FROM step_dead_letters",
        4 * tenth,
        WAIT,
    )
    .await;
    cli.ok(&["dlq", "purge", "--reason", "unknown_step", "--yes"]).await;
    assert_eq!(env.count("SELECT count(*) FROM step_dead_letters").await, 3 * tenth);
    cli.ok(&["pause"]).await;
    cli.ok(&["resume"]).await;
    cli.ok(&["purge-ready", "--yes"]).await;

    let mut log = String::new();
    for w in workers {
        log += &w.stop();
    }
    // Retention's statements take a transaction-level advisory lock: legal through the pooler.
    cli.ok(&["results", "purge", "--older-than", "1ms", "--status", "dead", "--yes"])
        .await;
    assert_eq!(
        env.count("SELECT count(*) FROM step_results WHERE status = 'dead'")
            .await,
        0
    );
    assert!(
        env.count("SELECT count(*) FROM step_results WHERE status = 'succeeded'")
            .await
            > 0
    );
    // Migrations through the pooler both ways, and a no-op run that still reports success.
    cli.ok(&["migrate", "--revert"]).await;
    assert_eq!(env.count("SELECT count(*) FROM _sqlx_migrations").await, 0);
    cli.ok(&["migrate"]).await;
    cli.ok(&["migrate"]).await;
    assert_eq!(
        env.count("SELECT count(*) FROM _sqlx_migrations WHERE success").await,
        up_migrations()
    );

    log += &cli.log;
    log += &bouncer.log();
    for needle in PREPARED_STATEMENT_ERRORS {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(needle)).take(5).collect();
        assert!(hits.is_empty(), "{needle:?} was logged: {hits:#?}");
    }
}

/// Session mode (Supabase's pooler on port 5432) with PgBouncer's default settings needs no hint:
/// each client keeps its server connection, so the statement cache stays on.
#[tokio::test]
async fn a_session_mode_pgbouncer_with_default_settings_needs_no_hint() {
    let env = TestEnv::new().await;
    let bouncer = PgBouncer::start(env.admin_url(), env.db_name(), "session", 2);
    let store = Store::connect_lazy(&bouncer.url(env.db_name()), 2).unwrap();
    assert!(!store.postgres().unwrap().pooled());
    store.migrate().await.unwrap();
    assert!(store.is_migrated().await.unwrap());
    assert_eq!(store.pending_dead_letters().await.unwrap(), 0);
    assert!(store.result("none").await.unwrap().is_none());
}

/// `migrate` fails exactly when the schema is not the binary's: here the database records a
/// migration this binary does not carry (a rollback to an older image).
#[tokio::test]
async fn migrate_through_the_transaction_pooler_fails_on_a_schema_newer_than_the_binary() {
    let env = TestEnv::new().await;
    let bouncer = PgBouncer::start(env.admin_url(), env.db_name(), "transaction", 2);
    let url = format!("{}?pgbouncer=true", bouncer.url(env.db_name()));
    let mut cli = Cli {
        vars: vec![("DATABASE_URL".into(), url)],
        log: String::new(),
    };
    cli.ok(&["migrate"]).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99991231000000, 'from a newer release', TRUE, '\\x00', 0)",
    )
    .execute(&env.pg)
    .await
    .unwrap();
    let out = cli.run(&["migrate"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", cli.log);
    assert!(cli.log.contains("99991231000000"), "{}", cli.log);
}

/// How many migrations the binary applies: each is one row of `_sqlx_migrations`.
fn up_migrations() -> i64 {
    step_worker::store::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count() as i64
}
