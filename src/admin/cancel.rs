//! `step-worker cancel <id>... | --run <run_id>`: cancels jobs ([`crate::cancel`]), one line per
//! job. Exit code 0 when every job asked for is cancelled, being cancelled (a worker stops it
//! within one heartbeat) or was cancelled before; 1 when one is unknown, finished otherwise, or
//! the queue or the store failed.

use super::Admin;
use crate::cancel::{CancelError, Report};
use crate::queue::{CancelTarget, Queue};

/// Cancels each of `ids`, or every job of `run`.
pub async fn run(admin: &Admin, ids: &[String], run: Option<&str>) -> anyhow::Result<()> {
    let queue = Queue::Redis(admin.queue.clone());
    let by = format!("cli:{}", crate::lease::new_worker_id());
    let targets: Vec<CancelTarget> = match run {
        Some(run) => vec![CancelTarget::Run(run.to_owned())],
        None => ids.iter().cloned().map(CancelTarget::Id).collect(),
    };
    let mut failed = 0;
    for target in &targets {
        if let CancelTarget::Id(id) = target
            && !crate::job::valid_id(id)
        {
            eprintln!(
                "error: {:?} is not a job id (a job id is 1 to {} characters, without NUL)",
                shown(id),
                crate::job::MAX_ID_LEN
            );
            failed += 1;
            continue;
        }
        match crate::cancel::cancel(&queue, &admin.store, target, &by).await {
            Ok(report) => print_report(admin, target, &report),
            Err(CancelError::Finished { id, status }) if status == "cancelled" => {
                println!("{}: already cancelled", shown(&id));
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    match failed {
        0 => Ok(()),
        n => anyhow::bail!("{n} of {} cancellation(s) failed", targets.len()),
    }
}

fn print_report(admin: &Admin, target: &CancelTarget, report: &Report) {
    if report.is_empty()
        && let CancelTarget::Run(run) = target
    {
        println!(
            "run {}: no job of it is queued, delayed, held, waiting or running",
            shown(run)
        );
    }
    for (id, step) in &report.removed {
        let recorded = match report.recorded {
            true => "",
            false => " (Postgres refused its row for now: a worker's heartbeat will write it)",
        };
        println!(
            "{}: cancelled before it ran (step {}){recorded}",
            shown(id),
            shown(step)
        );
    }
    for (id, worker) in &report.running {
        println!(
            "{}: cancelling on worker {}: it stops within one heartbeat ({} ms) and records `cancelled`",
            shown(id),
            shown(worker),
            admin.config.heartbeat_interval.as_millis()
        );
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
}

/// Text from producers (ids, step names) as it may go to a terminal: control characters are
/// escaped, so an id cannot move the cursor, clear the screen or retitle the window.
fn shown(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}
