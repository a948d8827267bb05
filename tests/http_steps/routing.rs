//! Where a step goes and with which credentials: the URL template, Supabase, STEP_ROUTES,
//! native precedence, step-name validation and the request signature.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;

use super::common::TestEnv;
use super::server::{Recorded, StepServer};
use super::{WAIT, start};

#[tokio::test]
async fn step_name_that_tries_to_escape_the_url_template_is_dead_lettered_and_never_requested() {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    let worker = start(&env, &server, &[]).await;
    let names = [
        "../admin",
        "a/../../b",
        "x?y=1",
        "x#y",
        "%2e%2e",
        ".env",
        "user@evil.example",
        "a..b",
        "http://evil.example/x",
    ];
    for (n, name) in names.iter().enumerate() {
        env.push_job(&format!("escape-{n}"), name, json!(null)).await;
    }
    for (n, name) in names.iter().enumerate() {
        let row = env.wait_result(&format!("escape-{n}"), WAIT).await;
        assert_eq!((row.status.as_str(), row.attempts), ("dead", 1), "{name}");
    }
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), names.len());
    for letter in &letters {
        assert_eq!(letter.reason, "permanent_failure");
        assert!(letter.error.as_deref().unwrap().contains("cannot be sent over HTTP"));
    }
    // The endpoint is reachable: a valid name gets through, and it is the only request made.
    env.push_job("valid-1", "ok.step", json!(null)).await;
    assert_eq!(env.wait_result("valid-1", WAIT).await.status, "succeeded");
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/steps/ok.step"]);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn supabase_edge_function_is_called_with_the_service_role_key() {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    let origin = server.origin();
    let worker = env
        .start(&[
            ("SUPABASE_URL", origin.as_str()),
            ("SUPABASE_SERVICE_ROLE_KEY", "test-service-role-key"),
        ])
        .await;
    env.push_job("edge-1", "hello-world", json!({"name": "edge"})).await;
    let row = env.wait_result("edge-1", WAIT).await;
    assert_eq!(row.output, Some(json!({"served": "/functions/v1/hello-world"})));
    let r = &server.requests()[0];
    assert_eq!(r.header("authorization"), Some("Bearer test-service-role-key"));
    assert_eq!(r.json()["input"], json!({"name": "edge"}));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn step_routes_send_a_step_elsewhere_and_the_supabase_key_stays_at_its_origin() {
    let env = TestEnv::new().await;
    let (project, other) = (StepServer::start().await, StepServer::start().await);
    let routes = format!("resize={}", other.url("/run"));
    let worker = start(
        &env,
        &project,
        &[
            ("STEP_ROUTES", routes.as_str()),
            ("SUPABASE_URL", project.origin().as_str()),
            ("SUPABASE_SERVICE_ROLE_KEY", "test-service-role-key"),
            ("STEP_HANDLER_TOKEN", "test-token"),
        ],
    )
    .await;
    env.push_job("resize-1", "resize", json!(null)).await;
    env.push_job("email-1", "email", json!(null)).await;
    assert_eq!(
        env.wait_result("resize-1", WAIT).await.output,
        Some(json!({"served": "/run"}))
    );
    assert_eq!(
        env.wait_result("email-1", WAIT).await.output,
        Some(json!({"served": "/steps/email"}))
    );
    let routed = other.requests();
    assert_eq!(routed.len(), 1);
    assert_eq!(routed[0].header("authorization"), Some("Bearer test-token"));
    let templated = project.requests();
    assert_eq!(templated.len(), 1);
    assert_eq!(
        templated[0].header("authorization"),
        Some("Bearer test-service-role-key")
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn native_handler_takes_precedence_over_the_http_fallback() {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    let registry = step_worker::Registry::new().register(
        "math.double",
        |_ctx: step_worker::StepContext, input: serde_json::Value| async move {
            Ok(json!({ "double": input["n"].as_i64().unwrap_or(0) * 2 }))
        },
    );
    // The step is routed explicitly too: the native handler still wins.
    let routes = format!("math.double={}", server.url("/math"));
    let template = server.url("/steps/{step}");
    let vars = [
        ("STEP_HANDLER_URL", template.as_str()),
        ("STEP_ROUTES", routes.as_str()),
    ];
    let worker = env.start_with(&vars, registry).await;
    env.push_job("native-1", "math.double", json!({"n": 21})).await;
    env.push_job("remote-1", "remote.step", json!(null)).await;
    assert_eq!(
        env.wait_result("native-1", WAIT).await.output,
        Some(json!({"double": 42}))
    );
    assert_eq!(env.wait_result("remote-1", WAIT).await.status, "succeeded");
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/steps/remote.step"]);
    worker.stop().await.unwrap();
}

const SECRET: &str = "test-signing-secret-0123456789";

/// The verification recipe of docs/http-steps.md: HMAC-SHA256 over `"{timestamp}.{body}"`,
/// compared in constant time, with a timestamp no older than five minutes.
fn verify(secret: &str, request: &Recorded, body: &[u8]) -> bool {
    let (Some(timestamp), Some(signature)) = (request.header("x-step-timestamp"), request.header("x-step-signature"))
    else {
        return false;
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let fresh = timestamp.parse::<u64>().is_ok_and(|t| now.abs_diff(t) <= 300);
    let Some(expected) = signature.strip_prefix("v1=").and_then(decode_hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    fresh && mac.verify_slice(&expected).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

#[tokio::test]
async fn signed_request_verifies_with_the_documented_recipe() {
    let (env, server) = (TestEnv::new().await, StepServer::start().await);
    let worker = start(&env, &server, &[("STEP_SIGNING_SECRET", SECRET)]).await;
    env.push_job("signed-1", "signed", json!({"amount": 1})).await;
    env.wait_result("signed-1", WAIT).await;
    let r = &server.requests()[0];
    assert!(verify(SECRET, r, &r.body), "the signature verifies");
    assert!(
        !verify("another-secret-0123456789", r, &r.body),
        "only with the right secret"
    );
    let mut tampered = r.body.to_vec();
    tampered.extend_from_slice(b" ");
    assert!(!verify(SECRET, r, &tampered), "and only for the body that was sent");
    worker.stop().await.unwrap();
}
