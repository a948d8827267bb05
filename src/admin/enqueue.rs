//! `step-worker enqueue`: pushes jobs after validating them against the job contract.

use std::io::Read;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use super::Admin;
use crate::trace::TraceHeaders;

/// Jobs pushed per Redis command when enqueueing a file.
const PUSH_BATCH: usize = 1000;

pub struct Enqueue {
    /// A job as JSON, or `-` for standard input.
    pub job: Option<String>,
    /// An NDJSON file: one job per line.
    pub file: Option<std::path::PathBuf>,
    pub delay: Option<Duration>,
    /// `--traceparent` / `TRACEPARENT` (and `--tracestate` / `TRACESTATE`): the trace context
    /// given to jobs that carry none of their own.
    pub trace: Option<TraceHeaders>,
}

/// Validates one job and returns the payload to push: the job as given, with `enqueued_at`
/// added when absent (so queue-wait metrics cover it). A delayed job is stamped with the time it
/// enters the queue, so its delay does not count as waiting, and a `delay_ms` of its own counts
/// from there: `--delay` and the envelope's delay add up (a `run_at` waits for the later of the two).
pub fn prepare(text: &str) -> anyhow::Result<Vec<u8>> {
    prepare_at(text, Duration::ZERO)
}

pub fn prepare_at(text: &str, delay: Duration) -> anyhow::Result<Vec<u8>> {
    prepare_with(text, delay, None)
}

/// [`prepare_at`], giving `trace` to a job without a `traceparent` of its own. Unlike the worker,
/// which ignores a malformed trace context, this refuses it: the producer is there to fix it.
pub fn prepare_with(text: &str, delay: Duration, trace: Option<&TraceHeaders>) -> anyhow::Result<Vec<u8>> {
    let job = crate::job::decode(text.as_bytes()).map_err(|(e, _)| anyhow!("invalid job: {e}"))?;
    if let Some(why) = job.trace_ignored {
        bail!("invalid job: {why}");
    }
    let mut value: Value = serde_json::from_str(text)?;
    let map = value.as_object_mut().expect("decode accepted an object");
    if let Some(trace) = trace
        && !map.contains_key("traceparent")
    {
        map.insert("traceparent".into(), trace.traceparent.clone().into());
        if let Some(state) = &trace.tracestate {
            map.insert("tracestate".into(), state.clone().into());
        }
    }
    map.entry("enqueued_at")
        .or_insert_with(|| Value::from(chrono::Utc::now().timestamp_millis() + delay.as_millis() as i64));
    Ok(serde_json::to_vec(&value)?)
}

pub async fn run(admin: &Admin, e: Enqueue) -> anyhow::Result<()> {
    let payloads: Vec<Vec<u8>> = match (&e.job, &e.file) {
        (Some(_), Some(_)) => bail!("give a job or --file, not both"),
        (None, None) => bail!("give a job as JSON (or - for standard input), or --file with one job per line"),
        (Some(job), None) => {
            let text = if job == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                job.clone()
            };
            vec![prepare_with(
                text.trim(),
                e.delay.unwrap_or_default(),
                e.trace.as_ref(),
            )?]
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let mut out = Vec::new();
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                out.push(
                    prepare_with(line.trim(), e.delay.unwrap_or_default(), e.trace.as_ref())
                        .with_context(|| format!("{}: line {}", path.display(), n + 1))?,
                );
            }
            out
        }
    };
    let bar = super::progress(payloads.len() as u64, "enqueue");
    for chunk in payloads.chunks(PUSH_BATCH) {
        match e.delay {
            Some(delay) => {
                for p in chunk {
                    admin.queue.schedule(p, delay).await?;
                }
            }
            None => admin.queue.push_many(chunk).await?,
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    match e.delay {
        Some(d) => println!(
            "scheduled {} job(s) to enter {} in {}",
            payloads.len(),
            admin.config.queue_key,
            humantime::format_duration(d)
        ),
        None => println!("enqueued {} job(s) on {}", payloads.len(), admin.config.queue_key),
    }
    Ok(())
}

/// The `--traceparent` and `--tracestate` given to `enqueue`, checked: a malformed one is refused
/// rather than silently left out of every job.
pub fn trace_arg(traceparent: Option<String>, tracestate: Option<String>) -> anyhow::Result<Option<TraceHeaders>> {
    let Some(traceparent) = traceparent else {
        if tracestate.is_some() {
            bail!("--tracestate (TRACESTATE) needs a --traceparent (TRACEPARENT)");
        }
        return Ok(None);
    };
    let Some((trace_id, span_id, flags)) = crate::trace::context::parse_traceparent(&traceparent) else {
        bail!(
            "--traceparent (TRACEPARENT) must be a W3C traceparent, 00-<32 hex digits>-<16 hex digits>-<2 hex digits> in lower case, got {traceparent:?}"
        );
    };
    let state = match &tracestate {
        Some(s) => crate::trace::context::parse_tracestate(s).ok_or_else(|| {
            anyhow!("--tracestate (TRACESTATE) must be a W3C tracestate (key=value pairs separated by commas)")
        })?,
        None => Default::default(),
    };
    Ok(Some(crate::trace::context::headers(trace_id, span_id, flags, &state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due_after_now(payload: &[u8]) -> Duration {
        let job = crate::job::decode(payload).unwrap();
        (job.due_at().unwrap() - chrono::Utc::now()).to_std().unwrap()
    }

    #[test]
    fn an_envelope_delay_is_kept_and_counts_from_when_the_job_enters_the_queue() {
        let now = prepare(r#"{"id":"j","step":"s","delay_ms":60000}"#).unwrap();
        let left = due_after_now(&now);
        assert!(
            left > Duration::from_secs(59) && left <= Duration::from_secs(60),
            "{left:?}"
        );
        // `--delay` holds the job out of the queue first; its own delay starts when it enters.
        let both = prepare_at(r#"{"id":"j","step":"s","delay_ms":60000}"#, Duration::from_secs(600)).unwrap();
        let left = due_after_now(&both);
        assert!(
            left > Duration::from_secs(659) && left <= Duration::from_secs(660),
            "{left:?}"
        );
    }

    #[test]
    fn run_at_is_kept_as_given_and_both_fields_together_are_refused() {
        let p = prepare(r#"{"id":"j","step":"s","run_at":"2999-01-01T00:00:00Z"}"#).unwrap();
        let v: Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["run_at"], "2999-01-01T00:00:00Z");
        let e = prepare(r#"{"id":"j","step":"s","run_at":1,"delay_ms":1}"#).unwrap_err();
        assert!(e.to_string().contains("`run_at` and `delay_ms` are exclusive"), "{e}");
    }
}
