//! The durable record of every outcome (sqlx, runtime query API, so no database is needed at
//! compile time): PostgreSQL, or a SQLite file for a first run (see [`sqlite`]). Outcomes are
//! written in batches, atomically, and only after that commit does the worker settle the jobs in
//! the queue.

mod batch;
pub mod dead_letters;
mod finished;
mod migrate;
mod pg;
mod prune;
mod sqlite;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub use batch::{AttemptRecord, Batch, DeadLetterRecord, ResultRecord, Status, stored_json};
pub use migrate::MIGRATE_STATEMENT_TIMEOUT;
pub use pg::{Pg, Scope};
pub use prune::{PRUNE_BATCH, Prune};

/// Embedded, reversible migrations (`migrations/*.up.sql` / `*.down.sql`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The same tables for the SQLite store (`migrations_sqlite/`).
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations_sqlite");

/// How long a caller waits for a pooled connection before treating Postgres as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The default bound on each Postgres statement (`DATABASE_STATEMENT_TIMEOUT_MS`): far above the
/// milliseconds a batch write or an operator's query takes, so it only ever ends a statement
/// that waits on a lock someone else holds (an operator's `ALTER TABLE`, a stuck transaction).
/// The worker then retries and reports the failure instead of hanging on it forever.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Store {
    db: Db,
}

#[derive(Clone)]
enum Db {
    Postgres(Pg),
    Sqlite(SqlitePool),
}

impl Store {
    /// [`Store::connect_lazy_with`] with the default statement timeout.
    pub fn connect_lazy(url: &str, pool_size: u32) -> Result<Self, sqlx::Error> {
        Self::connect_lazy_with(url, pool_size, DEFAULT_STATEMENT_TIMEOUT)
    }

    /// A lazily connecting pool: creating it never fails on an unreachable server, so the worker
    /// can start, serve `/health` (503) and wait for Postgres. A `sqlite:` URL opens (and creates)
    /// a local file instead. Each Postgres statement is cancelled by the server after
    /// `statement_timeout`; a transaction-mode pooler is recognised as [`Pg::connect_lazy`] says.
    pub fn connect_lazy_with(url: &str, pool_size: u32, statement_timeout: Duration) -> Result<Self, sqlx::Error> {
        if url.starts_with("sqlite:") {
            // WAL lets `/health` and the CLI read while the pipeline writes; the busy timeout
            // makes a writer wait for another instead of failing at once.
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(ACQUIRE_TIMEOUT);
            let pool = SqlitePoolOptions::new()
                .max_connections(pool_size)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options);
            return Ok(Store { db: Db::Sqlite(pool) });
        }
        let pg = Pg::connect_lazy(url, pool_size, ACQUIRE_TIMEOUT, statement_timeout)?;
        Ok(Store { db: Db::Postgres(pg) })
    }

    /// The Postgres connections, for what only Postgres serves (the `dlq` and `load` commands).
    pub fn postgres(&self) -> Option<&Pg> {
        match &self.db {
            Db::Postgres(p) => Some(p),
            Db::Sqlite(_) => None,
        }
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match &self.db {
            Db::Postgres(p) => migrate::run(p, &MIGRATOR).await,
            Db::Sqlite(p) => SQLITE_MIGRATOR.run(p).await,
        }
    }

    /// Whether the schema is at the version this binary expects: every embedded migration
    /// applied, unmodified, none failed, none unknown.
    pub async fn is_migrated(&self) -> Result<bool, sqlx::Error> {
        match &self.db {
            Db::Postgres(p) => migrate::is_current(p, &MIGRATOR).await,
            Db::Sqlite(p) => {
                let rows: Vec<(i64, Vec<u8>, bool)> =
                    match sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
                        .fetch_all(p)
                        .await
                    {
                        Ok(rows) => rows,
                        // No bookkeeping table yet: nothing applied.
                        Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => Vec::new(),
                        Err(e) => return Err(e),
                    };
                Ok(migrate::matches_history(&SQLITE_MIGRATOR, &rows))
            }
        }
    }

    /// Reverts every migration (`step-worker migrate --revert`), dropping the tables.
    pub async fn revert(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match &self.db {
            Db::Postgres(p) => migrate::revert(p, &MIGRATOR).await,
            Db::Sqlite(p) => SQLITE_MIGRATOR.undo(p, 0).await,
        }
    }

    /// Closes every pooled connection, waiting for those in use to come back. For SQLite this
    /// also folds the write-ahead log into the database file and removes the `-wal`/`-shm` files.
    pub async fn close(&self) {
        match &self.db {
            Db::Postgres(p) => p.close().await,
            Db::Sqlite(p) => p.close().await,
        }
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match &self.db {
            Db::Postgres(p) => {
                let mut s = p.scope().await?;
                sqlx::query("SELECT 1").persistent(s.cache()).execute(s.conn()).await?;
                s.finish().await
            }
            Db::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
        }
    }

    /// Dead letters not yet replayed: the `dead` queue depth.
    pub async fn pending_dead_letters(&self) -> Result<i64, sqlx::Error> {
        const SQL: &str = "SELECT count(*) FROM step_dead_letters WHERE replayed_at IS NULL";
        match &self.db {
            Db::Postgres(p) => {
                let mut s = p.scope().await?;
                let n = sqlx::query_scalar(SQL)
                    .persistent(s.cache())
                    .fetch_one(s.conn())
                    .await?;
                s.finish().await?;
                Ok(n)
            }
            Db::Sqlite(p) => sqlx::query_scalar(SQL).fetch_one(p).await,
        }
    }

    /// A job's result row, if it has one (`GET /jobs/{id}`).
    pub async fn result(&self, job_id: &str) -> Result<Option<JobResult>, sqlx::Error> {
        // The output column is jsonb on Postgres and text on SQLite: both are read as text.
        const COLUMNS: &str = "job_id, status, attempts, error, finished_at, worker_id";
        match &self.db {
            Db::Postgres(p) => {
                let sql = format!("SELECT {COLUMNS}, output::text AS output FROM step_results WHERE job_id = $1");
                let mut s = p.scope().await?;
                let row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(job_id)
                    .persistent(s.cache())
                    .fetch_optional(s.conn())
                    .await?;
                s.finish().await?;
                Ok(row)
            }
            Db::Sqlite(p) => {
                let sql = format!("SELECT {COLUMNS}, output FROM step_results WHERE job_id = $1");
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(job_id)
                    .fetch_optional(p)
                    .await
            }
        }
    }

    /// A job's failed attempts (`step_attempts`), oldest first, at most `limit` of them (the
    /// console's job view).
    pub async fn attempts(&self, job_id: &str, limit: i64) -> Result<Vec<Attempt>, sqlx::Error> {
        const SQL: &str = "SELECT attempt, outcome, error, started_at, finished_at, worker_id \
            FROM step_attempts WHERE job_id = $1 ORDER BY started_at, attempt LIMIT $2";
        match &self.db {
            Db::Postgres(p) => {
                let mut s = p.scope().await?;
                let rows = sqlx::query_as(SQL)
                    .bind(job_id)
                    .bind(limit)
                    .persistent(s.cache())
                    .fetch_all(s.conn())
                    .await?;
                s.finish().await?;
                Ok(rows)
            }
            Db::Sqlite(p) => sqlx::query_as(SQL).bind(job_id).bind(limit).fetch_all(p).await,
        }
    }

    /// Writes a batch of outcomes atomically; returns the job ids whose result row this batch
    /// wrote (ids missing from it were already settled by an earlier run).
    pub async fn persist(&self, batch: &Batch) -> Result<Vec<String>, sqlx::Error> {
        match &self.db {
            Db::Postgres(p) => {
                if batch.is_empty() {
                    return Ok(Vec::new());
                }
                let mut s = p.scope().await?;
                let written = batch.write(&mut s).await?;
                s.finish().await?;
                Ok(written)
            }
            Db::Sqlite(p) => sqlite::write(batch, p).await,
        }
    }
}

/// A job's terminal outcome as stored in `step_results`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobResult {
    pub job_id: String,
    pub status: String,
    pub attempts: i32,
    /// The step's output as JSON text.
    pub output: Option<String>,
    pub error: Option<String>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub worker_id: String,
}

/// One failed, timed-out or panicked attempt as stored in `step_attempts`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Attempt {
    pub attempt: i32,
    pub outcome: String,
    pub error: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub worker_id: String,
}

/// Whether a database error is about the data (retrying the same rows cannot help) rather than
/// the connection or the server's state.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        // Postgres: SQLSTATE classes 22 (data exception) and 23 (integrity constraint); SQLite
        // reports numeric codes, so its constraint failures are recognised by kind.
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
                || !matches!(db.kind(), sqlx::error::ErrorKind::Other)
        }
        sqlx::Error::Encode(_) | sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => true,
        _ => false,
    }
}
