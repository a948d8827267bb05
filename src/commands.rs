//! Dispatch of the one-shot subcommands: `migrate`, `config check`, `healthcheck`, and the
//! operator commands in [`crate::admin`].

use std::time::Duration;

use anyhow::{Context, bail};

use crate::admin::{self, Admin};
use crate::cli::{Command, DlqCommand, DlqFilter, ResultsCommand};
use crate::config::Config;
use crate::store::Store;
use crate::store::dead_letters::Filter;

/// `migrate`: succeeds exactly when the schema ends at the version this binary expects, whoever
/// applied it (several `migrate` run at once: one applies, the others wait for it and find
/// nothing to do). `--revert` succeeds when every migration was reverted.
pub async fn migrate(config: &Config, revert: bool) -> anyhow::Result<()> {
    let store = Store::connect_lazy_with(config.database_url.expose(), 1, config.database_statement_timeout)
        .context("DATABASE_URL")?;
    if revert {
        store.revert().await.context("reverting migrations")?;
        println!("reverted all migrations");
        return Ok(());
    }
    let applied = store.migrate().await;
    // The outcome that counts is the schema's: an error after the commit (a dropped connection)
    // must not fail a migration that was applied, nor may a success be claimed without it.
    let current = store.is_migrated().await.context("reading the applied migrations")?;
    match (applied, current) {
        (Ok(()), true) => println!("migrations applied"),
        (Err(e), true) => {
            let e = anyhow::Error::from(e).context("applying migrations");
            eprintln!("warning: {}", crate::telemetry::error_chain(e.as_ref()));
            println!("migrations applied (the schema is at the expected version)");
        }
        (Err(e), false) => return Err(anyhow::Error::from(e).context("applying migrations")),
        (Ok(()), false) => bail!("migrations ran but the schema is not at the version this binary expects"),
    }
    Ok(())
}

pub fn config_check(config: &Config) -> anyhow::Result<()> {
    println!("configuration is valid; effective values:");
    for (name, value) in config.describe() {
        println!("{name}={value}");
    }
    Ok(())
}

pub async fn healthcheck(config: &Config, url: Option<String>) -> anyhow::Result<()> {
    // A container HEALTHCHECK runs this with the worker's own environment. With the endpoint
    // switched off there is nothing to probe, and failing would mark a working container
    // unhealthy for good; so it says so and succeeds, like having no check at all.
    if url.is_none()
        && let Some(why) = nothing_to_probe(config)
    {
        println!("{why}: nothing to probe (pass --url to probe another address)");
        return Ok(());
    }
    let url = url.unwrap_or_else(|| format!("http://127.0.0.1:{}/health", config.health_check_port));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build()?;
    let response = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{body}");
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    Ok(())
}

fn nothing_to_probe(config: &Config) -> Option<&'static str> {
    if !config.health_check_enabled {
        Some("HEALTH_CHECK_ENABLED=false: the worker serves no /health")
    } else if config.health_check_port == 0 {
        Some("HEALTH_CHECK_PORT=0: the worker picked a free port at startup, unknown here")
    } else {
        None
    }
}

/// Runs an operator command (everything but `run`, `migrate`, `config`, `healthcheck`).
pub async fn admin(config: Config, command: Command) -> anyhow::Result<()> {
    let admin = Admin::connect(config).await?;
    match command {
        Command::Stats { json } => admin::stats::run(&admin, json).await,
        Command::Enqueue {
            job,
            file,
            delay,
            traceparent,
            tracestate,
        } => {
            let trace = admin::enqueue::trace_arg(traceparent, tracestate)?;
            admin::enqueue::run(
                &admin,
                admin::enqueue::Enqueue {
                    job,
                    file,
                    delay,
                    trace,
                },
            )
            .await
        }
        Command::Cancel { ids, run } => admin::cancel::run(&admin, &ids, run.as_deref()).await,
        Command::Pause { step } => admin::control::pause(&admin, step.as_deref()).await,
        Command::Resume { step } => admin::control::resume(&admin, step.as_deref()).await,
        Command::PurgeReady { yes } => admin::control::purge_ready(&admin, yes).await,
        Command::Smoke { timeout } => admin::load::smoke(&admin, timeout).await,
        Command::Load {
            jobs,
            rate,
            duration,
            step,
            input,
            timeout,
        } => {
            let input = serde_json::from_str(&input).context("--input must be JSON")?;
            // A rate for a duration is that many jobs, paced.
            let jobs = match (rate, duration) {
                (Some(rate), Some(d)) => (rate * d.as_secs_f64()).ceil() as u64,
                _ => jobs,
            };
            admin::load::load(
                &admin,
                admin::load::Load {
                    jobs,
                    rate,
                    step,
                    input,
                    timeout,
                },
            )
            .await
        }
        Command::Dlq { command } => dlq(&admin, command).await,
        Command::Results {
            command:
                ResultsCommand::Purge {
                    older_than,
                    status,
                    yes,
                },
        } => admin::results::purge(&admin, older_than, status.as_deref(), yes).await,
        Command::Run | Command::Migrate { .. } | Command::Config { .. } | Command::Healthcheck { .. } => {
            unreachable!("dispatched by main")
        }
    }
}

async fn dlq(admin: &Admin, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List {
            filter,
            limit,
            offset,
            all,
            json,
        } => {
            let f = Filter {
                include_replayed: all,
                ..filter_of(filter)
            };
            admin::dlq::list(admin, &f, limit, offset, json).await
        }
        DlqCommand::Show { id, json } => admin::dlq::show(admin, id, json).await,
        DlqCommand::Replay { ids, filter, dry_run } => {
            admin::dlq::replay(
                admin,
                &Filter {
                    ids,
                    ..filter_of(filter)
                },
                dry_run,
            )
            .await
        }
        DlqCommand::Purge {
            filter,
            older_than,
            yes,
        } => {
            let before = older_than.map(|d| chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or_default());
            admin::dlq::purge(
                admin,
                &Filter {
                    before,
                    include_replayed: true,
                    ..filter_of(filter)
                },
                yes,
            )
            .await
        }
    }
}

fn filter_of(f: DlqFilter) -> Filter {
    Filter {
        step: f.step,
        reason: f.reason,
        since: f.since,
        run_id: f.run_id,
        ..Filter::default()
    }
}
