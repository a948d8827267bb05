//! Applying and reverting the embedded migrations on Postgres, directly or through a
//! transaction-mode pooler, and telling whether the schema is at the version this binary expects.
//!
//! Direct: sqlx's migrator, which serialises concurrent migrators with a session advisory lock.
//! Behind a transaction-mode pooler a session lock outlives the transaction and stays on a server
//! connection other clients then use, and the migrator's named statements collide, so there all
//! pending migrations run in one transaction that first takes the same lock as a transaction
//! lock (`pg_advisory_xact_lock`): concurrent migrators queue behind it, then find nothing left to
//! do. The bookkeeping is sqlx's own `_sqlx_migrations` table, so both paths share one history.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::migrate::{MigrateError, Migration, Migrator};
use sqlx::{Connection, Executor};

use super::pg::{Pg, Scope};

/// The bound on each migration statement. Longer than the worker's statement timeout because a
/// schema change may rewrite or index a large table; still bounded, so a migration queued behind
/// a lock someone holds fails with a message instead of blocking the deploy (and every statement
/// queued behind its own lock) forever.
pub const MIGRATE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);

const TABLE: &str = "_sqlx_migrations";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
)";

/// Applies every pending migration of `migrator`.
pub(super) async fn run(pg: &Pg, migrator: &Migrator) -> Result<(), MigrateError> {
    if !pg.pooled() {
        let pool = pg.session_pool(MIGRATE_STATEMENT_TIMEOUT);
        let result = migrator.run(&pool).await;
        pool.close().await;
        return result;
    }
    let mut tx = locked_transaction(pg).await?;
    let applied = applied(&mut tx, migrator).await?;
    for m in migrator.iter().filter(|m| m.migration_type.is_up_migration()) {
        match applied.get(&m.version) {
            Some(checksum) if **checksum == *m.checksum => {}
            Some(_) => return Err(MigrateError::VersionMismatch(m.version)),
            None => {
                let started = Instant::now();
                execute(&mut tx, m).await?;
                sqlx::query(
                    "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                     VALUES ($1, $2, TRUE, $3, $4)",
                )
                .bind(m.version)
                .bind(&*m.description)
                .bind(&*m.checksum)
                .bind(started.elapsed().as_nanos() as i64)
                .persistent(false)
                .execute(tx.conn())
                .await?;
            }
        }
    }
    Ok(tx.finish().await?)
}

/// Reverts every applied migration that has a down script, newest first.
pub(super) async fn revert(pg: &Pg, migrator: &Migrator) -> Result<(), MigrateError> {
    if !pg.pooled() {
        let mut conn = pg.direct_connection(MIGRATE_STATEMENT_TIMEOUT).await?;
        let result = migrator.undo(&mut conn, 0).await;
        conn.close().await?;
        return result;
    }
    let mut tx = locked_transaction(pg).await?;
    let applied = applied(&mut tx, migrator).await?;
    let down = migrator.iter().rev().filter(|m| m.migration_type.is_down_migration());
    for m in down.filter(|m| applied.contains_key(&m.version)) {
        execute(&mut tx, m).await?;
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
            .bind(m.version)
            .persistent(false)
            .execute(tx.conn())
            .await?;
    }
    Ok(tx.finish().await?)
}

/// Whether every migration of `migrator` is recorded as applied, unmodified, with nothing failed
/// and nothing unknown to this binary: the schema this binary expects. A database without the
/// bookkeeping table is not current.
pub(super) async fn is_current(pg: &Pg, migrator: &Migrator) -> Result<bool, sqlx::Error> {
    let mut s = pg.scope().await?;
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(TABLE)
        .persistent(s.cache())
        .fetch_one(s.conn())
        .await?;
    if table.is_none() {
        return Ok(false);
    }
    let rows: Vec<(i64, Vec<u8>, bool)> = sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
        .persistent(s.cache())
        .fetch_all(s.conn())
        .await?;
    s.finish().await?;
    Ok(matches_history(migrator, &rows))
}

/// Compares recorded `(version, checksum, success)` rows with the migrations a binary carries.
pub(super) fn matches_history(migrator: &Migrator, rows: &[(i64, Vec<u8>, bool)]) -> bool {
    let expected: HashMap<i64, &[u8]> = migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| (m.version, &*m.checksum))
        .collect();
    rows.len() == expected.len()
        && rows
            .iter()
            .all(|(v, sum, ok)| *ok && expected.get(v).is_some_and(|e| *e == sum.as_slice()))
}

/// A transaction holding the migration lock, with the bookkeeping table in place and no failed
/// migration recorded.
async fn locked_transaction(pg: &Pg) -> Result<Scope, MigrateError> {
    let mut tx = pg.transaction_with_timeout(MIGRATE_STATEMENT_TIMEOUT).await?;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .persistent(false)
        .fetch_one(tx.conn())
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_id(&database))
        .persistent(false)
        .execute(tx.conn())
        .await?;
    tx.conn().execute(CREATE_TABLE).await?;
    let dirty: Option<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = false ORDER BY version LIMIT 1")
            .persistent(false)
            .fetch_optional(tx.conn())
            .await?;
    if let Some(version) = dirty {
        return Err(MigrateError::Dirty(version));
    }
    Ok(tx)
}

/// The recorded migrations (version → checksum); a recorded version this binary does not know is
/// an error, as with sqlx's migrator.
async fn applied(tx: &mut Scope, migrator: &Migrator) -> Result<HashMap<i64, Vec<u8>>, MigrateError> {
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations")
        .persistent(false)
        .fetch_all(tx.conn())
        .await?;
    if let Some((v, _)) = rows.iter().find(|(v, _)| !migrator.version_exists(*v)) {
        return Err(MigrateError::VersionMissing(*v));
    }
    Ok(rows.into_iter().collect())
}

/// Runs one migration script as a simple query (it may hold several statements).
async fn execute(tx: &mut Scope, m: &Migration) -> Result<(), MigrateError> {
    if m.no_tx {
        return Err(MigrateError::Source(
            format!(
                "migration {} runs outside a transaction, which a transaction-mode pooler cannot do: \
                 run `step-worker migrate` with DATABASE_URL set to the direct or session connection (port 5432)",
                m.version
            )
            .into(),
        ));
    }
    tx.conn()
        .execute(m.sql.clone())
        .await
        .map_err(|e| MigrateError::ExecuteMigration(e, m.version))?;
    Ok(())
}

/// The advisory lock key sqlx's migrator takes for `database` (`0x3d32ad9e` × CRC-32 of the
/// name), so a direct migrator and one behind the pooler exclude each other too.
fn lock_id(database: &str) -> i64 {
    0x3d32ad9e * i64::from(crc32(database.as_bytes()))
}

/// CRC-32 (ISO-HDLC, the zlib one), bit by bit: run once per migration, so speed is no concern.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (!(crc & 1)).wrapping_add(1));
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_key_is_the_one_sqlx_takes() {
        // The CRC-32 check value, and sqlx's key for the `postgres` database.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(lock_id("postgres"), 0x3d32ad9e * 0x156a_8775_i64);
    }

    #[test]
    fn the_history_matches_only_when_every_migration_is_applied_unmodified() {
        let m = &super::super::MIGRATOR;
        let all: Vec<(i64, Vec<u8>, bool)> = m
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| (m.version, m.checksum.to_vec(), true))
            .collect();
        assert!(matches_history(m, &all));
        assert!(!matches_history(m, &[]));
        let mut failed = all.clone();
        failed[0].2 = false;
        assert!(!matches_history(m, &failed));
        let mut modified = all.clone();
        modified[0].1[0] ^= 1;
        assert!(!matches_history(m, &modified));
        let mut unknown = all.clone();
        unknown.push((1, vec![], true));
        assert!(!matches_history(m, &unknown));
    }
}
