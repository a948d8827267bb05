//! A private Redis Cluster: 3 masters with one replica each, six `redis-server` processes on free
//! ports (AOF everysec, noeviction, as production should run), joined by `redis-cli --cluster
//! create`; or, for the TLS test, 3 masters speaking only TLS (clients, bus and replication). Tests point workers at it and kill the master that owns a queue's hash slot. Each
//! node is stopped by its own pid, and the folder removed, when the cluster is dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value;

use super::servers::{temp_dir, wait_port};

/// `cluster-node-timeout`: a master unreachable this long is failed over to its replica (the
/// default 15 s would make a failover test slow for nothing).
pub const NODE_TIMEOUT: Duration = Duration::from_millis(2_000);

pub struct Node {
    /// The client port (the TLS port in a TLS cluster).
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    tls: Option<Tls>,
}

/// PEM files of a TLS cluster: the nodes' certificate and key, and the CA that signed it.
#[derive(Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Who serves a hash slot, as node indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub master: usize,
    pub replica: Option<usize>,
}

pub struct PrivateRedisCluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

/// A free port whose cluster bus port (port + 10000) is free as well.
fn free_cluster_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl Node {
    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(self.port_args())
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--maxmemory-policy", "noeviction", "--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT.as_millis().to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        wait_port(self.port, true, Duration::from_secs(10));
    }

    fn port_args(&self) -> Vec<String> {
        let port = self.port.to_string();
        let Some(tls) = &self.tls else {
            return vec!["--port".into(), port];
        };
        let mut args: Vec<String> = ["--port", "0", "--tls-port", &port, "--tls-cluster", "yes"]
            .into_iter()
            .chain(["--tls-replication", "yes", "--tls-auth-clients", "no"])
            .map(String::from)
            .collect();
        for (flag, path) in [
            ("--tls-cert-file", &tls.cert),
            ("--tls-key-file", &tls.key),
            ("--tls-ca-cert-file", &tls.ca),
        ] {
            args.push(flag.into());
            args.push(path.display().to_string());
        }
        args
    }

    fn alive(&self) -> bool {
        self.child.is_some()
    }
}

impl PrivateRedisCluster {
    pub fn start() -> Self {
        Self::start_with(1, None)
    }

    /// 3 masters with `replicas` replicas each, speaking only TLS when `tls` is given.
    pub fn start_with(replicas: usize, tls: Option<Tls>) -> Self {
        let dir = temp_dir("sw-rcluster-");
        let mut nodes: Vec<Node> = (0..3 * (1 + replicas))
            .map(|i| Node {
                port: free_cluster_port(),
                dir: dir.join(format!("node-{i}")),
                child: None,
                tls: tls.clone(),
            })
            .collect();
        for n in &mut nodes {
            n.spawn();
        }
        let c = PrivateRedisCluster { nodes, dir };
        let addrs: Vec<String> = c.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut cli = Command::new("redis-cli");
        if let Some(tls) = &tls {
            cli.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        let out = cli
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli is installed (scripts/test installs it)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c.wait_until("every node to report cluster_state:ok", Duration::from_secs(30), |c| {
            c.all_ok().then_some(())
        });
        c
    }

    pub fn url(&self, node: usize) -> String {
        let scheme = if self.nodes[node].tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.nodes[node].port)
    }

    /// Every node's URL, comma-separated: the seed-list form of `REDIS_URL`.
    pub fn seeds(&self) -> String {
        (0..self.nodes.len()).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    fn query(&self, node: usize, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
        let client = match &self.nodes[node].tls {
            Some(tls) => redis::Client::build_with_tls(
                self.url(node),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&tls.ca)?),
                },
            )?,
            None => redis::Client::open(self.url(node))?,
        };
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        cmd.query(&mut conn)
    }

    /// Field `name` of a node's `INFO <section>`, or of its `CLUSTER INFO` for section "cluster".
    pub fn info_field(&self, node: usize, section: &str, name: &str) -> Option<String> {
        let cmd = match section {
            "cluster" => redis::cmd("CLUSTER").arg("INFO").clone(),
            _ => redis::cmd("INFO").arg(section).clone(),
        };
        let info: String = redis::from_redis_value(self.query(node, &cmd).ok()?).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
    }

    fn all_ok(&self) -> bool {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive())
            .all(|i| self.info_field(i, "cluster", "cluster_state").as_deref() == Some("ok"))
    }

    /// Who serves `key`'s slot, as node `asked` sees it.
    fn owner_seen_by(&self, asked: usize, key: &str) -> Option<Owner> {
        let slot: i64 =
            redis::from_redis_value(self.query(asked, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).ok()?).ok()?;
        let ranges: Vec<Vec<Value>> =
            redis::from_redis_value(self.query(asked, redis::cmd("CLUSTER").arg("SLOTS")).ok()?).ok()?;
        let index_of = |node: &Value| -> Option<usize> {
            let node: Vec<Value> = redis::from_redis_value_ref(node).ok()?;
            let port: u16 = redis::from_redis_value_ref(node.get(1)?).ok()?;
            self.nodes.iter().position(|n| n.port == port)
        };
        ranges.iter().find_map(|r| {
            let first: i64 = redis::from_redis_value_ref(r.first()?).ok()?;
            let last: i64 = redis::from_redis_value_ref(r.get(1)?).ok()?;
            (first..=last).contains(&slot).then(|| Owner {
                master: index_of(&r[2]).expect("a node of this cluster"),
                replica: r.get(3).and_then(index_of),
            })
        })
    }

    /// Who serves `key`'s slot, once every live node agrees, reports cluster_state:ok, and the
    /// master's replica (in a cluster with replicas) is in sync, so it can take over.
    pub fn owner(&self, key: &str) -> Owner {
        let with_replicas = self.nodes.len() > 3;
        self.wait_until("a slot's owner and its replica in sync", Duration::from_secs(30), |c| {
            let owner = c.agreed_owner(key)?;
            if !with_replicas {
                return Some(owner);
            }
            let replica = owner.replica?;
            (c.info_field(replica, "replication", "master_link_status")? == "up").then_some(owner)
        })
    }

    fn agreed_owner(&self, key: &str) -> Option<Owner> {
        if !self.all_ok() {
            return None;
        }
        let mut seen = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive())
            .map(|i| self.owner_seen_by(i, key));
        let first = seen.next()??;
        seen.all(|o| o == Some(first)).then_some(first)
    }

    /// Waits until every live node agrees that `key`'s slot has a master other than `old`
    /// (a replica was promoted) and the cluster is ok again; returns the new owner.
    pub fn wait_failover(&self, key: &str, old: usize, within: Duration) -> Owner {
        self.wait_until("the replica to be promoted", within, |c| {
            c.agreed_owner(key).filter(|o| o.master != old)
        })
    }

    fn wait_until<T>(&self, what: &str, within: Duration, mut probe: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = probe(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: a crashed node.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut c) = self.nodes[node].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.nodes[node].port, false, Duration::from_secs(10));
    }

    /// Starts a killed node again from its folder: it rejoins, as a replica if it was failed over.
    pub fn restart(&mut self, node: usize) {
        assert!(!self.nodes[node].alive(), "node {node} is running");
        self.nodes[node].spawn();
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
