//! Admission control with real `spool work` processes on one SQLite file (issue 16): per-key and
//! global concurrency and rate limits hold across processes, and a flood of one key does not
//! delay another key. Commands record their start and end; a sampler reads the database every
//! 20 ms. (The same rules on PostgreSQL: the conformance suite, tests/conformance/admission.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::*;
use serde_json::json;
use spool::store::{SqliteStore, Store, StoreOptions};
use spool::task::{NewTask, TaskId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Inserts tasks as another process would, straight into the database (no wake-up of any
/// worker: they find them by polling). `keys[i]` is task i's concurrency key.
fn insert(dir: &Path, kind: &str, keys: &[Option<String>]) -> Vec<TaskId> {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(StoreOptions::new(dir.join("data/spool.db"))).unwrap();
        let mut ids = vec![];
        let now = spool::clock::Clock::now(&spool::clock::SystemClock);
        for chunk in keys.chunks(1000) {
            let batch: Vec<NewTask> = chunk
                .iter()
                .map(|k| NewTask {
                    id: TaskId::new(),
                    user_id: "admin".into(),
                    queue: "default".into(),
                    kind: kind.into(),
                    payload: json!({ "key": k }),
                    priority: 0,
                    run_at: 0,
                    max_attempts: 3,
                    timeout_ms: 60_000,
                    idempotency_key: None,
                    request_hash: None,
                    concurrency_key: k.clone(),
                })
                .collect();
            ids.extend(batch.iter().map(|t| t.id));
            store.task_insert(batch, now).await.unwrap();
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

/// A command kind that logs `S <task> <payload key> <ns>` and `E ...` around a short sleep.
fn recording_kind(log: &Path, sleep: &str) -> String {
    let cmd = format!(
        "k=$(cat | tr -d ' '); echo \"S $SPOOL_TASK_ID $k $(date +%s%N)\" >> {l}; sleep {sleep}; echo \"E $SPOOL_TASK_ID $k $(date +%s%N)\" >> {l}",
        l = log.display()
    );
    format!("[kinds.rec]\ncommand = [\"sh\", \"-c\", {cmd:?}]\n")
}

/// Runs intervals per group from the log: (group, start ns, end ns).
fn intervals(log: &Path) -> Vec<(String, u128, u128)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut open: HashMap<String, (String, u128)> = HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 4, "{line}");
        let t: u128 = f[3].parse().unwrap();
        match f[0] {
            "S" => {
                open.insert(f[1].to_string(), (f[2].to_string(), t));
            }
            _ => {
                let (k, s) = open.remove(f[1]).expect("an end without a start");
                out.push((k, s, t));
            }
        }
    }
    out
}

/// The most intervals open at once.
fn max_overlap(iv: &[(u128, u128)]) -> usize {
    let mut ev: Vec<(u128, i32)> = iv.iter().flat_map(|(s, e)| [(*s, 1), (*e, -1)]).collect();
    // Ends before starts at the same instant.
    ev.sort();
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, d) in ev {
        cur += d;
        max = max.max(cur);
    }
    max as usize
}

/// Samples the database every 20 ms while `stop` is false; returns the largest running count
/// of one key and of the whole queue seen.
fn sampler(dir: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(i64, i64, usize)> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let (mut per_key, mut total, mut samples) = (0i64, 0i64, 0usize);
        let deadline = Instant::now() + Duration::from_secs(600);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            if dir.join("data/spool.db").exists() {
                let c = open_db(&dir);
                let k: i64 = c
                    .query_row(
                        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM tasks
                         WHERE status = 'running' AND concurrency_key IS NOT NULL
                         GROUP BY concurrency_key)",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap_or(0);
                let t: i64 = c
                    .query_row(
                        "SELECT count(*) FROM tasks WHERE status = 'running'",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap_or(0);
                per_key = per_key.max(k);
                total = total.max(t);
                samples += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (per_key, total, samples)
    })
}

#[test]
fn per_key_limit_holds_across_four_workers_and_a_flood_does_not_delay_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let poll_ms = 300;
    let cfg = write_config(
        dir.path(),
        &format!(
            "[worker]\nconcurrency = 8\npoll_interval_ms = {poll_ms}\n[queues.default]\nper_key_concurrency = 1\n{}",
            recording_kind(&log, "0.005")
        ),
    );
    // 2,000 tasks over 50 keys, interleaved as they would arrive.
    let keys: Vec<Option<String>> = (0..2000).map(|i| Some(format!("k{}", i % 50))).collect();
    insert(dir.path(), "rec", &keys);
    let stop = Arc::new(AtomicBool::new(false));
    let sample = sampler(dir.path(), stop.clone());
    let mut workers: Vec<Proc> = (0..4).map(|_| spawn(&["work"], &cfg, &[])).collect();
    wait_until(
        Duration::from_secs(400),
        "all 2,000 tasks completed",
        || count(dir.path(), "completed") == 2000,
    );

    // A flood of 1,000 tasks of one key, then one task of another key: it starts within a
    // poll interval (plus a claim), while the flood still has hundreds waiting.
    let flood: Vec<Option<String>> = (0..1000).map(|_| Some("flood".to_string())).collect();
    insert(dir.path(), "rec", &flood);
    wait_until(Duration::from_secs(30), "the flood to start", || {
        count(dir.path(), "running") > 0
    });
    let solo = insert(dir.path(), "rec", &[Some("solo".to_string())])[0];
    let c = open_db(dir.path());
    let mut started = None::<i64>;
    let end = Instant::now() + Duration::from_secs(30);
    while started.is_none() {
        assert!(Instant::now() < end, "the solo task never started");
        started = c
            .query_row(
                "SELECT started_at - created_at FROM tasks WHERE id = ?1 AND started_at IS NOT NULL",
                [solo.to_string()],
                |r| r.get(0),
            )
            .ok();
        std::thread::sleep(Duration::from_millis(10));
    }
    let waited = started.unwrap();
    let flood_pending: i64 = c
        .query_row(
            "SELECT count(*) FROM tasks WHERE concurrency_key = 'flood' AND status = 'pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in &mut workers {
        assert_eq!(
            w.terminate(Duration::from_secs(60)).map(|s| s.code()),
            Some(Some(0))
        );
    }
    let (per_key, _, samples) = sample.join().unwrap();
    assert!(samples > 10, "the sampler ran ({samples} samples)");
    assert!(
        per_key <= 1,
        "two running tasks of one key were seen in the database"
    );
    assert!(
        flood_pending > 500,
        "the solo task waited for the flood ({flood_pending} left)"
    );
    assert!(
        waited < poll_ms + 1000,
        "the solo task waited {waited} ms behind a flood (poll interval {poll_ms} ms)"
    );

    // The commands' own records: no two runs of one key overlap.
    let mut by_key: HashMap<String, Vec<(u128, u128)>> = HashMap::new();
    for (k, s, e) in intervals(&log) {
        by_key.entry(k).or_default().push((s, e));
    }
    assert!(by_key.len() >= 51, "{} keys ran", by_key.len());
    for (k, iv) in &by_key {
        assert_eq!(max_overlap(iv), 1, "key {k} ran twice at once");
    }
}

#[test]
fn global_concurrency_holds_across_three_processes_of_eight_slots() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs.log");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[worker]\nconcurrency = 8\npoll_interval_ms = 50\n[queues.default]\nglobal_concurrency = 3\n{}",
            recording_kind(&log, "0.05")
        ),
    );
    insert(dir.path(), "rec", &vec![None; 90]);
    let stop = Arc::new(AtomicBool::new(false));
    let sample = sampler(dir.path(), stop.clone());
    let mut workers: Vec<Proc> = (0..3).map(|_| spawn(&["work"], &cfg, &[])).collect();
    wait_until(Duration::from_secs(240), "all tasks completed", || {
        count(dir.path(), "completed") == 90
    });
    stop.store(true, Ordering::Relaxed);
    for w in &mut workers {
        assert_eq!(
            w.terminate(Duration::from_secs(60)).map(|s| s.code()),
            Some(Some(0))
        );
    }
    let (_, total, samples) = sample.join().unwrap();
    assert!(samples > 10);
    assert!(total <= 3, "{total} tasks ran at once in the database");
    let iv: Vec<(u128, u128)> = intervals(&log)
        .into_iter()
        .map(|(_, s, e)| (s, e))
        .collect();
    assert_eq!(iv.len(), 90);
    let most = max_overlap(&iv);
    assert!(most <= 3, "{most} commands ran at once");
    assert!(most >= 2, "the limit was used ({most} at once)");
}

#[test]
fn a_rate_of_20_per_second_with_burst_5_holds_across_three_processes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[worker]\nconcurrency = 8\npoll_interval_ms = 500\n[queues.default]\nrate = \"20/s\"\nburst = 5\n",
    );
    insert(dir.path(), "spool.noop", &vec![None; 1000]);
    let mut workers: Vec<Proc> = (0..3).map(|_| spawn(&["work"], &cfg, &[])).collect();
    let c = open_db(dir.path());
    let first = || -> Option<i64> {
        c.query_row("SELECT min(started_at) FROM tasks", [], |r| r.get(0))
            .ok()
            .flatten()
    };
    wait_until(Duration::from_secs(60), "the first start", || {
        first().is_some()
    });
    let t0 = first().unwrap();
    wait_until(Duration::from_secs(60), "ten seconds of work", || {
        c.query_row("SELECT max(started_at) FROM tasks", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .ok()
        .flatten()
        .is_some_and(|m| m > t0 + 10_500)
    });
    for w in &mut workers {
        assert_eq!(
            w.terminate(Duration::from_secs(60)).map(|s| s.code()),
            Some(Some(0))
        );
    }
    let started: i64 = c
        .query_row(
            "SELECT count(*) FROM tasks WHERE started_at BETWEEN ?1 AND ?1 + 10000",
            [t0],
            |r| r.get(0),
        )
        .unwrap();
    let most = 20 * 10 + 5;
    assert!(
        started <= most,
        "{started} started in 10 s, more than {most}"
    );
    assert!(
        started * 10 >= most * 9,
        "{started} started in 10 s, less than 90% of {most}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_keys_are_validated_shown_and_queues_list_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[worker]\nconcurrency = 0\n[queues.default]\nconcurrency = 4\nper_key_concurrency = 2\nrate = \"10/m\"\nburst = 4\n[queues.plain]\n",
    );
    let s = serve(&cfg, &[]);
    let c = client();
    for (key, what) in [
        (json!(""), "empty"),
        (json!("x".repeat(256)), "too long"),
        (json!("a\nb"), "control"),
    ] {
        let r = s
            .post_json(
                &s.token,
                "/v1/tasks",
                json!({"kind": "k", "concurrency_key": key}),
            )
            .await;
        assert_eq!(r.status(), 400, "{what}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_request");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("concurrency_key"),
            "{e}"
        );
    }
    let r = s
        .post_json(
            &s.token,
            "/v1/tasks/batch",
            json!({"tasks": [{"kind": "k", "concurrency_key": "u1"}, {"kind": "k", "concurrency_key": ""}]}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains('1'), "{e}");
    let r = s
        .post_json(
            &s.token,
            "/v1/tasks",
            json!({"kind": "k", "concurrency_key": "user-1"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let t: serde_json::Value = r.json().await.unwrap();
    assert_eq!(t["concurrency_key"], "user-1");
    let r = s
        .post_json(&s.token, "/v1/tasks", json!({"kind": "k"}))
        .await;
    let t: serde_json::Value = r.json().await.unwrap();
    assert!(t["concurrency_key"].is_null());

    let q = s.get_json(&s.token, "/v1/queues").await;
    let by_name = |n: &str| {
        q["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_name("default")["limits"],
        json!({"concurrency": 4, "global_concurrency": null, "per_key_concurrency": 2,
               "rate": "10/m", "burst": 4, "tokens": 4.0})
    );
    assert_eq!(
        by_name("plain")["limits"],
        json!({"concurrency": null, "global_concurrency": null, "per_key_concurrency": null,
               "rate": null, "burst": null, "tokens": null})
    );
    drop(c);
}
