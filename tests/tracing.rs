//! Traces that follow a job: the real worker binary, against real Redis and Postgres, exports its
//! attempt spans over OTLP/HTTP to a receiver in this test (an axum route decoding the protobuf
//! `ExportTraceServiceRequest` with the `opentelemetry-proto` types), and its HTTP steps call an
//! endpoint here that records the `traceparent` they send. A collector that cannot be reached
//! must cost the jobs nothing.

mod common;

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use common::{KillOnDrop, TestEnv};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

/// `traceparent` and `tracestate` of each step call, by the job id in its body.
type StepCalls = Arc<Mutex<HashMap<String, (Option<String>, Option<String>)>>>;

/// What the test's collector and step endpoint received.
#[derive(Clone, Default)]
struct Received {
    /// Every exported span, with its resource's `service.name`.
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    step_calls: StepCalls,
}

impl Received {
    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }

    /// The exported span named `name` whose `job.id` attribute is `job`.
    fn span(&self, name: &str, job: &str) -> Option<Span> {
        self.spans()
            .into_iter()
            .map(|(_, s)| s)
            .find(|s| s.name == name && attr(s, "job.id").as_deref() == Some(job))
    }
}

async fn receiver() -> (SocketAddr, Received) {
    receiver_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await
}

/// The test's collector and step endpoint, served on `listener`.
async fn receiver_on(listener: tokio::net::TcpListener) -> (SocketAddr, Received) {
    let received = Received::default();
    let (spans, calls) = (received.spans.clone(), received.step_calls.clone());
    let app = Router::new()
        .route(
            "/v1/traces",
            post(move |body: Bytes| async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
                let mut spans = spans.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .as_ref()
                        .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                        .and_then(text)
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
                    }
                }
                // An empty ExportTraceServiceResponse: everything accepted.
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }),
        )
        .route(
            "/steps/{step}",
            post(move |headers: HeaderMap, body: Bytes| async move {
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
                calls.lock().unwrap().insert(
                    body["id"].as_str().unwrap().to_owned(),
                    (header("traceparent"), header("tracestate")),
                );
                axum::Json(json!({"charged": true}))
            }),
        );
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

fn text(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(text)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The worker binary with the test environment's variables and `extra`, its stdout (JSON log
/// lines) collected as they come.
struct Worker {
    child: KillOnDrop,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn spawn(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_step-worker"))
            .env_clear()
            .envs(env.vars())
            .envs([("LOG_FORMAT", "json"), ("LOG_LEVEL", "info")])
            .envs(extra.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let worker = Worker {
            child: KillOnDrop(child),
            lines,
        };
        // Migrated and claiming: the tests read the results tables from then on.
        let started = Instant::now();
        while !worker.logs().iter().any(|l| l.contains("worker started")) {
            assert!(
                started.elapsed() < WAIT,
                "the worker did not start: {:#?}",
                worker.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        worker
    }

    fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// `/metrics` of the running worker (its port comes from its "worker started" line).
    async fn metrics(&self) -> String {
        let started = self.logs().into_iter().find(|l| l.contains("worker started"));
        let line: serde_json::Value = serde_json::from_str(&started.expect("the worker has started")).unwrap();
        let addr = line["fields"]["http"].as_str().unwrap().to_owned();
        common::get(&format!("http://{addr}/metrics")).await.1
    }

    /// SIGTERM, then waits for the exit (with its bounded flush of queued spans).
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.0.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < WAIT, "the worker did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test]
async fn attempt_spans_join_the_producers_trace_and_the_step_passes_it_on() {
    let env = TestEnv::new().await;
    let (addr, received) = receiver().await;
    let endpoint = format!("http://{addr}");
    let steps = format!("http://{addr}/steps/{{step}}");
    let worker = Worker::spawn(
        &env,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "trace-test"),
            // Export within a fraction of a second, not the default five.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("STEP_HANDLER_URL", &steps),
            // A succeeded job logs at debug only.
            ("LOG_LEVEL", "info,step_worker=debug"),
        ],
    );
    let traceparent = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
    env.push(
        &json!({"id": "traced", "step": "charge", "traceparent": traceparent, "tracestate": "vendor=abc"}).to_string(),
    )
    .await;
    env.push(&json!({"id": "untraced", "step": "nowhere"}).to_string())
        .await;
    env.push(&json!({"id": "malformed", "step": "builtin.noop", "traceparent": "00-XYZ-01"}).to_string())
        .await;
    for id in ["traced", "untraced", "malformed"] {
        let row = env.wait_result(id, WAIT).await;
        assert_eq!(row.status, "succeeded", "{id}: {row:?}");
    }
    common::wait_for("the three attempt spans", WAIT, || async {
        ["traced", "untraced", "malformed"]
            .iter()
            .all(|id| received.span("job", id).is_some())
    })
    .await;

    // The attempt is the producer's span's child, in its trace.
    let job = received.span("job", "traced").unwrap();
    assert_eq!(hex(&job.trace_id), PRODUCER_TRACE);
    assert_eq!(hex(&job.parent_span_id), PRODUCER_SPAN);
    assert_eq!(job.trace_state, "vendor=abc");
    assert_eq!(attr(&job, "job.step").as_deref(), Some("charge"));
    assert_eq!(attr(&job, "attempt").as_deref(), Some("1"));
    assert_eq!(attr(&job, "outcome").as_deref(), Some("succeeded"));
    let events: Vec<&str> = job.events.iter().map(|e| e.name.as_str()).collect();
    for event in ["claimed", "committed", "settled"] {
        assert!(events.contains(&event), "events {events:?} lack {event}");
    }
    // The step is the attempt's child; the attempt lasts until the job is settled, after it.
    let step_of = |job: &Span| {
        received
            .spans()
            .into_iter()
            .map(|(_, s)| s)
            .find(|s| s.name == "step" && s.parent_span_id == job.span_id)
    };
    common::wait_for("the step span under the attempt", WAIT, || async {
        step_of(&job).is_some()
    })
    .await;
    let step = step_of(&job).unwrap();
    assert_eq!(step.trace_id, job.trace_id);
    assert!(job.end_time_unix_nano >= step.end_time_unix_nano);

    // The endpoint got the step span's context, beside the correlation id.
    let calls = received.step_calls.lock().unwrap().clone();
    let (sent_parent, sent_state) = calls.get("traced").cloned().expect("the step endpoint was called");
    assert_eq!(
        sent_parent.as_deref(),
        Some(format!("00-{PRODUCER_TRACE}-{}-01", hex(&step.span_id)).as_str())
    );
    assert_eq!(sent_state.as_deref(), Some("vendor=abc"));

    // Without a (valid) context, an attempt starts a trace of its own.
    for id in ["untraced", "malformed"] {
        let span = received.span("job", id).unwrap();
        assert!(span.parent_span_id.is_empty(), "{id} has a parent");
        assert_ne!(hex(&span.trace_id), PRODUCER_TRACE);
    }
    assert!(received.spans().iter().all(|(service, _)| service == "trace-test"));

    // The job's log lines carry its trace and span ids; the ignored context was reported.
    let lines = worker.lines.clone();
    assert!(worker.stop().success());
    let logs = lines.lock().unwrap().clone();
    let span_id = hex(&job.span_id);
    let traced: Vec<&String> = logs.iter().filter(|l| l.contains(r#""job.id":"traced""#)).collect();
    assert!(!traced.is_empty(), "no log line of the traced job: {logs:#?}");
    for line in &traced {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["span"]["trace_id"], PRODUCER_TRACE, "{line}");
        assert_eq!(line["span"]["span_id"], span_id.as_str(), "{line}");
    }
    assert!(
        logs.iter()
            .any(|l| l.contains(r#""job.id":"malformed""#) && l.contains("trace context")),
        "the malformed traceparent was not reported: {logs:#?}"
    );
}

/// A collector that refuses connections (a closed port) or takes them and never answers: jobs run
/// as they would with tracing off, and the spans that cannot be delivered are counted.
async fn an_unreachable_collector_costs_the_jobs_nothing(protocol: &str, collector: Collector) {
    let env = TestEnv::new().await;
    let endpoint = format!("http://{}", collector.addr);
    let worker = Worker::spawn(
        &env,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("WORKER_CONCURRENCY", "20"),
        ],
    );
    // Two spans a job: past the queue's 2048 (and the batch in the exporter's hands), a collector
    // that never answers makes the queue overflow.
    let jobs = if collector.answers_nothing { 1500 } else { 300 };
    let traceparent = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
    let started = Instant::now();
    for i in 0..jobs {
        env.push(&json!({"id": format!("u{i}"), "step": "builtin.noop", "traceparent": traceparent}).to_string())
            .await;
    }
    env.wait_count(
        "every job to succeed",
        "SELECT count(*) FROM step_results WHERE status = 'succeeded'",
        jobs as i64,
        WAIT,
    )
    .await;
    let took = started.elapsed();
    // An export waits up to 10 s for a collector that never answers: jobs that waited on it
    // would take minutes, not seconds.
    assert!(took < Duration::from_secs(20), "{jobs} jobs took {took:?}");
    eprintln!("{jobs} jobs with an unreachable collector ({protocol}) took {took:?}");
    let reason = if collector.answers_nothing {
        "queue_full"
    } else {
        "export_failed"
    };
    let line = format!(r#"step_worker_trace_spans_dropped_total{{reason="{reason}"}}"#);
    common::wait_for("the undeliverable spans to be counted", WAIT, || async {
        common::metric(&worker.metrics().await, &line).unwrap_or(0.0) >= 1.0
    })
    .await;
    // Once the export is known to fail, attempts are shed before their spans are built: the
    // jobs that follow are counted as not traced (all but one probe a second).
    let shed = || async {
        common::metric(
            &worker.metrics().await,
            r#"step_worker_trace_spans_dropped_total{reason="collector_down"}"#,
        )
        .unwrap_or(0.0)
    };
    let before = shed().await;
    for i in 0..50 {
        env.push(&json!({"id": format!("v{i}"), "step": "builtin.noop"}).to_string())
            .await;
    }
    env.wait_count(
        "the later jobs to succeed",
        "SELECT count(*) FROM step_results WHERE status = 'succeeded'",
        jobs as i64 + 50,
        WAIT,
    )
    .await;
    // `/metrics` may serve a rendering up to a second old: the count is awaited, not read once.
    common::wait_for("the later attempts to be counted as shed", WAIT, || async {
        shed().await - before >= 45.0
    })
    .await;
    // Exit stays bounded: at most the flush's few seconds beyond the drain.
    let stopping = Instant::now();
    assert!(worker.stop().success());
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "exit took {:?}",
        stopping.elapsed()
    );
}

struct Collector {
    addr: SocketAddr,
    answers_nothing: bool,
    _listener: Option<std::net::TcpListener>,
}

impl Collector {
    /// A port nothing listens on: connections are refused at once.
    fn closed() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        Collector {
            addr,
            answers_nothing: false,
            _listener: None,
        }
    }

    /// A listener that is never accepted from: the connection opens (the kernel's backlog) and
    /// no byte ever comes back.
    fn black_hole() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Collector {
            addr: listener.local_addr().unwrap(),
            answers_nothing: true,
            _listener: Some(listener),
        }
    }
}

/// A collector that comes back after an outage gets every attempt's span again, within a few
/// batch delays: the probes the worker keeps tracing while it is down find it.
#[tokio::test]
async fn tracing_resumes_when_the_collector_comes_back() {
    let env = TestEnv::new().await;
    let down = Collector::closed();
    let endpoint = format!("http://{}", down.addr);
    let worker = Worker::spawn(
        &env,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let shed = r#"step_worker_trace_spans_dropped_total{reason="collector_down"}"#;
    let mut pushed = 0;
    common::wait_for("attempts to be shed while the collector is down", WAIT, || {
        pushed += 1;
        let (env, worker, id) = (&env, &worker, format!("down{pushed}"));
        async move {
            env.push(&json!({"id": id, "step": "builtin.noop"}).to_string()).await;
            common::metric(&worker.metrics().await, shed).unwrap_or(0.0) >= 1.0
        }
    })
    .await;

    let (_, received) = receiver_on(tokio::net::TcpListener::bind(down.addr).await.unwrap()).await;
    let mut probes = 0;
    common::wait_for("a probe's span to reach the collector", WAIT, || {
        probes += 1;
        let (env, received, id) = (&env, &received, format!("probe{probes}"));
        async move {
            env.push(&json!({"id": id, "step": "builtin.noop"}).to_string()).await;
            !received.spans().is_empty()
        }
    })
    .await;
    // Once the exporter has its answer, every attempt is traced again.
    common::wait_for("the export to recover", WAIT, || async {
        worker.logs().iter().any(|l| l.contains("trace export recovered"))
    })
    .await;
    for i in 0..20 {
        env.push(&json!({"id": format!("after{i}"), "step": "builtin.noop"}).to_string())
            .await;
    }
    common::wait_for("every later attempt's span", WAIT, || async {
        (0..20).all(|i| received.span("job", &format!("after{i}")).is_some())
    })
    .await;
    assert!(worker.stop().success());
}

#[tokio::test]
async fn jobs_complete_while_the_http_collector_port_is_closed() {
    an_unreachable_collector_costs_the_jobs_nothing("http/protobuf", Collector::closed()).await;
}

#[tokio::test]
async fn jobs_complete_while_the_grpc_collector_port_is_closed() {
    an_unreachable_collector_costs_the_jobs_nothing("grpc", Collector::closed()).await;
}

#[tokio::test]
async fn jobs_complete_while_the_collector_never_answers() {
    an_unreachable_collector_costs_the_jobs_nothing("http/protobuf", Collector::black_hole()).await;
}

/// `POST /jobs` and `step-worker enqueue` keep a job's trace context, give the request's (or the
/// command's) to jobs without one, and refuse a malformed one in a job; a malformed header is
/// ignored, as a receiver of one must.
#[tokio::test]
async fn the_enqueue_paths_keep_the_trace_context() {
    let env = TestEnv::new().await;
    let vars: Vec<(String, String)> = env.vars();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // The jobs name a step nothing handles: each is dead-lettered at once with its payload as
    // enqueued, which is what this test reads.
    let worker = env.start(&[]).await;
    let url = format!("http://{}/jobs", worker.http_addr.unwrap());
    let post = |body: serde_json::Value, traceparent: String| {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("traceparent", traceparent)
                .header("tracestate", "vendor=req")
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let header = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
    let own = "00-11111111111111111111111111111111-2222222222222222-00";
    let (code, body) = post(
        json!([
            {"id": "from-header", "step": "nowhere"},
            {"id": "own", "step": "nowhere", "traceparent": own},
        ]),
        header.clone(),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = post(
        json!({"id": "bad", "step": "nowhere", "traceparent": "00-nope"}),
        header.clone(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("traceparent"), "{body}");
    let (code, body) = post(json!({"id": "bad-header", "step": "nowhere"}), "garbage".into()).await;
    assert_eq!(code, 202, "{body}");

    let cli = |extra: &[(&str, &str)], args: &[&str]| {
        let mut all = vars.clone();
        all.extend_from_slice(extra);
        common::step_worker(&all, args)
    };
    let out = cli(
        &[("TRACEPARENT", &header)],
        &["enqueue", r#"{"id":"from-env","step":"nowhere"}"#],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(
        &[],
        &[
            "enqueue",
            "--traceparent",
            "00-nope",
            r#"{"id":"refused","step":"nowhere"}"#,
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--traceparent"));

    common::wait_for("the four accepted jobs' dead letters", WAIT, || async {
        env.dead_letters().await.len() >= 4
    })
    .await;
    let payloads: HashMap<String, serde_json::Value> = env
        .dead_letters()
        .await
        .iter()
        .map(|d| serde_json::from_slice::<serde_json::Value>(&d.payload).unwrap())
        .map(|job| (job["id"].as_str().unwrap().to_owned(), job))
        .collect();
    assert_eq!(payloads["from-header"]["traceparent"], header.as_str());
    assert_eq!(payloads["from-header"]["tracestate"], "vendor=req");
    assert_eq!(payloads["own"]["traceparent"], own);
    assert!(payloads["own"].get("tracestate").is_none());
    assert!(payloads["bad-header"].get("traceparent").is_none());
    assert_eq!(payloads["from-env"]["traceparent"], header.as_str());
    assert!(!payloads.contains_key("bad") && !payloads.contains_key("refused"));
    worker.stop().await.unwrap();
}

/// A quick debug-build look at throughput with tracing off, and with every job traced to a
/// collector whose port is closed or that never answers, in alternating rounds (docs/tracing.md
/// has the release benchmark's figures). A measurement, not a gate (`cargo test --test tracing --
/// --ignored --nocapture`): the assertion only catches an export that stalls the job path.
#[tokio::test]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
async fn throughput_with_an_unreachable_collector_against_tracing_off() {
    const JOBS: usize = 3000;
    const ROUNDS: usize = 3;
    let mut rates: HashMap<&str, Vec<f64>> = HashMap::new();
    for _ in 0..ROUNDS {
        for setup in ["off", "closed", "black_hole"] {
            let env = TestEnv::new().await;
            let collector = match setup {
                "black_hole" => Some(Collector::black_hole()),
                "closed" => Some(Collector::closed()),
                _ => None,
            };
            let endpoint = collector.as_ref().map(|c| format!("http://{}", c.addr));
            let mut vars = vec![("WORKER_CONCURRENCY", "50")];
            if let Some(endpoint) = &endpoint {
                vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
            }
            let ids: Vec<String> = (0..JOBS).map(|i| format!("b{i}")).collect();
            let payloads: Vec<String> = ids
                .iter()
                .map(|id| {
                    json!({"id": id, "step": "builtin.noop", "traceparent": format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01")})
                        .to_string()
                })
                .collect();
            // Enqueued before the worker starts, so the figure is the worker's rate alone.
            let vars_env: Vec<(String, String)> = env.vars();
            let mut conn = redis::Client::open(common::redis_url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let queue = vars_env.iter().find(|(k, _)| k == "QUEUE_KEY").unwrap().1.clone();
            for chunk in payloads.chunks(500) {
                let _: i64 = redis::AsyncCommands::lpush(&mut conn, &queue, chunk).await.unwrap();
            }
            // From the moment it claims (startup and migrations are no part of the rate).
            let worker = Worker::spawn(&env, &vars);
            let started = Instant::now();
            env.wait_count(
                "every job to succeed",
                "SELECT count(*) FROM step_results WHERE status = 'succeeded'",
                JOBS as i64,
                Duration::from_secs(120),
            )
            .await;
            let rate = JOBS as f64 / started.elapsed().as_secs_f64();
            rates.entry(setup).or_default().push(rate);
            assert!(worker.stop().success());
        }
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let off = median(&rates["off"]);
    for setup in ["off", "closed", "black_hole"] {
        let m = median(&rates[setup]);
        eprintln!(
            "{setup:>10}: median {m:.0} jobs/s ({:+.1} % against off), rounds {:?}",
            (m / off - 1.0) * 100.0,
            rates[setup].iter().map(|r| r.round()).collect::<Vec<_>>()
        );
        assert!(
            m > off * 0.5,
            "{setup}: {m:.0} jobs/s against {off:.0} with tracing off"
        );
    }
}

/// With export off (no `OTEL_EXPORTER_OTLP_ENDPOINT`: this test's in-process worker installs no
/// tracing layer), the worker records no span, and an HTTP step passes the producer's own
/// context on unchanged so the endpoint still joins the producer's trace; a job without one
/// sends none.
#[tokio::test]
async fn with_export_off_an_http_step_passes_the_producers_context_through() {
    let env = TestEnv::new().await;
    let (addr, received) = receiver().await;
    let steps = format!("http://{addr}/steps/{{step}}");
    let worker = env.start(&[("STEP_HANDLER_URL", &steps)]).await;
    let traceparent = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
    env.push(
        &json!({"id": "through", "step": "charge", "traceparent": traceparent, "tracestate": "vendor=abc"}).to_string(),
    )
    .await;
    env.push(&json!({"id": "none", "step": "charge"}).to_string()).await;
    for id in ["through", "none"] {
        assert_eq!(env.wait_result(id, WAIT).await.status, "succeeded");
    }
    let calls = received.step_calls.lock().unwrap().clone();
    assert_eq!(
        calls["through"],
        (Some(traceparent.clone()), Some("vendor=abc".to_owned()))
    );
    assert_eq!(calls["none"], (None, None));
    assert!(received.spans().is_empty(), "nothing is exported with export off");
    worker.stop().await.unwrap();
}
