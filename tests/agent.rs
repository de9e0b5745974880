//! The reference coding agent (examples/agent) as a command kind, against a scripted Messages
//! API server on 127.0.0.1 and a local git repository: it clones, works through the tools,
//! streams every step as a message, reads the owner's follow-up, and returns the diff; a cancel
//! mid-loop stops it. The same run inside a container kind is in tests/containers.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::agent::{self, ScriptedModel};
use common::{eventually, serve, write_config, Server};
use serde_json::{json, Value};

/// `spool serve` with the agent as kind `agent`, calling `model`.
fn server(dir: &Path, model: &ScriptedModel) -> Server {
    let cfg = write_config(
        dir,
        &format!(
            "[retry]\nbase_ms = 10\nmax_ms = 20\n\
             [kinds.agent]\ncommand = [{bin:?}]\n\
             env = {{ ANTHROPIC_API_KEY = {key:?}, ANTHROPIC_BASE_URL = {base:?}, AGENT_MODEL = {m:?} }}\n",
            bin = agent::agent_bin().display().to_string(),
            key = agent::API_KEY,
            base = model.base,
            m = agent::MODEL,
        ),
    );
    serve(&cfg, &[])
}

async fn enqueue(s: &Server, payload: Value, extra: Value) -> String {
    let mut body = json!({"kind": "agent", "payload": payload});
    if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(x.clone());
    }
    let r = s.post_json(&s.token, "/v1/tasks", body).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Processes whose environment names task `id` (the agent and whatever it started).
fn processes_of(id: &str) -> Vec<i32> {
    let needle = format!("SPOOL_TASK_ID={id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_clones_edits_streams_every_step_reads_the_owner_and_returns_the_diff() {
    let dir = tempfile::tempdir().unwrap();
    let src = agent::repo(dir.path());
    let expected = agent::expected_diff(dir.path(), &src);
    let model = ScriptedModel::start(agent::script(), Some(1)).await;
    let s = server(dir.path(), &model);
    let id = enqueue(&s, agent::payload(src.to_str().unwrap()), json!({})).await;
    agent::check_conversation(&s, &model, &id, &expected).await;
    // The source repository is untouched: the agent worked in its clone.
    assert_eq!(
        std::fs::read_to_string(src.join("greet.sh")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_canceled_mid_loop_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let src = agent::repo(dir.path());
    // The second answer never comes: the agent waits on the model when the cancel arrives.
    let model = ScriptedModel::start(agent::script(), Some(1)).await;
    let s = server(dir.path(), &model);
    let id = enqueue(&s, agent::payload(src.to_str().unwrap()), json!({})).await;
    model.wait_requests(2, Duration::from_secs(60)).await;
    assert!(!processes_of(&id).is_empty(), "the agent runs");

    let r = s
        .post_json(&s.token, &format!("/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    eventually(
        Duration::from_secs(5),
        "the agent's processes gone",
        || async { processes_of(&id).is_empty().then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the held request dropped",
        || async { model.abandoned().then_some(()) },
    )
    .await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "canceled");
    assert_eq!(model.requests().len(), 2, "no model call after the cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refused_by_the_model_api_fails_naming_the_status_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let src = agent::repo(dir.path());
    // No steps: the first request is answered 400.
    let model = ScriptedModel::start(Vec::new(), None).await;
    let s = server(dir.path(), &model);
    let id = enqueue(
        &s,
        agent::payload(src.to_str().unwrap()),
        json!({"max_attempts": 1}),
    )
    .await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "failed", "{t}");
    let err = t["last_error"].as_str().unwrap();
    assert!(
        err.contains("the model API answered 400: the script has no step 0"),
        "{err}"
    );
    assert!(!err.contains(agent::API_KEY), "{err}");
    assert_eq!(model.requests().len(), 1, "a 400 is not tried again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_payload_without_a_repo_fails_saying_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedModel::start(agent::script(), None).await;
    let s = server(dir.path(), &model);
    let id = enqueue(&s, json!({"ask": "anything"}), json!({"max_attempts": 1})).await;
    let t = s.wait_terminal(&id).await;
    assert_eq!(t["status"], "failed", "{t}");
    let err = t["last_error"].as_str().unwrap();
    assert!(err.contains("the payload needs \"repo\""), "{err}");
    assert!(
        model.requests().is_empty(),
        "no model call for a bad payload"
    );
}
