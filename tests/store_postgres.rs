//! The PostgreSQL store: the whole conformance suite (`tests/conformance/`) against a real
//! PostgreSQL 15 this binary starts once (`tests/pg/`), each test on a database of its own
//! (`CREATE DATABASE spool_t_N`), "another store" a second `PostgresStore` on that database (as a
//! second process opens it: its own pool and hub); plus what only PostgreSQL has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::conformance;
use crate::pg;

use conformance::{Backend, Fresh, T0};
use serde_json::json;
use spool::store::postgres::LATEST_VERSION;
use spool::store::{
    Limits, MessageCheck, PostgresOptions, PostgresStore, PostgresUrl, Store, StoreError,
};
use spool::task::TaskStatus;
use std::sync::Arc;
use std::time::Duration;

/// The suite's PostgreSQL backend.
struct PostgresBackend;

/// A database of the test server.
struct PgDb {
    url: String,
    limits: Limits,
}

async fn open(url: &str, limits: Limits) -> Arc<dyn Store> {
    let mut opts = PostgresOptions::new(PostgresUrl::parse(url).unwrap());
    opts.limits = limits;
    opts.max_connections = 8;
    Arc::new(PostgresStore::open(opts).await.unwrap())
}

#[async_trait::async_trait]
impl Backend for PostgresBackend {
    type Db = PgDb;

    async fn fresh(&self, limits: Limits) -> Fresh<PgDb> {
        let url = pg::server().fresh_db().await;
        Fresh {
            store: open(&url, limits).await,
            db: PgDb { url, limits },
        }
    }

    async fn another(&self, of: &Fresh<PgDb>) -> Arc<dyn Store> {
        open(&of.db.url, of.db.limits).await
    }

    fn schema_version(&self) -> u32 {
        LATEST_VERSION
    }
}

conformance::suite!(PostgresBackend);

// ---- PostgreSQL only ------------------------------------------------------------------------

/// How long a test waits for a condition at most.
const DEADLINE: Duration = Duration::from_secs(30);

/// A session of its own on a test database that watches for sessions waiting for a lock (and,
/// through `Deref`, reads what a test checks).
struct Watcher {
    client: tokio_postgres::Client,
    db: String,
}

impl Watcher {
    async fn new(url: &str) -> Self {
        Self {
            client: pg::server().client(url).await,
            db: db_name(url),
        }
    }

    /// How many sessions of the database wait for a lock now.
    async fn waiting(&self) -> i64 {
        self.waiting_in("").await
    }

    /// How many sessions of the database wait for a lock in a statement whose text holds
    /// `what`.
    async fn waiting_in(&self, what: &str) -> i64 {
        self.client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND wait_event_type = 'Lock' AND strpos(query, $2) > 0",
                &[&self.db, &what],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Waits until `n` sessions of the database wait for a lock.
    async fn until_waiting(&self, n: i64) {
        self.until_waiting_in(n, "").await;
    }

    /// Waits until `n` sessions of the database wait for a lock in a statement holding `what`.
    async fn until_waiting_in(&self, n: i64, what: &str) {
        let end = tokio::time::Instant::now() + DEADLINE;
        while self.waiting_in(what).await < n {
            assert!(
                tokio::time::Instant::now() < end,
                "no session waited for the lock (in a statement holding {what:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl std::ops::Deref for Watcher {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

/// A session of its own holding task `id`'s row, as a third writer would: a transaction that
/// locked it (`SELECT … FOR UPDATE`) and goes on until the session sends `COMMIT`. Statements
/// the session runs meanwhile are part of that transaction.
async fn hold_row(url: &str, id: spool::task::TaskId) -> tokio_postgres::Client {
    let holder = pg::server().client(url).await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", &[&id.0])
        .await
        .unwrap();
    holder
}

/// A fresh database of the test server, a store on it, and one pending task of user `u`.
async fn store_with_a_task() -> (String, Arc<dyn Store>, Arc<spool::task::Task>) {
    let url = pg::server().fresh_db().await;
    let store = open(&url, Limits::default()).await;
    let t = a_task(&store).await;
    (url, store, t)
}

/// One pending task of user `u`, inserted into `store`.
async fn a_task(store: &Arc<dyn Store>) -> Arc<spool::task::Task> {
    store
        .task_insert(vec![conformance::task("default", 3, 0, T0)], T0)
        .await
        .unwrap()
        .remove(0)
        .task
}

fn db_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

/// The message cursor cannot skip a late commit: a transaction that took position 1 and has not
/// committed holds the task's row, so a second writer cannot take position 2 (let alone commit
/// it) until the first commits. A reader reads nothing, then 1 and 2 in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_numbered_first_but_committed_last_is_never_skipped() {
    let server = pg::server();
    let (url, store, t) = store_with_a_task().await;
    // Writer one, by hand, as a store would: position 1 under the row lock, not committed.
    let mut first = server.client(&url).await;
    let tx = first.transaction().await.unwrap();
    let seq: i64 = tx
        .query_one(
            "UPDATE tasks SET message_seq = message_seq + 1 WHERE id = $1 RETURNING message_seq",
            &[&t.id.0],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seq, 1);
    tx.execute(
        "INSERT INTO messages (task_id, seq, kind, content, created_at) VALUES ($1, 1, 'log', '\"first\"', 0)",
        &[&t.id.0],
    )
    .await
    .unwrap();
    // Writer two, through the store: it must wait for writer one.
    let s2 = store.clone();
    let id = t.id;
    let second = tokio::spawn(async move {
        s2.message_insert(id, "log".into(), json!("second"), MessageCheck::Worker, T0)
            .await
            .unwrap()
            .unwrap()
    });
    let watcher = Watcher::new(&url).await;
    watcher.until_waiting(1).await;
    assert!(!second.is_finished(), "the second writer did not wait");
    // A reader now sees neither.
    assert!(store
        .message_list(t.id, 0, 10, None)
        .await
        .unwrap()
        .is_empty());
    tx.commit().await.unwrap();
    let m2 = tokio::time::timeout(DEADLINE, second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m2.id, 2);
    let all = store.message_list(t.id, 0, 10, None).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|m| (m.id, m.content.clone()))
            .collect::<Vec<_>>(),
        vec![(1, json!("first")), (2, json!("second"))]
    );
}

/// Writers of task changes do not take turns: a transaction that changed a task and has not
/// committed holds up no other writer. Its change gets a position only once it committed, after
/// the changes that committed before it, so a reader already past those still reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_commits_late_is_read_after_those_that_committed_first() {
    let server = pg::server();
    let url = server.fresh_db().await;
    let store = open(&url, Limits::default()).await;
    let a = store
        .task_insert(vec![conformance::task("default", 3, 0, T0)], T0)
        .await
        .unwrap()
        .remove(0)
        .task;
    let mut first = server.client(&url).await;
    let tx = first.transaction().await.unwrap();
    tx.execute(
        "UPDATE tasks SET status = 'canceled', completed_at = 1, updated_at = 1 WHERE id = $1",
        &[&a.id.0],
    )
    .await
    .unwrap();
    // Commits while the first transaction is open.
    let b = tokio::time::timeout(
        DEADLINE,
        store.task_insert(vec![conformance::task("default", 3, 0, T0)], T0),
    )
    .await
    .expect("an enqueue waited for another transaction's commit")
    .unwrap()
    .remove(0)
    .task;
    let read = |after: i64| {
        let store = store.clone();
        async move {
            let page = store
                .changes(spool::store::ChangeParams {
                    after,
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap();
            page.changes
                .iter()
                .map(|c| (c.seq, c.task.id, c.task.status))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(read(1).await, vec![(2, b.id, TaskStatus::Pending)]);
    tx.commit().await.unwrap();
    assert_eq!(read(2).await, vec![(3, a.id, TaskStatus::Canceled)]);
    assert_eq!(
        read(0).await.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

/// Runs spool's quota check for user `u` in `tx` (limits high enough to pass), as another
/// process's enqueue does: it holds u's usage row until `tx` ends.
async fn check_usage_of_u(tx: &tokio_postgres::Transaction<'_>) {
    tx.execute(
        include_str!("../sql/postgres/queries/usage_check.sql"),
        &[&vec!["u"], &1000i64, &i64::MAX],
    )
    .await
    .unwrap();
}

/// A store on `url` allowing `pending` unfinished tasks per user, and one task of user `u`.
async fn with_one_task(url: &str, pending: u64) -> Arc<dyn Store> {
    let store = open(
        url,
        Limits {
            pending_tasks_per_user: pending,
            ..Limits::default()
        },
    )
    .await;
    store
        .task_insert(vec![conformance::task("default", 3, 0, T0)], T0)
        .await
        .unwrap();
    store
}

/// A quota check sees what a concurrent enqueue of the same user added once that commits: an
/// enqueue that inserted, then took the user's usage row in its check, holds the next check of
/// that user until its commit, and the check then counts its task. Usage is kept per session
/// and summed by the check, so this proves the check reads after the lock, not from before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_check_counts_an_enqueue_that_committed_while_it_waited() {
    let server = pg::server();
    let url = server.fresh_db().await;
    let store = with_one_task(&url, 2).await;
    // Another process's enqueue, as spool makes it: the insert, then the check, which locks
    // the user's usage row until commit (its limits high enough to let it through).
    let mut other = server.client(&url).await;
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO tasks (id, user_id, queue, kind, payload, status, priority, run_at, \
         attempts, max_attempts, timeout_ms, created_at, updated_at) \
         VALUES ($1, 'u', 'default', 'k', '{}', 'pending', 0, 0, 0, 3, 1000, 0, 0)",
        &[&uuid::Uuid::now_v7()],
    )
    .await
    .unwrap();
    check_usage_of_u(&tx).await;
    let s2 = store.clone();
    let third = tokio::spawn(async move {
        s2.task_insert(vec![conformance::task("default", 3, 0, T0)], T0)
            .await
    });
    let watcher = Watcher::new(&url).await;
    watcher.until_waiting(1).await;
    tx.commit().await.unwrap();
    match tokio::time::timeout(DEADLINE, third)
        .await
        .unwrap()
        .unwrap()
    {
        Err(StoreError::LimitReached { limit: 2, .. }) => {}
        other => panic!("a third unfinished task was let in: {other:?}"),
    }
    assert_eq!(
        count(&watcher, "SELECT count(*) FROM tasks WHERE user_id = 'u'").await,
        2
    );
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// Usage kept by sessions that have ended is moved into the users' rows by the pruner, whole:
/// a process that enqueued and went away leaves its user's usage as it was, and the quota
/// still counts every unfinished task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_of_ended_sessions_is_folded_in_whole() {
    let server = pg::server();
    let url = server.fresh_db().await;
    let limits = Limits {
        pending_tasks_per_user: 3,
        ..Limits::default()
    };
    let gone = open(&url, limits).await;
    for _ in 0..2 {
        gone.task_insert(vec![conformance::task("default", 3, 0, T0)], T0)
            .await
            .unwrap();
    }
    gone.close();
    drop(gone);
    let db = server.client(&url).await;
    // Only the watching session is left.
    let end = tokio::time::Instant::now() + DEADLINE;
    while count(
        &db,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
    )
    .await
        > 1
    {
        assert!(
            tokio::time::Instant::now() < end,
            "the closed store's sessions stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM user_usage_shards").await,
        1
    );
    let store = open(&url, limits).await;
    store.changes_prune(0, 1).await.unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM user_usage_shards").await,
        0
    );
    let kept: i64 = db
        .query_one("SELECT unfinished FROM user_usage WHERE user_id = 'u'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 2);
    store
        .task_insert(vec![conformance::task("default", 3, 0, T0)], T0)
        .await
        .unwrap();
    match store
        .task_insert(vec![conformance::task("default", 3, 0, T0)], T0)
        .await
    {
        Err(StoreError::LimitReached { limit: 3, .. }) => {}
        other => panic!("a fourth unfinished task was let in: {other:?}"),
    }
}

/// The upsert every usage trigger makes (once per enqueue transaction, once per finished task)
/// is PL/pgSQL, whose plan the session keeps: as LANGUAGE sql it was parsed and planned again
/// at every call (migration 0006). The usage it keeps is still exact.
#[tokio::test]
async fn the_usage_upsert_keeps_its_plan_and_its_sums() {
    let server = pg::server();
    let url = server.fresh_db().await;
    let store = open(&url, Limits::default()).await;
    let c = server.client(&url).await;
    let lang: String = c
        .query_one(
            "SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang \
             WHERE p.proname = 'spool_usage_add'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(lang, "plpgsql");
    store
        .task_insert(
            (0..3)
                .map(|_| conformance::task("default", 3, 0, T0))
                .collect(),
            T0,
        )
        .await
        .unwrap();
    let unfinished: i64 = c
        .query_one(
            "SELECT ((SELECT coalesce(sum(unfinished), 0) FROM user_usage) \
                  + (SELECT coalesce(sum(unfinished), 0) FROM user_usage_shards))::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unfinished, 3);
}

/// Several processes starting at once on a new database apply each migration once; a database
/// of a newer spool is refused and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_migrate_once_and_a_newer_schema_is_refused_untouched() {
    let server = pg::server();
    let url = server.fresh_db().await;
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { open(&url, Limits::default()).await })
        })
        .collect();
    for o in opens {
        let s = o.await.unwrap();
        assert_eq!(s.schema_version().await.unwrap(), LATEST_VERSION);
    }
    let c = server.client(&url).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM spool_schema_versions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, i64::from(LATEST_VERSION));
    c.execute(
        "INSERT INTO spool_schema_versions (version) VALUES ($1)",
        &[&(LATEST_VERSION as i32 + 1)],
    )
    .await
    .unwrap();
    let before = tables(&c).await;
    let opts = PostgresOptions::new(PostgresUrl::parse(&url).unwrap());
    match PostgresStore::open(opts).await {
        Err(StoreError::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (LATEST_VERSION + 1, LATEST_VERSION))
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert_eq!(tables(&c).await, before);
}

/// A database that cannot be reached is `Unavailable` (HTTP 503), never a backend error (500),
/// both when opening and for a store whose database went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_be_reached_is_unavailable() {
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = PostgresOptions::new(
        PostgresUrl::parse(&format!("postgres://postgres:pw@127.0.0.1:{port}/x")).unwrap(),
    );
    opts.timeout_ms = 2000;
    match PostgresStore::open(opts).await {
        Err(StoreError::Unavailable(m)) => assert!(!m.contains("pw"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // An open store whose database refuses connections and whose sessions were ended.
    let server = pg::server();
    let url = server.fresh_db().await;
    let store = open(&url, Limits::default()).await;
    store.ping_write(T0).await.unwrap();
    let admin = server.client(&server.url("postgres")).await;
    let db = db_name(&url);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
        ))
        .await
        .unwrap();
    for _ in 0..3 {
        match store.ping_write(T0).await {
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    match store
        .task_insert(vec![conformance::task("default", 3, 0, T0)], T0)
        .await
    {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    // And it recovers without a restart.
    store.ping_write(T0).await.unwrap();
}

#[tokio::test]
async fn describe_never_shows_the_password() {
    let server = pg::server();
    let url = server.fresh_db().await;
    // trust authentication ignores the password; it must still never be shown.
    let with_pw = url.replacen("postgres@", "postgres:hunter2@", 1);
    let store = open(&with_pw, Limits::default()).await;
    let d = store.describe();
    assert!(!d.contains("hunter2"), "{d}");
    assert!(d.contains("postgres@127.0.0.1"), "{d}");
    assert!(!format!("{store:?}").contains("hunter2"));
}

/// TLS as the URL asks (`sslmode`), on a server that lets the store's role in over TLS alone:
/// with the server's certificate verified against `sslrootcert`, the store migrates, writes,
/// reads and listens, each of its sessions encrypted (`pg_stat_ssl`); `sslmode=prefer` verifies
/// the same way. A plain connection, a certificate that no trusted root signed, one for another
/// host name, and an `sslrootcert` that cannot be read are each refused as `Unavailable`, saying
/// why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_speaks_tls_as_its_url_asks_and_refuses_a_server_it_cannot_verify() {
    let pg = pg::private(&pg::Options {
        tls: true,
        ..Default::default()
    });
    let url = pg.fresh_db().await;
    let db = db_name(&url);
    let admin = pg.client(&url).await;
    let role = pg::TLS_ROLE;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; ALTER DATABASE {db} OWNER TO {role}"
        ))
        .await
        .unwrap();
    let at =
        |host: &str, options: &str| format!("postgres://{role}@{host}:{}/{db}?{options}", pg.port);
    let ca = format!("sslrootcert={}", pg.ca().display());
    let verified = at("localhost", &format!("sslmode=verify-full&{ca}"));

    let store = open(&verified, Limits::default()).await;
    let t = a_task(&store).await;
    assert_eq!(store.task_get(t.id, None).await.unwrap().id, t.id);
    let (_worker, wake) = listening_pool(&verified, &admin, "default").await;
    store
        .task_insert(vec![conformance::task("default", 3, 0, T0)], T0)
        .await
        .unwrap();
    woken(&wake, "an enqueue over TLS").await;
    let preferred = open(
        &at("localhost", &format!("sslmode=prefer&{ca}")),
        Limits::default(),
    )
    .await;
    assert_eq!(preferred.task_list(pending()).await.unwrap().tasks.len(), 2);
    let sessions: Vec<(bool, String)> = admin
        .query(
            "SELECT s.ssl, coalesce(s.version, '') FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
            &[&role],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Three stores' pools and one listening session at least.
    assert!(sessions.len() >= 4, "{sessions:?}");
    assert!(
        sessions.iter().all(|(ssl, v)| *ssl && v.starts_with("TLS")),
        "{sessions:?}"
    );

    let refused = [
        (at("localhost", "sslmode=disable"), "no encryption"),
        // The built-in web roots did not sign the test's CA.
        (
            at("localhost", "sslmode=require"),
            "UnknownIssuer (no CA this host trusts signed the server's certificate: name its \
             CA with sslrootcert=/path/ca.pem in the URL)",
        ),
        // The certificate names localhost, not 127.0.0.1.
        (
            at("127.0.0.1", &format!("sslmode=require&{ca}")),
            "not valid for name",
        ),
        (
            at(
                "localhost",
                "sslmode=require&sslrootcert=/nonexistent/ca.pem",
            ),
            "sslrootcert /nonexistent/ca.pem",
        ),
    ];
    for (url, why) in refused {
        let mut opts = PostgresOptions::new(PostgresUrl::parse(&url).unwrap());
        opts.timeout_ms = 5000;
        match PostgresStore::open(opts).await {
            Err(StoreError::Unavailable(m)) => assert!(m.contains(why), "{url}: {m}"),
            other => panic!("{url}: expected Unavailable ({why}), got {other:?}"),
        }
    }
}

async fn tables(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

// ---- group commit ---------------------------------------------------------------------------

/// How many transactions wrote the given tasks' rows as they are now (`xmin`).
async fn writers(c: &tokio_postgres::Client, ids: &[uuid::Uuid]) -> i64 {
    c.query_one(
        "SELECT count(DISTINCT xmin::text) FROM tasks WHERE id = ANY($1)",
        &[&ids],
    )
    .await
    .unwrap()
    .get(0)
}

/// One client's enqueues, one after another, commit on one backend, the one used last, even
/// when the pool holds many idle connections: the pool hands out the connection that came back
/// last (LIFO), so the batcher keeps one warm session instead of going round cold ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_enqueues_reuse_the_connection_used_last() {
    let server = pg::server();
    let url = server.fresh_db().await;
    let store = open(&url, Limits::default()).await;
    let db = server.client(&url).await;
    // Eight reads at once: the pool opens a connection for each.
    let mut hs = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        hs.push(tokio::spawn(async move {
            s.task_get(spool::task::TaskId(uuid::Uuid::now_v7()), None)
                .await
        }));
    }
    for h in hs {
        assert!(matches!(h.await.unwrap(), Err(StoreError::NotFound(_))));
    }
    let sessions = count(
        &db,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
    )
    .await;
    assert!(sessions >= 4, "the pool holds {sessions} sessions");
    for i in 0..20 {
        store
            .task_insert(vec![conformance::task("default", 3, 0, T0 + i)], T0 + i)
            .await
            .unwrap();
    }
    // Each enqueue adds to the usage shard of the session that wrote it.
    let backends = count(&db, "SELECT count(DISTINCT backend) FROM user_usage_shards").await;
    assert_eq!(backends, 1, "20 enqueues in turn took {backends} sessions");
}

/// The query that counts the sessions of the test's database (other than its own) listening
/// for wake-ups.
const LISTENING: &str = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                         AND pid <> pg_backend_pid() AND position('LISTEN spool_work' IN query) > 0";

/// Pending tasks, at most ten.
fn pending() -> spool::store::ListParams {
    spool::store::ListParams {
        status: Some(TaskStatus::Pending),
        limit: 10,
        ..Default::default()
    }
}

/// A pool's wake-up on `queue` in a store of its own (another process, as far as the database
/// can tell), once that store listens, with the wake-up it gives on listening already taken.
async fn listening_pool(
    url: &str,
    db: &tokio_postgres::Client,
    queue: &str,
) -> (Arc<dyn Store>, Arc<tokio::sync::Notify>) {
    let worker = open(url, Limits::default()).await;
    let wake = worker.hub().work_notify(&[queue.to_string()]);
    worker.task_list(pending()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(db, &format!("{LISTENING} AND state = 'idle'")).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool's store never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Take the wake-up every listener gives once it listens (it looks for what it missed).
    quiet(&wake).await;
    (worker, wake)
}

/// Takes every wake-up given so far, until none came for 300 ms.
async fn quiet(wake: &tokio::sync::Notify) {
    while tokio::time::timeout(Duration::from_millis(300), wake.notified())
        .await
        .is_ok()
    {}
}

/// Within 5 s, the pool is woken (by another store's NOTIFY: nothing else wakes it).
async fn woken(wake: &tokio::sync::Notify, by: &str) {
    tokio::time::timeout(Duration::from_secs(5), wake.notified())
        .await
        .unwrap_or_else(|_| panic!("{by} did not wake the other process's pool"));
}

/// A store listens for other processes' enqueues (LISTEN, which PostgreSQL signals at every
/// commit that notifies) only once something in its process waits for them: a store used only
/// to enqueue and read keeps no listening session; one with a worker pool's wake-up listens,
/// and another store's enqueue into the pool's queue wakes that pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_listens_only_once_something_in_its_process_waits_for_wake_ups() {
    let server = pg::server();
    let url = server.fresh_db().await;
    let db = server.client(&url).await;
    let front = open(&url, Limits::default()).await;
    front
        .task_insert(vec![conformance::task("q", 3, 0, T0)], T0)
        .await
        .unwrap();
    assert_eq!(front.task_list(pending()).await.unwrap().tasks.len(), 1);
    // Give a listener, had one started, time to connect and LISTEN.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&db, LISTENING).await, 0, "a front end alone listens");

    let (_worker, wake) = listening_pool(&url, &db, "q").await;
    front
        .task_insert(vec![conformance::task("q", 3, 0, T0 + 1)], T0 + 1)
        .await
        .unwrap();
    woken(&wake, "an enqueue").await;
}

/// Every change that makes a task pending wakes the idle pools of other processes on its
/// queue, its NOTIFY sent after its commit (never inside it, where PostgreSQL would make every
/// notifying commit wait for the one before): an enqueue with and without an idempotency key,
/// an attempt that ends in a retry, a retry its owner asks for, an expired lease rescued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_that_makes_a_task_pending_wakes_other_processes_pools() {
    let server = pg::server();
    let url = server.fresh_db().await;
    let db = server.client(&url).await;
    let front = open(&url, Limits::default()).await;
    let (_worker, wake) = listening_pool(&url, &db, "default").await;

    conformance::add(&*front, conformance::task("default", 2, 0, T0), T0).await;
    woken(&wake, "an enqueue").await;
    quiet(&wake).await;
    let mut keyed = conformance::task("default", 1, 0, T0);
    keyed.idempotency_key = Some("k".into());
    front.task_insert(vec![keyed], T0).await.unwrap();
    woken(&wake, "an enqueue with an idempotency key").await;

    // Both tasks claimed; the first attempt of one ends in a retry.
    let a = conformance::claim_one(&*front, "w", T0 + 1).await;
    let b = conformance::claim_one(&*front, "w", T0 + 1).await;
    quiet(&wake).await;
    let end = |t: &spool::task::Task, status, run_at| spool::store::FinishParams {
        task: Arc::new(t.clone()),
        owner: "w".into(),
        status,
        result: None,
        error: Some("boom".into()),
        run_at,
        uncount: false,
        wait_until: None,
        now: T0 + 2,
    };
    let (retried, failed) = if a.max_attempts > 1 { (a, b) } else { (b, a) };
    let again = front
        .task_finish_wait(end(&retried, TaskStatus::Pending, Some(T0 + 3)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.status, TaskStatus::Pending);
    woken(&wake, "an attempt that ends in a retry").await;

    // The other fails for good; its owner asks for a retry.
    front
        .task_finish_wait(end(&failed, TaskStatus::Failed, None))
        .await
        .unwrap();
    quiet(&wake).await;
    front
        .task_retry(failed.id, None, false, T0 + 4)
        .await
        .unwrap();
    woken(&wake, "a retry asked for").await;

    // Claimed under a lease that runs out: the next claim that looks rescues it (pending again,
    // with attempts left).
    let spare = conformance::add(&*front, conformance::task("default", 5, 0, T0), T0).await;
    let claim = |total, rescue, now| spool::store::ClaimParams {
        owner: "w".into(),
        queues: vec![spool::store::QueueClaim {
            queue: "default".into(),
            limit: total,
            admission: None,
        }],
        total,
        rescue,
        lease_ms: 1000,
        now,
    };
    let held = front.task_claim(claim(10, false, T0 + 5)).await.unwrap();
    assert!(held.iter().any(|t| t.id == spare.id), "{held:?}");
    quiet(&wake).await;
    front
        .task_claim(claim(0, true, T0 + 5 + 1001))
        .await
        .unwrap();
    assert_eq!(
        front.task_get(spare.id, None).await.unwrap().status,
        TaskStatus::Pending,
        "the expired lease was rescued"
    );
    woken(&wake, "a rescued lease").await;
}

/// Two group commits run at once: while one waits (here for user `u`'s usage row, locked by
/// another session's quota check), another user's enqueue is gathered and committed beside it;
/// the first commits once the lock is let go. With one commit at a time, the second enqueue
/// would wait behind the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commit_that_waits_does_not_hold_up_the_next() {
    let server = pg::server();
    let url = server.fresh_db().await;
    let store = with_one_task(&url, 1000).await;
    // Another process's enqueue for `u`, checked and not committed: it holds u's usage row.
    let mut other = server.client(&url).await;
    let tx = other.transaction().await.unwrap();
    check_usage_of_u(&tx).await;
    let s2 = store.clone();
    let first = tokio::spawn(async move {
        s2.task_insert(vec![conformance::task("default", 3, 0, T0 + 1)], T0 + 1)
            .await
    });
    let watcher = Watcher::new(&url).await;
    watcher.until_waiting(1).await;
    let mut theirs = conformance::task("default", 3, 0, T0 + 2);
    theirs.user_id = "v".into();
    let second = tokio::time::timeout(DEADLINE, store.task_insert(vec![theirs], T0 + 2))
        .await
        .expect("v's enqueue waited behind u's group commit")
        .unwrap();
    assert!(second[0].created);
    assert!(
        !first.is_finished(),
        "u's enqueue did not wait for the lock"
    );
    tx.commit().await.unwrap();
    let first = tokio::time::timeout(DEADLINE, first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first[0].created);
    assert_eq!(count(&watcher, "SELECT count(*) FROM tasks").await, 3);
}

/// 64 single enqueues at once go in a few transactions, each task with its own request's time;
/// 64 outcomes at once likewise, each fenced on its own (a stale one among them is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_and_outcomes_share_commits_and_each_keeps_its_own_answer() {
    let server = pg::server();
    let url = server.fresh_db().await;
    let store = open(&url, Limits::default()).await;
    let db = server.client(&url).await;
    let mut hs = Vec::new();
    for i in 0..64 {
        let s = store.clone();
        hs.push(tokio::spawn(async move {
            s.task_insert(vec![conformance::task("default", 3, 0, T0)], T0 + i)
                .await
                .unwrap()
                .remove(0)
        }));
    }
    let mut ids = Vec::new();
    for (i, h) in hs.into_iter().enumerate() {
        let ins = h.await.unwrap();
        assert!(ins.created);
        assert_eq!(ins.task.created_at, T0 + i as i64);
        let row: i64 = db
            .query_one(
                "SELECT created_at FROM tasks WHERE id = $1",
                &[&ins.task.id.0],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(row, T0 + i as i64, "each row has its own request's time");
        ids.push(ins.task.id.0);
    }
    let n = writers(&db, &ids).await;
    assert!(n < 64, "64 enqueues took {n} transactions");

    let claimed = store
        .task_claim(spool::store::ClaimParams {
            owner: "w".into(),
            queues: vec![spool::store::QueueClaim {
                queue: "default".into(),
                limit: 64,
                admission: None,
            }],
            total: 64,
            rescue: false,
            lease_ms: 60_000,
            now: T0 + 100,
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 64);
    let mut hs = Vec::new();
    for (i, t) in claimed.into_iter().enumerate() {
        let s = store.clone();
        hs.push(tokio::spawn(async move {
            let p = spool::store::FinishParams {
                task: t,
                // One outcome from a worker that does not hold the lease.
                owner: if i == 7 { "not-w".into() } else { "w".into() },
                status: spool::task::TaskStatus::Completed,
                result: Some(json!({ "i": i })),
                error: None,
                run_at: None,
                uncount: false,
                wait_until: None,
                now: T0 + 200,
            };
            (i, s.task_finish_wait(p).await.unwrap())
        }));
    }
    for h in hs {
        let (i, done) = h.await.unwrap();
        match done {
            Some(t) => {
                assert_ne!(i, 7);
                assert_eq!(t.status, spool::task::TaskStatus::Completed);
                assert_eq!(t.result, Some(json!({ "i": i })));
            }
            None => assert_eq!(i, 7, "only the stale outcome is refused"),
        }
    }
    let completed: i64 = db
        .query_one("SELECT count(*) FROM tasks WHERE status = 'completed'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(completed, 63);
    let done: Vec<uuid::Uuid> = db
        .query("SELECT id FROM tasks WHERE status = 'completed'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let n = writers(&db, &done).await;
    assert!(n < 63, "63 outcomes took {n} transactions");
}

/// A quota reached inside a group commit refuses exactly the requests past it, and an
/// idempotency key reused with another body refuses that request alone; the others of the
/// same group are written as they would have been one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_inside_a_group_commit_is_that_requests_alone() {
    let server = pg::server();
    let url = server.fresh_db().await;
    let limits = Limits {
        pending_tasks_per_user: 5,
        ..Limits::default()
    };
    let store = open(&url, limits).await;
    let mut hs = Vec::new();
    for _ in 0..12 {
        let s = store.clone();
        hs.push(tokio::spawn(async move {
            s.task_insert(vec![conformance::task("default", 3, 0, T0)], T0)
                .await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for h in hs {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::LimitReached { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, refused), (5, 7));

    let url = server.fresh_db().await;
    let store = open(&url, Limits::default()).await;
    let keyed = |hash: &str| spool::task::NewTask {
        idempotency_key: Some("k1".into()),
        request_hash: Some(hash.into()),
        ..conformance::task("default", 3, 0, T0)
    };
    let mut hs = Vec::new();
    for i in 0..16 {
        let s = store.clone();
        let t = if i == 5 { keyed("other") } else { keyed("h") };
        hs.push(tokio::spawn(async move {
            (i, s.task_insert(vec![t], T0).await)
        }));
    }
    let mut made = std::collections::HashSet::new();
    let mut created = 0;
    for h in hs {
        match h.await.unwrap() {
            (5, r) => {
                // The first of the key decides: "h" nearly always came first; if "other" did,
                // every "h" request is the one refused instead.
                if let Ok(v) = r {
                    made.insert(v[0].task.id);
                    created += usize::from(v[0].created);
                }
            }
            (_, Ok(v)) => {
                made.insert(v[0].task.id);
                created += usize::from(v[0].created);
            }
            (_, Err(StoreError::IdempotencyMismatch { .. })) => {}
            (_, Err(e)) => panic!("{e}"),
        }
    }
    assert_eq!(made.len(), 1, "one key, one task");
    assert_eq!(created, 1);
    let db = server.client(&url).await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// Outcomes of every kind ending together (a completion, a retry, a wait with a read inbox, a
/// wait whose cancel was asked for, an attempt given back, a completion after a checkpoint)
/// come back exactly as stored, with every column the single-row finish sets: wait_until, the
/// inbox cursor, the checkpoint, canceled for a cancel asked for; and enqueues grouped together
/// keep their concurrency keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commit_of_mixed_outcomes_keeps_every_column_of_each() {
    use spool::store::{ClaimParams, FinishParams, QueueClaim};
    use spool::task::TaskStatus;
    const N: usize = 48;
    let server = pg::server();
    let url = server.fresh_db().await;
    let store = open(&url, Limits::default()).await;
    let db = server.client(&url).await;
    let mut hs = Vec::new();
    for i in 0..N {
        let s = store.clone();
        hs.push(tokio::spawn(async move {
            let t = spool::task::NewTask {
                concurrency_key: Some(format!("key-{i}")),
                ..conformance::task("default", 3, 0, T0)
            };
            s.task_insert(vec![t], T0).await.unwrap().remove(0)
        }));
    }
    for (i, h) in hs.into_iter().enumerate() {
        let ins = h.await.unwrap();
        let key = Some(format!("key-{i}"));
        assert_eq!(ins.task.concurrency_key, key);
        let stored = store.task_get(ins.task.id, None).await.unwrap();
        assert_eq!(
            stored.concurrency_key, key,
            "the grouped insert stores the key"
        );
    }
    let claimed = store
        .task_claim(ClaimParams {
            owner: "A".into(),
            queues: vec![QueueClaim {
                queue: "default".into(),
                limit: N as u32,
                admission: None,
            }],
            total: N as u32,
            rescue: false,
            lease_ms: 60_000,
            now: T0 + 1,
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), N);
    let fence = MessageCheck::Lease {
        owner: "A".into(),
        attempt: 1,
    };
    // Before the outcomes: inboxes read, checkpoints saved, cancels asked for.
    let mut read = std::collections::HashMap::new();
    for (i, t) in claimed.iter().enumerate() {
        match i % 6 {
            1 => {
                let m = conformance::owner_says(store.as_ref(), t.id, "yes", T0 + 2).await;
                store
                    .inbox_read(t.id, fence.clone(), m.id, T0 + 3)
                    .await
                    .unwrap();
                read.insert(t.id, m.id);
            }
            3 => {
                store.task_cancel(t.id, None, T0 + 3).await.unwrap();
            }
            5 => {
                store
                    .task_checkpoint(t.id, json!({ "step": i }), fence.clone(), T0 + 3)
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    let until = T0 + 3_600_000;
    let mut hs = Vec::new();
    for (i, t) in claimed.into_iter().enumerate() {
        let s = store.clone();
        hs.push(tokio::spawn(async move {
            let base = FinishParams {
                task: t,
                owner: "A".into(),
                status: TaskStatus::Completed,
                result: Some(json!({ "i": i })),
                error: None,
                run_at: None,
                uncount: false,
                wait_until: None,
                now: T0 + 10,
            };
            let wait = FinishParams {
                status: TaskStatus::Waiting,
                result: None,
                run_at: Some(until),
                uncount: true,
                wait_until: Some(until),
                ..base.clone()
            };
            let p = match i % 6 {
                0 | 5 => base,
                1 | 3 => wait,
                2 => FinishParams {
                    status: TaskStatus::Pending,
                    result: None,
                    error: Some("boom".into()),
                    run_at: Some(T0 + 5000),
                    ..base
                },
                _ => FinishParams {
                    status: TaskStatus::Pending,
                    result: None,
                    uncount: true,
                    ..base
                },
            };
            (i, s.task_finish_wait(p).await.unwrap().unwrap())
        }));
    }
    let mut ids = Vec::new();
    for h in hs {
        let (i, done) = h.await.unwrap();
        ids.push(done.id.0);
        let stored = store.task_get(done.id, None).await.unwrap();
        assert_eq!(*done, stored, "outcome {i} comes back as stored");
        match i % 6 {
            0 => assert_eq!(done.status, TaskStatus::Completed),
            1 => {
                assert_eq!(done.status, TaskStatus::Waiting);
                assert_eq!(done.wait_until, Some(until));
                assert_eq!(done.attempts, 0, "a wait spends no attempt");
                assert_eq!(Some(&done.inbox_cursor), read.get(&done.id));
            }
            2 => {
                assert_eq!(done.status, TaskStatus::Pending);
                assert_eq!(done.last_error.as_deref(), Some("boom"));
                assert_eq!(done.run_at, T0 + 5000);
            }
            3 => {
                assert_eq!(done.status, TaskStatus::Canceled);
                assert_eq!(done.wait_until, None);
                assert_eq!(done.completed_at, Some(T0 + 10));
            }
            4 => {
                assert_eq!(done.status, TaskStatus::Pending);
                assert_eq!(done.attempts, 0, "given back, not spent");
            }
            _ => assert_eq!(done.checkpoint, Some(json!({ "step": i }))),
        }
    }
    let n = writers(&db, &ids).await;
    assert!(n < N as i64, "{N} outcomes took {n} transactions");
}

/// PostgreSQL cannot hold U+0000 in `jsonb` or `text`: a NUL in a payload, a task's result,
/// message, checkpoint or error text is stored as U+FFFD instead of failing the write, and an
/// outcome holding one ends in the same group commit as others without costing them theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_anywhere_a_task_writes_is_stored_as_the_replacement_character() {
    use spool::store::{ClaimParams, FinishParams, QueueClaim};
    use spool::task::TaskStatus;
    let server = pg::server();
    let url = server.fresh_db().await;
    let store = open(&url, Limits::default()).await;
    let mut ids = Vec::new();
    let mut answered = Vec::new();
    for i in 0..4 {
        let t = spool::task::NewTask {
            payload: json!({ "a\u{0}": format!("x\u{0}{i}") }),
            ..conformance::task("default", 3, 0, T0)
        };
        let task = store.task_insert(vec![t], T0).await.unwrap().remove(0).task;
        ids.push(task.id);
        answered.push(task);
    }
    let stored = store.task_get(ids[0], None).await.unwrap();
    assert_eq!(stored.payload, json!({ "a\u{FFFD}": "x\u{FFFD}0" }));
    assert_eq!(
        answered[0].payload, stored.payload,
        "the enqueue answers with the payload as stored"
    );
    let claimed = store
        .task_claim(ClaimParams {
            owner: "A".into(),
            queues: vec![QueueClaim {
                queue: "default".into(),
                limit: 4,
                admission: None,
            }],
            total: 4,
            rescue: false,
            lease_ms: 60_000,
            now: T0 + 1,
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    let fence = MessageCheck::Lease {
        owner: "A".into(),
        attempt: 1,
    };
    let t0 = claimed[0].id;
    let sent = store
        .message_insert(t0, "log".into(), json!("m\u{0}"), fence.clone(), T0 + 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sent.content, json!("m\u{FFFD}"), "answered as stored");
    let saved = store
        .task_checkpoint(t0, json!(["c\u{0}"]), fence, T0 + 3)
        .await
        .unwrap();
    assert_eq!(saved.checkpoint, Some(json!(["c\u{FFFD}"])));
    let mut hs = Vec::new();
    for (i, t) in claimed.into_iter().enumerate() {
        let s = store.clone();
        hs.push(tokio::spawn(async move {
            let p = FinishParams {
                task: t,
                owner: "A".into(),
                status: if i % 2 == 0 {
                    TaskStatus::Completed
                } else {
                    TaskStatus::Pending
                },
                result: (i % 2 == 0).then(|| json!({ "out": "r\u{0}" })),
                error: (i % 2 == 1).then(|| "stderr: bad\u{0}byte".to_string()),
                run_at: (i % 2 == 1).then_some(T0 + 5000),
                uncount: false,
                wait_until: None,
                now: T0 + 10,
            };
            s.task_finish_wait(p).await
        }));
    }
    for h in hs {
        let done = h.await.unwrap().unwrap().unwrap();
        let stored = store.task_get(done.id, None).await.unwrap();
        assert_eq!(
            (&done.result, &done.last_error),
            (&stored.result, &stored.last_error),
            "the finish answers with the outcome as stored"
        );
        match stored.status {
            TaskStatus::Completed => {
                assert_eq!(stored.result, Some(json!({ "out": "r\u{FFFD}" })))
            }
            _ => assert_eq!(
                stored.last_error.as_deref(),
                Some("stderr: bad\u{FFFD}byte")
            ),
        }
    }
    let msgs = store.message_list(t0, 0, 10, None).await.unwrap();
    assert_eq!(msgs[0].content, json!("m\u{FFFD}"));
}

/// A loopback TCP proxy in front of the test server that counts the bytes the server sends
/// through it: returns `url` by way of the proxy, and the count.
async fn counting_proxy(url: &str) -> (String, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = format!("127.0.0.1:{}", pg::server().port);
    let sent = Arc::new(AtomicU64::new(0));
    let count = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (server, count) = (server.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(upstream) = tokio::net::TcpStream::connect(&server).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = upstream.into_split();
                let up = async {
                    let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                    let _ = to_server.shutdown().await;
                };
                let down = async {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                        if to_client.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    let direct = format!(":{}/", pg::server().port);
    assert!(url.contains(&direct), "a URL of the test server: {url}");
    (url.replacen(&direct, &format!(":{port}/"), 1), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_changes_or_messages_fetches_little_more_than_it_holds() {
    use std::sync::atomic::Ordering;
    let url = pg::server().fresh_db().await;
    let writer = open(&url, Limits::default()).await;
    // 24 tasks of 0.9 MiB each in the change log, and one task with 24 messages of 0.9 MiB.
    let big = "x".repeat(900 << 10);
    let mut first = None;
    for _ in 0..24 {
        let t = spool::task::NewTask {
            payload: json!(big),
            ..conformance::task("default", 3, 0, T0)
        };
        let id = conformance::add(&*writer, t, T0).await.id;
        first.get_or_insert(id);
    }
    let talker = first.unwrap();
    for _ in 0..24 {
        writer
            .message_insert(talker, "log".into(), json!(big), MessageCheck::Worker, T0)
            .await
            .unwrap();
    }
    let (proxied, sent) = counting_proxy(&url).await;
    let reader = open(&proxied, Limits::default()).await;
    // A page holds one of them (the second is past the page's bytes): the database sends that
    // one and the next (the caller's sign that the page is full), not all 24 (21.6 MiB).
    let limit = 4 << 20;
    let before = sent.load(Ordering::Relaxed);
    let page = reader
        .changes(spool::store::ChangeParams {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let fetched = sent.load(Ordering::Relaxed) - before;
    assert_eq!(page.changes.len(), 1);
    assert!(page.more, "the page was cut");
    assert!(
        fetched < limit,
        "a page of changes of 0.9 MiB fetched {fetched} bytes"
    );
    let before = sent.load(Ordering::Relaxed);
    let messages = reader.message_list(talker, 0, 1000, None).await.unwrap();
    let fetched = sent.load(Ordering::Relaxed) - before;
    assert_eq!(messages.len(), 1);
    assert!(
        fetched < limit,
        "a page of messages of 0.9 MiB fetched {fetched} bytes"
    );
}

/// A task of user `user`, with idempotency key `key` when given.
fn task_of(user: &str, key: Option<&str>) -> spool::task::NewTask {
    spool::task::NewTask {
        user_id: user.into(),
        idempotency_key: key.map(Into::into),
        request_hash: key.map(|k| format!("hash of {k}")),
        ..conformance::task("default", 3, 0, T0)
    }
}

/// Two enqueues in two processes that name the same users in opposite orders, one held up
/// (behind another writer's idempotency key) after it wrote its first user's task and before
/// its second: both commit. Quota checks that locked each user's usage row in request order
/// made them wait for each other, and PostgreSQL broke the deadlock by failing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueues_naming_the_same_users_in_opposite_orders_never_deadlock() {
    let server = pg::server();
    let url = server.fresh_db().await;
    // Quotas on (far from reached): every enqueue checks its users'.
    let limits = Limits {
        pending_tasks_per_user: 1000,
        ..Limits::default()
    };
    let (a, b) = (open(&url, limits).await, open(&url, limits).await);
    // Every user has a usage row already (an enqueue makes it on first use).
    for u in ["u1", "u2", "u3"] {
        conformance::add(&*a, task_of(u, None), T0).await;
    }
    // A third writer holds key k3 of u3, uncommitted.
    let mut other = server.client(&url).await;
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO tasks (id, user_id, queue, kind, payload, status, priority, run_at, \
         attempts, max_attempts, timeout_ms, idempotency_key, created_at, updated_at) \
         VALUES ($1, 'u3', 'default', 'k', '{}', 'pending', 0, 0, 0, 3, 1000, 'k3', 0, 0)",
        &[&uuid::Uuid::now_v7()],
    )
    .await
    .unwrap();
    let watcher = Watcher::new(&url).await;
    // u1's task is written, then the insert of u3's keyed task waits for that writer.
    let first = tokio::spawn(async move {
        let tasks = vec![
            task_of("u1", Some("k1")),
            task_of("u3", Some("k3")),
            task_of("u2", None),
        ];
        a.task_insert(tasks, T0).await
    });
    watcher.until_waiting(1).await;
    // u2's task, then u1's, while the first is held.
    let second = tokio::spawn(async move {
        let tasks = vec![task_of("u2", Some("k2")), task_of("u1", None)];
        b.task_insert(tasks, T0).await
    });
    // It commits, or (with the checks in request order) it waits for u1's row, which the first
    // holds until it commits.
    let end = tokio::time::Instant::now() + DEADLINE;
    while !second.is_finished() {
        if watcher.waiting().await >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "the second enqueue hung");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.rollback().await.unwrap();
    for (name, h) in [("first", first), ("second", second)] {
        match tokio::time::timeout(DEADLINE, h).await.unwrap().unwrap() {
            Ok(ins) => assert!(ins.iter().all(|i| i.created), "{name}: {ins:?}"),
            Err(e) => panic!("the {name} enqueue failed: {e}"),
        }
    }
    assert_eq!(count(&watcher, "SELECT count(*) FROM tasks").await, 8);
}

/// A request refused inside a group commit (its user is past the quota) is written alone, and
/// the other requests of its group are written once more together: one commit for all 15 of
/// them, not one each. The group is made deterministic: both group commits in flight wait on a
/// lock the test holds while the 16 requests queue, so the next group takes all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_others_of_a_group_with_a_refused_request_are_still_written_together() {
    let server = pg::server();
    let url = server.fresh_db().await;
    let limits = Limits {
        pending_tasks_per_user: 5,
        ..Limits::default()
    };
    let store = open(&url, limits).await;
    conformance::add(&*store, task_of("blocker", None), T0).await;
    for _ in 0..5 {
        conformance::add(&*store, task_of("over", None), T0).await;
    }
    // Both group commits in flight wait for the blocker's usage row, which the test holds.
    let mut other = server.client(&url).await;
    let tx = other.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM user_usage WHERE user_id = 'blocker' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let watcher = Watcher::new(&url).await;
    let mut held = Vec::new();
    for n in 1..=2 {
        let s = store.clone();
        held.push(tokio::spawn(async move {
            s.task_insert(vec![task_of("blocker", None)], T0).await
        }));
        watcher.until_waiting(n).await;
    }
    let mut hs = Vec::new();
    for i in 0..16 {
        let s = store.clone();
        let user = if i == 7 {
            "over".to_string()
        } else {
            format!("g{i}")
        };
        hs.push(tokio::spawn(async move {
            (
                user.clone(),
                s.task_insert(vec![task_of(&user, None)], T0).await,
            )
        }));
    }
    // Every request is queued behind the two held commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.commit().await.unwrap();
    for h in held {
        h.await.unwrap().unwrap();
    }
    for h in hs {
        match h.await.unwrap() {
            (u, Err(StoreError::LimitReached { .. })) if u == "over" => {}
            (u, Ok(ins)) if u != "over" => assert!(ins[0].created),
            (u, r) => panic!("{u}: {r:?}"),
        }
    }
    let commits = count(
        &watcher,
        "SELECT count(DISTINCT xmin::text) FROM tasks WHERE user_id LIKE 'g%'",
    )
    .await;
    assert_eq!(
        commits, 1,
        "the 15 accepted requests took {commits} commits"
    );
    assert_eq!(
        count(
            &watcher,
            "SELECT count(*) FROM tasks WHERE user_id = 'over'"
        )
        .await,
        5
    );
}

/// The race a wait must not lose: the owner's message and the attempt's wait meet at the task's
/// row. The message's transaction holds the row; the wait's statement starts (its snapshot does
/// not see the message) and waits for the row; the message commits. The wait then reads the row
/// as the message left it (inbox_last), not its snapshot, and is woken at once instead of
/// parking until the timeout. A third session holds the row first so the two queue up in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_committed_while_the_wait_waited_for_the_row_wakes_it() {
    let (url, store, t) = store_with_a_task().await;
    let c = conformance::claim_one(store.as_ref(), "A", T0).await;
    let holder = hold_row(&url, t.id).await;
    let watcher = Watcher::new(&url).await;
    let s = store.clone();
    let message = tokio::spawn(async move {
        s.message_insert(
            t.id,
            "answer".into(),
            json!("yes"),
            MessageCheck::User(Some("u".into())),
            T0 + 1,
        )
        .await
    });
    watcher.until_waiting(1).await;
    let s = store.clone();
    let wait = tokio::spawn(async move {
        conformance::park(s.as_ref(), &c, "A", T0 + 3_600_000, T0 + 2).await
    });
    watcher.until_waiting(2).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let m = tokio::time::timeout(DEADLINE, message)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    let ended = tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (ended.status, ended.wake_reason, ended.wait_until),
        (
            TaskStatus::Pending,
            Some(spool::task::WakeReason::Message),
            None
        ),
        "the wait parked past message {}",
        m.id
    );
}

/// A claim passes over a pending task whose row another transaction holds (`FOR UPDATE SKIP
/// LOCKED`) and takes the next one at once, where a plain `FOR UPDATE` would wait for the
/// holder's commit: claimers on many hosts never queue behind each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_passes_over_a_task_another_transaction_holds_without_waiting() {
    let (url, store, first) = store_with_a_task().await;
    let second = a_task(&store).await;
    let holder = hold_row(&url, first.id).await;
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        conformance::claim(store.as_ref(), "A", 2, T0),
    )
    .await
    .expect("the claim waited for the row another transaction holds");
    let ids: Vec<_> = got.iter().map(|t| t.id).collect();
    assert_eq!(ids, [second.id]);
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        conformance::claim_one(store.as_ref(), "B", T0).await.id,
        first.id
    );
}

/// A rescue never overwrites a finish that commits while it runs (River #1302): the worker's
/// finish holds the task's row, written but not yet committed, as a claim long after the lease
/// looks for expired leases. Whether the rescue passes over the row (as it does) or waits for it,
/// once the finish commits the task is completed at the attempt that ran it, not pending again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescue_never_overwrites_a_finish_that_commits_while_it_runs() {
    let (url, store, t) = store_with_a_task().await;
    let c = conformance::claim_one(store.as_ref(), "A", T0).await;
    let holder = hold_row(&url, t.id).await;
    holder
        .execute(
            "UPDATE tasks SET status = 'completed', completed_at = $2, updated_at = $2, \
             lease_owner = NULL, lease_expires_at = NULL WHERE id = $1",
            &[&t.id.0, &(T0 + 5)],
        )
        .await
        .unwrap();
    let later = T0 + 3_600_000;
    let s = store.clone();
    let mut rescue =
        tokio::spawn(async move { conformance::claim(s.as_ref(), "B", 1, later).await });
    // The rescue has run, or waits for the finish's row lock.
    let watcher = Watcher::new(&url).await;
    let ran = tokio::select! {
        r = &mut rescue => Some(r.unwrap()),
        _ = watcher.until_waiting(1) => None,
    };
    holder.batch_execute("COMMIT").await.unwrap();
    let taken = match ran {
        Some(taken) => taken,
        None => tokio::time::timeout(DEADLINE, rescue)
            .await
            .unwrap()
            .unwrap(),
    };
    assert!(taken.is_empty(), "{taken:?}");
    let after = store.task_get(t.id, None).await.unwrap();
    assert_eq!(
        (after.status, after.attempts, after.completed_at),
        (TaskStatus::Completed, c.attempts, Some(T0 + 5))
    );
}

/// A worker's group of outcomes and its heartbeat never deadlock: both lock the rows they
/// change in id order. The interleaving that deadlocked under load (seen in `spool bench`) is
/// forced here. Of three running tasks a < m < b, a third session holds m; the heartbeat naming
/// all three locks a and waits for m. A group ending b and a starts (the completer is held on
/// another task's row until both outcomes are queued, so they go in one statement). When m is
/// let go, the heartbeat goes on to b. The group's UPDATE used to lock its rows in whatever
/// order its plan read them (here the order they lie in the table, b's before a's, as the test
/// arranges), so it held b and waited for a, the heartbeat waited for b, and PostgreSQL failed
/// one of the two after `deadlock_timeout`: seen as both outcomes answered 503 (40P01).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_outcomes_and_a_heartbeat_of_one_worker_never_deadlock() {
    let url = pg::server().fresh_db().await;
    let store = open(&url, Limits::default()).await;
    for _ in 0..4 {
        a_task(&store).await;
    }
    let mut claimed = conformance::claim(store.as_ref(), "W", 4, T0).await;
    assert_eq!(claimed.len(), 4);
    let gate = claimed.remove(0);
    claimed.sort_by_key(|t| t.id.0);
    let [a, m, b]: [spool::task::Task; 3] = claimed.try_into().unwrap();
    // a's row written again, so it lies after b's: the group's UPDATE, reading the running
    // tasks in the order their rows lie, locked b before a.
    let held = store
        .lease_extend("W".into(), vec![a.id], conformance::LEASE, T0 + 1)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let done = |t: &spool::task::Task| spool::store::FinishParams {
        task: Arc::new(t.clone()),
        owner: "W".into(),
        status: TaskStatus::Completed,
        result: Some(json!("ok")),
        error: None,
        run_at: None,
        uncount: false,
        wait_until: None,
        now: T0 + 10,
    };
    let finish = |t: &spool::task::Task| {
        let (s, p) = (store.clone(), done(t));
        tokio::spawn(async move { s.task_finish_wait(p).await })
    };
    let watcher = Watcher::new(&url).await;
    let gate_holder = hold_row(&url, gate.id).await;
    let m_holder = hold_row(&url, m.id).await;
    // The completer's first group (the gate's outcome) waits for the gate's row...
    let gate_done = finish(&gate);
    watcher.until_waiting_in(1, "End several attempts").await;
    // ...while b's outcome and a's queue behind it (given time to, so both go in its next).
    let b_done = finish(&b);
    let a_done = finish(&a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The heartbeat locks a and waits for m.
    let (s, ids) = (store.clone(), vec![a.id, m.id, b.id]);
    let beat = tokio::spawn(async move {
        s.lease_extend("W".into(), ids, conformance::LEASE, T0 + 5)
            .await
    });
    watcher.until_waiting_in(1, "Heartbeat").await;
    // The gate goes: its group commits, and the group of b and a meets the heartbeat's lock.
    gate_holder.batch_execute("COMMIT").await.unwrap();
    let gate_end = tokio::time::timeout(DEADLINE, gate_done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gate_end.unwrap().unwrap().status, TaskStatus::Completed);
    watcher.until_waiting_in(1, "End several attempts").await;
    // b's outcome waits with a's: one group (b alone would have committed by now).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !b_done.is_finished(),
        "b's outcome was written in a group of its own"
    );
    // m goes: the heartbeat takes m and b.
    m_holder.batch_execute("COMMIT").await.unwrap();
    let held = tokio::time::timeout(DEADLINE, beat).await.unwrap().unwrap();
    let held = match held {
        Ok(h) => h,
        Err(e) => panic!("the heartbeat failed: {e}"),
    };
    let mut held_ids: Vec<_> = held.iter().map(|h| h.id).collect();
    held_ids.sort_by_key(|id| id.0);
    assert_eq!(held_ids, vec![a.id, m.id, b.id]);
    for (name, h) in [("a", a_done), ("b", b_done)] {
        match tokio::time::timeout(DEADLINE, h).await.unwrap().unwrap() {
            Ok(Some(t)) => assert_eq!(t.status, TaskStatus::Completed, "{name}"),
            other => panic!("the outcome of {name}: {other:?}"),
        }
    }
}

/// A group of outcomes finds its tasks by primary key, whatever the statistics say. With its
/// fence written with `=`, PostgreSQL, whose statistics said that no task was running (taken
/// while none did), read every running task through the partial index of running tasks for
/// each outcome, which made the statement two to three times as slow in a quarter of the bench
/// runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_outcomes_finds_its_tasks_by_primary_key_when_statistics_say_none_run() {
    let url = pg::server().fresh_db().await;
    let store = open(&url, Limits::default()).await;
    for _ in 0..4 {
        let batch = (0..1000)
            .map(|_| conformance::task("default", 3, 0, T0))
            .collect();
        store.task_insert(batch, T0).await.unwrap();
    }
    let db = pg::server().client(&url).await;
    db.batch_execute("ANALYZE tasks").await.unwrap();
    let claimed = conformance::claim(store.as_ref(), "W", 256, T0).await;
    assert_eq!(claimed.len(), 256);
    let group = &claimed[..40];
    let n = group.len();
    let ids: Vec<uuid::Uuid> = group.iter().map(|t| t.id.0).collect();
    let attempts: Vec<i64> = group.iter().map(|t| i64::from(t.attempts)).collect();
    let (owners, statuses) = (vec!["W".to_string(); n], vec!["completed".to_string(); n]);
    let (no_text, no_int) = (vec![None::<String>; n], vec![None::<i64>; n]);
    let (uncounts, nows) = (vec![0_i64; n], vec![T0 + 1; n]);
    let explain = format!(
        "EXPLAIN {}",
        include_str!("../sql/postgres/queries/task_finish_many.sql")
    );
    let rows = db
        .query(
            &explain,
            &[
                &ids, &owners, &attempts, &statuses, &no_text, &no_text, &no_int, &uncounts, &nows,
                &no_int,
            ],
        )
        .await
        .unwrap();
    let plan: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let plan = plan.join("\n");
    assert!(!plan.contains("tasks_lease_owner"), "{plan}");
    assert!(plan.contains("tasks_pkey"), "{plan}");
}

/// A task token's read that waited for the task's row while its attempt ended in a wait and the
/// next claim (with the same attempt number, and the same worker) took the task is not recorded
/// for that claim. The blocked UPDATE checks the row's newest version, but reads `task_tokens`
/// as it was when it began, when the old token was still there: only a token that names the
/// row's own claim counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_tokens_read_that_waited_for_the_row_is_not_recorded_for_the_next_claim() {
    let (url, store, t) = store_with_a_task().await;
    let c = conformance::claim_one(store.as_ref(), "A", T0).await;
    let token = format!("{:064x}", 1);
    store
        .task_token_create(&c, token.clone(), T0)
        .await
        .unwrap();
    let m = conformance::owner_says(store.as_ref(), t.id, "yes", T0 + 1).await;
    let holder = hold_row(&url, t.id).await;
    let watcher = Watcher::new(&url).await;
    let s = store.clone();
    let stale = MessageCheck::Attempt(spool::store::TokenAttempt {
        attempt: c.attempts,
        started_at: c.started_at.unwrap(),
        token_hash: token,
    });
    let id = t.id;
    let read = tokio::spawn(async move { s.inbox_read(id, stale, m.id, T0 + 2).await });
    watcher.until_waiting(1).await;
    // Meanwhile, as the store writes them: the attempt waits (its tokens go with it), the owner's
    // message wakes it, and worker A claims it again, with the number the wait gave back.
    holder
        .execute(
            "UPDATE tasks SET status = 'waiting', lease_owner = NULL, lease_expires_at = NULL, \
         wait_until = $2 WHERE id = $1",
            &[&t.id.0, &(T0 + 3_600_000)],
        )
        .await
        .unwrap();
    holder
        .execute(
            "UPDATE tasks SET status = 'running', lease_owner = 'A', lease_expires_at = $2, \
         started_at = $3, wait_until = NULL WHERE id = $1",
            &[&t.id.0, &(T0 + 60_000), &(T0 + 3)],
        )
        .await
        .unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    let recorded = tokio::time::timeout(DEADLINE, read)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let row = holder
        .query_one(
            "SELECT inbox_read, attempts, status FROM tasks WHERE id = $1",
            &[&t.id.0],
        )
        .await
        .unwrap();
    let (inbox_read, attempts, status): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (status.as_str(), attempts),
        ("running", i64::from(c.attempts)),
        "the next claim runs with the same number"
    );
    assert!(!recorded, "the ended attempt's token recorded a read");
    assert_eq!(
        inbox_read, 0,
        "the next claim has message {} taken as read",
        m.id
    );
}

/// After an outage, every host's running tasks can have lost their lease at once: one claim
/// rescues at most `EXPIRED_LEASES_PER_CLAIM` of them (those that ran out first), the next
/// claim the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_are_rescued_a_bounded_number_per_claim() {
    use spool::store::{ClaimParams, QueueClaim};
    let server = pg::server();
    let url = server.fresh_db().await;
    let store = open(&url, Limits::default()).await;
    let per = spool::store::EXPIRED_LEASES_PER_CLAIM as usize;
    let n = per + 2;
    // The two that will run out last are made first (the smallest ids) and claimed last (a
    // lower priority): a rescue in id order would take them first.
    store
        .task_insert(
            (0..n)
                .map(|i| conformance::task("default", 3, if i < 2 { -1 } else { 0 }, T0))
                .collect(),
            T0,
        )
        .await
        .unwrap();
    let claim = |owner: &str, total: u32, now: i64| ClaimParams {
        owner: owner.into(),
        queues: vec![QueueClaim {
            queue: "default".into(),
            limit: total,
            admission: None,
        }],
        total,
        rescue: true,
        lease_ms: 1_000,
        now,
    };
    // All but two leases run out first; those two, claimed later, are left for the next claim.
    let early = (n - 2) as u32;
    assert_eq!(
        store.task_claim(claim("A", early, T0)).await.unwrap().len(),
        n - 2
    );
    assert_eq!(
        store
            .task_claim(claim("L", 2, T0 + 10))
            .await
            .unwrap()
            .len(),
        2
    );
    let db = server.client(&url).await;
    let running = "SELECT count(*) FROM tasks WHERE status = 'running'";
    // Long after every lease: one claim rescues `per` and runs one of them.
    let taken = store.task_claim(claim("B", 1, T0 + 60_000)).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM tasks WHERE status = 'pending'").await,
        per as i64 - 1
    );
    assert_eq!(
        count(&db, &format!("{running} AND lease_owner IN ('A', 'L')")).await,
        2,
        "one claim rescued more than {per}"
    );
    assert_eq!(
        count(&db, &format!("{running} AND lease_owner = 'L'")).await,
        2,
        "the leases that ran out last were rescued before those that ran out first"
    );
    store.task_claim(claim("B", 1, T0 + 60_001)).await.unwrap();
    assert_eq!(
        count(&db, &format!("{running} AND lease_owner IN ('A', 'L')")).await,
        0
    );
}

/// A newer spool on another host adds a column to `tasks` while this one runs: a statement this
/// process prepared before, which reads the table whole, is refused by PostgreSQL (0A000). That
/// answers `Unavailable` (503, retry), not an error that stays until a restart: the connection
/// prepares its statements again, and the next call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_by_another_host_costs_one_retry_not_a_restart() {
    let server = pg::server();
    let (url, store, t) = store_with_a_task().await;
    store.task_get(t.id, None).await.unwrap();
    let db = server.client(&url).await;
    db.batch_execute("ALTER TABLE tasks ADD COLUMN from_a_newer_spool bigint")
        .await
        .unwrap();
    match store.task_get(t.id, None).await {
        Err(StoreError::Unavailable(e)) => assert!(e.contains("0A000"), "{e}"),
        other => panic!("a stale prepared statement answered {other:?}"),
    }
    // Every connection that held the statement fails once at most, then works for good.
    let end = tokio::time::Instant::now() + DEADLINE;
    let mut failures = 0;
    loop {
        match store.task_get(t.id, None).await {
            Ok(got) => {
                assert_eq!(got.id, t.id);
                break;
            }
            Err(StoreError::Unavailable(_)) => failures += 1,
            Err(e) => panic!("not a retryable error: {e}"),
        }
        assert!(tokio::time::Instant::now() < end, "still failing");
    }
    assert!(
        failures < 8,
        "{failures} failures for a pool of 8 connections"
    );
    for _ in 0..8 {
        store.task_get(t.id, None).await.unwrap();
    }
    // Inside a transaction too: a message locks its task with a statement that reads it whole.
    let say = || {
        store.message_insert(
            t.id,
            "note".into(),
            json!("hi"),
            MessageCheck::User(Some("u".into())),
            T0 + 1,
        )
    };
    assert_eq!(say().await.unwrap().unwrap().id, 1);
    db.batch_execute("ALTER TABLE tasks ADD COLUMN and_another bigint")
        .await
        .unwrap();
    match say().await {
        Err(StoreError::Unavailable(e)) => assert!(e.contains("0A000"), "{e}"),
        other => panic!("a stale prepared statement answered {other:?}"),
    }
    let mut said = None;
    for _ in 0..9 {
        match say().await {
            Ok(m) => {
                said = m;
                break;
            }
            Err(StoreError::Unavailable(_)) => {}
            Err(e) => panic!("not a retryable error: {e}"),
        }
    }
    assert_eq!(said.expect("the message was never written").id, 2);
}

/// The store's clock reads the database's time, and reading it again (`clock_sync`, what
/// `serve` and `work` do every 30 s) works on a pooled connection and says how far this host is
/// off. (Hosts whose clocks are off: `hosts_postgres::workers_whose_clocks_are_off_...`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_clock_is_the_databases_and_can_be_read_again() {
    let url = pg::server().fresh_db().await;
    let store = open(&url, Limits::default()).await;
    let db = pg::server().client(&url).await;
    let db_now = || async {
        db.query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let ahead = store.clock_sync().await.unwrap();
    assert!(
        ahead.is_some_and(|ms| ms.abs() < 1000),
        "one host, one clock: {ahead:?}"
    );
    let before = db_now().await;
    let now = store.clock().now();
    let after = db_now().await;
    assert!(
        (before - 5..=after + 5).contains(&now),
        "{now} is not between the database's {before} and {after}"
    );
}

/// A connection the database refuses (here its role's `CONNECTION LIMIT`, as when PostgreSQL's
/// `max_connections` is reached by the pools of many hosts) is `Unavailable` (503, retry) for
/// the call that needed it, never another error, and the store goes on with the connections it
/// has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_database_refuses_is_unavailable_and_the_store_goes_on() {
    let url = pg::server().fresh_db().await;
    let name = db_name(&url);
    let role = format!("{name}_few");
    let db = pg::server().client(&url).await;
    db.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN CONNECTION LIMIT 2; ALTER DATABASE {name} OWNER TO {role}"
    ))
    .await
    .unwrap();
    drop(db);
    let url = url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let store = open(&url, Limits::default()).await;
    let t = a_task(&store).await.id;
    // 32 reads at once want more connections than the role may open.
    let mut refused = 0;
    let reads = (0..32).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.task_get(t, None).await })
    });
    for r in futures::future::join_all(reads).await {
        match r.unwrap() {
            Ok(got) => assert_eq!(got.id, t),
            Err(StoreError::Unavailable(e)) => {
                assert!(e.contains("53300"), "{e}");
                refused += 1;
            }
            Err(e) => panic!("a refused connection answered {e:?}"),
        }
    }
    assert!(
        refused > 0,
        "no connection was refused: the test proves nothing"
    );
    assert_eq!(store.task_get(t, None).await.unwrap().id, t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_and_never_answers_is_unavailable_not_a_hang() {
    // The kernel completes the TCP handshakes into this listener's backlog; nothing ever
    // accepts them, so the start-up message gets no answer, as from a stopped server process.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/spool");
    let mut opts = PostgresOptions::new(PostgresUrl::parse(&url).unwrap());
    opts.timeout_ms = 300;
    let opened = tokio::time::timeout(Duration::from_secs(30), PostgresStore::open(opts))
        .await
        .expect("opening the store hung on a server that never answers");
    match opened {
        Err(StoreError::Unavailable(e)) => assert!(e.contains("timeout"), "{e}"),
        Err(e) => panic!("expected Unavailable, got {e:?}"),
        Ok(_) => panic!("a store opened on a server that never answers"),
    }

    // Named first of two, it is passed over after its time, for the server after it; every
    // new connection does the same (the pool's are made one at a time as work needs them).
    let real = pg::server().fresh_db().await;
    let (_, after_host) = real.split_once('@').unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{port},{after_host}");
    let mut opts = PostgresOptions::new(PostgresUrl::parse(&url).unwrap());
    opts.timeout_ms = 300;
    opts.max_connections = 4;
    let store: Arc<dyn Store> = Arc::new(
        tokio::time::timeout(Duration::from_secs(30), PostgresStore::open(opts))
            .await
            .expect("opening the store hung")
            .unwrap(),
    );
    let reads = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { a_task(&store).await.id })
    });
    for id in futures::future::join_all(reads).await {
        let id = id.unwrap();
        assert_eq!(store.task_get(id, None).await.unwrap().id, id);
    }
    drop(silent);
}
