//! The job contract's edges and the `/jobs` API against careless and hostile callers: numbers out
//! of range, timestamps the store cannot hold, repeated ids, ids no job can have, tokens.

#[macro_use]
mod common;

use std::time::Duration;

use common::TestEnv;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "contract-test-token";

on_each_driver!(
    numbers_outside_the_contract_are_dead_lettered_under_the_job_id_before_the_step_runs,
    post_jobs_refuses_a_batch_that_repeats_an_id,
    get_jobs_for_an_id_no_job_can_have_is_404_not_a_store_error,
    the_bearer_scheme_is_case_insensitive,
    an_implausible_queue_wait_is_not_observed,
    post_jobs_refuses_what_a_page_on_another_origin_can_make_a_browser_send,
);

async fn an_implausible_queue_wait_is_not_observed(env: TestEnv) {
    let worker = env.start(&[]).await;
    // `enqueued_at: 0` claims a 56-year wait; the job itself is fine and runs.
    env.push(r#"{"id":"w-epoch","step":"builtin.noop","enqueued_at":0}"#)
        .await;
    let now = chrono::Utc::now().timestamp_millis();
    env.push(&json!({"id": "w-now", "step": "builtin.noop", "enqueued_at": now}).to_string())
        .await;
    env.wait_result("w-epoch", WAIT).await;
    env.wait_result("w-now", WAIT).await;
    let (_, metrics) = common::get(&format!("http://{}/metrics", worker.http_addr.unwrap())).await;
    let series = r#"{step="builtin.noop"}"#;
    let count = common::metric(&metrics, &format!("step_worker_queue_wait_seconds_count{series}"));
    let sum = common::metric(&metrics, &format!("step_worker_queue_wait_seconds_sum{series}"));
    assert_eq!(count, Some(1.0), "{metrics}");
    assert!(sum.unwrap() < 3600.0, "{sum:?}");
    worker.stop().await.unwrap();
}

async fn numbers_outside_the_contract_are_dead_lettered_under_the_job_id_before_the_step_runs(env: TestEnv) {
    let worker = env.start(&[]).await;
    // 4294967295 used to wrap `1 + max_retries` to zero attempts; -8e15 ms is before 4713 BC,
    // which Postgres refused only after the step had run.
    env.push(r#"{"id":"c-retries","step":"builtin.noop","max_retries":4294967295}"#)
        .await;
    env.push(r#"{"id":"c-ancient","step":"builtin.noop","enqueued_at":-8000000000000000}"#)
        .await;
    // Python's `time.time() * 1000` used to dead-letter the whole job.
    env.push(r#"{"id":"c-fraction","step":"builtin.noop","input":1,"enqueued_at":1796032109893.725}"#)
        .await;
    assert_eq!(env.wait_result("c-fraction", WAIT).await.status, "succeeded");
    common::wait_for("two dead letters", WAIT, || async {
        env.dead_letters().await.len() == 2
    })
    .await;
    let letters = env.dead_letters().await;
    for (id, field) in [("c-retries", "`max_retries`"), ("c-ancient", "`enqueued_at`")] {
        let letter = letters.iter().find(|l| l.job_id.as_deref() == Some(id));
        let letter = letter.unwrap_or_else(|| panic!("no dead letter filed under {id}: {letters:?}"));
        assert_eq!(letter.reason, "invalid_envelope", "{letter:?}");
        assert!(letter.error.as_deref().unwrap().contains(field), "{letter:?}");
        assert!(env.result(id).await.is_none(), "{id} ran");
    }
    worker.stop().await.unwrap();
}

async fn post(addr: std::net::SocketAddr, auth: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/jobs"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn post_jobs_refuses_a_batch_that_repeats_an_id(env: TestEnv) {
    let worker = env.start(&[]).await;
    let addr = worker.http_addr.unwrap();
    let body = json!([
        {"id": "d-1", "step": "builtin.noop", "input": "first"},
        {"id": "d-2", "step": "builtin.noop"},
        {"id": "d-1", "step": "builtin.noop", "input": "second"},
    ]);
    let (code, body) = post(addr, None, &body.to_string()).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["index"], 2);
    assert!(body["error"].as_str().unwrap().contains("of job 0"), "{body}");
    assert_eq!(env.ready_len().await, 0, "a refused batch enqueues nothing");
    // The same rule holds for a field the contract bounds.
    let (code, body) = post(
        addr,
        None,
        r#"{"id":"d-3","step":"builtin.noop","max_retries":4294967295}"#,
    )
    .await;
    assert_eq!((code, body["index"].as_i64()), (400, Some(0)), "{body}");
    worker.stop().await.unwrap();
}

async fn get_jobs_for_an_id_no_job_can_have_is_404_not_a_store_error(env: TestEnv) {
    let worker = env.start(&[]).await;
    let addr = worker.http_addr.unwrap();
    let long = "x".repeat(201);
    for id in ["a%00b", &long] {
        let (code, body) = common::get(&format!("http://{addr}/jobs/{id}")).await;
        assert_eq!(code, 404, "{id}: {body}");
    }
    let (_, metrics) = common::get(&format!("http://{addr}/metrics")).await;
    let errors = common::metric(&metrics, r#"step_worker_postgres_errors_total{op="result"}"#);
    assert_eq!(errors.unwrap_or(0.0), 0.0, "a lookup counted as a store failure");
    worker.stop().await.unwrap();
}

async fn the_bearer_scheme_is_case_insensitive(env: TestEnv) {
    let worker = env.start(&[("ADMIN_TOKEN", TOKEN)]).await;
    let addr = worker.http_addr.unwrap();
    let job = |id: &str| json!({"id": id, "step": "builtin.noop"}).to_string();
    for (i, scheme) in ["Bearer", "bearer", "BEARER", "bEaReR  "].iter().enumerate() {
        let (code, body) = post(addr, Some(&format!("{scheme} {TOKEN}")), &job(&format!("b-{i}"))).await;
        assert_eq!(code, 202, "{scheme}: {body}");
    }
    for wrong in [format!("Basic {TOKEN}"), format!("Bearer{TOKEN}"), TOKEN.to_owned()] {
        let (code, _) = post(addr, Some(&wrong), &job("b-x")).await;
        assert_eq!(code, 401, "{wrong}");
    }
    worker.stop().await.unwrap();
}

/// Postgres refusing one outcome's data (here a CHECK the test adds) used to leave only an
/// anonymous dead letter: no row under the job's id, `GET /jobs/{id}` 404 forever.
#[tokio::test]
async fn an_outcome_postgres_refuses_still_ends_with_a_row_under_the_job_id() {
    let env = TestEnv::new().await;
    let worker = env.start(&[]).await;
    sqlx::query("ALTER TABLE step_results ADD CONSTRAINT test_refuses CHECK (output::text NOT LIKE '%refuse-me%')")
        .execute(&env.pg)
        .await
        .unwrap();
    env.push_job("u-1", "builtin.noop", json!({"note": "refuse-me"})).await;
    let row = env.wait_result("u-1", WAIT).await;
    assert_eq!(row.status, "dead");
    assert!(row.error.as_deref().unwrap().contains("unstorable"), "{row:?}");
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        (letters[0].job_id.as_deref(), letters[0].reason.as_str()),
        (Some("u-1"), "unstorable")
    );
    let (code, body) = common::get(&format!("http://{}/jobs/u-1", worker.http_addr.unwrap())).await;
    assert_eq!(code, 200, "{body}");
    worker.stop().await.unwrap();
}

/// The memory queue used to take jobs until the process ran out of memory.
#[tokio::test]
async fn a_full_memory_queue_answers_503_with_the_reason() {
    let env = TestEnv::memory().await;
    let worker = env.start(&[("MEMORY_QUEUE_MAX_JOBS", "3")]).await;
    let addr = worker.http_addr.unwrap();
    let jobs = |n: usize, tag: &str| {
        let jobs: Vec<Value> = (0..n)
            .map(|i| json!({"id": format!("{tag}-{i}"), "step": "builtin.noop"}))
            .collect();
        Value::from(jobs).to_string()
    };
    let (code, body) = post(addr, None, &jobs(4, "m")).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("MEMORY_QUEUE_MAX_JOBS (3)"),
        "{body}"
    );
    let (code, body) = post(addr, None, &jobs(3, "n")).await;
    assert_eq!(code, 202, "{body}");
    env.wait_result("n-2", WAIT).await;
    assert!(env.result("m-0").await.is_none(), "a refused batch enqueues nothing");
    worker.stop().await.unwrap();
}

async fn post_jobs_refuses_what_a_page_on_another_origin_can_make_a_browser_send(env: TestEnv) {
    let worker = env.start(&[]).await;
    let addr = worker.http_addr.unwrap();
    // Without ADMIN_TOKEN outside production, the endpoint is open: only this machine reaches it.
    assert!(addr.ip().is_loopback(), "{addr}");
    let send = |headers: Vec<(&'static str, String)>, id: &'static str| async move {
        let mut req = reqwest::Client::new()
            .post(format!("http://{addr}/jobs"))
            .body(json!({"id": id, "step": "builtin.noop"}).to_string());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send().await.unwrap().status().as_u16()
    };
    let json_type = || ("content-type", "application/json".to_owned());
    // What any page may send without a preflight: a "simple" content type.
    assert_eq!(send(vec![("content-type", "text/plain".into())], "o-1").await, 415);
    assert_eq!(send(vec![], "o-2").await, 415);
    assert_eq!(
        send(vec![json_type(), ("origin", "http://evil.example".into())], "o-3").await,
        403
    );
    assert_eq!(send(vec![json_type(), ("origin", "null".into())], "o-4").await, 403);
    assert_eq!(
        send(vec![json_type(), ("sec-fetch-site", "cross-site".into())], "o-5").await,
        403
    );
    assert_eq!(env.ready_len().await, 0, "a refused request enqueues nothing");
    let same = ("origin", format!("http://{addr}"));
    assert_eq!(
        send(
            vec![("content-type", "application/json; charset=utf-8".into()), same],
            "o-6"
        )
        .await,
        202
    );
    env.wait_result("o-6", WAIT).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn with_an_admin_token_the_server_listens_on_every_interface() {
    let env = TestEnv::memory().await;
    let worker = env.start(&[("ADMIN_TOKEN", TOKEN)]).await;
    assert!(worker.http_addr.unwrap().ip().is_unspecified());
    worker.stop().await.unwrap();
    let worker = env.start(&[("HEALTH_CHECK_HOST", "0.0.0.0")]).await;
    assert!(worker.http_addr.unwrap().ip().is_unspecified());
    worker.stop().await.unwrap();
}
