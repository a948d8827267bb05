//! Which of a claimed batch's job ids already have a terminal result: the duplicate check that
//! keeps a finished id from running again (README, "Guarantees"). One statement per claim batch,
//! whatever its size, so its cost is one round trip per batch and not one per job.
//!
//! Every `step_results` row is terminal (`succeeded`, `dead` or `cancelled`): a row is only ever written for a
//! job's last outcome, so the check needs no status filter. A replayed dead letter has no row
//! any more (`dlq replay` deletes the `dead` row in the transaction that marks the letter
//! replayed), which is what re-arms its job.

use std::collections::HashSet;

use sqlx::SqlitePool;

use super::{Db, Store};

/// Postgres. `FOR KEY SHARE` matters only for the rows it finds, so it costs nothing when no id
/// is a duplicate (the usual case): a row that a `dlq replay` is deleting is locked until that
/// replay commits, and the replay pushes its payloads *before* it commits, so without the lock a
/// worker could claim a replayed job, still see its `dead` row and settle it as a duplicate.
/// With it the check waits for the commit and then no longer sees the row.
const PG_SQL: &str = "SELECT job_id FROM step_results WHERE job_id = ANY($1) FOR KEY SHARE";

/// SQLite has no arrays: the ids travel as one JSON array. No lock is needed (and there is no
/// `dlq replay` on SQLite).
const SQLITE_SQL: &str = "SELECT job_id FROM step_results WHERE job_id IN (SELECT value FROM json_each($1))";

impl Store {
    /// The ids among `ids` that have a row in `step_results`: jobs that must not run again.
    /// Behind a transaction-mode pooler the statement runs in its own transaction ([`super::Pg::scope`]).
    ///
    /// Errors: the store is unreachable or refused the statement (the caller decides; see
    /// [`crate::dedup`]).
    pub async fn finished(&self, ids: &[String]) -> Result<HashSet<String>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<String> = match &self.db {
            Db::Postgres(p) => {
                let mut s = p.scope().await?;
                // Never a named, cached statement: after five runs Postgres may keep a generic
                // plan made while the table was nearly empty (a sequential scan), and go on
                // scanning the whole table for every batch once it holds millions of rows. An
                // unnamed statement is planned for its ids each time: an index lookup.
                let rows = sqlx::query_scalar(PG_SQL)
                    .bind(ids)
                    .persistent(false)
                    .fetch_all(s.conn())
                    .await?;
                s.finish().await?;
                rows
            }
            Db::Sqlite(p) => sqlite_finished(p, ids).await?,
        };
        Ok(rows.into_iter().collect())
    }
}

async fn sqlite_finished(pool: &SqlitePool, ids: &[String]) -> Result<Vec<String>, sqlx::Error> {
    let json = serde_json::to_string(ids).expect("a list of strings serialises");
    sqlx::query_scalar(SQLITE_SQL).bind(json).fetch_all(pool).await
}
