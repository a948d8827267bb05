//! Startup: the HTTP port is bound before anything else, so liveness is answered while the worker
//! waits for Redis or Postgres (a platform would otherwise restart a worker that is correctly
//! waiting out an outage), and a port that cannot be bound stops the worker before it registers.

mod common;

use std::time::Duration;

use common::TestEnv;
use common::servers::{PrivateRedis, free_port};
use serde_json::Value;
use step_worker::{Registry, Shutdown};

const WAIT: Duration = Duration::from_secs(30);

async fn get_json(url: &str) -> Option<(u16, Value)> {
    let r = reqwest::get(url).await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.json().await.ok()?))
}

#[tokio::test]
async fn probes_are_answered_while_waiting_for_redis_and_health_says_what_for() {
    let mut redis = PrivateRedis::start(&[]);
    let env = TestEnv::with_servers(&redis.url(), &common::admin_database_url()).await;
    redis.kill();
    let port = free_port();
    let config = env.config(&[("HEALTH_CHECK_PORT", &port.to_string())]);
    let starting = tokio::spawn(step_worker::worker::start(config, Registry::new(), Shutdown::new()));
    let base = format!("http://127.0.0.1:{port}");

    common::wait_for("/health/live to answer 200", WAIT, || async {
        get_json(&format!("{base}/health/live"))
            .await
            .is_some_and(|(c, _)| c == 200)
    })
    .await;
    common::wait_for("/health to name what it waits for", WAIT, || async {
        get_json(&format!("{base}/health"))
            .await
            .is_some_and(|(c, b)| c == 503 && b["waiting_for"] == "redis")
    })
    .await;
    let (_, body) = get_json(&format!("{base}/health")).await.unwrap();
    assert_eq!(body["status"], "starting", "{body}");
    assert!(body["error"].as_str().unwrap().contains("connect to Redis"), "{body}");

    redis.restart();
    let worker = starting.await.unwrap().unwrap().expect("started");
    assert_eq!(worker.http_addr.unwrap().port(), port);
    common::wait_for("/health to answer 200", WAIT, || async {
        get_json(&format!("{base}/health")).await.is_some_and(|(c, _)| c == 200)
    })
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_stops_the_worker_before_it_registers() {
    let env = TestEnv::new().await;
    let taken = std::net::TcpListener::bind("[::]:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let result = step_worker::worker::start(
        env.config(&[("HEALTH_CHECK_PORT", &port)]),
        Registry::new(),
        Shutdown::new(),
    )
    .await;
    let error = format!("{:#}", result.err().expect("the port is taken"));
    assert!(error.contains("HEALTH_CHECK_PORT"), "{error}");
    assert_eq!(
        env.live_workers().await,
        0,
        "a worker that never ran is not in the registry"
    );
}

/// A Redis that accepts connections and never answers (a partition) holds a connection attempt
/// for seconds; a shutdown request must not wait for it.
#[tokio::test]
async fn a_shutdown_request_does_not_wait_for_a_connection_attempt_that_hangs() {
    let env = TestEnv::new().await;
    // Connections complete in the listen backlog, and nothing ever reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let port = free_port();
    let config = env.config(&[("REDIS_URL", &url), ("HEALTH_CHECK_PORT", &port.to_string())]);
    let shutdown = Shutdown::new();
    let starting = tokio::spawn(step_worker::worker::start(config, Registry::new(), shutdown.clone()));
    common::wait_for("/health to answer", WAIT, || async {
        get_json(&format!("http://127.0.0.1:{port}/health")).await.is_some()
    })
    .await;
    let asked = std::time::Instant::now();
    shutdown.graceful.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(2), starting).await;
    let started = outcome.expect("startup ended promptly").unwrap().unwrap();
    assert!(started.is_none(), "stopped before starting");
    assert!(asked.elapsed() < Duration::from_secs(1), "took {:?}", asked.elapsed());
}
