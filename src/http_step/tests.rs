use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::json;

use super::header_value;
use super::response::{Class, cut, is_retryable, output, retry_after};
use super::route::{RouteError, Routes, UrlTemplate, check_step_name, http_url};

#[test]
fn step_names_of_the_documented_alphabet_are_accepted() {
    for name in ["email.send", "resize", "a-b_c.d", "V2", "x.y.z", "a.", &"n".repeat(200)] {
        assert_eq!(check_step_name(name), Ok(()), "{name}");
    }
}

#[test]
fn step_names_that_could_leave_their_path_segment_are_rejected() {
    for name in [
        "",
        "../admin",
        "..",
        ".",
        ".hidden",
        "a..b",
        "a/b",
        "a\\b",
        "x?y=1",
        "x#frag",
        "%2e%2e",
        "user@evil.example",
        "host:8080",
        "sp ace",
        "tab\t",
        "é",
        &"n".repeat(201),
    ] {
        assert!(check_step_name(name).is_err(), "{name:?} was accepted");
    }
}

#[test]
fn template_must_carry_the_placeholder_after_the_host() {
    assert!(UrlTemplate::parse("https://app.internal/steps/{step}").is_ok());
    assert!(UrlTemplate::parse("http://127.0.0.1:8080/run?step={step}").is_ok());
    for bad in [
        "https://app.internal/steps",
        "https://{step}.internal/run",
        "https://app.internal{step}/run",
        "https://app.internal?s={step}",
        "ftp://app.internal/{step}",
        "/steps/{step}",
        "not a url {step}",
    ] {
        assert!(UrlTemplate::parse(bad).is_err(), "{bad} was accepted");
    }
}

#[test]
fn routes_prefer_overrides_then_the_template() {
    let routes = Routes {
        template: Some(UrlTemplate::parse("https://app.internal/steps/{step}").unwrap()),
        overrides: [("resize".to_owned(), http_url("https://img.internal/run").unwrap())].into(),
    };
    assert_eq!(routes.resolve("resize").unwrap().as_str(), "https://img.internal/run");
    assert_eq!(
        routes.resolve("email.send").unwrap().as_str(),
        "https://app.internal/steps/email.send"
    );
    assert!(matches!(routes.resolve("../x"), Err(RouteError::InvalidName(_))));
}

#[test]
fn overrides_alone_route_only_their_own_steps() {
    let routes = Routes {
        template: None,
        overrides: [("resize".to_owned(), http_url("https://img.internal/run").unwrap())].into(),
    };
    assert!(routes.resolve("resize").is_ok());
    assert_eq!(routes.resolve("other"), Err(RouteError::NoRoute("other".to_owned())));
}

#[test]
fn supabase_template_points_at_the_edge_functions() {
    let project = http_url("https://abcdefgh.supabase.co/").unwrap();
    let routes = Routes {
        template: Some(UrlTemplate::for_supabase(&project)),
        overrides: Default::default(),
    };
    assert_eq!(
        routes.resolve("hello-world").unwrap().as_str(),
        "https://abcdefgh.supabase.co/functions/v1/hello-world"
    );
}

#[test]
fn only_throttling_timeouts_and_server_errors_are_retryable() {
    for code in [408, 425, 429, 500, 502, 503, 504] {
        assert!(is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
    }
    for code in [301, 400, 401, 403, 404, 409, 413, 422] {
        assert!(!is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
    }
}

#[test]
fn retry_after_accepts_seconds_and_http_dates() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let headers = |v: &str| HeaderMap::from_iter([(RETRY_AFTER, HeaderValue::from_str(v).unwrap())]);
    assert_eq!(retry_after(&headers("120"), now), Some(Duration::from_secs(120)));
    let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
    assert_eq!(retry_after(&headers(&later), now), Some(Duration::from_secs(30)));
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
    assert_eq!(retry_after(&headers(&earlier), now), Some(Duration::ZERO));
    assert_eq!(retry_after(&headers("soon"), now), None);
    assert_eq!(retry_after(&HeaderMap::new(), now), None);
}

#[test]
fn answer_body_becomes_json_a_string_or_null() {
    assert_eq!(output(br#"{"ok":true}"#), json!({"ok": true}));
    assert_eq!(output(b"42"), json!(42));
    assert_eq!(output(b"plain text"), json!("plain text"));
    assert_eq!(output(b""), json!(null));
    assert_eq!(output(b" \n"), json!(null));
}

#[test]
fn excerpts_are_cut_at_a_character_boundary() {
    assert_eq!(cut("  short  ", 10), "short");
    assert_eq!(cut("ééé", 3), "é…");
}

#[test]
fn status_classes_and_failures_have_distinct_labels() {
    assert_eq!(Class::Status(204).label(), "2xx");
    assert_eq!(Class::Status(429).label(), "4xx");
    assert_eq!(Class::Status(503).label(), "5xx");
    assert_eq!(Class::TooLarge.label(), "too_large");
    assert_eq!(Class::ConnectError.label(), "connect_error");
}

#[test]
fn ids_become_header_values_without_collisions() {
    assert_eq!(header_value("job-1:abc"), "job-1:abc");
    assert_eq!(header_value("a b"), "a%20b");
    assert_eq!(header_value("é"), "%C3%A9");
    assert_ne!(header_value("%C3%A9"), header_value("é"));
    assert_eq!(header_value("line\nbreak"), "line%0Abreak");
}
