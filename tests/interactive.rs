//! Interactive tasks over real processes and HTTP: the owner's messages reach the running
//! attempt (or the next one) once each, in order; a task parks itself as `waiting` without
//! holding a slot, survives a server kill -9 and a move to another worker process, and wakes on
//! its owner's answer or its timeout; checkpoints carry across crashes; task tokens read the
//! inbox and save checkpoints; stream tokens let a browser read one task.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::sse::Stream;
use common::{client, eventually, serve, spawn, write_config, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A command kind `name` running `script` with `sh -c`, plus `extra` keys.
fn kind(name: &str, script: &str, extra: &str) -> String {
    format!("[kinds.{name}]\ncommand = [\"sh\", \"-c\", {script:?}]\n{extra}\n")
}

async fn create(s: &Server, token: &str, body: Value) -> String {
    let r = s.post_json(token, "/v1/tasks", body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn say(s: &Server, token: &str, id: &str, text: &str) -> Value {
    let r = s
        .post_json(
            token,
            &format!("/v1/tasks/{id}/messages"),
            json!({"kind": "say", "content": text}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

async fn task(s: &Server, id: &str) -> Value {
    s.get_json(&s.token, &format!("/v1/tasks/{id}")).await
}

async fn wait_status(s: &Server, id: &str, status: &str) -> Value {
    eventually(T, &format!("task {id} to be {status}"), || async {
        let t = task(s, id).await;
        (t["status"] == status).then_some(t)
    })
    .await
}

/// The task's messages of `kind` written by the task, in order.
async fn task_messages(s: &Server, id: &str, kind: &str) -> Vec<Value> {
    let page = s
        .get_json(
            &s.token,
            &format!("/v1/tasks/{id}/messages?author=task&limit=1000"),
        )
        .await;
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == kind)
        .cloned()
        .collect()
}

const CHAT: &str = r#"read -r payload
if [ "$SPOOL_ATTEMPT" = 1 ]; then
  echo '{"kind":"ready"}'
  n=0
  while [ $n -lt 3 ] && read -r line; do
    n=$((n+1))
    printf '{"kind":"got","attempt":1,"line":%s}\n' "$line"
  done
  echo '{"checkpoint":{"seen":3}}'
  exit 75
fi
printf '{"kind":"ready2","checkpoint":%s}\n' "$(cat "$SPOOL_CHECKPOINT")"
read -r line
printf '{"kind":"got","attempt":2,"line":%s}\n' "$line"
printf '{"result":{"wake":"%s"}}\n' "${SPOOL_WAKE:-none}""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_gets_owner_messages_on_stdin_once_in_order_and_the_next_attempt_gets_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[retry]\nbase_ms = 3000\nmax_ms = 3000\n[worker]\npoll_interval_ms = 100\n{}",
            kind("chat", CHAT, "stdin = \"messages\"\nmax_attempts = 2")
        ),
    );
    let s = serve(&cfg, &[]);
    let id = create(&s, &s.token, json!({"kind": "chat"})).await;
    eventually(T, "the task to be ready", || async {
        (!task_messages(&s, &id, "ready").await.is_empty()).then_some(())
    })
    .await;
    for text in ["one", "two", "three"] {
        say(&s, &s.token, &id, text).await;
    }
    // Attempt 1 exits 75 after the third: a retry in 1.5 to 3 s. Between attempts, a fourth.
    let t = eventually(T, "attempt 1 to end", || async {
        let t = task(&s, &id).await;
        (t["status"] == "pending" && t["attempts"] == 1).then_some(t)
    })
    .await;
    assert_eq!(t["checkpoint"], json!({"seen": 3}));
    say(&s, &s.token, &id, "four").await;
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"wake": "none"}));

    let got: Vec<(i64, String)> = task_messages(&s, &id, "got")
        .await
        .iter()
        .map(|m| {
            let c = &m["content"];
            (
                c["attempt"].as_i64().unwrap(),
                c["line"]["content"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "one".into()),
            (1, "two".into()),
            (1, "three".into()),
            (2, "four".into())
        ],
        "each message once, in order; the checkpoint took the first three in"
    );
    let ready2 = task_messages(&s, &id, "ready2").await;
    assert_eq!(ready2[0]["content"]["checkpoint"], json!({"seen": 3}));
    // The owner's messages, by author.
    let page = s
        .get_json(&s.token, &format!("/v1/tasks/{id}/messages?author=user"))
        .await;
    let said: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["author"], "user");
            m["content"].as_str().unwrap()
        })
        .collect();
    assert_eq!(said, vec!["one", "two", "three", "four"]);
    let bad = client()
        .get(s.url(&format!("/v1/tasks/{id}/messages?author=robot")))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// Reads one line of its inbox, says which, and waits; woken, reads one more and completes.
const ONE_LINE: &str = r#"read -r payload
read -r line
printf '{"kind":"got","wake":"%s","line":%s}\n' "${SPOOL_WAKE:-none}" "$line"
if [ -z "$SPOOL_WAKE" ]; then
  echo '{"wait":{"for":"message","timeout_ms":600000}}'
else
  echo '{"result":"done"}'
fi"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_on_stdin_counts_as_read_only_once_the_command_takes_it_from_the_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[worker]\npoll_interval_ms = 100\n{}",
            kind("pick", ONE_LINE, "stdin = \"messages\"")
        ),
    );
    let s = serve(&cfg, &[]);
    // Two messages are there before the attempt: both go down the pipe, the command reads one.
    let id = create(&s, &s.token, json!({"kind": "pick", "delay_ms": 2000})).await;
    say(&s, &s.token, &id, "one").await;
    say(&s, &s.token, &id, "two").await;
    wait_status(&s, &id, "waiting").await;
    // The wait took in only what the command read: the next attempt starts at "two".
    say(&s, &s.token, &id, "three").await;
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let got: Vec<(String, String)> = task_messages(&s, &id, "got")
        .await
        .iter()
        .map(|m| {
            let c = &m["content"];
            (
                c["wake"].as_str().unwrap().to_string(),
                c["line"]["content"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("none".into(), "one".into()),
            ("message".into(), "two".into())
        ],
        "a message written to the pipe but never read by the command was taken as read"
    );
}

/// A server whose kind `name` runs `script` in a task directory under `work/` of the returned
/// directory (its poll every 100 ms), a task of that kind, and the `token` message in which the
/// task said its task token.
async fn a_task_that_said_its_token(
    name: &str,
    script: &str,
) -> (tempfile::TempDir, Server, String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[worker]\npoll_interval_ms = 100\nworkdir = {:?}\n{}",
            work.display().to_string(),
            kind(name, script, "")
        ),
    );
    let s = serve(&cfg, &[]);
    let id = create(&s, &s.token, json!({ "kind": name })).await;
    let hello = eventually(T, "the task token", || async {
        task_messages(&s, &id, "token").await.pop()
    })
    .await;
    (dir, s, id, hello)
}

/// Says its task token, then (woken by nothing yet) waits once the file `go` appears in its task
/// directory; woken, completes.
const WAITER: &str = r#"printf '{"kind":"token","token":"%s"}\n' "$SPOOL_TASK_TOKEN"
if [ -n "$SPOOL_WAKE" ]; then echo '{"result":"woken"}'; exit 0; fi
n=0
while [ ! -e go ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done
echo '{"wait":{"for":"message","timeout_ms":600000}}'"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_left_open_by_an_attempt_that_waited_gets_401_not_the_owners_message() {
    let (dir, s, id, hello) = a_task_that_said_its_token("waiter", WAITER).await;
    let work = dir.path().join("work");
    let tt = hello["content"]["token"].as_str().unwrap().to_string();
    // The attempt's own long poll for its owner's messages, open while the attempt runs.
    let poll = {
        let url = s.url(&format!(
            "/v1/tasks/{id}/messages?author=user&wait_ms=20000"
        ));
        tokio::spawn(async move { client().get(url).bearer_auth(tt).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(work.join(&id).join("go"), b"").unwrap();
    wait_status(&s, &id, "waiting").await;
    say(&s, &s.token, &id, "the answer").await;
    let r = tokio::time::timeout(T, poll).await.unwrap().unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the ended attempt's long poll was handed its owner's message: {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the attempt this task token was issued for has ended"),
        "{body}"
    );
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["result"], "woken", "{done}");
}

/// Says its task token; once the file `go` appears in its task directory, writes a `note`
/// message; once `done` appears, completes.
const TELLER: &str = r#"printf '{"kind":"token","token":"%s"}\n' "$SPOOL_TASK_TOKEN"
n=0
while [ ! -e go ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done
echo '{"kind":"note","text":"written for the claim that runs now"}'
n=0
while [ ! -e done ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done
echo '{"result":"done"}'"#;

/// A task token's stream ends with its attempt even when it never reads the attempt's end: a
/// wait, a wake and a claim by the same worker can all fall between two of its reads, and the
/// claim after a wait runs with the same attempt number. Here that claim is made at once, in
/// one write of the database (the task runs on, with another start time), and the task then
/// writes a message: the stream must close without sending it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_tokens_stream_closes_when_its_task_runs_again_under_another_start() {
    let (dir, s, id, hello) = a_task_that_said_its_token("teller", TELLER).await;
    let work = dir.path().join("work");
    let tt = hello["content"]["token"].as_str().unwrap();
    let after = hello["id"].as_i64().unwrap().to_string();
    let c = client();
    let url = s.url(&format!("/v1/tasks/{id}/events"));
    let mut stream = Stream::open(&c, &url, tt, Some(&after)).await;
    assert_eq!(stream.expect("status").await.json()["status"], "running");
    let db = rusqlite::Connection::open(dir.path().join("data/spool.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let claimed = db
        .execute(
            "UPDATE tasks SET started_at = started_at + 1 WHERE id = ?1 AND status = 'running'",
            [&id],
        )
        .unwrap();
    assert_eq!(claimed, 1);
    std::fs::write(work.join(&id).join("go"), b"").unwrap();
    let note = eventually(T, "the task's note", || async {
        task_messages(&s, &id, "note").await.pop()
    })
    .await;
    // It closes (a status event before that is fine), or it sends the note.
    let sent = loop {
        match stream.next(T).await {
            None => break None,
            Some(e) if e.name() == "message" => break Some(e),
            Some(_) => continue,
        }
    };
    assert!(
        sent.is_none(),
        "the ended attempt's stream was sent message {} of the claim after it: {sent:?}",
        note["id"]
    );
    std::fs::write(work.join(&id).join("done"), b"").unwrap();
}

const AGENT: &str = r#"read -r payload
case "$SPOOL_WAKE" in
  "") echo '{"kind":"question","text":"may I push to main?"}'
      echo '{"checkpoint":{"asked":true}}'
      printf '{"wait":{"for":"message","timeout_ms":%s}}\n' "$(echo "$payload" | sed 's/.*"wait_ms":\([0-9]*\).*/\1/')"
      exit 0;;
  message) read -r line
      printf '{"result":{"answer":%s,"checkpoint":%s,"wake":"message"}}\n' "$line" "$(cat "$SPOOL_CHECKPOINT")";;
  timeout) printf '{"result":{"wake":"timeout","checkpoint":%s}}\n' "$(cat "$SPOOL_CHECKPOINT")";;
esac"#;

fn agent_config(dir: &std::path::Path) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[worker]\nconcurrency = 0\npoll_interval_ms = 100\n{}{}",
            kind("agent", AGENT, "stdin = \"messages\""),
            kind("quick", "echo '{\"result\":\"quick\"}'", "")
        ),
    )
}

/// `spool work` with one slot, reaching the API of `s`.
fn worker(s: &Server) -> common::Proc {
    spawn(
        &["work"],
        &s.config,
        &[
            ("SPOOL_WORKER_CONCURRENCY", "1"),
            ("SPOOL_WORKER_API_URL", &s.base),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_task_frees_its_slot_survives_a_server_kill_and_resumes_on_another_worker() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config(dir.path());
    let mut s = serve(&cfg, &[]);
    let mut a = worker(&s);
    let id = create(
        &s,
        &s.token,
        json!({"kind": "agent", "payload": {"wait_ms": 3_600_000}}),
    )
    .await;
    let c = client();
    let mut first = Stream::open(
        &c,
        &s.url(&format!("/v1/tasks/{id}/events")),
        &s.token,
        None,
    )
    .await;
    let mut seen_ids = Vec::new();
    let mut statuses = Vec::new();
    // Read until the stream shows the task waiting, with its question.
    loop {
        let ev = first.next(T).await.expect("the stream ended early");
        match ev.name() {
            "message" => seen_ids.push(ev.id.clone().unwrap()),
            "status" => {
                let st = ev.json()["status"].as_str().unwrap().to_string();
                if st == "waiting" {
                    assert!(ev.json()["wait"]["until"].is_string());
                    statuses.push(st);
                    break;
                }
                statuses.push(st);
            }
            other => panic!("unexpected event {other}"),
        }
    }
    drop(first);
    let t = task(&s, &id).await;
    assert_eq!(t["attempts"], 0, "a wait spends no attempt");
    assert_eq!(t["checkpoint"], json!({"asked": true}));
    let q = s.get_json(&s.token, "/v1/queues").await;
    let d = q["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .unwrap()
        .clone();
    assert_eq!(
        (d["waiting"].as_u64(), d["running"].as_u64()),
        (Some(1), Some(0))
    );
    // The one slot is free: another task runs while this one waits.
    let quick = create(&s, &s.token, json!({"kind": "quick"})).await;
    assert_eq!(s.wait_terminal(&quick).await["result"], "quick");

    // kill -9 of the server, and the worker goes away: the wait is a row, not a process.
    s.proc.kill9();
    a.terminate(Duration::from_secs(30))
        .expect("worker A stops");
    let s = serve(&cfg, &[]);
    assert_eq!(task(&s, &id).await["status"], "waiting");
    let mut b = worker(&s);

    // Resume the task's stream in the middle of the wait, then answer.
    let last = seen_ids.last().cloned();
    let mut second = Stream::open(
        &c,
        &s.url(&format!("/v1/tasks/{id}/events")),
        &s.token,
        last.as_deref(),
    )
    .await;
    say(&s, &s.token, &id, "yes, push").await;
    let mut answer_seen = false;
    loop {
        let ev = second.next(T).await.expect("the stream ended before `end`");
        match ev.name() {
            "message" => {
                let m = ev.json();
                let mid = ev.id.clone().unwrap();
                assert!(!seen_ids.contains(&mid), "message {mid} came twice");
                seen_ids.push(mid);
                if m["author"] == "user" {
                    assert_eq!(m["content"], "yes, push");
                    answer_seen = true;
                }
            }
            "status" => statuses.push(ev.json()["status"].as_str().unwrap().to_string()),
            "end" => break,
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(answer_seen, "the owner's answer is on the stream");
    let done = task(&s, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let r = &done["result"];
    assert_eq!(r["answer"]["content"], "yes, push", "{done}");
    assert_eq!(r["answer"]["author"], "user");
    assert_eq!(r["checkpoint"], json!({"asked": true}));
    assert_eq!(r["wake"], "message");
    assert!(statuses.contains(&"waiting".to_string()));
    assert_eq!(statuses.last().map(String::as_str), Some("completed"));
    // The change log has every step in order, across both servers and both workers.
    let mut ev = Stream::open(&c, &s.url("/v1/events?after=0"), &s.token, None).await;
    let mut changes = Vec::new();
    while changes.len() < 6 {
        let e = ev.next(T).await.unwrap();
        if e.name() == "status" && e.json()["id"] == id.as_str() {
            changes.push(e.json()["status"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        changes,
        [
            "pending",
            "running",
            "waiting",
            "pending",
            "running",
            "completed"
        ]
    );
    b.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_timeout_resumes_with_the_timeout_reason_and_a_waiting_task_cancels_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config(dir.path());
    let s = serve(&cfg, &[]);
    let mut w = worker(&s);
    let id = create(
        &s,
        &s.token,
        json!({"kind": "agent", "payload": {"wait_ms": 300}}),
    )
    .await;
    let done = s.wait_terminal(&id).await;
    assert_eq!(
        done["result"],
        json!({"wake": "timeout", "checkpoint": {"asked": true}}),
        "{done}"
    );
    assert_eq!(done["attempts"], 1);

    let id = create(
        &s,
        &s.token,
        json!({"kind": "agent", "payload": {"wait_ms": 3_600_000}}),
    )
    .await;
    wait_status(&s, &id, "waiting").await;
    let r = s
        .post_json(&s.token, &format!("/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(
        t["status"], "canceled",
        "a waiting task is canceled at once"
    );
    assert!(t["wait"].is_null());
    // An answer to it now is refused.
    let late = s
        .post_json(
            &s.token,
            &format!("/v1/tasks/{id}/messages"),
            json!({"kind": "say", "content": "too late"}),
        )
        .await;
    assert_eq!(late.status(), StatusCode::CONFLICT);
    w.terminate(Duration::from_secs(30));
}

const CRASHY: &str = r#"read -r payload
prev=$(cat "$SPOOL_CHECKPOINT" 2>/dev/null || echo null)
if [ "$SPOOL_ATTEMPT" -lt 4 ]; then
  printf '{"kind":"saw","attempt":%s,"checkpoint":%s}\n' "$SPOOL_ATTEMPT" "$prev"
  printf '{"checkpoint":{"n":%s}}\n' "$SPOOL_ATTEMPT"
  kill -9 $$
fi
printf '{"result":{"saw":%s}}\n' "$prev""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_retried_after_three_crashes_starts_each_attempt_with_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[retry]\nbase_ms = 20\nmax_ms = 40\n[worker]\npoll_interval_ms = 100\n{}",
            kind("crashy", CRASHY, "max_attempts = 4")
        ),
    );
    let s = serve(&cfg, &[]);
    let id = create(&s, &s.token, json!({"kind": "crashy"})).await;
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], json!({"saw": {"n": 3}}));
    let saw: Vec<Value> = task_messages(&s, &id, "saw")
        .await
        .iter()
        .map(|m| m["content"]["checkpoint"].clone())
        .collect();
    assert_eq!(saw, vec![Value::Null, json!({"n": 1}), json!({"n": 2})]);
}

const TOKEN: &str = r#"printf '{"kind":"token","token":"%s","url":"%s","after":%s}\n' "$SPOOL_TASK_TOKEN" "$SPOOL_URL" "$SPOOL_INBOX_AFTER"
sleep 30"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_token_reads_the_inbox_and_saves_checkpoints_and_a_stream_token_reads_one_task() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[limits]\nmessage_bytes = 1024\n[worker]\npoll_interval_ms = 100\n{}",
            kind("tok", TOKEN, "")
        ),
    );
    let s = serve(&cfg, &[]);
    let alice = s.user_token("alice", false);
    let bob = s.user_token("bob", false);
    let id = create(&s, &alice, json!({"kind": "tok"})).await;
    let other = create(&s, &alice, json!({"kind": "tok"})).await;
    let hello = eventually(T, "the task token", || async {
        task_messages(&s, &id, "token").await.pop()
    })
    .await;
    let tt = hello["content"]["token"].as_str().unwrap().to_string();
    assert!(tt.starts_with("spool_task_"));
    assert_eq!(hello["content"]["url"], s.base.as_str());
    assert_eq!(hello["content"]["after"], 0);
    let c = client();

    // Checkpoints: the task token of the running attempt only.
    let put = |token: String, body: Value| {
        let c = c.clone();
        let url = s.url(&format!("/v1/tasks/{id}/checkpoint"));
        async move {
            c.put(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = put(tt.clone(), json!({"step": 1})).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["checkpoint"],
        json!({"step": 1})
    );
    assert_eq!(task(&s, &id).await["checkpoint"], json!({"step": 1}));
    assert_eq!(
        put(alice.clone(), json!(1)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let big = json!("x".repeat(2000));
    assert_eq!(
        put(tt.clone(), big).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let elsewhere = c
        .put(s.url(&format!("/v1/tasks/{other}/checkpoint")))
        .bearer_auth(&tt)
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::UNAUTHORIZED);

    // The inbox with the task token: the owner's messages, and a long poll for the next.
    let m1 = say(&s, &alice, &id, "first").await;
    let inbox: Value = c
        .get(s.url(&format!("/v1/tasks/{id}/messages?author=user")))
        .bearer_auth(&tt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 1);
    assert_eq!(inbox["messages"][0]["content"], "first");
    let after = m1["id"].as_i64().unwrap();
    let poll = {
        let c = c.clone();
        let url = s.url(&format!(
            "/v1/tasks/{id}/messages?author=user&after={after}&wait_ms=10000"
        ));
        let tt = tt.clone();
        tokio::spawn(async move {
            c.get(url)
                .bearer_auth(tt)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    say(&s, &alice, &id, "second").await;
    let got = poll.await.unwrap();
    assert_eq!(got["messages"][0]["content"], "second", "{got}");
    // The inbox over SSE with the task token is read too: what it sent counts as read by the
    // attempt (so a wait after it parks, and a checkpoint takes it in).
    let second = got["messages"][0]["id"].as_i64().unwrap();
    let m3 = say(&s, &alice, &id, "third").await;
    let mut stream = Stream::open(
        &c,
        &s.url(&format!("/v1/tasks/{id}/events?author=user")),
        &tt,
        Some(&second.to_string()),
    )
    .await;
    let e = loop {
        let e = stream.next(T).await.expect("the stream ended");
        if e.name() == "message" {
            break e;
        }
    };
    assert_eq!(e.json()["content"], "third");
    // Recorded before it was sent.
    let read: i64 = common::open_db(dir.path())
        .query_row("SELECT inbox_read FROM tasks WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(read, m3["id"].as_i64().unwrap());
    drop(stream);
    // A task token's stream ends with its attempt (a later attempt after a wait has the same
    // number, and must not have messages recorded as read for it): no `end` event, just closed.
    let hello2 = eventually(T, "the other task's token", || async {
        task_messages(&s, &other, "token").await.pop()
    })
    .await;
    let tt2 = hello2["content"]["token"].as_str().unwrap().to_string();
    let mut stream =
        Stream::open(&c, &s.url(&format!("/v1/tasks/{other}/events")), &tt2, None).await;
    assert_eq!(stream.expect("status").await.json()["status"], "running");
    let r = s
        .post_json(&alice, &format!("/v1/tasks/{other}/cancel"), json!({}))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let mut after = Vec::new();
    while let Some(e) = stream.next(T).await {
        after.push(e.name().to_string());
        assert!(after.len() < 10, "the stream went on: {after:?}");
    }
    assert!(
        !after.iter().any(|n| n == "end"),
        "the attempt's stream outlived it: {after:?}"
    );

    // A stream token: this task's events and messages, as ?access_token=, nothing else.
    let r = s
        .post_json(&alice, &format!("/v1/tasks/{id}/stream_token"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let st: Value = r.json().await.unwrap();
    let stream_token = st["token"].as_str().unwrap().to_string();
    assert!(stream_token.starts_with("spool_stream_"));
    assert!(st["expires_at"].is_string());
    let get = |path: String| {
        let c = c.clone();
        let url = s.url(&path);
        async move { c.get(url).send().await.unwrap() }
    };
    let events = get(format!("/v1/tasks/{id}/events?access_token={stream_token}")).await;
    assert_eq!(events.status(), StatusCode::OK);
    assert!(events.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    drop(events);
    let msgs = get(format!(
        "/v1/tasks/{id}/messages?access_token={stream_token}"
    ))
    .await;
    assert_eq!(msgs.status(), StatusCode::OK);
    assert_eq!(
        msgs.json::<Value>().await.unwrap()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["author"] == "user")
            .count(),
        3
    );
    for path in [
        format!("/v1/tasks/{other}/events?access_token={stream_token}"),
        format!("/v1/tasks/{other}/messages?access_token={stream_token}"),
        format!("/v1/tasks/{id}/messages?access_token={alice}"),
        format!("/v1/tasks/{id}/events?access_token=spool_stream_00"),
    ] {
        assert_eq!(
            get(path.clone()).await.status(),
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let as_bearer = c
        .get(s.url(&format!("/v1/tasks/{id}")))
        .bearer_auth(&stream_token)
        .send()
        .await
        .unwrap();
    assert_eq!(as_bearer.status(), StatusCode::UNAUTHORIZED);
    // Only the owner (or an admin) gets one.
    let r = s
        .post_json(&bob, &format!("/v1/tasks/{id}/stream_token"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The attempt ends: its task token reads nothing more.
    let r = s
        .post_json(&alice, &format!("/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    wait_status(&s, &id, "canceled").await;
    let gone = c
        .get(s.url(&format!("/v1/tasks/{id}/messages")))
        .bearer_auth(&tt)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::UNAUTHORIZED);
    let _ = s
        .post_json(&alice, &format!("/v1/tasks/{other}/cancel"), json!({}))
        .await;
    // Tokens in query strings are never logged.
    let log = s.proc.stderr();
    assert!(
        !log.contains(&stream_token),
        "the stream token is in the log"
    );
    assert!(!log.contains(&tt), "the task token is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_with_a_stream_token_count_against_the_task_owners_request_rate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[limits]\nrequests_per_second = 1\nrequests_burst = 3\n[worker]\nconcurrency = 0\n",
    );
    let s = serve(&cfg, &[]);
    let alice = s.user_token("alice", false);
    let id = create(&s, &alice, json!({"kind": "nothing"})).await;
    let r = s
        .post_json(&alice, &format!("/v1/tasks/{id}/stream_token"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    // alice spent her burst on the two requests above; the token's reads are hers too.
    let c = client();
    let mut refused = 0;
    for _ in 0..5 {
        let r = c
            .get(s.url(&format!("/v1/tasks/{id}/messages?access_token={token}")))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    assert!(refused >= 3, "only {refused} of 5 reads were refused");
}
