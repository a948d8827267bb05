//! The system under test as real processes: a private redis-server (AOF everysec, noeviction) or
//! a private Redis Cluster (`Opts::redis_cluster`), a private PostgreSQL, and R replicas of
//! `step-worker-chaos`, each a child process on its own health port with its log in the run's
//! folder. Everything is killed on every exit path: the cluster's `Drop` SIGKILLs the replicas,
//! then the servers' own guards stop the servers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManagerConfig;
use sqlx::PgPool;
use step_worker::queue::RedisConn;

use crate::common::redis_cluster::PrivateRedisCluster;
use crate::common::servers::{PrivatePostgres, PrivateRedis, free_port};
use crate::common::unique;
use crate::proxy::Proxy;

/// How the replicas run. In the fast subset, timings are shortened from the defaults
/// (5 s / 30 s) so a fault test takes seconds; the pass criteria scale with them.
#[derive(Debug, Clone)]
pub struct Opts {
    pub replicas: usize,
    pub concurrency: usize,
    /// `COMMIT_BACKLOG`: finished jobs a replica holds awaiting their commit beyond the running
    /// ones. A replica holds at most [`Opts::held_max`] jobs, and that many re-run when it dies.
    pub commit_backlog: usize,
    pub heartbeat_ms: u64,
    pub deadline_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub redis_args: Vec<String>,
    /// Lines of a `redis.conf` the server starts from (`rename-command`, as a managed service).
    pub redis_conf: Vec<String>,
    /// ACL rules for a user `worker` (password [`WORKER_PASSWORD`]) the replicas connect as.
    pub redis_acl: Option<String>,
    /// Replicas reach Redis through a [`Proxy`] the test can partition.
    pub via_proxy: bool,
    /// Replicas reach PostgreSQL through a [`Proxy`] the test can partition.
    pub pg_via_proxy: bool,
    pub env: Vec<(String, String)>,
    /// A Redis Cluster (3 masters, 1 replica each) instead of one redis-server. Replica 0 is
    /// given the master that owns the queue's slot as its only `REDIS_URL`, the others every
    /// node as seeds.
    pub redis_cluster: bool,
}

/// The password of the ACL user of [`Opts::redis_acl`].
pub const WORKER_PASSWORD: &str = "worker-password";

impl Default for Opts {
    fn default() -> Self {
        Opts {
            replicas: 3,
            concurrency: 8,
            // The worker's own default, so the suite runs what is deployed.
            commit_backlog: step_worker::Config::from_vars(Vec::<(String, String)>::new())
                .expect("the defaults are valid")
                .commit_backlog,
            // The full run keeps the production defaults; the fast subset scales them down.
            heartbeat_ms: crate::scale(500, 5_000),
            deadline_ms: crate::scale(3_000, 30_000),
            shutdown_timeout_ms: 5_000,
            redis_args: Vec::new(),
            redis_conf: Vec::new(),
            redis_acl: None,
            via_proxy: false,
            pg_via_proxy: false,
            env: Vec::new(),
            redis_cluster: false,
        }
    }
}

impl Opts {
    /// The most jobs one replica holds (claimed, not yet settled): running plus the backlog.
    pub fn held_max(&self) -> usize {
        self.concurrency + self.commit_backlog
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    pub fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(name, _)| name != k);
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
}

pub struct Replica {
    child: Child,
    pub pid: u32,
    pub port: u16,
    pub log: PathBuf,
}

/// A replica process that is gone, and when the suite saw it go.
#[derive(Debug, Clone)]
pub struct Gone {
    pub pid: u32,
    /// Unix µs at which the process was known dead (after `wait` returned).
    pub dead_at_us: u128,
    pub log: PathBuf,
}

pub struct Cluster {
    pub opts: Opts,
    pub queue_key: String,
    pub dir: PathBuf,
    /// The harness's own connection (a cluster connection on a Redis Cluster).
    pub redis_conn: RedisConn,
    /// `REDIS_URL` of replica `slot`: `redis_urls[slot % len]`.
    redis_urls: Vec<String>,
    pub pg_pool: PgPool,
    pub database_url: String,
    pub replicas: Vec<Option<Replica>>,
    pub gone: Vec<Gone>,
    // Declared last so they are dropped after the replicas are killed (see `Drop`).
    pub proxy: Option<Proxy>,
    pub pg_proxy: Option<Proxy>,
    pub pg: PrivatePostgres,
    redis: Option<PrivateRedis>,
    redis_cluster: Option<PrivateRedisCluster>,
}

pub fn now_us() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros()
}

impl Cluster {
    /// Starts the servers, migrates the schema and starts `opts.replicas` workers.
    pub async fn start(opts: Opts) -> Self {
        step_worker::telemetry::init_for_tests();
        let queue_key = unique("chaos.") + ".ready";
        let pg = PrivatePostgres::start();
        let database_url = pg.url();
        let store = step_worker::store::Store::connect_lazy(&database_url, 2).unwrap();
        store.migrate().await.expect("migrations run");
        let pg_pool = PgPool::connect(&database_url).await.unwrap();
        let pg_proxy = opts.pg_via_proxy.then(|| Proxy::start(pg.port));
        let (redis, redis_cluster, redis_conn, redis_urls, proxy) = if opts.redis_cluster {
            let rc = PrivateRedisCluster::start();
            let urls = vec![rc.url(rc.owner(&queue_key).master), rc.seeds()];
            let (conn, _) = RedisConn::connect(&rc.seeds(), None, &queue_key).await.unwrap();
            (None, Some(rc), conn, urls, None)
        } else {
            let args: Vec<&str> = opts.redis_args.iter().map(String::as_str).collect();
            let conf: Vec<&str> = opts.redis_conf.iter().map(String::as_str).collect();
            let redis = PrivateRedis::start_with_conf(&conf, &args);
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(1);
            let client = redis::Client::open(redis.url()).unwrap();
            let conn = client.get_connection_manager_with_config(config).await.unwrap();
            let proxy = opts.via_proxy.then(|| Proxy::start(redis.port));
            let port = proxy.as_ref().map_or(redis.port, |p| p.port);
            let url = match &opts.redis_acl {
                Some(rules) => {
                    let mut cmd = redis::cmd("ACL");
                    cmd.arg("SETUSER").arg("worker");
                    for rule in rules.split_whitespace() {
                        cmd.arg(rule);
                    }
                    let () = cmd.query_async(&mut conn.clone()).await.unwrap();
                    format!("redis://worker:{WORKER_PASSWORD}@127.0.0.1:{port}")
                }
                None => format!("redis://127.0.0.1:{port}"),
            };
            (Some(redis), None, RedisConn::Single(conn), vec![url], proxy)
        };
        let dir = std::env::temp_dir().join(unique("sw-chaos-"));
        std::fs::create_dir_all(&dir).unwrap();
        let n = opts.replicas;
        let mut cluster = Cluster {
            opts,
            queue_key,
            dir,
            redis_conn,
            redis_urls,
            pg_pool,
            database_url,
            replicas: (0..n).map(|_| None).collect(),
            gone: Vec::new(),
            proxy,
            pg_proxy,
            pg,
            redis,
            redis_cluster,
        };
        for slot in 0..n {
            cluster.spawn(slot);
        }
        for slot in 0..n {
            cluster.wait_up(slot);
        }
        cluster
    }

    /// The URL the replicas reach PostgreSQL by: through the proxy, if there is one.
    fn worker_database_url(&self) -> String {
        match &self.pg_proxy {
            Some(p) => self
                .database_url
                .replace(&format!(":{}/", self.pg.port), &format!(":{}/", p.port)),
            None => self.database_url.clone(),
        }
    }

    pub fn key(&self, suffix: &str) -> String {
        format!("{{{}}}:{suffix}", self.queue_key)
    }

    /// The standalone redis-server (not in a `redis_cluster` run).
    pub fn redis(&mut self) -> &mut PrivateRedis {
        self.redis.as_mut().expect("a run on one redis-server")
    }

    /// The Redis Cluster of a `redis_cluster` run.
    pub fn redis_cluster(&mut self) -> &mut PrivateRedisCluster {
        self.redis_cluster.as_mut().expect("a run on a Redis Cluster")
    }

    fn env(&self, slot: usize, port: u16) -> Vec<(String, String)> {
        let o = &self.opts;
        let mut env: Vec<(String, String)> = [
            ("APP_ENV", "test".to_owned()),
            ("REDIS_URL", self.redis_urls[slot % self.redis_urls.len()].clone()),
            ("DATABASE_URL", self.worker_database_url()),
            ("QUEUE_KEY", self.queue_key.clone()),
            ("HEALTH_CHECK_PORT", port.to_string()),
            ("WORKER_CONCURRENCY", o.concurrency.to_string()),
            ("COMMIT_BACKLOG", o.commit_backlog.to_string()),
            ("HEARTBEAT_INTERVAL_MS", o.heartbeat_ms.to_string()),
            ("WORKER_DEADLINE_MS", o.deadline_ms.to_string()),
            ("SHUTDOWN_TIMEOUT_MS", o.shutdown_timeout_ms.to_string()),
            ("CLAIM_BLOCK_MS", "2000".to_owned()),
            ("RETRY_BACKOFF_MS", "50".to_owned()),
            ("RETRY_BACKOFF_MAX_MS", "500".to_owned()),
            ("MAX_RETRY_ATTEMPTS", "3".to_owned()),
            ("DATABASE_MIGRATE", "false".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("LOG_LEVEL", "info".to_owned()),
            ("CHAOS_EXEC_LOG_DIR", self.dir.display().to_string()),
            ("PATH", std::env::var("PATH").unwrap_or_default()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in &o.env {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// Starts a replica in `slot` (which must be empty).
    pub fn spawn(&mut self, slot: usize) {
        assert!(self.replicas[slot].is_none(), "slot {slot} is occupied");
        let port = free_port();
        let log = self.dir.join(format!("replica-{slot}-{}.log", unique("")));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_step-worker-chaos"))
            .env_clear()
            .envs(self.env(slot, port))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("step-worker-chaos starts");
        self.replicas[slot] = Some(Replica {
            pid: child.id(),
            child,
            port,
            log,
        });
    }

    /// Waits until the replica in `slot` has started: registered and claiming (its HTTP port
    /// answers from the first moment, `/health` says `starting` until then).
    pub fn wait_up(&mut self, slot: usize) {
        let port = self.replica(slot).port;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !started(port) {
            if let Some(status) = self.replica_mut(slot).child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.replica(slot).log).unwrap_or_default();
                panic!("replica {slot} exited during startup ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "replica {slot} did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn replica(&self, slot: usize) -> &Replica {
        self.replicas[slot].as_ref().expect("a replica in this slot")
    }

    fn replica_mut(&mut self, slot: usize) -> &mut Replica {
        self.replicas[slot].as_mut().expect("a replica in this slot")
    }

    /// SIGKILL: a crash. Returns the dead process's record.
    pub fn kill(&mut self, slot: usize) -> Gone {
        let mut r = self.replicas[slot].take().expect("a replica in this slot");
        let _ = r.child.kill();
        let _ = r.child.wait();
        let gone = Gone {
            pid: r.pid,
            dead_at_us: now_us(),
            log: r.log,
        };
        self.gone.push(gone.clone());
        gone
    }

    pub fn signal(&self, slot: usize, signal: i32) {
        let pid = self.replica(slot).pid as i32;
        // SAFETY: kill(2) on a child we started and have not reaped yet, so the pid is ours.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// SIGTERM and wait for the exit, up to `within`. Returns the status and how long it took.
    pub async fn terminate(&mut self, slot: usize, within: Duration) -> (Option<ExitStatus>, Duration) {
        self.signal(slot, libc::SIGTERM);
        self.wait_exit(slot, within).await
    }

    /// Waits for the replica in `slot` to exit, up to `within` (then SIGKILLs it). Returns the
    /// status (`None`: killed) and how long it took from this call.
    pub async fn wait_exit(&mut self, slot: usize, within: Duration) -> (Option<ExitStatus>, Duration) {
        let started = Instant::now();
        let mut r = self.replicas[slot].take().expect("a replica in this slot");
        let status = loop {
            if let Some(s) = r.child.try_wait().unwrap() {
                break Some(s);
            }
            if started.elapsed() > within {
                let _ = r.child.kill();
                let _ = r.child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = started.elapsed();
        self.gone.push(Gone {
            pid: r.pid,
            dead_at_us: now_us(),
            log: r.log,
        });
        (status, took)
    }

    /// Restarts every replica that has exited by itself (a crash); returns how many.
    pub fn supervise(&mut self) -> usize {
        let mut restarted = 0;
        for slot in 0..self.replicas.len() {
            let exited = match self.replicas[slot].as_mut() {
                Some(r) => r.child.try_wait().unwrap(),
                None => continue,
            };
            if exited.is_some() {
                let r = self.replicas[slot].take().unwrap();
                self.gone.push(Gone {
                    pid: r.pid,
                    dead_at_us: now_us(),
                    log: r.log,
                });
                self.spawn(slot);
                restarted += 1;
            }
        }
        restarted
    }

    /// `GET /health` of a replica: the status code, or 0 when it does not answer.
    pub async fn health(&self, slot: usize) -> u16 {
        let url = format!("http://127.0.0.1:{}/health", self.replica(slot).port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        match client.get(url).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Every log line of every replica (live and gone) containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let live = self.replicas.iter().flatten().map(|r| r.log.clone());
        let gone = self.gone.iter().map(|g| g.log.clone());
        live.chain(gone)
            .flat_map(|p| read_lines(&p))
            .filter(|l| l.contains(needle))
            .collect()
    }

    pub fn exec_dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether a worker on `port` has started: `/health` answers with any status but `starting`.
fn started(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reply = String::new();
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_ok()
        && stream.read_to_string(&mut reply).is_ok()
        && reply.contains("\"status\"")
        && !reply.contains("\"status\":\"starting\"")
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in self.replicas.iter_mut().flatten() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("chaos run folder kept for inspection: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
