//! Idle connections cannot starve the HTTP server: with its file-descriptor limit lowered to 256,
//! 370 connections that send nothing leave `/health` answering.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn health_answers_while_hundreds_of_idle_connections_are_held() {
    let dir = std::env::temp_dir().join(common::unique("sw_conns_"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = common::servers::free_port();
    // `ulimit -n 256` applies to the worker only, through the shell that execs it.
    let child = Command::new("sh")
        .args(["-c", "ulimit -n 256 && exec \"$0\"", env!("CARGO_BIN_EXE_step-worker")])
        .env_clear()
        .env("HEALTH_CHECK_PORT", port.to_string())
        .env("LOG_LEVEL", "error")
        .current_dir(&dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Killed however the test ends: a failed assertion must not leave the worker running.
    let _child = common::KillOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let health = || async {
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    common::wait_for("/health to answer 200", WAIT, || async {
        matches!(health().await, Ok(200))
    })
    .await;

    let mut held = Vec::new();
    for _ in 0..370 {
        // A server that stops accepting fills its backlog, and connecting then hangs.
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        held.push(
            tokio::time::timeout(WAIT, connect)
                .await
                .expect("connect in time")
                .unwrap(),
        );
    }
    // Every probe answers, promptly, while all of them stay open.
    for _ in 0..10 {
        let started = std::time::Instant::now();
        assert_eq!(health().await.map_err(|e| e.to_string()), Ok(200));
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}
