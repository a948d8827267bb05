//! Cancelling jobs (`step-worker cancel`, `DELETE /jobs/{id}`): the one operation both call.
//!
//! A job still waiting (in `step.ready`, the delayed set, a paused step's held list, a limited
//! step's waiting list) leaves the queue atomically for the cancelled outbox, and gets a
//! `cancelled` result row from there: written here at once, or, if Postgres refuses it now, by a
//! worker's heartbeat later (the outbox keeps the job until its row is committed, so a cancelled
//! job is never simply gone). A job a worker has claimed is flagged for that worker, whose next
//! heartbeat fires the job's cancellation token: the step sees `ctx.cancel` fire (an HTTP step's
//! request is dropped), and the worker writes the `cancelled` row itself. Should that worker die
//! first, the reaper sends the job to the outbox instead of back to the queue.

use crate::queue::{CancelTarget, Queue};
use crate::store::{Batch, DeadLetterRecord, ResultRecord, Status, Store};

/// A cancelled outbox entry's fields: `attempts|at_ms|by|held|payload`, `held` 1 when a worker
/// held the job (claimed or running) and 0 when it was waiting.
const ENTRY_FIELDS: usize = 5;

/// What a cancellation did.
#[derive(Debug, Default)]
pub struct Report {
    /// (job id, step) of each waiting job removed from the queue.
    pub removed: Vec<(String, String)>,
    /// Whether the removed jobs' rows are committed. When false, Postgres refused them for now
    /// and the jobs wait in the cancelled outbox; a worker's heartbeat files them later.
    pub recorded: bool,
    /// (job id, worker id) of each job found claimed or running: the worker stops it within one
    /// heartbeat and writes its row.
    pub running: Vec<(String, String)>,
    /// What went wrong after the jobs were removed (nothing is lost by it: a worker's heartbeat
    /// finishes the job), for the command line to print.
    pub warnings: Vec<String>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.running.is_empty()
    }
}

/// Why nothing was cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// The job has a terminal result already (HTTP 409).
    #[error("job {id:?} has already finished: {status}")]
    Finished { id: String, status: String },
    /// No job with this id is anywhere in the queue, and none has a result (HTTP 404).
    #[error("no job {0:?} is queued, delayed, held, waiting on a limit or running")]
    NotFound(String),
    /// Redis failed; nothing was cancelled (the script is atomic). Try again.
    #[error("the queue failed: {0}")]
    Queue(#[from] redis::RedisError),
    /// Postgres failed before anything was cancelled (the finished check). Try again.
    #[error("the results store failed: {0}")]
    Store(#[from] sqlx::Error),
}

/// Cancels `target`'s jobs. `by` names who cancels (a worker id, or `cli@<host>`); it is stored
/// as the `worker_id` of the rows written here.
///
/// Errors: see [`CancelError`]. A job id with a result is [`CancelError::Finished`] before the
/// queue is touched; one found nowhere is [`CancelError::NotFound`]. A run id that matches
/// nothing is an empty [`Report`], not an error.
pub async fn cancel(queue: &Queue, store: &Store, target: &CancelTarget, by: &str) -> Result<Report, CancelError> {
    if let CancelTarget::Id(id) = target {
        finished_check(store, id).await?;
    }
    let reply = queue.cancel(target, by).await?;
    let mut report = Report {
        running: reply.running.into_iter().map(|(wid, id)| (id, wid)).collect(),
        recorded: true,
        ..Report::default()
    };
    let batch = rows(&reply.removed, by);
    report.removed = batch
        .results
        .iter()
        .map(|r| (r.job_id.clone(), r.step.clone()))
        .collect();
    if !reply.removed.is_empty() {
        match store.persist(&batch).await {
            Ok(_) => {
                if let Err(e) = queue.cancelled_remove(&reply.removed, true).await {
                    // Filed again by a heartbeat's drain: the rows are keyed by job id.
                    let warning = format!("clearing the cancelled outbox failed ({e}); a worker's heartbeat clears it");
                    tracing::warn!("{warning}");
                    report.warnings.push(warning);
                }
            }
            Err(e) => {
                let warning = format!("writing the cancelled rows failed ({e}); a worker's heartbeat writes them");
                tracing::warn!("{warning}");
                report.warnings.push(warning);
                report.recorded = false;
            }
        }
    }
    if report.is_empty()
        && let CancelTarget::Id(id) = target
    {
        // Cancelled before, its row still to be written; or finished while we looked.
        if reply.pending {
            return Err(CancelError::Finished {
                id: id.clone(),
                status: "cancelled".to_owned(),
            });
        }
        finished_check(store, id).await?;
        return Err(CancelError::NotFound(id.clone()));
    }
    Ok(report)
}

async fn finished_check(store: &Store, id: &str) -> Result<(), CancelError> {
    match store.result(id).await? {
        Some(r) => Err(CancelError::Finished {
            id: id.to_owned(),
            status: r.status,
        }),
        None => Ok(()),
    }
}

/// Where a job was when its cancellation took effect, for the row's `error` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting in Redis: it never ran.
    Waiting,
    /// Claimed by a worker that then died or handed it on before it could stop it.
    Held,
    /// Running: its step was stopped.
    Running,
    /// Claimed, stopped before its step started.
    Claimed,
}

/// The `error` text of a cancelled row.
pub fn reason(stage: Stage) -> String {
    let when = match stage {
        Stage::Waiting => "before it ran",
        Stage::Held => "while a worker held it (claimed, or running)",
        Stage::Running => "while it ran",
        Stage::Claimed => "after its claim, before its step started",
    };
    format!("cancelled: an operator cancelled the job {when}")
}

/// The rows of cancelled outbox entries: a `cancelled` result per job id, and for an entry
/// whose payload has no usable id (never written, as only valid ids match; kept so that such an
/// entry could not vanish without a record) a dead letter with the raw payload. `by` is the
/// dead letter's worker id.
pub fn rows(entries: &[Vec<u8>], by: &str) -> Batch {
    let mut batch = Batch::default();
    for entry in entries {
        match row(entry) {
            Some(r) if batch.results.iter().any(|b| b.job_id == r.job_id) => {}
            Some(r) => batch.results.push(r),
            None => {
                tracing::error!("a cancelled outbox entry without a usable job id is filed as a dead letter");
                let payload = entry.splitn(ENTRY_FIELDS, |b| *b == b'|').last().unwrap_or(entry);
                batch.dead_letters.push(DeadLetterRecord {
                    id: uuid::Uuid::now_v7(),
                    job_id: None,
                    run_id: None,
                    step: None,
                    reason: "invalid_envelope".to_owned(),
                    error: Some("cancelled by an operator, and its envelope has no usable id".to_owned()),
                    attempts: 0,
                    payload: payload.into(),
                    worker_id: by.to_owned(),
                    dead_at: chrono::Utc::now(),
                    with_result: false,
                });
            }
        }
    }
    batch
}

/// The `cancelled` row of a cancelled outbox entry (`attempts|at_ms|by|held|payload`); `None` for an
/// entry that does not parse or a payload without an id (neither is ever written: jobs are
/// matched by id).
pub fn row(entry: &[u8]) -> Option<ResultRecord> {
    let mut parts = entry.splitn(ENTRY_FIELDS, |b| *b == b'|');
    let (attempts, at, by, held, payload) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let stage = if held == b"1" { Stage::Held } else { Stage::Waiting };
    let attempts = std::str::from_utf8(attempts).ok()?.parse::<i32>().unwrap_or(0);
    let at = std::str::from_utf8(at)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(chrono::DateTime::from_timestamp_millis)
        .unwrap_or_else(chrono::Utc::now);
    // A job whose envelope is malformed past its id (a bad `run_at`, say) was still matched by
    // its id: it gets its row from what can be salvaged.
    let (job_id, run_id, step, enqueued_at) = match crate::job::decode(payload) {
        Ok(job) => (job.id, job.run_id, job.step, job.enqueued_at),
        Err((_, salvage)) => (salvage.id?, salvage.run_id, salvage.step.unwrap_or_default(), None),
    };
    if !crate::job::valid_id(&job_id) {
        return None;
    }
    Some(ResultRecord {
        job_id,
        run_id,
        step,
        status: Status::Cancelled,
        attempts,
        output: None,
        error: Some(reason(stage)),
        enqueued_at,
        started_at: None,
        finished_at: at,
        duration_ms: None,
        worker_id: String::from_utf8_lossy(by).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_entry_becomes_its_cancelled_row() {
        let entry = br#"2|1764547200000|cli@host|0|{"id":"j-1","step":"email.send","run_id":"r-1","input":{}}"#;
        let r = row(entry).expect("a row");
        assert_eq!((r.job_id.as_str(), r.step.as_str()), ("j-1", "email.send"));
        assert_eq!(
            (r.run_id.as_deref(), r.attempts, r.status),
            (Some("r-1"), 2, Status::Cancelled)
        );
        assert_eq!(r.finished_at.timestamp_millis(), 1_764_547_200_000);
        assert_eq!(r.worker_id, "cli@host");
        assert!(r.error.unwrap().ends_with("before it ran"));
        let held = row(br#"3|1|host:1:ab|1|{"id":"j-2","step":"s"}"#).unwrap();
        assert!(held.error.unwrap().contains("while a worker held it"));
    }

    #[test]
    fn an_entry_without_a_usable_id_is_filed_as_a_dead_letter_not_dropped() {
        assert!(row(b"no separators").is_none());
        assert!(row(b"0|1|by|0|not json").is_none());
        let entries = [
            br#"0|1|by|0|{"id":"","step":"s"}"#.to_vec(),
            br#"0|1|by|0|{"id":"ok-1","step":"s"}"#.to_vec(),
            br#"0|1|by|0|{"id":"ok-1","step":"s"}"#.to_vec(),
        ];
        let batch = rows(&entries, "cli:x");
        assert_eq!(batch.results.len(), 1, "one row per id");
        assert_eq!(batch.dead_letters.len(), 1);
        assert_eq!(&batch.dead_letters[0].payload[..], br#"{"id":"","step":"s"}"#);
    }
}
