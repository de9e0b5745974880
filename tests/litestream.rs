//! Backups with the real Litestream binary against a real S3-compatible server (moto) on
//! 127.0.0.1: replicate under `-exec`, drill, restore on a fresh machine, and the drill's
//! failures (empty bucket, stale replica, damaged replica). Tools come from `.tools/`, which
//! `tests/run.sh` installs; a missing tool fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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
