//! The README quickstart, run as written: the binary with no configuration at all (no Redis, no
//! Postgres: the memory queue and a SQLite file), a job posted to `POST /jobs`, its result read
//! back from `GET /jobs/{id}`; and production refusing those embedded defaults.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// The binary in a fresh working directory with an empty environment (only the port is set, so
/// parallel tests do not collide on 3001).
fn spawn_bare(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_step-worker"))
        .env_clear()
        .env("HEALTH_CHECK_PORT", port.to_string())
        .env("LOG_LEVEL", "warn")
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn bare_binary_runs_a_posted_job_and_serves_its_result() {
    let dir = std::env::temp_dir().join(common::unique("sw_quickstart_"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = common::servers::free_port();
    let mut child = spawn_bare(&dir, port);
    let base = format!("http://127.0.0.1:{port}");
    common::wait_for("/health to answer 200", WAIT, || async {
        matches!(reqwest::get(format!("{base}/health")).await, Ok(r) if r.status() == 200)
    })
    .await;
    let (_, health) = common::get(&format!("{base}/health")).await;
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["queue_driver"], "memory");

    let client = reqwest::Client::new();
    let posted = client
        .post(format!("{base}/jobs"))
        .json(&json!({"id": "hello-1", "step": "builtin.noop", "input": {"hello": "world"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    let bad = client
        .post(format!("{base}/jobs"))
        .json(&json!({"step": "builtin.noop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "a job without an id is refused with the reason");
    assert!(bad.text().await.unwrap().contains("id"));

    let url = format!("{base}/jobs/hello-1");
    common::wait_for("the job's result", WAIT, || async {
        matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200)
    })
    .await;
    let (_, body) = common::get(&url).await;
    let result: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["attempts"], 1);
    assert_eq!(result["output"], json!({"hello": "world"}));
    let (missing, _) = common::get(&format!("{base}/jobs/never-posted")).await;
    assert_eq!(missing, 404);

    let (_, metrics) = common::get(&format!("{base}/metrics")).await;
    assert_eq!(
        common::metric(
            &metrics,
            r#"step_worker_jobs_total{outcome="succeeded",step="builtin.noop"}"#
        ),
        Some(1.0),
        "{metrics}"
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        dir.join("step-worker.db").exists(),
        "results are kept in ./step-worker.db"
    );
    for leftover in ["step-worker.db-wal", "step-worker.db-shm"] {
        assert!(
            !dir.join(leftover).exists(),
            "a clean exit closes the database and leaves no {leftover}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn production_refuses_the_memory_queue_and_sqlite() {
    for (vars, variable) in [
        (
            vec![("APP_ENV", "production"), ("QUEUE_DRIVER", "memory")],
            "QUEUE_DRIVER",
        ),
        (
            vec![
                ("APP_ENV", "production"),
                ("REDIS_URL", "redis://127.0.0.1:6379"),
                ("DATABASE_URL", "sqlite://results.db"),
            ],
            "DATABASE_URL",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_step-worker"))
            .env_clear()
            .envs(vars)
            .args(["config", "check"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(variable), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn admin_commands_on_the_embedded_defaults_are_a_configuration_error() {
    let dir = std::env::temp_dir().join(common::unique("sw_quickstart_cli_"));
    std::fs::create_dir_all(&dir).unwrap();
    for args in [vec!["stats"], vec!["dlq", "list"], vec!["pause"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_step-worker"))
            .env_clear()
            .current_dir(&dir)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("QUEUE_DRIVER"), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
