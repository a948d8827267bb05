//! The console in a real browser: headless Chromium, driven by `browser.mjs` (playwright-core)
//! against a worker started here, replays a dead letter the test filed and sees its job succeed.
//! `scripts/test` installs Chromium (`apt-get install chromium`) and the script's package
//! (`npm ci`); where Chromium cannot be installed it sets `STEP_WORKER_BROWSER_SKIP` to say why,
//! and only then does this test pass without a browser, saying so loudly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use step_worker::{Registry, StepError};

use crate::common::TestEnv;
use crate::{MARKUP_ID, TOKEN, WAIT};

/// The whole browser run: start, login, replay, a job run, two screenshots.
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// What is missing to run the browser test, if anything.
fn missing() -> Option<String> {
    if !Path::new(&chromium()).exists() {
        return Some(format!("no Chromium at {}", chromium()));
    }
    if !script_dir().join("node_modules/playwright-core").exists() {
        return Some("tests/console/node_modules has no playwright-core (npm ci)".to_owned());
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn console_in_headless_chromium_replays_a_dead_letter_and_cancels_a_waiting_job() {
    if let Some(what) = missing() {
        match std::env::var("STEP_WORKER_BROWSER_SKIP") {
            Ok(why) => {
                eprintln!(
                    "\n{0}\nSKIPPED: the console's browser test ({what}): {why}\n{0}\n",
                    "!".repeat(72)
                );
                return;
            }
            Err(_) => panic!(
                "{what}: run scripts/test (it installs Chromium and runs `npm ci` in tests/console), \
                 or set STEP_WORKER_BROWSER_SKIP=<reason> where Chromium cannot be installed"
            ),
        }
    }
    let env = TestEnv::new().await;
    // Fails on its first call, succeeds on the next: the first run files the dead letter, the
    // replay succeeds.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let registry = Registry::new().register("console.flaky", move |_ctx, _input: Value| {
        let call = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            match call {
                0 => Err(StepError::permanent(
                    "<script>alert(2)</script> refused on the first call",
                )),
                _ => Ok(json!({ "call": call + 1 })),
            }
        }
    });
    let worker = env.start_with(&[("ADMIN_TOKEN", TOKEN)], registry).await;
    env.push_job(MARKUP_ID, "console.flaky", json!({})).await;
    env.wait_count("the dead letter", "SELECT count(*) FROM step_dead_letters", 1, WAIT)
        .await;
    // Waits in the delayed set far longer than the test: the page cancels it.
    const CANCEL_ID: &str = "console-cancel-1";
    env.push(&json!({"id": CANCEL_ID, "step": "console.flaky", "delay_ms": 600_000}).to_string())
        .await;

    let shots = std::env::var("CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"));
    let run = tokio::process::Command::new("node")
        .arg(script_dir().join("browser.mjs"))
        .current_dir(script_dir())
        .env("CONSOLE_URL", format!("http://{}", worker.http_addr.unwrap()))
        .env("CONSOLE_TOKEN", TOKEN)
        .env("CONSOLE_JOB_ID", MARKUP_ID)
        .env("CONSOLE_CANCEL_ID", CANCEL_ID)
        .env("CONSOLE_SCREENSHOTS", &shots)
        .env("CHROMIUM", chromium())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BROWSER_DEADLINE, run)
        .await
        .expect("the browser run finished in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The script's checks and the screenshots' paths are part of this test's output.
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser run failed: {stdout}");

    let row = env.result(MARKUP_ID).await.expect("a result row");
    assert_eq!(
        (row.status.as_str(), row.output),
        ("succeeded", Some(json!({"call": 2})))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one failed call, one replayed call");
    assert_eq!(
        env.count("SELECT count(*) FROM step_dead_letters WHERE replayed_at IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        env.result(CANCEL_ID).await.expect("a cancelled row").status,
        "cancelled"
    );
    assert_eq!(env.delayed_len().await, 0, "the cancelled job left the delayed set");
    for name in ["1-dead-letter.png", "2-replayed-job-succeeded.png"] {
        let png = std::fs::read(shots.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
        assert!(stdout.contains(&format!("screenshot: {}", shots.join(name).display())));
    }
    worker.stop().await.unwrap();
}
