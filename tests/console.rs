//! The web console: its API keeps the `ADMIN_TOKEN` rule of `/jobs`, shows producers' text as
//! data (a job id that is markup stays text), does what the CLI does (replay after a dry-run
//! count, pause and resume) and logs each action; and in headless Chromium the page replays a
//! dead letter until its job succeeds (`tests/console/browser.mjs`).

#[macro_use]
mod common;

// Beside the script it runs; cargo takes only `tests/*.rs` for test targets.
#[path = "console/browser.rs"]
mod browser;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestEnv;
use redis::AsyncCommands;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "console-test-admin-token-0123";
/// A job id that a page inserting text as HTML would turn into a running script.
pub const MARKUP_ID: &str = "<img src=x onerror=alert(1)>";

/// A client for one worker's console API.
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(addr: impl std::fmt::Display) -> Self {
        Api {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

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

/// The real binary with JSON logs, so the test reads the action log lines as an operator would.
#[tokio::test]
async fn console_api_keeps_the_token_rule_shows_markup_as_text_and_logs_each_action() {
    let env = TestEnv::new().await;
    let port = common::servers::free_port();
    let mut vars = env.vars();
    vars.retain(|(k, _)| k != "HEALTH_CHECK_PORT");
    let port_text = port.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_step-worker"))
        .env_clear()
        .envs(vars)
        .envs([
            ("HEALTH_CHECK_PORT", port_text.as_str()),
            ("ADMIN_TOKEN", TOKEN),
            ("LOG_FORMAT", "json"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let child = common::KillOnDrop(child);
    let api = Api::new(format!("127.0.0.1:{port}"));
    common::wait_for("/health to answer 200", WAIT, || async {
        matches!(reqwest::get(format!("{}/health", api.base)).await, Ok(r) if r.status() == 200)
    })
    .await;

    let input = json!({"permanent": true, "message": "<b>boom</b>"});
    env.push_job(MARKUP_ID, "builtin.fail", input).await;
    env.wait_count("a dead letter", "SELECT count(*) FROM step_dead_letters", 1, WAIT)
        .await;

    // The token rule.
    assert_eq!(api.get("/api/overview", None).await.0, 401);
    assert_eq!(api.get("/api/overview", Some("wrong-token-wrong-token")).await.0, 401);
    assert_eq!(api.get("/api/dead-letters", None).await.0, 401);
    let (code, o) = api.get("/api/overview", Some(TOKEN)).await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(o["depths"]["dead"], 1, "{o}");
    assert_eq!(o["paused"], false, "{o}");
    assert_eq!(o["workers"].as_array().unwrap().len(), 1, "{o}");
    let fail = o["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "builtin.fail");
    assert_eq!(fail.map(|s| &s["outcomes"]["dead"]), Some(&json!(1)), "{o}");

    // Markup stays data: exact in JSON, never served as HTML.
    let r = api
        .client
        .get(format!("{}/api/dead-letters", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["total"], 1, "{list}");
    let letter = &list["letters"][0];
    assert_eq!(letter["job_id"], MARKUP_ID, "{list}");
    assert_eq!(letter["error"], "<b>boom</b>", "{list}");
    let path = format!("/api/jobs/{}", urlencode(MARKUP_ID));
    let (code, job) = api.get(&path, Some(TOKEN)).await;
    assert_eq!(
        (code, &job["job_id"], &job["result"]["status"]),
        (200, &json!(MARKUP_ID), &json!("dead")),
        "{job}"
    );

    // The page: a static document whose policy runs no inline script.
    let page = reqwest::get(format!("{}/", api.base)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("/console/console.js"));
    assert_eq!(common::get(&format!("{}/console/console.js", api.base)).await.0, 200);
    assert_eq!(common::get(&format!("{}/console/other.js", api.base)).await.0, 404);

    // Replay: the dry run counts and moves nothing; the confirmation replays what it counted.
    let (code, dry) = api
        .post(
            "/api/dead-letters/replay",
            json!({"step": "builtin.fail", "dry_run": true}),
        )
        .await;
    assert_eq!((code, &dry["would_replay"]), (200, &json!(1)), "{dry}");
    assert_eq!(dry["letters"][0]["job_id"], MARKUP_ID);
    assert_eq!(env.ready_len().await, 0);
    let replayed = "SELECT count(*) FROM step_dead_letters WHERE replayed_at IS NOT NULL";
    assert_eq!(env.count(replayed).await, 0, "a dry run replays nothing");
    let (code, done) = api
        .post(
            "/api/dead-letters/replay",
            json!({"step": "builtin.fail", "before": dry["as_of"]}),
        )
        .await;
    assert_eq!((code, &done["replayed"]), (200, &json!(1)), "{done}");
    assert_eq!(env.count(replayed).await, 1);
    // It fails permanently again: a second letter.
    env.wait_count(
        "the replay's dead letter",
        "SELECT count(*) FROM step_dead_letters",
        2,
        WAIT,
    )
    .await;

    // What another site's page could make a browser send is refused, and changes nothing.
    let cross = api
        .client
        .post(format!("{}/api/pause", api.base))
        .bearer_auth(TOKEN)
        .header("origin", "http://evil.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let plain = api
        .client
        .post(format!("{}/api/pause", api.base))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 415);
    let mut redis = env.redis.clone();
    let paused_key = env.key("paused");
    assert!(!redis.exists::<_, bool>(&paused_key).await.unwrap());

    // Pause and resume, the queue and a step.
    assert_eq!(api.post("/api/pause", json!({})).await, (200, json!({"paused": true})));
    assert!(redis.exists::<_, bool>(&paused_key).await.unwrap());
    let (code, _) = api.post("/api/pause", json!({"step": "builtin.noop"})).await;
    assert_eq!(code, 200);
    let (_, o) = api.get("/api/overview", Some(TOKEN)).await;
    assert_eq!(o["paused"], true, "{o}");
    assert_eq!(o["paused_steps"], json!([{"step": "builtin.noop", "held": 0}]), "{o}");
    let (code, resumed) = api.post("/api/resume", json!({"step": "builtin.noop"})).await;
    assert_eq!((code, &resumed["released"]), (200, &json!(0)), "{resumed}");
    assert_eq!(
        api.post("/api/resume", json!({})).await,
        (200, json!({"paused": false}))
    );
    assert!(!redis.exists::<_, bool>(&paused_key).await.unwrap());

    // Every action is one log line saying what it did; the token is never logged.
    let logged = |action: &'static str, count: usize| {
        let stdout = stdout.clone();
        move || {
            let n = stdout
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(&format!(r#""action":"{action}""#)))
                .count();
            async move { n == count }
        }
    };
    common::wait_for("two replay lines (dry run, replay)", WAIT, logged("dlq.replay", 2)).await;
    common::wait_for("two pause lines", WAIT, logged("pause", 2)).await;
    common::wait_for("two resume lines", WAIT, logged("resume", 2)).await;
    drop(child);
    let out = stdout.lock().unwrap().clone();
    let replay_line = out.iter().find(|l| l.contains(r#""dry_run":false"#)).unwrap();
    assert!(
        replay_line.contains("builtin.fail") && replay_line.contains(r#""count":1"#),
        "{replay_line}"
    );
    for line in out.iter().chain(stderr.lock().unwrap().iter()) {
        assert!(!line.contains(TOKEN), "the token was logged: {line}");
    }
}

#[tokio::test]
async fn console_api_is_disabled_in_production_without_a_token_but_the_page_loads() {
    let env = TestEnv::new().await;
    let worker = env.start(&[("APP_ENV", "production")]).await;
    let api = Api::new(worker.http_addr.unwrap());
    assert_eq!(common::get(&format!("{}/", api.base)).await.0, 200);
    let (code, body) = api.get("/api/overview", None).await;
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("ADMIN_TOKEN"), "{body}");
    let r = api
        .client
        .post(format!("{}/api/pause", api.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(!env.redis.clone().exists::<_, bool>(env.key("paused")).await.unwrap());
    worker.stop().await.unwrap();
}

on_each_driver!(console_shows_this_workers_step_counts_and_a_jobs_attempts);

async fn console_shows_this_workers_step_counts_and_a_jobs_attempts(env: TestEnv) {
    let worker = env.start(&[("ADMIN_TOKEN", TOKEN), ("RETRY_BACKOFF_MS", "10")]).await;
    let api = Api::new(worker.http_addr.unwrap());
    env.push_job(
        "c-flaky",
        "builtin.fail",
        json!({"times": 1, "message": "first try fails"}),
    )
    .await;
    assert_eq!(env.wait_result("c-flaky", WAIT).await.status, "succeeded");

    let (code, job) = api.get("/api/jobs/c-flaky", Some(TOKEN)).await;
    assert_eq!(code, 200, "{job}");
    assert_eq!(job["result"]["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["output"], json!({"succeeded_on_attempt": 2}), "{job}");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{job}");
    assert_eq!(
        (&attempts[0]["outcome"], &attempts[0]["error"]),
        (&json!("failed"), &json!("first try fails"))
    );
    assert_eq!(api.get("/api/jobs/never-pushed", Some(TOKEN)).await.0, 404);

    let (code, o) = api.get("/api/overview", Some(TOKEN)).await;
    assert_eq!(code, 200, "{o}");
    let fail = o["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "builtin.fail")
        .cloned();
    let outcomes = &fail.expect("builtin.fail counted")["outcomes"];
    assert_eq!(
        (&outcomes["succeeded"], &outcomes["failed"]),
        (&json!(1), &json!(1)),
        "{o}"
    );
    assert_eq!(o["depths"]["ready"], 0, "{o}");
    assert_eq!(o["workers"][0]["worker_id"], worker.worker_id.as_str(), "{o}");

    // What the embedded drivers lack is refused with the reason, not faked.
    let (dlq, pause) = (
        api.get("/api/dead-letters", Some(TOKEN)).await,
        api.post("/api/pause", json!({})).await,
    );
    if env.is_memory() {
        assert_eq!(dlq.0, 501, "{}", dlq.1);
        assert!(dlq.1["error"].as_str().unwrap().contains("PostgreSQL"));
        assert_eq!(pause.0, 501, "{}", pause.1);
        assert!(pause.1["error"].as_str().unwrap().contains("QUEUE_DRIVER=memory"));
    } else {
        assert_eq!((dlq.0, &dlq.1["total"]), (200, &json!(0)), "{}", dlq.1);
        assert_eq!(pause.0, 200);
        assert_eq!(api.post("/api/resume", json!({})).await.0, 200);
    }
    worker.stop().await.unwrap();
}

/// Percent-encodes everything but unreserved characters (a path segment).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
