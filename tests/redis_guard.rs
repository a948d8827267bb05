//! The startup guard against a Redis that may evict queue data.

mod common;

use common::TestEnv;
use common::servers::PrivateRedis;
use step_worker::{Registry, Shutdown};

#[tokio::test]
async fn production_refuses_an_evicting_redis_unless_the_risk_is_accepted() {
    let redis = PrivateRedis::start(&["--maxmemory-policy", "allkeys-lru"]);
    let env = TestEnv::with_servers(&redis.url(), &common::admin_database_url()).await;

    let refused = step_worker::worker::start(
        env.config(&[("APP_ENV", "production")]),
        Registry::new(),
        Shutdown::new(),
    )
    .await;
    let err = format!("{:#}", refused.err().expect("start is refused"));
    assert!(
        err.contains("allkeys-lru") && err.contains("REDIS_ALLOW_EVICTION"),
        "{err}"
    );

    let accepted = env
        .start(&[("APP_ENV", "production"), ("REDIS_ALLOW_EVICTION", "true")])
        .await;
    let (_, metrics) = common::get(&format!("http://{}/metrics", accepted.http_addr.unwrap())).await;
    assert!(
        metrics.contains("step_worker_redis_maxmemory_policy{policy=\"allkeys-lru\"} 1"),
        "the policy is exported for alerts"
    );
    accepted.stop().await.unwrap();

    // Outside production the worker starts, with the error logged and the metric set.
    env.start(&[]).await.stop().await.unwrap();
}
