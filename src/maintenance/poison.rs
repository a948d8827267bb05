//! The drain of the poison outbox: payloads the reaper took out of the queue for good (they kept
//! killing their workers) become dead letters in Postgres. The reaper's script cannot write to
//! Postgres, so they wait in a small Redis list until this commits their rows.

use super::Maintenance;
use crate::store::{Batch, DeadLetterRecord, ResultRecord, Status};

/// Poison entries moved into Postgres per drain.
const POISON_DRAIN: usize = 100;

impl Maintenance {
    /// Moves poison payloads from the Redis outbox into dead letters. Idempotent enough: a crash
    /// between the commit and the removal files the dead letter again under a new id, but the
    /// job's result row stays single (keyed by job id).
    pub async fn drain_poison(&self) {
        let entries = match self.queue.poison_peek(POISON_DRAIN).await {
            Ok(e) if !e.is_empty() => e,
            Ok(_) => return,
            Err(e) => {
                self.metrics.redis_errors.with_label_values(&["poison"]).inc();
                return tracing::warn!(error = %e, "reading the poison outbox failed");
            }
        };
        let mut batch = Batch::default();
        for entry in &entries {
            poison_rows(entry, self.config.max_recoveries, &mut batch);
        }
        if let Err(e) = self.store.persist(&batch).await {
            self.metrics.postgres_errors.with_label_values(&["poison"]).inc();
            return tracing::warn!(error = %e, "writing poison dead letters failed; retrying on a later beat");
        }
        self.metrics.poisoned.inc_by(entries.len() as u64);
        for letter in &batch.dead_letters {
            self.notifier.dead_lettered(letter);
        }
        tracing::error!(
            count = entries.len(),
            "jobs that kept killing their workers were dead-lettered"
        );
        if let Err(e) = self.queue.poison_remove(&entries).await {
            tracing::warn!(error = %e, "clearing the poison outbox failed; entries will be filed again");
        }
    }
}

/// Parses an outbox entry `recoveries|at_ms|wid|payload` into dead-letter rows.
fn poison_rows(entry: &[u8], max_recoveries: u32, batch: &mut Batch) {
    let mut parts = entry.splitn(4, |b| *b == b'|');
    let (Some(count), Some(at), Some(wid), Some(payload)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return tracing::error!("malformed poison outbox entry ignored");
    };
    let count = String::from_utf8_lossy(count).into_owned();
    let at = std::str::from_utf8(at)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64));
    let dead_at = at.unwrap_or_else(chrono::Utc::now);
    let worker_id = String::from_utf8_lossy(wid).into_owned();
    let error = format!("the job was running on a worker that died {count} times (MAX_RECOVERIES = {max_recoveries})");
    let job = crate::job::decode(payload).ok();
    let letter = DeadLetterRecord {
        id: uuid::Uuid::now_v7(),
        job_id: job.as_ref().map(|j| j.id.clone()),
        run_id: job.as_ref().and_then(|j| j.run_id.clone()),
        step: job.as_ref().map(|j| j.step.clone()),
        reason: "interrupted".to_owned(),
        error: Some(error.clone()),
        attempts: 0,
        payload: payload.into(),
        worker_id: worker_id.clone(),
        dead_at,
        with_result: job.is_some(),
    };
    if let Some(job) = job.filter(|j| !batch.results.iter().any(|r| r.job_id == j.id)) {
        batch.results.push(ResultRecord {
            job_id: job.id,
            run_id: job.run_id,
            step: job.step,
            status: Status::Dead,
            attempts: 0,
            output: None,
            error: Some(format!("interrupted: {error}")),
            enqueued_at: job.enqueued_at,
            started_at: None,
            finished_at: dead_at,
            duration_ms: None,
            worker_id,
        });
    }
    batch.dead_letters.push(letter);
}
