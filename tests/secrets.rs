//! Secrets and personal data never reach a stored error, a log line, `config check` or the API:
//! route tokens, webhook paths, passwords in URLs that do not parse, and whatever a failing step
//! or a panic says.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestEnv, step_worker};
use serde_json::{Value, json};
use step_worker::redact::MAX_ERROR_CHARS;
use step_worker::{Registry, StepError};

const WAIT: Duration = Duration::from_secs(30);

/// Every error text the job left in the store, and what `GET /jobs/{id}` answers.
async fn every_error_text(env: &TestEnv, worker: &step_worker::worker::Running, id: &str) -> Vec<String> {
    let mut texts: Vec<String> = env.attempts(id).await.into_iter().filter_map(|a| a.error).collect();
    texts.extend(env.dead_letters().await.into_iter().filter_map(|d| d.error));
    texts.extend(env.result(id).await.and_then(|r| r.error));
    let (_, body) = common::get(&format!("http://{}/jobs/{id}", worker.http_addr.unwrap())).await;
    texts.push(body);
    texts
}

#[tokio::test]
async fn a_token_in_a_route_url_never_reaches_a_stored_error() {
    let env = TestEnv::new().await;
    // Port 1 refuses the connection: the transport error names the request.
    let routes = "fn.leak=http://127.0.0.1:1/fn/ROUTE-SECRET?key=QUERY-SECRET";
    let worker = env.start(&[("STEP_ROUTES", routes)]).await;
    env.push(r#"{"id":"r-1","step":"fn.leak","max_retries":0}"#).await;
    assert_eq!(env.wait_result("r-1", WAIT).await.status, "dead");
    let texts = every_error_text(&env, &worker, "r-1").await;
    assert!(texts.iter().any(|t| t.contains("127.0.0.1:1")), "{texts:?}");
    for t in &texts {
        assert!(!t.contains("ROUTE-SECRET") && !t.contains("QUERY-SECRET"), "{t}");
    }
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn step_errors_are_masked_and_bounded_before_they_are_stored() {
    let env = TestEnv::new().await;
    let registry = Registry::new().register("leaky", |_ctx, input: Value| async move {
        let tail = "x".repeat(100_000);
        Err::<Value, _>(StepError::permanent(format!(
            "db password=hunter2 for ann@example.com, ssn {} {tail}",
            input["ssn"]
        )))
    });
    let worker = env.start_with(&[], registry).await;
    env.push_job("p-1", "leaky", json!({"ssn": "078-05-1120"})).await;
    assert_eq!(env.wait_result("p-1", WAIT).await.status, "dead");
    let texts = every_error_text(&env, &worker, "p-1").await;
    assert!(texts.len() >= 4, "{texts:?}");
    for t in &texts {
        for secret in ["hunter2", "ann@example.com", "078-05-1120"] {
            assert!(!t.contains(secret), "{secret} in {}", &t[..200.min(t.len())]);
        }
        assert!(t.chars().count() < MAX_ERROR_CHARS + 500, "{} characters", t.len());
    }
    worker.stop().await.unwrap();
}

#[test]
fn config_check_and_startup_errors_print_no_secret() {
    let out = step_worker(
        &[
            ("SLACK_WEBHOOK", "https://hooks.slack.com/services/T0/B0/HOOK-zq9"),
            ("STEP_ROUTES", "fn.a=https://fn.example/run/ROUTE-zq9?key=QUERY-zq9"),
        ],
        &["config", "check"],
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("SLACK_WEBHOOK=https://hooks.slack.com/***"), "{stdout}");
    assert!(stdout.contains("STEP_ROUTES=fn.a=https://fn.example/***"), "{stdout}");
    assert!(!stdout.contains("zq9"), "{stdout}");
    // Passwords with an unencoded `/`, `?` or `#`: the URL does not parse, or splits early.
    for (var, url) in [
        ("REDIS_URL", "redis://default:pa/ss-zq9@cache.example:6379"),
        ("REDIS_URL", "http://default:pa/ss-zq9@cache.example:6379"),
        ("DATABASE_URL", "postgres://app:p#w-zq9@db.example/app"),
    ] {
        let out = step_worker(&[(var, url)], &["config", "check"]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("zq9"), "{var}: {all}");
    }
}

/// Lines the child writes to stdout, collected as they come.
fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

#[tokio::test]
async fn a_panic_and_a_failed_slack_post_are_json_log_lines_without_secrets() {
    let dir = std::env::temp_dir().join(common::unique("sw_secrets_"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = common::servers::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_step-worker"))
        .env_clear()
        .env("HEALTH_CHECK_PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .env("SLACK_WEBHOOK", "http://127.0.0.1:1/services/T0/B0/HOOK-SECRET")
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    // Killed however the test ends: a failed assertion must not leave the worker running.
    let child = common::KillOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");
    common::wait_for("/health to answer 200", WAIT, || async {
        matches!(reqwest::get(format!("{base}/health")).await, Ok(r) if r.status() == 200)
    })
    .await;
    let job = json!({"id": "panic-1", "step": "builtin.panic", "max_retries": 0,
                     "input": {"message": "boom password=hunter2 mail ann@example.com"}});
    let posted = reqwest::Client::new()
        .post(format!("{base}/jobs"))
        .json(&job)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    let logged = |what: &'static str| {
        let stdout = stdout.clone();
        move || {
            let found = stdout.lock().unwrap().iter().any(|l| l.contains(what));
            async move { found }
        }
    };
    common::wait_for("the panic's log line", WAIT, logged("a step panicked")).await;
    common::wait_for(
        "the failed Slack post's log line",
        WAIT,
        logged("posting to Slack failed"),
    )
    .await;
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    let out = stdout.lock().unwrap().clone();
    for line in out.iter().chain(stderr.lock().unwrap().iter()) {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "not a JSON line: {line}");
        for secret in ["hunter2", "ann@example.com", "HOOK-SECRET"] {
            assert!(!line.contains(secret), "{secret} logged: {line}");
        }
    }
}
