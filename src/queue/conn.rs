//! The connection to Redis: one server, or a Redis Cluster.
//!
//! `REDIS_URL` names one server, any one node of a Redis Cluster, or several nodes of a cluster
//! separated by commas (seeds: the first that answers is enough). With a single URL the mode is
//! detected when connecting: a cluster node says `cluster_enabled:1` in `INFO cluster`, and where
//! `INFO` is refused, it answers a key it does not own with `MOVED`. Nothing is configured twice.
//!
//! On a cluster, commands go through the redis crate's cluster client, which routes each one by
//! its first key, follows `MOVED`/`ASK`, and rebuilds its slot map after a failover. Every key of
//! the queue shares the ready list's hash slot (see `keys`), so each script runs on one node.
//! The blocking claim is the one exception: it must not share a multiplexed connection (see
//! [`super::BlockingConn`]), and the cluster client may silently resend a command after a dropped
//! connection, which for `BLMOVE` would move a second job while the first sat unseen in the
//! worker's list. So it gets a plain connection to the node that owns the slot, looked up in
//! `CLUSTER SLOTS` when it is opened; a failover or a resharding breaks it (an I/O error or
//! `MOVED`), and the claimer opens a new one, looked up afresh.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, RedisResult, Value,
};

use super::{COMMAND_TIMEOUT, RECONNECT_MAX_DELAY};

/// A shared, multiplexed connection to Redis that reconnects by itself. Cheap to clone.
#[derive(Clone)]
pub enum RedisConn {
    /// One server, through a `ConnectionManager`.
    Single(ConnectionManager),
    /// A Redis Cluster, through the redis crate's cluster client.
    Cluster(ClusterConnection),
}

/// How to open more connections to the same Redis (the blocking claim's): the settings of the
/// first URL in `REDIS_URL` and the CA to trust.
#[derive(Clone)]
pub struct Endpoint {
    /// The first seed: credentials, TLS settings and database for every node.
    seed: ConnectionInfo,
    ca_pem: Option<Vec<u8>>,
}

impl RedisConn {
    /// Connects to `url` (one URL, or comma-separated cluster seeds) trusting `ca_pem` (PEM) for
    /// `rediss://`. `probe_key` is a key the caller will use: where `INFO` is refused, a
    /// `MOVED` reply for it reveals a cluster. Returns the connection and how to open more.
    ///
    /// Errors: `InvalidClientConfig` for a URL that does not parse (or seeds that disagree on
    /// credentials or TLS), otherwise the first connection's error (refused, TLS, auth).
    pub async fn connect(url: &str, ca_pem: Option<&[u8]>, probe_key: &str) -> RedisResult<(Self, Endpoint)> {
        let seeds = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?;
        let Some(seed) = seeds.first().cloned() else {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "REDIS_URL names no server",
            )));
        };
        let endpoint = Endpoint {
            seed,
            ca_pem: ca_pem.map(<[u8]>::to_vec),
        };
        let client = endpoint.client(endpoint.seed.clone())?;
        let cluster = seeds.len() > 1 || is_cluster_node(&client, probe_key).await?;
        let conn = if cluster {
            let mut builder = ClusterClientBuilder::new(seeds)
                .connection_timeout(COMMAND_TIMEOUT)
                .response_timeout(COMMAND_TIMEOUT)
                .max_retry_wait(RECONNECT_MAX_DELAY.as_millis() as u64);
            // `certs` turns TLS on: only where the URL asked for it, as for one server.
            if let (Some(pem), ConnectionAddr::TcpTls { .. }) = (ca_pem, endpoint.seed.addr()) {
                builder = builder.certs(tls_roots(pem));
            }
            RedisConn::Cluster(builder.build()?.get_async_connection().await?)
        } else {
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(COMMAND_TIMEOUT))
                .set_connection_timeout(Some(COMMAND_TIMEOUT))
                .set_max_delay(RECONNECT_MAX_DELAY);
            RedisConn::Single(client.get_connection_manager_with_config(config).await?)
        };
        Ok((conn, endpoint))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// Sends `cmd` to the node that owns `key`'s slot (for per-node commands such as
    /// `CLIENT UNBLOCK`, which the cluster client would otherwise send to a random node).
    pub async fn query_at_owner(&self, cmd: Cmd, key: &str) -> RedisResult<Value> {
        match self.clone() {
            RedisConn::Single(mut c) => cmd.query_async(&mut c).await,
            RedisConn::Cluster(mut c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                c.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)))
                    .await
            }
        }
    }

    /// Sends `cmd` to every node (one server: to it) and returns each reply, for per-node
    /// settings such as `CONFIG GET`: on a cluster, a replica becomes the master on failover.
    pub async fn query_each_node(&self, cmd: Cmd) -> RedisResult<Vec<Value>> {
        match self.clone() {
            RedisConn::Single(mut c) => Ok(vec![cmd.query_async(&mut c).await?]),
            RedisConn::Cluster(mut c) => {
                let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
                match c.route_command(cmd, all).await? {
                    // Keyed by node address.
                    Value::Map(replies) => Ok(replies.into_iter().map(|(_, v)| v).collect()),
                    other => Ok(vec![other]),
                }
            }
        }
    }

    /// The address of the master that owns `key`'s slot, as the cluster announces it.
    pub(super) async fn owner_of(&self, key: &str, endpoint: &Endpoint) -> RedisResult<ConnectionInfo> {
        let mut conn = self.clone();
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await?;
        let ranges: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn).await?;
        for range in ranges {
            // [first slot, last slot, [host, port, id, ...] of the master, replicas...]
            let Value::Array(range) = range else { continue };
            let (Some(first), Some(last), Some(Value::Array(master))) = (range.first(), range.get(1), range.get(2))
            else {
                continue;
            };
            let (first, last): (i64, i64) = (redis::from_redis_value_ref(first)?, redis::from_redis_value_ref(last)?);
            if !(first..=last).contains(&slot) {
                continue;
            }
            let host: String = master
                .first()
                .map(redis::from_redis_value_ref)
                .transpose()?
                .unwrap_or_default();
            let port: u16 = master
                .get(1)
                .map(redis::from_redis_value_ref)
                .transpose()?
                .unwrap_or_default();
            // "" or "?": the node does not know how it is reached (cluster-announce-* unset).
            if host.is_empty() || host == "?" || port == 0 {
                break;
            }
            return Ok(endpoint.at(host, port));
        }
        Err(RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
            "no reachable master announced for the queue's hash slot",
            format!("slot {slot}"),
        )))
    }
}

impl Endpoint {
    /// A client for `info`, trusting the configured CA.
    pub(super) fn client(&self, info: ConnectionInfo) -> RedisResult<Client> {
        match &self.ca_pem {
            Some(pem) => Client::build_with_tls(info, tls_roots(pem)),
            None => Client::open(info),
        }
    }

    /// The seed's settings (credentials, TLS, database) at another node's address.
    fn at(&self, host: String, port: u16) -> ConnectionInfo {
        let addr = match self.seed.addr().clone() {
            ConnectionAddr::TcpTls {
                insecure, tls_params, ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                tls_params,
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        self.seed.clone().set_addr(addr)
    }

    pub(super) fn seed(&self) -> &ConnectionInfo {
        &self.seed
    }
}

fn tls_roots(pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

/// Whether the server at `client` is a node of a Redis Cluster.
async fn is_cluster_node(client: &Client, probe_key: &str) -> RedisResult<bool> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_connection_timeout(Some(COMMAND_TIMEOUT));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    match redis::cmd("INFO").arg("cluster").query_async::<String>(&mut conn).await {
        Ok(info) => Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1")),
        Err(e) if super::is_connection_error(&e) => Err(e),
        // INFO is refused (an ACL, a renamed command): ask for a key instead.
        Err(_) => match redis::cmd("EXISTS").arg(probe_key).query_async::<i64>(&mut conn).await {
            Ok(_) => Ok(false),
            Err(e) if e.redirect_node().is_some() || e.is_cluster_error() => Ok(true),
            Err(e) => Err(e),
        },
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}
