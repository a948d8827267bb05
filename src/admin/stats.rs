//! `step-worker stats`: queue depths, live workers with their last heartbeat, pause state.

use serde::Serialize;

use super::Admin;
use crate::queue::WorkerInfo;

#[derive(Serialize)]
struct Stats {
    queue: String,
    ready: u64,
    delayed: u64,
    in_flight: u64,
    held: u64,
    poison: u64,
    dead_letters_pending: i64,
    paused: bool,
    paused_steps: Vec<PausedStep>,
    workers: Vec<WorkerInfo>,
}

#[derive(Serialize)]
struct PausedStep {
    step: String,
    held: u64,
}

pub async fn run(admin: &Admin, json: bool) -> anyhow::Result<()> {
    let d = admin.queue.depths().await?;
    let workers = admin.queue.workers(admin.config.worker_deadline).await?;
    let paused_steps = admin
        .queue
        .paused_steps()
        .await?
        .into_iter()
        .map(|(step, held)| PausedStep { step, held })
        .collect();
    let stats = Stats {
        queue: admin.config.queue_key.clone(),
        ready: d.ready,
        delayed: d.delayed,
        in_flight: d.in_flight,
        held: d.held,
        poison: d.poison,
        dead_letters_pending: admin.store.pending_dead_letters().await?,
        paused: d.paused,
        paused_steps,
        workers,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    println!("queue {}{}", stats.queue, if stats.paused { "  (PAUSED)" } else { "" });
    println!("  ready          {}", stats.ready);
    println!("  delayed        {}", stats.delayed);
    println!("  in flight      {}", stats.in_flight);
    println!("  held (paused)  {}", stats.held);
    println!("  poison outbox  {}", stats.poison);
    println!("  dead letters   {} not replayed", stats.dead_letters_pending);
    for p in &stats.paused_steps {
        println!("paused step {} ({} jobs held)", p.step, p.held);
    }
    println!("workers ({})", stats.workers.len());
    for w in &stats.workers {
        println!(
            "  {:<40} last heartbeat {:>6.1} s ago  in flight {}",
            w.worker_id,
            w.last_heartbeat_ms_ago as f64 / 1000.0,
            w.in_flight
        );
    }
    Ok(())
}
