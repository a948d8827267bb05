//! Sentry reporting, against a local endpoint standing in for Sentry's ingestion API. One test per
//! file: the Sentry client is global to the process.

mod common;

use std::time::Duration;

use common::TestEnv;
use serde_json::json;

#[tokio::test]
async fn a_dead_letter_is_reported_with_job_tags_and_personal_data_masked() {
    let (addr, sentry) = common::capture::start().await;
    let env = TestEnv::new().await;
    let dsn = format!("http://publickey@{addr}/42");
    let config = env.config(&[("SENTRY_DSN", dsn.as_str())]);
    let _guard = step_worker::notify::sentry::init(&config).expect("a DSN is set");
    let worker = step_worker::worker::start(config, step_worker::Registry::new(), step_worker::Shutdown::new())
        .await
        .unwrap()
        .unwrap();

    env.push(&json!({"id": "sentry-1", "step": "builtin.fail", "run_id": "run-7",
        "input": {"permanent": true, "message": "card declined", "password": "hunter2", "user": {"email": "a@example.com"}}})
    .to_string())
    .await;
    common::wait_for("an event at the Sentry endpoint", Duration::from_secs(30), || async {
        sentry.bodies().iter().any(|(_, b)| b.contains("dead-lettered"))
    })
    .await;
    let (path, event) = sentry
        .bodies()
        .into_iter()
        .find(|(_, b)| b.contains("dead-lettered"))
        .unwrap();
    assert_eq!(path, "/api/42/envelope/");
    for tag in [
        r#""job.id":"sentry-1""#,
        r#""job.step":"builtin.fail""#,
        r#""run.id":"run-7""#,
        r#""reason":"permanent_failure""#,
    ] {
        assert!(event.contains(tag), "missing {tag} in {event}");
    }
    assert!(event.contains(&format!(r#""worker":"{}""#, worker.worker_id)));
    assert!(
        !event.contains("hunter2") && !event.contains("a@example.com"),
        "personal data leaked: {event}"
    );
    assert!(event.contains("[redacted]"));
    worker.stop().await.unwrap();
}
