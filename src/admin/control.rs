//! `step-worker pause | resume | purge-ready`: the emergency switches.

use chrono::Utc;
use uuid::Uuid;

use super::{Admin, confirm, progress};
use crate::queue::{BeatMode, SettleOp, Suspects};
use crate::store::{Batch, DeadLetterRecord};

/// Jobs moved from ready into dead letters per round trip by `purge-ready`.
const PURGE_BATCH: usize = 500;

pub async fn pause(admin: &Admin, step: Option<&str>) -> anyhow::Result<()> {
    match step {
        Some(step) => {
            admin.queue.pause_step(step).await?;
            println!("paused step {step}: its jobs wait in a held list until `step-worker resume --step {step}`");
        }
        None => {
            admin.queue.set_paused(true).await?;
            println!(
                "paused {}: workers stop claiming within one heartbeat ({} ms); running steps finish",
                admin.config.queue_key,
                admin.config.heartbeat_interval.as_millis()
            );
        }
    }
    Ok(())
}

pub async fn resume(admin: &Admin, step: Option<&str>) -> anyhow::Result<()> {
    match step {
        Some(step) => {
            let moved = admin.queue.resume_step(step).await?;
            println!(
                "resumed step {step}: {moved} held job(s) back in {}",
                admin.config.queue_key
            );
        }
        None => {
            admin.queue.set_paused(false).await?;
            println!("resumed {}", admin.config.queue_key);
        }
    }
    Ok(())
}

/// Moves every waiting job into the dead-letter table (reason `purged`), never deleting one. It
/// claims like a worker (registered, into its own in-flight list), so if it dies midway the
/// reaper hands its batch back to the queue. It runs nothing it claims, so suspected poison pills
/// are batched like any other job.
pub async fn purge_ready(admin: &Admin, yes: bool) -> anyhow::Result<()> {
    let waiting = admin.queue.depths().await?.ready;
    if waiting == 0 {
        println!("{} is empty", admin.config.queue_key);
        return Ok(());
    }
    confirm(
        &format!(
            "Move {waiting} waiting job(s) from {} to the dead-letter table?",
            admin.config.queue_key
        ),
        yes,
    )?;
    let wid = format!("{}:purge", crate::lease::new_worker_id());
    let proc = admin.queue.keys().proc(&wid);
    let (deadline, grace) = (admin.config.worker_deadline, admin.config.heartbeat_interval);
    admin.queue.heartbeat(&wid, deadline, BeatMode::Register, grace).await?;
    let bar = progress(waiting, "purge-ready");
    let mut purged = 0u64;
    loop {
        admin.queue.heartbeat(&wid, deadline, BeatMode::Beat, grace).await?;
        let claimed = admin
            .queue
            .claim(&wid, &proc, PURGE_BATCH, &[], Suspects::Ignore)
            .await?;
        if claimed.jobs.is_empty() {
            break;
        }
        let now = Utc::now();
        let mut batch = Batch::default();
        for (payload, counters) in &claimed.jobs {
            let job = crate::job::decode(payload).ok();
            batch.dead_letters.push(DeadLetterRecord {
                id: Uuid::now_v7(),
                job_id: job.as_ref().map(|j| j.id.clone()),
                run_id: job.as_ref().and_then(|j| j.run_id.clone()),
                step: job.as_ref().map(|j| j.step.clone()),
                reason: "purged".to_owned(),
                error: Some("purged by operator".to_owned()),
                attempts: i32::try_from(counters.failures).unwrap_or(i32::MAX),
                payload: payload.clone(),
                worker_id: wid.clone(),
                dead_at: now,
                with_result: false,
            });
        }
        admin.store.persist(&batch).await?;
        let ops: Vec<SettleOp> = claimed.jobs.iter().map(|(p, _)| SettleOp::Done(p.clone())).collect();
        admin.queue.settle(&proc, &ops).await?;
        purged += ops.len() as u64;
        bar.inc(ops.len() as u64);
    }
    admin.queue.deregister(&wid).await?;
    bar.finish_and_clear();
    println!(
        "moved {purged} job(s) to step_dead_letters (reason purged); replay them with `step-worker dlq replay --reason purged`"
    );
    Ok(())
}
