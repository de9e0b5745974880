//! The SQLite store: the whole conformance suite (`tests/conformance/`), each database a file in
//! a temporary directory and "another store" a second `SqliteStore` on that file (as a second
//! process opens it: its own writer connection, readers and hub), plus what only SQLite has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::conformance;

use conformance::{Backend, Fresh};
use spool::store::{Limits, SqliteStore, Store, StoreOptions, LATEST_VERSION};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The suite's SQLite backend.
struct SqliteBackend;

/// A database file and the directory that holds it (removed when dropped).
struct SqliteDb {
    path: PathBuf,
    limits: Limits,
    _dir: tempfile::TempDir,
}

async fn open(path: &Path, limits: Limits) -> Arc<dyn Store> {
    let mut opts = StoreOptions::new(path);
    opts.limits = limits;
    // Opening migrates the file: blocking work, kept off the runtime's workers.
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(opts))
        .await
        .unwrap()
        .unwrap();
    Arc::new(store)
}

#[async_trait::async_trait]
impl Backend for SqliteBackend {
    type Db = SqliteDb;

    async fn fresh(&self, limits: Limits) -> Fresh<SqliteDb> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        Fresh {
            store: open(&path, limits).await,
            db: SqliteDb {
                path,
                limits,
                _dir: dir,
            },
        }
    }

    async fn another(&self, of: &Fresh<SqliteDb>) -> Arc<dyn Store> {
        open(&of.db.path, of.db.limits).await
    }

    fn schema_version(&self) -> u32 {
        LATEST_VERSION
    }
}

conformance::suite!(SqliteBackend);

// ---- SQLite only ----------------------------------------------------------------------------

#[test]
fn the_claim_reads_the_claim_index_without_sorting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.db");
    drop(SqliteStore::open(StoreOptions::new(&path)).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    let sql = include_str!("../sql/sqlite/queries/task_claim.sql");
    // The subquery is what the planner must serve from the index.
    let select = &sql[sql.find("SELECT rowid").unwrap()..sql.rfind("LIMIT").unwrap()];
    let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {select}")).unwrap();
    let plan: Vec<String> = st
        .query_map(
            rusqlite::named_params! {":queue": "default", ":now": 1},
            |r| r.get::<_, String>(3),
        )
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let text = plan.join(" | ");
    assert!(text.contains("tasks_claim"), "{text}");
    assert!(!text.contains("TEMP B-TREE"), "{text}");
}

/// The first column of every row `sql` returns, as text.
fn texts(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
    conn.prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Status changes reach the change log by a trigger: a later migration that rebuilds `tasks`
/// (as 0006 did) would drop it silently, and `/v1/events` would go quiet. It must exist at the
/// newest schema; an insert writes its own change (0014) and no trigger writes a second one.
#[tokio::test]
async fn the_change_log_trigger_exists_at_the_newest_schema_and_every_change_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = open(&path, Limits::default()).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut names = texts(
        &conn,
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'tasks' AND name LIKE 'task_changes%' ORDER BY name",
    );
    names.sort();
    assert_eq!(names, ["task_changes_update"]);
    let id = spool::task::TaskId::new();
    store
        .task_insert(
            vec![spool::task::NewTask {
                id,
                user_id: "u".into(),
                queue: "q".into(),
                kind: "k".into(),
                payload: serde_json::Value::Null,
                priority: 0,
                run_at: 1,
                max_attempts: 1,
                timeout_ms: 1000,
                idempotency_key: None,
                request_hash: None,
                concurrency_key: None,
            }],
            1,
        )
        .await
        .unwrap();
    store.task_cancel(id, None, 2).await.unwrap();
    let statuses: Vec<String> = conn
        .prepare("SELECT status FROM task_changes WHERE task_id = ? ORDER BY seq")
        .unwrap()
        .query_map([id.to_string()], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(statuses, ["pending", "canceled"]);
    store.close();
}

/// An enqueue of one task is three writes (the task, its change-log row, its owner's usage). In
/// a group commit, one whose change-log row is refused leaves nothing behind, and the enqueues
/// committed with it are whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_change_log_row_fails_in_a_group_commit_leaves_no_task() {
    use conformance::{task, T0};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.db");
    let s = open(&path, Limits::default()).await;
    let (a, bad, c) = (
        task("default", 1, 0, T0),
        task("default", 1, 0, T0),
        task("default", 1, 0, T0),
    );
    let (a_id, bad_id, c_id) = (a.id.to_string(), bad.id.to_string(), c.id.to_string());
    let mut other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(&format!(
            "CREATE TRIGGER change_refused BEFORE INSERT ON task_changes \
             WHEN NEW.task_id = '{bad_id}' BEGIN SELECT RAISE(ABORT, 'change refused'); END;"
        ))
        .unwrap();
    // Hold the write lock so that the three enqueues wait for the writer together and go into
    // one transaction (the writer takes every job waiting when it starts one).
    let lock = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let spawn_insert = |t: spool::task::NewTask| {
        let s = s.clone();
        tokio::spawn(async move { s.task_insert(vec![t], T0).await })
    };
    let first = spawn_insert(a);
    let refused = spawn_insert(bad);
    let last = spawn_insert(c);
    // No condition shows a job queued for the writer: give the three a moment to be sent
    // (well under the writer's 5 s busy timeout).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    lock.commit().unwrap();
    assert!(
        refused.await.unwrap().is_err(),
        "the change-log row was refused"
    );
    first.await.unwrap().unwrap();
    last.await.unwrap().unwrap();
    let ids = texts(&other, "SELECT id FROM tasks ORDER BY rowid");
    // The writer takes the two that stay in whatever order they reached it.
    let mut kept = ids.clone();
    kept.sort();
    let mut expected = [a_id, c_id];
    expected.sort();
    assert_eq!(kept, expected, "the refused task was kept");
    let logged = texts(&other, "SELECT task_id FROM task_changes ORDER BY seq");
    assert_eq!(logged, ids, "one change each, in insertion order");
    let unfinished: i64 = other
        .query_row(
            "SELECT unfinished FROM user_usage WHERE user_id = 'u'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unfinished, 2, "the refused task was counted");
}

/// An owner's message to a waiting task is written with the task's wake, both or neither, also
/// when the writer commits it in one transaction with other jobs: here the wake is refused (a
/// trigger), in a batch the writer assembles while another connection holds the write lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_wake_fails_in_a_group_commit_is_not_written_half() {
    use conformance::{add, claim_one, park, task, T0};
    use serde_json::json;
    use spool::store::MessageCheck;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.db");
    let s = open(&path, Limits::default()).await;
    let t = add(&*s, task("default", 2, 0, T0), T0).await;
    let c = claim_one(&*s, "A", T0).await;
    park(&*s, &c, "A", T0 + 3_600_000, T0 + 1).await.unwrap();
    let mut other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER wake_refused BEFORE UPDATE OF status ON tasks \
             WHEN OLD.status = 'waiting' AND NEW.status = 'pending' \
             BEGIN SELECT RAISE(ABORT, 'wake refused'); END;",
        )
        .unwrap();
    // Hold the write lock so that the jobs below wait for the writer together and go into one
    // transaction (the writer takes every job waiting when it starts one).
    let lock = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let spawn_pause = |q: &'static str| {
        let s = s.clone();
        tokio::spawn(async move { s.queue_set_paused(q.into(), true, T0 + 2).await })
    };
    let before = spawn_pause("a");
    let says = {
        let s = s.clone();
        tokio::spawn(async move {
            s.message_insert(
                t.id,
                "answer".into(),
                json!("yes"),
                MessageCheck::User(Some("u".into())),
                T0 + 2,
            )
            .await
        })
    };
    let after = spawn_pause("b");
    // No condition shows a job queued for the writer: give the three a moment to be sent
    // (well under the writer's 5 s busy timeout).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    lock.commit().unwrap();
    assert!(says.await.unwrap().is_err(), "the wake was refused");
    before.await.unwrap().unwrap();
    after.await.unwrap().unwrap();
    let n: i64 = other
        .query_row(
            "SELECT count(*) FROM messages WHERE task_id = ?1",
            [t.id.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0, "the message was kept without its wake");
    let status: String = other
        .query_row(
            "SELECT status FROM tasks WHERE id = ?1",
            [t.id.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "waiting");
}

/// A per-key claim parks tasks only when its walk in claim order is clogged, so the common
/// claim writes no entry of the key-ordered index: tasks it passes within its short walk stay
/// where they are. A flood is parked once, every waiting task of it, so later claims walk past
/// it; its tasks are taken from there when their key has room, and a claim without the limit
/// returns them all to the claim index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_key_claim_parks_tasks_only_when_its_walk_is_clogged() {
    use conformance::{claim_adm, complete, enqueue_flood, with_key, PER_KEY_1, T0};
    use spool::store::Admission;
    let parked = |path: &Path| -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM tasks WHERE parked = 1", [], |r| {
                r.get(0)
            })
            .unwrap()
    };

    // Keys in pairs (a, a, b, b, ...): the walk passes every second task and still decides.
    let f = SqliteBackend.fresh(Default::default()).await;
    let s = f.store.as_ref();
    let pairs = (0..200)
        .map(|i| with_key(Some(&format!("k{:03}", i / 2)), T0 + i))
        .collect();
    s.task_insert(pairs, T0).await.unwrap();
    let got = claim_adm(s, "w", 32, PER_KEY_1, T0 + 1000).await;
    assert_eq!(got.len(), 32);
    assert_eq!(parked(&f.db.path), 0, "an unclogged walk parks nothing");

    // A flood of one key ahead of another key's task, longer than the walk.
    let f = SqliteBackend.fresh(Default::default()).await;
    let s = f.store.as_ref();
    enqueue_flood(s, "z", 1000, "y", T0 + 5000).await;
    let first = claim_adm(s, "w", 2, PER_KEY_1, T0 + 6000).await;
    assert_eq!(first.len(), 2);
    assert_eq!(
        parked(&f.db.path),
        999,
        "every waiting task of the flood is parked"
    );
    let z = first
        .iter()
        .find(|t| t.concurrency_key.as_deref() == Some("z"))
        .unwrap();
    complete(s, z, "w", T0 + 6001).await;
    let next = claim_adm(s, "w", 2, PER_KEY_1, T0 + 6002).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].run_at, T0 + 1, "the parked tasks go in claim order");
    assert_eq!(parked(&f.db.path), 998);
    let plain = claim_adm(s, "w", 2, Admission::default(), T0 + 6003).await;
    assert_eq!(plain.len(), 2);
    assert_eq!(
        parked(&f.db.path),
        0,
        "a claim without the limit returns them"
    );
}

/// A claim parks a bounded number of a flood's tasks (16 walks of 4 × its room + 256), so it
/// holds the writer for a bounded time however large the flood; the claims after it park on,
/// and the other key's task is claimed once the flood is parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_parks_a_bounded_part_of_a_large_flood_and_the_next_claims_park_on() {
    use conformance::{claim_adm, enqueue_flood, PER_KEY_1, T0};
    let f = SqliteBackend.fresh(Default::default()).await;
    let s = f.store.as_ref();
    enqueue_flood(s, "z", 10_000, "y", T0 + 20_000).await;
    let parked = || -> i64 {
        rusqlite::Connection::open(&f.db.path)
            .unwrap()
            .query_row("SELECT count(*) FROM tasks WHERE parked = 1", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let first = claim_adm(s, "w", 1, PER_KEY_1, T0 + 30_000).await;
    assert_eq!(first[0].concurrency_key.as_deref(), Some("z"));
    assert!(claim_adm(s, "w", 1, PER_KEY_1, T0 + 30_001)
        .await
        .is_empty());
    assert_eq!(parked(), 16 * 260, "one claim parks 16 walks' worth");
    let mut claims = 2;
    let y = loop {
        claims += 1;
        let got = claim_adm(s, "w", 1, PER_KEY_1, T0 + 30_000 + claims).await;
        if let Some(t) = got.first() {
            break t.clone();
        }
        assert!(claims < 10, "y is still hidden after {claims} claims");
    };
    assert_eq!(y.concurrency_key.as_deref(), Some("y"));
    assert_eq!(claims, 4, "the flood is parked by three claims");
    assert_eq!(parked(), 9_999);
}

/// Once a newer spool has migrated the file, this store writes nothing more: every write is
/// refused with `SchemaMigratedSince` (HTTP 503) naming the versions, and the file keeps what
/// it had.
/// (A running process also stops within a second: see `processes`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_writes_nothing_once_a_newer_spool_migrated_its_file() {
    use conformance::{task, T0};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.db");
    let s = open(&path, Limits::default()).await;
    s.task_insert(vec![task("default", 1, 0, T0)], T0)
        .await
        .unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(&format!("PRAGMA user_version = {}", LATEST_VERSION + 1))
        .unwrap();
    match s.task_insert(vec![task("default", 1, 0, T0)], T0).await {
        Err(spool::StoreError::SchemaMigratedSince { found, known }) => {
            assert_eq!((found, known), (LATEST_VERSION + 1, LATEST_VERSION))
        }
        other => panic!("expected SchemaMigratedSince, got {other:?}"),
    }
    let tasks: i64 = other
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tasks, 1, "a task was written under the newer schema");
}
