//! Slack notifications, against a local endpoint standing in for the webhook.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use common::servers::PrivatePostgres;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn dead_letters_are_announced_at_most_once_per_step_per_window_with_a_count() {
    let (addr, hook) = common::capture::start().await;
    let env = TestEnv::new().await;
    let url = format!("http://{addr}/hook");
    let worker = env
        .start(&[("SLACK_WEBHOOK", url.as_str()), ("SLACK_DEAD_LETTER_WINDOW_MS", "3000")])
        .await;

    env.push_job("dl-1", "builtin.fail", json!({"permanent": true})).await;
    common::wait_for("the first message", WAIT, || async { hook.bodies().len() == 1 }).await;
    let first_at = Instant::now();
    assert!(
        hook.bodies()[0].1.contains("1 job(s) of step `builtin.fail`"),
        "{:?}",
        hook.bodies()
    );

    env.push_job("dl-2", "builtin.fail", json!({"permanent": true})).await;
    env.push_job("dl-3", "builtin.fail", json!({"permanent": true})).await;
    env.wait_count(
        "three dead rows",
        "SELECT count(*) FROM step_results WHERE status = 'dead'",
        3,
        WAIT,
    )
    .await;
    common::wait_for("the aggregated message", WAIT, || async { hook.bodies().len() == 2 }).await;
    assert!(
        first_at.elapsed() >= Duration::from_millis(2500),
        "the second message waited for the window"
    );
    let second = &hook.bodies()[1].1;
    assert!(
        second.contains("2 job(s) of step `builtin.fail`") && second.contains("permanent_failure"),
        "{second}"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_postgres_outage_past_the_threshold_and_its_recovery_are_announced() {
    let (addr, hook) = common::capture::start().await;
    let pg = PrivatePostgres::start();
    let env = TestEnv::with_servers(&common::redis_url(), &pg.url()).await;
    let url = format!("http://{addr}/hook");
    let worker = env
        .start(&[("SLACK_WEBHOOK", url.as_str()), ("SLACK_OUTAGE_THRESHOLD_MS", "500")])
        .await;

    pg.stop("fast");
    env.push_job("during-outage", "builtin.noop", json!(1)).await;
    common::wait_for("the outage message", WAIT, || async {
        hook.bodies().iter().any(|(_, b)| b.contains("Postgres unreachable"))
    })
    .await;
    pg.start_server();
    common::wait_for("the recovery message", WAIT, || async {
        hook.bodies()
            .iter()
            .any(|(_, b)| b.contains("Postgres is reachable again"))
    })
    .await;
    assert_eq!(env.wait_result("during-outage", WAIT).await.status, "succeeded");
    worker.stop().await.unwrap();
}
