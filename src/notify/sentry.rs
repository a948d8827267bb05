//! Sentry: initialised once in `main` (its guard flushes queued events on exit), fed by the
//! tracing layer for internal errors and by [`report_dead_letter`] for dead letters. Each report
//! gets a hub of its own, so concurrent jobs never mix their tags. Every event is scrubbed of
//! credentials and personal data before it leaves.

use std::sync::Arc;
use std::time::Duration;

use sentry::protocol::{Event, Level};

use crate::config::Config;
use crate::redact::Redactor;
use crate::store::DeadLetterRecord;

/// How long exit waits for queued events to be sent.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(2);

/// Initialises Sentry when `SENTRY_DSN` is set; keep the guard alive until exit.
pub fn init(config: &Config) -> Option<sentry::ClientInitGuard> {
    let dsn = config.notify.sentry_dsn.as_ref()?;
    let redactor = Redactor::new(&config.notify.pii_keys);
    let environment = format!("{:?}", config.app_env).to_lowercase();
    let options = sentry::ClientOptions::new()
        .dsn(dsn.expose())
        .maybe_release(sentry::release_name!())
        .environment(environment)
        .send_default_pii(false)
        .shutdown_timeout(FLUSH_ON_EXIT)
        .before_send(move |event| Some(scrub(event, &redactor)));
    Some(sentry::init(options))
}

/// Reports a dead letter with the job's identity as tags and its input, redacted, as context.
pub fn report_dead_letter(letter: &DeadLetterRecord, redactor: &Redactor) {
    let hub = Arc::new(sentry::Hub::new_from_top(sentry::Hub::current()));
    let input = serde_json::from_slice::<serde_json::Value>(&letter.payload)
        .ok()
        .and_then(|v| v.get("input").map(|i| redactor.redact(i)));
    hub.configure_scope(|scope| {
        scope.set_tag("job.id", letter.job_id.as_deref().unwrap_or("-"));
        scope.set_tag("job.step", letter.step.as_deref().unwrap_or("-"));
        scope.set_tag("run.id", letter.run_id.as_deref().unwrap_or("-"));
        scope.set_tag("attempt", letter.attempts);
        scope.set_tag("worker", &letter.worker_id);
        scope.set_tag("reason", &letter.reason);
        if let Some(input) = input {
            scope.set_extra("input", input);
        }
    });
    let message = format!(
        "job dead-lettered ({}): {}",
        letter.reason,
        letter.error.as_deref().unwrap_or("-")
    );
    hub.capture_message(&message, Level::Error);
}

/// Masks credentials and personal data in messages, exception values, breadcrumbs and extra
/// context, and bounds the texts as stored errors are bounded.
fn scrub(mut event: Event<'static>, redactor: &Redactor) -> Event<'static> {
    let text = |t: &str| redactor.error_text(t, &serde_json::Value::Null);
    event.message = event.message.map(|m| text(&m));
    for exception in event.exception.values.iter_mut() {
        exception.value = exception.value.as_deref().map(text);
    }
    redact_map(&mut event.extra, redactor);
    for crumb in event.breadcrumbs.values.iter_mut() {
        crumb.message = crumb.message.as_deref().map(text);
        redact_map(&mut crumb.data, redactor);
    }
    if let Some(request) = event.request.as_mut() {
        request
            .headers
            .retain(|k, _| !redactor.is_sensitive(k) && !k.eq_ignore_ascii_case("cookie"));
    }
    event
}

/// Masks `map` as one JSON object, so a sensitive key at its top level is masked too, not only
/// the ones nested under its values.
fn redact_map(map: &mut sentry::protocol::Map<String, serde_json::Value>, redactor: &Redactor) {
    let object = serde_json::Value::Object(std::mem::take(map).into_iter().collect());
    if let serde_json::Value::Object(masked) = redactor.redact(&object) {
        *map = masked.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use sentry::protocol::{Breadcrumb, Event, Exception, Map, Request};
    use serde_json::json;

    use super::scrub;
    use crate::redact::Redactor;

    /// Everything an event carries as text passes the same masking as stored errors, wherever the
    /// tracing layer or a panic put it.
    #[test]
    fn messages_exceptions_breadcrumbs_extra_and_headers_are_masked() {
        let redactor = Redactor::new("password,token,email");
        let mut crumb_data = Map::new();
        crumb_data.insert("token".to_owned(), json!("tok-123"));
        crumb_data.insert("note".to_owned(), json!({"email": "b@example.com", "kept": "visible"}));
        let mut extra = Map::new();
        extra.insert("input".to_owned(), json!({"password": "hunter2", "city": "Lyon"}));
        extra.insert("api_token".to_owned(), json!("tok-789"));
        let mut headers = Map::new();
        headers.insert("Authorization-Token".to_owned(), "Bearer abc".to_owned());
        headers.insert("Cookie".to_owned(), "session=xyz".to_owned());
        headers.insert("Accept".to_owned(), "*/*".to_owned());
        let event = Event {
            message: Some("connect to postgres://app:s3cret@db:5432/x failed for a@example.com".to_owned()),
            exception: vec![Exception {
                ty: "Error".to_owned(),
                value: Some("Authorization: Bearer eyJhbGciOi.payload.sig".to_owned()),
                ..Default::default()
            }]
            .into(),
            breadcrumbs: vec![Breadcrumb {
                message: Some("GET https://api.example.com/?token=tok-456&page=2".to_owned()),
                data: crumb_data,
                ..Default::default()
            }]
            .into(),
            extra,
            request: Some(Request {
                headers,
                ..Default::default()
            }),
            ..Default::default()
        };

        let scrubbed = scrub(event, &redactor);
        let text = serde_json::to_string(&scrubbed).unwrap();
        for secret in [
            "s3cret",
            "a@example.com",
            "eyJhbGciOi",
            "tok-456",
            "tok-123",
            "tok-789",
            "b@example.com",
            "hunter2",
            "Bearer abc",
            "session=xyz",
        ] {
            assert!(!text.contains(secret), "{secret} left in {text}");
        }
        for kept in ["postgres://app:", "page=2", "visible", "Lyon", "*/*"] {
            assert!(text.contains(kept), "{kept} masked too in {text}");
        }
    }
}
