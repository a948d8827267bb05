//! Command-line interface. Every subcommand reads the same environment configuration as the
//! daemon; `run` is the default.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "step-worker",
    version,
    about = "Runs workflow steps from a Redis list and records every outcome in Postgres"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker daemon (the default).
    Run,
    /// Apply the embedded database migrations, or revert them all with --revert.
    Migrate {
        /// Revert every migration (drops step-worker's tables).
        #[arg(long)]
        revert: bool,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// GET the local /health endpoint; exit 0 on 200 (for a container HEALTHCHECK without curl).
    Healthcheck {
        /// Override the URL (default: http://127.0.0.1:$HEALTH_CHECK_PORT/health).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the environment and print the effective configuration, secrets redacted.
    Check,
}
