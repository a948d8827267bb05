//! The SQLite results store (`DATABASE_URL=sqlite://...`): the same tables and the same write
//! contract as Postgres, for a first run on a machine without a database server. SQLite has no
//! arrays to unnest, so a batch is one transaction of per-row statements; that costs nothing
//! here, as every statement is a local call rather than a round trip.

use std::collections::HashSet;

use sqlx::SqlitePool;

use super::Batch;

/// Same rule as the Postgres statement: the first terminal outcome wins (a replay deletes the dead
/// row first). `RETURNING` yields the id only when this row was written.
const UPSERT_RESULT: &str = "
INSERT INTO step_results AS s (job_id, run_id, step, status, attempts, output, error,
                               enqueued_at, started_at, finished_at, duration_ms, worker_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (job_id) DO NOTHING
RETURNING job_id";

const INSERT_DEAD_LETTER: &str = "
INSERT INTO step_dead_letters (id, job_id, run_id, step, reason, error, attempts, payload,
                               worker_id, dead_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (id) DO NOTHING";

const INSERT_ATTEMPT: &str = "
INSERT INTO step_attempts (id, job_id, attempt, outcome, error, started_at, finished_at, worker_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (id) DO NOTHING";

/// Writes a batch atomically; returns the job ids whose result row it wrote.
pub(super) async fn write(batch: &Batch, pool: &SqlitePool) -> Result<Vec<String>, sqlx::Error> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    let mut written = Vec::new();
    for r in &batch.results {
        let id: Option<String> = sqlx::query_scalar(UPSERT_RESULT)
            .bind(&r.job_id)
            .bind(&r.run_id)
            .bind(&r.step)
            .bind(r.status.as_str())
            .bind(r.attempts)
            .bind(r.output.as_deref().map(|o| o.get()))
            .bind(&r.error)
            .bind(r.enqueued_at)
            .bind(r.started_at)
            .bind(r.finished_at)
            .bind(r.duration_ms)
            .bind(&r.worker_id)
            .fetch_optional(&mut *tx)
            .await?;
        written.extend(id);
    }
    let wrote: HashSet<&str> = written.iter().map(String::as_str).collect();
    for d in &batch.dead_letters {
        // A duplicate completion files no second dead letter (see `DeadLetterRecord`).
        if d.with_result && !d.job_id.as_deref().is_some_and(|id| wrote.contains(id)) {
            continue;
        }
        sqlx::query(INSERT_DEAD_LETTER)
            .bind(d.id)
            .bind(&d.job_id)
            .bind(&d.run_id)
            .bind(&d.step)
            .bind(&d.reason)
            .bind(&d.error)
            .bind(d.attempts)
            .bind(&d.payload[..])
            .bind(&d.worker_id)
            .bind(d.dead_at)
            .execute(&mut *tx)
            .await?;
    }
    for a in &batch.attempts {
        sqlx::query(INSERT_ATTEMPT)
            .bind(a.id)
            .bind(&a.job_id)
            .bind(a.attempt)
            .bind(a.outcome)
            .bind(&a.error)
            .bind(a.started_at)
            .bind(a.finished_at)
            .bind(&a.worker_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(written)
}
