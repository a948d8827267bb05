//! `step-worker stats`: queue depths, live workers with their last heartbeat, pause state, and
//! each flow limit with its use.

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
    cancelled: u64,
    dead_letters_pending: i64,
    paused: bool,
    paused_steps: Vec<PausedStep>,
    limits: Vec<LimitUse>,
    workers: Vec<WorkerInfo>,
}

/// One flow limit and its use now, across every replica.
#[derive(Serialize)]
struct LimitUse {
    step: String,
    /// `concurrency` or `rate`.
    kind: &'static str,
    /// `5` (attempts at once) or `10/1000ms` (starts per period).
    limit: String,
    /// Cap slots held now (concurrency only).
    #[serde(skip_serializing_if = "Option::is_none")]
    used: Option<u32>,
    /// How long until the next start may go (rate only; 0: now).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_start_ms: Option<u64>,
    waiting: u64,
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
    let waiting = |step: &str, kind: &str| {
        d.waiting
            .iter()
            .find(|(s, k, _)| s == step && *k == kind)
            .map_or(0, |(_, _, n)| *n)
    };
    let mut limits: Vec<LimitUse> = d
        .caps
        .iter()
        .map(|(step, used, cap)| LimitUse {
            step: step.clone(),
            kind: "concurrency",
            limit: cap.to_string(),
            used: Some(*used),
            next_start_ms: None,
            waiting: waiting(step, "concurrency"),
        })
        .collect();
    for (step, ahead) in admin.queue.rate_ahead().await? {
        let rate = admin.config.limits.rates[&step];
        limits.push(LimitUse {
            limit: format!("{}/{}ms", rate.n, rate.period_ms),
            kind: "rate",
            used: None,
            next_start_ms: Some(ahead),
            waiting: waiting(&step, "rate"),
            step,
        });
    }
    let stats = Stats {
        queue: admin.config.queue_key.clone(),
        ready: d.ready,
        delayed: d.delayed,
        in_flight: d.in_flight,
        held: d.held,
        poison: d.poison,
        cancelled: d.cancelled,
        dead_letters_pending: admin.store.pending_dead_letters().await?,
        paused: d.paused,
        paused_steps,
        limits,
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
    if stats.cancelled > 0 {
        println!("  cancel outbox  {} (cancelled, rows not yet written)", stats.cancelled);
    }
    println!("  dead letters   {} not replayed", stats.dead_letters_pending);
    for p in &stats.paused_steps {
        println!("paused step {} ({} jobs held)", p.step, p.held);
    }
    for l in &stats.limits {
        match (l.used, l.next_start_ms) {
            (Some(used), _) => println!(
                "concurrency limit {} {}: {used} running, {} waiting",
                l.step, l.limit, l.waiting
            ),
            (None, Some(ahead)) => println!(
                "rate limit {} {}: next start in {ahead} ms, {} waiting",
                l.step, l.limit, l.waiting
            ),
            (None, None) => {}
        }
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
