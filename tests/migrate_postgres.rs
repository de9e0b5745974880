//! `spool migrate-to-postgres` with the real binaries: a SQLite queue with tasks in every state,
//! messages, users, tokens, a paused queue and an idempotency key is copied, while its server
//! runs, into a fresh database of the throw-away PostgreSQL 15 of `tests/pg/`; a server on
//! PostgreSQL then serves the same tasks, tokens, streams and keys, and a `spool work` there
//! rescues the task that was running. Also: a target that is not empty is refused untouched, and
//! the operator views answer in `psql`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg;

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
    // Runs until the test creates RELEASE.
    let slow = dir.join("slow.sh");
    std::fs::write(
        &slow,
        format!(
            "echo '{{\"kind\":\"step\",\"n\":1}}'\n\
             while [ ! -e {r} ]; do sleep 0.05; done\n\
             echo '{{\"kind\":\"step\",\"n\":2}}'\n",
            r = release.display()
        ),
    )
    .unwrap();
    format!(
        "[kinds.ok]\ncommand = [\"sh\", {ok:?}]\n\
         [kinds.bad]\ncommand = [\"sh\", {bad:?}]\n\
         [kinds.slow]\ncommand = [\"sh\", {slow:?}]\n",
        ok = ok.display().to_string(),
        bad = bad.display().to_string(),
        slow = slow.display().to_string(),
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

/// One event of a text/event-stream.
#[derive(Debug, Default, Clone, PartialEq)]
struct Ev {
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

impl Ev {
    fn name(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }
    fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap_or("null")).unwrap()
    }
}

/// A text/event-stream read block by block.
struct Stream {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Stream {
    async fn open(c: &Client, s: &Server, token: &str, path: &str, last: Option<&str>) -> Stream {
        let mut rb = c.get(s.url(path)).bearer_auth(token);
        if let Some(id) = last {
            rb = rb.header("Last-Event-ID", id);
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), rb.send())
            .await
            .expect("no response headers within 10 s")
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        Stream {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next event with data; None at the end of the stream.
    async fn next(&mut self) -> Option<Ev> {
        let fut = async {
            loop {
                if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
                    let mut ev = Ev::default();
                    for line in String::from_utf8(block).unwrap().lines() {
                        let (f, v) = match line.split_once(':') {
                            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                            None => (line, ""),
                        };
                        match f {
                            "event" => ev.event = Some(v.to_string()),
                            "id" => ev.id = Some(v.to_string()),
                            "data" => ev.data = Some(v.to_string()),
                            _ => {}
                        }
                    }
                    if ev.data.is_some() {
                        return Some(ev);
                    }
                    continue;
                }
                match self.resp.chunk().await.unwrap() {
                    Some(b) => self.buf.extend(b.iter().filter(|b| **b != b'\r')),
                    None => return None,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(15), fut)
            .await
            .expect("no SSE event within 15 s")
    }

    /// Every event up to and including `end` (the stream must end with it).
    async fn until_end(&mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        loop {
            let ev = self.next().await.expect("the stream ended before `end`");
            let end = ev.name() == "end";
            out.push(ev);
            if end {
                return out;
            }
        }
    }
}

/// `psql` (Debian's) on the database at `url`, as the `postgres` user when this is root, as the
/// operator would run it: one `|`-separated line per row.
fn psql(url: &str, sql: &str) -> Vec<String> {
    let root = nix::unistd::geteuid().is_root();
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "psql"]);
        c
    } else {
        Command::new("psql")
    };
    let out = cmd
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
        .unwrap_or_else(|e| panic!("psql is needed (Debian's postgresql-client): {e}"));
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

    // The same tasks, queues and messages, read through the API of each.
    let tasks_a = all_tasks(&c, &a, &admin).await;
    assert_eq!(tasks_a.len(), 6);
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
            "running"
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
        &a,
        &admin,
        &format!("/v1/tasks/{completed}/events"),
        None,
    )
    .await;
    let evs_a = on_a.until_end().await;
    let msgs_a: Vec<&Ev> = evs_a.iter().filter(|e| e.name() == "message").collect();
    assert_eq!(msgs_a.len(), 2, "{evs_a:?}");
    let first = msgs_a[0].id.clone().unwrap();
    let mut on_b = Stream::open(
        &c,
        &b,
        &admin,
        &format!("/v1/tasks/{completed}/events"),
        Some(&first),
    )
    .await;
    let evs_b = on_b.until_end().await;
    let msgs_b: Vec<&Ev> = evs_b.iter().filter(|e| e.name() == "message").collect();
    assert_eq!(msgs_b, vec![msgs_a[1]], "exactly the message after {first}");

    // The change feed resumes on B with a Last-Event-ID seen on A: the same changes after it.
    let mut feed_a = Stream::open(&c, &a, &admin, "/v1/events?after=0", None).await;
    let mut seen_a = Vec::new();
    let total: i64 = common::open_db(dir_a.path())
        .query_row("SELECT count(*) FROM task_changes", [], |r| r.get(0))
        .unwrap();
    for _ in 0..total {
        seen_a.push(feed_a.next().await.unwrap());
    }
    let mid = seen_a[seen_a.len() / 2].id.clone().unwrap();
    let mut feed_b = Stream::open(&c, &b, &admin, "/v1/events", Some(&mid)).await;
    let mut seen_b = Vec::new();
    for _ in 0..(total as usize - seen_a.len() / 2 - 1) {
        seen_b.push(feed_b.next().await.unwrap());
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
    let mut feed = Stream::open(&c, &b, &admin, "/v1/events", Some(&last_change.to_string())).await;
    let ev = feed.next().await.unwrap();
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
    let (st, _) = post(&c, &b, &admin, "/v1/queues/held/resume", json!({})).await;
    assert_eq!(st, StatusCode::OK);
    wait_status(&c, &b, &admin, &pending, "completed").await;
    wait_status(&c, &b, &admin, &fresh, "completed").await;
    let s = get(&c, &b, &admin, &format!("/v1/tasks/{scheduled}")).await;
    assert_eq!(s["status"], "pending", "still waiting for its run_at: {s}");
}
