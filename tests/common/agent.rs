//! The reference coding agent (examples/agent) under test: a scripted Anthropic Messages API
//! server on 127.0.0.1 that answers a fixed tool-use conversation and records every request, a
//! local git repository for the agent to clone, and the checks one run must pass, shared by the
//! command-kind tests (tests/agent.rs) and the container-kind ones (tests/containers.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{eventually, Server};

/// The built example (cargo builds examples beside the binaries: `--all-targets`).
pub fn agent_bin() -> PathBuf {
    let bin = super::spool_bin().parent().unwrap().join("examples/agent");
    assert!(
        bin.exists(),
        "{} is missing: build it with cargo build --profile ci --all-targets (tests/run.sh does)",
        bin.display()
    );
    bin
}

pub const API_KEY: &str = "test-key-not-secret";
pub const MODEL: &str = "scripted-model";
pub const ASK: &str = "greet the person named on the command line";
pub const FOLLOW_UP: &str = "also keep it POSIX sh";
pub const NEW_GREET: &str = "#!/bin/sh\necho \"hello, $1\"\n";
pub const SUMMARY: &str = "greet.sh now greets the name it is given.";

/// One request the agent made.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub api_key: Option<String>,
    pub version: Option<String>,
    pub body: Value,
}

struct Script {
    steps: Vec<Value>,
    requests: Mutex<Vec<Recorded>>,
    /// The request (0-based) whose answer waits for `release`.
    hold_at: Option<usize>,
    released: tokio::sync::watch::Sender<bool>,
    /// The held request's client went away before the answer (the agent was stopped).
    abandoned: Mutex<bool>,
}

/// The scripted Messages API server.
pub struct ScriptedModel {
    pub base: String,
    script: Arc<Script>,
}

/// Sets `abandoned` when dropped armed: axum drops a handler whose client closed.
struct Abandon(Arc<Script>, bool);

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.1 {
            *self.0.abandoned.lock().unwrap() = true;
        }
    }
}

async fn messages(
    State(s): State<Arc<Script>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let idx = {
        let mut r = s.requests.lock().unwrap();
        r.push(Recorded {
            api_key: header("x-api-key"),
            version: header("anthropic-version"),
            body,
        });
        r.len() - 1
    };
    if s.hold_at == Some(idx) {
        let mut guard = Abandon(s.clone(), true);
        let mut rx = s.released.subscribe();
        let _ = rx.wait_for(|r| *r).await;
        guard.1 = false;
    }
    match s.steps.get(idx) {
        Some(step) => (StatusCode::OK, Json(step.clone())),
        None => (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"type": "error", "error": {"type": "invalid_request_error",
                "message": format!("the script has no step {idx}")}}),
            ),
        ),
    }
}

impl ScriptedModel {
    /// Serves `steps` in order on 127.0.0.1; the answer to request `hold_at` waits for
    /// [`ScriptedModel::release`].
    pub async fn start(steps: Vec<Value>, hold_at: Option<usize>) -> Self {
        let script = Arc::new(Script {
            steps,
            requests: Mutex::new(Vec::new()),
            hold_at,
            released: tokio::sync::watch::channel(false).0,
            abandoned: Mutex::new(false),
        });
        let app = Router::new()
            .route("/v1/messages", post(messages))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ScriptedModel { base, script }
    }

    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.script.requests.lock().unwrap().clone()
    }

    pub fn release(&self) {
        let _ = self.script.released.send(true);
    }

    pub fn abandoned(&self) -> bool {
        *self.script.abandoned.lock().unwrap()
    }

    /// Waits (up to `limit`) until `n` requests have arrived.
    pub async fn wait_requests(&self, n: usize, limit: Duration) {
        eventually(limit, &format!("{n} model requests"), || async {
            (self.script.requests.lock().unwrap().len() >= n).then_some(())
        })
        .await
    }
}

fn tool_use(id: &str, name: &str, input: Value) -> Value {
    json!({"type": "tool_use", "id": id, "name": name, "input": input})
}

fn answer(n: usize, content: Vec<Value>, stop: &str) -> Value {
    json!({"id": format!("msg_{n}"), "type": "message", "role": "assistant", "model": MODEL,
        "content": content, "stop_reason": stop,
        "usage": {"input_tokens": 10, "output_tokens": 10}})
}

/// The conversation: look, read (one path inside, one trying to leave by `..`, one through a
/// symbolic link out of the clone), write, run, done.
pub fn script() -> Vec<Value> {
    vec![
        answer(
            0,
            vec![
                json!({"type": "text", "text": "Let me look at the files first."}),
                tool_use("toolu_1", "list_files", json!({})),
            ],
            "tool_use",
        ),
        answer(
            1,
            vec![
                tool_use("toolu_2", "read_file", json!({"path": "greet.sh"})),
                tool_use("toolu_3", "read_file", json!({"path": "../outside.txt"})),
                tool_use("toolu_6", "read_file", json!({"path": "escape/passwd"})),
            ],
            "tool_use",
        ),
        answer(
            2,
            vec![tool_use(
                "toolu_4",
                "write_file",
                json!({"path": "greet.sh", "content": NEW_GREET}),
            )],
            "tool_use",
        ),
        answer(
            3,
            vec![tool_use(
                "toolu_5",
                "run_command",
                json!({"command": "sh greet.sh spool"}),
            )],
            "tool_use",
        ),
        answer(
            4,
            vec![json!({"type": "text", "text": SUMMARY})],
            "end_turn",
        ),
    ]
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A git repository at `dir/src` with `greet.sh`, `README.md` and `escape` (a symbolic link to
/// `/etc`), one commit.
pub fn repo(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "--quiet"]);
    std::fs::write(src.join("greet.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(src.join("README.md"), "# greet\n").unwrap();
    // A link out of the clone: reading through it must be refused.
    std::os::unix::fs::symlink("/etc", src.join("escape")).unwrap();
    git(&src, &["add", "--all"]);
    git(&src, &["commit", "--quiet", "-m", "first"]);
    src
}

/// The diff the run must return: the same edit made by hand in another clone.
pub fn expected_diff(dir: &Path, src: &Path) -> String {
    let by_hand = dir.join("by-hand");
    git(
        dir,
        &["clone", "--quiet", "--", src.to_str().unwrap(), "by-hand"],
    );
    std::fs::write(by_hand.join("greet.sh"), NEW_GREET).unwrap();
    git(&by_hand, &["add", "--all"]);
    git(&by_hand, &["diff", "--cached", "--no-color"])
}

/// The task's messages by `author`, oldest first.
pub async fn messages_by(s: &Server, id: &str, author: &str) -> Vec<Value> {
    let v = s
        .get_json(
            &s.token,
            &format!("/v1/tasks/{id}/messages?author={author}&limit=1000"),
        )
        .await;
    v["messages"].as_array().cloned().unwrap_or_default()
}

/// Runs the whole conversation on task `id` (enqueued with the payload of [`payload`]) against
/// `model` (started with [`script`] and `hold_at = Some(1)`): the owner writes while the second
/// answer is held, and the run must end with the diff, every step as a message in order, and
/// the follow-up in the model's next request.
pub async fn check_conversation(s: &Server, model: &ScriptedModel, id: &str, expected: &str) {
    model.wait_requests(2, Duration::from_secs(60)).await;
    let r = s
        .post_json(
            &s.token,
            &format!("/v1/tasks/{id}/messages"),
            json!({"kind": "say", "content": FOLLOW_UP}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    model.release();

    let t = s.wait_terminal(id).await;
    let task_msgs = messages_by(s, id, "task").await;
    assert_eq!(t["status"], "completed", "{t}\n{task_msgs:#?}");
    assert_eq!(t["result"]["diff"], expected, "the diff of the edit");
    assert_eq!(t["result"]["diff_truncated"], false);
    assert_eq!(t["result"]["summary"], SUMMARY);
    assert_eq!(t["result"]["turns"], 5);

    // Every step, in order (stderr lines aside: they are the tools' own).
    let steps: Vec<(String, String)> = task_msgs
        .iter()
        .filter(|m| m["kind"] != "stderr")
        .map(|m| {
            let c = &m["content"];
            let what = c["name"]
                .as_str()
                .or(c["id"].as_str())
                .or(c["text"].as_str())
                .unwrap_or_default();
            (m["kind"].as_str().unwrap().to_string(), what.to_string())
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("log", "cloned "),
        ("assistant", "Let me look at the files first."),
        ("tool_call", "list_files"),
        ("tool_result", "list_files"),
        ("tool_call", "read_file"),
        ("tool_call", "read_file"),
        ("tool_call", "read_file"),
        ("tool_result", "read_file"),
        ("tool_result", "read_file"),
        ("tool_result", "read_file"),
        ("tool_call", "write_file"),
        ("tool_result", "write_file"),
        ("tool_call", "run_command"),
        ("tool_result", "run_command"),
        ("assistant", SUMMARY),
    ]
    .iter()
    .map(|(k, w)| (k.to_string(), w.to_string()))
    .collect();
    assert_eq!(steps.len(), want.len(), "{steps:#?}");
    for (got, want) in steps.iter().zip(&want) {
        assert_eq!(got.0, want.0, "{steps:#?}");
        assert!(got.1.starts_with(&want.1), "{got:?} is not {want:?}");
    }
    let result_of = |tool_id: &str| {
        task_msgs
            .iter()
            .find(|m| m["kind"] == "tool_result" && m["content"]["id"] == tool_id)
            .unwrap()["content"]
            .clone()
    };
    assert_eq!(
        result_of("toolu_3")["is_error"],
        true,
        "a path out of the clone is refused"
    );
    let escape = result_of("toolu_6");
    assert_eq!(
        escape["is_error"], true,
        "a link out of the clone is refused: {escape}"
    );
    assert!(
        escape["output"]
            .as_str()
            .unwrap()
            .contains("leads out of the repository"),
        "{escape}"
    );
    assert_eq!(result_of("toolu_4")["is_error"], false);

    // What the model was sent.
    let reqs = model.requests();
    assert_eq!(reqs.len(), 5, "one request per turn");
    for r in &reqs {
        assert_eq!(r.api_key.as_deref(), Some(API_KEY));
        assert_eq!(r.version.as_deref(), Some("2023-06-01"));
        assert_eq!(r.body["model"], MODEL);
        let tools: Vec<&str> = r.body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            tools,
            ["list_files", "read_file", "write_file", "run_command"]
        );
    }
    assert_eq!(reqs[0].body["messages"][0]["content"][0]["text"], ASK);
    // The last user turn of request `n`, as (tool id → (content, is_error), texts).
    let last_turn = |n: usize| {
        let msgs = reqs[n].body["messages"].as_array().unwrap().clone();
        let last = msgs.last().unwrap().clone();
        assert_eq!(last["role"], "user");
        last["content"].as_array().unwrap().clone()
    };
    let tool_result = |n: usize, tool: &str| {
        last_turn(n)
            .into_iter()
            .find(|b| b["type"] == "tool_result" && b["tool_use_id"] == tool)
            .unwrap_or_else(|| panic!("request {n} has no result of {tool}"))
    };
    let listing = tool_result(1, "toolu_1")["content"]
        .as_str()
        .unwrap()
        .to_string();
    let mut files: Vec<&str> = listing.lines().collect();
    files.sort();
    assert_eq!(
        files,
        ["README.md", "escape", "greet.sh"],
        "the listing leaves .git out and lists a link without following it"
    );
    assert_eq!(tool_result(2, "toolu_2")["content"], "#!/bin/sh\necho hi\n");
    assert_eq!(tool_result(2, "toolu_3")["is_error"], true);
    assert_eq!(tool_result(2, "toolu_6")["is_error"], true);
    let texts: Vec<Value> = last_turn(2)
        .into_iter()
        .filter(|b| b["type"] == "text")
        .map(|b| b["text"].clone())
        .collect();
    assert_eq!(
        texts,
        [json!(format!("The user writes: {FOLLOW_UP}"))],
        "the owner's follow-up reaches the next turn, once"
    );
    let ran = tool_result(4, "toolu_5")["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ran.starts_with("exit code: 0\n"), "{ran}");
    assert!(ran.contains("hello, spool"), "{ran}");
}

/// The payload asking for the change to the repository at `repo` (as the agent sees it).
pub fn payload(repo: &str) -> Value {
    json!({"repo": repo, "ask": ASK})
}
