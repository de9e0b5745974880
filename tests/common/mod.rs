//! Shared test support: real `spool` processes on temp dirs, real HTTP on 127.0.0.1.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

pub mod agent;
pub mod sse;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The release binary cargo built for these tests.
pub fn spool_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spool"))
}

/// Writes `spool.toml` into `dir` with `data_dir = dir/data` and `extra` appended; returns its path.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let data = dir.join("data");
    let text = format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n{extra}\n",
        data.display().to_string()
    );
    let path = dir.join("spool.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A `spool` child process.
pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub stderr_path: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// SIGTERM and wait up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(limit)
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `spool ARGS --config CONFIG` to its end; its output.
pub fn spool_cli(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(spool_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// As [`spool_cli`], asserting success.
pub fn spool_cli_ok(config: &Path, args: &[&str]) {
    let out = spool_cli(config, args);
    assert!(
        out.status.success(),
        "spool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `spool <args> --config <config>` with `envs`; stdout lines arrive on `lines`.
pub fn spawn(args: &[&str], config: &Path, envs: &[(&str, &str)]) -> Proc {
    let dir = config.parent().unwrap();
    let stderr_path = dir.join(format!("stderr-{}.log", uuid::Uuid::now_v7()));
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut cmd = Command::new(spool_bin());
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Proc {
        child,
        lines: rx,
        stderr_path,
    }
}

/// A running `spool serve` and how to talk to it.
pub struct Server {
    pub proc: Proc,
    pub base: String,
    pub token: String,
    pub dir: PathBuf,
    pub config: PathBuf,
}

/// Starts `spool serve` on the config and waits until it listens.
pub fn serve(config: &Path, envs: &[(&str, &str)]) -> Server {
    let proc = spawn(&["serve"], config, envs);
    let deadline = Instant::now() + Duration::from_secs(30);
    let base = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match proc.lines.recv_timeout(left) {
            Ok(l) if l.starts_with("listening on ") => {
                break l["listening on ".len()..].to_string()
            }
            Ok(_) => continue,
            Err(_) => panic!("spool serve did not start: {}", proc.stderr()),
        }
    };
    let dir = config.parent().unwrap().to_path_buf();
    // Written on the first start of an empty database only (a restored one has its users).
    let token = std::fs::read_to_string(dir.join("data/admin.token"))
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    Server {
        proc,
        base,
        token,
        dir,
        config: config.to_path_buf(),
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Creates a new user and a token of theirs with the CLI.
    pub fn user_token(&self, user: &str, admin: bool) -> String {
        let mut args = vec!["token", "create", "--user", user];
        if admin {
            args.push("--admin");
        }
        self.cli_ok(&args)
    }

    /// Adds a token to an existing user with the CLI (`--existing`).
    pub fn another_token(&self, user: &str, admin: bool) -> String {
        let mut args = vec!["token", "create", "--existing", "--user", user];
        if admin {
            args.push("--admin");
        }
        self.cli_ok(&args)
    }

    /// Runs `spool ARGS --config <this server's config>` and returns the output.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(spool_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    /// As [`Server::cli`], asserting success; the trimmed stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "spool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Polls `f` every 20 ms until it returns Some, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens the database read-only for checks.
pub fn open_db(dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_with_flags(
        dir.join("data/spool.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// Counts of tasks by status.
pub fn status_counts(dir: &Path) -> std::collections::BTreeMap<String, i64> {
    let c = open_db(dir);
    let mut st = c
        .prepare("SELECT status, count(*) FROM tasks GROUP BY status")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

impl Server {
    /// `GET path` with `token`, as JSON (any status).
    pub async fn get_json(&self, token: &str, path: &str) -> serde_json::Value {
        client()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `POST path` with `token` and a JSON body.
    pub async fn post_json(
        &self,
        token: &str,
        path: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        client()
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Waits (up to 60 s) until task `id` is terminal; returns it.
    pub async fn wait_terminal(&self, id: &str) -> serde_json::Value {
        eventually(Duration::from_secs(60), "the task to finish", || async {
            let t = self.get_json(&self.token, &format!("/v1/tasks/{id}")).await;
            matches!(
                t["status"].as_str(),
                Some("completed" | "failed" | "canceled")
            )
            .then_some(t)
        })
        .await
    }
}
