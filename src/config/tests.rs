use super::*;

fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn empty_environment_gives_the_documented_defaults() {
    let c = config(&[]).unwrap();
    assert_eq!(c.app_env, AppEnv::Development);
    assert_eq!(c.redis_url.expose(), DEFAULT_REDIS_URL);
    assert_eq!(c.concurrency, 10);
    assert_eq!(c.step_timeout, Duration::from_secs(30));
    assert_eq!(c.max_retries, 3);
    assert_eq!(c.shutdown_timeout, Duration::from_millis(25_000));
    assert_eq!(c.health_check_port, 3001);
    assert_eq!(c.queue_key, "step.ready");
    assert_eq!(c.log_format, LogFormat::Pretty);
    assert!(c.database_migrate && c.health_check_enabled);
    // No server needed: the memory queue and a SQLite file in the working directory.
    assert_eq!(c.queue_driver, QueueDriver::Memory);
    assert_eq!(c.database_url.expose(), DEFAULT_SQLITE_URL);
}

#[test]
fn a_configured_redis_selects_the_redis_driver_and_postgres() {
    let c = config(&[("REDIS_URL", "redis://cache:6379")]).unwrap();
    assert_eq!(c.queue_driver, QueueDriver::Redis);
    assert_eq!(c.database_url.expose(), DEFAULT_DATABASE_URL);
    let c = config(&[("QUEUE_DRIVER", "redis")]).unwrap();
    assert_eq!(c.redis_url.expose(), DEFAULT_REDIS_URL);
    let c = config(&[("QUEUE_DRIVER", "memory"), ("DATABASE_URL", "postgres://u@db/app")]).unwrap();
    assert_eq!(c.queue_driver, QueueDriver::Memory);
}

#[test]
fn production_refuses_the_embedded_drivers_by_name() {
    let err = config(&[("APP_ENV", "production"), ("QUEUE_DRIVER", "memory")]).unwrap_err();
    assert_eq!(err.variable, "QUEUE_DRIVER");
    assert!(err.to_string().contains("lost on every restart"), "{err}");
    let err = config(&[
        ("APP_ENV", "production"),
        ("REDIS_URL", "redis://cache:6379"),
        ("DATABASE_URL", "sqlite://results.db"),
    ])
    .unwrap_err();
    assert_eq!(err.variable, "DATABASE_URL");
    assert!(err.to_string().contains("PostgreSQL"), "{err}");
}

#[test]
fn invalid_integer_names_the_variable_and_the_expected_form() {
    let err = config(&[("WORKER_CONCURRENCY", "lots")]).unwrap_err();
    assert_eq!(err.variable, "WORKER_CONCURRENCY");
    let line = err.to_string();
    assert!(
        line.contains("WORKER_CONCURRENCY") && line.contains("an integer from 1 to 10000"),
        "{line}"
    );
    assert!(line.contains("\"lots\""), "{line}");
}

#[test]
fn zero_concurrency_is_rejected() {
    assert_eq!(
        config(&[("WORKER_CONCURRENCY", "0")]).unwrap_err().variable,
        "WORKER_CONCURRENCY"
    );
}

#[test]
fn commit_backlog_follows_the_persist_batch_size_unless_set() {
    assert_eq!(config(&[]).unwrap().commit_backlog, 500);
    assert_eq!(config(&[("PERSIST_BATCH_SIZE", "40")]).unwrap().commit_backlog, 40);
    let c = config(&[("PERSIST_BATCH_SIZE", "40"), ("COMMIT_BACKLOG", "0")]).unwrap();
    assert_eq!(c.commit_backlog, 0, "0 is the old behaviour, not unset");
    for bad in ["-1", "10001", "some"] {
        let err = config(&[("COMMIT_BACKLOG", bad)]).unwrap_err();
        assert_eq!(err.variable, "COMMIT_BACKLOG");
        assert!(err.to_string().contains("an integer from 0 to 10000"), "{err}");
    }
}

#[test]
fn invalid_boolean_and_enum_values_are_rejected_by_name() {
    assert_eq!(
        config(&[("HEALTH_CHECK_ENABLED", "maybe")]).unwrap_err().variable,
        "HEALTH_CHECK_ENABLED"
    );
    assert_eq!(
        config(&[("QUEUE_DRIVER", "kafka")]).unwrap_err().variable,
        "QUEUE_DRIVER"
    );
    assert_eq!(config(&[("LOG_FORMAT", "xml")]).unwrap_err().variable, "LOG_FORMAT");
    assert_eq!(config(&[("APP_ENV", "space")]).unwrap_err().variable, "APP_ENV");
    assert_eq!(config(&[("LOG_LEVEL", "loud")]).unwrap_err().variable, "LOG_LEVEL");
}

#[test]
fn wrong_url_scheme_is_rejected_without_printing_the_password() {
    let err = config(&[("REDIS_URL", "http://user:hunter2@cache:6379")]).unwrap_err();
    assert_eq!(err.variable, "REDIS_URL");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn redis_cluster_seed_list_is_accepted_and_every_password_redacted() {
    let seeds = "redis://u:pw1@10.0.0.1:7000, redis://u:pw2@10.0.0.2:7000";
    let c = config(&[("REDIS_URL", seeds)]).unwrap();
    assert_eq!(c.redis_url.expose(), seeds);
    let shown = c.redis_url.to_string();
    assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
    assert!(shown.contains("10.0.0.2:7000"), "{shown}");
    for bad in [
        "redis://a:7000,rediss://b:7000",
        "redis://a:7000,",
        "redis://u:pw3@a:7000,b:7000",
    ] {
        let err = config(&[("REDIS_URL", bad)]).unwrap_err();
        assert_eq!(err.variable, "REDIS_URL", "{bad}");
        assert!(!err.to_string().contains("pw3"), "{err}");
    }
}

#[test]
fn production_requires_explicit_connection_urls_and_logs_json() {
    let err = config(&[("APP_ENV", "production")]).unwrap_err();
    assert_eq!(err.variable, "REDIS_URL");
    let c = config(&[
        ("NODE_ENV", "production"),
        ("REDIS_URL", "rediss://default:tok@example.upstash.io:6379"),
        ("DATABASE_URL", "postgres://u:p@db:5432/app"),
    ])
    .unwrap();
    assert_eq!(c.app_env, AppEnv::Production);
    assert_eq!(c.log_format, LogFormat::Json);
}

#[test]
fn platform_port_is_used_when_health_check_port_is_unset() {
    assert_eq!(config(&[("PORT", "8080")]).unwrap().health_check_port, 8080);
    assert_eq!(
        config(&[("PORT", "8080"), ("HEALTH_CHECK_PORT", "9000")])
            .unwrap()
            .health_check_port,
        9000
    );
}

#[test]
fn deadline_must_leave_room_for_missed_heartbeats() {
    let err = config(&[("HEARTBEAT_INTERVAL_MS", "5000"), ("WORKER_DEADLINE_MS", "6000")]).unwrap_err();
    assert_eq!(err.variable, "WORKER_DEADLINE_MS");
}

#[test]
fn secrets_are_redacted_in_debug_and_describe() {
    let c = config(&[("DATABASE_URL", "postgres://app:s3cret@db:5432/app?password=other")]).unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cret") && !debug.contains("other"), "{debug}");
    let described: String = c.describe().into_iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    assert!(
        described.contains("DATABASE_URL=postgres://app:***@db:5432/app?password=***"),
        "{described}"
    );
}

#[test]
fn empty_values_count_as_unset() {
    assert_eq!(config(&[("WORKER_CONCURRENCY", "")]).unwrap().concurrency, 10);
}

#[test]
fn queue_key_with_braces_is_rejected() {
    assert_eq!(config(&[("QUEUE_KEY", "{x}")]).unwrap_err().variable, "QUEUE_KEY");
}

#[test]
fn http_steps_are_off_by_default() {
    let c = config(&[]).unwrap();
    assert!(c.http_steps.routes().is_empty());
    assert_eq!(c.http_steps.response_max_bytes, 1 << 20);
}

#[test]
fn step_handler_url_without_the_placeholder_names_the_expected_form() {
    let err = config(&[("STEP_HANDLER_URL", "https://app.internal/steps")]).unwrap_err();
    assert_eq!(err.variable, "STEP_HANDLER_URL");
    assert!(err.expected.contains("{step}"), "{err}");
    assert_eq!(
        config(&[("STEP_HANDLER_URL", "https://{step}.internal/run")])
            .unwrap_err()
            .variable,
        "STEP_HANDLER_URL"
    );
}

#[test]
fn step_handler_url_wins_over_supabase() {
    let c = config(&[
        ("STEP_HANDLER_URL", "https://app.internal/steps/{step}"),
        ("SUPABASE_URL", "https://abcdefgh.supabase.co"),
    ])
    .unwrap();
    let url = c.http_steps.routes().resolve("x").unwrap();
    assert_eq!(url.as_str(), "https://app.internal/steps/x");
}

#[test]
fn supabase_routing_requires_the_service_role_key() {
    let err = config(&[("SUPABASE_URL", "https://abcdefgh.supabase.co")]).unwrap_err();
    assert_eq!(err.variable, "SUPABASE_SERVICE_ROLE_KEY");
    let c = config(&[
        ("SUPABASE_URL", "https://abcdefgh.supabase.co"),
        ("SUPABASE_SERVICE_ROLE_KEY", "service-role-key"),
    ])
    .unwrap();
    let url = c.http_steps.routes().resolve("hello").unwrap();
    assert_eq!(url.as_str(), "https://abcdefgh.supabase.co/functions/v1/hello");
    assert_eq!(
        config(&[
            ("SUPABASE_URL", "abcdefgh.supabase.co"),
            ("SUPABASE_SERVICE_ROLE_KEY", "k")
        ])
        .unwrap_err()
        .variable,
        "SUPABASE_URL"
    );
}

#[test]
fn step_routes_are_parsed_and_bad_entries_name_the_variable() {
    let c = config(&[(
        "STEP_ROUTES",
        " resize=https://img.internal/run , email.send=http://127.0.0.1:9000/send,",
    )])
    .unwrap();
    let routes = c.http_steps.routes();
    assert_eq!(routes.resolve("resize").unwrap().as_str(), "https://img.internal/run");
    assert_eq!(
        routes.resolve("email.send").unwrap().as_str(),
        "http://127.0.0.1:9000/send"
    );
    for bad in [
        "resize",
        "resize=img.internal/run",
        "../x=https://a.internal/run",
        "a=https://a.internal/1,a=https://a.internal/2",
    ] {
        let err = config(&[("STEP_ROUTES", bad)]).unwrap_err();
        assert_eq!(err.variable, "STEP_ROUTES", "{bad}");
    }
    let err = config(&[("STEP_ROUTES", "x=https://u:hunter2@a.internal/run?token=hunter3,y")]).unwrap_err();
    assert!(!err.to_string().contains("hunter"), "{err}");
}

#[test]
fn short_signing_secrets_and_tokens_with_spaces_are_rejected() {
    let err = config(&[("STEP_SIGNING_SECRET", "short")]).unwrap_err();
    assert_eq!(err.variable, "STEP_SIGNING_SECRET");
    assert!(!err.to_string().contains("short\""), "{err}");
    let err = config(&[("STEP_HANDLER_TOKEN", "two words")]).unwrap_err();
    assert_eq!(err.variable, "STEP_HANDLER_TOKEN");
    assert_eq!(
        config(&[("STEP_RESPONSE_MAX_BYTES", "0")]).unwrap_err().variable,
        "STEP_RESPONSE_MAX_BYTES"
    );
}

#[test]
fn http_step_secrets_are_redacted_in_describe() {
    let c = config(&[
        ("STEP_HANDLER_URL", "https://app.internal/steps/{step}"),
        ("STEP_HANDLER_TOKEN", "tok-hunter2"),
        ("STEP_SIGNING_SECRET", "sig-hunter2-0123456789"),
        ("SUPABASE_SERVICE_ROLE_KEY", "key-hunter2"),
    ])
    .unwrap();
    let described: String = c.describe().into_iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    assert!(!described.contains("hunter2"), "{described}");
    assert!(
        described.contains("STEP_HANDLER_URL=https://app.internal/steps/{step}"),
        "{described}"
    );
    assert!(described.contains("STEP_RESPONSE_MAX_BYTES=1048576"), "{described}");
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn an_admin_token_no_client_can_send_back_is_refused_at_startup() {
    // A trailing newline from a secret store used to make every request 401 without a word.
    for (token, got) in [
        ("a-long-enough-token-123\n", "a line break"),
        ("a long enough token with spaces", "a space"),
        ("x", "1 characters"),
        ("fifteen-chars-x", "15 characters"),
    ] {
        let err = config(&[("ADMIN_TOKEN", token)]).unwrap_err();
        assert_eq!(err.variable, "ADMIN_TOKEN");
        let line = err.to_string();
        assert!(line.contains("at least 16 visible ASCII characters"), "{line}");
        assert!(line.contains(got), "{line}");
        assert!(!line.contains(token.trim()), "the token is echoed: {line}");
    }
    let c = config(&[("ADMIN_TOKEN", "sixteen-chars-ok")]).unwrap();
    assert_eq!(c.admin_token.unwrap().expose(), "sixteen-chars-ok");
}

#[test]
fn connection_urls_the_client_cannot_parse_are_refused_naming_the_variable() {
    for (name, url) in [
        ("REDIS_URL", "redis://cache.example:notaport"),
        ("REDIS_URL", "redis://:pa/ss@cache.example:6379"),
        ("DATABASE_URL", "postgres://app:pa55@db.example:port/app"),
    ] {
        let err = config(&[(name, url)]).unwrap_err();
        assert_eq!(err.variable, name, "{url}");
        assert!(err.to_string().contains("percent-encode"), "{err}");
    }
    assert!(config(&[("REDIS_URL", "redis://:pa%2Fss@cache.example:6379/0")]).is_ok());
}

#[test]
fn the_http_server_listens_on_loopback_while_post_jobs_is_open() {
    let host = |vars: &[(&str, &str)]| config(vars).unwrap().health_check_host;
    assert_eq!(host(&[]), Some(std::net::Ipv4Addr::LOCALHOST.into()));
    assert_eq!(host(&[("ADMIN_TOKEN", "sixteen-chars-ok")]), None);
    let production = [
        ("APP_ENV", "production"),
        ("REDIS_URL", "redis://cache:6379"),
        ("DATABASE_URL", "postgres://u@db/app"),
    ];
    assert_eq!(host(&production), None);
    assert_eq!(host(&[("HEALTH_CHECK_HOST", "::")]), None);
    assert_eq!(host(&[("HEALTH_CHECK_HOST", "10.0.0.7")]), Some([10, 0, 0, 7].into()));
    let err = config(&[("HEALTH_CHECK_HOST", "localhost")]).unwrap_err();
    assert_eq!(err.variable, "HEALTH_CHECK_HOST");
}

#[test]
fn result_retention_is_off_by_default_and_parsed_per_kind() {
    let c = config(&[]).unwrap();
    assert!(!c.retention.is_enabled());
    assert_eq!(c.retention.check_every, Duration::from_secs(60));
    let c = config(&[
        (
            "RESULT_RETENTION",
            "succeeded=7d, dead=30d,attempts=36h,dead_letters=90d,cancelled=1s",
        ),
        ("RETENTION_CHECK_MS", "500"),
    ])
    .unwrap();
    let day = Duration::from_secs(86_400);
    assert_eq!(c.retention.succeeded, Some(day * 7));
    assert_eq!(c.retention.dead, Some(day * 30));
    assert_eq!(c.retention.attempts, Some(Duration::from_secs(36 * 3600)));
    assert_eq!(c.retention.dead_letters, Some(day * 90));
    assert_eq!(c.retention.cancelled, Some(Duration::from_secs(1)));
    assert_eq!(c.retention.check_every, Duration::from_millis(500));
}

#[test]
fn a_bad_result_retention_entry_is_named() {
    for bad in [
        "succeeded",
        "succeeded=forever",
        "finished=7d",
        "succeeded=500ms",
        "dead=1d,dead=2d",
    ] {
        let err = config(&[("RESULT_RETENTION", bad)]).unwrap_err();
        assert_eq!(err.variable, "RESULT_RETENTION", "{bad}");
        assert!(bad.contains(err.got.as_str()), "the bad entry is quoted: {err}");
    }
    let err = config(&[("RETENTION_CHECK_MS", "0")]).unwrap_err();
    assert_eq!(err.variable, "RETENTION_CHECK_MS");
}

#[test]
fn the_duplicate_check_is_on_unless_turned_off() {
    assert!(config(&[]).unwrap().duplicate_check);
    assert!(!config(&[("DUPLICATE_CHECK", "off")]).unwrap().duplicate_check);
    let err = config(&[("DUPLICATE_CHECK", "sometimes")]).unwrap_err();
    assert_eq!(err.variable, "DUPLICATE_CHECK");
}
