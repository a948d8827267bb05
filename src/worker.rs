//! Assembly: connects, migrates, registers, starts the claim loop, pipeline, heartbeat, promoter
//! and HTTP server, and runs the shutdown drain. Each part lives in its own module; this one only
//! wires them together and orders startup and shutdown.
//!
//! Startup order matters: the worker registers (heartbeat) before its first claim, so its
//! in-flight list is never visible without a registry entry. Shutdown order matters too:
//! 1. stop claiming at once (and wake the blocked `BLMOVE` with `CLIENT UNBLOCK`);
//! 2. let running steps finish until `SHUTDOWN_TIMEOUT_MS` (a second signal skips this);
//! 3. interrupt what still runs: interrupted jobs go back to ready, not counted as an attempt;
//! 4. let the pipeline persist and settle what finished;
//! 5. hand back anything left in our list and deregister, unless Redis is unreachable, in which
//!    case the jobs stay in our list and the other workers' reapers return them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capacity::Capacity;
use crate::claimer::Claimer;
use crate::config::Config;
use crate::config::QueueDriver;
use crate::handler::Registry;
use crate::health::Health;
use crate::http::{self, AppState};
use crate::inflight::InFlight;
use crate::lease::Lease;
use crate::maintenance::{Maintenance, Promoter};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::queue::{MemoryQueue, Queue, RedisQueue, SettleOp};
use crate::runner::Runner;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// After interrupting running steps, how long the pipeline gets to persist and settle.
const SETTLE_GRACE: Duration = Duration::from_secs(5);
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
    let queue = match config.queue_driver {
        QueueDriver::Memory => {
            tracing::warn!(
                "QUEUE_DRIVER=memory: jobs are kept in this process only and are lost when it exits; set REDIS_URL for a durable, shared queue"
            );
            Queue::Memory({
                let queue = MemoryQueue::named(&config.queue_key);
                queue.set_max_jobs(config.memory_queue_max_jobs);
                queue
            })
        }
        QueueDriver::Redis => {
            let ca = config.redis_ca_pem();
            let Some(queue) = retry_until("connect to Redis", stop, || {
                RedisQueue::connect_with_ca(config.redis_url.expose(), &config.queue_key, ca)
            })
            .await
            .context("REDIS_URL")?
            else {
                return Ok(None);
            };
            Queue::Redis(queue)
        }
    };
    let store = Store::connect_lazy(config.database_url.expose(), config.database_pool_size).context("DATABASE_URL")?;
    if config.database_migrate
        && retry_until("run database migrations", stop, || store.migrate())
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
    let health = Arc::new(Health::default());
    let background = CancellationToken::new();
    let notifier = Arc::new(crate::notify::Notifier::start(
        &config.notify,
        health.clone(),
        background.clone(),
    ));
    let inflight = Arc::new(InFlight::default());
    let promoter = Arc::new(Promoter::default());
    // No backlog of finished-but-unsettled jobs beyond the slots: a worker never holds more jobs
    // than it can run (the contract of WORKER_CONCURRENCY), and a Postgres outage stops claiming
    // after at most WORKER_CONCURRENCY completions.
    let capacity = Arc::new(Capacity::new(config.concurrency, 0));
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
    });
    if retry_until("register the worker", stop, || maintenance.register())
        .await?
        .is_none()
    {
        return Ok(None);
    }

    let http_stop = CancellationToken::new();
    let http_addr = if config.health_check_enabled {
        let listener = http::bind(config.health_check_host, config.health_check_port)
            .await
            .with_context(|| format!("cannot listen on HEALTH_CHECK_PORT {}", config.health_check_port))?;
        let addr = listener.local_addr()?;
        let state = AppState {
            config: config.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            queue: queue.clone(),
            store: store.clone(),
            lease: lease.clone(),
            capacity: capacity.clone(),
            pause: pause.clone(),
        };
        let stop = http_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = http::serve(listener, state, stop).await {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
        Some(addr)
    } else {
        None
    };

    let heartbeat = {
        let (m, stop) = (maintenance.clone(), background.clone());
        tokio::spawn(async move { m.run_heartbeat(stop).await })
    };
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
        finished: finished_tx,
        tasks: tasks.clone(),
        blocking_id: blocking_id.clone(),
        pause,
    };
    let claim_stop = CancellationToken::new();
    let claimer_task = tokio::spawn(claimer.run(claim_stop.clone()));
    health.set_started();
    tracing::info!(worker_id = %worker_id, queue = %config.queue_key, concurrency = config.concurrency, http = ?http_addr, "worker started");

    let drain = Drain {
        config: config.clone(),
        queue: queue.clone(),
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
        drain
            .run(&sd, claimer_task, pipeline_task, vec![heartbeat, promoter_task])
            .await;
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

struct Drain {
    config: Arc<Config>,
    queue: Queue,
    lease: Arc<Lease>,
    health: Arc<Health>,
    capacity: Arc<Capacity>,
    tasks: TaskTracker,
    blocking_id: Arc<AtomicI64>,
    claim_stop: CancellationToken,
    give_up: CancellationToken,
    background: CancellationToken,
    http_stop: CancellationToken,
}

impl Drain {
    async fn run(
        self,
        shutdown: &Shutdown,
        claimer: JoinHandle<()>,
        pipeline: JoinHandle<()>,
        background: Vec<JoinHandle<()>>,
    ) {
        self.health.set_draining();
        self.claim_stop.cancel();
        self.stop_claimer(claimer).await;

        let all_settled = || self.capacity.all_settled();
        let finished = tokio::select! {
            r = all_settled() => r.is_ok(),
            _ = tokio::time::sleep(self.config.shutdown_timeout) => false,
            _ = shutdown.hard.cancelled() => false,
        };
        if !finished {
            tracing::warn!(
                running = self.tasks.len(),
                "steps still running at the end of the drain: handing them back"
            );
            self.lease.interrupt_all();
            let _ = tokio::time::timeout(SETTLE_GRACE, all_settled()).await;
        }
        self.give_up.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(SETTLE_GRACE, self.tasks.wait()).await;
        let _ = tokio::time::timeout(SETTLE_GRACE, pipeline).await;
        self.hand_back_and_deregister().await;
        self.background.cancel();
        for task in background {
            let _ = task.await;
        }
        self.http_stop.cancel();
        tracing::info!("worker stopped");
    }

    /// Wakes the blocked `BLMOVE` until the claim loop has exited (a wake-up sent just before the
    /// call starts would be missed, so it is repeated).
    async fn stop_claimer(&self, mut claimer: JoinHandle<()>) {
        loop {
            let id = self.blocking_id.load(Ordering::SeqCst);
            if id != 0 {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.queue.unblock(id)).await;
            }
            tokio::select! {
                _ = &mut claimer => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Whatever is still in our list (a settle that failed, a stray) goes back to ready; then we
    /// leave the registry. With jobs left and Redis unreachable we stay registered, so the reaper
    /// will find and return them.
    async fn hand_back_and_deregister(&self) {
        let id = self.lease.identity();
        let Ok(left) = self.queue.list(&id.proc_key).await else {
            return tracing::warn!("Redis unreachable at exit: this worker's jobs will be recovered by the others");
        };
        let ops: Vec<SettleOp> = left.into_iter().map(|p| SettleOp::Requeue(p.into())).collect();
        if !ops.is_empty() {
            if self.queue.settle(&id.proc_key, &ops).await.is_err() {
                return tracing::warn!("handing back jobs failed: they will be recovered by the other workers");
            }
            tracing::info!(count = ops.len(), "handed jobs back to the queue");
        }
        if let Err(e) = self.queue.deregister(&id.wid).await {
            tracing::warn!(error = %e, "deregistration failed; the registry entry expires by itself");
        }
        self.report_memory_leftovers().await;
    }

    /// A memory queue ends with the process: say what it takes with it rather than drop it
    /// silently.
    async fn report_memory_leftovers(&self) {
        if !self.queue.is_memory() {
            return;
        }
        if let Ok(d) = self.queue.depths().await {
            let left = d.ready + d.delayed + d.in_flight;
            if left > 0 {
                tracing::warn!(
                    ready = d.ready,
                    delayed = d.delayed,
                    in_flight = d.in_flight,
                    "QUEUE_DRIVER=memory: {left} jobs still queued are discarded when this process exits"
                );
            }
        }
    }
}

/// Retries `op` until it succeeds (`Some`) or `stop` is cancelled (`None`). Used at startup,
/// where an unreachable dependency is waited for rather than fatal: platforms restart crashed
/// containers in a tight loop, which helps nobody. A certificate the worker does not trust is
/// the exception: waiting cannot fix it, so it is returned as an error at once.
async fn retry_until<T, E, F, Fut>(what: &str, stop: &CancellationToken, mut op: F) -> Result<Option<T>, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match op().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if is_certificate_error(&e) => return Err(e),
            Err(e) => tracing::warn!(error = %e, "cannot {what} yet; retrying"),
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
