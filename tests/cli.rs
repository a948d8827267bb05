//! The binary's subcommands: configuration errors, `config check`, `migrate` up/down/up.

mod common;

use common::{TestEnv, step_worker};

#[test]
fn invalid_configuration_exits_non_zero_with_one_line_naming_the_variable() {
    for (var, value, expected) in [
        ("WORKER_CONCURRENCY", "many", "an integer from 1 to 10000"),
        ("STEP_TIMEOUT_MS", "-5", "an integer from 1 to 86400000"),
        ("HEALTH_CHECK_ENABLED", "sometimes", "true or false"),
        (
            "REDIS_URL",
            "localhost:6379",
            "a URL starting with redis:// or rediss://",
        ),
        // Parsed by the client only at the first connection, which was retried forever.
        ("REDIS_URL", "redis://:pa/ss@cache.example:6379", "percent-encode"),
        ("DATABASE_URL", "postgres://app@db.example:port/app", "percent-encode"),
    ] {
        let out = step_worker(&[(var, value)], &["run"]);
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var) && stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn production_without_connection_urls_is_refused() {
    let out = step_worker(&[("APP_ENV", "production")], &["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("REDIS_URL"));
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_redacted() {
    let out = step_worker(
        &[
            ("REDIS_URL", "rediss://default:s3cr3t-token@cache.example:6379"),
            ("DATABASE_URL", "postgres://app:pa55@db.example/app"),
        ],
        &["config", "check"],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("REDIS_URL=rediss://default:***@cache.example:6379"),
        "{stdout}"
    );
    assert!(
        stdout.contains("DATABASE_URL=postgres://app:***@db.example/app"),
        "{stdout}"
    );
    assert!(stdout.contains("WORKER_CONCURRENCY=10"));
    assert!(!stdout.contains("s3cr3t") && !stdout.contains("pa55"));
}

#[tokio::test]
async fn migrations_apply_revert_and_apply_again_on_a_fresh_database() {
    let env = TestEnv::new().await;
    let vars = [("DATABASE_URL", env.database_url.as_str())];
    let tables = "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('step_results','step_attempts','step_dead_letters')";
    for (args, expected) in [
        (&["migrate"][..], 3),
        (&["migrate", "--revert"][..], 0),
        (&["migrate"][..], 3),
    ] {
        let out = step_worker(&vars, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(env.count(tables).await, expected, "{args:?}");
    }
}

#[tokio::test]
async fn healthcheck_subcommand_fails_when_nothing_listens() {
    let port = common::servers::free_port().to_string();
    let out = step_worker(&[("HEALTH_CHECK_PORT", port.as_str())], &["healthcheck"]);
    assert!(!out.status.success());
}

#[test]
fn healthcheck_succeeds_without_probing_when_the_endpoint_is_switched_off() {
    for (var, value) in [("HEALTH_CHECK_ENABLED", "false"), ("HEALTH_CHECK_PORT", "0")] {
        let out = step_worker(&[(var, value)], &["healthcheck"]);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "{var}={value}: {stdout}");
        assert!(stdout.contains(var) && stdout.contains("nothing to probe"), "{stdout}");
    }
    // An explicit --url is always probed.
    let port = common::servers::free_port().to_string();
    let url = format!("http://127.0.0.1:{port}/health");
    let out = step_worker(&[("HEALTH_CHECK_ENABLED", "false")], &["healthcheck", "--url", &url]);
    assert_eq!(out.status.code(), Some(1));
}

/// `step-worker stats | head`: when the reader goes away, a command ends quietly (SIGPIPE), not
/// with a panic and a backtrace about a broken pipe.
#[test]
fn a_command_whose_reader_goes_away_ends_without_a_panic() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_step-worker"))
        .env_clear()
        .env("APP_ENV", "development")
        .args(["config", "check"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the command has written a line: its first write meets a broken pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}
