//! Real processes on one database file: two workers, kill -9 crashes, a worker frozen past its
//! lease. Nothing acknowledged is lost; no task runs concurrently twice; late finishes are fenced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use spool::store::{SqliteStore, Store, StoreOptions};
use spool::task::{NewTask, TaskId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

fn insert_tasks(dir: &Path, kind: &str, payload: Value, n: usize) -> Vec<TaskId> {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(StoreOptions::new(dir.join("data/spool.db"))).unwrap();
        let mut ids = vec![];
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let batch: Vec<NewTask> = chunk
                .iter()
                .map(|_| NewTask {
                    id: TaskId::new(),
                    user_id: "admin".into(),
                    queue: "default".into(),
                    kind: kind.into(),
                    payload: payload.clone(),
                    priority: 0,
                    run_at: 0,
                    max_attempts: 10,
                    timeout_ms: 60_000,
                    idempotency_key: None,
                    request_hash: None,
                    concurrency_key: None,
                })
                .collect();
            ids.extend(batch.iter().map(|t| t.id));
            store.task_insert(batch, 0).await.unwrap();
        }
        store.close();
        ids
    })
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(dir: &Path, status: &str) -> i64 {
    status_counts(dir).get(status).copied().unwrap_or(0)
}

/// The config of a command kind `name` that runs `script` with `sh -c`.
fn shell_kind(name: &str, script: &str) -> String {
    format!("[kinds.{name}]\ncommand = [\"sh\", \"-c\", {script:?}]\n")
}

#[test]
fn two_work_processes_never_run_the_same_task_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let cmd = format!(
        "echo \"S $SPOOL_TASK_ID $PPID $(date +%s%N)\" >> {l}; sleep 0.01; echo \"E $SPOOL_TASK_ID $PPID $(date +%s%N)\" >> {l}",
        l = log.display()
    );
    let cfg = write_config(
        dir.path(),
        &format!(
            "[worker]\nconcurrency = 4\nlease_ms = 5000\npoll_interval_ms = 50\n{}",
            shell_kind("rec", &cmd)
        ),
    );
    let ids = insert_tasks(dir.path(), "rec", json!(null), 300);
    let mut a = spawn(&["work"], &cfg, &[]);
    let mut b = spawn(&["work"], &cfg, &[]);
    wait_until(Duration::from_secs(180), "all tasks completed", || {
        count(dir.path(), "completed") == 300
    });
    assert_eq!(
        a.terminate(Duration::from_secs(30)).map(|s| s.code()),
        Some(Some(0))
    );
    assert_eq!(
        b.terminate(Duration::from_secs(30)).map(|s| s.code()),
        Some(Some(0))
    );

    // Each task: one start and one end, and its run interval overlaps no other run of itself.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut runs: HashMap<String, Vec<(char, u128)>> = HashMap::new();
    let mut pids = HashSet::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 4, "{line}");
        pids.insert(f[2].to_string());
        runs.entry(f[1].to_string())
            .or_default()
            .push((f[0].chars().next().unwrap(), f[3].parse().unwrap()));
    }
    assert_eq!(runs.len(), ids.len());
    for (id, ev) in &runs {
        let starts = ev.iter().filter(|e| e.0 == 'S').count();
        assert_eq!(starts, 1, "task {id} started {starts} times");
    }
    assert_eq!(pids.len(), 2, "both worker processes took tasks");
}

async fn enqueue_batch(
    client: &reqwest::Client,
    s: &Server,
    n: usize,
    payload: Value,
) -> Vec<String> {
    enqueue_kind(client, s, "spool.sleep", n, payload).await
}

async fn enqueue_kind(
    client: &reqwest::Client,
    s: &Server,
    kind: &str,
    n: usize,
    payload: Value,
) -> Vec<String> {
    let tasks: Vec<Value> = (0..n)
        .map(|_| json!({"kind": kind, "payload": payload}))
        .collect();
    let r = client
        .post(s.url("/v1/tasks/batch"))
        .bearer_auth(&s.token)
        .json(&json!({ "tasks": tasks }))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_work_then_restart_completes_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[worker]\nconcurrency = 8\nlease_ms = 1000\npoll_interval_ms = 50\n",
    );
    let client = client();
    let mut s = serve(&cfg, &[]);
    let mut acked = vec![];
    for _ in 0..2 {
        acked.extend(enqueue_batch(&client, &s, 1000, json!({"ms": 5})).await);
    }
    // Mid-work: some done, most not.
    let d = dir.path().to_path_buf();
    wait_until(Duration::from_secs(60), "some tasks done", || {
        count(&d, "completed") >= 100
    });
    s.proc.kill9();
    let done_before = count(dir.path(), "completed");
    assert!(done_before < 2000, "the kill came mid-work");

    let mut s = serve(&cfg, &[]);
    wait_until(Duration::from_secs(180), "all 2000 completed", || {
        count(&d, "completed") == 2000
    });
    assert_eq!(
        s.proc.terminate(Duration::from_secs(30)).map(|x| x.code()),
        Some(Some(0))
    );

    let c = open_db(dir.path());
    let twice: i64 = c
        .query_row("SELECT count(*) FROM tasks WHERE attempts > 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2000);
    for id in &acked {
        let st: String = c
            .query_row("SELECT status FROM tasks WHERE id = ?", [id], |r| r.get(0))
            .unwrap();
        assert_eq!(st, "completed");
    }
    // At-least-once: only tasks that were running at the kill run again (at most the 8 slots).
    assert!(twice <= 8, "{twice} tasks ran twice");
    println!("kill -9 mid-work: {done_before} done before the kill, {twice} of 2000 ran twice");
}

/// A prefetched task is a claimed task: a row in `running` under the worker's lease, not a
/// promise held in memory. Killed with its buffer full, the worker loses none of them: after a
/// restart each is rescued when its lease runs out and runs, once if it never started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_tasks_are_leased_claims_rescued_after_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("starts.log");
    let cmd = format!(
        "echo \"$SPOOL_TASK_ID\" >> {l}; sleep 0.3",
        l = log.display()
    );
    let cfg = write_config(
        dir.path(),
        &format!(
            "[worker]\nconcurrency = 2\nprefetch = 8\nlease_ms = 1000\npoll_interval_ms = 50\n{}",
            shell_kind("rec", &cmd)
        ),
    );
    let client = client();
    let mut s = serve(&cfg, &[]);
    let acked = enqueue_kind(&client, &s, "rec", 40, json!(null)).await;
    // Two slots run, eight tasks wait in the worker's buffer: all ten hold a lease.
    let d = dir.path().to_path_buf();
    wait_until(Duration::from_secs(30), "slots and buffer full", || {
        count(&d, "running") == 10
    });
    s.proc.kill9();
    // A command started just before the kill outlives it (its own process group) and may
    // write its start a moment later: let it, before reading who started.
    std::thread::sleep(Duration::from_millis(500));
    let held = open_db(dir.path())
        .prepare("SELECT id FROM tasks WHERE status = 'running'")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect::<Vec<_>>();
    // Ten at the wait; a task may have finished or been claimed since. Far more than the two
    // slots either way: the buffer's tasks are rows under the worker's lease.
    assert!(
        (9..=11).contains(&held.len()),
        "2 running and 8 prefetched, each a leased row: {} held",
        held.len()
    );
    let starts_before = std::fs::read_to_string(&log).unwrap_or_default();
    let started: HashSet<&str> = starts_before.lines().collect();
    let never_started: Vec<&String> = held
        .iter()
        .filter(|id| !started.contains(id.as_str()))
        .collect();
    assert!(
        never_started.len() + 3 >= held.len(),
        "the buffer's tasks had not started: {} of {} had",
        held.len() - never_started.len(),
        held.len()
    );

    let mut s = serve(&cfg, &[]);
    wait_until(Duration::from_secs(120), "all 40 completed", || {
        count(&d, "completed") == 40
    });
    assert_eq!(
        s.proc.terminate(Duration::from_secs(30)).map(|x| x.code()),
        Some(Some(0))
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let mut starts: HashMap<&str, usize> = HashMap::new();
    for id in text.lines() {
        *starts.entry(id).or_default() += 1;
    }
    for id in &acked {
        let n = starts.get(id.as_str()).copied().unwrap_or(0);
        let bound = if started.contains(id.as_str()) { 2 } else { 1 };
        assert!((1..=bound).contains(&n), "task {id} started {n} times");
    }
    for id in never_started {
        assert_eq!(
            starts.get(id.as_str()),
            Some(&1),
            "prefetched task {id} ran once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kill_9_cycles_under_load_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    // Enqueues as fast as one user can send them: not a test of limits.requests_per_second.
    let cfg = write_config(
        dir.path(),
        "[worker]\nconcurrency = 8\nlease_ms = 600\npoll_interval_ms = 50\n[limits]\nrequests_per_second = 0\n",
    );
    let client = client();
    let mut acked: Vec<String> = vec![];
    for cycle in 0..10u64 {
        let mut s = serve(&cfg, &[]);
        // Load: batches and single enqueues racing the kill.
        let batch = enqueue_batch(&client, &s, 200, json!({"ms": 10})).await;
        acked.extend(batch);
        let end = Instant::now() + Duration::from_millis(150 + 37 * cycle);
        let mut singles = vec![];
        while Instant::now() < end {
            let r = client
                .post(s.url("/v1/tasks"))
                .bearer_auth(&s.token)
                .json(&json!({"kind": "spool.sleep", "payload": {"ms": 10}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            singles.push(v["id"].as_str().unwrap().to_string());
        }
        acked.extend(singles);
        s.proc.kill9();
    }
    let mut s = serve(&cfg, &[]);
    let d = dir.path().to_path_buf();
    let total = acked.len() as i64;
    wait_until(
        Duration::from_secs(240),
        "every acknowledged task completed",
        || count(&d, "completed") >= total,
    );
    assert_eq!(
        s.proc.terminate(Duration::from_secs(30)).map(|x| x.code()),
        Some(Some(0))
    );

    let c = open_db(dir.path());
    let statuses: BTreeMap<String, String> = {
        let mut st = c.prepare("SELECT id, status FROM tasks").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    for id in &acked {
        assert_eq!(
            statuses.get(id).map(String::as_str),
            Some("completed"),
            "task {id}"
        );
    }
    assert_eq!(count(dir.path(), "running"), 0);
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let twice: i64 = c
        .query_row("SELECT count(*) FROM tasks WHERE attempts > 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    println!(
        "10 kill -9 cycles: {} acknowledged, all completed, {twice} ran more than once",
        acked.len()
    );
}

#[test]
fn a_worker_frozen_past_its_lease_cannot_overwrite_the_newer_attempt() {
    let dir = tempfile::tempdir().unwrap();
    // The child sleeps, then reports which attempt produced the result.
    let cmd = "sleep 2; echo \"{\\\"result\\\": $SPOOL_ATTEMPT}\"";
    let cfg = write_config(
        dir.path(),
        // synchronous = normal keeps write transactions short, so the freeze is unlikely to land
        // inside one (a frozen lock holder would stall worker B until A thaws).
        &format!("[database]\nsynchronous = \"normal\"\n[worker]\nconcurrency = 1\nlease_ms = 600\npoll_interval_ms = 50\n[kinds.slow]\ncommand = [\"sh\", \"-c\", {cmd:?}]\n"),
    );
    let ids = insert_tasks(dir.path(), "slow", json!(null), 1);
    let id = ids[0].to_string();
    let attempts = |d: &Path| -> (String, i64) {
        open_db(d)
            .query_row(
                "SELECT status, attempts FROM tasks WHERE id = ?",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    let mut a = spawn(&["work"], &cfg, &[]);
    let d = dir.path().to_path_buf();
    wait_until(Duration::from_secs(30), "worker A claims", || {
        attempts(&d) == ("running".into(), 1)
    });
    a.signal(Signal::SIGSTOP);
    // B takes the task over once A's lease has run out, and completes it as attempt 2.
    let mut b = spawn(&["work"], &cfg, &[]);
    wait_until(
        Duration::from_secs(30),
        "worker B completes attempt 2",
        || attempts(&d) == ("completed".into(), 2),
    );
    let before: (String, i64) = open_db(dir.path())
        .query_row(
            "SELECT result, updated_at FROM tasks WHERE id = ?",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(before.0, "2");
    // A thaws; its child has long finished; its late finish must change nothing.
    a.signal(Signal::SIGCONT);
    wait_until(
        Duration::from_secs(30),
        "worker A notices its lease is gone",
        || a.stderr().contains("lease lost"),
    );
    let after: (String, i64) = open_db(dir.path())
        .query_row(
            "SELECT result, updated_at FROM tasks WHERE id = ?",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(after, before);
    assert_eq!(attempts(dir.path()), ("completed".into(), 2));
    assert_eq!(
        a.terminate(Duration::from_secs(30)).map(|x| x.code()),
        Some(Some(0))
    );
    assert_eq!(
        b.terminate(Duration::from_secs(30)).map(|x| x.code()),
        Some(Some(0))
    );
}

/// Waits up to 15 s for `p` to exit; asserts it exited 2 with the error naming the versions
/// (the line `main` prints; log lines start with a time).
pub(crate) fn stops_for_the_newer_schema(p: &mut Proc, found: u32, known: u32) {
    let status = p.wait_exit(Duration::from_secs(15));
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(2)),
        "still running or another exit: {}",
        p.stderr()
    );
    let said = format!(
        "error: a newer spool migrated the database to schema version {found} since this \
         process started (it knows {known})"
    );
    let stderr = p.stderr();
    assert!(stderr.lines().any(|l| l.starts_with(&said)), "{stderr}");
}

/// A newer spool migrates the database file while `serve` and `work` run on it: both stop
/// within seconds (exit 2, naming the versions, as they would refuse to start), rather than
/// go on writing in the older way. Until then they run on, although they read the version
/// every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_work_stop_once_a_newer_spool_migrates_their_database() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[worker]\nconcurrency = 1\npoll_interval_ms = 50\n[kinds.ok]\ncommand = [\"true\"]\n",
    );
    let mut s = serve(&cfg, &[]);
    let mut w = spawn(&["work"], &cfg, &[]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let id = enqueue_kind(&client(), &s, "ok", 1, json!(null))
        .await
        .remove(0);
    assert_eq!(s.wait_terminal(&id).await["status"], "completed");
    assert!(w.child.try_wait().unwrap().is_none(), "{}", w.stderr());

    let known = spool::store::LATEST_VERSION;
    let c = rusqlite::Connection::open(dir.path().join("data/spool.db")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch(&format!("PRAGMA user_version = {}", known + 1))
        .unwrap();
    stops_for_the_newer_schema(&mut s.proc, known + 1, known);
    stops_for_the_newer_schema(&mut w, known + 1, known);
}

/// `spool work` with `worker.metrics_listen` serves `/metrics` there: a worker host's own task
/// counters and timings, which no other process has, and the queue depths. It leaves
/// `http.metrics_listen` to `serve`, so processes sharing one config do not fight over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_process_serves_its_own_metrics_on_worker_metrics_listen() {
    let dir = tempfile::tempdir().unwrap();
    // serve's metrics address, taken (by the serve of the same config, as it were).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[worker]\nconcurrency = 2\npoll_interval_ms = 50\nmetrics_listen = \"127.0.0.1:0\"\n\
             [http]\nmetrics_listen = \"{}\"\n",
            taken.local_addr().unwrap()
        ),
    );
    let d = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || insert_tasks(&d, "spool.noop", json!(null), 5))
        .await
        .unwrap();
    let mut w = spawn(&["work"], &cfg, &[]);
    let metrics = w
        .lines
        .recv_timeout(Duration::from_secs(30))
        .ok()
        .and_then(|l| l.strip_prefix("metrics listening on ").map(str::to_string))
        .unwrap_or_else(|| panic!("no metrics address printed: {}", w.stderr()));
    wait_until(Duration::from_secs(60), "all tasks completed", || {
        count(dir.path(), "completed") == 5
    });
    let r = client()
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let text = r.text().await.unwrap();
    let started: f64 = text
        .lines()
        .filter(|l| l.starts_with("spool_tasks_started_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(started, 5.0, "{text}");
    for name in ["spool_task_run_seconds_count", "spool_queue_depth"] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert_eq!(
        w.terminate(Duration::from_secs(30)).map(|s| s.code()),
        Some(Some(0))
    );
}
