//! The console's page, embedded at compile time: no file is read at run time, nothing comes from
//! a CDN (many deployments have no internet egress), and `cargo build` needs no front-end build.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("static/index.html");
const SCRIPT: &str = include_str!("static/console.js");
const STYLE: &str = include_str!("static/console.css");

/// What the console adds to the binary, in bytes (README and docs/console.md state it).
pub const EMBEDDED_BYTES: usize = INDEX.len() + SCRIPT.len() + STYLE.len();
/// The console ships in every binary, used or not: it stays small, or the build fails.
const BUDGET_BYTES: usize = 40 * 1024;
const _: () = assert!(EMBEDDED_BYTES < BUDGET_BYTES, "the embedded console outgrew its budget");

/// Only the page's own script and style run, and it talks to this origin alone: even text that
/// slipped into the page as HTML could run nothing (no inline script, no event attributes), and
/// no other site may frame the page to trick a click.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(super) async fn index() -> Response {
    serve(INDEX, "text/html; charset=utf-8")
}

pub(super) async fn file(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "console.js" => serve(SCRIPT, "text/javascript; charset=utf-8"),
        "console.css" => serve(STYLE, "text/css; charset=utf-8"),
        _ => (StatusCode::NOT_FOUND, "no such console file").into_response(),
    }
}

fn serve(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Revalidated each load: a new version of the worker serves a new page at the same address.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Producers' text (ids, step names, errors) reaches the page only as text: the script has
    /// no way to parse a string as HTML, and the page has no inline script or handler.
    #[test]
    fn the_page_never_parses_text_as_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!SCRIPT.contains(sink), "console.js uses {sink}");
        }
        assert!(SCRIPT.contains("textContent"));
        let lower = INDEX.to_ascii_lowercase();
        let handler = lower.match_indices(" on").any(|(i, _)| {
            let rest = &lower[i + 3..];
            let name = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_alphabetic()).len();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(
            !lower.contains("<script>") && !handler,
            "inline script or handler in index.html"
        );
        assert!(
            !lower.contains("http://") && !lower.contains("https://"),
            "index.html loads from elsewhere"
        );
    }
}
