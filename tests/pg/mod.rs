//! A real PostgreSQL 15 for the tests, started once per test binary: `initdb` from
//! `/usr/lib/postgresql/15/bin` into a temporary directory owned by the `postgres` user (the
//! server refuses to run as root), on a free loopback port, its socket inside that directory,
//! with `fsync` and `synchronous_commit` on. A watchdog shell started with it stops the server
//! (fast shutdown) and removes the directory once this test process is gone, however it ends.
//! A missing or broken server fails every test that asks for it: nothing here skips.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where the PostgreSQL 15 server binaries are (Debian's `postgresql-15`).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The running server.
#[derive(Debug)]
pub struct PgServer {
    /// Its loopback port.
    pub port: u16,
    /// Its directory (data, socket, log).
    pub dir: PathBuf,
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(1);

/// The server of this test binary, started on first use.
pub fn server() -> &'static PgServer {
    match SERVER.get_or_init(start) {
        Ok(s) => s,
        Err(e) => panic!("PostgreSQL could not be started for the tests: {e}"),
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command run as the `postgres` user when this process is root (initdb and postgres refuse
/// root), as this user otherwise.
fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Result<PgServer, String> {
    let initdb = format!("{PG_BIN}/initdb");
    if !std::path::Path::new(&initdb).exists() {
        return Err(format!(
            "{initdb} is missing: install Debian's postgresql package (tests/run.sh does)"
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("spool-pg-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    if is_root() {
        let pg = nix::unistd::User::from_name("postgres")
            .map_err(|e| e.to_string())?
            .ok_or("no user named postgres")?;
        nix::unistd::chown(&dir, Some(pg.uid), Some(pg.gid)).map_err(|e| e.to_string())?;
    }
    let data = dir.join("data");
    let out = as_postgres(&initdb)
        .arg("-D")
        .arg(&data)
        .args([
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
            // initdb's own fsync of the template files only; the server syncs every commit.
            "--no-sync",
        ])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = free_port();
    // The watchdog: the server in the background, then a wait for this process to go; then a
    // fast shutdown (SIGINT), and the directory goes too. /proc, not kill -0: the watchdog
    // runs as postgres and may not signal a root test process.
    let script = format!(
        "{bin}/postgres -D {data} -p {port} -k {dir} -c listen_addresses=127.0.0.1 \
         -c fsync=on -c synchronous_commit=on -c max_connections=300 \
         -c shared_buffers=32MB >{dir}/log 2>&1 & pg=$!; \
         while [ -d /proc/{me} ] && kill -0 $pg 2>/dev/null; do sleep 0.5; done; \
         kill -INT $pg 2>/dev/null; wait $pg; rm -rf {dir}",
        bin = PG_BIN,
        data = data.display(),
        dir = dir.display(),
        me = std::process::id(),
    );
    as_postgres("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start postgres: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = Command::new(format!("{PG_BIN}/pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            return Err(format!(
                "the server did not accept connections in 60 s:\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(PgServer { port, dir })
}

impl PgServer {
    /// A URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A new, empty database; returns its URL.
    pub async fn fresh_db(&self) -> String {
        let name = format!("spool_t_{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to the test server");
        let conn = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a database");
        drop(client);
        let _ = conn.await;
        self.url(&name)
    }

    /// A plain client of the database at `url` (for what the tests do behind the store).
    pub async fn client(&self, url: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }
}
