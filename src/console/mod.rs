//! The web console: `GET /` and its assets under `/console/` (plain HTML, JavaScript and CSS
//! embedded in the binary, no CDN, no build step), and the JSON endpoints under `/api/` that the
//! page calls. An operator on a platform whose Redis is private (Railway, Fly) gets what the CLI
//! shows and does, through the worker's own port.
//!
//! Rules:
//! - Every `/api/` endpoint is behind the `ADMIN_TOKEN` rule of `/jobs`
//!   ([`crate::http_jobs::authorize`]): a bearer token, disabled in production without one. The
//!   page sends it as an `Authorization` header, never a cookie, so another site cannot make a
//!   browser send it (no CSRF); every POST also passes [`crate::http_jobs::browser_safe`].
//! - The page inserts every id, step name and error as text (`textContent`), and its
//!   Content-Security-Policy allows no inline script, so a job id such as
//!   `<img src=x onerror=…>` stays text.
//! - Every action is logged with what it did (never the token).
//! - The console stays off the job path's CPU: its requests are paced on their own schedule
//!   ([`RATE_PER_SEC`]), answered on the low-priority HTTP thread, and the one read a polling page
//!   repeats ([`read::overview`]) is served from memory for [`read::OVERVIEW_REUSE`].

mod act;
mod assets;
mod read;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::http::AppState;

pub use assets::EMBEDDED_BYTES;

/// Console requests answered per second after [`BURST`]: a page load is about six requests and
/// the page polls two endpoints every few seconds, so 20 a second serves a handful of operators
/// while a flood of console requests costs no more than that.
pub const RATE_PER_SEC: u32 = 20;
/// Console requests answered at once before pacing starts: one page load.
pub const BURST: u32 = 20;

/// Whether a request path belongs to the console (and so to its pacing schedule).
pub fn is_console_path(path: &str) -> bool {
    path == "/" || path.starts_with("/console/") || path.starts_with("/api/")
}

/// The console's state: the worker's, and the overview last read.
#[derive(Clone)]
pub(crate) struct Console {
    app: AppState,
    overview: Arc<Mutex<Option<read::Snapshot>>>,
}

pub fn router(app: AppState) -> Router {
    let console = Console {
        app,
        overview: Arc::new(Mutex::new(None)),
    };
    Router::new()
        .route("/", get(assets::index))
        .route("/console/{file}", get(assets::file))
        .route("/api/overview", get(read::overview))
        .route("/api/dead-letters", get(read::dead_letters))
        .route("/api/jobs/{id}", get(read::job))
        .route("/api/jobs/{id}/cancel", post(act::cancel))
        .route("/api/dead-letters/replay", post(act::replay))
        .route("/api/pause", post(act::pause))
        .route("/api/resume", post(act::resume))
        .with_state(console)
        .layer(axum::middleware::map_response(common_headers))
}

/// Headers every console answer carries: no content sniffing (an answer holding a producer's
/// text is never read as HTML), no referrer, and no caching of what holds operators' data.
async fn common_headers(mut response: Response) -> Response {
    use axum::http::{HeaderValue, header};
    let h = response.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

impl Console {
    /// The `ADMIN_TOKEN` rule, and for a POST the browser-origin rule too.
    /// `Err` is the refusal to send (boxed, as in [`crate::http_jobs`]).
    fn admit(&self, headers: &HeaderMap, post: bool) -> Result<(), Box<Response>> {
        crate::http_jobs::authorize(&self.app, headers)?;
        if post {
            crate::http_jobs::browser_safe(headers)?;
        }
        Ok(())
    }

    /// Runs `work` on the worker's runtime (it uses Redis or Postgres), or answers 503 if that
    /// runtime is stopping.
    async fn on_io(&self, work: impl Future<Output = Response> + Send + 'static) -> Response {
        crate::http::or_stopping(self.app.on_io(work).await)
    }

    /// Forgets the cached overview: an action changed what it shows.
    fn invalidate(&self) {
        *self.overview.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A JSON error body, as `/jobs` answers.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    crate::http_jobs::error(status, message.into(), None)
}

/// The refusal for what needs the Redis queue (the memory queue has no pause switch and no
/// attempt counters to reset).
fn needs_redis(what: &str) -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        format!("{what} needs the Redis queue: this worker runs QUEUE_DRIVER=memory"),
    )
}

/// The refusal for what needs Postgres (the dead-letter queries are Postgres SQL).
fn needs_postgres(what: &str) -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        format!("{what} needs PostgreSQL: this worker's DATABASE_URL is a SQLite file"),
    )
}

/// A store or queue failure as the page shows it.
fn unavailable(what: &str, e: impl std::fmt::Display) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, format!("{what} failed: {e}"))
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}
