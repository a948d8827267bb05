//! The deploy files agree with the code: each platform gives a stopping worker more time than
//! `SHUTDOWN_TIMEOUT_MS` plus the settling that follows it, checks `/health` on the port the
//! worker listens on, and migrates before a release starts. Defaults come from
//! [`Config::from_vars`], so changing a default in the code without the deploy files fails here.
//!
//! No network and no servers: these tests only read files in the repository.

use std::path::Path;
use std::time::Duration;

use step_worker::Config;
use toml::{Table, Value};

/// After `SHUTDOWN_TIMEOUT_MS` the drain still makes three waits of at most 5 s each
/// (`SETTLE_GRACE` in src/worker.rs: interrupted steps settling, step tasks ending, the pipeline
/// persisting), then hands back leftover jobs and deregisters. A kill before that leaves the jobs
/// to be recovered only after `WORKER_DEADLINE_MS`.
const SETTLE_MARGIN: Duration = Duration::from_secs(15);

/// Fly's documented maximum for `kill_timeout`.
const FLY_MAX_KILL_TIMEOUT_SECS: i64 = 300;

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn read_toml(name: &str) -> Table {
    read(name)
        .parse::<Table>()
        .unwrap_or_else(|e| panic!("{name} is not valid TOML: {e}"))
}

fn table<'a>(parent: &'a Table, key: &str, file: &str) -> &'a Table {
    parent
        .get(key)
        .and_then(Value::as_table)
        .unwrap_or_else(|| panic!("{file}: [{key}] is missing or not a table"))
}

fn integer(parent: &Table, key: &str, file: &str) -> i64 {
    match parent.get(key) {
        Some(Value::Integer(n)) => *n,
        Some(other) => panic!("{file}: {key} must be a plain number of seconds, got {other:?}"),
        None => panic!("{file}: {key} is missing"),
    }
}

fn string<'a>(parent: &'a Table, key: &str, file: &str) -> &'a str {
    parent
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{file}: {key} is missing or not a string"))
}

/// The configuration a deployed worker gets from `vars` plus the secrets every deploy sets
/// outside these files (stand-ins here, without credentials: only their presence matters).
fn deployed_config(vars: Vec<(String, String)>) -> Config {
    let secrets = [
        ("REDIS_URL", "rediss://redis.invalid:6379"),
        ("DATABASE_URL", "postgres://worker@db.invalid:5432/app"),
    ];
    let all = secrets
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain(vars);
    Config::from_vars(all).expect("the deploy file's environment is a valid configuration")
}

/// Fly's `[env]` as `(NAME, value)` pairs.
fn fly_env(fly: &Table) -> Vec<(String, String)> {
    table(fly, "env", "fly.toml")
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("fly.toml: [env] {k} must be a string"));
            (k.clone(), v.to_owned())
        })
        .collect()
}

fn assert_drain_covers_shutdown(file: &str, key: &str, seconds: i64, config: &Config) {
    let needed = config.shutdown_timeout + SETTLE_MARGIN;
    assert!(
        Duration::from_secs(seconds.max(0) as u64) >= needed,
        "{file}: {key} = {seconds} s is shorter than SHUTDOWN_TIMEOUT_MS ({} ms) + {} s of settling; \
         raise it to at least {} s",
        config.shutdown_timeout.as_millis(),
        SETTLE_MARGIN.as_secs(),
        needed.as_secs_f64().ceil()
    );
}

/// The image's `ENTRYPOINT`, parsed from its exec (JSON array) form.
fn dockerfile_entrypoint() -> Vec<String> {
    let dockerfile = read("Dockerfile");
    let line = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ENTRYPOINT "))
        .expect("Dockerfile has an ENTRYPOINT");
    let array = line.trim();
    assert!(
        array.starts_with('[') && array.ends_with(']'),
        "Dockerfile: ENTRYPOINT must be in exec form so the binary is PID 1 and receives SIGTERM: {array}"
    );
    array[1..array.len() - 1]
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .collect()
}

#[test]
fn railway_drains_longer_than_the_shutdown_timeout_plus_settling() {
    let railway = read_toml("railway.toml");
    let deploy = table(&railway, "deploy", "railway.toml");
    let draining = integer(deploy, "drainingSeconds", "railway.toml");
    // railway.toml cannot set variables: the worker runs on the code's default unless the
    // operator overrides SHUTDOWN_TIMEOUT_MS in Railway's variables (docs/deploy.md says to
    // raise drainingSeconds with it).
    let config = deployed_config(Vec::new());
    assert_drain_covers_shutdown("railway.toml", "drainingSeconds", draining, &config);
}

#[test]
fn fly_sends_sigterm_and_waits_longer_than_the_shutdown_timeout_plus_settling() {
    let fly = read_toml("fly.toml");
    assert_eq!(
        string(&fly, "kill_signal", "fly.toml"),
        "SIGTERM",
        "fly.toml: kill_signal must be SIGTERM (Fly's default is SIGINT)"
    );
    let kill_timeout = integer(&fly, "kill_timeout", "fly.toml");
    assert!(
        kill_timeout <= FLY_MAX_KILL_TIMEOUT_SECS,
        "fly.toml: kill_timeout = {kill_timeout} exceeds Fly's maximum of {FLY_MAX_KILL_TIMEOUT_SECS}"
    );
    // A SHUTDOWN_TIMEOUT_MS set in [env] counts; otherwise the code's default does.
    let config = deployed_config(fly_env(&fly));
    assert_drain_covers_shutdown("fly.toml", "kill_timeout", kill_timeout, &config);
}

#[test]
fn fly_checks_and_metrics_use_the_port_the_worker_listens_on() {
    let fly = read_toml("fly.toml");
    let config = deployed_config(fly_env(&fly));
    assert!(
        config.health_check_enabled,
        "fly.toml: [env] disables the health endpoints"
    );
    let port = i64::from(config.health_check_port);

    let checks = table(&fly, "checks", "fly.toml");
    assert!(!checks.is_empty(), "fly.toml: [checks] has no check");
    let mut http_checks = 0;
    for (name, check) in checks {
        let check = check
            .as_table()
            .unwrap_or_else(|| panic!("fly.toml: [checks.{name}] is not a table"));
        assert_eq!(
            integer(check, "port", "fly.toml"),
            port,
            "fly.toml: [checks.{name}] port differs from the port the worker listens on"
        );
        if string(check, "type", "fly.toml") == "http" {
            http_checks += 1;
            assert_eq!(
                string(check, "path", "fly.toml"),
                "/health",
                "fly.toml: [checks.{name}] path"
            );
        }
    }
    assert!(http_checks > 0, "fly.toml: no HTTP check on /health");

    let metrics = table(&fly, "metrics", "fly.toml");
    assert_eq!(integer(metrics, "port", "fly.toml"), port, "fly.toml: [metrics] port");
    assert_eq!(
        string(metrics, "path", "fly.toml"),
        "/metrics",
        "fly.toml: [metrics] path"
    );
}

#[test]
fn fly_has_no_public_service_that_could_auto_stop_the_worker() {
    let fly = read_toml("fly.toml");
    for key in ["http_service", "services"] {
        assert!(
            !fly.contains_key(key),
            "fly.toml: [{key}] would expose the worker and, with auto-stop (on by default), stop it when idle"
        );
    }
}

#[test]
fn both_platforms_migrate_with_the_image_binary_before_the_release_starts() {
    let entrypoint = dockerfile_entrypoint();
    let binary = entrypoint.first().expect("ENTRYPOINT names the binary");

    // Railway runs the pre-deploy command in place of the ENTRYPOINT: it names the binary.
    let railway = read_toml("railway.toml");
    let deploy = table(&railway, "deploy", "railway.toml");
    let pre_deploy = match deploy.get("preDeployCommand") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 => a[0].as_str().expect("a command string").to_owned(),
        other => panic!("railway.toml: preDeployCommand must be one migrate command, got {other:?}"),
    };
    assert_eq!(
        pre_deploy.split_whitespace().collect::<Vec<_>>(),
        [binary.as_str(), "migrate"]
    );

    // Fly keeps the ENTRYPOINT and replaces only CMD: the subcommand alone.
    let fly = read_toml("fly.toml");
    let release = string(table(&fly, "deploy", "fly.toml"), "release_command", "fly.toml");
    assert_eq!(
        release.split_whitespace().collect::<Vec<_>>(),
        ["migrate"],
        "fly.toml: release_command is appended to the ENTRYPOINT ({binary})"
    );
    // With migrations in the release command, a rolled-back image must not migrate at startup.
    assert!(
        !deployed_config(fly_env(&fly)).database_migrate,
        "fly.toml: set DATABASE_MIGRATE = \"false\" in [env]"
    );
}

#[test]
fn railway_checks_health_and_builds_the_dockerfile() {
    let railway = read_toml("railway.toml");
    let build = table(&railway, "build", "railway.toml");
    assert_eq!(string(build, "builder", "railway.toml"), "DOCKERFILE");
    let deploy = table(&railway, "deploy", "railway.toml");
    assert_eq!(string(deploy, "healthcheckPath", "railway.toml"), "/health");
    assert!(
        deploy.contains_key("restartPolicyType"),
        "railway.toml: no restart policy"
    );
}

#[test]
fn image_runs_the_binary_as_pid_1_as_a_numeric_non_root_user_on_the_builders_debian() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();

    let entrypoint = dockerfile_entrypoint();
    assert_eq!(
        entrypoint,
        ["/usr/local/bin/step-worker"],
        "ENTRYPOINT is the binary alone"
    );

    let user = instructions
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("Dockerfile sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid.parse::<u32>().is_ok_and(|n| n != 0),
        "USER must be a numeric non-root uid, got {user}"
    );

    assert!(
        dockerfile.contains(r#"CMD ["/usr/local/bin/step-worker", "healthcheck"]"#),
        "HEALTHCHECK must probe with the binary (no curl in the runtime image)"
    );
    assert!(
        dockerfile.contains("--bin step-worker"),
        "the image builds only the step-worker binary"
    );
    // Railway health-checks on the PORT it injects; HEALTH_CHECK_PORT in the image would win
    // over it and move the server away from the probe.
    assert!(
        !instructions
            .iter()
            .any(|l| l.starts_with("ENV") && l.contains("HEALTH_CHECK_PORT")),
        "the image must not set HEALTH_CHECK_PORT"
    );

    let froms: Vec<&str> = instructions.iter().filter_map(|l| l.strip_prefix("FROM ")).collect();
    let builder = froms.first().expect("a builder stage");
    let runtime = froms.last().expect("a runtime stage");
    let same_release = [("trixie", "debian13"), ("bookworm", "debian12")]
        .iter()
        .any(|(codename, distroless)| builder.contains(codename) && runtime.contains(distroless));
    assert!(
        same_release,
        "builder ({builder}) and runtime ({runtime}) must be the same Debian release"
    );
}
