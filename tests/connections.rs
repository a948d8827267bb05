//! Outsiders reaching the HTTP port cannot starve it or the job path: held idle connections
//! (with the file-descriptor limit lowered to 256) leave `/health` answering, a flood of scrapes
//! reads Redis at a bounded rate, and `METRICS_TOKEN` closes `/metrics`.

mod common;

use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn health_answers_while_hundreds_of_idle_connections_are_held() {
    let dir = std::env::temp_dir().join(common::unique("sw_conns_"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = common::servers::free_port();
    let log = dir.join("worker.log");
    // `ulimit -n 256` applies to the worker only, through the shell that execs it.
    let child = Command::new("sh")
        .args(["-c", "ulimit -n 256 && exec \"$0\"", env!("CARGO_BIN_EXE_step-worker")])
        .env_clear()
        .env("HEALTH_CHECK_PORT", port.to_string())
        .env("LOG_LEVEL", "warn")
        .current_dir(&dir)
        .stdout(std::fs::File::create(&log).unwrap())
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
    // Every probe answers within the client's 2 s timeout (a platform probe's order of
    // magnitude) while all of them stay open.
    for _ in 0..10 {
        assert_eq!(health().await.map_err(|e| e.to_string()), Ok(200));
    }
    drop(held);
    // Running out of file descriptors is what made accepting pause for a second at a time.
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!logged.contains("Too many open files"), "{logged}");
}

/// `EVAL`/`EVALSHA` calls the Redis server has answered (every depth read is one).
async fn script_calls(redis_url: &str) -> u64 {
    let mut conn = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_flood_of_scrapes_reads_redis_and_postgres_at_a_bounded_rate() {
    let redis = common::servers::PrivateRedis::start(&[]);
    let env = common::TestEnv::with_servers(&redis.url(), &common::admin_database_url()).await;
    let worker = env.start(&[]).await;
    let url = format!("http://{}/metrics", worker.http_addr.unwrap());
    let client = reqwest::Client::new();
    let before = script_calls(&redis.url()).await;
    let scrapes = (0..200).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = client.get(url).send().await.unwrap();
            let code = response.status().as_u16();
            // Read whole, as a scraper does, so the connection is reused.
            response.text().await.unwrap();
            code
        }
    });
    // 50 at a time, as `ab -c 50` scrapes.
    let codes: Vec<u16> =
        futures::StreamExt::collect(futures::StreamExt::buffer_unordered(futures::stream::iter(scrapes), 50)).await;
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    let calls = script_calls(&redis.url()).await - before;
    // One depth read per refresh, plus the worker's own heartbeats and claims meanwhile.
    assert!(calls < 20, "200 scrapes made {calls} script calls");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_token_protects_metrics_as_prometheus_authorization_sends_it() {
    let env = common::TestEnv::memory().await;
    let token = "metrics-token-0123456789";
    let worker = env.start(&[("METRICS_TOKEN", token)]).await;
    let url = format!("http://{}/metrics", worker.http_addr.unwrap());
    let client = reqwest::Client::new();
    let status = |auth: Option<String>| {
        let mut req = client.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(None).await, 401);
    assert_eq!(status(Some("Bearer wrong-token-0123456789".into())).await, 401);
    assert_eq!(status(Some(format!("Bearer {token}"))).await, 200);
    // /health stays open: the platform's probe sends no token.
    let (code, _) = common::get(&format!("http://{}/health", worker.http_addr.unwrap())).await;
    assert_eq!(code, 200);
    worker.stop().await.unwrap();
}

/// Probes and scrapes past the pace (200 a second after a burst of 50) wait their turn and are
/// all answered; `/jobs` does not queue behind them.
#[tokio::test]
async fn a_flood_of_probes_is_paced_not_refused_and_jobs_do_not_wait_behind_it() {
    let env = common::TestEnv::memory().await;
    let worker = env.start(&[]).await;
    let addr = worker.http_addr.unwrap();
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let probes = (0..300).map(move |_| {
        let (client, url) = (client.clone(), format!("http://{addr}/health/live"));
        async move {
            let code = client.get(url).send().await.unwrap().status().as_u16();
            (code, started.elapsed())
        }
    });
    let flood = tokio::spawn(futures::StreamExt::collect::<Vec<_>>(
        futures::StreamExt::buffer_unordered(futures::stream::iter(probes), 50),
    ));
    // Once the burst is spent, a job lookup is answered ahead of the probes still waiting.
    common::wait_for("the burst to be spent", Duration::from_secs(10), || async {
        started.elapsed() > Duration::from_millis(300)
    })
    .await;
    let (code, _) = common::get(&format!("http://{addr}/jobs/no-such-job")).await;
    let job_answered = started.elapsed();
    assert_eq!(code, 404);
    let answers = flood.await.unwrap();
    assert!(answers.iter().all(|(code, _)| *code == 200), "{answers:?}");
    let last = answers.iter().map(|(_, at)| *at).max().unwrap();
    // 300 probes: 51 at once, then one each 5 ms.
    assert!(last >= Duration::from_millis(1200), "300 probes answered in {last:?}");
    assert!(
        job_answered < last,
        "the job lookup at {job_answered:?} waited behind the probes ({last:?})"
    );
    worker.stop().await.unwrap();
}
