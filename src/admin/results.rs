//! `step-worker results purge`: deleting stored outcomes by age, by hand, with the same batches
//! (and the same one-pruner-at-a-time lock) as `RESULT_RETENTION`.

use std::time::Duration;

use chrono::Utc;

use super::{Admin, confirm};
use crate::store::Prune;

/// Deletes the rows finished longer ago than `older_than`: result rows of `status`, or without
/// it every result row and every failed-attempt row. Asks first unless `yes` (exit 2 without a
/// terminal, as `dlq purge`).
pub async fn purge(admin: &Admin, older_than: Duration, status: Option<&str>, yes: bool) -> anyhow::Result<()> {
    let before = Utc::now() - chrono::Duration::from_std(older_than)?;
    let kinds = match status {
        Some("succeeded") => vec![Prune::Results("succeeded")],
        Some("cancelled") => vec![Prune::Results("cancelled")],
        Some("dead") => vec![Prune::Results("dead")],
        Some(other) => anyhow::bail!("--status must be succeeded, cancelled or dead, got {other:?}"),
        None => vec![
            Prune::Results("succeeded"),
            Prune::Results("cancelled"),
            Prune::Results("dead"),
            Prune::Attempts,
        ],
    };
    let mut matching = 0;
    for what in &kinds {
        matching += admin.store.count_expired(*what, before).await?;
    }
    if matching == 0 {
        println!("no rows match");
        return Ok(());
    }
    confirm(&format!("Delete {matching} row(s) permanently?"), yes)?;
    let mut deleted = 0;
    for what in kinds {
        deleted += admin.store.prune_expired(what, before, |_| true).await?;
    }
    if deleted < matching as u64 {
        println!(
            "deleted {deleted} of {matching} row(s): a worker was pruning at the same time; run again for the rest"
        );
    } else {
        println!("deleted {deleted} row(s)");
    }
    Ok(())
}
