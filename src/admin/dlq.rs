//! `step-worker dlq list | show | replay | purge`: the dead-letter table for operators.

use anyhow::bail;
use uuid::Uuid;

use super::{Admin, confirm, progress};
use crate::queue::RedisQueue;
use crate::redact::printable;
use crate::store::Pg;
use crate::store::dead_letters::{self, DeadLetter, Filter};

/// Dead letters replayed per transaction.
const REPLAY_BATCH: i64 = 500;

pub async fn list(admin: &Admin, f: &Filter, limit: i64, offset: i64, json: bool) -> anyhow::Result<()> {
    let rows = dead_letters::list(&admin.pg, f, limit, offset).await?;
    if json {
        let out: Vec<serde_json::Value> = rows.iter().map(with_payload).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<36}  {:<25}  {:<20}  {:<18}  {:>3}  error",
        "id", "dead at", "job id", "reason", "att"
    );
    for r in &rows {
        println!(
            "{:<36}  {:<25}  {:<20}  {:<18}  {:>3}  {}{}",
            r.id,
            r.dead_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            clip(r.job_id.as_deref().unwrap_or("-"), 20),
            clip(&r.reason, 18),
            r.attempts,
            clip(r.error.as_deref().unwrap_or(""), 60),
            if r.replayed_at.is_some() { "  (replayed)" } else { "" },
        );
    }
    let total = dead_letters::count(&admin.pg, f).await?;
    println!("{} of {} matching (offset {offset})", rows.len(), total);
    Ok(())
}

pub async fn show(admin: &Admin, id: Uuid, json: bool) -> anyhow::Result<()> {
    let Some(r) = dead_letters::get(&admin.pg, id).await? else {
        bail!("no dead letter with id {id}")
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&with_payload(&r))?);
        return Ok(());
    }
    println!("id          {}", r.id);
    // Every text here came from a producer or a step: escaped, so it cannot drive the terminal.
    println!("job id      {}", printable(r.job_id.as_deref().unwrap_or("-")));
    println!("run id      {}", printable(r.run_id.as_deref().unwrap_or("-")));
    println!("step        {}", printable(r.step.as_deref().unwrap_or("-")));
    println!("reason      {}", printable(&r.reason));
    println!("error       {}", printable(r.error.as_deref().unwrap_or("-")));
    println!("attempts    {}", r.attempts);
    println!("worker      {}", printable(&r.worker_id));
    println!("dead at     {}", r.dead_at.to_rfc3339());
    println!(
        "replayed at {}",
        r.replayed_at.map_or("-".to_owned(), |t| t.to_rfc3339())
    );
    println!("payload     {}", printable(&r.payload_text()));
    Ok(())
}

/// Pushes matching dead letters back onto the ready list with fresh attempt counters. Each batch
/// is marked replayed, pushed, then committed, so a failure leaves letters unreplayed rather than
/// jobs lost; a replayed letter is skipped by the next replay.
pub async fn replay(admin: &Admin, f: &Filter, dry_run: bool) -> anyhow::Result<()> {
    let mut f = f.clone();
    f.include_replayed = false;
    // Only letters that exist now: a replayed job that dies again while this runs files a new
    // letter, which must not be replayed in the same breath.
    let started = chrono::Utc::now();
    f.before = Some(f.before.map_or(started, |b| b.min(started)));
    let total = dead_letters::count(&admin.pg, &f).await?;
    if dry_run {
        for r in dead_letters::list(&admin.pg, &f, total.max(1), 0).await? {
            println!(
                "would replay {}  job {}  ({})",
                r.id,
                printable(r.job_id.as_deref().unwrap_or("-")),
                printable(&r.reason)
            );
        }
        println!("dry run: {total} dead letter(s) would be replayed");
        return Ok(());
    }
    let bar = progress(total as u64, "replay");
    let replayed = replay_matching(&admin.pg, &admin.queue, &f, |n| bar.inc(n as u64)).await?;
    bar.finish_and_clear();
    println!("replayed {replayed} dead letter(s) onto {}", admin.config.queue_key);
    Ok(())
}

/// Replays the not yet replayed letters `f` matches, in batches: each batch is marked replayed,
/// its counters reset and its payloads pushed, then committed, so a failure leaves letters
/// unreplayed rather than jobs lost. `replayed` hears each batch's size. Shared by
/// `dlq replay` and the console.
pub async fn replay_matching(
    pg: &Pg,
    queue: &RedisQueue,
    f: &Filter,
    mut replayed: impl FnMut(usize),
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let mut tx = pg.transaction().await?;
        let letters = dead_letters::take_for_replay(&mut tx, f, REPLAY_BATCH).await?;
        if letters.is_empty() {
            break;
        }
        let payloads: Vec<Vec<u8>> = letters.iter().map(|l| l.payload.clone()).collect();
        queue.reset_counters(&payloads).await?;
        queue.push_many(&payloads).await?;
        tx.finish().await?;
        total += letters.len();
        replayed(letters.len());
    }
    Ok(total)
}

pub async fn purge(admin: &Admin, f: &Filter, yes: bool) -> anyhow::Result<()> {
    let n = dead_letters::count(&admin.pg, f).await?;
    if n == 0 {
        println!("no dead letters match");
        return Ok(());
    }
    confirm(&format!("Delete {n} dead letter(s) permanently?"), yes)?;
    let deleted = dead_letters::purge(&admin.pg, f).await?;
    println!("deleted {deleted} dead letter(s)");
    Ok(())
}

fn with_payload(r: &DeadLetter) -> serde_json::Value {
    let mut v = serde_json::to_value(r).expect("dead letters serialise");
    v["payload"] = serde_json::Value::String(r.payload_text());
    v
}

/// One line of at most `n` characters, control characters escaped.
fn clip(s: &str, n: usize) -> String {
    let one_line = printable(s);
    if one_line.chars().count() <= n {
        one_line.into_owned()
    } else {
        one_line.chars().take(n - 1).collect::<String>() + "…"
    }
}
