//! What each kind of answer does to the job: the rows in Postgres and the requests made.

use std::time::{Duration, SystemTime};

use serde_json::json;

use super::common::{self, TestEnv};
use super::server::{Recorded, Reply, StepServer};
use super::{WAIT, responses, start};

#[tokio::test]
async fn json_answer_is_the_output_and_the_request_carries_the_job_and_its_headers() {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    server.script("/steps/charge", vec![Reply::json(200, json!({"charged": 42}))]);
    let worker = start(&env, &server, &[("STEP_HANDLER_TOKEN", "test-token")]).await;
    env.push(r#"{"id":"job-1","step":"charge","run_id":"run-1","correlation_id":"corr-1","input":{"amount":42},"max_retries":2,"extra":"x"}"#)
        .await;
    let row = env.wait_result("job-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 1));
    assert_eq!(row.output, Some(json!({"charged": 42})));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.path, "/steps/charge");
    assert_eq!(
        r.json(),
        json!({"id": "job-1", "step": "charge", "run_id": "run-1", "correlation_id": "corr-1",
               "input": {"amount": 42}, "attempt": 1, "max_attempts": 3})
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("idempotency-key"), Some("job-1"));
    assert_eq!(r.header("x-correlation-id"), Some("corr-1"));
    assert_eq!(r.header("x-step-attempt"), Some("1"));
    assert_eq!(r.header("authorization"), Some("Bearer test-token"));
    let agent = r.header("user-agent").unwrap();
    assert_eq!(agent, concat!("step-worker/", env!("CARGO_PKG_VERSION")));
    assert_eq!(
        r.header("x-step-signature"),
        None,
        "unsigned without STEP_SIGNING_SECRET"
    );
    assert_eq!(responses(&worker, "charge", "2xx").await, 1.0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn plain_text_answer_is_stored_as_a_string_and_an_empty_one_as_null() {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    server.script("/steps/text", vec![Reply::text(200, "hello")]);
    server.script("/steps/empty", vec![Reply::text(204, "")]);
    let worker = start(&env, &server, &[]).await;
    env.push_job("text-1", "text", json!(null)).await;
    env.push_job("empty-1", "empty", json!(null)).await;
    assert_eq!(env.wait_result("text-1", WAIT).await.output, Some(json!("hello")));
    let empty = env.wait_result("empty-1", WAIT).await;
    assert_eq!(empty.status, "succeeded");
    assert_eq!(empty.output, Some(json!(null)));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn client_error_is_dead_lettered_at_once_with_the_status_and_an_excerpt() {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    let body = format!("amount must be positive{}", "x".repeat(20_000));
    server.script("/steps/validate", vec![Reply::text(422, body)]);
    let worker = start(&env, &server, &[]).await;
    env.push_job("bad-1", "validate", json!({"amount": -1})).await;
    let row = env.wait_result("bad-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 1));
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "permanent_failure");
    let error = letters[0].error.clone().unwrap();
    assert!(
        error.starts_with("HTTP 422 Unprocessable Entity: amount must be positive"),
        "{error}"
    );
    assert!(error.len() < 1_000, "the excerpt is bounded, got {} bytes", error.len());
    assert_eq!(env.attempts("bad-1").await.len(), 1);
    assert_eq!(server.requests().len(), 1, "no retry after a 4xx");
    assert_eq!(responses(&worker, "validate", "4xx").await, 1.0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_with_the_same_idempotency_key() {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    let failures = [500, 503, 429, 408, 425];
    let mut replies: Vec<Reply> = failures
        .iter()
        .map(|s| Reply::text(*s, format!("status {s}")))
        .collect();
    replies.push(Reply::json(200, json!({"done": true})));
    server.script("/steps/flaky", replies);
    let worker = start(&env, &server, &[]).await;
    env.push(r#"{"id":"retry-1","step":"flaky","max_retries":5}"#).await;
    let row = env.wait_result("retry-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 6));
    assert_eq!(row.output, Some(json!({"done": true})));
    let attempts = env.attempts("retry-1").await;
    for (attempt, status) in attempts.iter().zip(failures) {
        let error = attempt.error.as_deref().unwrap();
        assert!(error.starts_with(&format!("HTTP {status}")), "{error}");
        assert_eq!(attempt.outcome, "failed");
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 6);
    for (n, r) in requests.iter().enumerate() {
        assert_eq!(r.header("idempotency-key"), Some("retry-1"));
        assert_eq!(r.header("x-step-attempt"), Some((n + 1).to_string().as_str()));
        assert_eq!(r.json()["attempt"], json!(n + 1));
    }
    assert_eq!(responses(&worker, "flaky", "5xx").await, 2.0);
    assert_eq!(responses(&worker, "flaky", "4xx").await, 3.0);
    assert_eq!(responses(&worker, "flaky", "2xx").await, 1.0);
    worker.stop().await.unwrap();
}

/// Runs a job whose first answer is 503 with the `Retry-After` that `retry_after` makes just
/// before the job is pushed; returns that value and the two requests the endpoint received.
async fn retried_after(retry_after: impl FnOnce() -> String) -> (String, Vec<Recorded>) {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    // The cap on retry delays must not cut the Retry-After short.
    let worker = start(&env, &server, &[("RETRY_BACKOFF_MAX_MS", "10000")]).await;
    let value = retry_after();
    let busy = Reply::text(503, "busy").header("retry-after", value.clone());
    server.script("/steps/busy", vec![busy, Reply::json(200, json!(1))]);
    env.push_job("after-1", "busy", json!(null)).await;
    assert_eq!(env.wait_result("after-1", WAIT).await.attempts, 2);
    worker.stop().await.unwrap();
    (value, server.requests())
}

#[tokio::test]
async fn retry_after_in_seconds_holds_back_the_next_attempt() {
    let (_, requests) = retried_after(|| "2".to_owned()).await;
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
}

#[tokio::test]
async fn retry_after_as_an_http_date_holds_back_the_next_attempt() {
    let (date, requests) = retried_after(|| httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(4))).await;
    let not_before = httpdate::parse_http_date(&date).unwrap();
    assert!(
        requests[1].received >= not_before,
        "retried at {:?}, before the Retry-After date {date}",
        requests[1].received
    );
    // HTTP dates have whole seconds, so 4 s ahead is at least 3 s ahead.
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(2_500), "retried after {gap:?}");
}

#[tokio::test]
async fn slow_endpoint_is_cut_at_the_step_timeout() {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    server.script("/steps/slow", vec![Reply::hang()]);
    let worker = start(&env, &server, &[]).await;
    env.push(r#"{"id":"slow-1","step":"slow","timeout_ms":300,"max_retries":1}"#)
        .await;
    let row = env.wait_result("slow-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 2));
    let attempts = env.attempts("slow-1").await;
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        assert_eq!(a.outcome, "timed_out");
        let took = (a.finished_at - a.started_at).to_std().unwrap();
        assert!(took < Duration::from_secs(2), "cut at the timeout, took {took:?}");
    }
    assert_eq!(server.requests().len(), 2);
    assert_eq!(responses(&worker, "slow", "timeout").await, 2.0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn unreachable_endpoint_is_retried_then_dead_lettered() {
    let env = TestEnv::new().await;
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let template = format!("http://127.0.0.1:{port}/steps/{{step}}");
    let worker = env
        .start(&[("STEP_HANDLER_URL", &template), ("METRICS_STEPS", "down")])
        .await;
    env.push(r#"{"id":"down-1","step":"down","max_retries":1}"#).await;
    let row = env.wait_result("down-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 2));
    assert!(row.error.unwrap().starts_with("retries_exhausted"));
    for a in env.attempts("down-1").await {
        let error = a.error.unwrap();
        assert!(
            // The host only: a route's path or query may carry its token.
            error.contains(&format!("POST http://127.0.0.1:{port}/***")),
            "{error}"
        );
    }
    assert_eq!(responses(&worker, "down", "connect_error").await, 2.0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_answers_fail_the_attempt_without_being_buffered() {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    server.script("/steps/big", vec![Reply::text(200, vec![b'a'; 4096])]);
    // 1 GiB without Content-Length: a bounded read hangs up long before the end.
    server.script("/steps/endless", vec![Reply::endless(200, 1 << 30)]);
    let fits = format!("\"{}\"", "a".repeat(1022));
    server.script("/steps/fits", vec![Reply::text(200, fits.clone())]);
    let worker = start(&env, &server, &[("STEP_RESPONSE_MAX_BYTES", "1024")]).await;
    for step in ["big", "endless", "fits"] {
        env.push_job(&format!("{step}-1"), step, json!(null)).await;
    }
    for step in ["big", "endless"] {
        let row = env.wait_result(&format!("{step}-1"), WAIT).await;
        assert_eq!((row.status.as_str(), row.attempts), ("dead", 1), "{step}");
        let error = row.error.unwrap();
        assert!(error.contains("over STEP_RESPONSE_MAX_BYTES (1024 bytes)"), "{error}");
        assert_eq!(responses(&worker, step, "too_large").await, 1.0);
    }
    common::wait_for("the endless body to end", WAIT, || async {
        server.streamed_bytes().is_some()
    })
    .await;
    let streamed = server.streamed_bytes().unwrap();
    // What the socket buffers absorbed before the worker hung up, not the gigabyte.
    assert!(streamed < 64 << 20, "{streamed} bytes were read");
    let row = env.wait_result("fits-1", WAIT).await;
    assert_eq!(
        row.output,
        Some(serde_json::from_str::<serde_json::Value>(&fits).unwrap())
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn redirect_is_not_followed_and_dead_letters_the_job() {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    let moved = Reply::text(302, "").header("location", server.url("/steps/elsewhere"));
    server.script("/steps/moved", vec![moved]);
    let worker = start(&env, &server, &[]).await;
    env.push_job("moved-1", "moved", json!(null)).await;
    let row = env.wait_result("moved-1", WAIT).await;
    assert_eq!((row.status.as_str(), row.attempts), ("dead", 1));
    assert!(row.error.unwrap().contains("redirects are not followed"));
    assert_eq!(server.requests().len(), 1);
    assert!(server.requests_to("/steps/elsewhere").is_empty());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_429_with_retry_after_holds_the_step_on_every_replica_until_then() {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    // The cap on retry delays must not cut the Retry-After short.
    let extra = [("RETRY_BACKOFF_MAX_MS", "10000")];
    let replicas = [
        start(&env, &server, &extra).await,
        start(&env, &server, &extra).await,
        start(&env, &server, &extra).await,
    ];
    let limited = Reply::text(429, "slow down").header("retry-after", "3");
    server.script("/steps/limited", vec![limited, Reply::json(200, json!(1))]);
    env.push_job("first", "limited", json!(null)).await;
    let mut redis = env.redis.clone();
    common::wait_for("the step to be held", WAIT, || {
        let mut redis = redis.clone();
        let key = env.key("step_holds");
        async move {
            redis::AsyncCommands::zscore::<_, _, Option<f64>>(&mut redis, key, "limited")
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
    for i in 0..9 {
        env.push_job(&format!("next-{i}"), "limited", json!(null)).await;
    }
    env.wait_count("ten results", "SELECT count(*) FROM step_results", 10, WAIT)
        .await;
    let requests = server.requests_to("/steps/limited");
    assert_eq!(requests.len(), 11, "the first job twice, the others once");
    for r in &requests[1..] {
        let gap = r.at - requests[0].at;
        assert!(
            gap >= Duration::from_secs(3),
            "a replica called the held step after {gap:?}"
        );
    }
    assert_eq!(
        env.result("first").await.unwrap().attempts,
        2,
        "the 429 is one failed attempt"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM step_results WHERE attempts = 1").await,
        9,
        "waiting out the hold is not an attempt"
    );
    assert_eq!(env.count("SELECT count(*) FROM step_attempts").await, 1);
    let mut held = 0.0;
    for w in &replicas {
        let (_, text) = common::get(&format!("http://{}/metrics", w.http_addr.unwrap())).await;
        held += common::metric(
            &text,
            r#"step_worker_throttled_total{reason="backpressure",step="other"}"#,
        )
        .unwrap_or(0.0);
    }
    assert!(held >= 9.0, "{held} jobs counted as held");
    let _ = redis::AsyncCommands::del::<_, ()>(&mut redis, env.key("step_holds")).await;
    for w in replicas {
        w.stop().await.unwrap();
    }
}
