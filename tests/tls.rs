//! TLS verified end to end: a redis-server with a TLS port and a PostgreSQL with `ssl = on`, both
//! with certificates from a throwaway CA made by the test; the worker trusts that CA through
//! `REDIS_CA_FILE` and `sslrootcert`, and refuses to start when given another CA.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::servers::{PrivatePostgres, free_port};
use step_worker::queue::BeatMode;
use step_worker::{Config, Registry, Shutdown};

/// A CA and a server certificate for 127.0.0.1 and localhost, plus an unrelated CA.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make() -> Self {
        let dir = std::env::temp_dir().join(common::unique("sw-tls-"));
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl is installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            let (key, pem, subject) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=step-worker test {ca}"),
            );
            openssl(&[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem, "-days", "1", "-subj",
                &subject,
            ]);
        }
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(dir.join("san.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.cnf",
        ]);
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// redis-server with only a TLS port.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    fn start(certs: &Certs) -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-auth-clients", "no", "--tls-cert-file"])
            .arg(certs.path("server.pem"))
            .arg("--tls-key-file")
            .arg(certs.path("server.key"))
            .arg("--dir")
            .arg(&certs.dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "TLS redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { port, child }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(redis_port: u16, redis_ca: &Path, pg: &PrivatePostgres, pg_ca: &Path) -> Config {
    let database_url = format!("{}?sslmode=verify-full&sslrootcert={}", pg.url(), pg_ca.display());
    Config::from_vars([
        ("REDIS_URL".to_owned(), format!("rediss://127.0.0.1:{redis_port}")),
        ("REDIS_CA_FILE".to_owned(), redis_ca.display().to_string()),
        ("DATABASE_URL".to_owned(), database_url),
        ("QUEUE_KEY".to_owned(), common::unique("tls.")),
        ("HEALTH_CHECK_PORT".to_owned(), "0".to_owned()),
        ("HEARTBEAT_INTERVAL_MS".to_owned(), "200".to_owned()),
        ("WORKER_DEADLINE_MS".to_owned(), "1500".to_owned()),
    ])
    .unwrap()
}

#[tokio::test]
async fn the_worker_verifies_redis_and_postgres_certificates_against_the_configured_ca() {
    step_worker::telemetry::init_for_tests();
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs);
    let pg = PrivatePostgres::start_tls(&certs.path("server.pem"), &certs.path("server.key"));
    let ca = certs.path("ca.pem");

    let config = config(redis.port, &ca, &pg, &ca);
    let queue_key = config.queue_key.clone();
    let worker = step_worker::worker::start(config, Registry::new(), Shutdown::new())
        .await
        .unwrap()
        .unwrap();
    let http = worker.http_addr.unwrap();
    common::wait_for("/health 200 over TLS to both", Duration::from_secs(20), || async {
        common::get(&format!("http://{http}/health")).await.0 == 200
    })
    .await;
    let queue = step_worker::queue::RedisQueue::connect_with_ca(
        &format!("rediss://127.0.0.1:{}", redis.port),
        &queue_key,
        Some(&std::fs::read(&ca).unwrap()),
    )
    .await
    .unwrap();
    queue
        .push(br#"{"id":"tls-1","step":"builtin.noop","input":1}"#)
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        ca.display()
    ))
    .await
    .unwrap();
    common::wait_for("the job's row", Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM step_results WHERE job_id = 'tls-1' AND status = 'succeeded'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
            == 1
    })
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_wrong_ca_stops_startup_with_a_clear_error() {
    step_worker::telemetry::init_for_tests();
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs);
    let pg = PrivatePostgres::start_tls(&certs.path("server.pem"), &certs.path("server.key"));
    let (right, wrong) = (certs.path("ca.pem"), certs.path("other-ca.pem"));

    for (redis_ca, pg_ca, variable) in [(&wrong, &right, "REDIS_URL"), (&right, &wrong, "DATABASE_URL")] {
        let started = tokio::time::timeout(
            Duration::from_secs(20),
            step_worker::worker::start(
                config(redis.port, redis_ca, &pg, pg_ca),
                Registry::new(),
                Shutdown::new(),
            ),
        )
        .await
        .expect("a certificate error is not retried forever");
        let error = format!("{:#}", started.err().expect("startup fails"));
        assert!(error.starts_with(variable), "names {variable}: {error}");
        assert!(
            error.to_ascii_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_tls_redis_cluster_is_reached_through_any_node_with_the_configured_ca() {
    step_worker::telemetry::init_for_tests();
    let certs = Certs::make();
    let rc = common::redis_cluster::PrivateRedisCluster::start_with(
        0,
        Some(common::redis_cluster::Tls {
            cert: certs.path("server.pem"),
            key: certs.path("server.key"),
            ca: certs.path("ca.pem"),
        }),
    );
    let key = common::unique("tls.") + ".ready";
    let owner = rc.owner(&key).master;
    let elsewhere = rc.url((owner + 1) % rc.nodes.len());
    let ca = std::fs::read(certs.path("ca.pem")).unwrap();

    let queue = step_worker::queue::RedisQueue::connect_with_ca(&elsewhere, &key, Some(&ca))
        .await
        .unwrap();
    assert!(queue.is_cluster());
    queue
        .heartbeat("tls-w", Duration::from_secs(30), BeatMode::Register, Duration::ZERO)
        .await
        .unwrap();
    queue.push(b"tls-cluster-job").await.unwrap();
    // The blocking claim's own connection goes to the slot's master, over TLS with the same CA.
    let mut blocking = queue.blocking_conn(Duration::from_secs(1), "tls-w").await.unwrap();
    let proc = queue.keys().proc("tls-w");
    let claimed = blocking.claim(&proc, Duration::from_secs(1)).await.unwrap();
    assert_eq!(claimed.as_deref(), Some(&b"tls-cluster-job"[..]));
    assert_eq!(queue.list(&proc).await.unwrap(), vec![b"tls-cluster-job".to_vec()]);

    let other = std::fs::read(certs.path("other-ca.pem")).unwrap();
    let refused = step_worker::queue::RedisQueue::connect_with_ca(&elsewhere, &key, Some(&other)).await;
    assert!(refused.is_err(), "a certificate from another CA is refused");
}
