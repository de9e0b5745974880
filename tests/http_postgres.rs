//! The real `spool serve` and `spool work` binaries on a PostgreSQL database (a fresh one per test
//! on the throw-away PostgreSQL 15 of `tests/pg/`): the HTTP API, idempotency across two servers
//! on one database, SSE resume and long polls across them, `/metrics` and `spool inspect`, a
//! worker in another process, spool behind PgBouncer (session mode works, transaction mode is
//! refused with 503 naming the pool mode), and 503 (never 500) when the database cannot be
//! reached.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::pg;

use common::sse::{Stream, EVENT_LIMIT};
use common::{client, eventually, serve, spawn, write_config, Server};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

// ---- helpers ------------------------------------------------------------------------------

/// A server on its own directory (config, `admin.token`, logs).
struct Env {
    srv: Server,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Env {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.srv
    }
}

/// `spool serve` on the database at `url`, `extra` appended to its config.
fn start(url: &str, extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &format!("{extra}\n[database]\nurl = {url:?}\n"));
    let srv = serve(&cfg, &[]);
    Env { srv, _dir: dir }
}

/// Two servers on one fresh database; both use the admin token the first one wrote.
async fn two_servers(extra: &str) -> (Env, Env) {
    let url = pg::server().fresh_db().await;
    let a = start(&url, extra);
    let mut b = start(&url, extra);
    assert!(
        b.srv.token.is_empty(),
        "only the first start writes a token"
    );
    b.srv.token = a.token.clone();
    (a, b)
}

async fn post(c: &Client, s: &Server, path: &str, body: Value) -> (StatusCode, Value) {
    let r = c
        .post(s.url(path))
        .bearer_auth(&s.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap())
}

async fn get(c: &Client, s: &Server, path: &str) -> (StatusCode, Value) {
    let r = c
        .get(s.url(path))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap())
}

async fn create(c: &Client, s: &Server, body: Value) -> String {
    let (st, t) = post(c, s, "/v1/tasks", body).await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    t["id"].as_str().unwrap().to_string()
}

// ---- the API -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_created_read_listed_canceled_and_retried_over_http_on_postgres() {
    let url = pg::server().fresh_db().await;
    let s = start(&url, "[worker]\nconcurrency = 0");
    let c = client();

    let id = create(
        &c,
        &s,
        json!({"kind": "spool.noop", "payload": {"n": 1}, "queue": "q"}),
    )
    .await;
    let (st, t) = get(&c, &s, &format!("/v1/tasks/{id}")).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(t["status"], "pending");
    assert_eq!(t["payload"], json!({"n": 1}));
    assert_eq!(t["queue"], "q");

    let other = create(&c, &s, json!({"kind": "spool.noop"})).await;
    let (st, list) = get(&c, &s, "/v1/tasks?limit=1").await;
    assert_eq!(st, StatusCode::OK, "{list}");
    assert_eq!(list["tasks"][0]["id"], other.as_str(), "newest first");
    let cursor = list["next_cursor"].as_str().unwrap().to_string();
    let (_, page2) = get(&c, &s, &format!("/v1/tasks?limit=1&cursor={cursor}")).await;
    assert_eq!(page2["tasks"][0]["id"], id.as_str());
    assert_eq!(page2["tasks"].as_array().unwrap().len(), 1);
    let (_, q) = get(&c, &s, "/v1/tasks?queue=q").await;
    assert_eq!(q["tasks"].as_array().unwrap().len(), 1);

    let (st, t) = post(&c, &s, &format!("/v1/tasks/{id}/cancel"), json!({})).await;
    assert_eq!(
        (st, t["status"].as_str()),
        (StatusCode::OK, Some("canceled"))
    );
    let (st, e) = post(&c, &s, &format!("/v1/tasks/{id}/cancel"), json!({})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "conflict");
    let (st, t) = post(&c, &s, &format!("/v1/tasks/{id}/retry"), json!({})).await;
    assert_eq!(
        (st, t["status"].as_str()),
        (StatusCode::OK, Some("pending"))
    );
    assert_eq!(t["attempts"], 0);
    let (st, e) = post(&c, &s, &format!("/v1/tasks/{id}/retry"), json!({})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");

    let (st, e) = get(&c, &s, &format!("/v1/tasks/{}", uuid::Uuid::now_v7())).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_on_two_servers_makes_one_task() {
    let (a, b) = two_servers("[worker]\nconcurrency = 0").await;
    let body = json!({"kind": "spool.noop", "payload": {"x": 1}});
    let mut calls = Vec::new();
    for i in 0..16 {
        let url = if i % 2 == 0 {
            a.url("/v1/tasks")
        } else {
            b.url("/v1/tasks")
        };
        let (tok, body) = (a.token.clone(), body.clone());
        calls.push(tokio::spawn(async move {
            let r = client()
                .post(url)
                .bearer_auth(tok)
                .header("Idempotency-Key", "one-key")
                .json(&body)
                .send()
                .await
                .unwrap();
            let st = r.status();
            (st, r.json::<Value>().await.unwrap())
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut created = 0;
    for call in calls {
        let (st, t) = call.await.unwrap();
        assert!(
            st == StatusCode::CREATED || st == StatusCode::OK,
            "{st} {t}"
        );
        created += usize::from(st == StatusCode::CREATED);
        ids.insert(t["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "every answer names one task: {ids:?}");
    assert_eq!(created, 1, "exactly one request created it");
    let c = client();
    let (_, list) = get(&c, &b, "/v1/tasks").await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1, "{list}");

    // The key with another body, on either server: 422, nothing new.
    for s in [&a, &b] {
        let r = c
            .post(s.url("/v1/tasks"))
            .bearer_auth(&a.token)
            .header("Idempotency-Key", "one-key")
            .json(&json!({"kind": "spool.noop", "payload": {"x": 2}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "idempotency_mismatch", "{e}");
    }
    let (_, list) = get(&c, &a, "/v1/tasks").await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1, "{list}");
}

// ---- SSE -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_streams_resume_after_last_event_id_with_messages_from_the_other_server() {
    let (a, b) = two_servers("[worker]\nconcurrency = 0").await;
    let c = client();
    let id = create(&c, &a, json!({"kind": "spool.noop"})).await;
    let msgs = format!("/v1/tasks/{id}/messages");
    let say = |i: i64| {
        let (c, b, msgs) = (c.clone(), &b, msgs.clone());
        async move {
            let (st, m) = post(&c, b, &msgs, json!({"kind": "log", "content": {"i": i}})).await;
            assert_eq!(st, StatusCode::CREATED, "{m}");
        }
    };
    for i in 1..=3 {
        say(i).await;
    }

    // On server A: the status, then the three messages written through B.
    let events = format!("/v1/tasks/{id}/events");
    let mut s = Stream::open(&c, &a.url(&events), &a.token, None).await;
    assert_eq!(s.expect("status").await.json()["status"], "pending");
    let mut seen = Vec::new();
    let mut last_id = String::new();
    for _ in 0..2 {
        let ev = s.expect("message").await;
        seen.push(ev.json()["content"]["i"].as_i64().unwrap());
        last_id = ev.id.clone().unwrap();
    }
    drop(s);

    // Missed while away: message 3 and more; then live ones; then the end.
    for i in 4..=6 {
        say(i).await;
    }
    let mut s = Stream::open(&c, &a.url(&events), &a.token, Some(&last_id)).await;
    assert_eq!(s.expect("status").await.json()["status"], "pending");
    for _ in 0..4 {
        seen.push(
            s.expect("message").await.json()["content"]["i"]
                .as_i64()
                .unwrap(),
        );
    }
    say(7).await;
    seen.push(
        s.expect("message").await.json()["content"]["i"]
            .as_i64()
            .unwrap(),
    );
    let (st, _) = post(&c, &b, &format!("/v1/tasks/{id}/cancel"), json!({})).await;
    assert_eq!(st, StatusCode::OK);
    loop {
        let ev = s
            .next(EVENT_LIMIT)
            .await
            .expect("the stream ended without `end`");
        match ev.name() {
            "status" => continue,
            "end" => {
                assert_eq!(ev.json()["status"], "canceled");
                break;
            }
            other => panic!("unexpected {other}: {ev:?}"),
        }
    }
    assert_eq!(
        seen,
        (1..=7).collect::<Vec<i64>>(),
        "every message once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_stream_resumes_after_last_event_id_with_the_other_servers_changes() {
    let (a, b) = two_servers("[worker]\nconcurrency = 0").await;
    let c = client();
    let mut s = Stream::open(&c, &a.url("/v1/events"), &a.token, None).await;
    let t1 = create(&c, &b, json!({"kind": "spool.noop"})).await;
    let ev = s.expect("status").await;
    assert_eq!(
        (ev.json()["id"].as_str(), ev.json()["status"].as_str()),
        (Some(t1.as_str()), Some("pending"))
    );
    let seen: i64 = ev.id.unwrap().parse().unwrap();
    drop(s);

    let (st, _) = post(&c, &b, &format!("/v1/tasks/{t1}/cancel"), json!({})).await;
    assert_eq!(st, StatusCode::OK);
    let t2 = create(&c, &b, json!({"kind": "spool.noop"})).await;
    let mut s = Stream::open(&c, &a.url("/v1/events"), &a.token, Some(&seen.to_string())).await;
    let mut got = Vec::new();
    let mut last = seen;
    for _ in 0..2 {
        let ev = s.expect("status").await;
        let id: i64 = ev.id.as_deref().unwrap().parse().unwrap();
        assert!(id > last, "ids rise: {id} after {last}");
        last = id;
        let t = ev.json();
        got.push((
            t["id"].as_str().unwrap().to_string(),
            t["status"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(
        got,
        vec![
            (t1, "canceled".to_string()),
            (t2.clone(), "pending".to_string())
        ]
    );

    // And live from there, a change made through B.
    let (st, _) = post(&c, &b, &format!("/v1/tasks/{t2}/cancel"), json!({})).await;
    assert_eq!(st, StatusCode::OK);
    let t = s.expect("status").await.json();
    assert_eq!(
        (t["id"].as_str(), t["status"].as_str()),
        (Some(t2.as_str()), Some("canceled"))
    );
}

// ---- a worker in another process -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_work_process_runs_tasks_enqueued_through_a_serve_with_no_slots() {
    let url = pg::server().fresh_db().await;
    let s = start(&url, "[worker]\nconcurrency = 0\npoll_interval_ms = 100\n[kinds.shout]\ncommand = [\"sh\", \"-c\", \"cat; echo '{\\\"kind\\\":\\\"progress\\\",\\\"n\\\":1}'\"]\n");
    let _worker = spawn(&["work"], &s.config, &[("SPOOL_WORKER_CONCURRENCY", "2")]);
    let c = client();
    let noop = create(&c, &s, json!({"kind": "spool.noop"})).await;
    let sleep = create(
        &c,
        &s,
        json!({"kind": "spool.sleep", "payload": {"ms": 50}}),
    )
    .await;
    let cmd = create(&c, &s, json!({"kind": "shout", "payload": {"hello": "pg"}})).await;
    for id in [&noop, &sleep, &cmd] {
        let t = s.wait_terminal(id).await;
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["attempts"], 1, "{t}");
    }
    let (st, m) = get(&c, &s, &format!("/v1/tasks/{cmd}/messages")).await;
    assert_eq!(st, StatusCode::OK, "{m}");
    assert!(
        !m["messages"].as_array().unwrap().is_empty(),
        "the command's output reached the database: {m}"
    );
}

// ---- long polls, metrics and inspect -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_one_server_returns_the_message_and_the_end_written_through_the_other() {
    // No NOTIFY reaches a long poll from another host: server A finds B's rows at its poll tick.
    let (a, b) = two_servers("[worker]\nconcurrency = 0\npoll_interval_ms = 200").await;
    let c = client();
    let id = create(&c, &a, json!({"kind": "spool.noop"})).await;
    let msgs = format!("/v1/tasks/{id}/messages");
    let long_poll = |after: i64| {
        let (c, url, tok) = (
            c.clone(),
            a.url(&format!("{msgs}?after={after}&wait_ms=20000")),
            a.token.clone(),
        );
        tokio::spawn(async move {
            let r = c.get(url).bearer_auth(tok).send().await.unwrap();
            let st = r.status();
            (st, r.json::<Value>().await.unwrap())
        })
    };

    let poll = long_poll(0);
    // Give the poll time to be waiting (the result is checked below, not the timing).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!poll.is_finished(), "A's long poll returned before B wrote");
    let (st, m) = post(&c, &b, &msgs, json!({"kind": "ping", "content": "from b"})).await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    let (st, r) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("A's long poll did not return within 10 s of B's message (wait_ms was 20 s)")
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{r}");
    let got = r["messages"].as_array().unwrap();
    assert_eq!(got.len(), 1, "{r}");
    assert_eq!(
        (&got[0]["id"], &got[0]["content"]),
        (&m["id"], &json!("from b"))
    );
    assert_eq!(r["next_after"], m["id"]);

    // The task ended through B ends A's next long poll with the terminal status.
    let last = m["id"].as_i64().unwrap();
    let poll = long_poll(last);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "A's long poll returned before B canceled"
    );
    let (st, t) = post(&c, &b, &format!("/v1/tasks/{id}/cancel"), json!({})).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let (st, r) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("A's long poll did not return after B canceled the task")
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["task_status"], "canceled", "{r}");
    assert_eq!(r["messages"], json!([]), "{r}");
    assert_eq!(r["next_after"], last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_queues_and_inspect_count_and_list_what_postgres_holds() {
    let url = pg::server().fresh_db().await;
    // Nobody works `held`: its tasks stay pending. `bad` fails in `default` at its one attempt.
    let s = start(
        &url,
        "[worker]\nconcurrency = 1\npoll_interval_ms = 100\nqueues = [\"default\"]\n\
         [kinds.bad]\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n[queues.held]\nconcurrency = 1\n",
    );
    let c = client();
    let tasks: Vec<Value> = (0..3)
        .map(|i| json!({"kind": "spool.noop", "queue": "held", "payload": {"i": i}}))
        .collect();
    let (st, r) = post(&c, &s, "/v1/tasks/batch", json!({ "tasks": tasks })).await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let bad = create(&c, &s, json!({"kind": "bad", "max_attempts": 1})).await;
    let t = s.wait_terminal(&bad).await;
    assert_eq!(t["status"], "failed", "{t}");

    // /metrics: the depth gauges read from the database (at most once a second).
    let text = eventually(Duration::from_secs(20), "the depths in /metrics", || {
        let c = c.clone();
        let url = s.url("/metrics");
        async move {
            let text = c.get(url).send().await.ok()?.text().await.ok()?;
            (text.contains(r#"spool_queue_depth{queue="held",status="pending"} 3"#)
                && text.contains(r#"spool_queue_depth{queue="default",status="failed"} 1"#))
            .then_some(text)
        }
    })
    .await;
    assert!(
        text.contains(r#"spool_tasks_enqueued_total{queue="held",kind="spool.noop"} 3"#),
        "{text}"
    );

    // GET /v1/queues.
    let (st, q) = get(&c, &s, "/v1/queues").await;
    assert_eq!(st, StatusCode::OK, "{q}");
    let queue = |v: &Value, name: &str| {
        v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("no queue {name} in {v}"))
            .clone()
    };
    assert_eq!(queue(&q, "held")["pending"], 3, "{q}");
    assert_eq!(queue(&q, "default")["failed"], 1, "{q}");

    // spool inspect, as JSON and as a table, on the same config.
    let v: Value = serde_json::from_str(&s.cli_ok(&["inspect", "--json"])).unwrap();
    assert_eq!(queue(&v, "held")["pending"], 3, "{v}");
    assert_eq!(queue(&v, "default")["failed"], 1, "{v}");
    assert_eq!(v["running"], json!([]), "{v}");
    let failures = v["recent_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{v}");
    assert_eq!(failures[0]["id"], bad.as_str(), "{v}");
    let table = s.cli_ok(&["inspect"]);
    assert!(table.contains("postgres"), "names its database: {table}");
    let held = table
        .lines()
        .find(|l| l.starts_with("held "))
        .unwrap_or_else(|| panic!("no row for held: {table}"));
    assert_eq!(
        held.split_whitespace().nth(2),
        Some("3"),
        "held's PENDING column: {table}"
    );
    assert!(
        table
            .split("RECENT FAILURES")
            .nth(1)
            .is_some_and(|f| f.contains(&bad)),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_lists_each_worker_process_by_host_with_the_tasks_it_holds() {
    let url = pg::server().fresh_db().await;
    let s = start(
        &url,
        "[worker]\nconcurrency = 0\npoll_interval_ms = 100\n[kinds.hold]\ncommand = [\"sleep\", \"60\"]\n",
    );
    // Heartbeats every 200 ms; a short grace, so a stop does not wait on the defaults.
    let work = |host: &'static str| {
        spawn(
            &["work"],
            &s.config,
            &[
                ("HOSTNAME", host),
                ("SPOOL_WORKER_CONCURRENCY", "1"),
                ("SPOOL_WORKER_LEASE_MS", "600"),
                ("SPOOL_SHUTDOWN_GRACE_MS", "2000"),
            ],
        )
    };
    let a = work("host-a");
    // No HOSTNAME (as under systemd): the system's host name.
    let mut b = work("");
    let system = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(
        system, "localhost",
        "the fallback is told from the old default only on a host with a name of its own"
    );
    let c = client();
    let id = create(&c, &s, json!({"kind": "hold"})).await;
    // `spool inspect --json`, at most four times a second (each run is a process).
    let inspect = || async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        serde_json::from_str::<Value>(&s.cli_ok(&["inspect", "--json"])).unwrap()
    };
    let inspect = &inspect;
    // Both registered, one holding the task, and each has heartbeated since it registered.
    let v = eventually(
        Duration::from_secs(20),
        "both workers, one holding the task, both heartbeating",
        move || async move {
            let v = inspect().await;
            let workers = v["workers"].as_array().unwrap();
            let beat = workers
                .iter()
                .all(|w| w["heartbeat_at"].as_str() > w["started_at"].as_str());
            (workers.len() == 2 && beat && v["running"].as_array().unwrap().len() == 1).then_some(v)
        },
    )
    .await;
    let workers = v["workers"].as_array().unwrap();
    let mut by_host: Vec<(String, i64)> = workers
        .iter()
        .map(|w| {
            (
                w["host"].as_str().unwrap().to_string(),
                w["pid"].as_i64().unwrap(),
            )
        })
        .collect();
    by_host.sort();
    let mut want = vec![
        ("host-a".to_string(), i64::from(a.pid())),
        (system.clone(), i64::from(b.pid())),
    ];
    want.sort();
    assert_eq!(by_host, want, "{v}");
    let holder = &v["running"][0]["lease_owner"];
    assert_eq!(v["running"][0]["id"], id.as_str(), "{v}");
    for w in workers {
        let holds = i64::from(&w["id"] == holder);
        assert_eq!(w["running"], holds, "the task is held by {holder}: {v}");
        assert!(w["heartbeat_age_ms"].as_i64().unwrap() >= 0, "{v}");
    }
    let table = s.cli_ok(&["inspect"]);
    let line = table
        .lines()
        .find(|l| l.contains("host-a"))
        .unwrap_or_else(|| panic!("no worker of host-a: {table}"));
    assert!(line.contains(&a.pid().to_string()), "{table}");
    assert!(table.contains("WORKERS (2)"), "{table}");

    // A worker that stops is gone from the list.
    let (st, t) = post(&c, &s, &format!("/v1/tasks/{id}/cancel"), json!({})).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert!(b.terminate(Duration::from_secs(30)).unwrap().success());
    let v = eventually(
        Duration::from_secs(20),
        "one worker left",
        move || async move {
            let v = inspect().await;
            (v["workers"].as_array().unwrap().len() == 1).then_some(v)
        },
    )
    .await;
    assert_eq!(v["workers"][0]["host"], "host-a", "{v}");
}

// ---- behind PgBouncer ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_runs_behind_pgbouncer_in_session_mode_woken_by_notify_through_it() {
    let direct = pg::server().fresh_db().await;
    // PgBouncer as it comes: it refuses startup parameters it does not know, such as `options`.
    let bouncer = pg::Bouncer::start("session");
    let dir = tempfile::tempdir().unwrap();
    let migrate = |url: &str| {
        let cfg = write_config(dir.path(), &format!("[database]\nurl = {url:?}\n"));
        common::spool_cli(&cfg, &["migrate"])
    };
    // `options` of the user's own in the URL are refused by it, and spool says what to do.
    let out = migrate(&format!(
        "{}?options=-c%20statement_timeout%3D0",
        bouncer.url(&direct)
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("unsupported startup parameter") && err.contains("take it out of the URL"),
        "{err}"
    );
    let out = migrate(&bouncer.url(&direct));
    assert!(out.status.success(), "{out:?}");

    // Each session that inserts tasks records its idle_in_transaction_session_timeout: spool
    // sets it on every pooled connection, through the pooler.
    let db = pg::server().client(&direct).await;
    db.batch_execute(
        "CREATE TABLE seen_timeouts (pid int, timeout text);
         CREATE FUNCTION record_timeout() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO seen_timeouts
             VALUES (pg_backend_pid(), current_setting('idle_in_transaction_session_timeout'));
           RETURN NULL;
         END $$;
         CREATE TRIGGER record_timeout AFTER INSERT ON tasks
           FOR EACH STATEMENT EXECUTE FUNCTION record_timeout();",
    )
    .await
    .unwrap();

    // Serve and work through it. The worker polls once a minute, so tasks enqueued after it
    // started run within the test only if its LISTEN, through the pooler, hears the enqueues'
    // NOTIFY.
    let s = start(
        &bouncer.url(&direct),
        "[worker]\nconcurrency = 0\npoll_interval_ms = 60000\n",
    );
    let _worker = spawn(&["work"], &s.config, &[("SPOOL_WORKER_CONCURRENCY", "2")]);
    let c = client();
    // The worker has started (and made its first claim) once it is registered.
    eventually(Duration::from_secs(20), "the worker to register", || {
        let db = &db;
        async move {
            let n: i64 = db
                .query_one("SELECT count(*) FROM workers", &[])
                .await
                .ok()?
                .get(0);
            (n == 1).then_some(())
        }
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(create(&c, &s, json!({"kind": "spool.noop", "payload": {"i": i}})).await);
    }
    let (st, r) = post(
        &c,
        &s,
        "/v1/tasks/batch",
        json!({"tasks": [{"kind": "spool.noop"}, {"kind": "spool.noop"}]}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    ids.extend(
        r["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string()),
    );
    for id in &ids {
        let t = tokio::time::timeout(Duration::from_secs(30), s.wait_terminal(id))
            .await
            .expect("a task did not run within 30 s (the worker's poll is a minute)");
        assert_eq!(t["status"], "completed", "{t}");
    }
    // Messages through it too (on a task due in an hour, which takes them).
    let later = create(&c, &s, json!({"kind": "spool.noop", "delay_ms": 3_600_000})).await;
    let (st, m) = post(
        &c,
        &s,
        &format!("/v1/tasks/{later}/messages"),
        json!({"kind": "log", "content": "through the pooler"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    let (_, page) = get(&c, &s, &format!("/v1/tasks/{later}/messages")).await;
    assert_eq!(
        page["messages"][0]["content"], "through the pooler",
        "{page}"
    );
    // Every insert ran in a session with the timeout of database.busy_timeout_ms (5 s by
    // default), not PostgreSQL's default of none.
    let seen: Vec<String> = db
        .query("SELECT timeout FROM seen_timeouts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!seen.is_empty(), "no insert was recorded");
    assert!(seen.iter().all(|t| t == "5s"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_in_transaction_mode_gets_503_naming_the_pool_mode_never_500() {
    let direct = pg::server().fresh_db().await;
    let bouncer = pg::Bouncer::start("transaction");
    let s = start(
        &bouncer.url(&direct),
        "[worker]\nconcurrency = 0\n[limits]\nrequests_per_second = 0\n",
    );
    let c = client();
    // Eight clients at once, each enqueueing and reading: statements prepared through one
    // server session are sent through another.
    let mut clients = Vec::new();
    for n in 0..8 {
        let (c, url, token) = (c.clone(), s.url("/v1/tasks"), s.token.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..15 {
                let r = c
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"kind": "spool.noop", "payload": {"n": n, "i": i}}))
                    .send()
                    .await
                    .unwrap();
                let st = r.status();
                seen.push((st, r.json::<Value>().await.unwrap()));
                let r = c.get(&url).bearer_auth(&token).send().await.unwrap();
                let st = r.status();
                seen.push((st, r.json::<Value>().await.unwrap()));
            }
            seen
        }));
    }
    let mut created = Vec::new();
    let mut refused = 0;
    for h in clients {
        for (st, body) in h.await.unwrap() {
            match st {
                StatusCode::CREATED => created.push(body["id"].as_str().unwrap().to_string()),
                StatusCode::OK => {}
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(body["error"]["code"], "unavailable", "{body}");
                    let msg = body["error"]["message"].as_str().unwrap();
                    if msg.contains("pool_mode = session") {
                        refused += 1;
                    }
                }
                other => panic!("{other}: {body}"),
            }
        }
    }
    assert!(refused > 0, "no 503 named the pool mode");
    // From the first lost statement on, the server does no database work at all.
    let (st, body) = get(&c, &s, "/v1/tasks").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does no more database work"),
        "{body}"
    );
    let ready = c.get(s.url("/readyz")).send().await.unwrap().status();
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
    eprintln!(
        "through PgBouncer in transaction mode: {} enqueues acknowledged, {refused} answers 503 \
         naming the pool mode",
        created.len()
    );
    // Each acknowledged enqueue is in the database (read directly, not through the pooler).
    let db = pg::server().client(&direct).await;
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM tasks WHERE id::text = ANY($1)",
            &[&created],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored as usize, created.len());
}

// ---- the database out of reach ---------------------------------------------------------------

/// A loopback TCP relay to the test PostgreSQL that the test can cut (every connection closed,
/// new ones refused) and restore on the same port.
struct Relay {
    port: u16,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start() -> Relay {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let r = Relay {
            port,
            tasks: Default::default(),
        };
        r.serve(l);
        r
    }

    fn serve(&self, l: tokio::net::TcpListener) {
        let tasks = self.tasks.clone();
        let pg_port = pg::server().port;
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = l.accept().await else {
                    return;
                };
                let conn = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", pg_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Closes every connection and the listening port.
    async fn cut(&self) {
        let all: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for t in all {
            t.abort();
            let _ = t.await;
        }
    }

    async fn restore(&self) {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(l);
    }

    /// The URL of database `db` through this relay.
    fn url(&self, direct: &str) -> String {
        let db = direct.rsplit('/').next().unwrap();
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_503_never_500_while_postgres_is_out_of_reach_and_recovers() {
    let relay = Relay::start().await;
    let url = relay.url(&pg::server().fresh_db().await);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("[worker]\nconcurrency = 0\n[database]\nurl = {url:?}\nbusy_timeout_ms = 1000\n"),
    );
    let s = serve(&cfg, &[]);
    let c = client();
    let id = create(&c, &s, json!({"kind": "spool.noop"})).await;

    relay.cut().await;
    let answers = [
        ("GET", "/v1/tasks".to_string()),
        ("GET", format!("/v1/tasks/{id}")),
        ("POST", "/v1/tasks".to_string()),
        ("POST", format!("/v1/tasks/{id}/cancel")),
    ];
    for (method, path) in &answers {
        for _ in 0..2 {
            let rb = match *method {
                "GET" => c.get(s.url(path)),
                _ => c.post(s.url(path)).json(&json!({"kind": "spool.noop"})),
            };
            let r = rb.bearer_auth(&s.token).send().await.unwrap();
            assert_eq!(
                r.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{method} {path}"
            );
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "unavailable", "{method} {path}: {e}");
        }
    }
    let r = c.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz while down"
    );

    relay.restore().await;
    let back = eventually(
        Duration::from_secs(30),
        "the server to reach the database again",
        || async {
            let (st, t) = get(&c, &s, &format!("/v1/tasks/{id}")).await;
            (st == StatusCode::OK).then_some(t)
        },
    )
    .await;
    assert_eq!(
        back["status"], "pending",
        "the cancel answered 503 was not committed: {back}"
    );
    let (_, list) = get(&c, &s, "/v1/tasks").await;
    assert_eq!(
        list["tasks"].as_array().unwrap().len(),
        1,
        "the POSTs answered 503 wrote nothing"
    );
    assert!(!s.proc.stderr().contains("panicked"), "{}", s.proc.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_postgres_down_at_start_exits_with_a_one_line_error_not_a_panic() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://postgres:secret@127.0.0.1:{port}/spool");
    let cfg = write_config(dir.path(), &format!("[database]\nurl = {url:?}\n"));
    for cmd in ["serve", "work"] {
        let mut p = spawn(&[cmd], &cfg, &[("RUST_LOG", "off")]);
        let status = p
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("spool {cmd} did not exit"));
        assert!(!status.success(), "{cmd}: {status:?}");
        assert!(
            status.code().is_some(),
            "{cmd}: ended by a signal: {status:?}"
        );
        let err = p.stderr();
        assert!(!err.contains("panicked"), "{cmd}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{cmd}: one line: {err}");
        assert!(lines[0].starts_with("error: "), "{cmd}: {err}");
        assert!(
            !err.contains("secret"),
            "{cmd}: the password is not shown: {err}"
        );
    }
}

// ---- wake-ups across processes (LISTEN/NOTIFY) ------------------------------------------------

/// How many sessions on database `db` other than `c`'s own listen for wake-ups.
async fn listeners(c: &tokio_postgres::Client, db: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
         AND query LIKE '%LISTEN spool_work%' AND pid <> pg_backend_pid()",
        &[&db],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until `n` sessions on database `db` other than `c`'s own listen for wake-ups.
async fn until_listeners(c: &tokio_postgres::Client, db: &str, n: i64) {
    eventually(Duration::from_secs(30), "the wake-up listeners", || async {
        (listeners(c, db).await >= n).then_some(())
    })
    .await
}

/// A notification that never comes (PgBouncer in transaction mode, a link dropped between a
/// commit and its NOTIFY) delays a task by at most one poll, never strands it: a task written
/// with no NOTIFY at all while the worker listens, due a second and a half later (so the look a
/// worker takes when it starts listening cannot find it), runs at one of the worker's polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_notification_is_lost_runs_at_the_workers_next_poll() {
    let url = pg::server().fresh_db().await;
    let db = url.rsplit('/').next().unwrap().to_string();
    let s = start(&url, "[worker]\nconcurrency = 0\npoll_interval_ms = 1000");
    let _worker = spawn(&["work"], &s.config, &[("SPOOL_WORKER_CONCURRENCY", "2")]);
    let pg = pg::server().client(&url).await;
    until_listeners(&pg, &db, 1).await;
    let id = uuid::Uuid::now_v7();
    pg.execute(
        "INSERT INTO tasks (id, user_id, queue, kind, payload, status, run_at, max_attempts, \
         timeout_ms, created_at, updated_at) \
         SELECT $1, u.id::text, 'default', 'spool.noop', 'null', 'pending', n.ms + 1500, 3, \
                60000, n.ms, n.ms \
         FROM (SELECT id FROM users ORDER BY id LIMIT 1) u, \
              (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms) n",
        &[&id],
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(15),
        "the task written without a NOTIFY to run",
        || async {
            let status: String = pg
                .query_one("SELECT status FROM tasks WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            (status == "completed").then_some(())
        },
    )
    .await;
}

/// A `spool work` process starts the tasks a `concurrency = 0` server takes within seconds
/// though it polls once a minute (woken by NOTIFY), also after its listening session is cut;
/// only the worker listens, until a `/v1/events` stream opens on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_another_process_is_woken_by_notify_not_by_its_poll_even_after_its_listener_is_cut(
) {
    let url = pg::server().fresh_db().await;
    let db = url.rsplit('/').next().unwrap().to_string();
    // Polling once every 60 s: a start within seconds is the notification's doing.
    let s = start(&url, "[worker]\nconcurrency = 0\npoll_interval_ms = 60000");
    let _worker = spawn(&["work"], &s.config, &[("SPOOL_WORKER_CONCURRENCY", "2")]);
    let pg = pg::server().client(&url).await;
    // The worker listens; the front end (no slots, no /v1/events stream) does not.
    until_listeners(&pg, &db, 1).await;
    let c = client();
    let run = |s: &Env| {
        let c = c.clone();
        let (base, tok) = (s.url("/v1/tasks"), s.token.clone());
        async move {
            let r = c
                .post(base.clone())
                .bearer_auth(&tok)
                .json(&json!({"kind": "spool.noop"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let id = r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            eventually(
                Duration::from_secs(5),
                "the task to run (woken, not polled)",
                || async {
                    let t: Value = c
                        .get(format!("{base}/{id}"))
                        .bearer_auth(&tok)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    (t["status"] == "completed").then_some(())
                },
            )
            .await;
        }
    };
    // Once the worker's first look found nothing and it sleeps: three tasks, one after another.
    for _ in 0..3 {
        run(&s).await;
    }
    assert_eq!(listeners(&pg, &db).await, 1, "only the worker listens");

    // Its listening connection cut: it listens again, and tasks start as fast as before.
    let killed = pg
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 \
             AND query LIKE '%LISTEN spool_work%' AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(killed, 1);
    until_listeners(&pg, &db, 1).await;
    for _ in 0..3 {
        run(&s).await;
    }

    // A /v1/events stream open on the front end: it listens too, so other processes' changes
    // reach the stream at once rather than at its poll.
    let events = c
        .get(s.url("/v1/events"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    until_listeners(&pg, &db, 2).await;
    drop(events);
}
