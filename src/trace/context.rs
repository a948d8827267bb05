//! The producer's trace context as a job carries it: W3C Trace Context `traceparent` and
//! `tracestate` (https://www.w3.org/TR/trace-context/), parsed and checked here, and written back
//! as headers for the calls an attempt makes.
//!
//! A context that does not parse is never a reason to lose a job: the worker ignores it (with a
//! warning, in [`crate::runner`]) and the attempt starts a trace of its own. Only the enqueue
//! paths (`POST /jobs`, `step-worker enqueue`) refuse it, so a producer learns of it at once.

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use serde_json::Value;

/// Length of a version-00 `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;
/// Longest `tracestate` kept: the specification's size a propagator must at least pass on; past
/// it, the state is dropped whole rather than cut at an arbitrary member.
pub const MAX_TRACESTATE_LEN: usize = 512;

/// A remote parent: the span of the producer that enqueued the job.
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub flags: TraceFlags,
    /// The vendors' state, passed on unchanged (empty when the job had none, or a malformed one).
    pub state: TraceState,
}

/// The headers an attempt sends with its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: String,
    /// `None` when there is no vendor state to pass on.
    pub tracestate: Option<String>,
}

/// What became of a job's `traceparent` and `tracestate` fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    pub remote: Option<Remote>,
    /// Why a field the job does carry was ignored (a bad `tracestate` alone leaves the
    /// `traceparent` in use), for the warning and for the enqueue paths' refusal. The job runs
    /// all the same.
    pub ignored: Option<String>,
}

impl Remote {
    /// The context as OpenTelemetry takes a remote parent.
    pub fn span_context(&self) -> SpanContext {
        SpanContext::new(self.trace_id, self.span_id, self.flags, true, self.state.clone())
    }

    /// The producer's own headers: what an attempt passes on when the worker records no span.
    pub fn headers(&self) -> TraceHeaders {
        headers(self.trace_id, self.span_id, self.flags, &self.state)
    }
}

/// `traceparent` (version 00) and `tracestate` for a span.
pub fn headers(trace_id: TraceId, span_id: SpanId, flags: TraceFlags, state: &TraceState) -> TraceHeaders {
    let state = state.header();
    TraceHeaders {
        // Only the sampled bit is defined; the others are not ours to pass on.
        traceparent: format!("00-{trace_id}-{span_id}-{:02x}", flags.to_u8() & 1),
        tracestate: (!state.is_empty()).then_some(state),
    }
}

/// Reads a job's `traceparent` and `tracestate` fields (absent or null: no context).
pub fn from_fields(traceparent: Option<&Value>, tracestate: Option<&Value>) -> Parsed {
    let text = match traceparent {
        None | Some(Value::Null) => {
            let ignored = tracestate
                .filter(|v| !v.is_null())
                .map(|_| "field `tracestate` without a `traceparent` was ignored".to_owned());
            return Parsed { remote: None, ignored };
        }
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return ignored("field `traceparent` must be a string".to_owned()),
    };
    let Some((trace_id, span_id, flags)) = parse_traceparent(text) else {
        return ignored(format!(
            "field `traceparent` must be a W3C traceparent, 00-<32 hex digits>-<16 hex digits>-<2 hex digits> in \
             lower case with ids not all zero, got {}",
            shown(text)
        ));
    };
    let (state, ignored) = match tracestate {
        None | Some(Value::Null) => (TraceState::default(), None),
        Some(Value::String(s)) => match parse_tracestate(s) {
            Some(state) => (state, None),
            None => (
                TraceState::default(),
                Some(format!(
                    "field `tracestate` must be a W3C tracestate of at most {MAX_TRACESTATE_LEN} characters \
                     (key=value pairs separated by commas)"
                )),
            ),
        },
        Some(_) => (
            TraceState::default(),
            Some("field `tracestate` must be a string".to_owned()),
        ),
    };
    Parsed {
        remote: Some(Remote {
            trace_id,
            span_id,
            flags,
            state,
        }),
        ignored,
    }
}

fn ignored(why: String) -> Parsed {
    Parsed {
        remote: None,
        ignored: Some(why),
    }
}

/// A `traceparent` header or field: version 00 exactly, or a later version's first four fields
/// (the specification's rule for versions it does not know yet). Upper-case hex, all-zero ids and
/// version `ff` are invalid.
pub fn parse_traceparent(text: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let text = text.trim_matches([' ', '\t']);
    let version = text.get(0..2)?;
    if !is_lower_hex(version) || version == "ff" {
        return None;
    }
    let fields = match version {
        "00" if text.len() == TRACEPARENT_LEN => text,
        "00" => return None,
        _ if text.len() == TRACEPARENT_LEN => text,
        _ if text.len() > TRACEPARENT_LEN && text.as_bytes()[TRACEPARENT_LEN] == b'-' => &text[..TRACEPARENT_LEN],
        _ => return None,
    };
    let mut parts = fields.split('-');
    let (_, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if ![trace, span, flags].iter().all(|p| is_lower_hex(p)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok().filter(|id| *id != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span).ok().filter(|id| *id != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id, span_id, TraceFlags::new(flags)))
}

/// A `tracestate`: at most [`MAX_TRACESTATE_LEN`] characters of valid `key=value` members.
pub fn parse_tracestate(text: &str) -> Option<TraceState> {
    if text.len() > MAX_TRACESTATE_LEN {
        return None;
    }
    TraceState::from_str(text).ok()
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The bad value as a warning shows it: short ones quoted (escaped), long ones by length.
fn shown(s: &str) -> String {
    match s.chars().count() {
        n if n <= 80 => format!("{s:?}"),
        n => format!("a string of {n} characters"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(traceparent: Value, tracestate: Option<Value>) -> Parsed {
        from_fields(Some(&traceparent), tracestate.as_ref())
    }

    #[test]
    fn a_valid_context_keeps_its_ids_flags_and_state() {
        let parsed = parse(json!(VALID), Some(json!("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")));
        assert_eq!(parsed.ignored, None);
        let remote = parsed.remote.unwrap();
        assert_eq!(remote.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(remote.span_id.to_string(), "00f067aa0ba902b7");
        assert!(remote.flags.is_sampled());
        let headers = remote.headers();
        assert_eq!(headers.traceparent, VALID);
        assert_eq!(
            headers.tracestate.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
    }

    #[test]
    fn malformed_traceparents_are_ignored_with_the_reason() {
        for bad in [
            json!(42),
            json!(""),
            json!("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            json!("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            json!("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            json!("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
            json!("00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01"),
            json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g"),
            json!("0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\u{00e9}"),
        ] {
            let parsed = parse(bad.clone(), Some(json!("a=b")));
            assert_eq!(parsed.remote, None, "{bad}");
            assert!(parsed.ignored.unwrap().contains("traceparent"), "{bad}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_four_fields() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let remote = parse(json!(later), None).remote.unwrap();
        assert_eq!(remote.headers().traceparent, VALID);
        assert_eq!(parse(json!(format!("{}x", &later[..55])), None).remote, None);
    }

    #[test]
    fn a_bad_tracestate_is_dropped_and_the_traceparent_kept() {
        for bad in [
            json!("no-equals-sign"),
            json!(7),
            json!(format!("k={}", "v".repeat(600))),
        ] {
            let parsed = parse(json!(VALID), Some(bad.clone()));
            assert!(
                parsed.remote.as_ref().is_some_and(|r| r.state == TraceState::default()),
                "{bad}"
            );
            assert!(parsed.ignored.unwrap().contains("tracestate"), "{bad}");
        }
    }

    #[test]
    fn no_traceparent_is_no_context_and_a_lone_tracestate_is_reported() {
        assert_eq!(from_fields(None, None), Parsed::default());
        assert_eq!(from_fields(Some(&Value::Null), None), Parsed::default());
        let lone = from_fields(None, Some(&json!("a=b")));
        assert_eq!(lone.remote, None);
        assert!(lone.ignored.is_some());
    }

    #[test]
    fn only_the_sampled_flag_is_passed_on() {
        let remote = parse(json!(VALID.replace("-01", "-ff")), None).remote.unwrap();
        assert!(remote.headers().traceparent.ends_with("-01"));
    }
}
