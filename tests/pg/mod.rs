//! A real PostgreSQL 15 for the tests, started once per test run: `initdb` from
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
    /// Its data directory.
    pub data: PathBuf,
    /// Its `listen_addresses`.
    pub listen: String,
    /// Whether it offers TLS (see [`Options::tls`]).
    pub tls: bool,
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(1);

/// The server of this test run, started on first use.
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
pub fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

/// The `postgres` user, who runs the server.
fn postgres_user() -> Result<nix::unistd::User, String> {
    nix::unistd::User::from_name("postgres")
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no user named postgres".to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How a server listens beyond the defaults.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// More addresses to listen on besides 127.0.0.1 (each must exist on this host).
    pub listen: Vec<String>,
    /// More `pg_hba.conf` networks allowed in (trust), e.g. `10.213.7.0/30`.
    pub allow: Vec<String>,
    /// TLS on (`ssl = on`), with a certificate for the host name `localhost` alone, signed by a
    /// CA of this server's own ([`PgServer::ca`]); the role [`TLS_ROLE`] may connect over TLS
    /// only (`pg_hba.conf`: `hostnossl ... reject`), other roles either way.
    pub tls: bool,
}

/// The role a TLS server ([`Options::tls`]) lets in over TLS only. The test creates it.
pub const TLS_ROLE: &str = "spool_tls";

fn start() -> Result<PgServer, String> {
    start_with(&Options::default())
}

fn start_with(opts: &Options) -> Result<PgServer, String> {
    let initdb = format!("{PG_BIN}/initdb");
    if !std::path::Path::new(&initdb).exists() {
        return Err(format!(
            "{initdb} is missing: install Debian's postgresql package (tests/run.sh does)"
        ));
    }
    let dir = server_dir()?;
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
    if !opts.allow.is_empty() || opts.tls {
        let hba = data.join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
        for net in &opts.allow {
            text.push_str(&format!("host all all {net} trust\n"));
        }
        if opts.tls {
            // The first line that matches decides.
            text = format!("hostnossl all {TLS_ROLE} all reject\n{text}");
            if let Err(e) = make_certificates(&dir) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        }
        std::fs::write(&hba, text).map_err(|e| e.to_string())?;
    }
    let port = free_port();
    let mut listen = vec!["127.0.0.1".to_string()];
    listen.extend(opts.listen.iter().cloned());
    let server = PgServer {
        port,
        dir: dir.clone(),
        data,
        listen: listen.join(","),
        tls: opts.tls,
    };
    launch(server)
}

/// Starts `server` (its data directory made) under pg_ctl, with a watchdog, and waits until it
/// accepts connections.
fn launch(server: PgServer) -> Result<PgServer, String> {
    // The server runs under pg_ctl (so the tests can restart it on the same port and
    // directory). The watchdog waits for this process to go, or for the `stop` file of
    // [`PgServer::stop_for_good`]; then a fast shutdown, and the directory goes too. /proc, not
    // kill -0: the watchdog runs as postgres and may not signal a root test process.
    let script = format!(
        "while [ -d /proc/{me} ] && [ ! -e {dir}/stop ]; do sleep 0.5; done; \
         {bin}/pg_ctl stop -D {data} -m fast -w >/dev/null 2>&1; rm -rf {dir}",
        bin = PG_BIN,
        data = server.data.display(),
        dir = server.dir.display(),
        me = std::process::id(),
    );
    server.pg_ctl_start()?;
    as_postgres("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start the watchdog: {e}"))?;
    server.wait_ready(Duration::from_secs(60))?;
    Ok(server)
}

/// A directory for a server, owned by the `postgres` user when this process is root.
fn server_dir() -> Result<PathBuf, String> {
    let dir = tempfile::Builder::new()
        .prefix("spool-pg-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    if is_root() {
        let pg = postgres_user()?;
        nix::unistd::chown(&dir, Some(pg.uid), Some(pg.gid)).map_err(|e| e.to_string())?;
    }
    Ok(dir)
}

/// A hot standby of `primary` (which must be a server of one test: its settings change), made
/// by `pg_basebackup -R` and streaming from it on a port of its own; stopped and removed when
/// dropped. [`PgServer::promote`] makes it the primary.
pub fn standby_of(primary: &PgServer) -> Private {
    let standby = (|| {
        let dir = server_dir()?;
        let data = dir.join("data");
        let out = as_postgres(&format!("{PG_BIN}/pg_basebackup"))
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-U", "postgres", "-X", "stream", "-R", "-c", "fast", "-D"])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("pg_basebackup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        launch(PgServer {
            port: free_port(),
            dir,
            data,
            listen: "127.0.0.1".into(),
            tls: false,
        })
    })();
    match standby {
        Ok(s) => Private(s),
        Err(e) => panic!("the standby could not be started: {e}"),
    }
}

/// A CA and a certificate it signs for the host name `localhost` (not for `127.0.0.1`), in
/// `dir/tls/`, made with the OS's `openssl` (a missing one fails the test); the key readable by
/// the server's user alone, as PostgreSQL demands.
fn make_certificates(dir: &std::path::Path) -> Result<(), String> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).map_err(|e| e.to_string())?;
    let ext = tls.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName = DNS:localhost\nbasicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let steps = [
        format!(
            "req -x509 {EC} -days 2 -subj /CN=spool-test-ca \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=keyCertSign,cRLSign \
             -keyout ca.key -out ca.pem"
        ),
        format!("req {EC} -subj /CN=localhost -keyout server.key -out server.csr"),
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile server.ext -out server.pem"
            .to_string(),
    ];
    for step in steps {
        let args: Vec<&str> = step.split_whitespace().collect();
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(&tls)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("openssl (Debian's openssl package): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let key = tls.join("server.key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
    }
    if is_root() {
        let pg = postgres_user()?;
        for f in [&tls, &key] {
            nix::unistd::chown(f, Some(pg.uid), Some(pg.gid)).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// A server of one test alone (to be restarted, or to listen on more addresses); stopped and
/// removed when dropped.
#[derive(Debug)]
pub struct Private(pub PgServer);

impl std::ops::Deref for Private {
    type Target = PgServer;
    fn deref(&self) -> &PgServer {
        &self.0
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        self.0.stop_for_good();
    }
}

/// Starts a server for one test; a failure to start fails the test.
pub fn private(opts: &Options) -> Private {
    match start_with(opts) {
        Ok(s) => Private(s),
        Err(e) => panic!("PostgreSQL could not be started for the test: {e}"),
    }
}

impl PgServer {
    /// `postgres` options: the port, socket directory, addresses and durability settings.
    fn postgres_options(&self) -> String {
        let mut o = format!(
            "-p {port} -k {dir} -c listen_addresses={listen} -c fsync=on \
             -c synchronous_commit=on -c max_connections=300 -c shared_buffers=32MB",
            port = self.port,
            dir = self.dir.display(),
            listen = self.listen,
        );
        if self.tls {
            let tls = self.dir.join("tls");
            o.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                tls.join("server.pem").display(),
                tls.join("server.key").display()
            ));
        }
        o
    }

    /// The CA that signed a TLS server's certificate (PEM), for `sslrootcert`.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("tls").join("ca.pem")
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let out = as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .args(args)
            .arg("-D")
            .arg(&self.data)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("pg_ctl {args:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            Err(format!(
                "pg_ctl {args:?} failed: {}{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let log = self.dir.join("log");
        let opts = self.postgres_options();
        self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            &log.to_string_lossy(),
            "-o",
            &opts,
        ])
    }

    fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let ready = Command::new(format!("{PG_BIN}/pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
                return Err(format!(
                    "the server did not accept connections in {limit:?}:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `pg_ctl restart -m fast`: same port, same data; returns once it accepts connections.
    pub fn restart(&self) {
        let log = self.dir.join("log");
        let opts = self.postgres_options();
        self.pg_ctl(&[
            "restart",
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "-l",
            &log.to_string_lossy(),
            "-o",
            &opts,
        ])
        .unwrap();
        self.wait_ready(Duration::from_secs(60)).unwrap();
    }

    /// `pg_ctl stop -m fast`: down until [`PgServer::start_again`].
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])
            .unwrap();
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, as in a crash (no
    /// shutdown checkpoint, nothing more sent to a standby).
    pub fn crash(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "60"])
            .unwrap();
    }

    /// Starts the server [`PgServer::stop`] stopped, on the same port.
    pub fn start_again(&self) {
        self.pg_ctl_start().unwrap();
        self.wait_ready(Duration::from_secs(60)).unwrap();
    }

    /// `pg_ctl promote`: a standby becomes a primary; returns once it takes writes.
    pub fn promote(&self) {
        self.pg_ctl(&["promote", "-w", "-t", "60"]).unwrap();
    }

    /// Stops the server now and lets the watchdog remove its directory.
    fn stop_for_good(&self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
        let _ = std::fs::write(self.dir.join("stop"), b"");
    }

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

/// Debian's PgBouncer (1.18), the connection pooler a team puts between many hosts and
/// PostgreSQL.
pub const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// A PgBouncer in front of this run's server, on a free loopback port, with `pool_mode` as
/// given and PgBouncer's defaults otherwise (it refuses startup parameters it does not know,
/// such as `options`). Stopped (SIGTERM, then SIGKILL) with its directory when dropped.
pub struct Bouncer {
    /// Its loopback port.
    pub port: u16,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Bouncer {
    pub fn start(pool_mode: &str) -> Bouncer {
        assert!(
            std::path::Path::new(PGBOUNCER).exists(),
            "{PGBOUNCER} is missing: install Debian's pgbouncer (tests/run.sh does)"
        );
        let pg = server();
        let dir = tempfile::Builder::new()
            .prefix("spool-pgbouncer-")
            .tempdir()
            .unwrap();
        // From 1.21 PgBouncer can keep prepared statements in transaction mode (on by default
        // from 1.24); these tests are of the pooler that cannot, as Debian 12's 1.18.
        let version = Command::new(PGBOUNCER).arg("--version").output().unwrap();
        let version = String::from_utf8_lossy(&version.stdout).to_string();
        let minor: u32 = version
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.split('.').nth(1))
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("pgbouncer --version said {version:?}"));
        let keep_statements = if minor >= 21 {
            "max_prepared_statements = 0\n"
        } else {
            ""
        };
        let users = dir.path().join("users.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n").unwrap();
        let ini = dir.path().join("pgbouncer.ini");
        let mut cmd = Command::new(PGBOUNCER);
        if is_root() {
            // It refuses to run as root; it switches to the user once started.
            let u = postgres_user().unwrap();
            for p in [dir.path(), &users] {
                nix::unistd::chown(p, Some(u.uid), Some(u.gid)).unwrap();
            }
            cmd.args(["-u", "postgres"]);
        }
        cmd.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null());
        // A port found free may be taken before PgBouncer binds it: then it exits, and the
        // next try takes another.
        for _ in 0..5 {
            let port = free_port();
            std::fs::write(
                &ini,
                format!(
                    "[databases]\n* = host=127.0.0.1 port={pg_port}\n[pgbouncer]\n\
                     listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                     auth_type = trust\nauth_file = {users}\npool_mode = {pool_mode}\n\
                     max_client_conn = 500\ndefault_pool_size = 60\n{keep_statements}\
                     logfile = {log}\n",
                    pg_port = pg.port,
                    users = users.display(),
                    log = dir.path().join("log").display(),
                ),
            )
            .unwrap();
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{PGBOUNCER}: {e}"));
            let end = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // A watchdog stops it if this test process dies first (no Drop then).
                    watchdog(&format!(
                        "while [ -d /proc/{pid} ]; do \
                         if [ ! -d /proc/{me} ]; then kill {pid}; exit; fi; sleep 0.5; done",
                        me = std::process::id(),
                        pid = child.id(),
                    ));
                    return Bouncer { port, child, dir };
                }
                if Instant::now() > end {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "PgBouncer did not listen within 10 s: {}",
                        std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("PgBouncer could not bind a free port in five tries")
    }

    /// The URL of the database of `direct` (a URL of this run's server) through this pooler.
    pub fn url(&self, direct: &str) -> String {
        let db = direct.rsplit('/').next().unwrap();
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

/// Starts `sh -c script` in the background, never waited for: it ends on its own, and its exit
/// status is of no use.
#[allow(clippy::zombie_processes)]
fn watchdog(script: &str) {
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // reaped already: its PID is no longer its own
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
