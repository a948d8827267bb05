//! `POST /jobs`: enqueue one job (a JSON object) or several (an array) over HTTP, validated against
//! the job contract exactly as `step-worker enqueue` validates them. Either every job is accepted
//! or none is. A request's W3C `traceparent` (and `tracestate`) header goes to the jobs that carry
//! no `traceparent` field of their own, so an instrumented producer's jobs join its trace with no
//! change to their bodies. `GET /jobs/{id}`: the job's result row, once it has one.
//! `DELETE /jobs/{id}`: cancel the job ([`crate::cancel`]). All are protected by `ADMIN_TOKEN`
//! (bearer); without a token they are open outside production (the quickstart) and disabled in
//! production.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::config::AppEnv;
use crate::http::AppState;
use crate::queue::PushError;

pub async fn enqueue(State(s): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(refusal) = authorize(&s, &headers) {
        return *refusal;
    }
    if let Err(refusal) = browser_safe(&headers) {
        return *refusal;
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not valid JSON: {e}"), None),
    };
    let jobs = match value {
        Value::Array(items) => items,
        other => vec![other],
    };
    let trace = request_trace(&headers);
    let mut payloads = Vec::with_capacity(jobs.len());
    let mut ids = Vec::with_capacity(jobs.len());
    // Index of each id's first job: a second job with the same id would run, but only the first
    // outcome is kept (the id is the result's primary key), so its output would vanish.
    let mut first = HashMap::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        match crate::admin::enqueue::prepare_with(&job.to_string(), std::time::Duration::ZERO, trace.as_ref()) {
            Ok(p) => {
                let id = job["id"].as_str().unwrap_or_default();
                if let Some(earlier) = first.insert(id, i) {
                    let message = format!("job {i} repeats the id {id:?} of job {earlier}: ids must be unique");
                    return error(StatusCode::BAD_REQUEST, message, Some(i));
                }
                ids.push(job["id"].clone());
                payloads.push(p);
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}"), Some(i)),
        }
    }
    match s.queue.push_many(&payloads).await {
        Ok(()) => {}
        // Full is the queue protecting the process, not a failure: it passes once jobs finish.
        Err(PushError::Full(full)) => return error(StatusCode::SERVICE_UNAVAILABLE, full.to_string(), None),
        Err(PushError::Redis(e)) => {
            s.metrics.redis_errors.with_label_values(&["enqueue"]).inc();
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the queue refused the jobs: {e}"),
                None,
            );
        }
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({ "enqueued": payloads.len(), "ids": ids })),
    )
        .into_response()
}

pub async fn result(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(refusal) = authorize(&s, &headers) {
        return *refusal;
    }
    // An id no job can have (NUL, too long) has no row; asking Postgres would only earn an
    // encoding error, counted as the store failing.
    if !crate::job::valid_id(&id) {
        return not_found(&id);
    }
    match s.store.result(&id).await {
        Ok(Some(r)) => {
            let output = r
                .output
                .as_deref()
                .map(|o| serde_json::from_str::<Value>(o).unwrap_or(json!(o)));
            let body = json!({
                "job_id": r.job_id,
                "status": r.status,
                "attempts": r.attempts,
                "output": output,
                "error": r.error,
                "finished_at": r.finished_at,
                "worker_id": r.worker_id,
            });
            (StatusCode::OK, Json(body)).into_response()
        }
        Ok(None) => not_found(&id),
        Err(e) => {
            s.metrics.postgres_errors.with_label_values(&["result"]).inc();
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the results store failed: {e}"),
                None,
            )
        }
    }
}

/// `DELETE /jobs/{id}`: 200 `{"job_id", "status": "cancelled", "recorded"}` when the job was
/// waiting (removed; `recorded` false if its row is left to a heartbeat because Postgres refused
/// it now); 202 `{"job_id", "status": "cancelling", "worker_id"}` when a worker holds it (it stops
/// within one heartbeat and writes the row); 404 when no job has the id; 409 `{"error",
/// "status"}` when it already finished; 503 when Redis or Postgres failed (nothing changed).
/// No `browser_safe` check: DELETE is not a method a page on another origin can send without a
/// CORS preflight, which this server never grants.
pub async fn cancel(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(refusal) = authorize(&s, &headers) {
        return *refusal;
    }
    cancel_answer(&s, id, "HTTP").await
}

/// Cancels job `id` on behalf of `via` (logged) and answers as `DELETE /jobs/{id}` documents;
/// the console's cancel action answers the same.
pub(crate) async fn cancel_answer(s: &AppState, id: String, via: &str) -> Response {
    use crate::cancel::CancelError;
    if !crate::job::valid_id(&id) {
        return error(StatusCode::NOT_FOUND, format!("no job {:?}", shown(&id)), None);
    }
    let by = s.lease.identity().wid.clone();
    let target = crate::queue::CancelTarget::Id(id.clone());
    match crate::cancel::cancel(&s.queue, &s.store, &target, &by).await {
        Ok(report) => {
            tracing::info!(job.id = %id, via, removed = report.removed.len(), running = report.running.len(), "job cancelled");
            match report.running.first() {
                Some((_, worker)) => (
                    StatusCode::ACCEPTED,
                    Json(json!({ "job_id": id, "status": "cancelling", "worker_id": worker })),
                )
                    .into_response(),
                None => (
                    StatusCode::OK,
                    Json(json!({ "job_id": id, "status": "cancelled", "recorded": report.recorded })),
                )
                    .into_response(),
            }
        }
        Err(e) => {
            let code = match &e {
                CancelError::Finished { .. } => StatusCode::CONFLICT,
                CancelError::NotFound(_) => StatusCode::NOT_FOUND,
                CancelError::Queue(_) => {
                    s.metrics.redis_errors.with_label_values(&["cancel"]).inc();
                    StatusCode::SERVICE_UNAVAILABLE
                }
                CancelError::Store(_) => {
                    s.metrics.postgres_errors.with_label_values(&["cancel"]).inc();
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            let mut body = json!({ "error": e.to_string() });
            if let CancelError::Finished { status, .. } = &e {
                body["status"] = json!(status);
            }
            (code, Json(body)).into_response()
        }
    }
}

/// An id as it may be echoed back: bounded.
fn shown(id: &str) -> String {
    id.chars().take(crate::job::MAX_ID_LEN).collect()
}

/// The request's trace context headers, when the `traceparent` is valid. An invalid one is
/// ignored, as the specification asks of a receiver: it comes from the producer's tracing
/// library, and must not cost its jobs (a `tracestate` that does not parse is left out alone).
fn request_trace(headers: &HeaderMap) -> Option<crate::trace::TraceHeaders> {
    use crate::trace::context::{headers as trace_headers, parse_traceparent, parse_tracestate};
    let text = headers.get("traceparent")?.to_str().ok()?;
    let (trace_id, span_id, flags) = parse_traceparent(text)?;
    let state = headers
        .get("tracestate")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_tracestate)
        .unwrap_or_default();
    Some(trace_headers(trace_id, span_id, flags, &state))
}

/// The `ADMIN_TOKEN` rule of every admin endpoint (`/jobs` and the console's `/api`). `Err` is
/// the refusal to send (boxed: a response is large and refusals are rare).
pub(crate) fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &s.config.admin_token else {
        return match s.config.app_env {
            AppEnv::Production => Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "the admin endpoints (/jobs, the console's /api) are disabled in production: set ADMIN_TOKEN to enable them".into(),
                None,
            ))),
            _ => Ok(()),
        };
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match given {
        Some(given) if same(given.as_bytes(), token.expose().as_bytes()) => Ok(()),
        _ => Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "a valid `Authorization: Bearer <ADMIN_TOKEN>` is required".into(),
            None,
        ))),
    }
}

/// Refuses what a web page on another origin can make a browser send. A page can POST
/// `text/plain` or a form anywhere without asking; `application/json` needs a CORS preflight,
/// which this server never grants. The origin headers catch the rest. Every admin POST (the
/// console's actions too) passes here, so even without a token (outside production) no other
/// site's page can drive them.
pub(crate) fn browser_safe(headers: &HeaderMap) -> Result<(), Box<Response>> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let json = text("content-type").and_then(|v| v.split(';').next()).map(str::trim);
    if !json.is_some_and(|v| v.eq_ignore_ascii_case("application/json")) {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "this POST takes a JSON body with `Content-Type: application/json`".into(),
            None,
        )));
    }
    let cross_site = matches!(text("sec-fetch-site"), Some("cross-site" | "same-site"));
    let foreign_origin = text("origin").is_some_and(|origin| {
        let origin_host = origin.split_once("://").map(|(_, host)| host.trim_end_matches('/'));
        origin_host.is_none() || origin_host != text("host")
    });
    if cross_site || foreign_origin {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "admin POSTs refuse requests a web page on another origin made a browser send".into(),
            None,
        )));
    }
    Ok(())
}

/// The credentials of `Bearer <token>`. The scheme is case-insensitive (RFC 9110 §11.1), and one
/// or more spaces may follow it.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

fn not_found(id: &str) -> Response {
    let shown = shown(id);
    error(
        StatusCode::NOT_FOUND,
        format!("no result for job {shown:?} yet: it is queued, running, waiting for a retry, or unknown"),
        None,
    )
}

/// Compares in time independent of where the first difference is, so the token cannot be
/// guessed byte by byte from response times.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn error(status: StatusCode, message: String, index: Option<usize>) -> Response {
    let mut body = json!({ "error": message });
    if let Some(i) = index {
        body["index"] = json!(i);
    }
    (status, Json(body)).into_response()
}
