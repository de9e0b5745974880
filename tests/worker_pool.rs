//! The worker pool in-process with Rust handlers: many tasks over 8 slots, panics, unknown
//! kinds, timeouts, cancellation, per-queue limits and the shutdown grace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::future::BoxFuture;
use serde_json::{json, Value};
use spool::app::{EnqueueOptions, Spool};
use spool::executor::Outcome;
use spool::task::{NewTask, TaskId, TaskStatus};
use spool::{Config, Handler, TaskContext, TaskError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn config(dir: &std::path::Path, extra: &str) -> Config {
    let path = dir.join("spool.toml");
    let text = format!(
        "data_dir = {:?}\n[retry]\nbase_ms = 10\nmax_ms = 50\n[shutdown]\ngrace_ms = 2000\n{extra}\n",
        dir.join("data").display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path)).unwrap()
}

/// Counts runs per task; fails or completes as the payload says.
#[derive(Clone, Default)]
struct Recorder {
    runs: Arc<Mutex<HashMap<TaskId, u32>>>,
    active: Arc<AtomicUsize>,
    max_active: Arc<AtomicUsize>,
}

impl Handler for Recorder {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
        let me = self.clone();
        Box::pin(async move {
            *me.runs.lock().unwrap().entry(ctx.id()).or_insert(0) += 1;
            let now = me.active.fetch_add(1, Ordering::SeqCst) + 1;
            me.max_active.fetch_max(now, Ordering::SeqCst);
            if let Some(ms) = ctx.payload()["sleep_ms"].as_u64() {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            me.active.fetch_sub(1, Ordering::SeqCst);
            match ctx.payload()["mode"].as_str() {
                Some("fail") => Err(TaskError::permanent("told to fail")),
                Some("flaky") if ctx.attempt() == 1 => Err(TaskError::retry("first attempt fails")),
                Some("panic") => panic!("handler blew up"),
                _ => Ok(json!({"attempt": ctx.attempt()}).into()),
            }
        })
    }
}

/// A read-only connection to the database of `spool`, as an operator's `sqlite3` would open it.
fn db(spool: &Spool) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        spool.config().db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

async fn wait_all_terminal(spool: &Spool, n: usize, limit: Duration) {
    let end = Instant::now() + limit;
    loop {
        let done: i64 = db(spool)
            .query_row(
                "SELECT count(*) FROM tasks WHERE status IN ('completed','failed','canceled')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if done as usize >= n {
            return;
        }
        assert!(
            Instant::now() < end,
            "only {done} of {n} tasks finished in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A spool on `cfg` with the built-in handlers only.
fn spool_with(cfg: Config) -> Arc<Spool> {
    Arc::new(Spool::builder().config(cfg).build().unwrap())
}

/// Runs the pool of `spool` in the background until the returned token is cancelled.
fn run_pool(
    spool: &Arc<Spool>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), spool::app::AppError>>,
) {
    let stop = CancellationToken::new();
    let s = spool.clone();
    let token = stop.clone();
    (stop, tokio::spawn(async move { s.run(token).await }))
}

fn new_task(kind: &str, queue: &str, payload: Value) -> NewTask {
    NewTask {
        id: TaskId::new(),
        user_id: "u".into(),
        queue: queue.into(),
        kind: kind.into(),
        payload,
        priority: 0,
        run_at: 0,
        max_attempts: 3,
        timeout_ms: 10_000,
        idempotency_key: None,
        request_hash: None,
        concurrency_key: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_tasks_over_eight_slots_each_end_in_one_terminal_state() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let spool = Arc::new(
        Spool::builder()
            .config(config(
                dir.path(),
                "[worker]\nconcurrency = 8\npoll_interval_ms = 50",
            ))
            .handler("rec", rec.clone())
            .build()
            .unwrap(),
    );
    let (stop, runner) = run_pool(&spool);
    let mut expect = HashMap::new();
    for chunk in 0..5 {
        let batch: Vec<NewTask> = (0..1000)
            .map(|i| {
                let mode = match (chunk * 1000 + i) % 10 {
                    0 => "fail",
                    1 => "flaky",
                    _ => "ok",
                };
                let t = new_task("rec", "default", json!({"mode": mode}));
                expect.insert(t.id, mode);
                t
            })
            .collect();
        spool.store().task_insert(batch, 0).await.unwrap();
    }
    wait_all_terminal(&spool, 5000, Duration::from_secs(180)).await;
    stop.cancel();
    runner.await.unwrap().unwrap();

    let finals: HashMap<TaskId, (TaskStatus, u32)> = {
        let c = db(&spool);
        let mut st = c.prepare("SELECT id, status, attempts FROM tasks").unwrap();
        let rows = st
            .query_map([], |r| {
                let id: String = r.get(0)?;
                let s: String = r.get(1)?;
                Ok((
                    id.parse().unwrap(),
                    (s.parse().unwrap(), r.get::<_, u32>(2)?),
                ))
            })
            .unwrap()
            .collect::<Result<HashMap<_, _>, _>>()
            .unwrap();
        rows
    };
    assert_eq!(finals.len(), 5000);
    let runs = rec.runs.lock().unwrap();
    for (id, mode) in &expect {
        let (status, attempts) = finals[id];
        let ran = runs.get(id).copied().unwrap_or(0);
        match *mode {
            "fail" => assert_eq!((status, attempts, ran), (TaskStatus::Failed, 1, 1), "{id}"),
            "flaky" => assert_eq!(
                (status, attempts, ran),
                (TaskStatus::Completed, 2, 2),
                "{id}"
            ),
            _ => assert_eq!(
                (status, attempts, ran),
                (TaskStatus::Completed, 1, 1),
                "{id}"
            ),
        }
    }
    assert!(rec.max_active.load(Ordering::SeqCst) <= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_fails_its_attempt_and_the_pool_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let spool = Arc::new(
        Spool::builder()
            .config(config(dir.path(), "[worker]\nconcurrency = 2"))
            .handler("rec", rec.clone())
            .build()
            .unwrap(),
    );
    let (stop, runner) = run_pool(&spool);
    let opts = EnqueueOptions {
        max_attempts: Some(2),
        ..Default::default()
    };
    let p = spool
        .enqueue_with("rec", json!({"mode": "panic"}), opts)
        .await
        .unwrap();
    let unknown = spool
        .enqueue("nobody.handles.this", json!(null))
        .await
        .unwrap();
    wait_all_terminal(&spool, 2, Duration::from_secs(30)).await;
    let ok = spool.enqueue("rec", json!({"mode": "ok"})).await.unwrap();
    wait_all_terminal(&spool, 3, Duration::from_secs(30)).await;
    stop.cancel();
    runner.await.unwrap().unwrap();

    let p = spool.store().task_get(p.id, None).await.unwrap();
    assert_eq!((p.status, p.attempts), (TaskStatus::Failed, 2));
    assert!(p
        .last_error
        .unwrap()
        .contains("handler panicked: handler blew up"));
    let u = spool.store().task_get(unknown.id, None).await.unwrap();
    assert_eq!(u.status, TaskStatus::Failed);
    assert!(u.last_error.unwrap().contains("no handler for kind"));
    assert_eq!(
        spool.store().task_get(ok.id, None).await.unwrap().status,
        TaskStatus::Completed
    );
}

/// Waits on its cancellation token and records that it saw it.
#[derive(Clone, Default)]
struct WaitsForCancel {
    saw_cancel: Arc<AtomicUsize>,
}

impl Handler for WaitsForCancel {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
        let saw = self.saw_cancel.clone();
        Box::pin(async move {
            ctx.progress("log", json!("started")).await?;
            tokio::select! {
                _ = ctx.cancelled() => { saw.fetch_add(1, Ordering::SeqCst); }
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            Ok(Value::Null.into())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_running_handler_stops_it_within_a_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let h = WaitsForCancel::default();
    let spool = Arc::new(
        Spool::builder()
            .config(config(
                dir.path(),
                "[worker]\nconcurrency = 1\nlease_ms = 3000",
            ))
            .handler("wait", h.clone())
            .build()
            .unwrap(),
    );
    let (stop, runner) = run_pool(&spool);
    let t = spool.enqueue("wait", json!(null)).await.unwrap();
    // Wait until it runs (its first message is written).
    let end = Instant::now() + Duration::from_secs(20);
    while spool
        .store()
        .message_list(t.id, 0, 10, None)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < end, "task never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = Instant::now();
    let c = spool
        .store()
        .task_cancel(t.id, None, spool::clock::Clock::now(&spool::SystemClock))
        .await
        .unwrap();
    assert!(c.cancel_requested);
    // One heartbeat is lease/3 = 1 s; allow a wide margin on a loaded machine.
    wait_all_terminal(&spool, 1, Duration::from_secs(10)).await;
    let waited = asked.elapsed();
    let t = spool.store().task_get(t.id, None).await.unwrap();
    assert_eq!(t.status, TaskStatus::Canceled);
    assert!(waited < Duration::from_secs(10));
    stop.cancel();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_stops_the_attempt_and_retries_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(config(dir.path(), ""));
    let (stop, runner) = run_pool(&spool);
    let opts = EnqueueOptions {
        max_attempts: Some(2),
        timeout_ms: Some(100),
        ..Default::default()
    };
    let t = spool
        .enqueue_with("spool.sleep", json!({"ms": 60_000}), opts)
        .await
        .unwrap();
    wait_all_terminal(&spool, 1, Duration::from_secs(30)).await;
    let t = spool.store().task_get(t.id, None).await.unwrap();
    assert_eq!((t.status, t.attempts), (TaskStatus::Failed, 2));
    assert!(t.last_error.unwrap().contains("timed out after 100 ms"));
    stop.cancel();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_concurrency_limit_caps_running_tasks_of_that_queue() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let spool = Arc::new(
        Spool::builder()
            .config(config(
                dir.path(),
                "[worker]\nconcurrency = 8\nqueues = [\"narrow\"]\n[queues.narrow]\nconcurrency = 2",
            ))
            .handler("rec", rec.clone())
            .build()
            .unwrap(),
    );
    let (stop, runner) = run_pool(&spool);
    let batch: Vec<NewTask> = (0..12)
        .map(|_| new_task("rec", "narrow", json!({"sleep_ms": 50})))
        .collect();
    spool.store().task_insert(batch, 0).await.unwrap();
    wait_all_terminal(&spool, 12, Duration::from_secs(60)).await;
    stop.cancel();
    runner.await.unwrap().unwrap();
    assert_eq!(rec.max_active.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_grace_releases_leases_without_counting_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(config(dir.path(), "").replace_grace());
    let (stop, runner) = run_pool(&spool);
    let long = spool
        .enqueue("spool.sleep", json!({"ms": 60_000}))
        .await
        .unwrap();
    let short = spool
        .enqueue("spool.sleep", json!({"ms": 50}))
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        // Both claimed (the short one may be done already) before the stop.
        let t = spool.store().task_get(long.id, None).await.unwrap();
        let s = spool.store().task_get(short.id, None).await.unwrap();
        if t.status == TaskStatus::Running && s.status != TaskStatus::Pending {
            break;
        }
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), runner)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let l = spool.store().task_get(long.id, None).await.unwrap();
    assert_eq!(
        (l.status, l.attempts, l.lease_owner),
        (TaskStatus::Pending, 0, None)
    );
    let s = spool.store().task_get(short.id, None).await.unwrap();
    assert_eq!(
        s.status,
        TaskStatus::Completed,
        "a short task finishes within the grace"
    );
}

trait ReplaceGrace {
    fn replace_grace(self) -> Self;
}

impl ReplaceGrace for Config {
    /// The helper's config sets grace 2000 ms; this test wants 200 ms.
    fn replace_grace(mut self) -> Self {
        self.shutdown_grace = Duration::from_millis(200);
        self
    }
}

#[tokio::test]
async fn enqueue_rejects_bad_names_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::builder()
        .config(config(dir.path(), ""))
        .build()
        .unwrap();
    assert!(spool.enqueue("bad kind", json!(null)).await.is_err());
    let n: i64 = db(&spool)
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

/// A handler that holds every task until `release` is cancelled, counting how many run at once
/// and which tasks ever started.
#[derive(Clone, Default)]
struct Gate {
    release: CancellationToken,
    active: Arc<AtomicUsize>,
    max_active: Arc<AtomicUsize>,
    started: Arc<Mutex<Vec<TaskId>>>,
}

impl Handler for Gate {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
        let me = self.clone();
        Box::pin(async move {
            me.started.lock().unwrap().push(ctx.id());
            let now = me.active.fetch_add(1, Ordering::SeqCst) + 1;
            me.max_active.fetch_max(now, Ordering::SeqCst);
            tokio::select! {
                _ = me.release.cancelled() => {}
                _ = ctx.cancelled() => {}
            }
            me.active.fetch_sub(1, Ordering::SeqCst);
            Ok(json!(null).into())
        })
    }
}

async fn wait_running(spool: &Spool, n: usize) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let running: i64 = db(spool)
            .query_row(
                "SELECT count(*) FROM tasks WHERE status = 'running'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if running as usize == n {
            return;
        }
        assert!(Instant::now() < end, "{running} running, waiting for {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_tasks_are_claimed_ahead_but_never_run_beyond_the_slots() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::default();
    let spool = Arc::new(
        Spool::builder()
            .config(config(
                dir.path(),
                "[worker]\nconcurrency = 1\nprefetch = 3",
            ))
            .handler("gate", gate.clone())
            .build()
            .unwrap(),
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(spool.enqueue("gate", json!(null)).await.unwrap().id);
    }
    let (stop, runner) = run_pool(&spool);
    // One slot and three prefetched: four leased, one still pending, one handler running.
    wait_running(&spool, 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gate.started.lock().unwrap().len(), 1, "only the slot runs");
    gate.release.cancel();
    wait_all_terminal(&spool, 5, Duration::from_secs(30)).await;
    assert_eq!(
        gate.max_active.load(Ordering::SeqCst),
        1,
        "never two at once"
    );
    for id in &ids {
        let t = spool.store().task_get(*id, None).await.unwrap();
        assert_eq!((t.status, t.attempts), (TaskStatus::Completed, 1), "{id}");
    }
    stop.cancel();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_task_is_given_back_at_shutdown_and_canceled_without_running() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::default();
    let spool = Arc::new(
        Spool::builder()
            .config(config(dir.path(), "[worker]\nconcurrency = 1\nprefetch = 2").replace_grace())
            .handler("gate", gate.clone())
            .build()
            .unwrap(),
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(spool.enqueue("gate", json!(null)).await.unwrap().id);
    }
    let (stop, runner) = run_pool(&spool);
    wait_running(&spool, 3).await;
    let end = Instant::now() + Duration::from_secs(10);
    while gate.started.lock().unwrap().is_empty() {
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = gate.started.lock().unwrap()[0];
    let waiting: Vec<TaskId> = ids.iter().copied().filter(|i| *i != first).collect();
    // A cancel of a task that waits for a slot ends it at once; its handler never runs.
    let c = spool
        .store()
        .task_cancel(
            waiting[0],
            None,
            spool::clock::Clock::now(&spool::SystemClock),
        )
        .await
        .unwrap();
    assert_eq!(
        c.status,
        TaskStatus::Running,
        "a cancel request, as for any running task"
    );
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let t = spool.store().task_get(waiting[0], None).await.unwrap();
        if t.status == TaskStatus::Canceled {
            break;
        }
        assert!(
            Instant::now() < end,
            "the prefetched task was not canceled: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Shutdown: the other prefetched task goes back to pending, its attempt not counted, at
    // once (not after the grace); the running one is stopped after the grace and given back.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), runner)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let t = spool.store().task_get(waiting[1], None).await.unwrap();
    assert_eq!(
        (t.status, t.attempts, t.lease_owner),
        (TaskStatus::Pending, 0, None)
    );
    let started = gate.started.lock().unwrap().clone();
    assert_eq!(started, vec![first], "no prefetched task ever ran");
}

/// Reads three of its owner's messages from its inbox, then completes with them; parks first
/// when the payload says `ask`, and answers with what woke it.
#[derive(Clone, Default)]
struct Conversation {
    slots_seen: Arc<AtomicUsize>,
}

impl Handler for Conversation {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
        let me = self.clone();
        Box::pin(async move {
            me.slots_seen.fetch_add(1, Ordering::SeqCst);
            let want = ctx.payload()["read"].as_u64().unwrap_or(0) as usize;
            if ctx.payload()["ask"] == true && ctx.wake_reason().is_none() {
                ctx.progress("question", json!("continue?")).await?;
                ctx.checkpoint(json!({"asked": true})).await?;
                return Ok(Outcome::Wait {
                    timeout: Duration::from_secs(3600),
                });
            }
            let inbox = ctx.inbox();
            futures::pin_mut!(inbox);
            let mut got = Vec::new();
            while got.len() < want {
                match futures::StreamExt::next(&mut inbox).await {
                    Some(m) => got.push(m?.content),
                    None => return Err(TaskError::retry("inbox ended")),
                }
            }
            ctx.progress("ready", json!(null)).await?;
            Ok(json!({
                "got": got,
                "wake": ctx.wake_reason().map(|w| w.as_str()),
                "checkpoint": ctx.last_checkpoint(),
            })
            .into())
        })
    }
}

async fn said(spool: &Spool, id: TaskId, text: &str) {
    spool
        .store()
        .message_insert(
            id,
            "say".into(),
            json!(text),
            spool::store::MessageCheck::User(None),
            spool::clock::Clock::now(&spool::SystemClock),
        )
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_reads_three_owner_messages_from_its_inbox_in_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(
        Spool::builder()
            .config(config(dir.path(), "[worker]\nconcurrency = 2"))
            .handler("talk", Conversation::default())
            .build()
            .unwrap(),
    );
    let (stop, runner) = run_pool(&spool);
    let t = spool.enqueue("talk", json!({"read": 3})).await.unwrap();
    wait_running(&spool, 1).await;
    for text in ["a", "b", "c"] {
        said(&spool, t.id, text).await;
    }
    wait_all_terminal(&spool, 1, Duration::from_secs(30)).await;
    let done = spool.store().task_get(t.id, None).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result.unwrap()["got"], json!(["a", "b", "c"]));
    stop.cancel();
    runner.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_waits_frees_its_slot_and_goes_on_with_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let h = Conversation::default();
    let spool = Arc::new(
        Spool::builder()
            .config(config(
                dir.path(),
                "[worker]\nconcurrency = 1\npoll_interval_ms = 50",
            ))
            .handler("talk", h.clone())
            .build()
            .unwrap(),
    );
    let (stop, runner) = run_pool(&spool);
    let t = spool
        .enqueue("talk", json!({"ask": true, "read": 1}))
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while spool.store().task_get(t.id, None).await.unwrap().status != TaskStatus::Waiting {
        assert!(Instant::now() < end, "the task never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The only slot is free: another task runs to the end while the first one waits.
    let other = spool.enqueue("talk", json!({"read": 0})).await.unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while !spool
        .store()
        .task_get(other.id, None)
        .await
        .unwrap()
        .status
        .is_terminal()
    {
        assert!(Instant::now() < end, "the other task never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    said(&spool, t.id, "go on").await;
    wait_all_terminal(&spool, 2, Duration::from_secs(30)).await;
    let done = spool.store().task_get(t.id, None).await.unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(
        done.result.unwrap(),
        json!({"got": ["go on"], "wake": "message", "checkpoint": {"asked": true}})
    );
    assert_eq!(done.attempts, 1, "the wait spent no attempt");
    stop.cancel();
    runner.await.unwrap().unwrap();
}

/// An embedded pool stops by itself once a newer spool migrates its database: `run` returns
/// `SchemaMigratedSince` within seconds, and the caller's token (which may stop the rest of
/// the caller's program) is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_returns_once_a_newer_spool_migrates_the_database_and_leaves_the_callers_token() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with(config(dir.path(), ""));
    let (stop, runner) = run_pool(&spool);
    // The pool is running (registered, claiming) before the migration.
    spool
        .enqueue("spool.sleep", json!({"ms": 10}))
        .await
        .unwrap();
    wait_all_terminal(&spool, 1, Duration::from_secs(20)).await;
    let known = spool::store::LATEST_VERSION;
    rusqlite::Connection::open(spool.config().db_path())
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {}", known + 1))
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(15), runner)
        .await
        .expect("run went on under the newer schema")
        .unwrap();
    match out {
        Err(spool::app::AppError::Store(spool::StoreError::SchemaMigratedSince {
            found,
            known: k,
        })) => assert_eq!((found, k), (known + 1, known)),
        other => panic!("expected SchemaMigratedSince, got {other:?}"),
    }
    assert!(!stop.is_cancelled(), "the caller's token was cancelled");
}
