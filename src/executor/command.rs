//! The `command` executor: one child process per attempt.
//!
//! The payload (JSON) is written to the child's stdin; `SPOOL_TASK_ID` and `SPOOL_ATTEMPT` are in
//! its environment. Each stdout line that is a JSON object becomes a message (its string `kind`
//! field, else `log`); a line that is an object with the single key `result` sets the result
//! (the last one wins); any other line is a `log` message with the line as a string. Stderr lines
//! become `stderr` messages. Exit 0 completes, exit 75 (EX_TEMPFAIL) and other codes fail with
//! retry. The child leads its own process group: a timeout or a cancel kills the whole group,
//! grandchildren too, and so does the end of the attempt (nothing outlives its task).
//!
//! Both pipes are read at once, so a chatty child never blocks on a full pipe, and a line longer
//! than the message cap is cut, never held whole in memory.

use super::{Handler, TaskContext, TaskError};
use futures::future::BoxFuture;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// The exit code that asks for a retry (EX_TEMPFAIL).
pub const EXIT_TEMPFAIL: i32 = 75;
/// Longest line kept; the rest of a longer line is dropped.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// Runs a program per task.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    argv: Vec<String>,
    max_line: usize,
}

impl CommandHandler {
    /// A handler running `argv` (program first).
    pub fn new(argv: Vec<String>) -> Self {
        Self {
            argv,
            max_line: DEFAULT_MAX_LINE,
        }
    }
}

/// Kills the child's process group when dropped: the attempt ended, timed out or was canceled.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH (nothing left in the group) is the common, harmless case.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

struct Line {
    stream: Stream,
    text: String,
    dropped: usize,
}

/// Reads `r` line by line, keeping at most `max` bytes of each line.
async fn read_lines<R: AsyncRead + Unpin>(
    r: R,
    stream: Stream,
    max: usize,
    tx: mpsc::Sender<Line>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, r);
    let mut buf: Vec<u8> = Vec::new();
    let mut dropped = 0usize;
    while let Ok(chunk) = reader.fill_buf().await {
        if chunk.is_empty() {
            break;
        }
        let (part, end, used) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true, i + 1),
            None => (chunk, false, chunk.len()),
        };
        let room = max.saturating_sub(buf.len());
        let keep = part.len().min(room);
        buf.extend_from_slice(&part[..keep]);
        dropped += part.len() - keep;
        reader.consume(used);
        if end {
            let text = finish_line(&mut buf);
            if tx
                .send(Line {
                    stream,
                    text,
                    dropped,
                })
                .await
                .is_err()
            {
                return;
            }
            dropped = 0;
        }
    }
    if !buf.is_empty() || dropped > 0 {
        let text = finish_line(&mut buf);
        let _ = tx
            .send(Line {
                stream,
                text,
                dropped,
            })
            .await;
    }
}

fn finish_line(buf: &mut Vec<u8>) -> String {
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    let s = String::from_utf8_lossy(buf).into_owned();
    buf.clear();
    s
}

impl Handler for CommandHandler {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Value, TaskError>> {
        let argv = self.argv.clone();
        let max = self.max_line;
        Box::pin(async move { run_command(argv, max, ctx).await })
    }
}

async fn run_command(argv: Vec<String>, max: usize, ctx: TaskContext) -> Result<Value, TaskError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| TaskError::permanent("command kind has an empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("SPOOL_TASK_ID", ctx.id().to_string())
        .env("SPOOL_ATTEMPT", ctx.attempt().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        let msg = format!("cannot start {program:?}: {e}");
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                TaskError::permanent(msg)
            }
            _ => TaskError::retry(msg),
        }
    })?;
    let _group = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));

    let payload = serde_json::to_vec(ctx.payload()).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            // A child that does not read its input closes the pipe: that is its business.
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.shutdown().await;
        });
    }
    let (tx, mut rx) = mpsc::channel::<Line>(256);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(read_lines(out, Stream::Stdout, max, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(read_lines(err, Stream::Stderr, max, tx.clone()));
    }
    drop(tx);

    let mut result = Value::Null;
    let mut last_stderr = String::new();
    let mut status = None;
    loop {
        tokio::select! {
            s = child.wait(), if status.is_none() => {
                status = Some(s.map_err(|e| TaskError::retry(format!("waiting for the child: {e}")))?);
                // The child is gone; stray grandchildren holding the pipes open would keep the
                // readers waiting forever. The group goes with its leader.
                if let Some(pgid) = _group.0 {
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
            }
            line = rx.recv() => {
                let Some(line) = line else { break };
                let mut text = line.text;
                if line.dropped > 0 {
                    text.push_str(&format!(" [line cut: {} more bytes dropped]", line.dropped));
                }
                match line.stream {
                    Stream::Stderr => {
                        last_stderr.clone_from(&text);
                        ctx.progress("stderr", Value::String(text)).await?;
                    }
                    Stream::Stdout => {
                        let parsed = if line.dropped == 0 {
                            serde_json::from_str::<Value>(&text).ok()
                        } else {
                            None
                        };
                        match parsed {
                            Some(Value::Object(mut obj)) => {
                                if obj.len() == 1 && obj.contains_key("result") {
                                    result = obj.remove("result").unwrap_or(Value::Null);
                                } else {
                                    let kind = obj
                                        .get("kind")
                                        .and_then(Value::as_str)
                                        .filter(|k| !k.is_empty())
                                        .unwrap_or("log")
                                        .to_string();
                                    ctx.progress(kind, Value::Object(obj)).await?;
                                }
                            }
                            _ => ctx.progress("log", Value::String(text)).await?,
                        }
                    }
                }
            }
        }
    }
    let status = match status {
        Some(s) => s,
        None => child
            .wait()
            .await
            .map_err(|e| TaskError::retry(format!("waiting for the child: {e}")))?,
    };
    match status.code() {
        Some(0) => Ok(result),
        Some(EXIT_TEMPFAIL) => Err(TaskError::retry(format!(
            "exit {EXIT_TEMPFAIL} (temporary failure){}",
            tail(&last_stderr)
        ))),
        Some(code) => Err(TaskError::retry(format!(
            "exit {code}{}",
            tail(&last_stderr)
        ))),
        None => {
            use std::os::unix::process::ExitStatusExt;
            Err(TaskError::retry(format!(
                "killed by signal {}{}",
                status.signal().unwrap_or(0),
                tail(&last_stderr)
            )))
        }
    }
}

fn tail(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        let cut: String = stderr.chars().take(500).collect();
        format!(": {cut}")
    }
}
