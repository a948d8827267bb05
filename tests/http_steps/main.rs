//! HTTP steps end to end: a worker against real Redis and Postgres calls a scripted endpoint
//! (`server`), and each test asserts on the rows in Postgres and on the requests the endpoint
//! received. `responses` covers what each kind of answer does to the job; `routing` covers
//! where a step goes, with which credentials, and the signature.

#[path = "../common/mod.rs"]
mod common;
mod responses;
mod routing;
mod server;

use std::time::Duration;

use common::TestEnv;
use server::StepServer;
use step_worker::worker::Running;

const WAIT: Duration = Duration::from_secs(20);

/// Starts a worker whose steps go to `server` at `/steps/{step}`.
async fn start(env: &TestEnv, server: &StepServer, extra: &[(&str, &str)]) -> Running {
    let template = server.url("/steps/{step}");
    // The steps whose metrics these tests read keep a label of their own; others count as `other`.
    let known = "charge,validate,flaky,slow,down,big,endless,fits";
    let mut vars = vec![("STEP_HANDLER_URL", template.as_str()), ("METRICS_STEPS", known)];
    vars.extend_from_slice(extra);
    env.start(&vars).await
}

/// The current value of `step_worker_http_step_responses_total` for `step` and `class`.
async fn responses(worker: &Running, step: &str, class: &str) -> f64 {
    let addr = worker.http_addr.expect("the test worker serves /metrics");
    let (_, text) = common::get(&format!("http://{addr}/metrics")).await;
    let line = format!(r#"step_worker_http_step_responses_total{{class="{class}",step="{step}"}}"#);
    common::metric(&text, &line).unwrap_or(0.0)
}
