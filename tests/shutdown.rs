//! Graceful shutdown: finished work is persisted, unfinished work goes back to the queue.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

on_each_driver!(
    shutdown_persists_finished_jobs_and_hands_back_unfinished_ones,
    idle_worker_stops_promptly_despite_a_long_blocking_claim,
);

async fn shutdown_persists_finished_jobs_and_hands_back_unfinished_ones(env: TestEnv) {
    let worker = env
        .start(&[("SHUTDOWN_TIMEOUT_MS", "1000"), ("CLAIM_BLOCK_MS", "30000")])
        .await;
    let http = worker.http_addr.unwrap();
    env.push_job("quick", "builtin.sleep", json!({"ms": 300})).await;
    env.push_job("slow", "builtin.sleep", json!({"ms": 60000})).await;
    common::wait_for("both jobs claimed", WAIT, || async { env.in_flight_len().await == 2 }).await;

    let started = Instant::now();
    worker.shutdown.graceful.cancel();
    // While draining, the platform sees the worker as not ready.
    let (code, body) = common::get(&format!("http://{http}/health")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"draining\":true"), "{body}");
    worker.wait().await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "shutdown took {took:?} (timeout 1 s, blocked claim woken)"
    );

    assert_eq!(env.result("quick").await.unwrap().status, "succeeded");
    assert!(env.result("slow").await.is_none());
    let ready = env.ready_payloads().await;
    assert_eq!(ready.len(), 1);
    assert!(ready[0].contains("\"slow\""));
    assert_eq!(env.in_flight_len().await, 0);
    assert_eq!(
        env.attempt_counters().await,
        0,
        "a handed-back job is not counted as an attempt"
    );
    assert_eq!(env.live_workers().await, 0, "deregistered");
    assert!(env.attempts("slow").await.is_empty());
}

async fn idle_worker_stops_promptly_despite_a_long_blocking_claim(env: TestEnv) {
    let worker = env.start(&[("CLAIM_BLOCK_MS", "60000")]).await;
    common::wait_for("the claim loop to block", WAIT, || async {
        if env.is_memory() {
            // Nothing outside the process can see a memory claim wait: an empty queue and a
            // health check that has seen the claim loop run are the closest evidence.
            let (code, _) = common::get(&format!("http://{}/health", worker.http_addr.unwrap())).await;
            return code == 200 && env.ready_len().await == 0;
        }
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut env.redis.clone())
            .await
            .unwrap();
        let name = format!("name=step-worker:{}", worker.worker_id);
        clients.lines().any(|l| l.contains(&name) && l.contains("cmd=blmove"))
    })
    .await;
    let started = Instant::now();
    worker.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_binary_exits_zero_on_sigterm_and_hands_back_its_running_job() {
    exits_zero_on_and_hands_back_its_running_job("TERM").await;
}

/// SIGHUP's default action kills the process with no drain (a closing terminal, some
/// supervisors send it): it must drain like SIGTERM.
#[tokio::test]
async fn the_binary_drains_on_sighup_like_on_sigterm() {
    exits_zero_on_and_hands_back_its_running_job("HUP").await;
}

async fn exits_zero_on_and_hands_back_its_running_job(signal: &str) {
    let env = TestEnv::new().await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_step-worker"))
        .env_clear()
        .envs(env.vars())
        .envs([("SHUTDOWN_TIMEOUT_MS", "500"), ("LOG_LEVEL", "warn")])
        .spawn()
        .unwrap();
    let id = format!("sig{signal}-1");
    env.push_job(&id, "builtin.sleep", json!({"ms": 60000})).await;
    common::wait_for("the job to be claimed", WAIT, || async {
        env.in_flight_len().await == 1
    })
    .await;
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < WAIT, "the worker did not exit after SIG{signal}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "SIG{signal}: {status}");
    assert_eq!(env.ready_len().await, 1, "the unfinished job is back in ready");
    assert_eq!(env.live_workers().await, 0, "deregistered");
    assert_eq!(env.in_flight_len().await, 0);
    assert!(env.result(&id).await.is_none());
}
