//! Distributed tracing: the W3C trace context a job carries ([`context`]), the attempt's span
//! joined to it ([`attempt`]), and OTLP export of those spans ([`export`]), on only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. docs/tracing.md has the span model and the variables.

pub mod attempt;
pub mod context;
pub mod export;

pub use context::{Remote, TraceHeaders};
