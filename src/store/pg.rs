//! Postgres connections, direct or through a transaction-mode pooler (PgBouncer
//! `pool_mode=transaction`, Supabase's pooler on port 6543), with a server-side timeout on every
//! statement.
//!
//! A transaction-mode pooler lends a server connection to a client for one transaction only, and
//! outside a transaction for one statement, so anything that outlives a statement breaks: sqlx's
//! named prepared statements (`sqlx_s_N`, cached per client connection, so two clients' statements
//! collide on one server connection), and even the unnamed statement, which sqlx parses in one
//! round trip and binds in the next, possibly on another server connection. Session settings
//! (`SET`) land on whichever server connection the pooler picked. So behind a pooler every
//! statement here runs inside an explicit transaction (the pooler keeps the server connection for
//! the whole of it) as an unnamed statement, and the timeout is `SET LOCAL` at its start. A
//! direct connection keeps the statement cache, sets the timeout once per connection, and pays no
//! extra round trip.
//!
//! Rule for callers: reach Postgres only through [`Pg::scope`] or [`Pg::transaction`], and give
//! every query `.persistent(scope.cache())`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Executor, Postgres, Transaction};

/// Supabase's transaction pooler listens here; its session pooler and direct connections on 5432.
const TRANSACTION_POOLER_PORT: u16 = 6543;

/// The URL parameter that says whether `DATABASE_URL` reaches a transaction-mode pooler, as
/// Prisma spells it (`?pgbouncer=true`); it overrides the port rule either way.
const POOLER_PARAM: &str = "pgbouncer";

/// A Postgres pool and how statements must travel over it.
#[derive(Clone)]
pub struct Pg {
    pool: PgPool,
    pooled: bool,
    statement_timeout: Duration,
}

impl Pg {
    /// A lazily connecting pool for `url` (`postgres://…`). A transaction-mode pooler is assumed
    /// for port 6543 or `pgbouncer=true` in the URL (`pgbouncer=false` says otherwise); that
    /// parameter is removed before the URL reaches the driver. `statement_timeout` bounds every
    /// statement on the server (whole milliseconds, at least 1).
    ///
    /// Errors: the URL does not parse.
    pub fn connect_lazy(
        url: &str,
        pool_size: u32,
        acquire_timeout: Duration,
        statement_timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let (url, param) = take_pooler_param(url);
        // No `extra_float_digits` startup parameter (sqlx sends one by default): PgBouncer, in any
        // pool mode, refuses a connection that carries it unless told to ignore it, and since
        // PostgreSQL 12 the server's own default already prints floats exactly.
        let mut options = PgConnectOptions::from_str(&url)?
            .application_name("step-worker")
            .extra_float_digits(None);
        let pooled = param.unwrap_or(options.get_port() == TRANSACTION_POOLER_PORT);
        let statement_timeout = statement_timeout.max(Duration::from_millis(1));
        let mut pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .min_connections(0)
            .acquire_timeout(acquire_timeout);
        if pooled {
            // No statement is ever named or cached.
            options = options.statement_cache_capacity(0);
        } else {
            let set = format!("SET statement_timeout = {}", statement_timeout.as_millis());
            pool = pool.after_connect(move |conn, _| {
                let set = set.clone();
                Box::pin(async move { conn.execute(sqlx::AssertSqlSafe(set)).await.map(|_| ()) })
            });
        }
        Ok(Pg {
            pool: pool.connect_lazy_with(options),
            pooled,
            statement_timeout,
        })
    }

    /// Closes every pooled connection, waiting for those in use to come back.
    pub async fn close(&self) {
        self.pool.close().await
    }

    /// Whether statements go through a transaction-mode pooler.
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// The server-side bound on each statement.
    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    /// One connection for a few statements: a plain pooled connection when direct, a transaction
    /// behind a pooler. Call [`Scope::finish`] after the last statement (a scope dropped without
    /// it rolls back behind a pooler).
    pub async fn scope(&self) -> Result<Scope, sqlx::Error> {
        if self.pooled {
            return self.transaction().await;
        }
        Ok(Scope {
            inner: Inner::Conn(self.pool.acquire().await?),
            cache: true,
        })
    }

    /// A transaction, in either mode, with the statement timeout applied to it.
    pub async fn transaction(&self) -> Result<Scope, sqlx::Error> {
        self.transaction_with_timeout(self.statement_timeout).await
    }

    /// A transaction whose statements may each run for `timeout` (migrations: longer than the
    /// worker's own statements, still bounded).
    pub async fn transaction_with_timeout(&self, timeout: Duration) -> Result<Scope, sqlx::Error> {
        // One round trip: BEGIN and SET LOCAL travel as one simple query. SET LOCAL ends with the
        // transaction, so it never reaches another client of a pooler's server connection.
        let begin = format!(
            "BEGIN; SET LOCAL statement_timeout = {}",
            timeout.max(Duration::from_millis(1)).as_millis()
        );
        let tx = self.pool.begin_with(sqlx::AssertSqlSafe(begin)).await?;
        Ok(Scope {
            inner: Inner::Tx(tx),
            cache: !self.pooled,
        })
    }

    /// A pool of one connection of its own, whose statements may each run for `timeout` (direct
    /// mode only: sqlx's migrator, which needs a session of its own). Close it when done. A pool
    /// rather than a bare connection because sqlx's migrator run on `&mut PgConnection` is a
    /// future that is not `Send` for every lifetime, which would make the worker's startup
    /// future lose `Send`; run on `&PgPool` it is.
    pub(super) fn session_pool(&self, timeout: Duration) -> PgPool {
        let options = (*self.pool.connect_options()).clone();
        let set = format!("SET statement_timeout = {}", timeout.as_millis());
        PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .after_connect(move |conn, _| {
                let set = set.clone();
                Box::pin(async move { conn.execute(sqlx::AssertSqlSafe(set)).await.map(|_| ()) })
            })
            .connect_lazy_with(options)
    }

    /// A connection of its own, taken out of the pool, whose statements may each run for
    /// `timeout` (direct mode only: sqlx's migrator, which needs a session of its own). Close it
    /// when done; it never returns to the pool with the longer timeout.
    pub(super) async fn direct_connection(&self, timeout: Duration) -> Result<PgConnection, sqlx::Error> {
        debug_assert!(!self.pooled, "a session of its own needs a direct connection");
        let mut conn = self.pool.acquire().await?.detach();
        let set = format!("SET statement_timeout = {}", timeout.as_millis());
        conn.execute(sqlx::AssertSqlSafe(set)).await?;
        Ok(conn)
    }
}

/// A connection lent by [`Pg::scope`] or [`Pg::transaction`].
pub struct Scope {
    inner: Inner,
    cache: bool,
}

enum Inner {
    Conn(PoolConnection<Postgres>),
    Tx(Transaction<'static, Postgres>),
}

impl Scope {
    /// The connection to run statements on.
    pub fn conn(&mut self) -> &mut PgConnection {
        match &mut self.inner {
            Inner::Conn(c) => c,
            Inner::Tx(t) => t,
        }
    }

    /// Whether a statement may be prepared under a name and cached: the value for every
    /// query's `.persistent(…)` (false behind a pooler, where names collide).
    pub fn cache(&self) -> bool {
        self.cache
    }

    /// Commits the transaction, if this scope is one.
    pub async fn finish(self) -> Result<(), sqlx::Error> {
        match self.inner {
            Inner::Conn(_) => Ok(()),
            Inner::Tx(t) => t.commit().await,
        }
    }
}

/// Removes `pgbouncer=…` from the URL's query; returns the URL the driver gets and the value
/// (`true`/`1`/`yes` turn pooler mode on, anything else off), if the parameter was there.
fn take_pooler_param(url: &str) -> (String, Option<bool>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
            if k != POOLER_PARAM {
                return true;
            }
            value = Some(matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
            false
        })
        .collect();
    match rest.is_empty() {
        true => (base.to_owned(), value),
        false => (format!("{base}?{}", rest.join("&")), value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled(url: &str) -> bool {
        Pg::connect_lazy(url, 1, Duration::from_secs(1), Duration::from_secs(1))
            .unwrap()
            .pooled()
    }

    #[tokio::test]
    async fn the_transaction_pooler_is_recognised_by_port_or_url_parameter() {
        assert!(!pooled("postgres://u:p@db.example:5432/postgres"));
        assert!(pooled("postgres://u:p@pooler.example:6543/postgres?sslmode=require"));
        assert!(pooled("postgres://u:p@db.example:6432/app?pgbouncer=true"));
        assert!(!pooled("postgres://u:p@pooler.example:6543/postgres?pgbouncer=false"));
    }

    #[test]
    fn the_pooler_parameter_is_removed_and_the_others_kept() {
        assert_eq!(
            take_pooler_param("postgres://h/db?sslmode=require&pgbouncer=true&application_name=x"),
            (
                "postgres://h/db?sslmode=require&application_name=x".to_owned(),
                Some(true)
            )
        );
        assert_eq!(
            take_pooler_param("postgres://h/db?pgbouncer=false"),
            ("postgres://h/db".to_owned(), Some(false))
        );
        assert_eq!(
            take_pooler_param("postgres://h/db"),
            ("postgres://h/db".to_owned(), None)
        );
    }
}
