//! Step names come from producers: with a fallback handler (HTTP steps, or a native one) every
//! name runs, yet metric series and Slack messages stay bounded.

mod common;

use std::time::Duration;

use common::TestEnv;
use serde_json::{Value, json};
use step_worker::{Registry, StepError};

const WAIT: Duration = Duration::from_secs(120);
/// Step label values a worker with no native step of its own, no `STEP_ROUTES` and no
/// `METRICS_STEPS` can show: the built-in steps, `other`, `invalid` and `unknown`.
const LABEL_BOUND: usize = 4 + 3;

#[tokio::test]
async fn fifty_thousand_invented_step_names_share_one_label() {
    let env = TestEnv::memory().await;
    let registry = Registry::new().with_fallback(|_ctx, input: Value| async move { Ok::<_, StepError>(input) });
    let worker = env.start_with(&[("MEMORY_QUEUE_MAX_JOBS", "100000")], registry).await;
    const N: i64 = 50_000;
    for i in 0..N {
        env.push(&json!({"id": format!("c-{i}"), "step": format!("invented.step-{i}")}).to_string())
            .await;
    }
    env.wait_count("every job's result", "SELECT count(*) FROM step_results", N, WAIT)
        .await;
    let (_, metrics) = common::get(&format!("http://{}/metrics", worker.http_addr.unwrap())).await;
    let mut labels: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.split_once("step=\"").map(|(_, rest)| rest.split('"').next().unwrap()))
        .collect();
    labels.sort_unstable();
    labels.dedup();
    assert!(labels.len() <= LABEL_BOUND, "{labels:?}");
    assert!(labels.contains(&"other"), "{labels:?}");
    let succeeded = common::metric(&metrics, r#"step_worker_jobs_total{outcome="succeeded",step="other"}"#);
    assert_eq!(succeeded, Some(N as f64));
    assert!(metrics.len() < 200_000, "/metrics is {} bytes", metrics.len());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn slack_sends_a_bounded_number_of_messages_and_summarises_the_rest() {
    let (addr, hook) = common::capture::start().await;
    let env = TestEnv::new().await;
    let registry =
        Registry::new().with_fallback(|_ctx, _input: Value| async move { Err::<Value, _>(StepError::permanent("no")) });
    let url = format!("http://{addr}/hook");
    let vars = [
        ("SLACK_WEBHOOK", url.as_str()),
        ("SLACK_DEAD_LETTER_WINDOW_MS", "60000"),
    ];
    let worker = env.start_with(&vars, registry).await;
    const N: i64 = 50;
    for i in 0..N {
        env.push_job(&format!("s-{i}"), &format!("invented.{i}"), json!(null))
            .await;
    }
    env.wait_count("every dead row", "SELECT count(*) FROM step_results", N, WAIT)
        .await;
    let texts = || -> Vec<String> {
        hook.bodies()
            .into_iter()
            .map(|(_, b)| {
                serde_json::from_str::<Value>(&b).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let counted = |texts: &[String]| -> u64 {
        texts
            .iter()
            .map(|t| {
                let n = t.trim_start_matches(":skull: ").split_whitespace().next().unwrap();
                n.parse::<u64>().unwrap_or_else(|_| panic!("{t}"))
            })
            .sum()
    };
    // The first round sends the budget and summarises the rest at once: every job is counted.
    common::wait_for("every dead letter counted in Slack", WAIT, || {
        let n = counted(&texts());
        async move { n == N as u64 }
    })
    .await;
    worker.stop().await.unwrap();
    let texts = texts();
    let budget = step_worker::notify::slack::MAX_MESSAGES;
    // The budget of step messages and one summary in the window.
    assert!(texts.len() <= budget + 1, "{} messages: {texts:#?}", texts.len());
    assert_eq!(counted(&texts), N as u64, "{texts:#?}");
}
