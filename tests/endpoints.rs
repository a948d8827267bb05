//! `/health` follows Redis and Postgres outages (with servers of the test's own, so it may stop
//! them) and `/metrics` counts what happened.

#[macro_use]
mod common;

use std::time::Duration;

use common::TestEnv;
use common::servers::{PrivatePostgres, PrivateRedis};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn health(addr: std::net::SocketAddr) -> (u16, Value) {
    let (code, body) = common::get(&format!("http://{addr}/health")).await;
    (code, serde_json::from_str(&body).unwrap())
}

async fn wait_health(addr: std::net::SocketAddr, code: u16) -> Value {
    common::wait_for(&format!("/health to answer {code}"), WAIT, || async move {
        health(addr).await.0 == code
    })
    .await;
    health(addr).await.1
}

#[tokio::test]
async fn health_reports_a_redis_outage_and_recovers_after_it() {
    let mut redis = PrivateRedis::start(&[]);
    let env = TestEnv::with_servers(&redis.url(), &common::admin_database_url()).await;
    let worker = env.start(&[]).await;
    let addr = worker.http_addr.unwrap();
    let body = wait_health(addr, 200).await;
    assert_eq!(body["status"], "ok");
    let (live, _) = common::get(&format!("http://{addr}/health/live")).await;
    assert_eq!(live, 200);

    redis.kill();
    let body = wait_health(addr, 503).await;
    assert_eq!(body["checks"]["redis"]["ok"], false, "{body}");
    assert_eq!(
        common::get(&format!("http://{addr}/health/live")).await.0,
        200,
        "alive while Redis is down"
    );

    redis.restart();
    wait_health(addr, 200).await;
    env.push_job("after-redis-restart", "builtin.noop", json!(1)).await;
    assert_eq!(env.wait_result("after-redis-restart", WAIT).await.status, "succeeded");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn health_reports_a_postgres_outage_and_nothing_is_acked_until_it_returns() {
    let pg = PrivatePostgres::start();
    let env = TestEnv::with_servers(&common::redis_url(), &pg.url()).await;
    let worker = env.start(&[]).await;
    let addr = worker.http_addr.unwrap();
    wait_health(addr, 200).await;

    pg.stop("fast");
    let body = wait_health(addr, 503).await;
    assert_eq!(body["checks"]["postgres"]["ok"], false, "{body}");
    env.push_job("during-pg-outage", "builtin.noop", json!(1)).await;
    // The job runs, but its outcome cannot be committed, so it stays claimed in Redis.
    common::wait_for("the job to be claimed", WAIT, || async {
        env.in_flight_len().await == 1 && env.ready_len().await == 0
    })
    .await;

    pg.start_server();
    let row = env.wait_result("during-pg-outage", WAIT).await;
    assert_eq!(row.status, "succeeded");
    wait_health(addr, 200).await;
    common::wait_for("the job to be settled", WAIT, || async {
        env.in_flight_len().await == 0
    })
    .await;
    worker.stop().await.unwrap();
}

/// Finds a sample by metric name and labels, whatever the label order.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        let matches = if labels.is_empty() {
            rest.is_empty()
        } else {
            rest.starts_with('{') && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        };
        matches.then(|| value.parse().ok()).flatten()
    })
}

on_each_driver!(
    metrics_count_what_happened,
    post_jobs_validates_and_enqueues_all_or_nothing_behind_the_admin_token,
);

async fn metrics_count_what_happened(env: TestEnv) {
    let worker = env.start(&[("RETRY_BACKOFF_MS", "10")]).await;
    for i in 0..3 {
        env.push(&json!({"id": format!("m-ok-{i}"), "step": "builtin.noop", "enqueued_at": chrono::Utc::now().timestamp_millis()}).to_string()).await;
    }
    env.push_job("m-perm", "builtin.fail", json!({"permanent": true})).await;
    env.push_job("m-flaky", "builtin.fail", json!({"times": 1})).await;
    env.push("garbage").await;
    env.wait_count("5 results", "SELECT count(*) FROM step_results", 5, WAIT)
        .await;
    env.wait_count("2 dead letters", "SELECT count(*) FROM step_dead_letters", 2, WAIT)
        .await;
    common::wait_for("queue drained", WAIT, || async { env.in_flight_len().await == 0 }).await;

    let (code, text) = common::get(&format!("http://{}/metrics", worker.http_addr.unwrap())).await;
    assert_eq!(code, 200);
    let jobs = |step, outcome| sample(&text, "step_worker_jobs_total", &[("step", step), ("outcome", outcome)]);
    assert_eq!(jobs("builtin.noop", "succeeded"), Some(3.0));
    assert_eq!(
        jobs("builtin.fail", "failed"),
        Some(2.0),
        "one permanent and one transient failure"
    );
    assert_eq!(jobs("builtin.fail", "succeeded"), Some(1.0));
    assert_eq!(jobs("builtin.fail", "retried"), Some(1.0));
    assert_eq!(jobs("builtin.fail", "dead"), Some(1.0));
    assert_eq!(jobs("invalid", "dead"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "step_worker_queue_wait_seconds_count",
            &[("step", "builtin.noop")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "step_worker_job_duration_seconds_count",
            &[("step", "builtin.noop"), ("outcome", "succeeded")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "step_worker_queue_depth", &[("queue", "ready")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "step_worker_queue_depth", &[("queue", "in_flight")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "step_worker_queue_depth", &[("queue", "dead")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "step_worker_queue_depth", &[("queue", "held")]),
        Some(0.0)
    );
    // Every succeeded job's overhead, whole and split by phase (3 noop + the flaky one's success).
    assert_eq!(sample(&text, "step_worker_job_overhead_seconds_count", &[]), Some(4.0));
    for phase in ["before_step_end", "step_end_to_commit", "commit_to_settled"] {
        assert_eq!(
            sample(
                &text,
                "step_worker_job_overhead_phase_seconds_count",
                &[("phase", phase)]
            ),
            Some(4.0),
            "{phase}"
        );
    }
    assert_eq!(sample(&text, "step_worker_live_workers", &[]), Some(1.0));
    assert_eq!(sample(&text, "step_worker_concurrency", &[]), Some(10.0));
    assert!(sample(&text, "step_worker_build_info", &[("worker_id", &worker.worker_id)]).is_some());
    assert!(sample(&text, "process_resident_memory_bytes", &[]).unwrap() > 0.0);
    // Every metric of ours carries help text.
    for line in text.lines().filter(|l| l.starts_with("# TYPE step_worker_")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
    }
    worker.stop().await.unwrap();
}

async fn post_jobs(addr: std::net::SocketAddr, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/jobs"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn post_jobs_validates_and_enqueues_all_or_nothing_behind_the_admin_token(env: TestEnv) {
    let worker = env.start(&[("ADMIN_TOKEN", "test-admin-token-123")]).await;
    let addr = worker.http_addr.unwrap();

    let (code, _) = post_jobs(addr, None, r#"{"id":"h-1","step":"builtin.noop"}"#).await;
    assert_eq!(code, 401);
    let (code, _) = post_jobs(addr, Some("wrong"), r#"{"id":"h-1","step":"builtin.noop"}"#).await;
    assert_eq!(code, 401);

    let token = Some("test-admin-token-123");
    let (code, body) = post_jobs(
        addr,
        token,
        r#"[{"id":"h-2","step":"builtin.noop"},{"step":"builtin.noop"}]"#,
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(body["index"], 1);
    assert!(
        body["error"].as_str().unwrap().contains("missing required field `id`"),
        "{body}"
    );
    let (code, body) = post_jobs(addr, token, "not json").await;
    assert_eq!(code, 400, "{body}");

    let (code, body) = post_jobs(
        addr,
        token,
        r#"[{"id":"h-3","step":"builtin.noop","input":3},{"id":"h-4","step":"builtin.noop"}]"#,
    )
    .await;
    assert_eq!((code, body["enqueued"].as_i64()), (202, Some(2)), "{body}");
    assert_eq!(env.wait_result("h-3", WAIT).await.output, Some(json!(3)));
    env.wait_result("h-4", WAIT).await;
    assert!(env.result("h-2").await.is_none(), "a rejected batch enqueues nothing");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn post_jobs_is_disabled_in_production_without_a_token() {
    let env = TestEnv::new().await;
    let worker = env.start(&[("APP_ENV", "production")]).await;
    let (code, body) = post_jobs(worker.http_addr.unwrap(), None, r#"{"id":"p-1","step":"builtin.noop"}"#).await;
    assert_eq!(code, 403);
    assert!(body["error"].as_str().unwrap().contains("ADMIN_TOKEN"));
    assert_eq!(env.ready_len().await, 0);
    worker.stop().await.unwrap();
}
