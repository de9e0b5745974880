//! `spool migrate-to-postgres` with the real binaries: a SQLite queue with tasks in every state,
//! messages, users, tokens, a paused queue and an idempotency key is copied, while its server
//! runs, into a fresh database of the throw-away PostgreSQL 15 of `tests/pg/`; a server on
//! PostgreSQL then serves the same tasks, tokens, streams and keys, and a `spool work` there
//! rescues the task that was running. Also: a target that is not empty is refused untouched, a
//! copy that reads back differently is rolled back, and the operator views answer in `psql`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::pg;

use common::sse::{Ev, Stream, EVENT_LIMIT};
use common::{client, eventually, serve, spawn, spool_bin, write_config, Server};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

// ---- helpers ------------------------------------------------------------------------------

/// Writes the kinds the tests run (scripts beside the config) and returns their config.
fn kinds(dir: &Path) -> String {
    let release = dir.join("RELEASE");
    let ok = dir.join("ok.sh");
    std::fs::write(
        &ok,
        "echo '{\"kind\":\"step\",\"n\":1}'\necho '{\"kind\":\"step\",\"n\":2}'\n\
         echo '{\"result\":{\"done\":true}}'\n",
    )
    .unwrap();
    let bad = dir.join("bad.sh");
    std::fs::write(&bad, "echo oops >&2\nexit 3\n").unwrap();
    // Runs until the test creates RELEASE (at most a minute: a spool killed with -9 leaves it
    // behind, and it must not outlive the test for long).
    let slow = dir.join("slow.sh");
    std::fs::write(
        &slow,
        format!(
            "echo '{{\"kind\":\"step\",\"n\":1}}'\n\
             i=0; while [ ! -e {r} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n\
             echo '{{\"kind\":\"step\",\"n\":2}}'\n",
            r = release.display()
        ),
    )
    .unwrap();
    // Parks itself until its owner writes (waiting), then completes once ANSWERED is there.
    let asks = dir.join("asks.sh");
    std::fs::write(
        &asks,
        format!(
            "if [ -e {a} ]; then echo '{{\"result\":\"answered\"}}'; \
             else echo '{{\"wait\":{{\"for\":\"message\",\"timeout_ms\":3600000}}}}'; fi\n",
            a = dir.join("ANSWERED").display()
        ),
    )
    .unwrap();
    format!(
        "[kinds.ok]\ncommand = [\"sh\", {ok:?}]\n\
         [kinds.bad]\ncommand = [\"sh\", {bad:?}]\n\
         [kinds.slow]\ncommand = [\"sh\", {slow:?}]\n\
         [kinds.asks]\ncommand = [\"sh\", {asks:?}]\n",
        ok = ok.display().to_string(),
        bad = bad.display().to_string(),
        slow = slow.display().to_string(),
        asks = asks.display().to_string(),
    )
}

fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    write_config(dir, &format!("{extra}\n{}", kinds(dir)))
}

/// `spool migrate-to-postgres ARGS --config CONFIG`.
fn migrate(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(spool_bin())
        .arg("migrate-to-postgres")
        .args(args)
        .arg("--config")
        .arg(config)
        .current_dir(config.parent().unwrap())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

async fn req(
    c: &Client,
    method: reqwest::Method,
    s: &Server,
    token: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut rb = c.request(method, s.url(path)).bearer_auth(token);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let st = r.status();
    let text = r.text().await.unwrap();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(c: &Client, s: &Server, token: &str, path: &str) -> Value {
    let (st, v) = req(c, reqwest::Method::GET, s, token, path, None, &[]).await;
    assert_eq!(st, StatusCode::OK, "GET {path}: {v}");
    v
}

async fn post(c: &Client, s: &Server, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    req(c, reqwest::Method::POST, s, token, path, Some(body), &[]).await
}

async fn create(c: &Client, s: &Server, token: &str, body: Value) -> String {
    let (st, t) = post(c, s, token, "/v1/tasks", body).await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    t["id"].as_str().unwrap().to_string()
}

async fn wait_status(c: &Client, s: &Server, token: &str, id: &str, want: &str) -> Value {
    eventually(
        Duration::from_secs(60),
        &format!("task {id} {want}"),
        || async {
            let t = get(c, s, token, &format!("/v1/tasks/{id}")).await;
            (t["status"] == want).then_some(t)
        },
    )
    .await
}

/// Every task the token sees, oldest first.
async fn all_tasks(c: &Client, s: &Server, token: &str) -> Vec<Value> {
    let v = get(c, s, token, "/v1/tasks?limit=500").await;
    assert!(v["next_cursor"].is_null(), "one page holds them all");
    let mut t = v["tasks"].as_array().unwrap().clone();
    t.reverse();
    t
}

/// The queues, without the age of the oldest pending task (it grows between two reads).
async fn queues(c: &Client, s: &Server, token: &str) -> Vec<Value> {
    let v = get(c, s, token, "/v1/queues").await;
    v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            let mut q = q.clone();
            q.as_object_mut().unwrap().remove("oldest_pending_age_ms");
            q
        })
        .collect()
}

/// `psql` (PostgreSQL 15's, from the package tests/run.sh installs) on the database at `url`, as
/// the `postgres` user when this is root, as the operator would run it: one `|`-separated line
/// per row.
fn psql(url: &str, sql: &str) -> Vec<String> {
    let bin = format!("{}/psql", pg::PG_BIN);
    let out = pg::as_postgres(&bin)
        .args([
            "-X",
            "-A",
            "-t",
            "-F",
            "|",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("{bin} is needed (Debian's postgresql): {e}"));
    assert!(
        out.status.success(),
        "psql failed on {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A fresh database with spool's schema (`spool migrate`) and no rows; its URL, and the
/// directory of the config that migrated it.
async fn migrated_db() -> (String, tempfile::TempDir) {
    let url = pg::server().fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &format!("[database]\nurl = {url:?}"));
    common::spool_cli_ok(&cfg, &["migrate"]);
    (url, dir)
}

/// A fingerprint of every row of every spool table of the database at `url`.
async fn pg_fingerprint(url: &str) -> Vec<(String, String)> {
    let c = pg::server().client(url).await;
    let mut out = Vec::new();
    for t in [
        "users",
        "tokens",
        "queues",
        "tasks",
        "messages",
        "task_tokens",
        "task_changes",
        "user_usage",
        "stream_tokens",
        "schedules",
        "queue_tokens",
        "workers",
        "health",
        "spool_schema_versions",
    ] {
        let row = c
            .query_one(
                &format!(
                    "SELECT count(*)::text || ':' || coalesce(md5(string_agg(x::text, '|' \
                     ORDER BY x::text)), '') FROM {t} AS x"
                ),
                &[],
            )
            .await
            .unwrap();
        out.push((t.to_string(), row.get::<_, String>(0)));
    }
    out
}

// ---- the move -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_sqlite_queue_moves_to_postgres_whole_and_goes_on_there() {
    let c = client();
    // The SQLite server, with work in every state.
    let dir_a = tempfile::tempdir().unwrap();
    let cfg_a = config(
        dir_a.path(),
        "[worker]\nconcurrency = 4\nlease_ms = 3000\npoll_interval_ms = 100\n\
         queues = [\"default\", \"held\"]",
    );
    let a = serve(&cfg_a, &[]);
    let admin = a.token.clone();
    let bob = a.user_token("bob", false);

    let (st, _) = post(&c, &a, &admin, "/v1/queues/held/pause", json!({})).await;
    assert_eq!(st, StatusCode::OK);
    // An API schedule (a row only the database has) moves with the rest.
    let (st, schedule) = req(
        &c,
        reqwest::Method::PUT,
        &a,
        &admin,
        "/v1/schedules/nightly",
        Some(json!({"cron": "0 3 * * *", "timezone": "Europe/Berlin",
            "task": {"kind": "ok", "queue": "held"}, "catch_up": "skip"})),
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{schedule}");
    let completed = create(&c, &a, &admin, json!({"kind": "ok", "payload": {"x": 1}})).await;
    wait_status(&c, &a, &admin, &completed, "completed").await;
    let failed = create(&c, &a, &admin, json!({"kind": "bad", "max_attempts": 1})).await;
    wait_status(&c, &a, &admin, &failed, "failed").await;
    let canceled = create(&c, &a, &admin, json!({"kind": "ok", "queue": "held"})).await;
    let (st, _) = post(
        &c,
        &a,
        &admin,
        &format!("/v1/tasks/{canceled}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let scheduled = create(
        &c,
        &a,
        &admin,
        json!({"kind": "ok", "delay_ms": 3_600_000, "priority": 7}),
    )
    .await;
    // Bob's pending task, with an idempotency key and two messages of his.
    let keyed_body = json!({"kind": "ok", "queue": "held", "payload": {"order": 42}});
    let (st, keyed) = req(
        &c,
        reqwest::Method::POST,
        &a,
        &bob,
        "/v1/tasks",
        Some(keyed_body.clone()),
        &[("Idempotency-Key", "order-42")],
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{keyed}");
    let pending = keyed["id"].as_str().unwrap().to_string();
    for n in 1..=2 {
        let (st, m) = post(
            &c,
            &a,
            &bob,
            &format!("/v1/tasks/{pending}/messages"),
            json!({"kind": "note", "content": {"n": n}}),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{m}");
    }
    // A running task, its lease renewed by A.
    let running = create(&c, &a, &admin, json!({"kind": "slow"})).await;
    wait_status(&c, &a, &admin, &running, "running").await;
    eventually(
        Duration::from_secs(30),
        "the slow task's first message",
        || async {
            let m = get(&c, &a, &admin, &format!("/v1/tasks/{running}/messages")).await;
            (!m["messages"].as_array().unwrap().is_empty()).then_some(())
        },
    )
    .await;

    // A task waiting for its owner's answer, holding no slot.
    let waiting = create(&c, &a, &admin, json!({"kind": "asks"})).await;
    wait_status(&c, &a, &admin, &waiting, "waiting").await;

    // The copy, while A runs.
    let url = pg::server().fresh_db().await;
    let db = dir_a.path().join("data/spool.db");
    let out = migrate(
        &cfg_a,
        &["--from", db.to_str().unwrap(), "--to", &url, "--json"],
    );
    assert!(
        out.status.success(),
        "migrate-to-postgres failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The counts it verified are the file's (nothing but lease times changes in A meanwhile).
    {
        let sq = common::open_db(dir_a.path());
        let pgc = pg::server().client(&url).await;
        for t in report["tables"].as_array().unwrap() {
            let name = t["table"].as_str().unwrap();
            let n: i64 = sq
                .query_row(&format!("SELECT count(*) FROM {name}"), [], |r| r.get(0))
                .unwrap();
            let m: i64 = pgc
                .query_one(&format!("SELECT count(*) FROM {name}"), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!((t["rows"].as_i64().unwrap(), m), (n, n), "{name}");
            assert_eq!(t["sha256"].as_str().unwrap().len(), 64, "{t}");
        }
        assert!(report["tables"].as_array().unwrap().len() >= 8, "{report}");
        // Messages keep their ids, kinds and contents exactly.
        let mut st = sq
            .prepare("SELECT task_id, id, kind, content FROM messages ORDER BY task_id, id")
            .unwrap();
        let want: Vec<(String, i64, String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let got: Vec<(String, i64, String, String)> = pgc
            .query(
                "SELECT task_id::text, seq, kind, content::text FROM messages ORDER BY task_id, seq",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(got, want);
        assert!(want.len() >= 6, "{want:?}");
        // Each task knows its owner's newest message (what a wait checks it has read).
        let mut st = sq
            .prepare(
                "SELECT task_id, max(id) FROM messages WHERE author = 'user' \
                 GROUP BY task_id ORDER BY task_id",
            )
            .unwrap();
        let want: Vec<(String, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let got: Vec<(String, i64)> = pgc
            .query(
                "SELECT id::text, inbox_last FROM tasks WHERE inbox_last > 0 ORDER BY id::text",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(got, want);
        assert!(!want.is_empty(), "no owner's message was copied");
    }
    assert!(!String::from_utf8_lossy(&out.stdout).is_empty());

    // A second run refuses, exits non-zero and changes nothing.
    let before = pg_fingerprint(&url).await;
    let again = migrate(&cfg_a, &["--from", db.to_str().unwrap(), "--to", &url]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(err.contains("not empty") && err.contains("tasks"), "{err}");
    assert!(again.stdout.is_empty());
    assert_eq!(pg_fingerprint(&url).await, before, "the second run wrote");

    // A server on PostgreSQL (no slots: nothing moves while the two are compared).
    let dir_b = tempfile::tempdir().unwrap();
    let cfg_b = config(
        dir_b.path(),
        &format!(
            "[worker]\nconcurrency = 0\n[limits]\nmessages_per_task = 3\n\
             [database]\nurl = {url:?}"
        ),
    );
    let b = serve(&cfg_b, &[]);
    assert!(
        b.token.is_empty(),
        "a copied database has its users: no new admin"
    );

    // The operator view counts as the SQLite one does.
    let depth_sqlite: Vec<String> = {
        let sq = common::open_db(dir_a.path());
        let mut st = sq
            .prepare(
                "SELECT queue, paused, pending, scheduled, running, completed, failed, canceled \
                 FROM queue_depth",
            )
            .unwrap();
        st.query_map([], |r| {
            Ok((0..8)
                .map(|i| match r.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                    v => String::from_utf8_lossy(v.as_str().unwrap().as_bytes()).into_owned(),
                })
                .collect::<Vec<_>>()
                .join("|"))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    assert_eq!(
        psql(
            &url,
            "SELECT queue, paused, pending, scheduled, running, completed, failed, canceled \
             FROM queue_depth"
        ),
        depth_sqlite
    );

    // The same tasks, queues and messages, read through the API of each.
    let tasks_a = all_tasks(&c, &a, &admin).await;
    assert_eq!(tasks_a.len(), 7);
    assert_eq!(all_tasks(&c, &b, &admin).await, tasks_a);
    let statuses: Vec<&str> = tasks_a
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "completed",
            "failed",
            "canceled",
            "pending",
            "pending",
            "running",
            "waiting"
        ]
    );
    assert_eq!(queues(&c, &b, &admin).await, queues(&c, &a, &admin).await);
    let held = queues(&c, &b, &admin).await;
    assert!(
        held.iter()
            .any(|q| q["name"] == "held" && q["paused"] == true),
        "{held:?}"
    );
    for t in &tasks_a {
        let id = t["id"].as_str().unwrap();
        let path = format!("/v1/tasks/{id}/messages?limit=1000");
        assert_eq!(
            get(&c, &b, &admin, &path).await,
            get(&c, &a, &admin, &path).await
        );
    }
    // Bob's token works there, and sees only his task.
    let bobs = all_tasks(&c, &b, &bob).await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["id"], pending.as_str());
    let (st, _) = req(
        &c,
        reqwest::Method::GET,
        &b,
        "not-a-token",
        "/v1/tasks",
        None,
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // The idempotency key still names Bob's task; another body under it is refused.
    let (st, again) = req(
        &c,
        reqwest::Method::POST,
        &b,
        &bob,
        "/v1/tasks",
        Some(keyed_body.clone()),
        &[("Idempotency-Key", "order-42")],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again["id"], pending.as_str());
    let (st, _) = req(
        &c,
        reqwest::Method::POST,
        &b,
        &bob,
        "/v1/tasks",
        Some(json!({"kind": "ok", "queue": "held", "payload": {"order": 43}})),
        &[("Idempotency-Key", "order-42")],
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);

    // A task's stream resumes on B with the Last-Event-ID seen on A.
    let mut on_a = Stream::open(
        &c,
        &a.url(&format!("/v1/tasks/{completed}/events")),
        &admin,
        None,
    )
    .await;
    let evs_a = on_a.until_end().await;
    let msgs_a: Vec<&Ev> = evs_a.iter().filter(|e| e.name() == "message").collect();
    assert_eq!(msgs_a.len(), 2, "{evs_a:?}");
    let first = msgs_a[0].id.clone().unwrap();
    let mut on_b = Stream::open(
        &c,
        &b.url(&format!("/v1/tasks/{completed}/events")),
        &admin,
        Some(&first),
    )
    .await;
    let evs_b = on_b.until_end().await;
    let msgs_b: Vec<&Ev> = evs_b.iter().filter(|e| e.name() == "message").collect();
    assert_eq!(msgs_b, vec![msgs_a[1]], "exactly the message after {first}");

    // The change feed resumes on B with a Last-Event-ID seen on A: the same changes after it.
    let mut feed_a = Stream::open(&c, &a.url("/v1/events?after=0"), &admin, None).await;
    let mut seen_a = Vec::new();
    let total: i64 = common::open_db(dir_a.path())
        .query_row("SELECT count(*) FROM task_changes", [], |r| r.get(0))
        .unwrap();
    for _ in 0..total {
        seen_a.push(feed_a.next(EVENT_LIMIT).await.unwrap());
    }
    let mid = seen_a[seen_a.len() / 2].id.clone().unwrap();
    let mut feed_b = Stream::open(&c, &b.url("/v1/events"), &admin, Some(&mid)).await;
    let mut seen_b = Vec::new();
    for _ in 0..(total as usize - seen_a.len() / 2 - 1) {
        seen_b.push(feed_b.next(EVENT_LIMIT).await.unwrap());
    }
    let ids = |v: &[Ev]| -> Vec<(String, String)> {
        v.iter()
            .map(|e| {
                (
                    e.id.clone().unwrap(),
                    e.json()["id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(ids(&seen_b), ids(&seen_a[seen_a.len() / 2 + 1..]));

    // New writes on PostgreSQL continue after the copied ids.
    let last_change: i64 = seen_a
        .last()
        .unwrap()
        .id
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let (st, m) = post(
        &c,
        &b,
        &bob,
        &format!("/v1/tasks/{pending}/messages"),
        json!({"kind": "note", "content": {"n": 3}}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    let copied: Vec<i64> = get(&c, &a, &admin, &format!("/v1/tasks/{pending}/messages")).await
        ["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert!(
        m["id"].as_i64().unwrap() > *copied.last().unwrap(),
        "{m} after {copied:?}"
    );
    // The cap counts the task's messages (3), not its last position (past ids of other tasks).
    let (st, m) = post(
        &c,
        &b,
        &bob,
        &format!("/v1/tasks/{pending}/messages"),
        json!({"kind": "note", "content": {"n": 4}}),
    )
    .await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{m}");
    let carol = b.user_token("carol", false);
    let fresh = create(&c, &b, &carol, json!({"kind": "ok", "queue": "held"})).await;
    let mut feed = Stream::open(
        &c,
        &b.url("/v1/events"),
        &admin,
        Some(&last_change.to_string()),
    )
    .await;
    let ev = feed.next(EVENT_LIMIT).await.unwrap();
    assert_eq!(ev.json()["id"], fresh.as_str());
    assert!(ev.id.unwrap().parse::<i64>().unwrap() > last_change);
    drop(feed);

    // A goes away as a crashed host would; its running task is rescued on PostgreSQL after one
    // lease and runs to the end under `spool work`; the paused queue, resumed, runs too.
    let mut a = a;
    a.proc.kill9();
    // The slow kind ends once RELEASE is there (each host's copy of its script waits for its own).
    std::fs::write(dir_a.path().join("RELEASE"), "").unwrap();
    std::fs::write(dir_b.path().join("RELEASE"), "").unwrap();
    let _work = spawn(
        &["work"],
        &cfg_b,
        &[
            ("SPOOL_WORKER_CONCURRENCY", "2"),
            ("SPOOL_WORKER_POLL_INTERVAL_MS", "100"),
            ("SPOOL_WORKER_QUEUES", "default,held"),
        ],
    );
    let done = wait_status(&c, &b, &admin, &running, "completed").await;
    assert_eq!(done["attempts"], 2, "rescued, then run again: {done}");
    let msgs = get(&c, &b, &admin, &format!("/v1/tasks/{running}/messages")).await;
    let steps: Vec<i64> = msgs["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "step")
        .map(|m| m["content"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        steps,
        vec![1, 1, 2],
        "the copied message, then the second attempt's"
    );
    // The waiting task wakes on PostgreSQL when its owner answers there, and runs to the end.
    std::fs::write(dir_b.path().join("ANSWERED"), "").unwrap();
    let (st, m) = post(
        &c,
        &b,
        &admin,
        &format!("/v1/tasks/{waiting}/messages"),
        json!({"kind": "say", "content": "yes"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    let answered = wait_status(&c, &b, &admin, &waiting, "completed").await;
    assert_eq!(answered["result"], "answered", "{answered}");
    let (st, _) = post(&c, &b, &admin, "/v1/queues/held/resume", json!({})).await;
    assert_eq!(st, StatusCode::OK);
    wait_status(&c, &b, &admin, &pending, "completed").await;
    wait_status(&c, &b, &admin, &fresh, "completed").await;
    let schedules = get(&c, &b, &admin, "/v1/schedules").await;
    assert_eq!(
        schedules["schedules"],
        json!([schedule]),
        "the schedule moved as it was"
    );
    let s = get(&c, &b, &admin, &format!("/v1/tasks/{scheduled}")).await;
    assert_eq!(s["status"], "pending", "still waiting for its run_at: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_file_moves_but_never_into_a_database_a_server_has_used() {
    let c = client();
    let dir_a = tempfile::tempdir().unwrap();
    let cfg_a = config(dir_a.path(), "[worker]\nconcurrency = 2");
    let mut a = serve(&cfg_a, &[]);
    let admin = a.token.clone();
    let id = create(&c, &a, &admin, json!({"kind": "ok"})).await;
    wait_status(&c, &a, &admin, &id, "completed").await;
    // More tasks than one COPY takes (1,000 rows): 2,500, due in an hour.
    for n in [1000, 1000, 500] {
        let later = vec![json!({"kind": "ok", "delay_ms": 3_600_000}); n];
        let (st, r) = post(&c, &a, &admin, "/v1/tasks/batch", json!({ "tasks": later })).await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
    }
    assert!(a.proc.terminate(Duration::from_secs(30)).unwrap().success());

    // A server started on the target first made its admin: the copy is refused, untouched.
    let used = pg::server().fresh_db().await;
    let dir_b = tempfile::tempdir().unwrap();
    let cfg_b = config(
        dir_b.path(),
        &format!("[worker]\nconcurrency = 0\n[database]\nurl = {used:?}"),
    );
    let mut b = serve(&cfg_b, &[]);
    assert!(b.proc.terminate(Duration::from_secs(30)).unwrap().success());
    let before = pg_fingerprint(&used).await;
    let with_password = used.replace("postgres@", "postgres:hunter2secret@");
    let out = migrate(&cfg_a, &["--to", &with_password]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not empty") && err.contains("users"), "{err}");
    assert!(
        !err.contains("hunter2secret"),
        "the password was printed: {err}"
    );
    assert_eq!(pg_fingerprint(&used).await, before);

    // Into an empty one it goes (the file of the config by default), and says what to change.
    let url = pg::server().fresh_db().await;
    let with_password = url.replace("postgres@", "postgres:hunter2secret@");
    let out = migrate(&cfg_a, &["--to", &with_password]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.is_empty(), "no progress bar without a terminal: {err}");
    assert!(
        !text.contains("hunter2secret"),
        "the password was printed: {text}"
    );
    assert!(
        text.contains("[database]") && text.contains("SPOOL_DATABASE_URL"),
        "{text}"
    );
    assert!(text.contains("verified"), "{text}");
    let b = serve(
        &config(
            dir_b.path(),
            &format!("[worker]\nconcurrency = 0\n[database]\nurl = {url:?}"),
        ),
        &[],
    );
    let t = get(&c, &b, &admin, &format!("/v1/tasks/{id}")).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"], json!({"done": true}), "{t}");
    const COUNTS: &str = "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FROM tasks";
    let row = pg::server()
        .client(&url)
        .await
        .query_one(COUNTS, &[])
        .await
        .unwrap();
    let on_pg: (i64, i64) = (row.get(0), row.get(1));
    let on_sqlite: (i64, i64) = common::open_db(dir_a.path())
        .query_row(COUNTS, [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!((on_pg, on_sqlite), ((2500, 2501), (2500, 2501)));
}

/// A copy that reads back differently from the file (here a trigger an operator left on the
/// target rewrites each user's name) is refused at the checksum: exit 1, every table as empty as
/// before, and once the cause is gone the same command copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_reads_back_differently_is_rolled_back_and_the_command_can_run_again() {
    let c = client();
    let dir_a = tempfile::tempdir().unwrap();
    let cfg_a = config(dir_a.path(), "[worker]\nconcurrency = 0");
    let mut a = serve(&cfg_a, &[]);
    let admin = a.token.clone();
    let ids = [
        create(&c, &a, &admin, json!({"kind": "ok"})).await,
        create(&c, &a, &admin, json!({"kind": "bad"})).await,
    ];
    assert!(a.proc.terminate(Duration::from_secs(30)).unwrap().success());

    // The target has spool's schema (`spool migrate`) and no rows, so the copy may go in.
    let (url, _dir_b) = migrated_db().await;
    psql(
        &url,
        "CREATE FUNCTION test_mangle() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN NEW.name := NEW.name || 'x'; RETURN NEW; END $$; \
         CREATE TRIGGER test_mangle BEFORE INSERT ON users \
         FOR EACH ROW EXECUTE FUNCTION test_mangle()",
    );
    let before = pg_fingerprint(&url).await;

    let out = migrate(&cfg_a, &["--to", &url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a fault, not a usage error: {err}"
    );
    assert!(
        err.contains("does not match")
            && err.contains("users: checksum")
            && err.contains("rolled back"),
        "{err}"
    );
    assert_eq!(pg_fingerprint(&url).await, before, "nothing was written");

    psql(&url, "DROP TRIGGER test_mangle ON users");
    let out = migrate(&cfg_a, &["--to", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kinds: Vec<String> = psql(&url, "SELECT id || ' ' || kind FROM tasks ORDER BY id");
    assert_eq!(kinds, [format!("{} ok", ids[0]), format!("{} bad", ids[1])]);
    const NAMES: &str = "SELECT name FROM users ORDER BY id";
    let on_sqlite: Vec<String> = common::open_db(dir_a.path())
        .prepare(NAMES)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!on_sqlite.is_empty());
    assert_eq!(psql(&url, NAMES), on_sqlite, "the names as they were");
}

// ---- the operator views -------------------------------------------------------------------

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A task of the views test: letter, queue, status, run_at, created_at, lease expiry,
/// completed_at, last error.
type Row<'a> = (
    char,
    &'a str,
    &'a str,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<&'a str>,
);

/// The task of letter `l` (a, b, ...): ids that sort as the letters do.
fn tid(l: char) -> String {
    format!(
        "00000000-0000-7000-8000-0000000000{:02}",
        l as u8 - b'a' + 1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_views_answer_in_psql_as_on_sqlite() {
    let (url, _dir) = migrated_db().await;
    let c = pg::server().client(&url).await;
    c.execute(
        "INSERT INTO users (name, issuer, is_admin, created_at) VALUES ('alice', NULL, false, 0), \
         ('bob', 'https://idp', false, 0)",
        &[],
    )
    .await
    .unwrap();
    let now = now_ms();
    let hour = 3_600_000i64;
    // The rows of tests/views.rs: one task in each state, on two queues, and a paused queue with
    // no tasks.
    let rows: [Row<'_>; 7] = [
        (
            'a',
            "mail",
            "pending",
            now - hour,
            now - hour,
            None,
            None,
            None,
        ),
        (
            'b',
            "mail",
            "pending",
            now + 24 * hour,
            now - 1000,
            None,
            None,
            None,
        ),
        (
            'c',
            "mail",
            "running",
            now - hour,
            now - hour,
            Some(now + 600_000),
            None,
            None,
        ),
        (
            'd',
            "mail",
            "completed",
            1_700_000_000_123,
            1_700_000_000_123,
            None,
            Some(1_700_000_001_000),
            None,
        ),
        (
            'e',
            "mail",
            "failed",
            now - hour,
            now - hour,
            None,
            Some(now - 5000),
            Some("boom"),
        ),
        (
            'f',
            "mail",
            "canceled",
            now - hour,
            now - hour,
            None,
            Some(now - 4000),
            None,
        ),
        (
            'g',
            "video",
            "pending",
            now - 10,
            now - 10,
            None,
            None,
            None,
        ),
    ];
    for (l, queue, status, run_at, created_at, lease, completed_at, err) in rows {
        let user = if l == 'a' { "2" } else { "1" };
        c.execute(
            "INSERT INTO tasks (id, user_id, queue, kind, payload, status, run_at, attempts, \
             max_attempts, timeout_ms, lease_owner, lease_expires_at, last_error, created_at, \
             completed_at, updated_at) \
             VALUES ($1::text::uuid, $2, $3, 'k', 'null', $4, $5, 1, 3, 60000, $6, $7, $8, $9, $10, $9)",
            &[
                &tid(l),
                &user,
                &queue,
                &status,
                &run_at,
                &lease.map(|_| "w1"),
                &lease,
                &err,
                &created_at,
                &completed_at,
            ],
        )
        .await
        .unwrap();
    }
    c.execute(
        "INSERT INTO queues (name, paused, updated_at) VALUES ('idle', true, $1)",
        &[&now],
    )
    .await
    .unwrap();

    // queue_depth: the same lines as the SQLite view gives in tests/views.rs.
    assert_eq!(
        psql(
            &url,
            "SELECT queue, paused, pending, scheduled, running, completed, failed, canceled \
             FROM queue_depth"
        ),
        vec![
            "idle|1|0|0|0|0|0|0".to_string(),
            "mail|0|1|1|1|1|1|1".to_string(),
            "video|0|1|0|0|0|0|0".to_string(),
        ]
    );

    // task_overview: attempts, ages, lease time left, readable times, the owner.
    let before = now_ms();
    let lines = psql(
        &url,
        "SELECT id, status, attempts, age_s, lease_left_s, created, run_at, user_id, \"user\" \
         FROM task_overview ORDER BY id",
    );
    let after = now_ms();
    assert_eq!(lines.len(), 7, "{lines:?}");
    let cols: Vec<Vec<&str>> = lines.iter().map(|r| r.split('|').collect()).collect();
    let num = |s: &str| -> f64 { s.parse().unwrap_or_else(|_| panic!("{s:?} in {lines:?}")) };
    let a = &cols[0];
    assert_eq!(&a[..3], &[tid('a').as_str(), "pending", "1/3"]);
    let age = num(a[3]);
    let lo = 3600.0 + (before - now) as f64 / 1000.0 - 0.1;
    let hi = 3600.0 + (after - now) as f64 / 1000.0 + 0.1;
    assert!((lo..=hi).contains(&age), "age_s {age} not in {lo}..{hi}");
    assert_eq!(a[4], "", "lease_left_s is only for running tasks");
    assert_eq!(&a[7..], &["2", "bob (https://idp)"]);
    let running = &cols[2];
    assert_eq!(running[1], "running");
    let left = num(running[4]);
    let lo = 600.0 - (after - now) as f64 / 1000.0 - 0.1;
    let hi = 600.0 - (before - now) as f64 / 1000.0 + 0.1;
    assert!(
        (lo..=hi).contains(&left),
        "lease_left_s {left} not in {lo}..{hi}"
    );
    assert_eq!(&running[7..], &["1", "alice"]);
    let done = &cols[3];
    assert_eq!(done[1], "completed");
    assert_eq!(done[5], "2023-11-14T22:13:20.123Z");
    assert_eq!(done[6], "2023-11-14T22:13:20.123Z");
    for row in &cols {
        assert!(!row[3].is_empty(), "age_s is NULL: {lines:?}");
    }

    // recent_failures: the failed task, with its time.
    let fails = psql(
        &url,
        "SELECT id, queue, attempts, last_error, failed_at IS NOT NULL FROM recent_failures",
    );
    assert_eq!(fails, vec![format!("{}|mail|1|boom|t", tid('e'))]);
}
