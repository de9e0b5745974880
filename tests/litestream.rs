//! Backups with the real Litestream binary against a real S3-compatible server (moto) on
//! 127.0.0.1: replicate under `-exec`, drill, restore on a fresh machine, and the drill's
//! failures (empty bucket, stale replica, damaged replica). Tools come from `.tools/`, which
//! `tests/run.sh` installs; a missing tool fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn tool(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/venv/bin")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `bash tests/run.sh`, which installs it",
        p.display()
    );
    p
}

fn repo_litestream_yml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("litestream.yml")
}

/// A moto S3 server on 127.0.0.1, stopped on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_moto() -> Moto {
    // A port picked free can be taken before moto binds it: then moto exits and we try another.
    for _ in 0..5 {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("moto-{port}.log"));
        let mut child = Command::new(tool("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Someone else may hold the port, with our moto gone: make sure it is ours.
                std::thread::sleep(Duration::from_millis(300));
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                let _ = std::fs::remove_file(&log);
                return Moto {
                    child,
                    endpoint: format!("http://127.0.0.1:{port}"),
                };
            }
            if child.try_wait().unwrap().is_some() {
                break; // exited: try another port
            }
            assert!(
                Instant::now() < end,
                "moto_server did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("moto_server did not start on any of 5 ports");
}

impl Moto {
    fn bucket(&self, name: &str) {
        // moto may accept connections a moment before it answers them: retry for a while.
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
                .arg(format!("{}/{name}", self.endpoint))
                .output()
                .unwrap();
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            if code == "200" {
                return;
            }
            assert!(Instant::now() < end, "create bucket {name}: HTTP {code}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn env(&self, bucket: &str) -> Vec<(String, String)> {
        vec![
            ("LITESTREAM_BUCKET".into(), bucket.into()),
            ("LITESTREAM_ENDPOINT".into(), self.endpoint.clone()),
            ("LITESTREAM_REGION".into(), "us-east-1".into()),
            ("LITESTREAM_ACCESS_KEY_ID".into(), "test".into()),
            ("LITESTREAM_SECRET_ACCESS_KEY".into(), "test".into()),
        ]
    }
}

/// A `litestream replicate` process (optionally running spool under -exec); its stdout lines
/// (spool's under -exec) arrive on `lines`.
struct Replicate {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Replicate {
    fn drop(&mut self) {
        // SIGTERM first: Litestream passes it on to spool under -exec; a SIGKILL would orphan spool.
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(15);
            while Instant::now() < end {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn replicate(dir: &Path, env: &[(String, String)], exec: Option<String>) -> Replicate {
    let mut cmd = Command::new(tool("litestream"));
    cmd.args(["replicate", "-config"])
        .arg(repo_litestream_yml());
    if let Some(e) = exec {
        cmd.arg("-exec").arg(e);
    }
    cmd.current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("AWS_CA_BUNDLE")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("litestream.log")).unwrap());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Replicate { child, lines: rx }
}

fn wait_listening(lines: &mpsc::Receiver<String>) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match lines.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(l) if l.starts_with("listening on ") => {
                return l["listening on ".len()..].to_string()
            }
            Ok(_) => {}
            Err(_) => panic!("spool did not start under litestream"),
        }
    }
}

fn spool_config(dir: &Path, queues: &str) -> PathBuf {
    let p = dir.join("spool.toml");
    std::fs::write(
        &p,
        format!("data_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n[worker]\nconcurrency = 2\npoll_interval_ms = 50\nqueues = {queues}\n"),
    )
    .unwrap();
    p
}

/// Runs `spool drill`; AWS_CA_BUNDLE is set on purpose: the drill must remove it for litestream.
fn drill(dir: &Path, env: &[(String, String)], max_lag: &str) -> (Option<i32>, Value, String) {
    drill_with(dir, env, max_lag, &[])
}

/// `drill` with more arguments.
fn drill_with(
    dir: &Path,
    env: &[(String, String)],
    max_lag: &str,
    extra: &[&str],
) -> (Option<i32>, Value, String) {
    let out = Command::new(spool_bin())
        .args([
            "drill",
            "--config",
            "spool.toml",
            "--json",
            "--max-lag",
            max_lag,
            "--litestream",
        ])
        .arg(tool("litestream"))
        .arg("--litestream-config")
        .arg(repo_litestream_yml())
        .args(extra)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AWS_CA_BUNDLE", dir.join("no-such-bundle.pem"))
        // The drill's temporary directory goes here, so a test can see that it was removed.
        .env("TMPDIR", {
            let t = dir.join("tmp");
            std::fs::create_dir_all(&t).unwrap();
            t
        })
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn enqueue(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    queue: &str,
    n: usize,
) -> Vec<String> {
    let tasks: Vec<Value> = (0..n)
        .map(|i| json!({"kind": "spool.noop", "queue": queue, "payload": {"i": i}}))
        .collect();
    let r = c
        .post(format!("{base}/v1/tasks/batch"))
        .bearer_auth(token)
        .json(&json!({"tasks": tasks}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

fn terminate(child: &mut Child, limit: Duration) -> Option<i32> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("process did not stop within {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_under_exec_drill_passes_and_a_fresh_machine_restores_and_finishes_the_work() {
    let moto = start_moto();
    moto.bucket("spool-e2e");
    let env = moto.env("spool-e2e");
    let dir = tempfile::tempdir().unwrap();
    spool_config(dir.path(), "[\"default\"]");
    let mut rep = replicate(
        dir.path(),
        &env,
        Some(format!(
            "{} serve --config spool.toml",
            spool_bin().display()
        )),
    );
    let base = wait_listening(&rep.lines);
    let token = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let c = client();
    let mut acked = enqueue(&c, &base, &token, "default", 20).await;
    acked.extend(enqueue(&c, &base, &token, "later", 30).await);

    // The drill passes once the replica has caught up (sync-interval 1s), with a small lag.
    let end = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let (code, report, stderr) = drill(dir.path(), &env, "30s");
        if code == Some(0) && report["replica"]["tasks"] == 50 {
            break report;
        }
        assert!(
            Instant::now() < end,
            "drill never passed: {code:?} {report} {stderr}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(report["passed"], true);
    assert_eq!(report["integrity"], "ok");
    assert!(report["lag_ms"].as_i64().unwrap() < 30_000);
    assert!(report["verdict"]
        .as_str()
        .unwrap()
        .starts_with("drill PASS"));
    // The result is recorded: /metrics and inspect show it.
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("spool_last_good_drill_timestamp_seconds"),
        "{metrics}"
    );
    let out = Command::new(spool_bin())
        .args(["inspect", "--json", "--config", "spool.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["last_drill"]["passed"], true);

    // Acknowledged right before a graceful stop: still in the replica afterwards.
    acked.extend(enqueue(&c, &base, &token, "later", 10).await);
    assert_eq!(terminate(&mut rep.child, Duration::from_secs(60)), Some(0));

    // A fresh machine: restore on boot, then spool finishes the pending work.
    let fresh = tempfile::tempdir().unwrap();
    let out = Command::new(tool("litestream"))
        .args(["restore", "-config"])
        .arg(repo_litestream_yml())
        .args(["-if-db-not-exists", "-if-replica-exists", "data/spool.db"])
        .current_dir(fresh.path())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        let db = open_db(fresh.path());
        for id in &acked {
            let n: i64 = db
                .query_row("SELECT count(*) FROM tasks WHERE id = ?", [id], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(
                n, 1,
                "acknowledged task {id} missing from the restored database"
            );
        }
    }
    let cfg = spool_config(fresh.path(), "[\"default\", \"later\"]");
    let mut s = serve(&cfg, &[]);
    let end = Instant::now() + Duration::from_secs(60);
    while status_counts(fresh.path())
        .get("completed")
        .copied()
        .unwrap_or(0)
        < 60
    {
        assert!(
            Instant::now() < end,
            "restored tasks not finished: {:?}",
            status_counts(fresh.path())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s.proc.terminate(Duration::from_secs(30)).map(|x| x.code()),
        Some(Some(0))
    );
}

#[test]
fn drill_fails_on_an_empty_bucket() {
    let moto = start_moto();
    moto.bucket("spool-empty");
    let env = moto.env("spool-empty");
    let dir = tempfile::tempdir().unwrap();
    spool_config(dir.path(), "[\"default\"]");
    let (code, report, stderr) = drill(dir.path(), &env, "5m");
    assert_eq!(code, Some(1), "{report} {stderr}");
    assert_eq!(report["passed"], false);
    let verdict = report["verdict"].as_str().unwrap();
    assert!(
        verdict.starts_with("drill FAIL") && verdict.contains("empty"),
        "{verdict}"
    );
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_fails_when_the_replica_is_older_than_max_lag() {
    let moto = start_moto();
    moto.bucket("spool-lag");
    let env = moto.env("spool-lag");
    let dir = tempfile::tempdir().unwrap();
    let cfg = spool_config(dir.path(), "[\"default\"]");
    let s = serve(&cfg, &[]);
    let c = client();
    enqueue(&c, &s.base, &s.token, "later", 5).await;
    let mut rep = replicate(dir.path(), &env, None);
    // Replicated and passing first.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, report, _) = drill(dir.path(), &env, "1s");
        if code == Some(0) && report["replica"]["tasks"] == 5 {
            break;
        }
        assert!(Instant::now() < end, "drill never passed: {report}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Replication stops; the live database moves on.
    terminate(&mut rep.child, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    enqueue(&c, &s.base, &s.token, "later", 5).await;
    let (code, report, stderr) = drill(dir.path(), &env, "1s");
    assert_eq!(code, Some(1), "{report} {stderr}");
    let verdict = report["verdict"].as_str().unwrap();
    assert!(verdict.contains("behind the live database"), "{verdict}");
    assert!(report["lag_ms"].as_i64().unwrap() >= 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_fails_when_the_replica_is_damaged() {
    let moto = start_moto();
    moto.bucket("spool-bad");
    let env = moto.env("spool-bad");
    let dir = tempfile::tempdir().unwrap();
    let cfg = spool_config(dir.path(), "[\"default\"]");
    let s = serve(&cfg, &[]);
    let c = client();
    enqueue(&c, &s.base, &s.token, "later", 200).await;
    let mut rep = replicate(dir.path(), &env, None);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, report, _) = drill(dir.path(), &env, "1m");
        if code == Some(0) && report["replica"]["tasks"] == 200 {
            break;
        }
        assert!(Instant::now() < end, "drill never passed: {report}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    terminate(&mut rep.child, Duration::from_secs(30));
    // Flip bytes in the middle of every object of the replica.
    let script = r#"
import boto3, sys
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
n = 0
for o in s3.list_objects_v2(Bucket=sys.argv[2]).get("Contents", []):
    body = bytearray(s3.get_object(Bucket=sys.argv[2], Key=o["Key"])["Body"].read())
    for i in range(len(body) // 3, len(body) // 3 + 64):
        if i < len(body):
            body[i] ^= 0xFF
    s3.put_object(Bucket=sys.argv[2], Key=o["Key"], Body=bytes(body))
    n += 1
print(n)
"#;
    let out = Command::new(tool("python"))
        .arg("-c")
        .arg(script)
        .arg(&moto.endpoint)
        .arg("spool-bad")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .unwrap()
            > 0,
        "objects were damaged"
    );
    let (code, report, stderr) = drill(dir.path(), &env, "1m");
    assert_eq!(code, Some(1), "{report} {stderr}");
    let verdict = report["verdict"].as_str().unwrap();
    assert!(verdict.starts_with("drill FAIL"), "{verdict}");
    drop(s);
}

/// Makes the database (`spool migrate`) and fills it with `n` tasks completed an hour ago, each
/// with a payload of about `payload_bytes`: zeros (Litestream compresses them to almost nothing,
/// so the upload is quick while the restore still writes every page) or pseudo-random hex (it
/// does not compress, so a full snapshot is as large as the database).
fn fill(dir: &Path, n: usize, payload_bytes: usize, random: bool) {
    let out = Command::new(spool_bin())
        .args(["migrate", "--config", "spool.toml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    let mut c = rusqlite::Connection::open(dir.join("data/spool.db")).unwrap();
    let tx = c.transaction().unwrap();
    {
        let mut st = tx
            .prepare(
                "INSERT INTO tasks (id, user_id, queue, kind, payload, status, attempts, run_at,
                                    max_attempts, timeout_ms, created_at, started_at,
                                    completed_at, updated_at)
                 VALUES (?1, 'filler', 'default', 'spool.noop', ?2, 'completed', 1, ?3, 1, 1000,
                         ?3, ?3, ?3, ?3)",
            )
            .unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..n {
            let body: String = if random {
                (0..payload_bytes / 16)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        format!("{x:016x}")
                    })
                    .collect()
            } else {
                "0".repeat(payload_bytes)
            };
            st.execute(rusqlite::params![
                format!("00000000-0000-7000-8000-{i:012x}"),
                format!("{{\"fill\":\"{body}\"}}"),
                hour_ago
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// The objects in a bucket, key → size, through moto's S3 API.
fn bucket_objects(moto: &Moto, bucket: &str) -> std::collections::BTreeMap<String, u64> {
    let script = r#"
import boto3, sys
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2]):
    for o in page.get("Contents", []):
        print(o["Key"], o["Size"])
"#;
    let out = Command::new(tool("python"))
        .arg("-c")
        .arg(script)
        .arg(&moto.endpoint)
        .arg(bucket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (k, n) = l.rsplit_once(' ').unwrap();
            (k.to_string(), n.parse().unwrap())
        })
        .collect()
}

/// Drills until one passes with the replica holding `tasks` tasks; returns its report.
async fn drill_until_caught_up(
    dir: &Path,
    env: &[(String, String)],
    tasks: i64,
    limit: Duration,
) -> Value {
    let end = Instant::now() + limit;
    loop {
        let (d, e) = (dir.to_path_buf(), env.to_vec());
        let (code, report, stderr) = tokio::task::spawn_blocking(move || drill(&d, &e, "1m"))
            .await
            .unwrap();
        if code == Some(0) && report["replica"]["tasks"] == tasks {
            return report;
        }
        assert!(
            Instant::now() < end,
            "the replica never held {tasks} tasks: {code:?} {report} {stderr}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The drill reads the live side before it restores: under steady writes, on a database large
/// enough that the drill takes seconds (~280 MB: 60,000 tasks of 4 KB), the lag it reports is
/// Litestream's (sync-interval 1s), not the time the restore and the checks took. Its JSON
/// report times each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_under_steady_writes_reports_the_replication_lag_not_its_own_duration_and_times_each_step(
) {
    let started = Instant::now();
    let moto = start_moto();
    moto.bucket("spool-steady");
    let env = moto.env("spool-steady");
    let dir = tempfile::tempdir().unwrap();
    spool_config(dir.path(), "[\"default\"]");
    fill(dir.path(), 60_000, 4000, false);
    let rep = replicate(
        dir.path(),
        &env,
        Some(format!(
            "{} serve --config spool.toml",
            spool_bin().display()
        )),
    );
    let base = wait_listening(&rep.lines);
    let token = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    drill_until_caught_up(dir.path(), &env, 60_000, Duration::from_secs(120)).await;

    // Steady writes: a batch of 5 tasks every 100 ms (worked at once by spool.noop), until told
    // to stop, and for 3 minutes at most.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let batches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (stop, batches, base, token) = (stop.clone(), batches.clone(), base.clone(), token);
        tokio::spawn(async move {
            let c = client();
            let end = Instant::now() + Duration::from_secs(180);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < end {
                tick.tick().await;
                enqueue(&c, &base, &token, "default", 5).await;
                batches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let end = Instant::now() + Duration::from_secs(30);
    while batches.load(std::sync::atomic::Ordering::SeqCst) < 20 {
        assert!(Instant::now() < end, "the writer did not get going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (d, e) = (dir.path().to_path_buf(), env.clone());
    let (code, report, stderr) = tokio::task::spawn_blocking(move || drill(&d, &e, "1m"))
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    assert_eq!(code, Some(0), "{report} {stderr}");
    let lag = report["lag_ms"].as_i64().unwrap();
    let duration = report["duration_ms"].as_i64().unwrap();
    eprintln!(
        "steady writes: lag {lag} ms, drill {duration} ms, steps {}, replica {} tasks",
        report["timings_ms"], report["replica"]["tasks"]
    );
    // Read after the restore, the live side would be ahead by the whole drill: lag ≥ duration.
    assert!(
        lag < duration,
        "the lag ({lag} ms) includes the drill's own run time ({duration} ms): {report}"
    );
    assert!(
        lag <= 5000,
        "the lag ({lag} ms) is far above the sync interval (1s): {report}"
    );
    assert!(report["replica"]["tasks"].as_i64().unwrap() > 60_000);
    // Each step's time, in the JSON report, and they add up to no more than the whole.
    let steps = &report["timings_ms"];
    let mut sum = 0;
    for step in [
        "live_read",
        "replica_position",
        "restore",
        "integrity_check",
        "foreign_key_check",
        "compare",
    ] {
        let ms = steps[step]
            .as_i64()
            .unwrap_or_else(|| panic!("no time for {step}: {report}"));
        sum += ms;
    }
    assert!(sum <= duration, "{report}");
    assert!(steps["restore"].as_i64().unwrap() > 0, "{report}");
    assert!(
        report["restored_bytes"].as_u64().unwrap() > 200_000_000,
        "{report}"
    );
    assert_eq!(
        report["restored_bytes"], report["replica"]["bytes"],
        "{report}"
    );
    assert!(report["replica_position"]["txid"].is_string(), "{report}");
    assert!(report["tmp_free_bytes"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["tmp_needed_bytes"].as_u64().unwrap() > report["live"]["bytes"].as_u64().unwrap(),
        "{report}"
    );
    drop(rep);
    eprintln!("test took {:?}", started.elapsed());
}

/// With Litestream stopped, a drill leaves the database and its WAL as they were: it records its
/// result beside the database, never in it, so no write of its own becomes the last connection
/// to close and checkpoints the WAL away. The next `litestream replicate` then carries on from
/// where it stopped instead of uploading the whole database again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_while_litestream_is_stopped_leaves_the_next_replicate_no_full_snapshot_to_upload() {
    let started = Instant::now();
    let moto = start_moto();
    moto.bucket("spool-stopped");
    let env = moto.env("spool-stopped");
    let dir = tempfile::tempdir().unwrap();
    spool_config(dir.path(), "[\"default\"]");
    // ~2.5 MB that does not compress: a full snapshot is megabytes, a sync a few KB.
    fill(dir.path(), 300, 8000, true);
    let exec = || {
        Some(format!(
            "{} serve --config spool.toml",
            spool_bin().display()
        ))
    };
    let mut rep = replicate(dir.path(), &env, exec());
    let base = wait_listening(&rep.lines);
    let token = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let c = client();
    enqueue(&c, &base, &token, "later", 5).await;
    drill_until_caught_up(dir.path(), &env, 305, Duration::from_secs(60)).await;
    // Litestream (and spool under it) stops; the WAL stays, with what it has shipped.
    assert_eq!(terminate(&mut rep.child, Duration::from_secs(60)), Some(0));
    drop(rep);
    let wal = dir.path().join("data/spool.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(
        wal_len > 0,
        "no WAL left after Litestream stopped: this test cannot show anything"
    );
    let before = bucket_objects(&moto, "spool-stopped");
    let snapshot = before
        .iter()
        .filter(|(k, _)| k.starts_with("spool/0009/"))
        .map(|(_, n)| *n)
        .max()
        .expect("a snapshot in the replica");
    assert!(snapshot > 1_000_000, "{before:?}");

    let (code, report, stderr) = drill(dir.path(), &env, "1m");
    assert_eq!(code, Some(0), "{report} {stderr}");
    assert_eq!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
        wal_len,
        "the drill changed the WAL"
    );
    // Recorded beside the database, where inspect finds it.
    let rec = dir.path().join("data/spool.db.drill.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&rec).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = Command::new(spool_bin())
        .args(["inspect", "--json", "--config", "spool.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["last_drill"]["passed"], true, "{v}");

    // Replication resumes; one more task; once the replica holds it, count what was uploaded.
    let rep = replicate(dir.path(), &env, exec());
    let base = wait_listening(&rep.lines);
    enqueue(&c, &base, &token, "later", 1).await;
    drill_until_caught_up(dir.path(), &env, 306, Duration::from_secs(60)).await;
    let after = bucket_objects(&moto, "spool-stopped");
    let new: Vec<(&String, &u64)> = after
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .collect();
    // What `replicate` uploads itself: level 0 (each sync, or the whole database when it cannot
    // carry on from its last position) and level 9 (snapshots). Levels 1-8 are its compactions,
    // which repack files already in the bucket on their own schedule, drill or no drill.
    let uploaded: u64 = new
        .iter()
        .filter(|(k, _)| k.starts_with("spool/0000/"))
        .map(|(_, n)| **n)
        .sum();
    eprintln!("uploaded after the restart: {new:?} (snapshot {snapshot} bytes)");
    assert!(
        !new.iter().any(|(k, _)| k.starts_with("spool/0009/")),
        "a new snapshot was uploaded: {new:?}"
    );
    assert!(
        uploaded < snapshot / 4,
        "the next replicate uploaded {uploaded} bytes, a full copy (snapshot {snapshot}): {new:?}"
    );
    drop(rep);
    eprintln!("test took {:?}", started.elapsed());
}

/// A tmpfs of 1 MiB, mounted for the test and unmounted after. Mounting needs root, which the
/// suite runs as: where it cannot mount, the test fails rather than pass without checking.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path) -> SmallFs {
        let p = dir.join("small");
        std::fs::create_dir_all(&p).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot mount a 1 MiB tmpfs (the test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs(p)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A `--tmp-dir` with less room than the database fails before anything is restored, naming
/// the flag; the same replica restores fine given room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_fails_before_restoring_when_the_tmp_dir_is_too_small() {
    let moto = start_moto();
    moto.bucket("spool-small");
    let env = moto.env("spool-small");
    let dir = tempfile::tempdir().unwrap();
    spool_config(dir.path(), "[\"default\"]");
    fill(dir.path(), 1000, 2000, false); // ~3 MB
    let mut rep = replicate(dir.path(), &env, None);
    drill_until_caught_up(dir.path(), &env, 1000, Duration::from_secs(60)).await;
    terminate(&mut rep.child, Duration::from_secs(30));
    drop(rep);

    let small = SmallFs::mount(dir.path());
    let tmp = small.0.to_str().unwrap().to_string();
    let (code, report, stderr) = drill_with(dir.path(), &env, "1m", &["--tmp-dir", &tmp]);
    assert_eq!(code, Some(1), "{report} {stderr}");
    let verdict = report["verdict"].as_str().unwrap();
    assert!(
        verdict.contains("not enough free space") && verdict.contains("--tmp-dir"),
        "{verdict}"
    );
    assert_eq!(report["reasons"].as_array().unwrap().len(), 1, "{report}");
    assert!(report["timings_ms"]["restore"].is_null(), "{report}");
    assert!(report["restored_bytes"].is_null(), "{report}");
    assert!(
        report["tmp_free_bytes"].as_u64().unwrap() < report["tmp_needed_bytes"].as_u64().unwrap(),
        "{report}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&small.0).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The failure is recorded as the last drill.
    let out = Command::new(spool_bin())
        .args(["inspect", "--json", "--config", "spool.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["last_drill"]["passed"], false, "{v}");
    drop(small);

    let (code, report, stderr) = drill(dir.path(), &env, "1m");
    assert_eq!(code, Some(0), "{report} {stderr}");
}

/// The drill reads counts and the newest change from indexes, and gets the same answers as
/// scans of the tables, wherever the newest change is: a retried (pending) task, a running one,
/// a finished one in the last queue, a message. No plan scans the tasks table.
#[test]
fn drill_snapshot_from_indexes_equals_a_scan_of_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    spool_config(dir.path(), "[\"default\"]");
    fill(dir.path(), 0, 0, false);
    let c = rusqlite::Connection::open(dir.path().join("data/spool.db")).unwrap();
    let mut n = 0;
    let mut task = |c: &rusqlite::Connection, queue: &str, status: &str, at: i64| {
        n += 1;
        let done = matches!(status, "completed" | "failed" | "canceled").then_some(at);
        c.execute(
            "INSERT INTO tasks (id, user_id, queue, kind, status, run_at, max_attempts,
                                timeout_ms, created_at, completed_at, updated_at)
             VALUES (?1, 'u', ?2, 'k', ?3, 0, 1, 1000, 10, ?4, ?5)",
            rusqlite::params![format!("t{n:04}"), queue, status, done, at],
        )
        .unwrap();
    };
    for (i, q) in ["alpha", "beta", "gamma"].iter().enumerate() {
        for (j, s) in ["pending", "running", "completed", "failed", "canceled"]
            .iter()
            .enumerate()
        {
            task(&c, q, s, 1000 + (i * 10 + j) as i64);
        }
    }
    let scan = |c: &rusqlite::Connection| {
        let mut by = std::collections::BTreeMap::new();
        let mut st = c
            .prepare("SELECT status, count(*) FROM tasks GROUP BY status")
            .unwrap();
        for r in st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .unwrap()
        {
            let (s, k) = r.unwrap();
            by.insert(s, k);
        }
        let newest: i64 = c
            .query_row(
                "SELECT max(coalesce((SELECT max(updated_at) FROM tasks), 0),
                            coalesce((SELECT max(created_at) FROM messages), 0))",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let messages: i64 = c
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        (by, newest, messages)
    };
    let check = |c: &rusqlite::Connection, expect_newest: i64| {
        let s = spool::drill::snapshot(c).unwrap();
        let (by, newest, messages) = scan(c);
        assert_eq!(s.tasks_by_status, by);
        assert_eq!(s.tasks, by.values().sum::<i64>());
        assert_eq!(s.messages, messages);
        assert_eq!(s.newest_change_at, Some(newest));
        assert_eq!(newest, expect_newest);
    };
    check(&c, 1024);
    // The newest change is each kind of thing in turn.
    task(&c, "zeta", "failed", 2000);
    check(&c, 2000);
    task(&c, "beta", "running", 3000);
    check(&c, 3000);
    c.execute(
        "UPDATE tasks SET status = 'pending', completed_at = NULL, updated_at = 4000
         WHERE id = 't0004'",
        [],
    )
    .unwrap();
    check(&c, 4000);
    task(&c, "aardvark", "canceled", 5000);
    check(&c, 5000);
    c.execute(
        "INSERT INTO messages (task_id, kind, content, created_at) VALUES ('t0001', 'log', '1', 6000)",
        [],
    )
    .unwrap();
    check(&c, 6000);
    task(&c, "default", "completed", 7000);
    check(&c, 7000);
    // A pending task a per-key claim parked (0015) is pending, read from its own index.
    task(&c, "beta", "pending", 8000);
    c.execute("UPDATE tasks SET parked = 1 WHERE updated_at = 8000", [])
        .unwrap();
    check(&c, 8000);
    // A waiting task (an interactive task between turns) is counted, and its change is the
    // newest one.
    task(&c, "gamma", "waiting", 9000);
    check(&c, 9000);

    for sql in [
        include_str!("../sql/sqlite/queries/drill_pending.sql"),
        include_str!("../sql/sqlite/queries/drill_counts.sql"),
        include_str!("../sql/sqlite/queries/drill_newest_change.sql"),
        include_str!("../sql/sqlite/queries/drill_newest_ids.sql"),
    ] {
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for line in &plan {
            let on_tasks = line.starts_with("SCAN tasks")
                || line.starts_with("SCAN t ")
                || line == "SCAN t"
                || line.starts_with("SEARCH tasks")
                || line.starts_with("SEARCH t ");
            assert!(
                !on_tasks || line.contains("INDEX"),
                "a plan reads the tasks table: {plan:?}"
            );
        }
    }
}
