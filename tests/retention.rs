//! RESULT_RETENTION and `step-worker results purge`: expired outcomes are deleted in bounded
//! batches, newer ones and kinds without a retention are kept. Run on Redis with Postgres and
//! on the memory queue with SQLite.

#[macro_use]
mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::TestEnv;
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

on_each_driver!(
    a_finished_job_is_deleted_once_its_retention_has_passed,
    expired_rows_are_deleted_and_newer_ones_and_other_kinds_kept,
);

/// A result row finished `age` ago, written as the worker writes one.
async fn insert_result(env: &TestEnv, job_id: &str, status: &str, age: chrono::Duration) {
    let at: DateTime<Utc> = Utc::now() - age;
    on_store!(env, |pool| sqlx::query(
        "INSERT INTO step_results (job_id, step, status, attempts, finished_at, worker_id) \
         VALUES ($1, 'builtin.noop', $2, 1, $3, 'test')"
    )
    .bind(job_id)
    .bind(status)
    .bind(at)
    .execute(pool)
    .await
    .unwrap()
    .rows_affected());
}

async fn insert_attempt(env: &TestEnv, job_id: &str, age: chrono::Duration) {
    let at: DateTime<Utc> = Utc::now() - age;
    on_store!(env, |pool| sqlx::query(
        "INSERT INTO step_attempts (id, job_id, attempt, outcome, error, started_at, finished_at, worker_id) \
         VALUES ($1, $2, 1, 'failed', 'boom', $3, $3, 'test')"
    )
    .bind(Uuid::now_v7())
    .bind(job_id)
    .bind(at)
    .execute(pool)
    .await
    .unwrap()
    .rows_affected());
}

async fn insert_dead_letter(env: &TestEnv, job_id: &str, age: chrono::Duration) {
    let at: DateTime<Utc> = Utc::now() - age;
    on_store!(env, |pool| sqlx::query(
        "INSERT INTO step_dead_letters (id, job_id, reason, attempts, payload, worker_id, dead_at) \
         VALUES ($1, $2, 'permanent_failure', 1, $3, 'test', $4)"
    )
    .bind(Uuid::now_v7())
    .bind(job_id)
    .bind(b"{}".to_vec())
    .bind(at)
    .execute(pool)
    .await
    .unwrap()
    .rows_affected());
}

async fn a_finished_job_is_deleted_once_its_retention_has_passed(env: TestEnv) {
    let worker = env
        .start(&[("RESULT_RETENTION", "succeeded=1s"), ("RETENTION_CHECK_MS", "500")])
        .await;
    env.push_job("short-lived", "builtin.noop", json!({})).await;
    env.wait_result("short-lived", WAIT).await;
    common::wait_for("the result row to be deleted", WAIT, || async {
        env.result("short-lived").await.is_none()
    })
    .await;
    let (_, metrics) = common::get(&format!("http://{}/metrics", worker.http_addr.unwrap())).await;
    let pruned = common::metric(&metrics, "step_worker_pruned_rows_total{table=\"step_results\"}");
    assert!(pruned >= Some(1.0), "pruned rows counted: {pruned:?}");
    worker.stop().await.unwrap();
}

async fn expired_rows_are_deleted_and_newer_ones_and_other_kinds_kept(env: TestEnv) {
    let hours = chrono::Duration::hours;
    // The rows go in before the worker starts, so its first pass finds them all.
    let store = step_worker::store::Store::connect_lazy(&env.database_url, 1).unwrap();
    store.migrate().await.unwrap();
    store.close().await;
    // More expired rows than one prune statement deletes, so the pass has to loop.
    let expired = step_worker::store::PRUNE_BATCH as usize + 5;
    for i in 0..expired {
        insert_result(&env, &format!("old-{i}"), "succeeded", hours(2)).await;
    }
    insert_result(&env, "new", "succeeded", chrono::Duration::zero()).await;
    insert_result(&env, "old-dead", "dead", hours(2)).await;
    insert_attempt(&env, "old-dead", hours(2)).await;
    insert_attempt(&env, "new", chrono::Duration::zero()).await;
    insert_dead_letter(&env, "old-dead", hours(2)).await;
    let worker = env
        .start(&[
            ("RESULT_RETENTION", "succeeded=1h,attempts=1h"),
            ("RETENTION_CHECK_MS", "500"),
        ])
        .await;
    common::wait_for("expired rows to be deleted", WAIT, || async {
        env.count("SELECT count(*) FROM step_results WHERE status = 'succeeded'")
            .await
            == 1
            && env.count("SELECT count(*) FROM step_attempts").await == 1
    })
    .await;
    assert!(env.result("new").await.is_some(), "a newer result is kept");
    assert_eq!(
        env.result("old-dead").await.unwrap().status,
        "dead",
        "dead rows have no retention here"
    );
    assert_eq!(env.attempts("new").await.len(), 1, "a newer attempt is kept");
    assert_eq!(env.dead_letters().await.len(), 1, "dead letters have no retention here");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn results_purge_deletes_by_age_and_status_and_asks_first() {
    let env = TestEnv::new().await;
    let out = env.cli(&["migrate"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let days = chrono::Duration::days;
    insert_result(&env, "old-ok", "succeeded", days(40)).await;
    insert_result(&env, "old-dead", "dead", days(40)).await;
    insert_attempt(&env, "old-dead", days(40)).await;
    insert_result(&env, "new-ok", "succeeded", days(1)).await;

    let refused = env.cli(&["results", "purge", "--older-than", "30d"]).await;
    assert_eq!(refused.status.code(), Some(3), "no --yes and no terminal to ask on");
    assert_eq!(
        env.count("SELECT count(*) FROM step_results").await,
        3,
        "nothing deleted"
    );

    let only_dead = env
        .cli(&["results", "purge", "--older-than", "30d", "--status", "dead", "--yes"])
        .await;
    let text = String::from_utf8_lossy(&only_dead.stdout);
    assert!(
        only_dead.status.success() && text.contains("deleted 1 row(s)"),
        "{text}"
    );
    assert!(env.result("old-dead").await.is_none());
    assert!(env.result("old-ok").await.is_some(), "--status narrows the purge");
    assert_eq!(
        env.attempts("old-dead").await.len(),
        1,
        "attempts go only without --status"
    );

    let all = env.cli(&["results", "purge", "--older-than", "30d", "--yes"]).await;
    let text = String::from_utf8_lossy(&all.stdout);
    assert!(all.status.success() && text.contains("deleted 2 row(s)"), "{text}");
    assert!(env.result("old-ok").await.is_none());
    assert!(env.attempts("old-dead").await.is_empty());
    assert!(env.result("new-ok").await.is_some(), "a newer row is kept");

    let bad = env.cli(&["results", "purge", "--older-than", "soon", "--yes"]).await;
    assert_eq!(bad.status.code(), Some(2), "a bad duration is a usage error");
}
