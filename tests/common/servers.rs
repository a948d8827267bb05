//! Private `redis-server` and PostgreSQL processes on free ports, for tests that kill, stop or
//! restart a server. Each is stopped when dropped. PostgreSQL refuses to run as root, so when the
//! tests run as root its cluster runs as the `postgres` user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_port(port: u16, up: bool, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() != up {
        assert!(
            Instant::now() < deadline,
            "port {port} did not become {}",
            if up { "ready" } else { "free" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(super::unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A redis-server of the test's own, with AOF on (as production should run it).
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl PrivateRedis {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_conf(&[], extra)
    }

    /// Starts from a `redis.conf` holding `conf` (one directive a line), then `extra` arguments.
    /// Some directives (`rename-command`) are only honoured from a file, as a managed service
    /// sets them.
    pub fn start_with_conf(conf: &[&str], extra: &[&str]) -> Self {
        let dir = temp_dir("sw-redis-");
        let mut args = Vec::new();
        if !conf.is_empty() {
            let file = dir.join("redis.conf");
            std::fs::write(&file, conf.join("\n") + "\n").unwrap();
            args.push(file.display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut r = PrivateRedis {
            port: free_port(),
            dir,
            child: None,
            extra: args,
        };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        // A configuration file, if any, must be the first argument.
        let (file, extra) = match self.extra.first() {
            Some(f) if f.ends_with(".conf") => (vec![f.clone()], &self.extra[1..]),
            _ => (Vec::new(), &self.extra[..]),
        };
        let child = Command::new("redis-server")
            .args(file)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
            ])
            .args(["--appendfsync", "everysec", "--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(&self.dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        wait_port(self.port, true, Duration::from_secs(10));
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.port, false, Duration::from_secs(10));
    }

    /// Starts it again on the same port and directory (replaying the AOF).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL cluster of the test's own (trust auth on 127.0.0.1).
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    /// Extra server options (` -c name=value ...`).
    extra: String,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let pg = Self::init();
        pg.start_server();
        pg
    }

    /// A cluster serving TLS with `cert`/`key` (PEM files, copied into the cluster's folder).
    pub fn start_tls(cert: &Path, key: &Path) -> Self {
        let mut pg = Self::init();
        for (src, name) in [(cert, "server.crt"), (key, "server.key")] {
            std::fs::copy(src, pg.dir.join(name)).unwrap();
        }
        if pg.as_postgres {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&pg.dir));
        }
        run(Command::new("chmod").arg("600").arg(pg.dir.join("server.key")));
        pg.extra = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            pg.dir.join("server.crt").display(),
            pg.dir.join("server.key").display()
        );
        pg.start_server();
        pg
    }

    fn init() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/test installs them)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb binary");
        let as_postgres = running_as_root();
        let dir = temp_dir("sw-pg-");
        if as_postgres {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir));
        }
        let pg = PrivatePostgres {
            port: free_port(),
            dir,
            bin,
            as_postgres,
            extra: String::new(),
        };
        let data = pg.dir.join("data");
        run(pg
            .cmd("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data));
        pg
    }

    fn cmd(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off{}",
            self.port,
            self.dir.display(),
            self.extra
        );
        run(self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "start"]));
    }

    /// Stops the server (`fast`: clean; `immediate`: a crash).
    pub fn stop(&self, mode: &str) {
        run(self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", mode, "-w", "stop"]));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn running_as_root() -> bool {
    // Read the effective uid without a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
