//! The embedded HTTP server: `/health` (readiness, probed by the platform), `/health/live`
//! (liveness), `/metrics` (Prometheus), `/jobs`, and the web console ([`crate::console`]). It is bound before anything else at startup, so a port
//! that cannot be bound stops the worker before it registers, and the liveness probe is answered
//! while the worker waits for Redis or Postgres (a platform would otherwise restart a worker that
//! is correctly waiting out an outage). Until the worker has started, `/health` answers 503 naming
//! what it waits for. It shuts down with the worker's shutdown token.
//!
//! The server runs on a thread of its own, with its own single-threaded runtime, at a lower
//! scheduling priority: a flood of requests then costs at most that one thread's share of the
//! CPU, which the job path's threads outrank, while an idle machine still answers at once. Work
//! that uses Redis or Postgres goes back to the worker's runtime ([`AppState::io`]), which owns
//! those connections.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::Config;
use crate::health::{Check, Health};
use crate::inflight::InFlight;
use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::store::Store;

/// Longest a probe or scrape waits on Redis or Postgres: probes have short timeouts of their own.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How stale the Redis and Postgres gauges may be: a scrape interval is 15 s or more, and depths
/// move slowly next to it.
const GAUGE_REFRESH: Duration = Duration::from_secs(5);
/// How long one rendering of `/metrics` serves every scrape: no Prometheus scrapes faster than
/// once a second (15 s is the default), so only a flood ever sees the same text twice.
const SCRAPE_REUSE: Duration = Duration::from_secs(1);
/// Postgres counts as proven by any successful operation this recent; otherwise a probe pings it.
const POSTGRES_PROVEN_FOR: Duration = Duration::from_secs(10);
/// The HTTP thread's nice value (0 is the default, 19 the lowest priority). At 10 its weight is
/// about a tenth of a default thread's (the kernel's weight table), so under a flood the job path
/// keeps ~90 % of a contended core, and a probe waits at most a few scheduler slices.
const HTTP_THREAD_NICE: i32 = 10;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub queue: Queue,
    pub store: Store,
    pub lease: Arc<Lease>,
    /// The jobs this worker holds (not the slot its waiting claim reserves).
    pub inflight: Arc<InFlight>,
    pub pause: Arc<crate::pause::Pause>,
    /// The worker's runtime: Redis and Postgres connections belong to it (a connection opened on
    /// the HTTP thread would fail once that thread's runtime stops, in the middle of a drain).
    pub io: tokio::runtime::Handle,
}

impl AppState {
    /// Runs `work` on the worker's runtime and waits for it. `None` if it panicked or that
    /// runtime is shutting down.
    pub async fn on_io<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        self.io.spawn(work).await.ok()
    }
}

/// The running server: the bound address, and the routes it serves (the starting routes until
/// [`Server::ready`]).
pub struct Server {
    addr: std::net::SocketAddr,
    routes: watch::Sender<Router>,
}

impl Server {
    /// Binds `host` and `port` (see [`bind`]) and serves the starting routes, on the HTTP thread,
    /// until `stop` is cancelled. Errors: the port cannot be bound, or the thread or its runtime
    /// cannot be started.
    pub async fn start(
        host: Option<std::net::IpAddr>,
        port: u16,
        health: Arc<Health>,
        stop: CancellationToken,
    ) -> std::io::Result<Server> {
        let listener = bind(host, port).await?;
        let addr = listener.local_addr()?;
        // Moved to the thread as a std listener: a tokio one is tied to the runtime it was made on.
        let listener = listener.into_std()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (routes, current) = watch::channel(starting_router(health));
        std::thread::Builder::new().name("http".to_owned()).spawn(move || {
            lower_priority();
            let served = runtime.block_on(async move { serve(TcpListener::from_std(listener)?, current, stop).await });
            if let Err(e) = served {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        })?;
        Ok(Server { addr, routes })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Switches to the full routes, once the worker has everything they need.
    pub fn ready(&self, state: AppState) {
        let _starting = self.routes.send_replace(router(state));
    }
}

/// What is served while the worker waits for its dependencies: liveness, and a `/health` that
/// names what it waits for.
fn starting_router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/health/live", get(|| async { Json(json!({ "status": "alive" })) }))
        .route(
            "/health",
            get(move || {
                let waiting = health.waiting_for();
                async move {
                    let (what, error) = waiting.unzip();
                    let body = json!({ "status": "starting", "waiting_for": what, "error": error });
                    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
                }
            }),
        )
        .fallback(|| async { (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "starting" }))) })
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/metrics", get(metrics))
        // Both use Redis or Postgres: they run on the worker's runtime.
        .route(
            "/jobs",
            axum::routing::post(|s: State<AppState>, headers, body| async move {
                or_stopping(s.on_io(crate::http_jobs::enqueue(s.clone(), headers, body)).await)
            }),
        )
        .route(
            "/jobs/{id}",
            get(|s: State<AppState>, headers, id| async move {
                or_stopping(s.on_io(crate::http_jobs::result(s.clone(), headers, id)).await)
            })
            .delete(|s: State<AppState>, headers, id| async move {
                or_stopping(s.on_io(crate::http_jobs::cancel(s.clone(), headers, id)).await)
            }),
        )
        .with_state(state.clone())
        .merge(crate::console::router(state))
}

/// The response of a handler run on the worker's runtime, or 503 if that runtime is stopping.
pub(crate) fn or_stopping(answered: Option<Response>) -> Response {
    answered.unwrap_or_else(|| {
        let body = json!({ "error": "the worker is stopping" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    })
}

/// Listens on `host`, or with `None` on every address, IPv6 and IPv4 (platform private networks
/// such as Fly's and Railway's are IPv6), falling back to IPv4 alone where the host has no IPv6.
pub async fn bind(host: Option<std::net::IpAddr>, port: u16) -> std::io::Result<TcpListener> {
    if let Some(host) = host {
        return TcpListener::bind((host, port)).await;
    }
    match TcpListener::bind(("::", port)).await {
        Ok(l) => Ok(l),
        Err(_) => TcpListener::bind(("0.0.0.0", port)).await,
    }
}

/// Gives the calling thread the nice value [`HTTP_THREAD_NICE`]. Lowering one's own priority
/// needs no privilege; where it fails anyway the server runs at the default priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority reads its integer arguments only; on Linux, PRIO_PROCESS with a
        // thread id sets that one thread's nice value.
        let tid = unsafe { libc::gettid() };
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, HTTP_THREAD_NICE) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "the HTTP thread keeps the default priority");
        }
    }
}

/// Serves until `stop` is cancelled, each request with the routes `current` holds then, over
/// a listener that bounds open connections and their idle time; every request but `/jobs` is
/// paced ([`crate::http_pace`]), the console's on a schedule of its own, so an operator's page
/// (or a flood aimed at it) never delays the platform's probes.
async fn serve(
    listener: TcpListener,
    current: watch::Receiver<Router>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let probes = Arc::new(crate::http_pace::Pacer::default());
    let console = Arc::new(crate::http_pace::Pacer::new(
        crate::console::RATE_PER_SEC,
        crate::console::BURST,
    ));
    let service = tower::service_fn(move |req: Request| {
        let routes = current.borrow().clone();
        let path = req.uri().path();
        let pacer = if crate::console::is_console_path(path) {
            Some(console.clone())
        } else {
            (!path.starts_with("/jobs")).then(|| probes.clone())
        };
        async move {
            if let Some(pacer) = pacer {
                pacer.wait().await;
            }
            routes.oneshot(req).await
        }
    });
    axum::serve(
        crate::http_conn::BoundedListener::new(listener),
        tower::make::Shared::new(service),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await
}

async fn health(State(s): State<AppState>) -> Response {
    let redis = s
        .health
        .redis_check(s.config.heartbeat_interval * 2 + Duration::from_secs(1));
    let postgres = match s.health.postgres_check(POSTGRES_PROVEN_FOR) {
        Some(c) if c.ok => c,
        _ => ping(&s).await,
    };
    let claim = s.health.claim_check(s.config.claim_block + Duration::from_secs(15));
    let started = s.health.is_started();
    let draining = s.health.is_draining();
    let lease = s.lease.is_valid();
    let ok = started && !draining && redis.ok && postgres.ok && claim.ok && lease;
    // Paused is deliberate: still ready (200), but the body says so.
    let paused = s.pause.is_paused();
    let status = match (ok, started, draining) {
        (true, _, _) if paused => "paused",
        (true, _, _) => "ok",
        (_, false, _) => "starting",
        (_, _, true) => "draining",
        _ => "unavailable",
    };
    // Name what is really in use: a memory queue is not Redis, a SQLite file is not Postgres.
    let queue_driver = if s.queue.is_memory() { "memory" } else { "redis" };
    let store_driver = if s.store.postgres().is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let mut checks = serde_json::Map::new();
    checks.insert(queue_driver.to_owned(), json!(redis));
    checks.insert(store_driver.to_owned(), json!(postgres));
    checks.insert("claim_loop".to_owned(), json!(claim));
    checks.insert("lease".to_owned(), json!({ "ok": lease }));
    checks.insert("draining".to_owned(), json!(draining));
    let body = json!({
        "status": status,
        "worker_id": s.lease.identity().wid,
        "version": env!("CARGO_PKG_VERSION"),
        "checks": checks,
        "queue_driver": queue_driver,
        "store_driver": store_driver,
        "paused": paused,
        "paused_steps": s.pause.paused_steps(),
        "in_flight": s.inflight.len(),
        "concurrency": s.config.concurrency,
        "commit_backlog": s.config.commit_backlog,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn live(State(s): State<AppState>) -> Response {
    (
        StatusCode::OK,
        Json(json!({ "status": "alive", "worker_id": s.lease.identity().wid })),
    )
        .into_response()
}

async fn metrics(State(s): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = &s.config.metrics_token {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !given
            .and_then(crate::http_jobs::bearer)
            .is_some_and(|g| crate::http_jobs::same(g.as_bytes(), token.expose().as_bytes()))
        {
            let message = "a valid `Authorization: Bearer <METRICS_TOKEN>` is required";
            return (StatusCode::UNAUTHORIZED, Json(json!({ "error": message }))).into_response();
        }
    }
    // Scrapes can come fast and from anyone who reaches the port: the gauges they would read
    // from Redis and Postgres (on the job path's connections) are refreshed at most once per
    // GAUGE_REFRESH, by the scrape that finds them stale; every other scrape is served from memory.
    if s.metrics.gauges_due(GAUGE_REFRESH) {
        let state = s.clone();
        let _refreshed = s.on_io(async move { refresh_gauges(&state).await }).await;
    }
    s.metrics.in_flight.set(s.inflight.len() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render_shared(SCRAPE_REUSE),
    )
        .into_response()
}

/// Pings Postgres from the worker's runtime, within [`PROBE_TIMEOUT`], and records the answer.
async fn ping(s: &AppState) -> Check {
    let store = s.store.clone();
    let pinged = s
        .on_io(async move { tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await })
        .await;
    let error = match pinged {
        Some(Ok(Ok(()))) => {
            s.health.postgres_ok();
            return Check { ok: true, error: None };
        }
        Some(Ok(Err(e))) => {
            s.health.postgres_failed(&e);
            e.to_string()
        }
        Some(Err(_)) => "ping timed out".to_owned(),
        None => "the worker's runtime is stopping".to_owned(),
    };
    Check {
        ok: false,
        error: Some(error),
    }
}

/// Reads the queue depths, live workers and pending dead letters into their gauges.
async fn refresh_gauges(s: &AppState) {
    let m = &s.metrics;
    match tokio::time::timeout(PROBE_TIMEOUT, s.queue.depths()).await {
        Ok(Ok(d)) => {
            for (queue, n) in [
                ("ready", d.ready),
                ("delayed", d.delayed),
                ("in_flight", d.in_flight),
                ("poison", d.poison),
                ("cancelled", d.cancelled),
                ("held", d.held),
            ] {
                m.queue_depth.with_label_values(&[queue]).set(n as i64);
            }
            m.live_workers.set(d.workers as i64);
            for (step, reason, n) in &d.waiting {
                m.jobs_waiting
                    .with_label_values(&[step.as_str(), reason])
                    .set(*n as i64);
            }
            for (step, used, _) in &d.caps {
                m.cap_used.with_label_values(&[step]).set(i64::from(*used));
            }
        }
        Ok(Err(_)) | Err(_) => m.redis_errors.with_label_values(&["depths"]).inc(),
    }
    match tokio::time::timeout(PROBE_TIMEOUT, s.store.pending_dead_letters()).await {
        Ok(Ok(n)) => m.queue_depth.with_label_values(&["dead"]).set(n),
        Ok(Err(_)) | Err(_) => m.postgres_errors.with_label_values(&["depths"]).inc(),
    }
}
