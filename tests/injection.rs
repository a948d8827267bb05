//! Text a producer controls (job ids, step errors) cannot forge a line or drive a terminal in
//! `dlq list` / `dlq show`, nor write Slack's control syntax (`<!channel>`, disguised links).

mod common;

use std::time::Duration;

use common::TestEnv;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const ID: &str = "evil\n2026-01-01 fake line\u{1b}[2J<!channel>";

async fn cli(env: &TestEnv, args: &[&str]) -> String {
    let out = env.cli(args).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn hostile_ids_and_errors_are_escaped_in_the_terminal_and_in_slack() {
    let (addr, hook) = common::capture::start().await;
    let env = TestEnv::new().await;
    let url = format!("http://{addr}/hook");
    let worker = env.start(&[("SLACK_WEBHOOK", url.as_str())]).await;
    let input = json!({"permanent": true, "message": "line one\nERROR forged\u{1b}[31m <https://evil.example|click>"});
    env.push_job(ID, "builtin.fail", input).await;
    env.wait_result(ID, WAIT).await;

    let list = cli(&env, &["dlq", "list"]).await;
    // A header, one row, the count: a newline in the id or the error would add lines.
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains(r"evil\n2026"), "{list}");
    let id = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let show = cli(&env, &["dlq", "show", &id]).await;
    assert!(show.contains(r"line one\nERROR forged\u{1b}[31m"), "{show}");
    for out in [&list, &show] {
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(
            !out.lines()
                .any(|l| l.starts_with("ERROR forged") || l.starts_with("2026-01-01")),
            "{out}"
        );
    }

    common::wait_for("the Slack message", WAIT, || async { !hook.bodies().is_empty() }).await;
    let (_, body) = &hook.bodies()[0];
    let text = serde_json::from_str::<serde_json::Value>(body).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !text.contains("<!channel>") && text.contains("&lt;!channel&gt;"),
        "{text}"
    );
    assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
    worker.stop().await.unwrap();
}
