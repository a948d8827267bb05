//! OTLP export of the attempt spans, on only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Rules: export must never slow or block a job. Ended spans go into a bounded queue that the
//! SDK's batch processor drains from a thread of its own (the job path only pushes into it); when
//! the collector is slow or unreachable the queue fills and further spans are dropped, counted in
//! `step_worker_trace_spans_dropped_total{reason="queue_full"}`, as are the spans of a batch the
//! collector refused or never answered (`reason="export_failed"`). The SDK keeps its own drop
//! count private, so the queue's bound is enforced here, in front of it, where it can be counted.
//! At exit, what is queued is flushed for at most [`SHUTDOWN_FLUSH`].
//!
//! Building a span costs far more than dropping it (the attempt's span costs the job path about
//! half again its own CPU), so while the export fails [`admit`] sheds attempts *before* their
//! spans are built: only one attempt a [`PROBE_EVERY`] is traced, the probe whose batch tells
//! when the collector is back; the others are counted (`reason="collector_down"`) and keep their
//! log lines and the producer's trace id in them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler as SdkSampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter, SpanProcessor,
};

use crate::config::{Otel, OtlpProtocol, Sampler};

/// Ended spans waiting for export, at most: the SDK's default. At about 1 KB a span it bounds the
/// memory a dead collector can cost to a few megabytes, and it holds several seconds of a busy
/// worker's spans, so a collector's brief hiccup loses nothing.
const QUEUE: usize = 2048;
/// How long the exit waits for queued spans to reach the collector: one export round trip to a
/// collector that answers, and no more than the drain's spare second and a half
/// ([`crate::drain::EXIT_MARGIN`]), so the documented exit bound holds with tracing on.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);
/// The instrumentation scope the spans carry.
const SCOPE: &str = "step-worker";
/// While the export fails, one attempt in this long is traced: often enough that tracing is back
/// within a batch delay (`OTEL_BSP_SCHEDULE_DELAY`, 5 s) of the collector, rare enough to cost
/// nothing measurable.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

static TRACER: OnceLock<SdkTracer> = OnceLock::new();
static GATE: OnceLock<Gate> = OnceLock::new();

/// What [`admit`] decides by: the exporter's view of the collector and the queue's fill.
struct Gate {
    /// The last batch was refused or never answered.
    failing: Arc<AtomicBool>,
    pending: Arc<AtomicUsize>,
    started: Instant,
    /// Milliseconds since `started` from which the next probe may be traced.
    next_probe: AtomicU64,
}

/// Whether the attempt about to start is traced: always while the export works; while it fails
/// (the last batch refused or unanswered, or the queue full), one attempt a [`PROBE_EVERY`], the
/// others counted in `step_worker_trace_spans_dropped_total{reason="collector_down"}` (one per
/// attempt; its `step` span is not built either). `false` when export is off.
pub fn admit() -> bool {
    static SHED: LazyLock<prometheus::IntCounter> =
        LazyLock::new(|| crate::metrics::trace_spans_dropped().with_label_values(&["collector_down"]));
    let Some(gate) = GATE.get() else {
        return false;
    };
    if !gate.failing.load(Ordering::Relaxed) && gate.pending.load(Ordering::Relaxed) < QUEUE {
        return true;
    }
    let now = gate.started.elapsed().as_millis() as u64;
    let next = gate.next_probe.load(Ordering::Relaxed);
    let probe = now >= next
        && gate
            .next_probe
            .compare_exchange(
                next,
                now + PROBE_EVERY.as_millis() as u64,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok();
    if !probe {
        SHED.inc();
    }
    probe
}

/// The tracer of the running export, `None` when export is off: the cheap test the job path makes
/// before it does any tracing work of its own.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// The running export; [`Export::shutdown`] flushes it.
pub struct Export {
    provider: SdkTracerProvider,
}

impl Export {
    /// Flushes queued spans for at most [`SHUTDOWN_FLUSH`], then stops the export thread; without
    /// `flush`, leaves them (the process is exiting now). Must not run on a runtime thread (it
    /// blocks), but while the runtime is alive (gRPC uses it).
    pub fn shutdown(self, flush: bool) {
        if !flush {
            return;
        }
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_FLUSH) {
            tracing::warn!(error = %e, "traces still queued at exit were not all exported");
        }
    }
}

/// Starts the export `config` describes; `None` when `OTEL_EXPORTER_OTLP_ENDPOINT` is unset.
/// gRPC needs a Tokio runtime entered: the channel's connection task is spawned on it.
pub fn start(config: &Otel) -> anyhow::Result<Option<(SdkTracer, Export)>> {
    let Some(endpoint) = &config.endpoint else {
        return Ok(None);
    };
    let exporter = match config.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            // The base URL gets the signal's path, as the specification has it for this variable.
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .with_headers(
                config
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                    .collect::<HashMap<_, _>>(),
            )
            .build(),
        OtlpProtocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                .with_endpoint(endpoint.clone())
                .with_metadata(metadata(config)?);
            if endpoint.starts_with("https://") {
                // The public CAs compiled in, as everywhere else in the worker.
                builder = builder.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new().with_webpki_roots(),
                );
            }
            builder.build()
        }
    }
    .context("cannot build the OTLP trace exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    let pending = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let batch = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        pending: pending.clone(),
        failing: failing.clone(),
    })
    // The default builder reads the SDK's OTEL_BSP_* variables; the queue's bound is this
    // module's, since the gate below enforces it.
    .with_batch_config(BatchConfigBuilder::default().with_max_queue_size(QUEUE).build())
    .build();
    let _ = GATE.set(Gate {
        failing,
        pending: pending.clone(),
        started: Instant::now(),
        next_probe: AtomicU64::new(0),
    });
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Bounded { inner: batch, pending })
        .with_sampler(sampler(config.sampler))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .with_attributes([opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                )])
                .build(),
        )
        .build();
    let tracer = provider.tracer(SCOPE);
    let _ = TRACER.set(tracer.clone());
    Ok(Some((tracer, Export { provider })))
}

fn sampler(s: Sampler) -> SdkSampler {
    match s {
        Sampler::AlwaysOn => SdkSampler::AlwaysOn,
        Sampler::AlwaysOff => SdkSampler::AlwaysOff,
        Sampler::TraceIdRatio(r) => SdkSampler::TraceIdRatioBased(r),
        Sampler::ParentBasedAlwaysOn => SdkSampler::ParentBased(Box::new(SdkSampler::AlwaysOn)),
        Sampler::ParentBasedAlwaysOff => SdkSampler::ParentBased(Box::new(SdkSampler::AlwaysOff)),
        Sampler::ParentBasedTraceIdRatio(r) => SdkSampler::ParentBased(Box::new(SdkSampler::TraceIdRatioBased(r))),
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS` as gRPC metadata.
fn metadata(config: &Otel) -> anyhow::Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap> {
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &config.headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("OTEL_EXPORTER_OTLP_HEADERS: the header name {name:?}"))?;
        let mut value = reqwest::header::HeaderValue::from_str(value.expose())
            .with_context(|| format!("OTEL_EXPORTER_OTLP_HEADERS: the value of {name}"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(
        headers,
    ))
}

fn dropped(reason: &str, n: usize) {
    crate::metrics::trace_spans_dropped()
        .with_label_values(&[reason])
        .inc_by(n as u64);
}

/// The queue's bound, in front of the batch processor: `pending` counts spans handed to it and
/// not yet taken by the exporter, so the processor's own channel (of the same size) never fills
/// and drops silently; a span past the bound is dropped here, and counted.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            dropped("queue_full", 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it takes out of the queue and what it fails to deliver.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    /// The last export failed: the next failure is not logged again, the recovery is; [`admit`]
    /// sheds attempts meanwhile.
    failing: Arc<AtomicBool>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| Some(p.saturating_sub(n)));
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("trace export recovered");
                }
            }
            Err(e) => {
                dropped("export_failed", n);
                // Once per outage, not once per batch: the metric counts the rest.
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, spans = n, "trace export failed; spans are dropped until the collector answers");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
