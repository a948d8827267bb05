//! The one-shot subcommands: `migrate`, `config check`, `healthcheck`.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Config;
use crate::store::Store;

pub async fn migrate(config: &Config, revert: bool) -> anyhow::Result<()> {
    let store = Store::connect_lazy(config.database_url.expose(), 1).context("DATABASE_URL")?;
    if revert {
        store.revert().await.context("reverting migrations")?;
        println!("reverted all migrations");
    } else {
        store.migrate().await.context("applying migrations")?;
        println!("migrations applied");
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
