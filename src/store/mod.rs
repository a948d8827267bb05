//! Postgres: the durable record of every outcome (sqlx, runtime query API, so no database is
//! needed at compile time). Outcomes are written in batches by one statement, in one round trip,
//! and only after that commit does the worker settle the jobs in Redis.

mod batch;
pub mod dead_letters;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use batch::{AttemptRecord, Batch, DeadLetterRecord, ResultRecord, Status, stored_json};

/// Embedded, reversible migrations (`migrations/*.up.sql` / `*.down.sql`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a caller waits for a pooled connection before treating Postgres as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// A lazily connecting pool: creating it never fails on an unreachable server, so the worker
    /// can start, serve `/health` (503) and wait for Postgres.
    pub fn connect_lazy(url: &str, pool_size: u32) -> Result<Self, sqlx::Error> {
        let options = PgConnectOptions::from_str(url)?.application_name("step-worker");
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Store { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Reverts every migration (`step-worker migrate --revert`), dropping the tables.
    pub async fn revert(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.undo(&self.pool, 0).await
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }

    /// Dead letters not yet replayed: the `dead` queue depth.
    pub async fn pending_dead_letters(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM step_dead_letters WHERE replayed_at IS NULL")
            .fetch_one(&self.pool)
            .await
    }

    /// Writes a batch of outcomes in one statement; returns the job ids whose result row this
    /// batch wrote (ids missing from it were already settled by an earlier run).
    pub async fn persist(&self, batch: &Batch) -> Result<Vec<String>, sqlx::Error> {
        batch.write(&self.pool).await
    }
}

/// Whether a database error is about the data (retrying the same rows cannot help) rather than
/// the connection or the server's state.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        sqlx::Error::Encode(_) | sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => true,
        _ => false,
    }
}
