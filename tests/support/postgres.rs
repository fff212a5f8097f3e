//! A real PostgreSQL per test process, on a free loopback port, for the result store's tests.
//!
//! Debian's server (`hack/install-tools.sh postgres` installs it) refuses to run as root, so when
//! the tests run as root the data directory belongs to the `postgres` user and every server
//! command runs through `setpriv` as that user (`setpriv` execs, so the guardian's SIGKILL reaches
//! the postmaster itself, not a wrapper). `initdb -A trust`: only loopback connections, no
//! password. Each test gets its own database (`Postgres::database`), so tests share the server
//! but never each other's rows.
//!
//! [`shared_tls`] is a second server with `ssl=on`, serving a certificate signed by a CA the test
//! makes ([`super::certs::database_server`]); it accepts plain TCP too (`pg_hba.conf`'s `host` lines
//! match both), as a default PostgreSQL with TLS does.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use super::process::{Server, reap_dir_on_exit};

/// One PostgreSQL server; stopped, and its directory removed, when the test binary exits.
pub struct Postgres {
    pub server: Server,
    pub port: u16,
    dir: PathBuf,
    /// With TLS: the CA that signed the server's certificate (for `sslrootcert`).
    pub ca_file: Option<PathBuf>,
    _dir_guardian: Option<std::process::Child>,
}

/// The server shared by this binary's tests, started on first use.
pub fn shared() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(|| Postgres::start(false))
}

/// Host names and addresses the TLS server's certificate names.
pub const TLS_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// The server with `ssl=on` shared by this binary's tests, started on first use; its
/// certificate names [`TLS_NAMES`] and chains to [`Postgres::ca_file`].
pub fn shared_tls() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    SHARED.get_or_init(|| Postgres::start_with(false, true))
}

/// Where Debian's server binaries are: `$CRAWLER_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CRAWLER_PG_BIN").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    let Some((_, bin)) = found.pop() else {
        panic!(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin: run `hack/install-tools.sh \
             postgres` (apt-get install postgresql), or point CRAWLER_PG_BIN at a bin directory"
        )
    };
    bin
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `setpriv` as `postgres` when root (the server refuses root), else nothing.
fn as_server_user() -> Vec<String> {
    if running_as_root() {
        [
            "/usr/bin/setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ]
        .map(str::to_owned)
        .to_vec()
    } else {
        Vec::new()
    }
}

/// Makes the server's certificate and key in `dir` (owned by the server's user when `chown`:
/// the server refuses a key others may read); returns the server's `-c` settings and the CA.
fn tls_settings(dir: &Path, chown: bool) -> (Vec<String>, PathBuf) {
    let certs = super::certs::database_server(dir, &TLS_NAMES);
    for file in [&certs.server_cert, &certs.server_key] {
        let mut mode = std::fs::metadata(file).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o600);
        std::fs::set_permissions(file, mode).unwrap();
        if chown {
            let status = Command::new("chown")
                .args(["postgres:postgres", file.to_str().unwrap()])
                .status()
                .expect("running chown");
            assert!(status.success(), "chown postgres {} failed", file.display());
        }
    }
    let mut args = Vec::new();
    for setting in [
        "ssl=on".to_owned(),
        format!("ssl_cert_file={}", certs.server_cert.display()),
        format!("ssl_key_file={}", certs.server_key.display()),
    ] {
        args.extend(["-c".to_owned(), setting]);
    }
    (args, certs.ca_cert)
}

impl Postgres {
    /// initdb into a fresh temp dir and start the server; waits until it accepts connections.
    /// `fsync` off by default for tests; the benchmark turns it on.
    pub fn start(fsync: bool) -> Postgres {
        Self::start_with(fsync, false)
    }

    /// [`Postgres::start`], with `tls`: `ssl=on` and a certificate from a CA made here.
    pub fn start_with(fsync: bool, tls: bool) -> Postgres {
        let started = Instant::now();
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("crawler-pg-")
            .tempdir()
            .expect("creating the PostgreSQL temp dir")
            .keep();
        let guardian = std::env::var_os("CRAWLER_TEST_KEEP_DIR")
            .is_none()
            .then(|| reap_dir_on_exit(&dir));
        let data = dir.join("data");
        let prefix = as_server_user();
        if !prefix.is_empty() {
            let status = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .status()
                .expect("running chown");
            assert!(status.success(), "chown postgres {} failed", dir.display());
        }
        let mut initdb = Command::new(prefix.first().map_or(bin.join("initdb"), PathBuf::from));
        if !prefix.is_empty() {
            initdb.args(&prefix[1..]).arg(bin.join("initdb"));
        }
        let out = initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (ssl_args, ca_file) = if tls {
            let (args, ca) = tls_settings(&dir, !prefix.is_empty());
            (args, Some(ca))
        } else {
            (Vec::new(), None)
        };
        let [port] = super::free_ports();
        let mut args = prefix.clone();
        args.push(bin.join("postgres").display().to_string());
        args.extend([
            "-D".to_owned(),
            data.display().to_string(),
            "-h".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
            "-k".to_owned(),
            dir.display().to_string(),
            "-c".to_owned(),
            format!("fsync={}", if fsync { "on" } else { "off" }),
            "-c".to_owned(),
            "max_connections=200".to_owned(),
        ]);
        args.extend(ssl_args);
        let (binary, args) = (PathBuf::from(args.remove(0)), args);
        let server = Server::new("postgres", binary, args, dir.join("postgres.log"));
        let pg = Postgres {
            server,
            port,
            dir,
            ca_file,
            _dir_guardian: guardian,
        };
        pg.server.start();
        pg.wait_ready();
        eprintln!(
            "PostgreSQL{} ready in {:.1?} on 127.0.0.1:{port} (log {})",
            if tls { " (ssl=on)" } else { "" },
            started.elapsed(),
            pg.server.log.display()
        );
        pg
    }

    /// Waits until the server accepts connections and answers `SELECT 1` (up to 30 s).
    pub fn wait_ready(&self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
                && self.psql("postgres", "SELECT 1").is_ok()
            {
                return;
            }
            assert!(
                self.server.is_alive() && Instant::now() < deadline,
                "PostgreSQL on {addr} is not ready; log {}:\n{}",
                self.server.log.display(),
                self.server.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A crash and a restart: `pg_ctl stop -m immediate` (every backend quits at once, no
    /// checkpoint, as after a power cut; recovery runs at start), then the server again on the
    /// same port and data. `down` is how long it stays away.
    pub async fn crash_and_restart(&self, down: Duration) {
        let mut cmd = as_server_user();
        cmd.push(bin_dir().join("pg_ctl").display().to_string());
        let data = self.dir.join("data");
        let (program, rest) = cmd.split_first().expect("a command");
        let status = Command::new(program)
            .args(rest)
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&data)
            .output()
            .expect("running pg_ctl stop");
        assert!(
            status.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        self.server.stop().await;
        tokio::time::sleep(down).await;
        self.server.start();
        tokio::task::block_in_place(|| self.wait_ready());
    }

    /// A connection string for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh, empty database named after `prefix`; returns its connection string.
    pub fn database(&self, prefix: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name: String = format!(
            "{}_{}_{}",
            prefix.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
        .to_lowercase();
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        self.url(&name)
    }

    /// Runs `sql` with psql against `db`; returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(bin_dir().join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url(db))
            .args(["-c", sql])
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The database name at the end of a connection string from [`Postgres::database`].
    pub fn db_of(url: &str) -> &str {
        url.rsplit('/').next().unwrap_or("postgres")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Opens a sink for `key` seeded with `http://a.example/`, as a worker does when it starts a task
/// (no store health watched); returns it and the frontier to resume from.
pub async fn open_sink(
    store: &crawler_operator::store::Store,
    key: crawler_operator::store::TaskKey,
) -> Result<(crawler_operator::store::PgSink, crawler_crawl::Frontier), crawler_crawl::SinkError> {
    crawler_operator::store::PgSink::open(
        store.clone(),
        key,
        &["http://a.example/".to_owned()],
        tokio::sync::watch::channel(None).0,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
}
