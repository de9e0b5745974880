//! Integration tests of the HTTP API (API.md) against the real `spool serve` binary on 127.0.0.1:
//! every route's success and documented failures, hostile input, concurrency, pagination while
//! tasks are added, a foreign write lock, and a full disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{client, eventually, open_db, serve, write_config, Server};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---- helpers ------------------------------------------------------------------------------

/// A server on its own temp dir; the server is stopped before the directory is removed.
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

fn start(extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), extra);
    let srv = serve(&cfg, &[]);
    Env { srv, _dir: dir }
}

/// Parses a body as JSON, or keeps it as a string when it is not JSON.
fn parse_body(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

async fn call(
    c: &Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut rb = c.request(method.clone(), url);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let resp = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, parse_body(text))
}

async fn get(c: &Client, url: &str, token: &str) -> (StatusCode, Value) {
    call(c, Method::GET, url, Some(token), None).await
}

async fn post(c: &Client, url: &str, token: &str, body: &Value) -> (StatusCode, Value) {
    call(c, Method::POST, url, Some(token), Some(body)).await
}

async fn post_empty(c: &Client, url: &str, token: &str) -> (StatusCode, Value) {
    call(c, Method::POST, url, Some(token), None).await
}

/// Enqueues one task and insists on 201.
async fn create(c: &Client, s: &Server, token: &str, body: Value) -> Value {
    let (st, t) = post(c, &s.url("/v1/tasks"), token, &body).await;
    assert_eq!(st, StatusCode::CREATED, "create {body}: {t}");
    t
}

fn id_of(t: &Value) -> String {
    t["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {t}"))
        .to_string()
}

async fn task_status(c: &Client, s: &Server, id: &str) -> String {
    let (st, t) = get(c, &s.url(&format!("/v1/tasks/{id}")), &s.token).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    t["status"].as_str().unwrap().to_string()
}

async fn wait_status(c: &Client, s: &Server, id: &str, want: &str, limit: Duration) -> Value {
    eventually(limit, &format!("task {id} to become {want}"), || async {
        let (st, t) = get(c, &s.url(&format!("/v1/tasks/{id}")), &s.token).await;
        assert_eq!(st, StatusCode::OK, "{t}");
        (t["status"] == want).then_some(t)
    })
    .await
}

/// Asserts an error answer: the status, and the body `{"error": {"code", "message"}}` exactly.
/// Checks an error answer: the status, and the body `{"error": {"code", "message"}}` exactly.
fn check_error(status: StatusCode, body: &Value, want: u16, code: &str) -> Result<(), String> {
    if status.as_u16() != want {
        return Err(format!("status {status}, want {want} (body {body})"));
    }
    let obj = body
        .as_object()
        .ok_or_else(|| format!("error body is not a JSON object: {body}"))?;
    let err = obj
        .get("error")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("no error object: {body}"))?;
    if obj.len() != 1 || err.len() != 2 {
        return Err(format!("error body has other keys: {body}"));
    }
    if err.get("code") != Some(&json!(code)) {
        return Err(format!("code is not {code:?}: {body}"));
    }
    match err.get("message").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => Ok(()),
        _ => Err(format!("message is not a non-empty string: {body}")),
    }
}

/// Asserts an error answer (see [`check_error`]).
#[track_caller]
fn assert_error(what: &str, status: StatusCode, body: &Value, want: u16, code: &str) {
    if let Err(e) = check_error(status, body, want, code) {
        panic!("{what}: {e}");
    }
}

fn task_count(dir: &Path) -> i64 {
    open_db(dir)
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap()
}

fn is_rfc3339_ms_utc(s: &str) -> bool {
    // 2026-11-21T22:30:04.123Z
    let b = s.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && s.chars()
            .enumerate()
            .all(|(i, ch)| matches!(i, 4 | 7 | 10 | 13 | 16 | 19 | 23) || ch.is_ascii_digit())
}

async fn healthz_ok(c: &Client, s: &Server) {
    let r = c.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap().trim(), "ok");
}

const TASK_FIELDS: [&str; 22] = [
    "user",
    "concurrency_key",
    "wait",
    "checkpoint",
    "id",
    "queue",
    "kind",
    "status",
    "priority",
    "payload",
    "result",
    "attempts",
    "max_attempts",
    "last_error",
    "idempotency_key",
    "run_at",
    "timeout_ms",
    "cancel_requested",
    "created_at",
    "started_at",
    "completed_at",
    "updated_at",
];

// ---- 1. every route ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_returns_201_and_idempotent_replays_return_the_original() {
    let env = start("");
    let c = client();
    let url = env.url("/v1/tasks");
    let tok = env.token.clone();

    // A full body: every field comes back as sent.
    let t = create(
        &c,
        &env,
        &tok,
        json!({"kind": "k.a", "queue": "idle", "payload": {"x": [1, "two", null]},
               "priority": 5, "max_attempts": 3, "timeout_ms": 1000}),
    )
    .await;
    let keys: HashSet<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, TASK_FIELDS.into_iter().collect::<HashSet<_>>(), "{t}");
    let uuid = uuid::Uuid::parse_str(t["id"].as_str().unwrap()).unwrap();
    assert_eq!(uuid.get_version_num(), 7, "ids are UUID v7: {t}");
    assert_eq!(t["queue"], "idle");
    assert_eq!(t["kind"], "k.a");
    assert_eq!(t["status"], "pending");
    assert_eq!(t["priority"], 5);
    assert_eq!(t["payload"], json!({"x": [1, "two", null]}));
    assert_eq!(t["attempts"], 0);
    assert_eq!(t["max_attempts"], 3);
    assert_eq!(t["timeout_ms"], 1000);
    assert_eq!(t["cancel_requested"], false);
    for k in [
        "result",
        "last_error",
        "idempotency_key",
        "started_at",
        "completed_at",
    ] {
        assert!(t[k].is_null(), "{k} should be null: {t}");
    }
    for k in ["run_at", "created_at", "updated_at"] {
        assert!(is_rfc3339_ms_utc(t[k].as_str().unwrap()), "{k}: {t}");
    }

    // Defaults: queue "default", payload null, priority 0, 5 attempts, 10 minutes.
    let d = create(&c, &env, &tok, json!({"kind": "k.defaults"})).await;
    assert_eq!(d["queue"], "default");
    assert!(d["payload"].is_null());
    assert_eq!(d["priority"], 0);
    assert_eq!(d["max_attempts"], 5);
    assert_eq!(d["timeout_ms"], 600_000);

    // Boundaries that are allowed: 128-character names, priority ±100, 1 and 100 attempts,
    // a 255-character key.
    let long = "a".repeat(128);
    for body in [
        json!({"kind": long, "queue": long}),
        json!({"kind": "k.b", "queue": "idle", "priority": -100, "max_attempts": 1}),
        json!({"kind": "k.b", "queue": "idle", "priority": 100, "max_attempts": 100}),
        json!({"kind": "k.b", "queue": "idle", "idempotency_key": "k".repeat(255)}),
        json!({"kind": "A-z.0_9:x", "queue": "idle", "delay_ms": 0}),
        json!({"kind": "k.b", "queue": "idle", "run_at": "2020-01-01T00:00:00.000Z"}),
    ] {
        create(&c, &env, &tok, body).await;
    }
    // delay_ms puts run_at into the future.
    let later = create(
        &c,
        &env,
        &tok,
        json!({"kind": "k.b", "queue": "idle", "delay_ms": 3_600_000}),
    )
    .await;
    assert!(
        later["run_at"].as_str().unwrap() > later["created_at"].as_str().unwrap(),
        "{later}"
    );
    let count_before_keys = task_count(&env.dir);

    // The field.
    let body =
        json!({"kind": "k.idem", "queue": "idle", "payload": {"n": 1}, "idempotency_key": "key-1"});
    let (st, first) = post(&c, &url, &tok, &body).await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    assert_eq!(first["idempotency_key"], "key-1");
    let (st, again) = post(&c, &url, &tok, &body).await;
    assert_eq!(st, StatusCode::OK, "a replay is 200: {again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again, first, "the replay returns the original task");
    // The same key with a different body.
    let (st, e) = post(
        &c,
        &url,
        &tok,
        &json!({"kind": "k.idem", "queue": "idle", "payload": {"n": 2}, "idempotency_key": "key-1"}),
    )
    .await;
    assert_error("same key, other body", st, &e, 422, "idempotency_mismatch");
    // The header is the same as the field: a header replay of the field's request is the original.
    let r = c
        .post(&url)
        .bearer_auth(&tok)
        .header("Idempotency-Key", "key-1")
        .json(&json!({"kind": "k.idem", "queue": "idle", "payload": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], first["id"]);
    // Header alone creates, then replays, also through the field.
    let hbody = json!({"kind": "k.idem", "queue": "idle", "payload": {"h": true}});
    let mut hid = Value::Null;
    for want in [StatusCode::CREATED, StatusCode::OK] {
        let r = c
            .post(&url)
            .bearer_auth(&tok)
            .header("Idempotency-Key", "key-2")
            .json(&hbody)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want);
        let t: Value = r.json().await.unwrap();
        assert_eq!(t["idempotency_key"], "key-2");
        if hid.is_null() {
            hid = t["id"].clone();
        }
        assert_eq!(t["id"], hid);
    }
    let (st, t) = post(
        &c,
        &url,
        &tok,
        &json!({"kind": "k.idem", "queue": "idle", "payload": {"h": true}, "idempotency_key": "key-2"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(t["id"], hid);
    // Header and field that disagree.
    let r = c
        .post(&url)
        .bearer_auth(&tok)
        .header("Idempotency-Key", "key-3")
        .json(&json!({"kind": "k.idem", "queue": "idle", "idempotency_key": "key-4"}))
        .send()
        .await
        .unwrap();
    let st = r.status();
    let e: Value = r.json().await.unwrap();
    assert_error("header and field disagree", st, &e, 400, "invalid_request");

    // Another user with the same key gets a task of their own.
    let bob = env.user_token("bob", false);
    let (st, b) = post(&c, &url, &bob, &body).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_ne!(b["id"], first["id"]);

    // Concurrent requests with one key create exactly one task.
    let mut handles = Vec::new();
    for _ in 0..20 {
        let (c, url, tok) = (c.clone(), url.clone(), tok.clone());
        handles.push(tokio::spawn(async move {
            post(
                &c,
                &url,
                &tok,
                &json!({"kind": "k.idem", "queue": "idle", "idempotency_key": "key-c"}),
            )
            .await
        }));
    }
    let mut created = 0;
    let mut ids = HashSet::new();
    for h in handles {
        let (st, t) = h.await.unwrap();
        assert!(
            st == StatusCode::CREATED || st == StatusCode::OK,
            "{st}: {t}"
        );
        created += usize::from(st == StatusCode::CREATED);
        ids.insert(id_of(&t));
    }
    assert_eq!(created, 1, "exactly one of the concurrent requests creates");
    assert_eq!(ids.len(), 1, "all of them answer the same task");

    // In the database: key-1 (admin), key-2, key-1 (bob), key-c; nothing for key-3/key-4.
    assert_eq!(task_count(&env.dir), count_before_keys + 4);
    let n: i64 = open_db(&env.dir)
        .query_row(
            "SELECT count(*) FROM tasks WHERE idempotency_key IN ('key-3', 'key-4')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_ordered_and_all_or_nothing() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let url = env.url("/v1/tasks/batch");
    let tok = env.token.clone();

    let (st, r) = post(
        &c,
        &url,
        &tok,
        &json!({"tasks": [
            {"kind": "b.0", "queue": "idle", "payload": 0},
            {"kind": "b.1", "queue": "q1", "priority": 7},
            {"kind": "b.2", "payload": {"z": 2}},
        ]}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let ts = r["tasks"].as_array().unwrap();
    assert_eq!(ts.len(), 3);
    for (i, t) in ts.iter().enumerate() {
        assert_eq!(t["kind"], format!("b.{i}"), "in order: {r}");
        assert_eq!(t["status"], "pending");
    }
    assert_eq!(ts[1]["priority"], 7);
    assert_eq!(ts[2]["queue"], "default");
    let ids: HashSet<String> = ts.iter().map(id_of).collect();
    assert_eq!(ids.len(), 3);
    let base = task_count(&env.dir);
    assert_eq!(base, 3);

    // 1000 items with one bad item: 400 naming the index, nothing written.
    for (bad_index, bad) in [
        (537usize, json!({"kind": "ok", "priority": 500})),
        (999, json!({"kind": "bad kind"})),
        (0, json!({"kind": "ok", "max_attempts": 0})),
    ] {
        let mut items: Vec<Value> = (0..1000)
            .map(|i| json!({"kind": "bulk", "queue": "idle", "payload": {"n": i}}))
            .collect();
        items[bad_index] = bad;
        let (st, e) = post(&c, &url, &tok, &json!({ "tasks": items })).await;
        assert_error("batch with a bad item", st, &e, 400, "invalid_request");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&bad_index.to_string()),
            "the message names index {bad_index}: {msg}"
        );
        assert_eq!(
            task_count(&env.dir),
            base,
            "nothing of the failed batch was written"
        );
    }

    // An idempotency mismatch in one item fails the whole batch too.
    let (st, _) = post(
        &c,
        &env.url("/v1/tasks"),
        &tok,
        &json!({"kind": "k", "queue": "idle", "idempotency_key": "bk", "payload": 1}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, e) = post(
        &c,
        &url,
        &tok,
        &json!({"tasks": [
            {"kind": "fresh", "queue": "idle"},
            {"kind": "k", "queue": "idle", "idempotency_key": "bk", "payload": 2},
        ]}),
    )
    .await;
    assert_error(
        "batch with a key mismatch",
        st,
        &e,
        422,
        "idempotency_mismatch",
    );
    assert_eq!(task_count(&env.dir), base + 1);
    let fresh: i64 = open_db(&env.dir)
        .query_row("SELECT count(*) FROM tasks WHERE kind = 'fresh'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        fresh, 0,
        "the good item of the failed batch was not written"
    );

    // 1000 good items: all written, in order.
    let items: Vec<Value> = (0..1000)
        .map(|i| json!({"kind": "bulk", "queue": "idle", "payload": {"n": i}}))
        .collect();
    let (st, r) = post(&c, &url, &tok, &json!({ "tasks": items })).await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let ts = r["tasks"].as_array().unwrap();
    assert_eq!(ts.len(), 1000);
    for (i, t) in ts.iter().enumerate() {
        assert_eq!(t["payload"]["n"], i, "item {i} in order");
    }
    assert_eq!(task_count(&env.dir), base + 1 + 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_the_task_404_for_unknown_and_400_for_malformed_ids() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let t = create(
        &c,
        &env,
        &env.token,
        json!({"kind": "g", "payload": {"a": 1}}),
    )
    .await;
    let id = id_of(&t);
    let (st, g) = get(&c, &env.url(&format!("/v1/tasks/{id}")), &env.token).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(g, t, "GET returns the task as created");

    let unknown = uuid::Uuid::now_v7().to_string();
    let (st, e) = get(&c, &env.url(&format!("/v1/tasks/{unknown}")), &env.token).await;
    assert_error("unknown id", st, &e, 404, "not_found");
    for bad in [
        "not-a-uuid",
        "12345",
        "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
        "%00",
        "'%20OR%201=1--",
    ] {
        let (st, e) = get(&c, &env.url(&format!("/v1/tasks/{bad}")), &env.token).await;
        assert_error(
            &format!("malformed id {bad}"),
            st,
            &e,
            400,
            "invalid_request",
        );
    }
    // The same for the other routes with an id.
    for (m, path) in [
        (Method::POST, "cancel"),
        (Method::POST, "retry"),
        (Method::GET, "messages"),
        (Method::GET, "events"),
    ] {
        let (st, e) = call(
            &c,
            m.clone(),
            &env.url(&format!("/v1/tasks/nope/{path}")),
            Some(&env.token),
            None,
        )
        .await;
        assert_error(
            &format!("{m} malformed/{path}"),
            st,
            &e,
            400,
            "invalid_request",
        );
        let (st, e) = call(
            &c,
            m.clone(),
            &env.url(&format!("/v1/tasks/{unknown}/{path}")),
            Some(&env.token),
            None,
        )
        .await;
        assert_error(&format!("{m} unknown/{path}"), st, &e, 404, "not_found");
    }
}

async fn list_ids(c: &Client, s: &Server, token: &str, query: &str) -> (Vec<String>, Value) {
    let (st, r) = get(c, &s.url(&format!("/v1/tasks?{query}")), token).await;
    assert_eq!(st, StatusCode::OK, "list {query}: {r}");
    let ids = r["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no tasks array: {r}"))
        .iter()
        .map(id_of)
        .collect();
    (ids, r["next_cursor"].clone())
}

/// A page of large tasks stops at about 4 MiB of their content (500 tasks of 1 MiB payloads
/// would be 500 MB in one answer) and its next_cursor goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_large_tasks_is_cut_by_bytes_and_next_cursor_goes_on() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let tok = env.token.clone();
    let big = "x".repeat(900 << 10);
    let mut made = Vec::new();
    for _ in 0..6 {
        let t = create(
            &c,
            &env,
            &tok,
            json!({"kind": "k", "queue": "idle", "payload": big}),
        )
        .await;
        made.push(id_of(&t));
    }
    made.reverse();
    let (first, next) = list_ids(&c, &env, &tok, "limit=500").await;
    assert_eq!(
        first,
        made[..4].to_vec(),
        "four of 0.9 MiB fit in 4 MiB, five do not"
    );
    let cursor = next
        .as_str()
        .expect("a page cut by bytes has a next_cursor");
    let (rest, next) = list_ids(&c, &env, &tok, &format!("limit=500&cursor={cursor}")).await;
    assert_eq!(rest, made[4..].to_vec());
    assert!(next.is_null(), "the last page: {next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_limits_and_pages_newest_first() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let tok = env.token.clone();
    let mut made = Vec::new();
    for (kind, queue) in [
        ("k1", "idle"),
        ("k1", "idle"),
        ("k2", "idle"),
        ("k1", "other"),
        ("k2", "idle"),
        ("k1", "idle"),
    ] {
        made.push(id_of(
            &create(&c, &env, &tok, json!({"kind": kind, "queue": queue})).await,
        ));
    }
    let (st, _) = post_empty(&c, &env.url(&format!("/v1/tasks/{}/cancel", made[0])), &tok).await;
    assert_eq!(st, StatusCode::OK);
    let newest_first: Vec<String> = made.iter().rev().cloned().collect();

    let (all, next) = list_ids(&c, &env, &tok, "").await;
    assert_eq!(all, newest_first, "newest first");
    assert!(next.is_null(), "a short page has no next_cursor");

    let (ids, _) = list_ids(&c, &env, &tok, "status=canceled").await;
    assert_eq!(ids, vec![made[0].clone()]);
    let (ids, _) = list_ids(&c, &env, &tok, "status=pending").await;
    assert_eq!(ids.len(), 5);
    let (ids, _) = list_ids(&c, &env, &tok, "queue=other").await;
    assert_eq!(ids, vec![made[3].clone()]);
    let (ids, _) = list_ids(&c, &env, &tok, "kind=k2").await;
    assert_eq!(ids, vec![made[4].clone(), made[2].clone()]);
    let (ids, _) = list_ids(&c, &env, &tok, "status=pending&queue=idle&kind=k1").await;
    assert_eq!(ids, vec![made[5].clone(), made[1].clone()]);
    let (ids, _) = list_ids(&c, &env, &tok, "status=completed").await;
    assert!(ids.is_empty());
    let (ids, _) = list_ids(&c, &env, &tok, "limit=500").await;
    assert_eq!(ids.len(), 6);

    // Pages of 1 and of 4, walked with next_cursor.
    for limit in [1usize, 4, 6] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..20 {
            let q = match &cursor {
                Some(cur) => format!("limit={limit}&cursor={cur}"),
                None => format!("limit={limit}"),
            };
            let (ids, next) = list_ids(&c, &env, &tok, &q).await;
            assert!(ids.len() <= limit);
            seen.extend(ids);
            match next.as_str() {
                Some(n) => cursor = Some(n.to_string()),
                None => {
                    assert!(next.is_null(), "next_cursor is a string or null: {next}");
                    cursor = None;
                    break;
                }
            }
        }
        assert!(cursor.is_none(), "the walk ended");
        assert_eq!(seen, newest_first, "pages of {limit}");
    }

    for (q, what) in [
        ("limit=0", "limit 0"),
        ("limit=501", "limit 501"),
        ("limit=-1", "negative limit"),
        ("limit=abc", "limit not a number"),
        ("status=bogus", "unknown status"),
        ("status=PENDING", "status in capitals"),
        ("cursor=garbage", "bad cursor"),
        ("queue=bad%20queue", "bad queue filter"),
        ("nonsense=1", "unknown parameter"),
    ] {
        let (st, e) = get(&c, &env.url(&format!("/v1/tasks?{q}")), &tok).await;
        assert_error(what, st, &e, 400, "invalid_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_retry_follow_the_task_state() {
    let env = start("[worker]\nlease_ms = 1500");
    let c = client();
    let tok = env.token.clone();
    let path = |id: &str, action: &str| env.url(&format!("/v1/tasks/{id}/{action}"));

    // Pending → canceled at once; canceled again → 409.
    let p = id_of(
        &create(
            &c,
            &env,
            &tok,
            json!({"kind": "spool.noop", "queue": "idle"}),
        )
        .await,
    );
    let (st, t) = post_empty(&c, &path(&p, "cancel"), &tok).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(t["status"], "canceled");
    assert!(t["completed_at"].is_string(), "{t}");
    assert_eq!(task_status(&c, &env, &p).await, "canceled");
    let (st, e) = post_empty(&c, &path(&p, "cancel"), &tok).await;
    assert_error("cancel a canceled task", st, &e, 409, "conflict");

    // Canceled → retry → pending with attempts 0; retry of a pending task → 409.
    let (st, t) = post_empty(&c, &path(&p, "retry"), &tok).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(t["status"], "pending");
    assert_eq!(t["attempts"], 0);
    let (st, e) = post_empty(&c, &path(&p, "retry"), &tok).await;
    assert_error("retry a pending task", st, &e, 409, "conflict");

    // Completed: cancel and retry are 409.
    let done = id_of(&create(&c, &env, &tok, json!({"kind": "spool.noop"})).await);
    wait_status(&c, &env, &done, "completed", Duration::from_secs(15)).await;
    let (st, e) = post_empty(&c, &path(&done, "cancel"), &tok).await;
    assert_error("cancel a completed task", st, &e, 409, "conflict");
    let (st, e) = post_empty(&c, &path(&done, "retry"), &tok).await;
    assert_error("retry a completed task", st, &e, 409, "conflict");
    assert_eq!(task_status(&c, &env, &done).await, "completed");

    // Failed (a permanent error) → retry → pending, attempts 0, last_error kept.
    let failed = id_of(
        &create(
            &c,
            &env,
            &tok,
            json!({"kind": "spool.sleep", "payload": {}, "max_attempts": 1}),
        )
        .await,
    );
    let f = wait_status(&c, &env, &failed, "failed", Duration::from_secs(15)).await;
    assert_eq!(f["attempts"], 1, "{f}");
    let err = f["last_error"].clone();
    assert!(err.is_string(), "{f}");
    let (st, e) = post_empty(&c, &path(&failed, "cancel"), &tok).await;
    assert_error("cancel a failed task", st, &e, 409, "conflict");
    // Pause the queue first, so the retried task stays pending for the check.
    let (st, _) = post_empty(&c, &env.url("/v1/queues/default/pause"), &tok).await;
    assert_eq!(st, StatusCode::OK);
    let (st, t) = post_empty(&c, &path(&failed, "retry"), &tok).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(t["status"], "pending");
    assert_eq!(t["attempts"], 0);
    assert_eq!(
        t["last_error"], err,
        "last_error is kept until the next attempt"
    );
    let (st, _) = post_empty(&c, &env.url("/v1/queues/default/resume"), &tok).await;
    assert_eq!(st, StatusCode::OK);

    // Running: cancel marks cancel_requested, the worker stops it within a heartbeat.
    let run = id_of(
        &create(
            &c,
            &env,
            &tok,
            json!({"kind": "spool.sleep", "payload": {"ms": 60000}}),
        )
        .await,
    );
    wait_status(&c, &env, &run, "running", Duration::from_secs(15)).await;
    let (st, t) = post_empty(&c, &path(&run, "cancel"), &tok).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert!(
        t["cancel_requested"] == true || t["status"] == "canceled",
        "a running task is marked: {t}"
    );
    let t = wait_status(&c, &env, &run, "canceled", Duration::from_secs(10)).await;
    assert!(t["completed_at"].is_string(), "{t}");
    let (st, e) = post_empty(&c, &path(&run, "cancel"), &tok).await;
    assert_error("cancel a canceled task", st, &e, 409, "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_appended_listed_and_refused_on_terminal_tasks() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let tok = env.token.clone();
    let id = id_of(&create(&c, &env, &tok, json!({"kind": "m"})).await);
    let murl = env.url(&format!("/v1/tasks/{id}/messages"));

    let mut posted = Vec::new();
    for i in 0..5 {
        let (st, m) = post(
            &c,
            &murl,
            &tok,
            &json!({"kind": "note", "content": {"i": i, "s": "ü"}}),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{m}");
        assert_eq!(m["task_id"], id.as_str());
        assert_eq!(m["kind"], "note");
        assert_eq!(m["content"], json!({"i": i, "s": "ü"}));
        assert!(is_rfc3339_ms_utc(m["created_at"].as_str().unwrap()), "{m}");
        posted.push(m["id"].as_i64().unwrap());
    }
    // Content defaults to null.
    let (st, m) = post(&c, &murl, &tok, &json!({"kind": "bare"})).await;
    assert_eq!(st, StatusCode::CREATED);
    assert!(m["content"].is_null());
    posted.push(m["id"].as_i64().unwrap());
    assert!(
        posted.windows(2).all(|w| w[0] < w[1]),
        "ids increase: {posted:?}"
    );

    let (st, r) = get(&c, &murl, &tok).await;
    assert_eq!(st, StatusCode::OK);
    let ids: Vec<i64> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, posted, "oldest first");
    assert_eq!(r["next_after"], *posted.last().unwrap());
    assert_eq!(r["task_status"], "pending");

    let (_, r) = get(&c, &format!("{murl}?after={}", posted[1]), &tok).await;
    let ids: Vec<i64> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, posted[2..].to_vec());
    let (_, r) = get(&c, &format!("{murl}?after={}&limit=2", posted[0]), &tok).await;
    let ids: Vec<i64> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, posted[1..3].to_vec());
    assert_eq!(r["next_after"], posted[2]);
    // Nothing newer: next_after is `after` itself; a short wait returns empty.
    let last = *posted.last().unwrap();
    let (_, r) = get(&c, &format!("{murl}?after={last}&wait_ms=200"), &tok).await;
    assert_eq!(r["messages"], json!([]));
    assert_eq!(r["next_after"], last);

    for (q, what) in [
        ("limit=0", "limit 0"),
        ("limit=1001", "limit 1001"),
        ("wait_ms=30001", "wait_ms over 30000"),
        ("after=-1", "negative after"),
        ("after=x", "after not a number"),
    ] {
        let (st, e) = get(&c, &format!("{murl}?{q}"), &tok).await;
        assert_error(what, st, &e, 400, "invalid_request");
    }
    for (body, what) in [
        (json!({"content": 1}), "no kind"),
        (json!({"kind": "bad kind"}), "bad kind"),
        (json!({"kind": "k", "extra": 1}), "unknown field"),
        (json!({"kind": 5}), "kind not a string"),
    ] {
        let (st, e) = post(&c, &murl, &tok, &body).await;
        assert_error(what, st, &e, 400, "invalid_request");
    }
    let before: i64 = open_db(&env.dir)
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(before, 6);

    // Terminal: 409, nothing written; the messages stay readable.
    let (st, _) = post_empty(&c, &env.url(&format!("/v1/tasks/{id}/cancel")), &tok).await;
    assert_eq!(st, StatusCode::OK);
    let (st, e) = post(&c, &murl, &tok, &json!({"kind": "late", "content": 1})).await;
    assert_error("message to a canceled task", st, &e, 409, "conflict");
    let after: i64 = open_db(&env.dir)
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(after, 6);
    let (_, r) = get(&c, &murl, &tok).await;
    assert_eq!(r["messages"].as_array().unwrap().len(), 6);
    assert_eq!(r["task_status"], "canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_when_a_message_arrives() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let tok = env.token.clone();
    let id = id_of(&create(&c, &env, &tok, json!({"kind": "lp"})).await);
    let murl = env.url(&format!("/v1/tasks/{id}/messages"));

    let started = Instant::now();
    let poll = {
        let (c, url, tok) = (
            c.clone(),
            format!("{murl}?after=0&wait_ms=20000"),
            tok.clone(),
        );
        tokio::spawn(async move { get(&c, &url, &tok).await })
    };
    // Give the poll time to be waiting (not a timing assertion: the result is checked below).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (st, m) = post(
        &c,
        &murl,
        &tok,
        &json!({"kind": "ping", "content": "hello"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, r) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long poll did not return within 10 s of the message (wait_ms was 20 s)")
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{r}");
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{r}");
    assert_eq!(msgs[0]["id"], m["id"]);
    assert_eq!(msgs[0]["content"], "hello");
    assert_eq!(r["next_after"], m["id"]);
    assert!(started.elapsed() < Duration::from_secs(15));

    // A task ending wakes a long poll too (it answers with the terminal status).
    let last = m["id"].as_i64().unwrap();
    let poll = {
        let (c, url, tok) = (
            c.clone(),
            format!("{murl}?after={last}&wait_ms=20000"),
            tok.clone(),
        );
        tokio::spawn(async move { get(&c, &url, &tok).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, _) = post_empty(&c, &env.url(&format!("/v1/tasks/{id}/cancel")), &tok).await;
    assert_eq!(st, StatusCode::OK);
    let (st, r) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long poll did not return after the task was canceled")
        .unwrap();
    assert_eq!(st, StatusCode::OK);
    assert_eq!(r["task_status"], "canceled", "{r}");
    assert_eq!(r["next_after"], last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_admin_only_and_pause_stops_claims_until_resume() {
    let env = start("[worker]\nqueues = [\"default\", \"other\"]\nlease_ms = 3000");
    let c = client();
    let tok = env.token.clone();
    let alice = env.user_token("alice", false);

    let (st, e) = get(&c, &env.url("/v1/queues"), &alice).await;
    assert_error("user lists queues", st, &e, 403, "forbidden");
    let (st, e) = post_empty(&c, &env.url("/v1/queues/default/pause"), &alice).await;
    assert_error("user pauses", st, &e, 403, "forbidden");
    let (st, e) = post_empty(&c, &env.url("/v1/queues/default/resume"), &alice).await;
    assert_error("user resumes", st, &e, 403, "forbidden");

    create(&c, &env, &tok, json!({"kind": "x", "queue": "idle"})).await;
    create(
        &c,
        &env,
        &tok,
        json!({"kind": "x", "queue": "idle", "delay_ms": 3_600_000}),
    )
    .await;
    let (st, r) = get(&c, &env.url("/v1/queues"), &tok).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let qs = r["queues"].as_array().unwrap();
    let want: HashSet<&str> = [
        "name",
        "paused",
        "pending",
        "scheduled",
        "running",
        "waiting",
        "completed",
        "failed",
        "canceled",
        "oldest_pending_age_ms",
        "limits",
    ]
    .into_iter()
    .collect();
    for q in qs {
        let keys: HashSet<&str> = q.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, want, "{q}");
    }
    let by_name: BTreeMap<String, Value> = qs
        .iter()
        .map(|q| (q["name"].as_str().unwrap().to_string(), q.clone()))
        .collect();
    assert!(
        by_name.contains_key("default") && by_name.contains_key("other"),
        "configured queues: {r}"
    );
    let idle = &by_name["idle"];
    assert_eq!(idle["pending"], 1, "{idle}");
    assert_eq!(idle["scheduled"], 1, "{idle}");
    assert_eq!(idle["paused"], false);
    assert!(idle["oldest_pending_age_ms"].is_u64(), "{idle}");
    assert!(by_name["default"]["oldest_pending_age_ms"].is_null());

    // Pause default: a task there waits while the worker keeps claiming from "other".
    let (st, q) = post_empty(&c, &env.url("/v1/queues/default/pause"), &tok).await;
    assert_eq!(st, StatusCode::OK, "{q}");
    assert_eq!(q["name"], "default");
    assert_eq!(q["paused"], true);
    let a = id_of(&create(&c, &env, &tok, json!({"kind": "spool.noop"})).await);
    let b = id_of(
        &create(
            &c,
            &env,
            &tok,
            json!({"kind": "spool.noop", "queue": "other"}),
        )
        .await,
    );
    wait_status(&c, &env, &b, "completed", Duration::from_secs(15)).await;
    // One more round trip through the worker, after A was already waiting.
    let b2 = id_of(
        &create(
            &c,
            &env,
            &tok,
            json!({"kind": "spool.noop", "queue": "other"}),
        )
        .await,
    );
    wait_status(&c, &env, &b2, "completed", Duration::from_secs(15)).await;
    let (_, ta) = get(&c, &env.url(&format!("/v1/tasks/{a}")), &tok).await;
    assert_eq!(
        ta["status"], "pending",
        "a paused queue is not claimed: {ta}"
    );
    assert_eq!(ta["attempts"], 0);
    let (_, r) = get(&c, &env.url("/v1/queues"), &tok).await;
    let d = r["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .unwrap()
        .clone();
    assert_eq!(d["paused"], true, "{d}");
    assert_eq!(d["pending"], 1, "{d}");

    let (st, q) = post_empty(&c, &env.url("/v1/queues/default/resume"), &tok).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(q["paused"], false);
    wait_status(&c, &env, &a, "completed", Duration::from_secs(15)).await;

    // A queue may be paused before it has any task; a bad name is 400.
    let (st, q) = post_empty(&c, &env.url("/v1/queues/brand-new/pause"), &tok).await;
    assert_eq!(st, StatusCode::OK, "{q}");
    let (_, r) = get(&c, &env.url("/v1/queues"), &tok).await;
    assert!(
        r["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == "brand-new" && q["paused"] == true),
        "{r}"
    );
    let (st, e) = post_empty(&c, &env.url("/v1/queues/bad%20name/pause"), &tok).await;
    assert_error("pause a bad queue name", st, &e, 400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_routes_answer_without_a_token() {
    let env = start("[worker]\nconcurrency = 0\n[kinds.\"metric.kind\"]\ncommand = [\"true\"]");
    let c = client();
    healthz_ok(&c, &env).await;
    let r = c.get(env.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    create(&c, &env, &env.token, json!({"kind": "metric.kind"})).await;
    let r = c.get(env.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = r.text().await.unwrap();
    assert!(text.contains("spool_tasks_enqueued_total"), "{text}");
    assert!(
        text.contains("metric.kind"),
        "the counter is labelled by its configured kind: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_unknown_tokens_get_401() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let id = uuid::Uuid::now_v7().to_string();
    let routes = [
        (Method::GET, "/v1/tasks".to_string()),
        (Method::POST, "/v1/tasks".to_string()),
        (Method::POST, "/v1/tasks/batch".to_string()),
        (Method::GET, format!("/v1/tasks/{id}")),
        (Method::POST, format!("/v1/tasks/{id}/cancel")),
        (Method::GET, format!("/v1/tasks/{id}/messages")),
        (Method::GET, format!("/v1/tasks/{id}/events")),
        (Method::GET, "/v1/events".to_string()),
        (Method::GET, "/v1/queues".to_string()),
        (Method::POST, "/v1/queues/default/pause".to_string()),
    ];
    let body = json!({"kind": "x"});
    for (m, path) in &routes {
        for auth in [
            None,
            Some("Bearer nope"),
            Some("Basic YTpi"),
            Some("Bearer "),
            Some(env.token.as_str()),
        ] {
            if auth == Some(env.token.as_str()) {
                continue;
            }
            let mut rb = c.request(m.clone(), env.url(path));
            if let Some(a) = auth {
                rb = rb.header("Authorization", a);
            }
            if *m == Method::POST {
                rb = rb.json(&body);
            }
            let r = rb.send().await.unwrap();
            let st = r.status();
            let v = parse_body(r.text().await.unwrap());
            assert_error(
                &format!("{m} {path} with {auth:?}"),
                st,
                &v,
                401,
                "unauthorized",
            );
        }
    }
    // The admin token's hash is not a token.
    let hash = spool_hash(&env.token);
    let (st, v) = get(&c, &env.url("/v1/tasks"), &hash).await;
    assert_error(
        "the stored hash used as a token",
        st,
        &v,
        401,
        "unauthorized",
    );
    assert_eq!(task_count(&env.dir), 0, "nothing was written");
}

/// The hex SHA-256 of a token, as the database stores it.
fn spool_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_only_their_own_tasks() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let alice = env.user_token("alice", false);
    let bob = env.user_token("bob", false);
    let a = id_of(&create(&c, &env, &alice, json!({"kind": "mine", "queue": "idle"})).await);
    let b = id_of(&create(&c, &env, &bob, json!({"kind": "mine", "queue": "idle"})).await);

    for (m, path, body) in [
        (Method::GET, format!("/v1/tasks/{a}"), None),
        (Method::POST, format!("/v1/tasks/{a}/cancel"), None),
        (Method::POST, format!("/v1/tasks/{a}/retry"), None),
        (Method::GET, format!("/v1/tasks/{a}/messages"), None),
        (
            Method::GET,
            format!("/v1/tasks/{a}/messages?wait_ms=100"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/tasks/{a}/messages"),
            Some(json!({"kind": "x", "content": 1})),
        ),
        (Method::GET, format!("/v1/tasks/{a}/events"), None),
    ] {
        let (st, e) = call(&c, m.clone(), &env.url(&path), Some(&bob), body.as_ref()).await;
        assert_error(&format!("bob: {m} {path}"), st, &e, 404, "not_found");
    }
    let (bob_ids, _) = list_ids(&c, &env, &bob, "").await;
    assert_eq!(bob_ids, vec![b.clone()], "bob lists only his task");
    let (alice_ids, _) = list_ids(&c, &env, &alice, "").await;
    assert_eq!(alice_ids, vec![a.clone()]);
    // Alice's task is untouched by bob's attempts.
    let (st, t) = get(&c, &env.url(&format!("/v1/tasks/{a}")), &alice).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(t["status"], "pending");
    let msgs: i64 = open_db(&env.dir)
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(msgs, 0);

    // The admin sees and touches both.
    let (admin_ids, _) = list_ids(&c, &env, &env.token, "").await;
    assert_eq!(admin_ids, vec![b.clone(), a.clone()]);
    let (st, _) = get(&c, &env.url(&format!("/v1/tasks/{b}")), &env.token).await;
    assert_eq!(st, StatusCode::OK);
    let (st, t) = post_empty(&c, &env.url(&format!("/v1/tasks/{a}/cancel")), &env.token).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(t["status"], "canceled");
    // Another token of the same user name sees the same tasks.
    let alice2 = env.another_token("alice", false);
    let (ids, _) = list_ids(&c, &env, &alice2, "").await;
    assert_eq!(ids, vec![a]);
}

/// Task JSON names its owner (`user`) on every route that returns tasks, for the owner and for
/// an admin reading someone else's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_json_names_its_owner_wherever_it_is_read() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let alice = env.user_token("alice", false);
    let created = create(&c, &env, &alice, json!({"kind": "k", "queue": "idle"})).await;
    assert_eq!(created["user"], "alice", "{created}");
    let a = id_of(&created);
    let r = c
        .post(env.url("/v1/tasks/batch"))
        .bearer_auth(&alice)
        .json(&json!({"tasks": [{"kind": "k", "queue": "idle"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let batch: Value = r.json().await.unwrap();
    assert_eq!(batch["tasks"][0]["user"], "alice", "{batch}");
    for token in [&alice, &env.token] {
        let (st, t) = get(&c, &env.url(&format!("/v1/tasks/{a}")), token).await;
        assert_eq!((st, &t["user"]), (StatusCode::OK, &json!("alice")), "{t}");
        let (st, list) = get(&c, &env.url("/v1/tasks"), token).await;
        assert_eq!(st, StatusCode::OK);
        assert!(
            list["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["user"] == "alice"),
            "{list}"
        );
    }
    let (st, t) = post_empty(&c, &env.url(&format!("/v1/tasks/{a}/cancel")), &env.token).await;
    assert_eq!((st, &t["user"]), (StatusCode::OK, &json!("alice")), "{t}");
    let (st, t) = post_empty(&c, &env.url(&format!("/v1/tasks/{a}/retry")), &env.token).await;
    assert_eq!((st, &t["user"]), (StatusCode::OK, &json!("alice")), "{t}");
    // The task's stream, read by the admin: its first status event names alice.
    let mut events = common::sse::Stream::open(
        &c,
        &env.url(&format!("/v1/tasks/{a}/events")),
        &env.token,
        None,
    )
    .await;
    let ev = events.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ev.json()["user"], "alice");
    // The admin's own task names the admin.
    let mine = create(&c, &env, &env.token, json!({"kind": "k", "queue": "idle"})).await;
    assert_eq!(mine["user"], "admin", "{mine}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_json_404() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    for (m, path, token) in [
        (Method::GET, "/v1/nope", Some(env.token.as_str())),
        (Method::GET, "/nope", None),
        (
            Method::POST,
            "/v1/tasks/batch/extra",
            Some(env.token.as_str()),
        ),
        (Method::GET, "/v2/tasks", Some(env.token.as_str())),
    ] {
        let r = {
            let mut rb = c.request(m.clone(), env.url(path));
            if let Some(t) = token {
                rb = rb.bearer_auth(t);
            }
            rb.send().await.unwrap()
        };
        let st = r.status();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let v = parse_body(r.text().await.unwrap());
        assert_error(&format!("{m} {path}"), st, &v, 404, "not_found");
        assert_eq!(ct.as_deref(), Some("application/json"), "{m} {path}");
    }
}

// ---- 2. bad requests -----------------------------------------------------------------------

struct Bad {
    what: String,
    path: &'static str,
    content_type: Option<&'static str>,
    header: Option<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// The message must contain this (the index of a bad batch item).
    names: Option<&'static str>,
}

fn bad(what: &str, body: Value, status: u16, code: &'static str) -> Bad {
    Bad {
        what: what.to_string(),
        path: "/v1/tasks",
        content_type: Some("application/json"),
        header: None,
        body: serde_json::to_vec(&body).unwrap(),
        status,
        code,
        names: None,
    }
}

fn bad_raw(what: &str, body: &[u8], status: u16, code: &'static str) -> Bad {
    Bad {
        body: body.to_vec(),
        ..bad(what, Value::Null, status, code)
    }
}

fn bad_batch(what: &str, body: Value, status: u16, code: &'static str) -> Bad {
    Bad {
        path: "/v1/tasks/batch",
        ..bad(what, body, status, code)
    }
}

fn bad_cases() -> Vec<Bad> {
    let long = "a".repeat(129);
    let two_mib = "x".repeat(2 << 20);
    let mut deep = String::from(r#"{"kind":"a","payload":"#);
    deep.push_str(&"[".repeat(5000));
    deep.push_str(&"]".repeat(5000));
    deep.push('}');
    let ok = || json!({"kind": "ok", "queue": "idle"});
    let mut v = vec![
        bad_raw("truncated JSON", br#"{"kind": "a""#, 400, "invalid_request"),
        bad_raw("not JSON at all", b"kind=a", 400, "invalid_request"),
        bad_raw("empty body", b"", 400, "invalid_request"),
        bad_raw(
            "trailing garbage",
            br#"{"kind": "a"} x"#,
            400,
            "invalid_request",
        ),
        bad_raw(
            "invalid UTF-8",
            b"{\"kind\": \"a\xff\xfe\"}",
            400,
            "invalid_request",
        ),
        bad_raw(
            "a number too large for JSON",
            br#"{"kind": "a", "priority": 1e400}"#,
            400,
            "invalid_request",
        ),
        bad_raw(
            "duplicate field",
            br#"{"kind": "a", "kind": "b"}"#,
            400,
            "invalid_request",
        ),
        bad_raw("nesting 5000 deep", deep.as_bytes(), 400, "invalid_request"),
        bad("an array", json!([{"kind": "a"}]), 400, "invalid_request"),
        bad("a string", json!("kind"), 400, "invalid_request"),
        bad("null", Value::Null, 400, "invalid_request"),
        bad("no kind", json!({"payload": 1}), 400, "invalid_request"),
        bad("kind a number", json!({"kind": 5}), 400, "invalid_request"),
        bad("kind null", json!({"kind": null}), 400, "invalid_request"),
        bad(
            "unknown field",
            json!({"kind": "a", "bogus": 1}),
            400,
            "invalid_request",
        ),
        bad(
            "user_id is not a field",
            json!({"kind": "a", "user_id": "root"}),
            400,
            "invalid_request",
        ),
        bad(
            "status is not a field",
            json!({"kind": "a", "status": "completed"}),
            400,
            "invalid_request",
        ),
        bad(
            "priority 101",
            json!({"kind": "a", "priority": 101}),
            400,
            "invalid_request",
        ),
        bad(
            "priority -101",
            json!({"kind": "a", "priority": -101}),
            400,
            "invalid_request",
        ),
        bad(
            "priority a string",
            json!({"kind": "a", "priority": "high"}),
            400,
            "invalid_request",
        ),
        bad(
            "priority a fraction",
            json!({"kind": "a", "priority": 1.5}),
            400,
            "invalid_request",
        ),
        bad(
            "priority past i64",
            json!({"kind": "a", "priority": u64::MAX}),
            400,
            "invalid_request",
        ),
        bad(
            "max_attempts 0",
            json!({"kind": "a", "max_attempts": 0}),
            400,
            "invalid_request",
        ),
        bad(
            "max_attempts 101",
            json!({"kind": "a", "max_attempts": 101}),
            400,
            "invalid_request",
        ),
        bad(
            "max_attempts -1",
            json!({"kind": "a", "max_attempts": -1}),
            400,
            "invalid_request",
        ),
        bad(
            "max_attempts a string",
            json!({"kind": "a", "max_attempts": "3"}),
            400,
            "invalid_request",
        ),
        bad(
            "run_at and delay_ms",
            json!({"kind": "a", "run_at": "2030-01-01T00:00:00.000Z", "delay_ms": 5}),
            400,
            "invalid_request",
        ),
        bad(
            "negative delay_ms",
            json!({"kind": "a", "delay_ms": -1}),
            400,
            "invalid_request",
        ),
        bad(
            "delay_ms a string",
            json!({"kind": "a", "delay_ms": "5"}),
            400,
            "invalid_request",
        ),
        bad_raw(
            "delay_ms past i64",
            br#"{"kind": "a", "delay_ms": 99999999999999999999}"#,
            400,
            "invalid_request",
        ),
        bad(
            "run_at not a time",
            json!({"kind": "a", "run_at": "tomorrow"}),
            400,
            "invalid_request",
        ),
        bad(
            "run_at impossible date",
            json!({"kind": "a", "run_at": "2026-13-45T99:00:00.000Z"}),
            400,
            "invalid_request",
        ),
        bad(
            "run_at a number",
            json!({"kind": "a", "run_at": 1_700_000_000_000i64}),
            400,
            "invalid_request",
        ),
        bad(
            "negative timeout_ms",
            json!({"kind": "a", "timeout_ms": -5}),
            400,
            "invalid_request",
        ),
        bad(
            "timeout_ms a string",
            json!({"kind": "a", "timeout_ms": "1s"}),
            400,
            "invalid_request",
        ),
        bad(
            "kind with a space",
            json!({"kind": "has space"}),
            400,
            "invalid_request",
        ),
        bad(
            "kind of 129 characters",
            json!({"kind": long}),
            400,
            "invalid_request",
        ),
        bad("empty kind", json!({"kind": ""}), 400, "invalid_request"),
        bad(
            "kind with NUL",
            json!({"kind": "a\u{0000}b"}),
            400,
            "invalid_request",
        ),
        bad(
            "kind with a slash",
            json!({"kind": "a/b"}),
            400,
            "invalid_request",
        ),
        bad(
            "kind non-ASCII",
            json!({"kind": "kïnd"}),
            400,
            "invalid_request",
        ),
        bad(
            "kind with SQL",
            json!({"kind": "'); DROP TABLE tasks;--"}),
            400,
            "invalid_request",
        ),
        bad(
            "queue with a space",
            json!({"kind": "a", "queue": "my queue"}),
            400,
            "invalid_request",
        ),
        bad(
            "queue of 129 characters",
            json!({"kind": "a", "queue": long}),
            400,
            "invalid_request",
        ),
        bad(
            "empty queue",
            json!({"kind": "a", "queue": ""}),
            400,
            "invalid_request",
        ),
        bad(
            "queue a number",
            json!({"kind": "a", "queue": 1}),
            400,
            "invalid_request",
        ),
        bad(
            "idempotency_key of 256",
            json!({"kind": "a", "idempotency_key": "k".repeat(256)}),
            400,
            "invalid_request",
        ),
        bad(
            "idempotency_key a number",
            json!({"kind": "a", "idempotency_key": 7}),
            400,
            "invalid_request",
        ),
        Bad {
            header: Some(("Idempotency-Key", "k".repeat(256))),
            ..bad(
                "Idempotency-Key header of 256",
                json!({"kind": "a"}),
                400,
                "invalid_request",
            )
        },
        Bad {
            header: Some(("Idempotency-Key", "one".into())),
            ..bad(
                "header and field differ",
                json!({"kind": "a", "idempotency_key": "two"}),
                400,
                "invalid_request",
            )
        },
        bad(
            "a 2 MiB body",
            json!({"kind": "a", "payload": two_mib}),
            413,
            "payload_too_large",
        ),
        Bad {
            content_type: Some("text/plain"),
            ..bad(
                "text/plain",
                json!({"kind": "a"}),
                415,
                "unsupported_media_type",
            )
        },
        Bad {
            content_type: Some("application/x-www-form-urlencoded"),
            ..bad_raw("a form", b"kind=a", 415, "unsupported_media_type")
        },
        Bad {
            content_type: None,
            ..bad(
                "no content type",
                json!({"kind": "a"}),
                415,
                "unsupported_media_type",
            )
        },
        // The batch route.
        bad_batch("batch of 0", json!({"tasks": []}), 400, "invalid_request"),
        bad_batch(
            "batch of 1001",
            json!({"tasks": (0..1001).map(|_| ok()).collect::<Vec<_>>()}),
            400,
            "invalid_request",
        ),
        Bad {
            names: Some("3"),
            ..bad_batch(
                "batch with a bad item at 3",
                json!({"tasks": [ok(), ok(), ok(), {"kind": "bad kind"}, ok()]}),
                400,
                "invalid_request",
            )
        },
        Bad {
            names: Some("1"),
            ..bad_batch(
                "batch with an unknown field at 1",
                json!({"tasks": [ok(), {"kind": "a", "nope": true}]}),
                400,
                "invalid_request",
            )
        },
        Bad {
            names: Some("2"),
            ..bad_batch(
                "batch with priority 101 at 2",
                json!({"tasks": [ok(), ok(), {"kind": "a", "priority": 101}]}),
                400,
                "invalid_request",
            )
        },
        Bad {
            path: "/v1/tasks/batch",
            ..bad_raw(
                "batch with trailing garbage",
                br#"{"tasks": [{"kind": "a"}]} []"#,
                400,
                "invalid_request",
            )
        },
        bad_batch(
            "batch tasks an object",
            json!({"tasks": {"kind": "a"}}),
            400,
            "invalid_request",
        ),
        bad_batch("batch without tasks", json!({}), 400, "invalid_request"),
        bad_batch("batch a bare array", json!([ok()]), 400, "invalid_request"),
        bad_batch(
            "batch with an unknown field",
            json!({"tasks": [ok()], "x": 1}),
            400,
            "invalid_request",
        ),
        bad_batch(
            "batch items not objects",
            json!({"tasks": [1, 2]}),
            400,
            "invalid_request",
        ),
        Bad {
            path: "/v1/tasks/batch",
            ..bad_raw(
                "batch truncated",
                br#"{"tasks": [{"kind": "a"}"#,
                400,
                "invalid_request",
            )
        },
        Bad {
            content_type: Some("text/plain"),
            ..bad_batch(
                "batch text/plain",
                json!({"tasks": [ok()]}),
                415,
                "unsupported_media_type",
            )
        },
        Bad {
            content_type: None,
            ..bad_batch(
                "batch without content type",
                json!({"tasks": [ok()]}),
                415,
                "unsupported_media_type",
            )
        },
        bad_batch(
            "batch of 2 MiB",
            json!({"tasks": [{"kind": "a", "payload": two_mib}]}),
            413,
            "payload_too_large",
        ),
    ];
    // A kind at each forbidden ASCII punctuation.
    for ch in [
        '!', '#', '$', '%', '&', '*', '+', ',', '/', ';', '<', '=', '>', '?', '@', '\\', '|', '~',
        '\n', '\t',
    ] {
        v.push(bad(
            &format!("kind with {ch:?}"),
            json!({"kind": format!("a{ch}b")}),
            400,
            "invalid_request",
        ));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_documented_errors_and_write_nothing() {
    let env = start("[worker]\nconcurrency = 0");
    // A fresh connection per request: after a 413 the server closes the connection without
    // reading the rest of the body, and a pooled connection could be reused just as it closes.
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // One good task so that "unchanged" is not just "empty".
    create(
        &c,
        &env,
        &env.token,
        json!({"kind": "seed", "queue": "idle"}),
    )
    .await;
    let start_count = task_count(&env.dir);
    let cases = bad_cases();
    assert!(cases.len() >= 30);
    // Every case is checked; the failures are reported together at the end.
    let mut failures: Vec<String> = Vec::new();
    for case in cases {
        let before = task_count(&env.dir);
        let mut rb = c.post(env.url(case.path)).bearer_auth(&env.token);
        if let Some(ct) = case.content_type {
            rb = rb.header("Content-Type", ct);
        }
        if let Some((k, v)) = &case.header {
            rb = rb.header(*k, v.as_str());
        }
        let r = rb
            .body(case.body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: no answer: {e}", case.what));
        let st = r.status();
        let v = parse_body(r.text().await.unwrap());
        if let Err(e) = check_error(st, &v, case.status, case.code) {
            failures.push(format!("{}: {e}", case.what));
        } else if let Some(n) = case.names {
            let msg = v["error"]["message"].as_str().unwrap_or_default();
            if !msg.contains(n) {
                failures.push(format!(
                    "{}: the message does not name index {n}: {msg}",
                    case.what
                ));
            }
        }
        let after = task_count(&env.dir);
        if after != before {
            failures.push(format!("{}: {} task(s) written", case.what, after - before));
        }
        healthz_ok(&c, &env).await;
    }
    assert!(
        failures.is_empty(),
        "{} bad request(s) not handled as documented:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let before = task_count(&env.dir);
    assert_eq!(before, start_count);
    // Still serving real work.
    create(
        &c,
        &env,
        &env.token,
        json!({"kind": "after", "queue": "idle"}),
    )
    .await;
    assert_eq!(task_count(&env.dir), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_text_and_odd_unicode_are_stored_verbatim() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let tok = env.token.clone();
    let payload = json!({
        "sql": "'); DROP TABLE tasks;--",
        "sql2": "\" OR 1=1; DELETE FROM tasks; --",
        "'); DROP TABLE messages;--": ["keys too", "%s %n %x {0}"],
        "emoji": "🦀👩‍👩‍👧‍👦🏳️‍🌈",
        "rtl": "\u{202E}gnp.exe\u{200F}שלום\u{200E}مرحبا",
        "nul": "a\u{0000}b\u{0000}",
        "controls": "\u{0001}\u{001F}\u{007F}\r\n\t",
        "bom": "\u{FEFF}x",
        "nonchars": "\u{FFFE}\u{FFFF}\u{10FFFF}",
        "combining": "e\u{0301} vs é",
        "zero_width": "a\u{200B}b\u{2060}c",
        "numbers": [0, -0.5, 1e300, i64::MIN, u64::MAX],
        "nested": {"deep": [[["\u{0000}"]]], "empty": {}, "list": []},
    });
    let t = create(
        &c,
        &env,
        &tok,
        json!({"kind": "odd", "payload": payload, "idempotency_key": "'); DROP TABLE tasks;-- 🦀"}),
    )
    .await;
    let id = id_of(&t);
    assert_eq!(t["payload"], payload);
    assert_eq!(t["idempotency_key"], "'); DROP TABLE tasks;-- 🦀");
    let (st, g) = get(&c, &env.url(&format!("/v1/tasks/{id}")), &tok).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(g["payload"], payload, "read back equal");
    let (_, l) = get(&c, &env.url("/v1/tasks?kind=odd"), &tok).await;
    assert_eq!(l["tasks"][0]["payload"], payload);
    // A replay with the same key and body is the same task.
    let (st, r) = post(
        &c,
        &env.url("/v1/tasks"),
        &tok,
        &json!({"kind": "odd", "payload": payload, "idempotency_key": "'); DROP TABLE tasks;-- 🦀"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["id"], id.as_str());
    // A payload that is a bare string of the same.
    let s = create(
        &c,
        &env,
        &tok,
        json!({"kind": "odd", "payload": "'); DROP TABLE tasks;--\u{0000}🦀\u{202E}"}),
    )
    .await;
    let (_, g) = get(&c, &env.url(&format!("/v1/tasks/{}", id_of(&s))), &tok).await;
    assert_eq!(g["payload"], "'); DROP TABLE tasks;--\u{0000}🦀\u{202E}");
    // Messages too.
    let murl = env.url(&format!("/v1/tasks/{id}/messages"));
    let (st, m) = post(&c, &murl, &tok, &json!({"kind": "odd", "content": payload})).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(m["content"], payload);
    let (_, ms) = get(&c, &murl, &tok).await;
    assert_eq!(ms["messages"][0]["content"], payload);
    // The tables are all still there, with exactly the rows written.
    let db = open_db(&env.dir);
    let n: i64 = db
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    let n: i64 = db
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    // The stored JSON text parses back to the same value.
    let text: String = db
        .query_row("SELECT payload FROM tasks WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), payload);
}

// ---- 3. random JSON ------------------------------------------------------------------------

fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-300i64..300).prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        "[A-Za-z0-9._:-]{0,130}".prop_map(Value::String),
        Just(json!("2026-11-21T22:30:04.123Z")),
        Just(json!("'); DROP TABLE tasks;--")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like a task request: known fields with random values, sometimes others.
fn arb_task_like() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let field = prop_oneof![
        4 => prop_oneof![
            Just("payload"),
            Just("queue"),
            Just("priority"),
            Just("run_at"),
            Just("delay_ms"),
            Just("max_attempts"),
            Just("timeout_ms"),
            Just("idempotency_key"),
        ]
        .prop_map(String::from),
        1 => ".{0,12}",
    ];
    let kind = prop_oneof![3 => Just(json!("prop.kind")), 1 => arb_json()];
    (kind, prop::collection::btree_map(field, arb_json(), 0..6)).prop_map(|(kind, m)| {
        let mut o = serde_json::Map::new();
        o.insert("kind".into(), kind);
        o.extend(m);
        Value::Object(o)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_json_bodies_never_get_a_5xx() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as PtConfig, TestRunner};
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let handle = tokio::runtime::Handle::current();
    let one = env.url("/v1/tasks");
    let batch = env.url("/v1/tasks/batch");
    let tok = env.token.clone();
    let strategy = prop_oneof![arb_json(), arb_task_like(), arb_task_like()];
    let result = tokio::task::block_in_place(|| {
        let mut runner = TestRunner::new(PtConfig {
            cases: 64,
            failure_persistence: None,
            ..PtConfig::default()
        });
        runner.run(&strategy, |v| {
            let answers = handle.block_on(async {
                let a = post(&c, &one, &tok, &v).await;
                let b = post(&c, &batch, &tok, &json!({"tasks": [v.clone()]})).await;
                let d = post(&c, &batch, &tok, &v).await;
                [a, b, d]
            });
            for (st, body) in answers {
                prop_assert!(!st.is_server_error(), "{st} for {v}: {body}");
                prop_assert!(
                    [200u16, 201, 400, 413, 422].contains(&st.as_u16()),
                    "unexpected {st} for {v}: {body}"
                );
                if st.is_client_error() {
                    prop_assert!(body["error"]["code"].is_string(), "error shape: {body}");
                    prop_assert!(body["error"]["message"].is_string(), "error shape: {body}");
                } else {
                    prop_assert!(body["id"].is_string() || body["tasks"].is_array(), "{body}");
                }
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    healthz_ok(&c, &env).await;
    // Whatever was accepted is readable.
    let (st, _) = get(&c, &env.url("/v1/tasks?limit=500"), &env.token).await;
    assert_eq!(st, StatusCode::OK);
}

// ---- 4. concurrency ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_all_commit_with_distinct_ids() {
    // One user sends 300 at once: not a test of limits.requests_per_second.
    let env = start("[worker]\nconcurrency = 0\n[limits]\nrequests_per_second = 0");
    let c = client();
    let mut handles = Vec::new();
    for i in 0..300 {
        let (c, url, tok) = (c.clone(), env.url("/v1/tasks"), env.token.clone());
        handles.push(tokio::spawn(async move {
            let r = post(
                &c,
                &url,
                &tok,
                &json!({"kind": "conc", "queue": "idle", "payload": {"n": i}}),
            )
            .await;
            (i, r)
        }));
    }
    let mut ids = HashSet::new();
    let mut by_n = BTreeMap::new();
    for h in handles {
        let (i, (st, t)) = tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(st, StatusCode::CREATED, "request {i}: {t}");
        assert_eq!(t["payload"]["n"], i);
        assert!(ids.insert(id_of(&t)), "duplicate id {t}");
        by_n.insert(i, id_of(&t));
    }
    assert_eq!(ids.len(), 300);
    for (i, id) in &by_n {
        let (st, t) = get(&c, &env.url(&format!("/v1/tasks/{id}")), &env.token).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(t["payload"]["n"], *i);
    }
    let (listed, _) = list_ids(&c, &env, &env.token, "limit=500&kind=conc").await;
    assert_eq!(listed.into_iter().collect::<HashSet<_>>(), ids);
    assert_eq!(task_count(&env.dir), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_while_tasks_are_added_sees_each_old_task_once() {
    // The adder posts as fast as the server answers: on a fast machine that passes the per-user
    // request rate, which is not what this test is about.
    let env = start("[worker]\nconcurrency = 0\n[limits]\nrequests_per_second = 0");
    let c = client();
    let tok = env.token.clone();
    let items: Vec<Value> = (0..600)
        .map(|i| json!({"kind": "page", "queue": "idle", "payload": i}))
        .collect();
    let (st, r) = post(
        &c,
        &env.url("/v1/tasks/batch"),
        &tok,
        &json!({ "tasks": items }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let mut before: HashSet<String> = r["tasks"].as_array().unwrap().iter().map(id_of).collect();

    // Adds tasks one by one and in small batches for as long as the walk runs.
    let stop = Arc::new(AtomicBool::new(false));
    let added: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let adder = {
        let (c, s, tok, stop, added) = (
            c.clone(),
            env.base.clone(),
            tok.clone(),
            stop.clone(),
            added.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let (st, r) = if n % 3 == 0 {
                    post(
                        &c,
                        &format!("{s}/v1/tasks/batch"),
                        &tok,
                        &json!({"tasks": [
                            {"kind": "page", "queue": "idle", "payload": -n},
                            {"kind": "page", "queue": "idle", "payload": -n},
                        ]}),
                    )
                    .await
                } else {
                    post(
                        &c,
                        &format!("{s}/v1/tasks"),
                        &tok,
                        &json!({"kind": "page", "queue": "idle", "payload": -n}),
                    )
                    .await
                };
                assert_eq!(st, StatusCode::CREATED, "{r}");
                let at = Instant::now();
                let mut g = added.lock().unwrap();
                match r["tasks"].as_array() {
                    Some(ts) => g.extend(ts.iter().map(|t| (id_of(t), at))),
                    None => g.push((id_of(&r), at)),
                }
            }
        })
    };
    // Let the adder get going, so the walk starts with additions under way.
    eventually(
        Duration::from_secs(10),
        "the adder to add tasks",
        || async { (added.lock().unwrap().len() >= 5).then_some(()) },
    )
    .await;
    let walk_start = Instant::now();
    before.extend(
        added
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, at)| *at < walk_start)
            .map(|(id, _)| id.clone()),
    );

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 1000, "the walk does not end");
        let q = match &cursor {
            Some(cur) => format!("queue=idle&limit=7&cursor={cur}"),
            None => "queue=idle&limit=7".to_string(),
        };
        let (ids, next) = list_ids(&c, &env, &tok, &q).await;
        seen.extend(ids);
        match next.as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
    }
    let walk_end = Instant::now();
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), adder)
        .await
        .unwrap()
        .unwrap();

    let during = added
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at >= walk_start && *at <= walk_end)
        .count();
    assert!(during > 0, "no task was added while the pages were walked");
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &seen {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "tasks repeated across pages: {repeated:?}"
    );
    let missing: Vec<_> = before
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} tasks that existed before the walk were skipped",
        missing.len()
    );
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "pages are newest first without going back"
    );
}

// ---- 6. a foreign write lock ---------------------------------------------------------------

/// Kills and reaps a child on drop (also on panic).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join("data/spool.db")
}

/// Tags (payload.tag) present in the tasks table, with their counts.
fn tag_counts(dir: &Path) -> BTreeMap<String, i64> {
    let db = open_db(dir);
    let mut st = db
        .prepare(
            "SELECT json_extract(payload, '$.tag'), count(*) FROM tasks \
             WHERE json_extract(payload, '$.tag') IS NOT NULL GROUP BY 1",
        )
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

#[derive(Debug)]
struct Answer {
    tag: String,
    status: StatusCode,
    body: Value,
    took: Duration,
}

async fn tagged_enqueue(c: &Client, s: &Target, tag: String, pad: usize) -> Answer {
    let t0 = Instant::now();
    let r = c
        .post(format!("{}/v1/tasks", s.base))
        .bearer_auth(&s.token)
        .json(&json!({"kind": "tagged", "queue": "idle", "payload": {"tag": tag, "pad": "p".repeat(pad)}}))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!("enqueue {tag} got no answer (a hang past the client timeout?): {e}")
        });
    let status = r.status();
    let body = parse_body(r.text().await.unwrap());
    Answer {
        tag,
        status,
        body,
        took: t0.elapsed(),
    }
}

/// Where to send requests: the base URL and a token, cheap to move into a task.
#[derive(Clone)]
struct Target {
    base: String,
    token: String,
}

impl Target {
    fn of(s: &Server) -> Self {
        Target {
            base: s.base.clone(),
            token: s.token.clone(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_under_a_foreign_write_lock_get_201_or_503_and_503_is_never_written() {
    // Lanes of writers from one user: not a test of limits.requests_per_second.
    let env = start(
        "[database]\nbusy_timeout_ms = 1000\n[worker]\nconcurrency = 0\n[limits]\nrequests_per_second = 0",
    );
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    create(
        &c,
        &env,
        &env.token,
        json!({"kind": "warm", "queue": "idle"}),
    )
    .await;

    let mut sq = KillOnDrop(
        Command::new("sqlite3")
            .arg(db_path(&env.dir))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sqlite3 must be installed"),
    );
    let mut stdin = sq.0.stdin.take().unwrap();
    stdin.write_all(b"BEGIN IMMEDIATE;\n").unwrap();
    stdin.flush().unwrap();
    // Wait until the lock is really held: a write transaction of our own cannot start.
    let probe = rusqlite::Connection::open(db_path(&env.dir)).unwrap();
    probe.busy_timeout(Duration::ZERO).unwrap();
    eventually(
        Duration::from_secs(10),
        "sqlite3 to hold the write lock",
        || async {
            match probe.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => {
                    probe.execute_batch("ROLLBACK").unwrap();
                    None
                }
                Err(_) => Some(()),
            }
        },
    )
    .await;
    drop(probe);
    let locked_at = Instant::now();

    // Four lanes of enqueues for 4.5 s; the lock goes at 3 s.
    let mut lanes = Vec::new();
    for lane in 0..4 {
        let (c, base, token) = (c.clone(), env.base.clone(), env.token.clone());
        lanes.push(tokio::spawn(async move {
            let s = Target { base, token };
            let mut out = Vec::new();
            let mut n = 0;
            while locked_at.elapsed() < Duration::from_millis(4500) {
                n += 1;
                out.push(tagged_enqueue(&c, &s, format!("lock-{lane}-{n}"), 0).await);
            }
            out
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = c.get(env.url("/readyz")).send().await.unwrap().status();
    let elapsed = locked_at.elapsed();
    tokio::time::sleep(Duration::from_millis(3000).saturating_sub(elapsed)).await;
    stdin.write_all(b"COMMIT;\n").unwrap();
    drop(stdin);
    let exited = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        matches!(sq.0.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "sqlite3 did not exit after COMMIT");

    let mut answers: Vec<Answer> = Vec::new();
    for l in lanes {
        answers.extend(
            tokio::time::timeout(Duration::from_secs(30), l)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // After the lock: a write goes through (and, the writer being FIFO, after everything above).
    let last = tagged_enqueue(&c, &Target::of(&env), "lock-final".into(), 0).await;
    assert_eq!(last.status, StatusCode::CREATED, "{:?}", last.body);
    answers.push(last);

    for a in &answers {
        assert!(
            a.status == StatusCode::CREATED || a.status == StatusCode::SERVICE_UNAVAILABLE,
            "{} got {}: {}",
            a.tag,
            a.status,
            a.body
        );
        if a.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_error(&a.tag, a.status, &a.body, 503, "unavailable");
        }
        assert!(
            a.took < Duration::from_secs(8),
            "{} took {:?}",
            a.tag,
            a.took
        );
    }
    let n503 = answers
        .iter()
        .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    let n201 = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .count();
    assert!(n503 > 0, "no request saw the lock ({n201} answered 201)");
    assert!(n201 > 1, "nothing went through after the lock was released");
    assert_eq!(
        ready,
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz while another process holds the write lock"
    );

    let tags = tag_counts(&env.dir);
    for a in &answers {
        let n = tags.get(&a.tag).copied().unwrap_or(0);
        if a.status == StatusCode::CREATED {
            assert_eq!(
                n, 1,
                "{} was answered 201 but is not in the database once",
                a.tag
            );
            let id = id_of(&a.body);
            let (st, _) = get(&c, &env.url(&format!("/v1/tasks/{id}")), &env.token).await;
            assert_eq!(st, StatusCode::OK);
        } else {
            assert_eq!(n, 0, "{} was answered 503 but was written", a.tag);
        }
    }
    assert_eq!(tags.len(), n201, "no task other than the 201'd ones");
}

// ---- 7. a full disk ------------------------------------------------------------------------

/// Unmounts on drop (also on panic); the server must be stopped first.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Writes to `path` until the file system is full.
fn fill_disk(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for size in [1 << 16, 4096, 512, 1] {
        let chunk = vec![0xA5u8; size];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_503_not_500_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&data)
        .status()
        .expect("cannot run mount");
    assert!(
        st.success(),
        "mount -t tmpfs failed ({st}); this test needs root and must not be skipped"
    );
    let _mounted = Unmount(data.clone());
    let cfg = write_config(dir.path(), "[worker]\nconcurrency = 0");
    let srv = serve(&cfg, &[]);
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let mut answers = Vec::new();
    for i in 0..3 {
        let a = tagged_enqueue(&c, &Target::of(&srv), format!("before-{i}"), 100).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        answers.push(a);
    }

    let filler = data.join("filler");
    fill_disk(&filler);

    for i in 0..10 {
        let a = tagged_enqueue(&c, &Target::of(&srv), format!("full-{i}"), 1000).await;
        assert!(
            a.status == StatusCode::SERVICE_UNAVAILABLE || a.status == StatusCode::CREATED,
            "enqueue on a full disk: {} {}",
            a.status,
            a.body
        );
        if a.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_error(
                "enqueue on a full disk",
                a.status,
                &a.body,
                503,
                "unavailable",
            );
        }
        answers.push(a);
    }
    let full_503 = answers
        .iter()
        .filter(|a| a.tag.starts_with("full-") && a.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert!(
        full_503 > 0,
        "no enqueue on the full disk was refused: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    // A batch too.
    let r = c
        .post(srv.url("/v1/tasks/batch"))
        .bearer_auth(&srv.token)
        .json(&json!({"tasks": (0..50).map(|i| json!({"kind": "tagged", "queue": "idle", "payload": {"tag": format!("full-batch-{i}"), "pad": "p".repeat(1000)}})).collect::<Vec<_>>()}))
        .send()
        .await
        .unwrap();
    let batch_status = r.status();
    let batch_body = parse_body(r.text().await.unwrap());
    assert!(
        batch_status == StatusCode::SERVICE_UNAVAILABLE || batch_status == StatusCode::CREATED,
        "batch on a full disk: {batch_status} {batch_body}"
    );
    // Messages and cancels too: never 500.
    let first_id = id_of(&answers[0].body);
    let (st, b) = post(
        &c,
        &srv.url(&format!("/v1/tasks/{first_id}/messages")),
        &srv.token,
        &json!({"kind": "m", "content": "p".repeat(2000)}),
    )
    .await;
    assert!(
        st == StatusCode::SERVICE_UNAVAILABLE || st == StatusCode::CREATED,
        "message on a full disk: {st} {b}"
    );
    let message_written = st == StatusCode::CREATED;

    healthz_ok(&c, &srv).await;
    let ready_full = c.get(srv.url("/readyz")).send().await.unwrap().status();
    // An enqueue right after the readiness check: still refused, so the disk is still full.
    let probe = tagged_enqueue(&c, &Target::of(&srv), "full-probe".into(), 1000).await;
    eprintln!(
        "full disk: enqueues {:?}, batch {batch_status}, message {}, /readyz {ready_full}, probe {}",
        answers.iter().filter(|a| a.tag.starts_with("full-")).map(|a| a.status.as_u16()).collect::<Vec<_>>(),
        if message_written { 201 } else { 503 },
        probe.status,
    );
    assert!(
        probe.status == StatusCode::SERVICE_UNAVAILABLE || probe.status == StatusCode::CREATED,
        "{}",
        probe.body
    );
    answers.push(probe);
    // Reads still work.
    let (st, _) = get(&c, &srv.url(&format!("/v1/tasks/{first_id}")), &srv.token).await;
    assert_eq!(st, StatusCode::OK, "reads work on a full disk");

    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = tagged_enqueue(
            &c,
            &Target::of(&srv),
            format!("after-{}", uuid::Uuid::now_v7()),
            100,
        )
        .await;
        assert!(
            a.status == StatusCode::SERVICE_UNAVAILABLE || a.status == StatusCode::CREATED,
            "{} {}",
            a.status,
            a.body
        );
        let ok = a.status == StatusCode::CREATED;
        // A refused one must not be written either: it keeps its place in the check below.
        answers.push(a);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no enqueue succeeded within 10 s of space returning"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..5 {
        let a = tagged_enqueue(&c, &Target::of(&srv), format!("after-ok-{i}"), 100).await;
        assert_eq!(
            a.status,
            StatusCode::CREATED,
            "enqueues succeed again: {}",
            a.body
        );
        answers.push(a);
    }
    let ready_after = c.get(srv.url("/readyz")).send().await.unwrap().status();
    assert_eq!(ready_after, StatusCode::OK);

    let db = open_db(dir.path());
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(db);
    let tags = tag_counts(dir.path());
    for a in &answers {
        let n = tags.get(&a.tag).copied().unwrap_or(0);
        let want = i64::from(a.status == StatusCode::CREATED);
        assert_eq!(
            n, want,
            "{} answered {} but is in the database {n} times",
            a.tag, a.status
        );
    }
    let batch_rows = tags.keys().filter(|t| t.starts_with("full-batch-")).count();
    if batch_status == StatusCode::CREATED {
        assert_eq!(batch_rows, 50);
    } else {
        assert_eq!(batch_rows, 0, "a 503'd batch was partly written");
    }
    let msgs: i64 = open_db(dir.path())
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(msgs, i64::from(message_written));

    assert_eq!(
        ready_full,
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz while the disk is full"
    );
    drop(srv);
}
