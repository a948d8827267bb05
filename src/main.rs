//! The `step-worker` binary: parse the command line, read the configuration, start logging,
//! dispatch, map the result to an exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use step_worker::cli::{Cli, Command, ConfigCommand};
use step_worker::{Config, Registry, Shutdown, commands, telemetry};

/// How long the runtime waits for its remaining tasks once the worker has finished.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_millis(300);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, None | Some(Command::Run)) {
        // A command's output piped into `head` ends when the reader goes: the default SIGPIPE
        // action ends the command quietly, where Rust's ignored SIGPIPE would make `println!`
        // panic with a backtrace. The daemon keeps it ignored: a closed socket is an error to
        // handle, not a reason to exit.
        // SAFETY: called before any thread of ours exists; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Sentry starts before the runtime and its guard lives until exit, flushing queued events.
    let _sentry = step_worker::notify::sentry::init(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::Run);
    // The daemon and `migrate` (a platform's release command) log; the other commands print.
    let logs = matches!(command, Command::Run | Command::Migrate { .. });
    // Entered for the gRPC trace exporter, whose channel runs on this runtime.
    let telemetry = logs.then(|| {
        let _entered = runtime.enter();
        telemetry::init(&config)
    });
    let shutdown = Shutdown::new();
    let result = runtime.block_on(async {
        match command {
            Command::Run => {
                let shutdown = shutdown.clone();
                shutdown.listen_for_signals()?;
                step_worker::worker::run(config, Registry::new(), shutdown).await
            }
            Command::Migrate { revert } => commands::migrate(&config, revert).await,
            Command::Config {
                command: ConfigCommand::Check,
            } => commands::config_check(&config),
            Command::Healthcheck { url } => commands::healthcheck(&config, url).await,
            other => commands::admin(config, other).await,
        }
    });
    // Queued spans are flushed (bounded) while the runtime still runs, from this thread; not
    // after a second signal, which asks for the exit now.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown(!shutdown.hard.is_cancelled());
    }
    // Dropping the runtime would wait for every blocking task (a DNS lookup of an unreachable
    // resolver, a step that never yields): the drain has already bounded the exit, so this does
    // not wait longer.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<step_worker::admin::NotConfirmed>() => {
            eprintln!("{e}");
            ExitCode::from(3)
        }
        Err(e) if e.is::<step_worker::admin::Misconfigured>() => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            let chain = telemetry::error_chain(e.as_ref());
            if logs {
                tracing::error!(error = %chain, "exiting after an error");
            } else {
                eprintln!("error: {chain}");
            }
            ExitCode::FAILURE
        }
    }
}
