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
        match crate::cancel::cancel(&queue, &admin.store, target, &by).await {
            Ok(report) => print_report(admin, target, &report),
            Err(CancelError::Finished { id, status }) if status == "cancelled" => {
                println!("{id}: already cancelled");
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
        println!("run {run}: no job of it is queued, delayed, held, waiting or running");
    }
    for (id, step) in &report.removed {
        let recorded = match report.recorded {
            true => "",
            false => " (Postgres refused its row for now: a worker's heartbeat will write it)",
        };
        println!("{id}: cancelled before it ran (step {step}){recorded}");
    }
    for (id, worker) in &report.running {
        println!(
            "{id}: cancelling on worker {worker}: it stops within one heartbeat ({} ms) and records `cancelled`",
            admin.config.heartbeat_interval.as_millis()
        );
    }
}
