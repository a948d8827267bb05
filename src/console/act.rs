//! The console's actions: replay dead letters (one, or a filtered set after a dry-run count),
//! pause and resume the queue or one step, cancel a job. Each is logged once, with what it did.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::{Console, error, json, needs_postgres, needs_redis, unavailable};
use crate::store::dead_letters::{self, Filter};

/// Letters a dry run lists beside its count, so the operator sees what the count is made of.
const DRY_RUN_SHOWN: i64 = 20;
/// Longest an action waits on Redis or Postgres. A replay moves batches of 500 letters in a few
/// milliseconds each, so this covers tens of thousands; a larger set is better left to
/// `step-worker dlq replay`, and what was committed before the limit stays replayed.
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(serde::Deserialize)]
pub(super) struct ReplayRequest {
    /// One dead letter; with it, the other filters are ignored.
    id: Option<Uuid>,
    step: Option<String>,
    reason: Option<String>,
    /// Only letters filed before this time: the confirmation sends the `as_of` of its dry run, so
    /// it replays what was counted, not letters filed since.
    before: Option<DateTime<Utc>>,
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn replay(
    State(c): State<Console>,
    headers: HeaderMap,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> Response {
    if let Err(refusal) = c.admit(&headers, true) {
        return *refusal;
    }
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let Some(pg) = c.app.store.postgres().cloned() else {
        return needs_postgres("replaying dead letters");
    };
    let Some(queue) = c.app.queue.redis().cloned() else {
        return needs_redis("replaying dead letters");
    };
    let as_of = Utc::now();
    let filter = Filter {
        ids: req.id.into_iter().collect(),
        step: req.step.filter(|s| !s.is_empty() && req.id.is_none()),
        reason: req.reason.filter(|s| !s.is_empty() && req.id.is_none()),
        before: Some(req.before.map_or(as_of, |b| b.min(as_of))),
        ..Filter::default()
    };
    let dry_run = req.dry_run;
    let console = c.clone();
    c.on_io(async move {
        let work = async {
            if dry_run {
                let total = dead_letters::count(&pg, &filter).await?;
                let letters = dead_letters::list(&pg, &filter, DRY_RUN_SHOWN, 0).await?;
                return Ok(json!({ "dry_run": true, "would_replay": total, "as_of": as_of, "letters": letters }));
            }
            let replayed = crate::admin::dlq::replay_matching(&pg, &queue, &filter, |_| {}).await?;
            Ok::<_, anyhow::Error>(json!({ "dry_run": false, "replayed": replayed }))
        };
        let answer = tokio::time::timeout(ACTION_TIMEOUT, work).await;
        let (id, step, reason) = (filter.ids.first(), filter.step.as_deref(), filter.reason.as_deref());
        match answer {
            Ok(Ok(body)) => {
                let count = body
                    .get("replayed")
                    .or(body.get("would_replay"))
                    .and_then(|v| v.as_i64())
                    .unwrap_or_default();
                let before = filter.before.unwrap_or(as_of).to_rfc3339();
                let did = if dry_run { "counted for a replay" } else { "replayed" };
                tracing::info!(
                    action = "dlq.replay",
                    dry_run,
                    ?id,
                    ?step,
                    ?reason,
                    before,
                    count,
                    "console: {count} dead letter(s) {did}"
                );
                if !dry_run {
                    console.invalidate();
                }
                json(StatusCode::OK, body)
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    action = "dlq.replay",
                    dry_run,
                    ?id,
                    ?step,
                    ?reason,
                    error = format!("{e:#}"),
                    "console: replaying dead letters failed"
                );
                unavailable("replaying", format!("{e:#}"))
            }
            Err(_) => unavailable("replaying", "timed out; what was committed stays replayed"),
        }
    })
    .await
}

#[derive(serde::Deserialize, Default)]
pub(super) struct SwitchRequest {
    /// One step; without it the whole queue.
    step: Option<String>,
}

pub(super) async fn pause(
    State(c): State<Console>,
    headers: HeaderMap,
    body: Result<Json<SwitchRequest>, JsonRejection>,
) -> Response {
    switch(c, headers, body, true).await
}

pub(super) async fn resume(
    State(c): State<Console>,
    headers: HeaderMap,
    body: Result<Json<SwitchRequest>, JsonRejection>,
) -> Response {
    switch(c, headers, body, false).await
}

/// Flips the queue's or a step's pause switch, as `step-worker pause | resume [--step]` does.
async fn switch(
    c: Console,
    headers: HeaderMap,
    body: Result<Json<SwitchRequest>, JsonRejection>,
    pause: bool,
) -> Response {
    if let Err(refusal) = c.admit(&headers, true) {
        return *refusal;
    }
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let action = if pause { "pause" } else { "resume" };
    let step = req.step.filter(|s| !s.is_empty());
    if step
        .as_ref()
        .is_some_and(|s| s.chars().count() > crate::job::MAX_STEP_LEN)
    {
        let message = format!("a step name has at most {} characters", crate::job::MAX_STEP_LEN);
        return error(StatusCode::BAD_REQUEST, message);
    }
    let Some(queue) = c.app.queue.redis().cloned() else {
        return needs_redis(if pause { "pausing" } else { "resuming" });
    };
    let console = c.clone();
    c.on_io(async move {
        let work = async {
            match (&step, pause) {
                (Some(s), true) => queue.pause_step(s).await.map(|()| json!({ "step": s, "paused": true })),
                (Some(s), false) => queue
                    .resume_step(s)
                    .await
                    .map(|moved| json!({ "step": s, "paused": false, "released": moved })),
                (None, p) => queue.set_paused(p).await.map(|()| json!({ "paused": p })),
            }
        };
        match tokio::time::timeout(ACTION_TIMEOUT, work).await {
            Ok(Ok(body)) => {
                console.invalidate();
                let released = body.get("released").and_then(|v| v.as_u64());
                tracing::info!(
                    action,
                    ?step,
                    ?released,
                    "console: {} {}",
                    if pause { "paused" } else { "resumed" },
                    step.as_deref()
                        .map_or("the queue".to_owned(), |s| format!("step {s:?}"))
                );
                json(StatusCode::OK, body)
            }
            Ok(Err(e)) => {
                tracing::warn!(action, ?step, error = %e, "console: {action} failed");
                unavailable(action, e)
            }
            Err(_) => unavailable(action, "timed out"),
        }
    })
    .await
}

/// Cancels one job, as `DELETE /jobs/{id}` does (same answers), behind the console's POST rules.
pub(super) async fn cancel(State(c): State<Console>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(refusal) = c.admit(&headers, true) {
        return *refusal;
    }
    let console = c.clone();
    c.on_io(async move {
        let work = crate::http_jobs::cancel_answer(&console.app, id, "console");
        match tokio::time::timeout(ACTION_TIMEOUT, work).await {
            Ok(answer) => {
                console.invalidate();
                answer
            }
            Err(_) => unavailable("cancel", "timed out"),
        }
    })
    .await
}
