//! Assembly: binds the HTTP port, connects, migrates, registers, starts the claim loop,
//! pipeline, heartbeat and promoter, and hands shutdown to [`crate::drain`]. Each part lives in
//! its own module; this one only wires them together and orders startup.
//!
//! Startup order matters: the HTTP port is bound first (a port that cannot be bound stops the
//! worker before it registers, and probes are answered while it waits for Redis or Postgres);
//! the worker registers (heartbeat) before its first claim, so its in-flight list is never
//! visible without a registry entry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capacity::Capacity;
use crate::claimer::Claimer;
use crate::config::Config;
use crate::config::QueueDriver;
use crate::drain::{self, Drain};
use crate::handler::Registry;
use crate::health::Health;
use crate::http::{self, AppState};
use crate::inflight::InFlight;
use crate::lease::Lease;
use crate::maintenance::{Maintenance, Promoter};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::queue::{MemoryQueue, Queue, RedisQueue};
use crate::runner::Runner;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// Startup retry pause while Redis or Postgres is unreachable.
const STARTUP_RETRY: Duration = Duration::from_secs(2);

/// A started worker.
pub struct Running {
    pub worker_id: String,
    /// Where `/health` and `/metrics` are served (when enabled).
    pub http_addr: Option<SocketAddr>,
    /// The queue it claims from: producers in the same process (tests, an embedding
    /// application) push through it, which is the only way into a memory queue.
    pub queue: Queue,
    pub shutdown: Shutdown,
    done: JoinHandle<()>,
}

impl Running {
    /// Waits for the worker to finish its shutdown.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await.context("worker task failed")
    }

    /// Requests a graceful shutdown and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.graceful.cancel();
        self.wait().await
    }
}

/// Connects, migrates (unless disabled) and starts the worker. Returns once it is claiming, or
/// `None` if shutdown was requested while still waiting for Redis or Postgres.
pub async fn start(config: Config, registry: Registry, shutdown: Shutdown) -> anyhow::Result<Option<Running>> {
    let config = Arc::new(config);
    let stop = &shutdown.graceful;
    let health = Arc::new(Health::default());
    let http_stop = CancellationToken::new();
    // Stops the server if startup ends early (a shutdown request while waiting, an error).
    let http_guard = http_stop.clone().drop_guard();
    let server = if config.health_check_enabled {
        let server = http::Server::start(
            config.health_check_host,
            config.health_check_port,
            health.clone(),
            http_stop.clone(),
        )
        .await
        .with_context(|| format!("cannot listen on HEALTH_CHECK_PORT {}", config.health_check_port))?;
        Some(server)
    } else {
        None
    };
    let http_addr = server.as_ref().map(http::Server::addr);
    let queue = match config.queue_driver {
        QueueDriver::Memory => {
            tracing::warn!(
                "QUEUE_DRIVER=memory: jobs are kept in this process only and are lost when it exits; set REDIS_URL for a durable, shared queue"
            );
            Queue::Memory({
                let queue = MemoryQueue::named(&config.queue_key);
                queue.set_max_jobs(config.memory_queue_max_jobs);
                queue.set_caps(&config.limits);
                queue
            })
        }
        QueueDriver::Redis => {
            let ca = config.redis_ca_pem();
            let Some(queue) = retry_until(&health, "redis", "connect to Redis", stop, || {
                RedisQueue::connect_with_ca(config.redis_url.expose(), &config.queue_key, ca)
            })
            .await
            .context("REDIS_URL")?
            else {
                return Ok(None);
            };
            Queue::Redis(queue.with_caps(&config.limits))
        }
    };
    let store = Store::connect_lazy_with(
        config.database_url.expose(),
        config.database_pool_size,
        config.database_statement_timeout,
    )
    .context("DATABASE_URL")?;
    if let Some(pg) = store.postgres()
        && pg.pooled()
    {
        tracing::info!(
            "DATABASE_URL reaches a transaction-mode pooler: every statement runs unnamed, in a transaction"
        );
    }
    if config.database_migrate
        && retry_until(&health, "postgres", "run database migrations", stop, || store.migrate())
            .await
            .context("DATABASE_URL")?
            .is_none()
    {
        return Ok(None);
    }

    let lease = Arc::new(Lease::new(queue.keys(), config.worker_deadline));
    let worker_id = lease.identity().wid.clone();
    let metrics = Arc::new(Metrics::new(&worker_id));
    let registry = crate::http_step::install(registry, &config.http_steps, &metrics)?;
    metrics.concurrency.set(config.concurrency as i64);
    if let Some(redis) = queue.redis() {
        let policy = crate::redis_guard::check(redis, &config).await?;
        metrics
            .redis_policy
            .with_label_values(&[policy.as_deref().unwrap_or("unknown")])
            .set(1);
    }
    let background = CancellationToken::new();
    let notifier = Arc::new(crate::notify::Notifier::start(
        &config.notify,
        health.clone(),
        background.clone(),
    ));
    let inflight = Arc::new(InFlight::default());
    let promoter = Arc::new(Promoter::default());
    // WORKER_CONCURRENCY counts steps running; finished jobs waiting for their commit and settle
    // are bounded apart, by COMMIT_BACKLOG. A worker holds at most the sum (in its Redis list, in
    // /health's in_flight, in what a SIGKILL makes run again), and a Postgres outage stops
    // claiming after at most that many completions.
    let capacity = Arc::new(Capacity::new(config.concurrency, config.commit_backlog));
    let pause = Arc::new(crate::pause::Pause::default());
    let blocking_id = Arc::new(AtomicI64::new(0));
    let maintenance = Arc::new(Maintenance {
        config: config.clone(),
        queue: queue.clone(),
        store: store.clone(),
        lease: lease.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        inflight: inflight.clone(),
        promoter: promoter.clone(),
        notifier: notifier.clone(),
        pause: pause.clone(),
        blocking_id: blocking_id.clone(),
        duties: Default::default(),
        cancels_missing: Default::default(),
    });
    if retry_until(&health, "redis", "register the worker", stop, || maintenance.register())
        .await?
        .is_none()
    {
        return Ok(None);
    }

    if let Some(server) = &server {
        server.ready(AppState {
            config: config.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            queue: queue.clone(),
            store: store.clone(),
            lease: lease.clone(),
            inflight: inflight.clone(),
            pause: pause.clone(),
            io: tokio::runtime::Handle::current(),
        });
    }

    let heartbeat = {
        let (m, stop) = (maintenance.clone(), background.clone());
        tokio::spawn(async move { m.run_heartbeat(stop).await })
    };
    let duties = {
        let (m, stop) = (maintenance.clone(), background.clone());
        tokio::spawn(async move { m.run_duties(stop).await })
    };
    if config.retention.is_enabled() {
        // Not awaited by the drain: a prune statement cut short at exit rolls back, and the
        // next check, on any replica, deletes what it would have.
        let retainer = crate::maintenance::retention::Retainer {
            store: store.clone(),
            retention: config.retention.clone(),
            metrics: metrics.clone(),
        };
        tokio::spawn(retainer.run(background.clone()));
    }
    {
        let m = metrics.clone();
        crate::lease::watchdog(&lease, background.clone(), move |since| {
            m.fenced.inc();
            tracing::error!(
                since_last_beat_ms = since.as_millis() as u64,
                "no heartbeat for too long: stopped running jobs until a beat succeeds again"
            );
        })
        .context("cannot start the lease watchdog thread")?;
    }
    let promoter_task = {
        let (p, q, m, stop) = (promoter.clone(), queue.clone(), metrics.clone(), background.clone());
        tokio::spawn(async move { p.run(q, m, stop).await })
    };
    let (finished_tx, finished_rx) = tokio::sync::mpsc::unbounded_channel();
    let give_up = CancellationToken::new();
    let pipeline = Pipeline {
        store: store.clone(),
        queue: queue.clone(),
        lease: lease.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        promoter: promoter.clone(),
        notifier,
        batch_size: config.persist_batch_size,
    };
    let pipeline_task = tokio::spawn(pipeline.run(finished_rx, give_up.clone()));
    let tasks = TaskTracker::new();
    let claimer = Claimer {
        config: config.clone(),
        queue: queue.clone(),
        lease: lease.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        inflight: inflight.clone(),
        capacity: capacity.clone(),
        runner: Arc::new(Runner {
            config: config.clone(),
            registry,
            metrics: metrics.clone(),
            pause: pause.clone(),
        }),
        dedup: Arc::new(crate::dedup::Dedup::new(
            store.clone(),
            queue.clone(),
            metrics.clone(),
            health.clone(),
        )),
        finished: finished_tx,
        tasks: tasks.clone(),
        blocking_id: blocking_id.clone(),
        pause,
        promoter: promoter.clone(),
    };
    let claim_stop = CancellationToken::new();
    let claimer_task = tokio::spawn(claimer.run(claim_stop.clone()));
    health.set_started();
    let http = http_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(worker_id = %worker_id, queue = %config.queue_key, concurrency = config.concurrency, commit_backlog = config.commit_backlog, http = %http, "worker started");

    http_guard.disarm();
    let drain = Drain {
        config: config.clone(),
        queue: queue.clone(),
        store,
        lease,
        health,
        capacity,
        tasks,
        blocking_id,
        claim_stop,
        give_up,
        background,
        http_stop,
    };
    let sd = shutdown.clone();
    let done = tokio::spawn(async move {
        sd.graceful.cancelled().await;
        let tasks = drain::Tasks {
            claimer: claimer_task,
            pipeline: pipeline_task,
            heartbeat,
            duties,
            promoter: promoter_task,
        };
        drain.run(&sd, tasks).await;
    });
    Ok(Some(Running {
        worker_id,
        http_addr,
        queue,
        shutdown,
        done,
    }))
}

/// Runs the worker until shutdown completes: what `step-worker run` does.
pub async fn run(config: Config, registry: Registry, shutdown: Shutdown) -> anyhow::Result<()> {
    match start(config, registry, shutdown).await? {
        Some(running) => running.wait().await,
        None => Ok(()),
    }
}

/// Retries `op` until it succeeds (`Some`) or `stop` is cancelled (`None`). Used at startup,
/// where an unreachable dependency is waited for rather than fatal: platforms restart crashed
/// containers in a tight loop, which helps nobody. A certificate the worker does not trust is
/// the exception: waiting cannot fix it, so it is returned as an error at once.
async fn retry_until<T, E, F, Fut>(
    health: &Health,
    dependency: &str,
    what: &str,
    stop: &CancellationToken,
    mut op: F,
) -> Result<Option<T>, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        // A shutdown request does not wait for an attempt that hangs (a partition): dropping a
        // connect, a migration (its transaction rolls back) or a registration moves no job.
        let attempt = tokio::select! {
            r = op() => r,
            _ = stop.cancelled() => return Ok(None),
        };
        match attempt {
            Ok(v) => return Ok(Some(v)),
            Err(e) if is_certificate_error(&e) => return Err(e),
            Err(e) => {
                health.set_waiting_for(dependency, &format_args!("cannot {what} yet: {e}"));
                tracing::warn!(error = %e, "cannot {what} yet; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(STARTUP_RETRY) => {}
            _ = stop.cancelled() => return Ok(None),
        }
    }
}

/// Whether an error is a TLS verification failure. The redis and sqlx errors carry rustls's
/// error only as text (inside an I/O error), so the text is what can be checked.
fn is_certificate_error(e: &dyn std::fmt::Display) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("certificate") || text.contains("unknownissuer")
}
