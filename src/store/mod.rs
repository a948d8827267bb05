//! The durable record of every outcome (sqlx, runtime query API, so no database is needed at
//! compile time): PostgreSQL, or a SQLite file for a first run (see [`sqlite`]). Outcomes are
//! written in batches, atomically, and only after that commit does the worker settle the jobs in
//! the queue.

mod batch;
pub mod dead_letters;
mod sqlite;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub use batch::{AttemptRecord, Batch, DeadLetterRecord, ResultRecord, Status, stored_json};

/// Embedded, reversible migrations (`migrations/*.up.sql` / `*.down.sql`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The same tables for the SQLite store (`migrations_sqlite/`).
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations_sqlite");

/// How long a caller waits for a pooled connection before treating Postgres as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Store {
    db: Db,
}

#[derive(Clone)]
enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Store {
    /// A lazily connecting pool: creating it never fails on an unreachable server, so the worker
    /// can start, serve `/health` (503) and wait for Postgres. A `sqlite:` URL opens (and creates)
    /// a local file instead.
    pub fn connect_lazy(url: &str, pool_size: u32) -> Result<Self, sqlx::Error> {
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
        let options = PgConnectOptions::from_str(url)?.application_name("step-worker");
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Store { db: Db::Postgres(pool) })
    }

    /// The Postgres pool, for what only Postgres serves (the `dlq` and `load` commands).
    pub fn postgres(&self) -> Option<&PgPool> {
        match &self.db {
            Db::Postgres(p) => Some(p),
            Db::Sqlite(_) => None,
        }
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match &self.db {
            Db::Postgres(p) => MIGRATOR.run(p).await,
            Db::Sqlite(p) => SQLITE_MIGRATOR.run(p).await,
        }
    }

    /// Reverts every migration (`step-worker migrate --revert`), dropping the tables.
    pub async fn revert(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match &self.db {
            Db::Postgres(p) => MIGRATOR.undo(p, 0).await,
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
            Db::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
            Db::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
        }
    }

    /// Dead letters not yet replayed: the `dead` queue depth.
    pub async fn pending_dead_letters(&self) -> Result<i64, sqlx::Error> {
        const SQL: &str = "SELECT count(*) FROM step_dead_letters WHERE replayed_at IS NULL";
        match &self.db {
            Db::Postgres(p) => sqlx::query_scalar(SQL).fetch_one(p).await,
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
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(job_id)
                    .fetch_optional(p)
                    .await
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

    /// Writes a batch of outcomes atomically; returns the job ids whose result row this batch
    /// wrote (ids missing from it were already settled by an earlier run).
    pub async fn persist(&self, batch: &Batch) -> Result<Vec<String>, sqlx::Error> {
        match &self.db {
            Db::Postgres(p) => batch.write(p).await,
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
