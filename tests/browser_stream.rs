//! A browser's own `EventSource` on a task's events (headless Chromium, as tests/dashboard.rs),
//! authorised by a stream token in the URL, resumes by itself with `Last-Event-ID` after its
//! connection drops: every message once, in order, then `end`.
//!
//! The drop: `spool serve` is killed (-9) mid-stream and started again on the same port, while
//! the task runs on in a separate `spool work` process. A kill closes every connection at once
//! with nothing in between; a graceful stop could still answer the browser's reconnect (a 503
//! makes an EventSource give up for good), and a server-side timeout would need a stalled reader.
//! The restarted server knows the stream token (it is a row in the database, not in memory).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(90);

/// The next line of `rx` starting with `prefix` (others are skipped), within `limit`.
fn line_starting(rx: &mpsc::Receiver<String>, prefix: &str, limit: Duration, log: &Path) -> String {
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return l[prefix.len()..].trim().to_string(),
            Ok(_) => continue,
            Err(e) => panic!(
                "no {prefix:?} line from the browser script ({e:?}); its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browsers_event_source_with_a_stream_token_resumes_with_last_event_id_after_a_server_restart(
) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let driver = repo.join(".tools/node/node_modules/playwright-core");
    assert!(
        driver.exists(),
        "{} missing: run `bash tests/run.sh`, which installs it",
        driver.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} missing: run `bash tests/run.sh` (apt-get install chromium)"
    );

    let dir = tempfile::tempdir().unwrap();
    // The task waits for `go` (the browser is subscribed), then prints 60 numbered lines.
    let go = dir.path().join("go");
    let script = format!(
        "i=0; while [ ! -f {go:?} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n\
         n=1; while [ $n -le 60 ]; do echo \"{{\\\"kind\\\":\\\"progress\\\",\\\"n\\\":$n}}\"; n=$((n+1)); sleep 0.1; done"
    );
    // A fixed port, so the restarted server is where the browser reconnects.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[worker]\nconcurrency = 0\npoll_interval_ms = 100\n[kinds.count]\ncommand = [\"sh\", \"-c\", {script:?}]\n"
        ),
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&cfg, text).unwrap();

    let mut first = serve(&cfg, &[]);
    let base = first.base.clone();
    let admin = first.token.clone();
    let mut work = spawn(
        &["work"],
        &cfg,
        &[
            ("SPOOL_WORKER_CONCURRENCY", "1"),
            ("SPOOL_WORKER_API_URL", &base),
        ],
    );
    let alice = first.user_token("alice", false);
    let r = first
        .post_json(&alice, "/v1/tasks", json!({"kind": "count"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = first
        .post_json(&alice, &format!("/v1/tasks/{id}/stream_token"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let stream_token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();

    let log = dir.path().join("browser.log");
    let mut node = Command::new("node")
        .arg(repo.join("tests/browser/event_source.mjs"))
        .args([&base, &id, &stream_token])
        .env("PLAYWRIGHT_CORE", &driver)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("node is needed for the browser test");
    let out = node.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            println!("browser: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let (second, result) = tokio::task::block_in_place(|| {
        line_starting(&rx, "OPEN", T, &log);
        std::fs::write(&go, "").unwrap();
        let n = line_starting(&rx, "DROP ", T, &log);
        println!("{n} messages in: killing the server");
        first.proc.kill9();
        let second = serve(&cfg, &[]);
        assert_eq!(second.base, base, "the server came back elsewhere");
        let result: Value = serde_json::from_str(&line_starting(&rx, "RESULT ", T, &log)).unwrap();
        line_starting(&rx, "PASS: ", T, &log);
        let end = Instant::now() + T;
        let status = loop {
            if let Some(s) = node.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < end, "the browser script did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "browser script: {status}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        (second, result)
    });
    println!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    println!("browser saw: {result}");

    let done = second.wait_terminal(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(result["end"], "completed");
    assert!(result["opens"].as_u64().unwrap() >= 2, "{result}");
    // Every message of the task, each once, in order: the ids the browser saw are the task's.
    let page = second
        .get_json(&admin, &format!("/v1/tasks/{id}/messages?limit=1000"))
        .await;
    let stored: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    let seen: Vec<u64> = result["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        seen, stored,
        "the browser's messages against the stored ones"
    );
    let ns: Vec<u64> = result["ns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ns, (1..=60).collect::<Vec<u64>>());
    let drop_at = result["dropAt"].as_u64().unwrap();
    assert!(
        seen.iter().any(|&i| i > drop_at) && seen.iter().any(|&i| i <= drop_at),
        "the drop fell mid-stream: {result}"
    );

    // The token still reads this task on the restarted server, and never reached a log.
    let r = client()
        .get(second.url(&format!(
            "/v1/tasks/{id}/messages?access_token={stream_token}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut second = second;
    assert_eq!(
        second
            .proc
            .terminate(Duration::from_secs(30))
            .map(|s| s.code()),
        Some(Some(0))
    );
    assert_eq!(
        work.terminate(Duration::from_secs(30)).map(|s| s.code()),
        Some(Some(0))
    );
    for (what, log) in [
        ("the first server", first.proc.stderr()),
        ("the restarted server", second.proc.stderr()),
        ("the worker", work.stderr()),
    ] {
        assert!(
            !log.is_empty() || what == "the worker",
            "{what} wrote no log"
        );
        assert!(
            !log.contains(&stream_token),
            "the stream token is in {what}'s log:\n{log}"
        );
        assert!(!log.contains(&alice), "alice's token is in {what}'s log");
    }
}
