//! Prometheus metrics, owned by one struct with its own registry. Each metric's help text is in
//! its constructor; labels are low-cardinality (step names, outcomes), never job ids. Gauges that
//! describe Redis (queue depths) are set at scrape time by the HTTP handler.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Run-time buckets: from a sub-millisecond no-op to the 15-minute timeout cap.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];
/// Per-job overhead buckets: the worker's own share of a job's life is sub-millisecond to a few
/// milliseconds when healthy (one claim, one Postgres commit and one settle, each batched).
const OVERHEAD_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];
/// Queue-wait buckets: milliseconds when the queue is healthy, up to hours when it is backlogged.
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

pub struct Metrics {
    registry: Registry,
    /// When the gauges read from Redis and Postgres were last refreshed (see [`Self::gauges_due`]).
    gauges_refreshed: std::sync::Mutex<Option<std::time::Instant>>,
    /// The last exposition and when it was rendered (see [`Self::render_shared`]).
    rendered: std::sync::Mutex<Option<(std::time::Instant, axum::body::Bytes)>>,
    /// Set while one caller renders, so a flood of scrapes renders once, not once each.
    rendering: std::sync::atomic::AtomicBool,
    /// Attempts by step and outcome (succeeded, failed, timed_out, panicked, dead, requeued, ...).
    pub jobs: IntCounterVec,
    pub job_duration: HistogramVec,
    pub queue_wait: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub in_flight: IntGauge,
    pub concurrency: IntGauge,
    /// Steps running now: at most `concurrency`. `in_flight` also counts finished jobs awaiting
    /// their commit, so only this one tells a full worker from one whose commits are slow.
    pub steps_running: IntGauge,
    pub redis_errors: IntCounterVec,
    pub postgres_errors: IntCounterVec,
    pub recovered: IntCounter,
    pub poisoned: IntCounter,
    pub duplicate_completions: IntCounter,
    pub fenced: IntCounter,
    /// Rows deleted by `RESULT_RETENTION`, per table (three values).
    pub pruned_rows: IntCounterVec,
    pub persist_batch: Histogram,
    pub job_overhead: Histogram,
    /// The overhead split where it is spent, to find what makes its tail.
    pub overhead_phases: OverheadPhases,
    pub live_workers: IntGauge,
    pub redis_policy: IntGaugeVec,
    /// HTTP step calls by step and class: the status class, or what happened instead of a status.
    pub http_step_responses: IntCounterVec,
    /// Jobs moved aside to wait by a flow limit, by step (configured ones only) and reason.
    pub throttled: IntCounterVec,
    /// Jobs waiting on a flow limit now, by step and reason (set at scrape time).
    pub jobs_waiting: IntGaugeVec,
    /// Cap slots held now across every replica, by capped step (set at scrape time).
    pub cap_used: IntGaugeVec,
}

/// The children of `step_worker_job_overhead_phase_seconds`, looked up once: they are observed
/// for every succeeded job, where a label lookup per observation would be wasted work.
pub struct OverheadPhases {
    pub before_step_end: Histogram,
    pub step_end_to_commit: Histogram,
    pub commit_to_settled: Histogram,
}

impl Metrics {
    pub fn new(worker_id: &str) -> Self {
        let registry = Registry::new();
        let jobs = IntCounterVec::new(
            Opts::new(
                "step_worker_jobs_total",
                "Job attempts and terminal outcomes, by step and outcome.",
            ),
            &["step", "outcome"],
        )
        .unwrap();
        let job_duration = HistogramVec::new(
            HistogramOpts::new(
                "step_worker_job_duration_seconds",
                "Run time of one attempt of a step, by step and outcome.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["step", "outcome"],
        )
        .unwrap();
        let queue_wait = HistogramVec::new(
            HistogramOpts::new(
                "step_worker_queue_wait_seconds",
                "Time from the job's enqueued_at to its first claim by a worker (jobs that carry enqueued_at; retries are not counted).",
            )
            .buckets(WAIT_BUCKETS.to_vec()),
            &["step"],
        )
        .unwrap();
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "step_worker_queue_depth",
                "Jobs per queue structure at scrape time: ready, delayed (retries), in_flight (claimed), dead (dead letters not replayed), poison (awaiting their dead letter), cancelled (awaiting their cancelled row), held (jobs of paused steps).",
            ),
            &["queue"],
        )
        .unwrap();
        let in_flight = IntGauge::new(
            "step_worker_in_flight",
            "Jobs this worker holds: claimed and not yet settled.",
        )
        .unwrap();
        let concurrency = IntGauge::new(
            "step_worker_concurrency",
            "Configured WORKER_CONCURRENCY of this worker.",
        )
        .unwrap();
        let steps_running = IntGauge::new(
            "step_worker_steps_running",
            "Steps running now on this worker: at most step_worker_concurrency.",
        )
        .unwrap();
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "step_worker_redis_errors_total",
                "Failed Redis operations, by operation.",
            ),
            &["op"],
        )
        .unwrap();
        let postgres_errors = IntCounterVec::new(
            Opts::new(
                "step_worker_postgres_errors_total",
                "Failed Postgres operations, by operation.",
            ),
            &["op"],
        )
        .unwrap();
        let recovered = IntCounter::new(
            "step_worker_recovered_jobs_total",
            "Jobs this worker's reaper returned to ready from workers that stopped heartbeating.",
        )
        .unwrap();
        let poisoned = IntCounter::new(
            "step_worker_poison_jobs_total",
            "Jobs dead-lettered because they were recovered from dead workers more than MAX_RECOVERIES times.",
        )
        .unwrap();
        let duplicate_completions = IntCounter::new(
            "step_worker_duplicate_completions_total",
            "Terminal outcomes that found a result row already written (a job run more than once).",
        )
        .unwrap();
        let fenced = IntCounter::new(
            "step_worker_fenced_total",
            "Times this worker stopped its running jobs because it lost its lease (no heartbeat, or reaped).",
        )
        .unwrap();
        let pruned_rows = IntCounterVec::new(
            Opts::new(
                "step_worker_pruned_rows_total",
                "Rows this worker deleted because RESULT_RETENTION expired them, per table.",
            ),
            &["table"],
        )
        .unwrap();
        // Each table's series exists from the start, so a rate over it is 0, not absent.
        for table in ["step_results", "step_attempts", "step_dead_letters"] {
            pruned_rows.with_label_values(&[table]);
        }
        let persist_batch = Histogram::with_opts(
            HistogramOpts::new(
                "step_worker_persist_batch_size",
                "Outcome rows written per Postgres round trip.",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]),
        )
        .unwrap();
        let job_overhead = Histogram::with_opts(
            HistogramOpts::new(
                "step_worker_job_overhead_seconds",
                "Time a finished job spent in the worker outside its step: from claim to settled in Redis (after the Postgres commit), minus the attempt's run time.",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
        )
        .unwrap();
        let job_overhead_phase = HistogramVec::new(
            HistogramOpts::new(
                "step_worker_job_overhead_phase_seconds",
                "The per-job overhead by phase: claim to step end minus the run time (before_step_end), step end to the Postgres commit (step_end_to_commit), commit to settled in Redis (commit_to_settled).",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
            &["phase"],
        )
        .unwrap();
        let live_workers = IntGauge::new(
            "step_worker_live_workers",
            "Workers registered on this queue at scrape time.",
        )
        .unwrap();
        let redis_policy = IntGaugeVec::new(
            Opts::new(
                "step_worker_redis_maxmemory_policy",
                "1 for the Redis maxmemory-policy seen at startup (\"unknown\" when CONFIG is not allowed); anything but noeviction can silently delete queued jobs.",
            ),
            &["policy"],
        )
        .unwrap();
        let http_step_responses = IntCounterVec::new(
            Opts::new(
                "step_worker_http_step_responses_total",
                "HTTP step calls by step and class: 1xx-5xx for the answer's status class, too_large for a 2xx body over STEP_RESPONSE_MAX_BYTES, timeout, connect_error or transport_error when no complete answer came.",
            ),
            &["step", "class"],
        )
        .unwrap();
        let memory_limit = IntGauge::new(
            "step_worker_memory_limit_bytes",
            "The container's memory limit from its cgroup (0 when unlimited or unknown), for memory alerts.",
        )
        .unwrap();
        memory_limit.set(cgroup_memory_limit().unwrap_or(0));
        let build_info = IntGaugeVec::new(
            Opts::new(
                "step_worker_build_info",
                "Always 1; labels carry the version and this process's worker id.",
            ),
            &["version", "worker_id"],
        )
        .unwrap();
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), worker_id])
            .set(1);

        let throttled = IntCounterVec::new(
            Opts::new(
                "step_worker_throttled_total",
                "Jobs this worker moved aside to wait on a flow limit instead of claiming them (not attempts), by step and reason (concurrency: every STEP_CONCURRENCY slot of the step was held).",
            ),
            &["step", "reason"],
        )
        .unwrap();
        let jobs_waiting = IntGaugeVec::new(
            Opts::new(
                "step_worker_jobs_waiting",
                "Jobs waiting on a flow limit at scrape time, across every replica, by step and reason (concurrency: for a STEP_CONCURRENCY slot).",
            ),
            &["step", "reason"],
        )
        .unwrap();
        let cap_used = IntGaugeVec::new(
            Opts::new(
                "step_worker_concurrency_slots_used",
                "STEP_CONCURRENCY slots held at scrape time across every replica, by step (compare with its cap).",
            ),
            &["step"],
        )
        .unwrap();
        for c in [
            Box::new(jobs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(throttled.clone()),
            Box::new(jobs_waiting.clone()),
            Box::new(cap_used.clone()),
            Box::new(job_duration.clone()),
            Box::new(queue_wait.clone()),
            Box::new(queue_depth.clone()),
            Box::new(in_flight.clone()),
            Box::new(concurrency.clone()),
            Box::new(steps_running.clone()),
            Box::new(redis_errors.clone()),
            Box::new(postgres_errors.clone()),
            Box::new(recovered.clone()),
            Box::new(poisoned.clone()),
            Box::new(duplicate_completions.clone()),
            Box::new(fenced.clone()),
            Box::new(pruned_rows.clone()),
            Box::new(persist_batch.clone()),
            Box::new(job_overhead.clone()),
            Box::new(job_overhead_phase.clone()),
            Box::new(live_workers.clone()),
            Box::new(redis_policy.clone()),
            Box::new(http_step_responses.clone()),
            Box::new(memory_limit),
            Box::new(build_info),
            Box::new(trace_spans_dropped().clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process collector registers once");
        Metrics {
            registry,
            gauges_refreshed: std::sync::Mutex::new(None),
            rendered: std::sync::Mutex::new(None),
            rendering: std::sync::atomic::AtomicBool::new(false),
            jobs,
            job_duration,
            queue_wait,
            queue_depth,
            in_flight,
            concurrency,
            steps_running,
            redis_errors,
            postgres_errors,
            recovered,
            poisoned,
            duplicate_completions,
            fenced,
            pruned_rows,
            persist_batch,
            job_overhead,
            throttled,
            jobs_waiting,
            cap_used,
            overhead_phases: OverheadPhases {
                before_step_end: job_overhead_phase.with_label_values(&["before_step_end"]),
                step_end_to_commit: job_overhead_phase.with_label_values(&["step_end_to_commit"]),
                commit_to_settled: job_overhead_phase.with_label_values(&["commit_to_settled"]),
            },
            live_workers,
            redis_policy,
            http_step_responses,
        }
    }

    /// Whether the gauges read from Redis and Postgres are older than `every`; when they are, the
    /// caller is the one that refreshes them (the clock restarts now), so however many scrapes
    /// arrive, those servers are asked at most once per `every`.
    pub fn gauges_due(&self, every: std::time::Duration) -> bool {
        let mut last = self.gauges_refreshed.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= every);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text exposition is UTF-8")
    }

    /// The exposition for a scrape: rendered at most once per `max_age`, and while one caller
    /// renders, the others get the previous text instead of rendering too. Rendering walks every
    /// series and reads `/proc`, on the runtime threads that also run the job path, so a flood of
    /// scrapes from anyone who reaches the port must cost one render, not one each. The text is
    /// shared, not copied, by every response that sends it.
    pub fn render_shared(&self, max_age: std::time::Duration) -> axum::body::Bytes {
        use std::sync::atomic::Ordering;
        let cached = self.rendered.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((at, text)) = &cached
            && (at.elapsed() < max_age || self.rendering.load(Ordering::Acquire))
        {
            return text.clone();
        }
        if self.rendering.swap(true, Ordering::AcqRel)
            && let Some((_, text)) = cached
        {
            return text;
        }
        // The lock is not held while rendering: a blocked runtime thread would stall jobs.
        let text = axum::body::Bytes::from(self.render());
        *self.rendered.lock().unwrap_or_else(|e| e.into_inner()) = Some((std::time::Instant::now(), text.clone()));
        self.rendering.store(false, Ordering::Release);
        text
    }

    pub fn job(&self, step: &str, outcome: &str) {
        self.jobs.with_label_values(&[step, outcome]).inc();
    }

    /// Every `(step, outcome, count)` of `step_worker_jobs_total` in this process, for the
    /// console: read from the counters themselves, so it always agrees with `/metrics`.
    pub fn job_counts(&self) -> Vec<(String, String, u64)> {
        use prometheus::core::Collector;
        let mut out = Vec::new();
        for family in self.jobs.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                out.push((label("step"), label("outcome"), m.get_counter().get_value() as u64));
            }
        }
        out
    }
}

/// `step_worker_trace_spans_dropped_total`: one counter for the process, not one per [`Metrics`],
/// because trace export starts with logging, before any worker (and its registry) exists, and
/// serves every worker the process runs. Each registry exposes the same counter.
pub fn trace_spans_dropped() -> &'static IntCounterVec {
    static DROPPED: std::sync::LazyLock<IntCounterVec> = std::sync::LazyLock::new(|| {
        let dropped = IntCounterVec::new(
            Opts::new(
                "step_worker_trace_spans_dropped_total",
                "Spans not exported, by reason: queue_full (the export queue was full: the collector is slow or unreachable), export_failed (the collector refused or never answered their batch), collector_down (an attempt not traced while the export was failing, one per attempt; one attempt a second still is).",
            ),
            &["reason"],
        )
        .unwrap();
        // Every series exists from the start, at 0, so a rate() over them works before the first drop.
        for reason in ["queue_full", "export_failed", "collector_down"] {
            dropped.with_label_values(&[reason]);
        }
        dropped
    });
    &DROPPED
}

/// The cgroup memory limit (v2 `memory.max`, else v1 `memory.limit_in_bytes`); `None` when
/// unlimited or not in a cgroup.
fn cgroup_memory_limit() -> Option<i64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| s.trim().parse::<i64>().ok())
    // cgroup v1 reports "unlimited" as a huge page-aligned number.
    .filter(|n| *n > 0 && *n < i64::MAX / 2)
}

/// Counts one step in `step_worker_steps_running` for as long as it lives (a panic included).
pub struct Running<'a>(&'a IntGauge);

impl<'a> Running<'a> {
    pub fn start(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Running(gauge)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Metrics;

    #[test]
    fn scrapes_within_the_reuse_window_share_one_rendering() {
        let m = Metrics::new("w");
        let first = m.render_shared(Duration::from_secs(60));
        m.job("s", "succeeded");
        let second = m.render_shared(Duration::from_secs(60));
        assert_eq!(first.as_ptr(), second.as_ptr(), "rendered again inside the window");
        let fresh = m.render_shared(Duration::ZERO);
        let fresh = String::from_utf8_lossy(&fresh);
        assert!(
            fresh.contains(r#"step_worker_jobs_total{outcome="succeeded",step="s"} 1"#),
            "{fresh}"
        );
    }

    #[test]
    fn job_counts_read_the_jobs_counter_by_step_and_outcome() {
        let m = Metrics::new("w");
        m.job("a", "succeeded");
        m.job("a", "succeeded");
        m.job("b", "dead");
        let mut counts = m.job_counts();
        counts.sort();
        assert_eq!(
            counts,
            [("a".into(), "succeeded".into(), 2), ("b".into(), "dead".into(), 1)]
        );
    }
}
