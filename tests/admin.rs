//! The operator commands, run as the real binary against the test's Redis keys and database.

mod common;

use std::process::Output;
use std::time::Duration;

use common::TestEnv;
use redis::AsyncCommands;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test]
async fn enqueue_validates_jobs_against_the_contract() {
    let env = TestEnv::new().await;
    let bad = env.cli(&["enqueue", r#"{"step":"builtin.noop"}"#]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("missing required field `id`"));
    assert_eq!(env.ready_len().await, 0);

    ok(&env.cli(&["enqueue", r#"{"id":"e-1","step":"builtin.noop"}"#]).await);
    let pushed: Vec<String> = env.redis.clone().lrange(&env.queue_key, 0, -1).await.unwrap();
    let job: Value = serde_json::from_str(&pushed[0]).unwrap();
    assert_eq!(job["id"], "e-1");
    assert!(job["enqueued_at"].is_i64(), "enqueued_at is added: {job}");

    let file = std::env::temp_dir().join(common::unique("jobs-") + ".ndjson");
    std::fs::write(
        &file,
        "{\"id\":\"f-1\",\"step\":\"builtin.noop\"}\n\n{\"id\":\"f-2\",\"step\":\"builtin.noop\"}\n",
    )
    .unwrap();
    ok(&env.cli(&["enqueue", "--file", file.to_str().unwrap()]).await);
    assert_eq!(env.ready_len().await, 3);
    std::fs::write(&file, "{\"id\":\"g-1\",\"step\":\"builtin.noop\"}\nnot json\n").unwrap();
    let bad_file = env.cli(&["enqueue", "--file", file.to_str().unwrap()]).await;
    assert!(
        String::from_utf8_lossy(&bad_file.stderr).contains("line 2"),
        "names the bad line"
    );
    assert_eq!(env.ready_len().await, 3, "a file with a bad line pushes nothing");
    std::fs::remove_file(&file).unwrap();

    ok(&env
        .cli(&["enqueue", "--delay", "1h", r#"{"id":"later-1","step":"builtin.noop"}"#])
        .await);
    assert_eq!(env.zcard(&env.key("delayed")).await, 1);
}

#[tokio::test]
async fn pause_stops_claiming_on_every_worker_and_resume_restarts_it() {
    let env = TestEnv::new().await;
    let worker = env.start(&[]).await;
    let http = worker.http_addr.unwrap();
    ok(&env.cli(&["pause"]).await);
    common::wait_for("the worker to report paused", WAIT, || async {
        let (code, body) = common::get(&format!("http://{http}/health")).await;
        code == 200 && body.contains("\"paused\":true")
    })
    .await;
    env.push_job("while-paused", "builtin.noop", json!(1)).await;
    let stats: Value = serde_json::from_str(&ok(&env.cli(&["stats", "--json"]).await)).unwrap();
    assert_eq!(stats["paused"], true);
    assert_eq!(stats["workers"].as_array().unwrap().len(), 1);
    // Stats reads the job as still waiting: the paused worker did not take it.
    assert_eq!(stats["ready"], 1);
    assert!(env.result("while-paused").await.is_none());

    ok(&env.cli(&["resume"]).await);
    assert_eq!(env.wait_result("while-paused", WAIT).await.status, "succeeded");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn pausing_one_step_holds_its_jobs_while_the_others_run() {
    let env = TestEnv::new().await;
    let worker = env.start(&[]).await;
    ok(&env.cli(&["pause", "--step", "builtin.sleep"]).await);
    common::wait_for("the worker to see the paused step", WAIT, || async {
        let (_, body) = common::get(&format!("http://{}/health", worker.http_addr.unwrap())).await;
        body.contains("builtin.sleep")
    })
    .await;
    env.push_job("held-1", "builtin.sleep", json!({"ms": 1})).await;
    env.push_job("free-1", "builtin.noop", json!(1)).await;
    assert_eq!(env.wait_result("free-1", WAIT).await.status, "succeeded");
    common::wait_for("the paused step's job to be held", WAIT, || async {
        env.llen(&env.key("held:builtin.sleep")).await == 1
    })
    .await;
    assert!(env.result("held-1").await.is_none());
    let stats = ok(&env.cli(&["stats"]).await);
    assert!(stats.contains("paused step builtin.sleep (1 jobs held)"), "{stats}");

    let out = ok(&env.cli(&["resume", "--step", "builtin.sleep"]).await);
    assert!(out.contains("1 held job(s) back"), "{out}");
    let row = env.wait_result("held-1", WAIT).await;
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("succeeded", 1),
        "holding is not an attempt"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn purge_ready_moves_jobs_to_dead_letters_and_replay_brings_them_back_once() {
    let env = TestEnv::new().await;
    ok(&env.cli(&["migrate"]).await);
    for i in 0..3 {
        env.push_job(&format!("p-{i}"), "builtin.noop", json!(i)).await;
    }
    let refused = env.cli(&["purge-ready"]).await;
    assert_eq!(refused.status.code(), Some(3), "no --yes and no terminal to ask on");
    assert_eq!(env.ready_len().await, 3);

    ok(&env.cli(&["purge-ready", "--yes"]).await);
    assert_eq!(env.ready_len().await, 0);
    assert_eq!(env.in_flight_len().await, 0);
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 3);
    assert!(letters.iter().all(|l| l.reason == "purged"));

    let listed: Value =
        serde_json::from_str(&ok(&env.cli(&["dlq", "list", "--reason", "purged", "--json"]).await)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let shown: Value = serde_json::from_str(&ok(&env.cli(&["dlq", "show", &id, "--json"]).await)).unwrap();
    assert!(shown["payload"].as_str().unwrap().contains("builtin.noop"));

    let dry = ok(&env.cli(&["dlq", "replay", "--reason", "purged", "--dry-run"]).await);
    assert!(dry.contains("3 dead letter(s) would be replayed"), "{dry}");
    assert_eq!(env.ready_len().await, 0, "a dry run changes nothing");
    ok(&env.cli(&["dlq", "replay", "--reason", "purged"]).await);
    assert_eq!(env.ready_len().await, 3);
    ok(&env.cli(&["dlq", "replay", "--reason", "purged"]).await);
    assert_eq!(env.ready_len().await, 3, "replaying twice is a no-op");
    let replayed = env
        .count("SELECT count(*) FROM step_dead_letters WHERE replayed_at IS NOT NULL")
        .await;
    assert_eq!(replayed, 3);

    let worker = env.start(&[]).await;
    env.wait_count(
        "three results",
        "SELECT count(*) FROM step_results WHERE status = 'succeeded'",
        3,
        WAIT,
    )
    .await;
    worker.stop().await.unwrap();

    assert_eq!(
        env.cli(&["dlq", "purge", "--reason", "purged"]).await.status.code(),
        Some(3)
    );
    ok(&env
        .cli(&["dlq", "purge", "--reason", "purged", "--older-than", "0s", "--yes"])
        .await);
    assert_eq!(env.count("SELECT count(*) FROM step_dead_letters").await, 0);
}

#[tokio::test]
async fn replay_gives_a_dead_job_fresh_attempts() {
    let env = TestEnv::new().await;
    let worker = env.start(&[("MAX_RETRY_ATTEMPTS", "1")]).await;
    env.push_job("dies-once", "builtin.fail", json!({"times": 2})).await;
    assert_eq!(env.wait_result("dies-once", WAIT).await.status, "dead");
    let out = ok(&env.cli(&["dlq", "replay", "--step", "builtin.fail"]).await);
    assert!(out.contains("replayed 1"), "{out}");
    // The replay starts again at attempt 1, so it fails twice more (builtin.fail fails attempts
    // 1 and 2) and dies again after 2 attempts; its old dead row was replaced, not kept.
    common::wait_for("the replay to finish", WAIT, || async {
        env.count("SELECT count(*) FROM step_attempts WHERE job_id = 'dies-once'")
            .await
            == 4
    })
    .await;
    let row = env.wait_result("dies-once", WAIT).await;
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("dead", 2),
        "the replay ran with fresh attempts"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn smoke_succeeds_with_a_worker_and_fails_without_one() {
    let env = TestEnv::new().await;
    ok(&env.cli(&["migrate"]).await);
    let failed = env.cli(&["smoke", "--timeout", "1s"]).await;
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("had no result"));
    let worker = env.start(&[]).await;
    let out = ok(&env.cli(&["smoke", "--timeout", "20s"]).await);
    assert!(out.contains("succeeded"), "{out}");
    let load = ok(&env.cli(&["load", "--jobs", "50"]).await);
    assert!(
        load.contains("50/50 results (50 succeeded)") && load.contains("throughput"),
        "{load}"
    );
    let paced = ok(&env.cli(&["load", "--rate", "40", "--duration", "1s"]).await);
    assert!(paced.contains("40/40 results (40 succeeded)"), "{paced}");
    worker.stop().await.unwrap();
}
