//! Many hosts on one PostgreSQL queue, with the real binaries as separate processes: one
//! `spool serve` and several `spool work` on one database, with workers killed, frozen past
//! their lease, cut off from the database in their own network namespace, and the database
//! restarted under them.
//!
//! The tasks' commands record each run in one log file opened with `O_APPEND` (`>>`), so the
//! file's order is the order the runs happened in: a run's `start` line is written before its
//! work and its `end` line after, and a second `start` of one task before the first's `end`
//! means it ran on two workers at once. Where a run can be killed (no `end` line), the command
//! holds a `flock` on a file of the task while it runs and records an `overlap` when another run
//! holds it.
//!
//! The tests take turns (one lock), so each has the machine's cores to itself. Every wait is
//! bounded. The network-namespace test needs root (CI runs as root) and the `ip` tool; it
//! fails, not skips, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::pg;

use common::{client, eventually, serve, spawn, spool_bin, write_config, Proc, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One test at a time: each measures leases against the clock on a shared 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- the recording commands -----------------------------------------------------------------

/// The `[kinds.*]` of a process named `who`: `rec` records its start and end around `sleep`
/// seconds of work (none when `sleep` is empty), `held` sleeps as many seconds as its payload
/// says holding the task's lock file (see the module comment); both print
/// `{"result": {"worker": who}}`.
fn kinds(log: &Path, who: &str, sleep: &str) -> String {
    let log = log.display().to_string();
    let locks = Path::new(&log).parent().unwrap().display().to_string();
    let work = if sleep.is_empty() {
        String::new()
    } else {
        format!("sleep {sleep}; ")
    };
    let rec = format!(
        "echo \"start $SPOOL_TASK_ID $SPOOL_ATTEMPT $WORKER\" >> '{log}'; {work}\
         echo \"end $SPOOL_TASK_ID $SPOOL_ATTEMPT $WORKER\" >> '{log}'; \
         printf '{{\"result\": {{\"worker\": \"%s\"}}}}\\n' \"$WORKER\""
    );
    let held = format!(
        "exec 9>>'{locks}/lock-'$SPOOL_TASK_ID; \
         if flock -n 9; then echo \"start $SPOOL_TASK_ID $SPOOL_ATTEMPT $WORKER\" >> '{log}'; \
         else echo \"overlap $SPOOL_TASK_ID $SPOOL_ATTEMPT $WORKER\" >> '{log}'; fi; \
         sleep $(cat); \
         echo \"end $SPOOL_TASK_ID $SPOOL_ATTEMPT $WORKER\" >> '{log}'; \
         printf '{{\"result\": {{\"worker\": \"%s\"}}}}\\n' \"$WORKER\""
    );
    format!(
        "[kinds.rec]\ncommand = [\"sh\", \"-c\", {rec:?}]\nenv = {{ WORKER = {who:?} }}\n\
         max_attempts = 20\ntimeout_ms = 120000\n\
         [kinds.held]\ncommand = [\"sh\", \"-c\", {held:?}]\nenv = {{ WORKER = {who:?} }}\n\
         max_attempts = 20\ntimeout_ms = 120000\n"
    )
}

/// One line of the log.
#[derive(Debug, Clone)]
struct Run {
    what: String,
    task: String,
    attempt: u32,
    worker: String,
}

fn read_log(log: &Path) -> Vec<Run> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 4, "a torn log line: {l:?}");
            Run {
                what: f[0].to_string(),
                task: f[1].to_string(),
                attempt: f[2].parse().unwrap(),
                worker: f[3].to_string(),
            }
        })
        .collect()
}

/// Checks the log's timeline: no run of a task starts while another of it has not ended, and
/// every run ends. Returns each task's runs, (attempt, worker), in order.
fn timeline(log: &Path) -> HashMap<String, Vec<(u32, String)>> {
    timeline_of(log, false)
}

/// The timeline of `held` tasks, whose runs may be killed (a start with no end): no run found
/// another holding the task's lock, and every end is its own start's.
fn timeline_held(log: &Path) -> HashMap<String, Vec<(u32, String)>> {
    timeline_of(log, true)
}

fn timeline_of(log: &Path, killable: bool) -> HashMap<String, Vec<(u32, String)>> {
    let mut open: HashMap<String, (u32, String)> = HashMap::new();
    let mut runs: HashMap<String, Vec<(u32, String)>> = HashMap::new();
    for r in read_log(log) {
        match r.what.as_str() {
            "start" => {
                if let Some((a, w)) = open.get(&r.task).filter(|_| !killable) {
                    panic!(
                        "task {} started on {} (attempt {}) while it ran on {w} (attempt {a})",
                        r.task, r.worker, r.attempt
                    );
                }
                open.insert(r.task.clone(), (r.attempt, r.worker.clone()));
                runs.entry(r.task).or_default().push((r.attempt, r.worker));
            }
            "end" => {
                let o = open.remove(&r.task);
                assert_eq!(
                    o,
                    Some((r.attempt, r.worker.clone())),
                    "task {}: an end with no start of its own",
                    r.task
                );
            }
            other => panic!("task {} ran on two workers at once ({other})", r.task),
        }
    }
    assert!(
        killable || open.is_empty(),
        "runs that never ended: {open:?}"
    );
    runs
}

// ---- processes --------------------------------------------------------------------------------

/// A config for a process named `who` on the database at `url`, in a directory of its own.
fn node_config(root: &Path, who: &str, url: &str, log: &Path, extra: &str) -> PathBuf {
    let dir = root.join(who);
    std::fs::create_dir_all(&dir).unwrap();
    write_config(
        &dir,
        &format!(
            "{extra}\n[database]\nurl = {url:?}\nbusy_timeout_ms = 2000\n\
             [limits]\nrequests_per_second = 0\n{}",
            kinds(log, who, "")
        ),
    )
}

/// `spool serve` that runs no tasks itself (named `serve`).
fn serve_node(root: &Path, url: &str, log: &Path) -> Server {
    serve(
        &node_config(root, "serve", url, log, "[worker]\nconcurrency = 0"),
        &[],
    )
}

/// `spool work` named `who`.
fn worker(root: &Path, who: &str, url: &str, log: &Path, worker_cfg: &str) -> Proc {
    let cfg = node_config(root, who, url, log, &format!("[worker]\n{worker_cfg}"));
    spawn(&["work"], &cfg, &[])
}

/// The worker id (`lease_owner`) of the process `pid`, once it has registered.
async fn worker_id(db: &tokio_postgres::Client, pid: i32) -> String {
    eventually(
        Duration::from_secs(30),
        "the worker to register",
        || async {
            db.query_opt("SELECT id FROM workers WHERE pid = $1", &[&i64::from(pid)])
                .await
                .unwrap()
                .map(|r| r.get::<_, String>(0))
        },
    )
    .await
}

async fn count(db: &tokio_postgres::Client, status: &str) -> i64 {
    db.query_one("SELECT count(*) FROM tasks WHERE status = $1", &[&status])
        .await
        .unwrap()
        .get(0)
}

/// The tasks `owner` holds a lease on now, with their attempt.
async fn held_by(db: &tokio_postgres::Client, owner: &str) -> BTreeMap<String, i64> {
    db.query(
        "SELECT id::text, attempts FROM tasks WHERE status = 'running' AND lease_owner = $1",
        &[&owner],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The tasks `owner` holds now, with when their lease runs out.
async fn leases_of(db: &tokio_postgres::Client, owner: &str) -> BTreeMap<String, i64> {
    db.query(
        "SELECT id::text, lease_expires_at FROM tasks WHERE status = 'running' \
         AND lease_owner = $1",
        &[&owner],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Waits until none of `leases` (task id -> lease end, read at `since`) is held any more, and
/// checks that none was given back to the queue before its lease ran out. A task the worker
/// finished with a commit already on its way when the leases were read is not given back at
/// all: only the changes to pending after `since` are judged.
async fn rescued_after_lease(
    db: &tokio_postgres::Client,
    leases: &BTreeMap<String, i64>,
    since: i64,
) {
    let ids: Vec<String> = leases.keys().cloned().collect();
    eventually(
        Duration::from_secs(30),
        "the lost leases to be rescued",
        || async {
            let running: i64 = db
                .query_one(
                    "SELECT count(*) FROM tasks WHERE id::text = ANY($1) AND status = 'running' \
                 AND lease_expires_at = ANY($2)",
                    &[&ids, &leases.values().copied().collect::<Vec<i64>>()],
                )
                .await
                .unwrap()
                .get(0);
            (running == 0).then_some(())
        },
    )
    .await;
    // Changes get their positions in the log after commit, when it is read (migration 0005).
    db.execute("SELECT spool_number_changes(1000000)", &[])
        .await
        .unwrap();
    let rescues: BTreeMap<String, i64> = db
        .query(
            "SELECT task_id::text, min(at) FROM task_changes \
             WHERE task_id::text = ANY($1) AND status = 'pending' AND at > $2 GROUP BY task_id",
            &[&ids, &since],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (id, until) in leases {
        let Some(&at) = rescues.get(id) else { continue };
        assert!(
            at >= *until,
            "task {id}: given back at {at}, before its lease ran out at {until}"
        );
    }
}

/// What a finish writes, per task: status, attempts, result, completed_at, updated_at.
async fn rows_of(db: &tokio_postgres::Client, ids: &[String]) -> BTreeMap<String, String> {
    db.query(
        "SELECT id::text, concat_ws('|', status, attempts, result::text, completed_at, updated_at) \
         FROM tasks WHERE id::text = ANY($1)",
        &[&ids],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Waits until each of `ids` is completed by a worker other than `not`; returns who did.
async fn completed_elsewhere(
    db: &tokio_postgres::Client,
    ids: &[String],
    not: &str,
    limit: Duration,
) -> BTreeMap<String, String> {
    let end = Instant::now() + limit;
    loop {
        let rows = db
            .query(
                "SELECT id::text, status, coalesce(result->>'worker', ''), \
                 concat_ws(' ', status, attempts, lease_owner, lease_expires_at, last_error) \
                 FROM tasks WHERE id::text = ANY($1)",
                &[&ids],
            )
            .await
            .unwrap();
        let done: BTreeMap<String, String> = rows
            .iter()
            .filter(|r| r.get::<_, String>(1) == "completed")
            .map(|r| (r.get(0), r.get(2)))
            .collect();
        if done.len() == ids.len() {
            for (id, w) in &done {
                assert_ne!(w, not, "task {id} was completed by the stale worker");
            }
            return done;
        }
        if Instant::now() > end {
            let left: Vec<String> = rows
                .iter()
                .filter(|r| r.get::<_, String>(1) != "completed")
                .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, String>(3)))
                .collect();
            panic!(
                "{} of {} tasks not completed by another worker in {limit:?} (now {}): {left:#?}",
                left.len(),
                ids.len(),
                now_ms()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `p`'s log says, for each of `ids`, that it dropped the attempt or its outcome
/// because the lease was gone.
async fn says_lease_lost(p: &Proc, ids: &[String], limit: Duration) {
    eventually(limit, "the stale worker to drop its attempts", || async {
        let log = p.stderr();
        let lost: HashSet<&str> = log
            .lines()
            .filter(|l| l.contains("lease lost"))
            .flat_map(|l| ids.iter().filter(|id| l.contains(id.as_str())))
            .map(|s| s.as_str())
            .collect();
        (lost.len() == ids.len()).then_some(())
    })
    .await
}

async fn enqueue_batches(s: &Server, kind: &str, n: usize, payload: Value) -> Vec<String> {
    enqueue_batches_of(s, n, json!({"kind": kind, "payload": payload})).await
}

/// Enqueues `n` copies of `task` (a `POST /v1/tasks` body) in batches; returns their ids.
async fn enqueue_batches_of(s: &Server, n: usize, task: Value) -> Vec<String> {
    let c = client();
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let k = (n - ids.len()).min(1000);
        let tasks: Vec<Value> = (0..k).map(|_| task.clone()).collect();
        let r = c
            .post(s.url("/v1/tasks/batch"))
            .bearer_auth(&s.token)
            .json(&json!({ "tasks": tasks }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        for t in body["tasks"].as_array().unwrap() {
            ids.push(t["id"].as_str().unwrap().to_string());
        }
    }
    ids
}

/// Waits (bounded) until `n` tasks are completed, failing early on a failed one.
async fn until_completed(db: &tokio_postgres::Client, n: i64, limit: Duration) {
    let end = Instant::now() + limit;
    loop {
        let done = count(db, "completed").await;
        assert_eq!(count(db, "failed").await, 0, "a task failed");
        if done >= n {
            return;
        }
        if Instant::now() >= end {
            let left: Vec<String> = db
                .query(
                    "SELECT id::text, status, attempts, lease_owner, lease_expires_at, run_at \
                     FROM tasks WHERE status <> 'completed' ORDER BY id LIMIT 20",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "{} {} attempt {} owner {:?} lease to {:?} run_at {}",
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, i64>(2),
                        r.get::<_, Option<String>>(3),
                        r.get::<_, Option<i64>>(4),
                        r.get::<_, i64>(5)
                    )
                })
                .collect();
            panic!(
                "only {done} of {n} tasks completed in {limit:?} (now {}); some left: {left:#?}",
                now_ms()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---- many hosts -----------------------------------------------------------------------------

const TASKS: usize = 20_000;
const LEASE_MS: i64 = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_complete_20000_tasks_once_each_through_a_kill_9_and_a_stop_past_the_lease() {
    let _turn = SERIAL.lock().await;
    let started = Instant::now();
    let url = pg::server().fresh_db().await;
    let db = pg::server().client(&url).await;
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("runs.log");
    let s = serve_node(root.path(), &url, &log);
    let wcfg =
        format!("concurrency = 16\nprefetch = 16\nlease_ms = {LEASE_MS}\npoll_interval_ms = 200\n");
    let w1 = worker(root.path(), "w1", &url, &log, &wcfg);
    let w2 = worker(root.path(), "w2", &url, &log, &wcfg);
    let mut w3 = worker(root.path(), "w3", &url, &log, &wcfg);
    let w2_id = worker_id(&db, w2.pid()).await;
    let w3_id = worker_id(&db, w3.pid()).await;
    let _ = worker_id(&db, w1.pid()).await;

    let ids = enqueue_batches(&s, "rec", TASKS, json!({})).await;
    let enqueued = started.elapsed();

    // kill -9 of w3 at a quarter; a fresh worker (w4) keeps three at work.
    until_completed(&db, TASKS as i64 / 4, Duration::from_secs(300)).await;
    assert!(
        !held_by(&db, &w3_id).await.is_empty(),
        "w3 holds tasks when killed"
    );
    w3.kill9();
    // What w3 still holds once the server has taken what it sent before it died (a commit on
    // its way) is what it lost: rescued when the lease runs out, not before.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut attempts_then = held_by(&db, &w3_id).await;
    let lost_since = now_ms();
    let lost_leases = leases_of(&db, &w3_id).await;
    assert!(!lost_leases.is_empty(), "w3 held tasks when it was killed");
    let lost: Vec<String> = lost_leases.keys().cloned().collect();
    let _w4 = worker(root.path(), "w4", &url, &log, &wcfg);
    rescued_after_lease(&db, &lost_leases, lost_since).await;

    // SIGSTOP of w2 at a half, past its lease; then SIGCONT.
    until_completed(&db, TASKS as i64 / 2, Duration::from_secs(300)).await;
    w2.signal(nix::sys::signal::Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    attempts_then.extend(held_by(&db, &w2_id).await);
    let stale_since = now_ms();
    let stale_leases = leases_of(&db, &w2_id).await;
    assert!(
        !stale_leases.is_empty(),
        "w2 held tasks when it was stopped"
    );
    let stale: Vec<String> = stale_leases.keys().cloned().collect();
    // Past its lease, its tasks given back to the queue (they wait their turn behind the
    // tasks enqueued before them), w2 is continued: it drops every attempt it held, and any
    // outcome it still sends is refused (checked at the end: each of these tasks completed
    // once, by another worker, at a later attempt).
    rescued_after_lease(&db, &stale_leases, stale_since).await;
    let continued = now_ms();
    w2.signal(nix::sys::signal::Signal::SIGCONT);
    says_lease_lost(&w2, &stale, Duration::from_secs(30)).await;

    until_completed(&db, TASKS as i64, Duration::from_secs(600)).await;
    let ran = started.elapsed();

    // Every task completed, and its completion was written once (every change numbered first).
    assert_eq!(count(&db, "completed").await, TASKS as i64);
    db.execute("SELECT spool_number_changes(1000000)", &[])
        .await
        .unwrap();
    let unnumbered: i64 = db
        .query_one("SELECT count(*) FROM task_changes_unnumbered", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unnumbered, 0);
    let twice: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT task_id FROM task_changes WHERE status = 'completed' \
             GROUP BY task_id HAVING count(*) > 1) AS x",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 0, "tasks whose completion was written twice");
    // w2 worked on after it was continued.
    let by_w2_after: i64 = db
        .query_one(
            "SELECT count(*) FROM tasks WHERE result->>'worker' = 'w2' AND completed_at > $1",
            &[&continued],
        )
        .await
        .unwrap()
        .get(0);
    assert!(by_w2_after > 0, "w2 completed no task after SIGCONT");

    // The lost and the stale tasks: completed by another worker, at a later attempt.
    // (w2, continued, may well have taken some of its old tasks again: at a new attempt.)
    completed_elsewhere(&db, &lost, "w3", Duration::from_secs(10)).await;
    completed_elsewhere(&db, &stale, "", Duration::from_secs(10)).await;
    let held_then: Vec<i64> = lost
        .iter()
        .chain(&stale)
        .map(|id| attempts_then[id])
        .collect();
    let later: i64 = db
        .query_one(
            "SELECT count(*) FROM tasks t JOIN unnest($1::text[], $2::int8[]) AS x(id, a) \
             ON t.id::text = x.id WHERE t.attempts > x.a",
            &[
                &lost.iter().chain(&stale).cloned().collect::<Vec<String>>(),
                &held_then,
            ],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        later as usize,
        lost.len() + stale.len(),
        "a lost task was completed by the attempt that lost it"
    );

    // The timeline: no overlap, every run ended, and each task's result is its last run's.
    let runs = timeline(&log);
    let finals: HashMap<String, (i64, String)> = db
        .query(
            "SELECT id::text, attempts, result->>'worker' FROM tasks",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut reran = 0;
    for id in &ids {
        let r = runs
            .get(id)
            .unwrap_or_else(|| panic!("task {id} never ran"));
        let (attempts, who) = &finals[id];
        let last = r.last().unwrap();
        assert_eq!(
            (i64::from(last.0), &last.1),
            (*attempts, who),
            "task {id}: its result is not its last run's ({r:?})"
        );
        if r.len() > 1 {
            reran += 1;
        }
    }
    eprintln!(
        "{TASKS} tasks: enqueued in {enqueued:?}, all completed after {ran:?}; \
         {} lost by kill -9, {} stale after SIGSTOP, {reran} ran more than once",
        lost.len(),
        stale.len()
    );
}

// ---- a worker cut off from the database -----------------------------------------------------

/// A network namespace joined to this host by a veth pair, on 10.213.<n>.0/30: the host end
/// `.1`, the namespace end `.2`. Removed when dropped (also when the test fails).
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    net: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (the iproute2 package)"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Netns {
        let pid = std::process::id();
        let n = pid % 250 + 1;
        let ns = Netns {
            name: format!("spool-t{pid}"),
            host_if: format!("spv{}h", pid % 100_000),
            host_ip: format!("10.213.{n}.1"),
            net: format!("10.213.{n}.0/30"),
        };
        let peer = format!("spv{}n", pid % 100_000);
        // Whatever a killed earlier run with this pid left.
        ns.remove();
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &ns.name, "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&["addr", "add", &format!("10.213.{n}.2/30"), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]);
    }

    fn remove(&self) {
        for args in [
            vec!["link", "del", self.host_if.as_str()],
            vec!["netns", "del", self.name.as_str()],
        ] {
            let _ = Command::new("ip")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// `spool work --config <config>` inside the namespace; stdout lines arrive as usual.
    fn spawn_work(&self, config: &Path) -> Proc {
        let dir = config.parent().unwrap();
        let stderr_path = dir.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(spool_bin())
            .arg("work")
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
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
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_postgres_loses_its_tasks_to_others_and_works_on_when_back() {
    let _turn = SERIAL.lock().await;
    // Declared first, dropped last: the processes inside go before their namespace.
    let net = Netns::new();
    let pg = pg::private(&pg::Options {
        listen: vec![net.host_ip.clone()],
        allow: vec![net.net.clone()],
        ..Default::default()
    });
    let url = pg.fresh_db().await;
    let far_url = url.replace("127.0.0.1", &net.host_ip);
    let db = pg.client(&url).await;
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("runs.log");
    let s = serve_node(root.path(), &url, &log);
    let lease = 4000u64;
    let wcfg = format!("concurrency = 4\nlease_ms = {lease}\npoll_interval_ms = 200\n");

    // The cut-off worker takes four tasks: two short (0.5 s), two long (5 s).
    let far_cfg = node_config(
        root.path(),
        "far",
        &far_url,
        &log,
        &format!("[worker]\n{wcfg}"),
    );
    let far = net.spawn_work(&far_cfg);
    let far_id = worker_id(&db, far.pid()).await;
    let mut first = enqueue_batches(&s, "held", 2, json!(0.5)).await;
    first.extend(enqueue_batches(&s, "held", 2, json!(5)).await);
    eventually(
        Duration::from_secs(30),
        "the cut-off worker to start all four",
        || async {
            let started: HashSet<String> = read_log(&log)
                .into_iter()
                .filter(|r| r.what == "start" && r.worker == "far")
                .map(|r| r.task)
                .collect();
            (started.len() == 4).then_some(())
        },
    )
    .await;
    assert_eq!(held_by(&db, &far_id).await.len(), 4);
    net.link(false);

    // Another worker takes them over after the lease and completes them.
    let mut near = worker(root.path(), "near", &url, &log, &wcfg);
    let done = completed_elsewhere(&db, &first, "far", Duration::from_secs(60)).await;
    assert!(done.values().all(|w| w == "near"), "{done:?}");
    let before = rows_of(&db, &first).await;
    near.terminate(Duration::from_secs(30)).unwrap();

    // The link comes back: the cut-off worker's late outcomes are refused, and it works on.
    net.link(true);
    says_lease_lost(&far, &first, Duration::from_secs(60)).await;
    assert_eq!(
        rows_of(&db, &first).await,
        before,
        "the cut-off worker's late outcomes changed tasks another worker completed"
    );
    let refused = far
        .stderr()
        .lines()
        .filter(|l| l.contains("lease lost before the result was written"))
        .count();
    assert!(
        refused >= 1,
        "a short task's outcome was written late and refused:\n{}",
        far.stderr()
    );
    let next = enqueue_batches(&s, "held", 4, json!(0)).await;
    let by: Vec<String> = eventually(Duration::from_secs(60), "new work on the worker", || async {
        let rows = db
            .query(
                "SELECT result->>'worker' FROM tasks WHERE id::text = ANY($1) AND status = 'completed'",
                &[&next],
            )
            .await
            .unwrap();
        (rows.len() == next.len()).then(|| rows.iter().map(|r| r.get(0)).collect())
    })
    .await;
    assert!(by.iter().all(|w| w == "far"), "{by:?}");
    let runs = timeline_held(&log);
    // The long tasks ran on the cut-off worker first, were stopped there before their lease
    // ran out, and ran again on the other.
    for id in &first[2..] {
        let who: Vec<&str> = runs[id].iter().map(|(_, w)| w.as_str()).collect();
        assert_eq!(who, ["far", "near"], "{id}");
    }
    drop(far);
}

// ---- PostgreSQL restarted -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_gives_503_never_500_and_every_acknowledged_task_completes() {
    let _turn = SERIAL.lock().await;
    let pg = std::sync::Arc::new(pg::private(&pg::Options::default()));
    let url = pg.fresh_db().await;
    let (_root, log, s, _workers) = serve_and_two_workers(&url);

    // Clients enqueue one task a request, and read it back, all along.
    let stop = tokio_util::sync::CancellationToken::new();
    let load = load(&s, 4, &json!({"kind": "rec"}), &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // `pg_ctl restart -m fast` under the load.
    pg_ctl_step(&pg, pg::PgServer::restart).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Down for a while: 503 on writes, reads and /readyz.
    pg_ctl_step(&pg, pg::PgServer::stop).await;
    refuses_while_down(&s).await;
    pg_ctl_step(&pg, pg::PgServer::start_again).await;
    ready_again(&s).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let (acked, statuses) = load_ended(load).await;

    // Every acknowledged task completes: the workers reconnected.
    let db = pg.client(&url).await;
    all_completed(&db, &acked).await;
    timeline(&log);
    eprintln!("{} tasks acknowledged; answers: {statuses:?}", acked.len());
}

/// `spool serve` and two `spool work` processes (4 slots, 3 s leases) on `url`, in a directory
/// of their own that also holds their runs' log.
fn serve_and_two_workers(url: &str) -> (tempfile::TempDir, PathBuf, Server, [Proc; 2]) {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("runs.log");
    let s = serve_node(root.path(), url, &log);
    let wcfg = "concurrency = 4\nlease_ms = 3000\npoll_interval_ms = 200\n";
    let workers = [
        worker(root.path(), "w1", url, &log, wcfg),
        worker(root.path(), "w2", url, &log, wcfg),
    ];
    (root, log, s, workers)
}

/// Runs `step` (a `pg_ctl` command, which blocks until it is done) on `server`, off the
/// runtime's threads.
async fn pg_ctl_step(server: &std::sync::Arc<pg::Private>, step: fn(&pg::PgServer)) {
    let server = server.clone();
    tokio::task::spawn_blocking(move || step(&server))
        .await
        .unwrap();
}

/// What a client of [`load`] saw: the ids of its acknowledged enqueues, and how many answers
/// of each status.
type Seen = (Vec<String>, BTreeMap<u16, u32>);

/// `clients` clients that enqueue one `task` (a `POST /v1/tasks` body) a request and read it
/// back, until `stop`. Any answer but a success or 503 `unavailable` fails the test.
fn load(
    s: &Server,
    clients: usize,
    task: &Value,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let mut load = Vec::new();
    for _ in 0..clients {
        let (base, token, stop) = (s.base.clone(), s.token.clone(), stop.clone());
        let task = task.clone();
        load.push(tokio::spawn(async move {
            let c = client();
            let mut acked = Vec::new();
            let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
            while !stop.is_cancelled() {
                let r = c
                    .post(format!("{base}/v1/tasks"))
                    .bearer_auth(&token)
                    .json(&task)
                    .send()
                    .await
                    .unwrap();
                let st = r.status();
                *statuses.entry(st.as_u16()).or_default() += 1;
                let body: Value = r.json().await.unwrap();
                assert!(
                    st == StatusCode::CREATED || st == StatusCode::SERVICE_UNAVAILABLE,
                    "enqueue answered {st}: {body}"
                );
                if st == StatusCode::CREATED {
                    let id = body["id"].as_str().unwrap().to_string();
                    let r = c
                        .get(format!("{base}/v1/tasks/{id}"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    let st = r.status();
                    assert!(
                        st == StatusCode::OK || st == StatusCode::SERVICE_UNAVAILABLE,
                        "read answered {st}"
                    );
                    acked.push(id);
                } else {
                    assert_eq!(body["error"]["code"], "unavailable", "{body}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            (acked, statuses)
        }));
    }
    load
}

/// All that the clients of [`load`] saw, once they have stopped; at least one was acknowledged.
async fn load_ended(load: Vec<tokio::task::JoinHandle<Seen>>) -> Seen {
    let mut acked = Vec::new();
    let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
    for l in load {
        let (a, st) = l.await.unwrap();
        acked.extend(a);
        for (k, v) in st {
            *statuses.entry(k).or_default() += v;
        }
    }
    assert!(!acked.is_empty(), "no enqueue was acknowledged");
    (acked, statuses)
}

/// `POST /v1/tasks` of one `rec` task.
async fn enqueue_rec(c: &reqwest::Client, s: &Server) -> reqwest::Response {
    c.post(s.url("/v1/tasks"))
        .bearer_auth(&s.token)
        .json(&json!({"kind": "rec"}))
        .send()
        .await
        .unwrap()
}

/// While no database takes writes: 503 on writes, reads and `/readyz`, three times.
async fn refuses_while_down(s: &Server) {
    let c = client();
    for _ in 0..3 {
        let r = enqueue_rec(&c, s).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = c.get(s.url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = c
            .get(s.url("/v1/tasks?limit=1"))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

/// Waits (30 s at most) until `serve` answers `/readyz` with 200.
async fn ready_again(s: &Server) {
    let c = client();
    eventually(
        Duration::from_secs(30),
        "serve to be ready again",
        || async {
            let r = c.get(s.url("/readyz")).send().await.unwrap();
            (r.status() == StatusCode::OK).then_some(())
        },
    )
    .await;
}

/// Waits (120 s at most) until every task of `ids` is completed.
async fn all_completed(db: &tokio_postgres::Client, ids: &[String]) {
    let n = ids.len() as i64;
    until_count(
        db,
        "every acknowledged task to complete",
        Duration::from_secs(120),
        "SELECT count(*) FROM tasks WHERE id::text = ANY($1) AND status = 'completed'",
        &[&ids],
        |done| done == n,
    )
    .await;
}

/// Waits (`limit` at most) until the count `sql` reads is one `ok` takes.
async fn until_count(
    db: &tokio_postgres::Client,
    what: &str,
    limit: Duration,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ok: impl Fn(i64) -> bool,
) {
    eventually(limit, what, || async {
        let n: i64 = db.query_one(sql, params).await.unwrap().get(0);
        ok(n).then_some(())
    })
    .await;
}

// ---- A failover to a standby -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_promoted_standby_gives_503_never_500_and_every_acknowledged_task_completes(
) {
    let _turn = SERIAL.lock().await;
    let primary = std::sync::Arc::new(pg::private(&pg::Options::default()));
    let direct = primary.fresh_db().await;
    let db_name = direct.rsplit('/').next().unwrap().to_string();
    let p = primary.clone();
    let standby = std::sync::Arc::new(
        tokio::task::spawn_blocking(move || pg::standby_of(&p))
            .await
            .unwrap(),
    );
    // Synchronous replication: a commit is acknowledged once the standby has it too.
    let admin = primary.client(&primary.url("postgres")).await;
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    until_count(
        &admin,
        "the standby to replicate synchronously",
        Duration::from_secs(30),
        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
        &[],
        |n| n == 1,
    )
    .await;
    drop(admin);
    // Both servers in the URL; spool's connections go to the one that takes writes.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db_name}?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let (_root, log, s, _workers) = serve_and_two_workers(&url);
    let stop = tokio_util::sync::CancellationToken::new();
    // Every task holds a lock file while it runs, so two runs of one task at once are seen.
    let load = load(&s, 4, &json!({"kind": "held", "payload": 0}), &stop);
    // Tasks of two seconds, some running when the primary goes.
    let held = enqueue_batches(&s, "held", 8, json!(2)).await;
    let db = primary.client(&primary.url(&db_name)).await;
    until_count(
        &db,
        "a held task to run",
        Duration::from_secs(30),
        "SELECT count(*) FROM tasks WHERE id::text = ANY($1) AND status = 'running'",
        &[&held],
        |n| n > 0,
    )
    .await;
    drop(db);

    // The primary crashes: until the standby is promoted nothing takes writes.
    pg_ctl_step(&primary, pg::PgServer::crash).await;
    refuses_while_down(&s).await;
    pg_ctl_step(&standby, pg::PgServer::promote).await;
    ready_again(&s).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let (mut acked, statuses) = load_ended(load).await;
    // The promoted standby takes enqueues.
    let r = enqueue_rec(&client(), &s).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    acked.push(body["id"].as_str().unwrap().to_string());

    // Every acknowledged task, from before the failover and after, is on the promoted standby
    // and completed there (those that ran at the crash too); none ran on two workers at once.
    let db = standby.client(&standby.url(&db_name)).await;
    acked.extend(held.iter().cloned());
    all_completed(&db, &acked).await;
    let runs = timeline_held(&log);
    let reran = held.iter().filter(|id| runs[*id].len() > 1).count();
    eprintln!(
        "{} tasks acknowledged; answers: {statuses:?}; {reran} of the held tasks ran again",
        acked.len()
    );
}

// ---- Hosts whose clocks are off ----------------------------------------------------------------

/// The environment of a process on a host whose wall clock is `off` (`FAKETIME`: "-120s"):
/// Debian's libfaketime (the test command installs it) in `LD_PRELOAD`, the monotonic clock
/// left alone.
fn clock_off(off: &str) -> [(&'static str, String); 3] {
    let out = Command::new("dpkg")
        .args(["-L", "libfaketime"])
        .output()
        .expect("dpkg must be there");
    let lib = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.ends_with("/libfaketime.so.1"))
        .map(str::to_string)
        .expect("libfaketime must be installed: apt-get install faketime");
    [
        ("LD_PRELOAD", lib),
        ("FAKETIME", off.to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
    ]
}

fn env_of<'a>(e: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    e.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// `spool serve` on a host whose clock is five minutes behind, and two workers on hosts whose
/// clocks are two minutes off, one behind and one ahead, all keep the database's time: the
/// worker behind keeps its leases (the one ahead does not rescue tasks it is running), and
/// tasks the front end makes due in four minutes are not taken before. Each says how far off its
/// host is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_whose_clocks_are_off_keep_the_databases_time() {
    let _turn = SERIAL.lock().await;
    let url = pg::server().fresh_db().await;
    let db = pg::server().client(&url).await;
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("runs.log");
    let s = serve(
        &node_config(
            root.path(),
            "serve",
            &url,
            &log,
            "[worker]\nconcurrency = 0",
        ),
        &env_of(&clock_off("-300s")),
    );
    let worker_off = |who: &str, off: &str| {
        let wcfg = "concurrency = 4\nprefetch = 0\nlease_ms = 2000\npoll_interval_ms = 100";
        let cfg = node_config(root.path(), who, &url, &log, &format!("[worker]\n{wcfg}"));
        spawn(&["work"], &cfg, &env_of(&clock_off(off)))
    };
    let behind = worker_off("behind", "-120s");
    let ahead = worker_off("ahead", "+120s");
    let _ = worker_id(&db, behind.pid()).await;
    let _ = worker_id(&db, ahead.pid()).await;
    // Each logs how far its host's clock is from the database's (ahead: the database is).
    for (p, ahead_ms) in [(&s.proc, 300_000), (&behind, 120_000), (&ahead, -120_000)] {
        let log = p.stderr();
        let said: Option<i64> = log
            .split("database_ahead_ms=")
            .nth(1)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit() && c != '-').next())
            .and_then(|v| v.parse().ok());
        assert!(
            said.is_some_and(|v| (v - ahead_ms).abs() < 2000),
            "expected a warning of about {ahead_ms} ms: {log}"
        );
    }
    // Due in four minutes: not yet for the worker whose clock is two minutes ahead, which by
    // its own clock and the front end's (five minutes behind) would take them at once.
    let later = enqueue_batches_of(
        &s,
        4,
        json!({"kind": "rec", "payload": {}, "delay_ms": 240_000}),
    )
    .await;
    // Sixteen tasks of 3 s each, longer than the 2 s lease: each worker's heartbeats must keep
    // its leases in the other's eyes.
    let ids = enqueue_batches(&s, "held", 16, json!(3)).await;
    until_completed(&db, 16, Duration::from_secs(60)).await;
    let runs = timeline_held(&log);
    for id in &ids {
        assert_eq!(
            runs.get(id).map(Vec::len),
            Some(1),
            "task {id} did not run exactly once: {:?}",
            runs.get(id)
        );
    }
    let who: HashSet<&str> = runs.values().flatten().map(|(_, w)| w.as_str()).collect();
    assert!(
        who.contains("behind") && who.contains("ahead"),
        "both workers ran tasks: {who:?}"
    );
    let pending = rows_of(&db, &later).await;
    assert!(
        pending.len() == later.len() && pending.values().all(|r| r.starts_with("pending|")),
        "tasks due in four minutes were taken early: {pending:?}"
    );
}

// ---- A newer spool migrates the database -----------------------------------------------------

/// A newer spool on another host migrates the database while `serve` and `work` run here:
/// both stop within seconds (exit 2, naming the versions), as they would refuse to start on it,
/// rather than go on writing in the older way. Until then they run on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_work_stop_once_a_newer_spool_migrates_the_database() {
    let url = pg::server().fresh_db().await;
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("runs.log");
    let mut s = serve_node(root.path(), &url, &log);
    let mut w = worker(
        root.path(),
        "w1",
        &url,
        &log,
        "concurrency = 1\npoll_interval_ms = 50\n",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let id = enqueue_batches(&s, "rec", 1, json!(null)).await.remove(0);
    assert_eq!(s.wait_terminal(&id).await["status"], "completed");

    let known = spool::store::postgres::LATEST_VERSION;
    pg::server()
        .client(&url)
        .await
        .execute(
            "INSERT INTO spool_schema_versions (version) VALUES ($1)",
            &[&(known as i32 + 1)],
        )
        .await
        .unwrap();
    crate::processes::stops_for_the_newer_schema(&mut s.proc, known + 1, known);
    crate::processes::stops_for_the_newer_schema(&mut w, known + 1, known);
}
