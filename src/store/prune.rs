//! Deleting expired outcomes (`RESULT_RETENTION`, `step-worker results purge`), a bounded batch
//! at a time on an index of the finish time: each statement deletes at most [`PRUNE_BATCH`] rows
//! and commits, so pruning never holds row locks for long nor one long statement on a busy table.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqlitePool;

use super::{Db, Pg, Store};

/// Rows one statement deletes at most: a few milliseconds of work on any table, so writers and
/// readers of the same table never queue behind it for longer.
pub const PRUNE_BATCH: i64 = 1_000;
/// The advisory lock (an arbitrary constant, "retention" in ASCII) that lets one replica at a
/// time prune: each statement takes it for its own transaction only, so it holds through a
/// transaction-mode pooler, and a replica that finds it taken stops its pass.
const PRUNE_LOCK: i64 = 0x7265_7465_6e74_696f;

/// Which rows a prune statement deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// `step_results` rows of this status, by `finished_at`.
    Results(&'static str),
    /// `step_attempts` rows, by `finished_at`.
    Attempts,
    /// `step_dead_letters` rows, by `dead_at`.
    DeadLetters,
}

impl Prune {
    /// The table, as the `table` label of `step_worker_pruned_rows_total`.
    pub fn table(self) -> &'static str {
        match self {
            Prune::Results(_) => "step_results",
            Prune::Attempts => "step_attempts",
            Prune::DeadLetters => "step_dead_letters",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Prune::DeadLetters => "dead_at",
            _ => "finished_at",
        }
    }

    fn status(self) -> Option<&'static str> {
        match self {
            Prune::Results(s) => Some(s),
            _ => None,
        }
    }
}

impl Store {
    /// Deletes at most [`PRUNE_BATCH`] rows of `what` older than `before`, in one statement that
    /// commits on its own. Returns how many it deleted: fewer than [`PRUNE_BATCH`] means the
    /// pass is done (or, on Postgres, that another replica holds the prune lock right now).
    pub async fn prune_batch(&self, what: Prune, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        match &self.db {
            Db::Postgres(pg) => prune_pg(pg, what, before).await,
            Db::Sqlite(pool) => prune_sqlite(pool, what, before).await,
        }
    }

    /// Deletes every row of `what` older than `before`, batch after batch, until one comes back
    /// short or `go_on` (told each batch's count) says stop. Returns the rows deleted.
    pub async fn prune_expired(
        &self,
        what: Prune,
        before: DateTime<Utc>,
        mut go_on: impl FnMut(u64) -> bool,
    ) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        loop {
            let n = self.prune_batch(what, before).await?;
            total += n;
            // Told every batch, the last one too: it counts the rows as they go.
            let more = go_on(n);
            if n < PRUNE_BATCH as u64 || !more {
                return Ok(total);
            }
        }
    }

    /// How many rows of `what` are older than `before` (for `results purge` to confirm).
    pub async fn count_expired(&self, what: Prune, before: DateTime<Utc>) -> Result<i64, sqlx::Error> {
        let (table, column) = (what.table(), what.column());
        match &self.db {
            Db::Postgres(pg) => {
                let status = if what.status().is_some() {
                    "status = $2"
                } else {
                    "$2::text IS NULL"
                };
                let sql = format!("SELECT count(*) FROM {table} WHERE {column} < $1 AND {status}");
                let mut s = pg.scope().await?;
                let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(before)
                    .bind(what.status())
                    .persistent(s.cache())
                    .fetch_one(s.conn())
                    .await?;
                s.finish().await?;
                Ok(n)
            }
            Db::Sqlite(pool) => {
                let status = if what.status().is_some() {
                    "status = ?2"
                } else {
                    "?2 IS NULL"
                };
                let sql =
                    format!("SELECT count(*) FROM {table} WHERE julianday({column}) < julianday(?1) AND {status}");
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(before)
                    .bind(what.status())
                    .fetch_one(pool)
                    .await
            }
        }
    }
}

async fn prune_pg(pg: &Pg, what: Prune, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let (table, column) = (what.table(), what.column());
    let status = if what.status().is_some() {
        "t.status = $3"
    } else {
        "$3::text IS NULL"
    };
    let sql = format!(
        "WITH lock AS MATERIALIZED (SELECT pg_try_advisory_xact_lock($1) AS held) \
         DELETE FROM {table} WHERE ctid = ANY(ARRAY( \
             SELECT t.ctid FROM {table} t, lock WHERE lock.held AND t.{column} < $2 AND {status} \
             ORDER BY t.{column} LIMIT $4))"
    );
    let mut s = pg.scope().await?;
    let deleted = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(PRUNE_LOCK)
        .bind(before)
        .bind(what.status())
        .bind(PRUNE_BATCH)
        .persistent(s.cache())
        .execute(s.conn())
        .await?
        .rows_affected();
    s.finish().await?;
    Ok(deleted)
}

async fn prune_sqlite(pool: &SqlitePool, what: Prune, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let (table, column) = (what.table(), what.column());
    // Timestamps are RFC 3339 text here; julianday() compares them whatever their precision.
    let status = if what.status().is_some() {
        "status = ?2"
    } else {
        "?2 IS NULL"
    };
    let sql = format!(
        "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} \
         WHERE julianday({column}) < julianday(?1) AND {status} ORDER BY {column} LIMIT ?3)"
    );
    let deleted = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(before)
        .bind(what.status())
        .bind(PRUNE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(deleted)
}
