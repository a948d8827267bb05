//! A PgBouncer of the test's own on a free port, in front of one database of the shared test
//! PostgreSQL: the stand-in for Supabase's pooler. Few server connections, so client connections
//! share them (what exposes statements that outlive a transaction). Stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::servers::free_port;

pub struct PgBouncer {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl PgBouncer {
    /// Serves `database` of the server `admin_url` points at, in `pool_mode` (`transaction` or
    /// `session`) with `pool_size` server connections, and PgBouncer's defaults otherwise (so a
    /// startup parameter it refuses by default is refused here too).
    pub fn start(admin_url: &str, database: &str, pool_mode: &str, pool_size: u32) -> Self {
        let server = reqwest::Url::parse(admin_url).expect("TEST_DATABASE_URL is a URL");
        let dir = std::env::temp_dir().join(super::unique("sw-pgbouncer-"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let password = match server.password() {
            Some(p) => format!(" password={p}"),
            None => String::new(),
        };
        let ini = format!(
            "[databases]\n\
             {database} = host={host} port={server_port} dbname={database} user={user}{password}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = {pool_mode}\n\
             default_pool_size = {pool_size}\n\
             max_client_conn = 200\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            host = server.host_str().unwrap_or("127.0.0.1"),
            server_port = server.port().unwrap_or(5432),
            user = match server.username() {
                "" => "postgres",
                u => u,
            },
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        let mut cmd = Command::new("pgbouncer");
        // PgBouncer refuses to run as root; as root it drops to the postgres user, which must
        // own its folder (log and pid files).
        if super::servers::running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown the PgBouncer folder");
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer is installed (scripts/test installs it)");
        let bouncer = PgBouncer { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "PgBouncer did not listen on {port}: {}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    /// A URL for `database` through this PgBouncer, without any pooler hint.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// PgBouncer's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// PgBouncer's version line (`PgBouncer 1.18.0`).
    pub fn version() -> String {
        let out = Command::new("pgbouncer").arg("--version").output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
