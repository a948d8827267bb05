//! Every Postgres statement is bounded on the server: a table lock held by someone else (an
//! operator's `LOCK TABLE`, a stuck migration) makes the worker's write and an operator command
//! fail within the timeout instead of waiting forever, directly and through a transaction pooler.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use common::pgbouncer::PgBouncer;
use sqlx::{Connection, PgConnection};
use step_worker::store::{Batch, ResultRecord, Status, Store};

const TIMEOUT: Duration = Duration::from_millis(500);
/// How long past the timeout a failure may take to arrive (connecting, a loaded machine).
const SLACK: Duration = Duration::from_secs(5);

fn one_result(job_id: &str) -> Batch {
    Batch {
        results: vec![ResultRecord {
            job_id: job_id.to_owned(),
            run_id: None,
            step: "builtin.noop".to_owned(),
            status: Status::Succeeded,
            attempts: 1,
            output: None,
            error: None,
            enqueued_at: None,
            started_at: None,
            finished_at: chrono::Utc::now(),
            duration_ms: None,
            worker_id: "w-test".to_owned(),
        }],
        ..Batch::default()
    }
}

/// Holds an exclusive lock on `step_results` in an open transaction until dropped.
async fn lock_results(database_url: &str) -> PgConnection {
    let mut conn = PgConnection::connect(database_url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE step_results IN ACCESS EXCLUSIVE MODE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// A write behind the lock fails with Postgres's statement-timeout error within the bound, and
/// succeeds once the lock is gone.
async fn write_behind_a_lock_fails_within_the_timeout(env: &TestEnv, store_url: &str) {
    let store = Store::connect_lazy_with(store_url, 2, TIMEOUT).unwrap();
    store.migrate().await.unwrap();
    let locker = lock_results(&env.database_url).await;
    let started = Instant::now();
    let result = tokio::time::timeout(TIMEOUT + SLACK, store.persist(&one_result("t-1")))
        .await
        .expect("the write must fail within the timeout, not wait on the lock");
    let err = result.expect_err("the write cannot succeed behind the lock");
    assert!(started.elapsed() >= TIMEOUT, "failed before the timeout: {err}");
    let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(
        code.as_deref(),
        Some("57014"),
        "query_canceled (statement timeout): {err}"
    );
    drop(locker);
    assert_eq!(store.persist(&one_result("t-1")).await.unwrap(), vec!["t-1".to_owned()]);
}

#[tokio::test]
async fn a_store_write_behind_a_table_lock_fails_within_the_statement_timeout() {
    let env = TestEnv::new().await;
    write_behind_a_lock_fails_within_the_timeout(&env, &env.database_url).await;
}

#[tokio::test]
async fn through_a_transaction_pooler_the_statement_timeout_still_applies() {
    let env = TestEnv::new().await;
    let bouncer = PgBouncer::start(env.admin_url(), env.db_name(), "transaction", 2);
    let url = format!("{}?pgbouncer=true", bouncer.url(env.db_name()));
    write_behind_a_lock_fails_within_the_timeout(&env, &url).await;
}

#[tokio::test]
async fn an_operator_command_behind_a_table_lock_exits_within_the_statement_timeout() {
    let env = TestEnv::new().await;
    Store::connect_lazy(&env.database_url, 1)
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let mut locker = PgConnection::connect(&env.database_url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE step_dead_letters IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_step-worker"))
        .env_clear()
        .envs(env.vars())
        .env("DATABASE_STATEMENT_TIMEOUT_MS", TIMEOUT.as_millis().to_string())
        .args(["dlq", "list"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(TIMEOUT + SLACK * 2, out)
        .await
        .expect("dlq list must exit within the timeout, not wait on the lock")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("statement timeout"), "{stderr}");
    assert!(started.elapsed() >= TIMEOUT);
}
