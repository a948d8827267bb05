//! Reading and managing the dead-letter table for `step-worker dlq`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use uuid::Uuid;

use super::{Pg, Scope};

/// Which dead letters a `dlq` command applies to. Every field narrows the selection.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub ids: Vec<Uuid>,
    pub step: Option<String>,
    pub reason: Option<String>,
    pub run_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub before: Option<DateTime<Utc>>,
    pub include_replayed: bool,
}

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct DeadLetter {
    pub id: Uuid,
    pub job_id: Option<String>,
    pub run_id: Option<String>,
    pub step: Option<String>,
    pub reason: String,
    pub error: Option<String>,
    pub attempts: i32,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub worker_id: String,
    pub dead_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

impl DeadLetter {
    /// The payload as text, with invalid UTF-8 shown as U+FFFD.
    pub fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// One WHERE clause for every command, with each filter a nullable parameter ($1..$7).
const WHERE: &str = "WHERE (cardinality($1::uuid[]) = 0 OR id = ANY($1)) \
    AND ($2::text IS NULL OR step = $2) AND ($3::text IS NULL OR reason = $3) \
    AND ($4::text IS NULL OR run_id = $4) AND ($5::timestamptz IS NULL OR dead_at >= $5) \
    AND ($6::timestamptz IS NULL OR dead_at < $6) AND ($7 OR replayed_at IS NULL)";

const COLUMNS: &str = "id, job_id, run_id, step, reason, error, attempts, payload, worker_id, dead_at, replayed_at";

macro_rules! bind_filter {
    ($q:expr, $f:expr) => {
        $q.bind(&$f.ids)
            .bind(&$f.step)
            .bind(&$f.reason)
            .bind(&$f.run_id)
            .bind($f.since)
            .bind($f.before)
            .bind($f.include_replayed)
    };
}

pub async fn list(pg: &Pg, f: &Filter, limit: i64, offset: i64) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM step_dead_letters {WHERE} ORDER BY dead_at DESC, id LIMIT $8 OFFSET $9");
    let mut s = pg.scope().await?;
    let rows = bind_filter!(sqlx::query_as::<_, DeadLetter>(sqlx::AssertSqlSafe(sql)), f)
        .bind(limit)
        .bind(offset)
        .persistent(s.cache())
        .fetch_all(s.conn())
        .await?;
    s.finish().await?;
    Ok(rows)
}

pub async fn count(pg: &Pg, f: &Filter) -> Result<i64, sqlx::Error> {
    let sql = format!("SELECT count(*) FROM step_dead_letters {WHERE}");
    let mut s = pg.scope().await?;
    let n = bind_filter!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)), f)
        .persistent(s.cache())
        .fetch_one(s.conn())
        .await?;
    s.finish().await?;
    Ok(n)
}

pub async fn get(pg: &Pg, id: Uuid) -> Result<Option<DeadLetter>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM step_dead_letters WHERE id = $1");
    let mut s = pg.scope().await?;
    let row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .persistent(s.cache())
        .fetch_optional(s.conn())
        .await?;
    s.finish().await?;
    Ok(row)
}

/// Marks up to `limit` matching, not yet replayed dead letters as replayed, and deletes their
/// jobs' `dead` result rows so the replay is recorded afresh. Locked rows are skipped, so two
/// concurrent replays never replay the same letter. `tx` comes from [`Pg::transaction`]; the
/// caller pushes the payloads and then commits: a failed push rolls the marks back.
pub async fn take_for_replay(tx: &mut Scope, f: &Filter, limit: i64) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let sql = format!(
        "UPDATE step_dead_letters SET replayed_at = now() WHERE id IN \
         (SELECT id FROM step_dead_letters {WHERE} AND replayed_at IS NULL ORDER BY dead_at LIMIT $8 FOR UPDATE SKIP LOCKED) \
         RETURNING {COLUMNS}"
    );
    let letters: Vec<DeadLetter> = bind_filter!(sqlx::query_as(sqlx::AssertSqlSafe(sql)), f)
        .bind(limit)
        .persistent(tx.cache())
        .fetch_all(tx.conn())
        .await?;
    let job_ids: Vec<String> = letters.iter().filter_map(|l| l.job_id.clone()).collect();
    sqlx::query("DELETE FROM step_results WHERE job_id = ANY($1) AND status = 'dead'")
        .bind(&job_ids)
        .persistent(tx.cache())
        .execute(tx.conn())
        .await?;
    Ok(letters)
}

pub async fn purge(pg: &Pg, f: &Filter) -> Result<u64, sqlx::Error> {
    let sql = format!("DELETE FROM step_dead_letters {WHERE}");
    let mut s = pg.scope().await?;
    let deleted = bind_filter!(sqlx::query(sqlx::AssertSqlSafe(sql)), f)
        .persistent(s.cache())
        .execute(s.conn())
        .await?
        .rows_affected();
    s.finish().await?;
    Ok(deleted)
}
