//! The console's reads: the overview the page polls (depths, workers, pause switches, this
//! worker's per-step counts), the recent dead letters, and one job by id.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::{Console, error, json, needs_postgres, unavailable};
use crate::queue::WorkerInfo;
use crate::store::dead_letters::{self, Filter};

/// How long one reading of the overview serves every page that polls it: the page polls every
/// few seconds, so however many tabs (or a flood) ask, Redis and Postgres are read at most this
/// often for it.
pub const OVERVIEW_REUSE: Duration = Duration::from_secs(2);
/// Longest a console read waits on Redis or Postgres: an operator would rather see the error.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Dead letters listed when the page asks for no number, and the most it may ask for.
const DEAD_LETTERS_DEFAULT: i64 = 50;
const DEAD_LETTERS_MAX: i64 = 200;
/// Attempts shown for one job: a job retried more often than this shows its first ones.
const ATTEMPTS_SHOWN: i64 = 100;

/// One reading of the overview and when it was taken.
pub(super) type Snapshot = (Instant, Value);

pub(super) async fn overview(State(c): State<Console>, headers: HeaderMap) -> Response {
    if let Err(refusal) = c.admit(&headers, false) {
        return *refusal;
    }
    let cached = c.overview.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some((at, body)) = cached
        && at.elapsed() < OVERVIEW_REUSE
    {
        return json(StatusCode::OK, body);
    }
    let console = c.clone();
    c.on_io(async move {
        match tokio::time::timeout(READ_TIMEOUT, read_overview(&console)).await {
            Ok(Ok(body)) => {
                *console.overview.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), body.clone()));
                json(StatusCode::OK, body)
            }
            Ok(Err(refusal)) => *refusal,
            Err(_) => unavailable("reading the queue", "timed out"),
        }
    })
    .await
}

/// `Err` is the answer to send instead (boxed: a response is large).
async fn read_overview(c: &Console) -> Result<Value, Box<Response>> {
    let s = &c.app;
    let d = s.queue.depths().await.map_err(|e| failed("reading Redis", e))?;
    let dead = s
        .store
        .pending_dead_letters()
        .await
        .map_err(|e| failed("reading the results store", e))?;
    let (workers, paused_steps) = match s.queue.redis() {
        Some(r) => (
            r.workers(s.config.worker_deadline)
                .await
                .map_err(|e| failed("reading the workers", e))?,
            r.paused_steps().await.map_err(|e| failed("reading Redis", e))?,
        ),
        // The memory queue is this process alone, and it has no pause switch.
        None => (
            vec![WorkerInfo {
                worker_id: s.lease.identity().wid.clone(),
                last_heartbeat_ms_ago: 0,
                in_flight: s.inflight.len() as u64,
            }],
            Vec::new(),
        ),
    };
    let paused_steps: Vec<Value> = paused_steps
        .into_iter()
        .map(|(step, held)| json!({ "step": step, "held": held }))
        .collect();
    Ok(json!({
        "queue": s.config.queue_key,
        "queue_driver": if s.queue.is_memory() { "memory" } else { "redis" },
        "store_driver": if s.store.postgres().is_some() { "postgres" } else { "sqlite" },
        "worker_id": s.lease.identity().wid,
        "version": env!("CARGO_PKG_VERSION"),
        "at": chrono::Utc::now(),
        "paused": d.paused,
        "depths": {
            "ready": d.ready, "delayed": d.delayed, "in_flight": d.in_flight,
            "held": d.held, "poison": d.poison, "cancelled": d.cancelled, "dead": dead,
        },
        "workers": workers,
        "paused_steps": paused_steps,
        "steps": step_counts(&s.metrics.job_counts()),
    }))
}

fn failed(what: &str, e: impl std::fmt::Display) -> Box<Response> {
    Box::new(unavailable(what, e))
}

/// `step_worker_jobs_total` of this worker, one object per step with each outcome's count.
fn step_counts(counts: &[(String, String, u64)]) -> Vec<Value> {
    let mut steps: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for (step, outcome, n) in counts {
        steps.entry(step).or_default().insert(outcome, *n);
    }
    steps
        .into_iter()
        .map(|(step, outcomes)| json!({ "step": step, "outcomes": outcomes }))
        .collect()
}

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    step: Option<String>,
    reason: Option<String>,
    limit: Option<i64>,
}

/// The most recent dead letters not yet replayed (newest first), with how many match.
pub(super) async fn dead_letters(State(c): State<Console>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    if let Err(refusal) = c.admit(&headers, false) {
        return *refusal;
    }
    let Some(pg) = c.app.store.postgres().cloned() else {
        return needs_postgres("listing dead letters");
    };
    let filter = Filter {
        step: q.step.filter(|s| !s.is_empty()),
        reason: q.reason.filter(|s| !s.is_empty()),
        ..Filter::default()
    };
    let limit = q.limit.unwrap_or(DEAD_LETTERS_DEFAULT).clamp(1, DEAD_LETTERS_MAX);
    c.on_io(async move {
        let read = async {
            let letters = dead_letters::list(&pg, &filter, limit, 0).await?;
            let total = dead_letters::count(&pg, &filter).await?;
            Ok::<_, sqlx::Error>((letters, total))
        };
        match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok((letters, total))) => json(StatusCode::OK, json!({ "total": total, "letters": letters })),
            Ok(Err(e)) => unavailable("reading dead letters", e),
            Err(_) => unavailable("reading dead letters", "timed out"),
        }
    })
    .await
}

/// One job: its result row (once it has one) and its failed attempts.
pub(super) async fn job(State(c): State<Console>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(refusal) = c.admit(&headers, false) {
        return *refusal;
    }
    if !crate::job::valid_id(&id) {
        return error(StatusCode::NOT_FOUND, "no job can have this id");
    }
    let store = c.app.store.clone();
    c.on_io(async move {
        let read =
            async { Ok::<_, sqlx::Error>((store.result(&id).await?, store.attempts(&id, ATTEMPTS_SHOWN).await?)) };
        let (result, attempts) = match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return unavailable("reading the results store", e),
            Err(_) => return unavailable("reading the results store", "timed out"),
        };
        if result.is_none() && attempts.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                "no result and no failed attempt for this job yet: it is queued, running, or unknown",
            );
        }
        let result = result.map(|r| {
            let output = r
                .output
                .as_deref()
                .map(|o| serde_json::from_str::<Value>(o).unwrap_or(json!(o)));
            json!({
                "status": r.status, "attempts": r.attempts, "output": output, "error": r.error,
                "finished_at": r.finished_at, "worker_id": r.worker_id,
            })
        });
        json(
            StatusCode::OK,
            json!({ "job_id": id, "result": result, "attempts": attempts }),
        )
    })
    .await
}
