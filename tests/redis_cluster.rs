//! Redis Cluster: a worker and the operator commands pointed at a node of a private cluster (see
//! `common::redis_cluster`) that does not own the queue's hash slot, so every command they send
//! there is answered `MOVED`. The failover under load is a fault test: tests/chaos/redis_cluster.rs.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::TestEnv;
use common::redis_cluster::PrivateRedisCluster;
use serde_json::Value;
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(30);
const JOBS: usize = 300;

async fn cli(env: &TestEnv, redis_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_step-worker"))
        .env_clear()
        .envs(env.vars())
        .env("REDIS_URL", redis_url)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
async fn worker_and_cli_pointed_at_a_node_that_does_not_own_the_queue_run_every_job() {
    let rc = PrivateRedisCluster::start();
    let env = TestEnv::new().await;
    let owner = rc.owner(&env.queue_key);
    // Another master: the slot is not its own, so it answers MOVED to the queue's every key.
    let elsewhere = (0..rc.nodes.len())
        .find(|i| {
            *i != owner.master
                && Some(*i) != owner.replica
                && rc.info_field(*i, "replication", "role").as_deref() == Some("master")
        })
        .expect("another master");
    let url = rc.url(elsewhere);
    // A long block: stopping promptly shows `CLIENT UNBLOCK` reached the node the claim waits on.
    let worker = tokio::time::timeout(WAIT, env.start(&[("REDIS_URL", &url), ("CLAIM_BLOCK_MS", "60000")]))
        .await
        .expect("the worker connects through a node that does not own the queue's slot");

    let file = std::env::temp_dir().join(common::unique("sw-cluster-jobs-"));
    let jobs: Vec<String> = (0..JOBS)
        .map(|i| format!(r#"{{"id":"rc-{i}","step":"builtin.noop","input":{i}}}"#))
        .collect();
    std::fs::write(&file, jobs.join("\n")).unwrap();
    // The operator's commands through the seed-list form of REDIS_URL.
    let enqueued = cli(&env, &rc.seeds(), &["enqueue", "--file", file.to_str().unwrap()]).await;
    std::fs::remove_file(&file).unwrap();
    ok(enqueued);
    env.wait_count(
        "every job's row",
        "SELECT count(*) FROM step_results WHERE status = 'succeeded'",
        JOBS as i64,
        WAIT,
    )
    .await;
    assert_eq!(env.count("SELECT count(*) FROM step_results").await, JOBS as i64);

    let out = ok(cli(&env, &url, &["stats", "--json"]).await);
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["ready"], 0, "{stats}");
    assert_eq!(stats["in_flight"], 0, "{stats}");
    assert_eq!(stats["workers"].as_array().map(Vec::len), Some(1), "{stats}");

    // The queue's keys live with the ready list on the slot's master, none on the node named.
    let workers_key = env.key("workers");
    let exists = |node: usize| {
        let mut c = redis::Client::open(rc.url(node)).unwrap().get_connection().unwrap();
        redis::cmd("EXISTS").arg(&workers_key).query::<i64>(&mut c)
    };
    assert_eq!(exists(owner.master).unwrap(), 1);
    assert!(
        exists(elsewhere).is_err(),
        "a node that does not own the slot answers MOVED"
    );
    let stopping = std::time::Instant::now();
    worker.stop().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "the blocked claim was not woken: stop took {:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn production_refuses_a_cluster_whose_queue_replica_evicts() {
    let rc = PrivateRedisCluster::start();
    let env = TestEnv::new().await;
    let owner = rc.owner(&env.queue_key);
    // Only the replica evicts: it is the master after a failover, so it counts as much.
    let replica = owner.replica.expect("a replica");
    let mut c = redis::Client::open(rc.url(replica)).unwrap().get_connection().unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query(&mut c)
        .unwrap();
    let refused = step_worker::worker::start(
        env.config(&[("APP_ENV", "production"), ("REDIS_URL", &rc.url(owner.master))]),
        step_worker::Registry::new(),
        step_worker::Shutdown::new(),
    )
    .await;
    let err = format!("{:#}", refused.err().expect("start is refused"));
    assert!(err.contains("allkeys-lru"), "{err}");
}
