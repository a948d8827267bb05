//! One batch of outcomes and the single statement that writes it. Data-modifying CTEs make the
//! three inserts one atomic statement and one round trip on a direct connection (behind a
//! transaction-mode pooler it is still one statement, inside the transaction [`Scope`] opens).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::types::Json;
use uuid::Uuid;

use super::Scope;
use crate::queue::Payload;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    Dead,
    /// An operator cancelled the job (`step-worker cancel`, `DELETE /jobs/{id}`).
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Dead => "dead",
            Status::Cancelled => "cancelled",
        }
    }
}

/// A terminal outcome for `step_results`.
#[derive(Debug, Clone)]
pub struct ResultRecord {
    pub job_id: String,
    pub run_id: Option<String>,
    pub step: String,
    pub status: Status,
    pub attempts: i32,
    /// The step's output as JSON text, ready for jsonb ([`stored_json`]).
    pub output: Option<Box<RawValue>>,
    pub error: Option<String>,
    pub enqueued_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: Option<i64>,
    pub worker_id: String,
}

/// A row for `step_dead_letters`. `id` is fixed when the outcome is created, so writing the same
/// batch again after an ambiguous commit cannot duplicate it.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    pub id: Uuid,
    pub job_id: Option<String>,
    pub run_id: Option<String>,
    pub step: Option<String>,
    pub reason: String,
    pub error: Option<String>,
    pub attempts: i32,
    pub payload: Payload,
    pub worker_id: String,
    pub dead_at: DateTime<Utc>,
    /// The job also has a `step_results` row in this batch; the dead letter is written only if
    /// that row is (a duplicate completion files no second dead letter).
    pub with_result: bool,
}

/// A row for `step_attempts`: one failed, timed-out or panicked attempt.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub id: Uuid,
    pub job_id: String,
    pub attempt: i32,
    pub outcome: &'static str,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub worker_id: String,
}

#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub results: Vec<ResultRecord>,
    pub dead_letters: Vec<DeadLetterRecord>,
    pub attempts: Vec<AttemptRecord>,
}

const PERSIST_SQL: &str = r#"
WITH r AS (
    INSERT INTO step_results AS s (job_id, run_id, step, status, attempts, output, error,
                                   enqueued_at, started_at, finished_at, duration_ms, worker_id)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::jsonb[],
                         $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
                         $11::int8[], $12::text[])
    -- The first terminal outcome wins, always: a late success (a rescued job's first run, a
    -- duplicate) never overwrites a dead row and its live dead letter. A replay deletes the
    -- dead row before it pushes the job again, so the replayed run is a first outcome.
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id
), d AS (
    INSERT INTO step_dead_letters (id, job_id, run_id, step, reason, error, attempts, payload,
                                   worker_id, dead_at)
    SELECT u.id, u.job_id, u.run_id, u.step, u.reason, u.error, u.attempts, u.payload,
           u.worker_id, u.dead_at
    FROM UNNEST($13::uuid[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[],
                $19::int4[], $20::bytea[], $21::text[], $22::timestamptz[], $23::bool[])
         AS u(id, job_id, run_id, step, reason, error, attempts, payload, worker_id, dead_at, with_result)
    WHERE NOT u.with_result OR u.job_id IN (SELECT job_id FROM r)
    ON CONFLICT (id) DO NOTHING
), a AS (
    INSERT INTO step_attempts (id, job_id, attempt, outcome, error, started_at, finished_at, worker_id)
    SELECT * FROM UNNEST($24::uuid[], $25::text[], $26::int4[], $27::text[], $28::text[],
                         $29::timestamptz[], $30::timestamptz[], $31::text[])
    ON CONFLICT (id) DO NOTHING
)
SELECT job_id FROM r
"#;

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.results.is_empty() && self.dead_letters.is_empty() && self.attempts.is_empty()
    }

    pub fn len(&self) -> usize {
        self.results.len() + self.dead_letters.len() + self.attempts.len()
    }

    pub(super) async fn write(&self, s: &mut Scope) -> Result<Vec<String>, sqlx::Error> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let r = &self.results;
        let d = &self.dead_letters;
        let a = &self.attempts;
        sqlx::query_scalar(PERSIST_SQL)
            .bind(r.iter().map(|x| pg_text(&x.job_id)).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.run_id.as_deref().map(pg_text)).collect::<Vec<_>>())
            .bind(r.iter().map(|x| pg_text(&x.step)).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.status.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.attempts).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.output.as_deref().map(Json)).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.error.as_deref().map(pg_text)).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.enqueued_at).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.started_at).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.finished_at).collect::<Vec<_>>())
            .bind(r.iter().map(|x| x.duration_ms).collect::<Vec<_>>())
            .bind(r.iter().map(|x| pg_text(&x.worker_id)).collect::<Vec<_>>())
            .bind(d.iter().map(|x| x.id).collect::<Vec<_>>())
            .bind(d.iter().map(|x| x.job_id.as_deref().map(pg_text)).collect::<Vec<_>>())
            .bind(d.iter().map(|x| x.run_id.as_deref().map(pg_text)).collect::<Vec<_>>())
            .bind(d.iter().map(|x| x.step.as_deref().map(pg_text)).collect::<Vec<_>>())
            .bind(d.iter().map(|x| pg_text(&x.reason)).collect::<Vec<_>>())
            .bind(d.iter().map(|x| x.error.as_deref().map(pg_text)).collect::<Vec<_>>())
            .bind(d.iter().map(|x| x.attempts).collect::<Vec<_>>())
            .bind(d.iter().map(|x| x.payload.to_vec()).collect::<Vec<_>>())
            .bind(d.iter().map(|x| pg_text(&x.worker_id)).collect::<Vec<_>>())
            .bind(d.iter().map(|x| x.dead_at).collect::<Vec<_>>())
            .bind(d.iter().map(|x| x.with_result).collect::<Vec<_>>())
            .bind(a.iter().map(|x| x.id).collect::<Vec<_>>())
            .bind(a.iter().map(|x| pg_text(&x.job_id)).collect::<Vec<_>>())
            .bind(a.iter().map(|x| x.attempt).collect::<Vec<_>>())
            .bind(a.iter().map(|x| x.outcome).collect::<Vec<_>>())
            .bind(a.iter().map(|x| x.error.as_deref().map(pg_text)).collect::<Vec<_>>())
            .bind(a.iter().map(|x| x.started_at).collect::<Vec<_>>())
            .bind(a.iter().map(|x| x.finished_at).collect::<Vec<_>>())
            .bind(a.iter().map(|x| pg_text(&x.worker_id)).collect::<Vec<_>>())
            .persistent(s.cache())
            .fetch_all(s.conn())
            .await
    }
}

/// Postgres text cannot hold NUL; a payload may. Replace it rather than fail the whole batch.
fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// A step's output as the JSON text stored in `step_results.output`, serialised once here so the
/// batch writer passes it through as it is. jsonb rejects `\u0000`, which is how JSON text
/// carries NUL; only when the text contains that sequence is the tree cleaned first.
pub fn stored_json(v: &Value) -> Box<RawValue> {
    let raw = serde_json::value::to_raw_value(v).expect("a JSON value always serialises");
    if !raw.get().contains("\\u0000") {
        return raw;
    }
    serde_json::value::to_raw_value(&pg_json(v)).expect("a JSON value always serialises")
}

/// jsonb rejects `\u0000` in strings and keys; the same replacement, applied through the tree.
fn pg_json(v: &Value) -> Value {
    match v {
        Value::String(s) if s.contains('\0') => Value::String(pg_text(s).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(pg_json).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (pg_text(k).into_owned(), pg_json(v))).collect()),
        other => other.clone(),
    }
}
