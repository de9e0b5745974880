//! The reference coding agent: a spool command or container kind that makes a change to a git
//! repository with a model, and returns the diff.
//!
//! The payload is `{"repo": "<git URL or path>", "ask": "<the change, in words>"}`. The agent
//! clones the repository into `repo/` under its working directory (a retry finds the clone its
//! last attempt made and does not clone again), then runs a tool loop against the Anthropic
//! Messages API with four tools (`list_files`, `read_file`, `write_file`, `run_command`), all
//! confined to the clone. Every step is a stdout line spool turns into a message: `assistant`
//! (the model's text), `tool_call` and `tool_result`. Before each model turn it reads the owner's
//! new messages (`GET $SPOOL_URL/v1/tasks/$SPOOL_TASK_ID/messages?author=user`, with the
//! attempt's task token) and hands them to the model. When the model ends its turn without a
//! tool call, the result is `{"diff": <git diff of everything changed>, "summary": <its last
//! text>, "turns": N}`. A cancel stops it at once: spool kills the process group, or the
//! container.
//!
//! Environment: `ANTHROPIC_API_KEY` (required), `ANTHROPIC_BASE_URL` (default
//! `https://api.anthropic.com`), `AGENT_MODEL` (default `claude-sonnet-4-5`), `AGENT_MAX_TURNS`
//! (default 40), `AGENT_MAX_TOKENS` (per model turn, default 8192), `AGENT_COMMAND_TIMEOUT_S`
//! (per `run_command`, default 120).
//!
//! ```toml
//! [kinds.agent]
//! command = ["/usr/local/bin/spool-agent"]   # installed from target/release/examples/agent
//! env = { ANTHROPIC_API_KEY = "sk-ant-…" }
//! timeout_ms = 3600000
//! ```

mod model;
mod tools;

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

/// A result line longer than spool's `limits.message_bytes` (64 KiB by default) would be cut
/// and stored as a log line: the diff in it is cut to keep the line under this.
const RESULT_LINE_LIMIT: usize = 60_000;
/// A `tool_result` message carries at most this much of the output (the model gets it all, up
/// to [`tools::OUTPUT_LIMIT`]).
const MESSAGE_OUTPUT_LIMIT: usize = 4096;

const SYSTEM: &str = "You are a coding agent. You work in a clone of a git repository, which is \
the current directory of every tool. Make the change the user asks for with the tools: look \
before you edit, keep the change small, and run the project's checks when it has some. When the \
change is made, answer with a short summary and no tool call. The user may write to you while \
you work; their messages arrive as text beside the tool results.";

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agent: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One stdout line: a message of kind `kind` for spool (or the result, or a checkpoint).
fn emit(line: Value) {
    println!("{line}");
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn env_num(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| format!("{name} must be a whole number, not {v:?}")),
        _ => Ok(default),
    }
}

async fn run() -> Result<(), String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading the payload from stdin: {e}"))?;
    let payload: Value =
        serde_json::from_str(&input).map_err(|e| format!("the payload is not JSON: {e}"))?;
    let field = |k: &str| {
        payload[k]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                format!("the payload needs \"{k}\" (a string): {{\"repo\": …, \"ask\": …}}")
            })
    };
    let (repo, ask) = (field("repo")?, field("ask")?);

    let key = std::env::var("ANTHROPIC_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or("ANTHROPIC_API_KEY is not set (give it in the kind's env table)")?;
    let model = model::Model::new(
        &env_or("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
        key,
        env_or("AGENT_MODEL", "claude-sonnet-4-5"),
        env_num("AGENT_MAX_TOKENS", 8192)?,
    )?;
    let max_turns = env_num("AGENT_MAX_TURNS", 40)?;
    let command_timeout = Duration::from_secs(env_num("AGENT_COMMAND_TIMEOUT_S", 120)?);

    let workdir = std::env::current_dir().map_err(|e| format!("working directory: {e}"))?;
    let clone = workdir.join("repo");
    if clone.join(".git").is_dir() {
        emit(
            json!({"kind": "log", "text": "the clone of the last attempt is here: not cloned again"}),
        );
    } else {
        git(&workdir, &["clone", "--quiet", "--", &repo, "repo"]).await?;
        emit(json!({"kind": "log", "text": format!("cloned {repo}")}));
    }
    let tools = tools::Tools::new(&clone, command_timeout)
        .map_err(|e| format!("the clone at {}: {e}", clone.display()))?;
    let definitions = tools::definitions();
    let mut inbox = Inbox::from_env();

    let mut conversation =
        vec![json!({"role": "user", "content": [{"type": "text", "text": ask}]})];
    let mut summary = String::new();
    for turn in 1..=max_turns {
        // The owner's follow-ups join the user turn the model is about to read.
        let said = inbox.read().await;
        if let Some(Value::Array(blocks)) =
            conversation.last_mut().and_then(|m| m.get_mut("content"))
        {
            for text in said {
                blocks.push(json!({"type": "text", "text": format!("The user writes: {text}")}));
            }
        }

        let answer = model
            .turn(SYSTEM, &definitions, &conversation)
            .await
            .map_err(|e| e.message)?;
        let content = answer["content"].as_array().cloned().unwrap_or_default();
        let mut calls = Vec::new();
        for block in &content {
            match block["type"].as_str() {
                Some("text") => {
                    let text = block["text"].as_str().unwrap_or_default();
                    summary = text.to_string();
                    emit(json!({"kind": "assistant", "text": text}));
                }
                Some("tool_use") => {
                    emit(
                        json!({"kind": "tool_call", "id": block["id"], "name": block["name"],
                        "input": block["input"]}),
                    );
                    calls.push(block.clone());
                }
                _ => {}
            }
        }
        conversation.push(json!({"role": "assistant", "content": content}));
        if calls.is_empty() {
            return finish(&clone, &summary, turn).await;
        }

        let mut results = Vec::new();
        for call in calls {
            let name = call["name"].as_str().unwrap_or_default();
            let out = tools.call(name, &call["input"]).await;
            emit(
                json!({"kind": "tool_result", "id": call["id"], "name": name,
                "is_error": out.is_error, "output": tools::cut(&out.text, MESSAGE_OUTPUT_LIMIT)}),
            );
            results.push(json!({"type": "tool_result", "tool_use_id": call["id"],
                "content": out.text, "is_error": out.is_error}));
        }
        conversation.push(json!({"role": "user", "content": results}));
    }
    Err(format!(
        "the model did not finish in {max_turns} turns (AGENT_MAX_TURNS)"
    ))
}

/// The result line: the diff of everything the agent changed, new files included.
async fn finish(clone: &Path, summary: &str, turns: u64) -> Result<(), String> {
    git(clone, &["add", "--all"]).await?;
    let diff = git(clone, &["diff", "--cached", "--no-color"]).await?;
    let mut shown = diff.as_str();
    loop {
        let line = json!({"result": {
            "diff": shown,
            "diff_truncated": shown.len() < diff.len(),
            "summary": summary,
            "turns": turns,
        }});
        let text = line.to_string();
        if text.len() <= RESULT_LINE_LIMIT || shown.is_empty() {
            println!("{text}");
            return Ok(());
        }
        let mut end = shown.len() / 2;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown = &shown[..end];
    }
}

/// Runs git in `dir`; its stdout, or an error with its stderr.
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        // Never ask for a password on a terminal nobody watches.
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("git {}: {e}", args[0]))?;
    if !out.status.success() {
        return Err(format!(
            "git {} failed: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The owner's messages to this task, read through spool's API with the attempt's token, from
/// where this attempt's inbox starts (`SPOOL_INBOX_AFTER`). Without `SPOOL_URL` (the agent run
/// by hand) there is no inbox.
struct Inbox {
    client: reqwest::Client,
    url: Option<String>,
    token: String,
    after: i64,
}

impl Inbox {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let url = match (var("SPOOL_URL"), var("SPOOL_TASK_ID")) {
            (Some(base), Some(id)) => Some(format!(
                "{}/v1/tasks/{id}/messages",
                base.trim_end_matches('/')
            )),
            _ => None,
        };
        Inbox {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            url,
            token: var("SPOOL_TASK_TOKEN").unwrap_or_default(),
            after: var("SPOOL_INBOX_AFTER")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }
    }

    /// The texts of the messages written since the last read. A failed read is reported as a
    /// log message and the agent goes on: the messages are read again at the next turn.
    async fn read(&mut self) -> Vec<String> {
        let Some(url) = &self.url else {
            return Vec::new();
        };
        let got = async {
            let resp = self
                .client
                .get(url)
                .query(&[
                    ("author", "user"),
                    ("after", &self.after.to_string()),
                    ("limit", "100"),
                ])
                .bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?;
            if !resp.status().is_success() {
                return Err(format!("spool answered {}", resp.status().as_u16()));
            }
            resp.json::<Value>()
                .await
                .map_err(|e| e.without_url().to_string())
        }
        .await;
        let page = match got {
            Ok(p) => p,
            Err(e) => {
                emit(
                    json!({"kind": "log", "text": format!("could not read the owner's messages: {e}")}),
                );
                return Vec::new();
            }
        };
        if let Some(next) = page["next_after"].as_i64() {
            self.after = next;
        }
        page["messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| match &m["content"] {
                        Value::String(s) => s.clone(),
                        c => c["text"]
                            .as_str()
                            .map_or_else(|| c.to_string(), str::to_string),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
