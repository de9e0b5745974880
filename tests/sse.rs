//! Server-sent events against the real `spool serve` binary: resuming a task's stream with
//! `Last-Event-ID`, messages written by another process reaching streams and long polls, and the
//! all-tasks stream showing only the caller's tasks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::sse::{Ev, Stream};
use common::{client, serve, write_config, Server};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

// ---- helpers ------------------------------------------------------------------------------

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

async fn create(c: &Client, s: &Server, token: &str, body: Value) -> String {
    let r = c
        .post(s.url("/v1/tasks"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let t: Value = r.json().await.unwrap();
    t["id"].as_str().unwrap().to_string()
}

const PROGRESS: &str = r#"
[kinds.progress]
command = ["sh", "-c", 'for i in $(seq 1 40); do echo "{\"kind\":\"progress\",\"i\":$i}"; sleep 0.05; done']
"#;

// ---- 8. resume -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_after_last_event_id_with_every_message_once_in_order() {
    let env = start(PROGRESS);
    let c = client();
    let tok = env.token.clone();
    let id = create(&c, &env, &tok, json!({"kind": "progress"})).await;
    let url = env.url(&format!("/v1/tasks/{id}/events"));
    let step = Duration::from_secs(20);

    // (message id, i) across both connections.
    let mut got: Vec<(i64, i64)> = Vec::new();
    let check_message = |ev: &Ev, got: &mut Vec<(i64, i64)>| {
        let m = ev.json();
        let mid: i64 = ev
            .id
            .as_deref()
            .expect("a message event has an id")
            .parse()
            .unwrap();
        assert_eq!(m["id"], mid, "the id line is the message id: {ev:?}");
        assert_eq!(m["task_id"], id.as_str());
        assert_eq!(m["kind"], "progress");
        got.push((mid, m["content"]["i"].as_i64().unwrap()));
    };

    let mut s1 = Stream::open(&c, &url, &tok, None).await;
    let first = s1.next(step).await.expect("the stream has a first event");
    assert_eq!(
        first.name(),
        "status",
        "the first event is the status: {first:?}"
    );
    assert!(first.id.is_none(), "a status event has no id line");
    assert_eq!(first.json()["id"], id.as_str());
    let mut messages_first = 0;
    while messages_first < 15 {
        let ev = s1.next(step).await.expect("the first stream ended early");
        match ev.name() {
            "message" => {
                check_message(&ev, &mut got);
                messages_first += 1;
            }
            "status" => assert!(ev.id.is_none()),
            other => panic!("unexpected {other} on the first stream: {ev:?}"),
        }
    }
    drop(s1); // disconnect mid-task
    let last = got.last().unwrap().0.to_string();

    let mut s2 = Stream::open(&c, &url, &tok, Some(&last)).await;
    let first = s2
        .next(step)
        .await
        .expect("the second stream has a first event");
    assert_eq!(
        first.name(),
        "status",
        "the first event of a resumed stream is the status"
    );
    let end = loop {
        let ev = s2.next(step).await.expect("the stream closed before `end`");
        match ev.name() {
            "message" => check_message(&ev, &mut got),
            "status" => assert!(ev.id.is_none()),
            "end" => break ev,
            other => panic!("unexpected {other}: {ev:?}"),
        }
    };
    let t = end.json();
    assert_eq!(t["id"], id.as_str());
    assert_eq!(t["status"], "completed", "end carries the final task: {t}");
    assert!(
        s2.next(step).await.is_none(),
        "the stream closes after `end`"
    );

    let is: Vec<i64> = got.iter().map(|(_, i)| *i).collect();
    assert_eq!(
        is,
        (1..=40).collect::<Vec<_>>(),
        "every message exactly once, in order"
    );
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");

    // The same ids as the messages route.
    let r: Value = c
        .get(env.url(&format!("/v1/tasks/{id}/messages?limit=1000")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<i64> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, got.iter().map(|(m, _)| *m).collect::<Vec<_>>());

    // Last-Event-ID wins over ?after=; a finished task's stream replays and ends.
    let mid30 = got[29].0;
    let mut s3 = Stream::open(
        &c,
        &format!("{url}?after=0"),
        &tok,
        Some(&mid30.to_string()),
    )
    .await;
    assert_eq!(s3.next(step).await.unwrap().name(), "status");
    let mut rest = Vec::new();
    loop {
        let ev = s3.next(step).await.expect("closed before end");
        match ev.name() {
            "message" => rest.push(ev.json()["content"]["i"].as_i64().unwrap()),
            "end" => break,
            _ => {}
        }
    }
    assert_eq!(rest, (31..=40).collect::<Vec<_>>());
    // ?after= alone.
    let mut s4 = Stream::open(&c, &format!("{url}?after={mid30}"), &tok, None).await;
    let mut rest = Vec::new();
    while let Some(ev) = s4.next(step).await {
        if ev.name() == "message" {
            rest.push(ev.json()["content"]["i"].as_i64().unwrap());
        }
    }
    assert_eq!(rest, (31..=40).collect::<Vec<_>>());
}

// ---- 9. another process --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_written_by_another_process_reach_a_live_stream_and_a_long_poll() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let tok = env.token.clone();
    let id = create(&c, &env, &tok, json!({"kind": "external"})).await;

    let mut stream =
        Stream::open(&c, &env.url(&format!("/v1/tasks/{id}/events")), &tok, None).await;
    let first = stream.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(first.name(), "status");
    assert_eq!(first.json()["status"], "pending");

    let poll = {
        let (c, url, tok) = (
            c.clone(),
            env.url(&format!("/v1/tasks/{id}/messages?after=0&wait_ms=20000")),
            tok.clone(),
        );
        tokio::spawn(async move {
            let r = c.get(url).bearer_auth(tok).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        })
    };
    // Let the long poll start waiting (the check is on what it returns, below).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A second process's write: a plain read-write SQLite connection on the same file.
    let content = json!({"from": "another process", "emoji": "🦀"});
    let inserted_id: i64 = {
        let db = rusqlite::Connection::open(env.dir.join("data/spool.db")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        db.execute(
            "INSERT INTO messages (task_id, kind, content, created_at) VALUES (?1, 'external', ?2, ?3)",
            rusqlite::params![id, content.to_string(), now],
        )
        .unwrap();
        db.last_insert_rowid()
    };
    let written = Instant::now();

    let ev = stream
        .next(Duration::from_secs(10))
        .await
        .expect("the stream ended");
    assert_eq!(ev.name(), "message", "{ev:?}");
    assert_eq!(ev.id.as_deref(), Some(inserted_id.to_string().as_str()));
    let m = ev.json();
    assert_eq!(m["kind"], "external");
    assert_eq!(m["content"], content);
    assert_eq!(m["task_id"], id.as_str());

    let (st, r) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long poll did not return within 10 s of the write (its wait was 20 s)")
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{r}");
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{r}");
    assert_eq!(msgs[0]["id"], inserted_id);
    assert_eq!(msgs[0]["content"], content);
    assert_eq!(r["next_after"], inserted_id);
    assert!(written.elapsed() < Duration::from_secs(15));
}

// ---- 10. all of the caller's tasks ---------------------------------------------------------

/// Reads status events from `s` until one for `id` with `status` arrives; returns all read.
async fn read_until(s: &mut Stream, id: &str, status: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let ev = s
            .next(Duration::from_secs(10))
            .await
            .expect("the stream ended");
        match ev.name() {
            "status" => {
                let t = ev.json();
                let done = t["id"] == id && t["status"] == status;
                seen.push(t);
                if done {
                    return seen;
                }
            }
            other => panic!("unexpected event {other}: {ev:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_stream_shows_the_callers_status_changes_and_no_one_elses() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let alice = env.user_token("alice", false);
    let bob = env.user_token("bob", false);

    let mut alice_all = Stream::open(&c, &env.url("/v1/events"), &alice, None).await;
    let mut alice_idle = Stream::open(&c, &env.url("/v1/events?queue=idle"), &alice, None).await;
    let mut admin_all = Stream::open(&c, &env.url("/v1/events"), &env.token, None).await;

    // Bob's task first: had it leaked, it would come before alice's on the same stream.
    let b = create(&c, &env, &bob, json!({"kind": "ev", "queue": "idle"})).await;
    let r = c
        .post(env.url(&format!("/v1/tasks/{b}/cancel")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let other_q = create(
        &c,
        &env,
        &alice,
        json!({"kind": "ev", "queue": "elsewhere"}),
    )
    .await;
    let a = create(&c, &env, &alice, json!({"kind": "ev", "queue": "idle"})).await;
    let r = c
        .post(env.url(&format!("/v1/tasks/{a}/cancel")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let seen = read_until(&mut alice_all, &a, "canceled").await;
    let ids_statuses: Vec<(String, String)> = seen
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        !ids_statuses.iter().any(|(i, _)| *i == b),
        "bob's task leaked to alice: {ids_statuses:?}"
    );
    assert!(
        ids_statuses.contains(&(a.clone(), "pending".into())),
        "creation: {ids_statuses:?}"
    );
    assert!(
        ids_statuses.contains(&(other_q.clone(), "pending".into())),
        "{ids_statuses:?}"
    );
    assert_eq!(
        ids_statuses.last().unwrap(),
        &(a.clone(), "canceled".to_string())
    );
    for t in &seen {
        assert!(
            t["payload"].is_null() && t["kind"] == "ev" && t["user"] == "alice",
            "the data is the task JSON, with its owner's name: {t}"
        );
    }

    let seen = read_until(&mut alice_idle, &a, "canceled").await;
    assert!(
        seen.iter()
            .all(|t| t["queue"] == "idle" && t["id"] != b.as_str()),
        "the queue filter holds: {seen:?}"
    );
    assert!(seen
        .iter()
        .any(|t| t["id"] == a.as_str() && t["status"] == "pending"));

    // The admin sees every task's changes, each named for its owner.
    let seen = read_until(&mut admin_all, &a, "canceled").await;
    for t in &seen {
        let owner = if t["id"] == b.as_str() {
            "bob"
        } else {
            "alice"
        };
        assert_eq!(t["user"], owner, "{t}");
    }
    assert!(
        seen.iter()
            .any(|t| t["id"] == b.as_str() && t["status"] == "canceled"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|t| t["id"] == a.as_str() && t["status"] == "pending"),
        "{seen:?}"
    );

    // Bad queue filter: 400.
    let r = c
        .get(env.url("/v1/events?queue=bad%20q"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_request");
}

// ---- 11. /v1/events from the database ------------------------------------------------------

/// Reads `status` events until `n` arrived; returns (id, task id, status) of each.
async fn status_events(s: &mut Stream, n: usize) -> Vec<(i64, String, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = s
            .next(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("the stream ended after {out:?}"));
        assert_eq!(ev.name(), "status", "{ev:?} after {out:?}");
        let t = ev.json();
        let id: i64 = ev
            .id
            .as_deref()
            .expect("a status event of /v1/events has an id")
            .parse()
            .unwrap();
        out.push((
            id,
            t["id"].as_str().unwrap().to_string(),
            t["status"].as_str().unwrap().to_string(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_stream_carries_other_processes_changes_and_resumes_after_last_event_id() {
    let env = start("[worker]\nconcurrency = 0");
    let c = client();
    let tok = env.token.clone();

    // Live: a task made by another process (the CLI, on the same database) reaches the stream.
    let mut live = Stream::open(&c, &env.url("/v1/events"), &tok, None).await;
    let t1 = env.cli_ok(&["enqueue", "ev", "--queue", "q1"]);
    let first = status_events(&mut live, 1).await;
    assert_eq!(first[0].1, t1, "{first:?}");
    assert_eq!(first[0].2, "pending");
    let seen_id = first[0].0;
    drop(live);

    // While no stream is open: a cancel through the API, and two more tasks of the CLI.
    let r = c
        .post(env.url(&format!("/v1/tasks/{t1}/cancel")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t2 = env.cli_ok(&["enqueue", "ev", "--queue", "q2"]);
    let t3 = env.cli_ok(&["enqueue", "ev", "--queue", "q1"]);

    // Resumed: exactly the missed changes, in commit order, each once, with rising ids.
    let id = seen_id.to_string();
    let mut resumed = Stream::open(&c, &env.url("/v1/events"), &tok, Some(&id)).await;
    let missed = status_events(&mut resumed, 3).await;
    let what: Vec<(String, String)> = missed
        .iter()
        .map(|(_, t, s)| (t.clone(), s.clone()))
        .collect();
    assert_eq!(
        what,
        vec![
            (t1.clone(), "canceled".to_string()),
            (t2.clone(), "pending".to_string()),
            (t3.clone(), "pending".to_string()),
        ]
    );
    assert!(missed.windows(2).all(|w| w[0].0 < w[1].0), "{missed:?}");
    assert!(missed[0].0 > seen_id);

    // And it goes on live from there, with another process's change.
    let t4 = env.cli_ok(&["enqueue", "ev", "--queue", "q1"]);
    let next = status_events(&mut resumed, 1).await;
    assert_eq!(
        (next[0].1.as_str(), next[0].2.as_str()),
        (t4.as_str(), "pending")
    );
    assert!(next[0].0 > missed[2].0);

    // `?after=` with a queue filter: only q1's changes after the first one.
    let mut q1 = Stream::open(
        &c,
        &env.url(&format!("/v1/events?queue=q1&after={seen_id}")),
        &tok,
        None,
    )
    .await;
    let got = status_events(&mut q1, 3).await;
    let what: Vec<(&str, &str)> = got
        .iter()
        .map(|(_, t, s)| (t.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        what,
        vec![
            (t1.as_str(), "canceled"),
            (t3.as_str(), "pending"),
            (t4.as_str(), "pending")
        ]
    );

    // A Last-Event-ID past the log's end (a database restored from an older backup): the stream
    // says so with `lagged` and goes on live from now instead of waiting for that position.
    let mut ahead = Stream::open(&c, &env.url("/v1/events"), &tok, Some("999999999")).await;
    let ev = ahead.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ev.name(), "lagged", "{ev:?}");
    let t5 = env.cli_ok(&["enqueue", "ev", "--queue", "q1"]);
    let live = status_events(&mut ahead, 1).await;
    assert_eq!(
        (live[0].1.as_str(), live[0].2.as_str()),
        (t5.as_str(), "pending")
    );

    // A Last-Event-ID that is not a change id: 400.
    let r = c
        .get(env.url("/v1/events"))
        .bearer_auth(&tok)
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}
