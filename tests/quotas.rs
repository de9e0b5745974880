//! Per-user and per-task quotas of `[limits]`: over one, `429 too_many_requests` naming the
//! limit with `Retry-After`, and nothing written; a task's own messages past the limit end in
//! one `truncated` message and the task goes on. Real `spool serve`, real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{open_db, serve, write_config};
use serde_json::{json, Value};

async fn post(s: &common::Server, token: &str, path: &str, body: Value) -> reqwest::Response {
    s.post_json(token, path, body).await
}

async fn assert_429(resp: reqwest::Response, names: &str) {
    assert_eq!(resp.status(), 429);
    assert!(
        resp.headers().get("retry-after").is_some(),
        "no Retry-After"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(names), "{msg:?} should name {names:?}");
}

fn task_count(s: &common::Server) -> i64 {
    open_db(&s.dir)
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_tasks_per_user_are_capped_and_a_refused_request_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[worker]\nconcurrency = 0\n[limits]\npending_tasks_per_user = 3\n",
    );
    let s = serve(&cfg, &[]);
    let alice = s.user_token("alice", false);
    let mut ids = vec![];
    for _ in 0..3 {
        let r = post(&s, &alice, "/v1/tasks", json!({"kind": "k"})).await;
        assert_eq!(r.status(), 201);
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_429(
        post(&s, &alice, "/v1/tasks", json!({"kind": "k"})).await,
        "pending tasks per user limit of 3",
    )
    .await;
    // Another user has a quota of their own.
    let bob = s.user_token("bob", false);
    assert_eq!(
        post(&s, &bob, "/v1/tasks", json!({"kind": "k"}))
            .await
            .status(),
        201
    );
    // A replay of a key is not a new task: it still answers with the original.
    assert_eq!(task_count(&s), 4);
    // A finished task frees its place; a batch that does not fit is refused whole.
    let r = post(
        &s,
        &alice,
        &format!("/v1/tasks/{}/cancel", ids[0]),
        json!({}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_429(
        post(
            &s,
            &alice,
            "/v1/tasks/batch",
            json!({"tasks": [{"kind": "k"}, {"kind": "k"}]}),
        )
        .await,
        "pending tasks per user",
    )
    .await;
    assert_eq!(task_count(&s), 4, "a refused batch wrote something");
    assert_eq!(
        post(&s, &alice, "/v1/tasks", json!({"kind": "k"}))
            .await
            .status(),
        201
    );
    // Full again: the canceled task cannot come back by a retry either.
    assert_429(
        post(
            &s,
            &alice,
            &format!("/v1/tasks/{}/retry", ids[0]),
            json!({}),
        )
        .await,
        "pending tasks per user",
    )
    .await;
    let t = s.get_json(&alice, &format!("/v1/tasks/{}", ids[0])).await;
    assert_eq!(
        t["status"], "canceled",
        "a refused retry changed the task: {t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_bytes_per_user_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[worker]\nconcurrency = 0\n[limits]\npayload_bytes_per_user = 1000\n",
    );
    let s = serve(&cfg, &[]);
    let big = "x".repeat(600);
    assert_eq!(
        post(
            &s,
            &s.token,
            "/v1/tasks",
            json!({"kind": "k", "payload": big})
        )
        .await
        .status(),
        201
    );
    assert_429(
        post(
            &s,
            &s.token,
            "/v1/tasks",
            json!({"kind": "k", "payload": big}),
        )
        .await,
        "payload bytes per user limit of 1000",
    )
    .await;
    assert_eq!(task_count(&s), 1);
    assert_eq!(
        post(
            &s,
            &s.token,
            "/v1/tasks",
            json!({"kind": "k", "payload": "small"})
        )
        .await
        .status(),
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_messages_past_the_task_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[worker]\nconcurrency = 0\n[limits]\nmessages_per_task = 5\n",
    );
    let s = serve(&cfg, &[]);
    let t: Value = post(&s, &s.token, "/v1/tasks", json!({"kind": "k"}))
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/v1/tasks/{}/messages", t["id"].as_str().unwrap());
    for i in 0..5 {
        let r = post(&s, &s.token, &path, json!({"kind": "note", "content": i})).await;
        assert_eq!(r.status(), 201);
    }
    assert_429(
        post(&s, &s.token, &path, json!({"kind": "note", "content": 5})).await,
        "messages per task limit of 5",
    )
    .await;
    let n: i64 = open_db(&s.dir)
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_printing_without_end_costs_the_message_limit_and_the_task_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[limits]\nmessages_per_task = 20\n\
         [kinds.chatty]\ncommand = [\"sh\", \"-c\", \"yes | head -n 200000; echo '{\\\"result\\\": \\\"done\\\"}'\"]\n",
    );
    let s = serve(&cfg, &[]);
    let t: Value = post(&s, &s.token, "/v1/tasks", json!({"kind": "chatty"}))
        .await
        .json()
        .await
        .unwrap();
    let id = t["id"].as_str().unwrap().to_string();
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], "done");
    let page = s
        .get_json(&s.token, &format!("/v1/tasks/{id}/messages?limit=1000"))
        .await;
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 21, "20 lines and one truncated message");
    assert!(msgs[..20].iter().all(|m| m["content"] == "y"));
    assert_eq!(msgs[20]["kind"], "truncated");
    assert_eq!(msgs[20]["content"]["limit"], 20);
}
