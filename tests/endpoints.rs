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
    an_idle_worker_reports_no_job_in_flight,
    health_names_the_queue_and_store_really_in_use,
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

/// A Redis that refuses a command the claim loop needs (here `BLMOVE`, to an ACL user): the
/// worker must not look ready while every idle claim fails, and `/health` says why.
#[tokio::test]
async fn health_turns_unavailable_naming_the_reason_when_claims_keep_failing() {
    let redis = PrivateRedis::start(&[]);
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut acl = redis::cmd("ACL");
    for arg in ["SETUSER", "worker", "on", ">pw", "~*", "&*", "+@all", "-blmove"] {
        acl.arg(arg);
    }
    let () = acl.query_async(&mut admin).await.unwrap();
    let url = format!("redis://worker:pw@127.0.0.1:{}", redis.port);
    let env = TestEnv::with_servers(&url, &common::admin_database_url()).await;
    let worker = env.start(&[]).await;
    let body = wait_health(worker.http_addr.unwrap(), 503).await;
    let claim = &body["checks"]["claim_loop"];
    assert_eq!(claim["ok"], false, "{body}");
    let error = claim["error"].as_str().unwrap();
    assert!(
        error.contains("blmove") && error.contains("claims have failed"),
        "{body}"
    );
    // The batch claim still works: a job pushed meanwhile is done.
    env.push_job("despite-blmove", "builtin.noop", json!(1)).await;
    assert_eq!(env.wait_result("despite-blmove", WAIT).await.status, "succeeded");
    worker.stop().await.unwrap();
}

/// The claim waiting for a job reserves a slot; that is neither a job nor a running step.
async fn an_idle_worker_reports_no_job_in_flight(env: TestEnv) {
    let worker = env.start(&[("CLAIM_BLOCK_MS", "60000")]).await;
    let addr = worker.http_addr.unwrap();
    let in_flight = || async move {
        let (_, metrics) = common::get(&format!("http://{addr}/metrics")).await;
        let gauge = sample(&metrics, "step_worker_in_flight", &[]).unwrap();
        let running = sample(&metrics, "step_worker_steps_running", &[]).unwrap();
        (health(addr).await.1["in_flight"].as_i64().unwrap(), gauge, running)
    };
    // Idle: the claim loop has found the queue empty and waits in its blocking claim.
    wait_health(addr, 200).await;
    common::wait_for("the claim to block", WAIT, || async {
        env.is_memory() || blocked_in_blmove(&env, &worker.worker_id).await
    })
    .await;
    // A scrape may reuse a rendering up to a second old, so both readings are waited for.
    common::wait_for("idle: no job in flight", WAIT, || async {
        in_flight().await == (0, 0.0, 0.0)
    })
    .await;
    env.push_job("held", "builtin.sleep", json!({"ms": 60000})).await;
    common::wait_for("the job to be claimed", WAIT, || async {
        env.in_flight_len().await == 1
    })
    .await;
    common::wait_for("one job in flight, its step running", WAIT, || async {
        in_flight().await == (1, 1.0, 1.0)
    })
    .await;
    worker.stop().await.unwrap();
}

async fn blocked_in_blmove(env: &TestEnv, worker_id: &str) -> bool {
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut env.redis.clone())
        .await
        .unwrap();
    let name = format!("name=step-worker:{worker_id}");
    clients.lines().any(|l| l.contains(&name) && l.contains("cmd=blmove"))
}

/// A memory queue is not Redis and a SQLite file is not Postgres: `/health` says which is used.
async fn health_names_the_queue_and_store_really_in_use(env: TestEnv) {
    let worker = env.start(&[]).await;
    let body = wait_health(worker.http_addr.unwrap(), 200).await;
    let (queue, store, absent) = if env.is_memory() {
        ("memory", "sqlite", ["redis", "postgres"])
    } else {
        ("redis", "postgres", ["memory", "sqlite"])
    };
    assert_eq!(body["queue_driver"], queue, "{body}");
    assert_eq!(body["store_driver"], store, "{body}");
    assert_eq!(body["checks"][queue]["ok"], true, "{body}");
    assert_eq!(body["checks"][store]["ok"], true, "{body}");
    for name in absent {
        assert!(body["checks"].get(name).is_none(), "{body}");
    }
    worker.stop().await.unwrap();
}
