//! The `command` executor: one child process per attempt.
//!
//! A task is hostile code. The child gets a cleared environment: `PATH`, `HOME`, `LANG`, `TZ`,
//! the kind's own `env` table, `SPOOL_TASK_ID`, `SPOOL_ATTEMPT` and `SPOOL_USER`, and nothing
//! else of spool's (no webhook secrets, no replication keys). It starts in the task's own
//! working directory, `<worker.workdir>/<task id>` (outside the data directory), kept across
//! the attempts of one task and removed when the task is terminal unless the kind sets
//! `keep_workdir`. A kind with `user = "name"` runs as that Unix user (spool must be root),
//! who cannot read spool's 0600/0700 files.
//!
//! The payload (JSON) is written to the child's stdin. Each stdout line that is a JSON object becomes a message (its string `kind`
//! field, else `log`); a line that is an object with the single key `result` sets the result
//! (the last one wins); any other line is a `log` message with the line as a string. Stderr lines
//! become `stderr` messages. Exit 0 completes, exit 75 (EX_TEMPFAIL) and other codes fail with
//! retry. The child leads its own process group: a timeout or a cancel kills the whole group,
//! grandchildren too, and so does the end of the attempt (nothing outlives its task).
//!
//! Both pipes are read at once, so a chatty child never blocks on a full pipe, and a line longer
//! than the message cap is cut, never held whole in memory.

use super::{Handler, Outcome, TaskContext, TaskError};
use crate::config::{CommandSpec, StdinMode};
use crate::task::TaskId;
use futures::future::BoxFuture;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// The exit code that asks for a retry (EX_TEMPFAIL).
pub const EXIT_TEMPFAIL: i32 = 75;
/// Longest line kept by default; the rest of a longer line is dropped.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// `PATH` of a child when spool itself has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs a program per task.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    spec: Arc<CommandSpec>,
    /// The environment every child starts from (read from spool's once, at start).
    base_env: Arc<BTreeMap<String, String>>,
    workdirs: Workdirs,
    max_line: usize,
    /// `SPOOL_URL`: where the child reaches spool's API.
    api_url: Option<String>,
}

impl CommandHandler {
    /// A handler running `spec`, in task directories under `workdir_root`, cutting lines at
    /// `max_line` bytes. `inherited` is spool's own environment: only `PATH`, `HOME`, `LANG`
    /// and `TZ` are taken from it (a `user` kind gets that user's `HOME` instead).
    pub fn new(
        spec: CommandSpec,
        workdir_root: PathBuf,
        max_line: usize,
        inherited: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        let mut base = BTreeMap::new();
        base.insert(
            "PATH".to_string(),
            inherited("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        );
        for var in ["HOME", "LANG", "TZ"] {
            if let Some(v) = inherited(var) {
                base.insert(var.to_string(), v);
            }
        }
        if let Some(u) = &spec.run_as {
            base.insert("HOME".into(), u.home.display().to_string());
        }
        base.extend(spec.env.clone());
        Self {
            spec: Arc::new(spec),
            base_env: Arc::new(base),
            workdirs: Workdirs::new(workdir_root),
            max_line: max_line.max(1),
            api_url: None,
        }
    }

    /// Tells children where spool's API is (`SPOOL_URL`), with a task token for it.
    pub fn with_api_url(mut self, url: String) -> Self {
        self.api_url = Some(url);
        self
    }

    /// A handler running `argv` as spool's own user, in task directories under the system's
    /// temporary directory (for embedding and tests).
    pub fn from_argv(argv: Vec<String>) -> Self {
        Self::new(
            CommandSpec {
                argv,
                ..CommandSpec::default()
            },
            std::env::temp_dir().join("spool-work"),
            DEFAULT_MAX_LINE,
            &|k| std::env::var(k).ok(),
        )
    }

    /// The kind's spec.
    pub fn spec(&self) -> &CommandSpec {
        &self.spec
    }

    /// Where this kind's tasks get their working directories.
    pub fn workdirs(&self) -> &Workdirs {
        &self.workdirs
    }
}

/// The per-task working directories of command kinds: `<root>/<task id>`.
#[derive(Debug, Clone)]
pub struct Workdirs {
    root: PathBuf,
}

impl Workdirs {
    /// Directories under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of `task`.
    pub fn path(&self, task: TaskId) -> PathBuf {
        self.root.join(task.to_string())
    }

    /// Makes (or keeps) the directory of `task`: the root `0711` (others may pass through to
    /// their own directory but not list it), the task's `0700`, owned by `owner` when given.
    ///
    /// # Errors
    /// The directory cannot be made or given to its owner.
    pub fn prepare(&self, task: TaskId, owner: Option<(u32, u32)>) -> std::io::Result<PathBuf> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.root)?;
        let dir = self.path(task);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        // The mode of a directory made by an earlier attempt may have been changed by the task.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        Ok(dir)
    }

    /// Removes the directory of `task` and everything in it (nothing there is not an error).
    ///
    /// # Errors
    /// Something in it could not be removed.
    pub fn remove(&self, task: TaskId) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.path(task)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// The tasks that have a directory here now.
    pub fn list(&self) -> Vec<TaskId> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect()
    }
}

/// Kills the child's process group when dropped (the attempt ended, timed out or was
/// canceled), then every other descendant the attempt left (see [`super::reap`]).
struct GroupGuard {
    /// The leader's pid (= its group), until the attempt's end was handled.
    pgid: Option<i32>,
    task: String,
    attempt: u32,
}

impl GroupGuard {
    /// Kills the group, and returns what [`super::reap::end_attempt`] needs.
    fn kill_group(&mut self) -> Option<(i32, String, u32)> {
        let pgid = self.pgid.take()?;
        // ESRCH (nothing left in the group) is the common, harmless case.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        Some((pgid, self.task.clone(), self.attempt))
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // Canceled or timed out: the leader is being killed and tokio reaps it later
        // (end_attempt never reaps a leader, so forgetting it now is safe).
        if let Some((pgid, task, attempt)) = self.kill_group() {
            super::reap::forget(pgid);
            let end = move || super::reap::end_attempt(pgid, &task, attempt, false);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(end);
                }
                Err(_) => end(),
            }
        }
    }
}

/// Which of a task's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Standard output: messages and the result.
    Stdout,
    /// Standard error: `stderr` messages.
    Stderr,
}

/// One line of a task's output, cut at the message cap.
pub(crate) struct Line {
    stream: Stream,
    text: String,
    dropped: usize,
}

/// Reads `r` line by line, keeping at most `max` bytes of each line.
pub(crate) async fn read_lines<R: AsyncRead + Unpin>(
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
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
        let me = self.clone();
        Box::pin(async move { me.run_command(ctx).await })
    }

    fn attempt_ended(&self, task: &crate::task::Task) {
        if task.status.is_terminal() && !self.spec.keep_workdir {
            if let Err(e) = self.workdirs.remove(task.id) {
                tracing::warn!(task.id = %task.id, error = %e, "cannot remove the task's working directory");
            }
        }
    }
}

impl CommandHandler {
    async fn run_command(&self, ctx: TaskContext) -> Result<Outcome, TaskError> {
        let max = self.max_line;
        let (program, args) = self
            .spec
            .argv
            .split_first()
            .ok_or_else(|| TaskError::permanent("command kind has an empty command"))?;
        let owner = self.spec.run_as.as_ref().map(|u| (u.uid, u.gid));
        let workdirs = self.workdirs.clone();
        let id = ctx.id();
        let dir = tokio::task::spawn_blocking(move || workdirs.prepare(id, owner))
            .await
            .map_err(|e| TaskError::retry(format!("preparing the working directory: {e}")))?
            .map_err(|e| {
                TaskError::retry(format!(
                    "cannot prepare the task's working directory {}: {e}",
                    self.workdirs.path(id).display()
                ))
            })?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(self.base_env.iter())
            .envs(attempt_env(&ctx, self.api_url.as_deref()).await?)
            .current_dir(&dir);
        let owner = self.spec.run_as.as_ref().map(|u| (u.uid, u.gid));
        let checkpoint = ctx.last_checkpoint();
        let file = dir.join(".spool").join("checkpoint.json");
        let path = file.clone();
        let has_checkpoint = checkpoint.is_some();
        tokio::task::spawn_blocking(move || write_checkpoint(&path, checkpoint.as_ref(), owner))
            .await
            .map_err(|e| TaskError::retry(format!("writing the checkpoint file: {e}")))?
            .map_err(|e| {
                TaskError::retry(format!(
                    "cannot write the checkpoint file {}: {e}",
                    file.display()
                ))
            })?;
        if has_checkpoint {
            cmd.env("SPOOL_CHECKPOINT", &file);
        }
        if let Some(u) = &self.spec.run_as {
            // std drops root's supplementary groups (setgroups(0)) before setuid.
            cmd.uid(u.uid).gid(u.gid);
        }
        run_child(
            cmd,
            program,
            max,
            ctx,
            self.spec.run_as.as_ref().map(|u| u.name.as_str()),
            self.spec.stdin,
        )
        .await
    }
}

/// Writes the task's checkpoint to `path` (`<task dir>/.spool/checkpoint.json`, owned by the
/// child's user), or removes a stale one when there is none.
fn write_checkpoint(
    path: &Path,
    checkpoint: Option<&Value>,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let Some(v) = checkpoint else {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
    };
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::write(path, serde_json::to_vec(v).unwrap_or_default())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

async fn run_child(
    mut cmd: Command,
    program: &str,
    max: usize,
    ctx: TaskContext,
    run_as: Option<&str>,
    stdin_mode: StdinMode,
) -> Result<Outcome, TaskError> {
    // With `stdin = "messages"` spool makes the pipe and keeps its read end (see StdinInbox).
    let inbox = match stdin_mode {
        StdinMode::Messages => {
            let (pipe, child_end, writer) = StdinInbox::pipe().map_err(|e| {
                TaskError::retry(format!("cannot make the stdin pipe for {program:?}: {e}"))
            })?;
            cmd.stdin(child_end);
            Some((pipe, writer))
        }
        _ => {
            cmd.stdin(Stdio::piped());
            None
        }
    };
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // Spawned under the leaders' lock, so the reaper never takes this child for a stray.
    let spawned = {
        let mut leaders = super::reap::Leaders::lock();
        let spawned = cmd.spawn();
        if let Some(pid) = spawned
            .as_ref()
            .ok()
            .and_then(|c| c.id())
            .and_then(|p| i32::try_from(p).ok())
        {
            leaders.add(pid, ctx.id().to_string(), ctx.attempt());
        }
        spawned
    };
    let mut child = spawned.map_err(|e| {
        let msg = match run_as {
            Some(user) => format!("cannot start {program:?} as user {user:?}: {e}"),
            None => format!("cannot start {program:?}: {e}"),
        };
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                TaskError::permanent(msg)
            }
            _ => TaskError::retry(msg),
        }
    })?;
    let mut group = GroupGuard {
        pgid: child.id().and_then(|p| i32::try_from(p).ok()),
        task: ctx.id().to_string(),
        attempt: ctx.attempt(),
    };

    let payload = serde_json::to_vec(ctx.payload()).unwrap_or_default();
    // Ends the stdin writer with the attempt, however the attempt ends.
    let attempt_over = tokio_util::sync::CancellationToken::new();
    let _stop_writer = attempt_over.clone().drop_guard();
    let mut writer = None;
    let mut inbox_pipe = None;
    if let Some((pipe, sender)) = inbox {
        let pipe = Arc::new(pipe);
        let messages = ctx.inbox_unread();
        writer = Some(tokio::spawn(pipe.clone().feed(
            sender,
            payload,
            messages,
            attempt_over.clone(),
        )));
        inbox_pipe = Some(pipe);
    } else if let Some(mut stdin) = child.stdin.take() {
        // A child that does not read its input closes the pipe: that is its business.
        tokio::spawn(async move {
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

    let mut protocol = Protocol {
        inbox: inbox_pipe.clone(),
        ..Protocol::default()
    };
    let mut status = None;
    loop {
        tokio::select! {
            s = child.wait(), if status.is_none() => {
                status = Some(s.map_err(|e| TaskError::retry(format!("waiting for the child: {e}")))?);
                // The child is gone; stray grandchildren holding the pipes open would keep the
                // readers waiting forever. The group goes with its leader, and so does every
                // other descendant (one that left the group with setsid too).
                if let Some((pgid, task, attempt)) = group.kill_group() {
                    super::reap::forget(pgid);
                    let _ = tokio::task::spawn_blocking(move || {
                        super::reap::end_attempt(pgid, &task, attempt, true)
                    })
                    .await;
                }
            }
            line = rx.recv() => {
                let Some(line) = line else { break };
                protocol.line(&ctx, line).await?;
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
    // A wait takes in what the command read of its inbox: what it took from the pipe before it
    // exited, not what was written there (the writer stops first, so every byte it wrote is
    // counted).
    if let (Some(pipe), Some(0), true) = (&inbox_pipe, status.code(), protocol.waits()) {
        attempt_over.cancel();
        if let Some(w) = writer.take() {
            let _ = w.await;
        }
        pipe.record(&ctx).await;
    }
    match status.code() {
        Some(code) => protocol.exit(i64::from(code)),
        None => {
            use std::os::unix::process::ExitStatusExt;
            Err(TaskError::retry(format!(
                "killed by signal {}{}",
                status.signal().unwrap_or(0),
                tail(&protocol.last_stderr)
            )))
        }
    }
}

/// The line protocol shared by command and container kinds: what each stdout and stderr line
/// of a task means, and what its exit code means.
#[derive(Debug, Default)]
pub(crate) struct Protocol {
    /// The last `{"result": ..}` line's value.
    result: Value,
    /// A `{"wait": ..}` line's wait, taking effect on exit 0.
    wait: Option<Outcome>,
    /// The last stderr line, quoted in a failure's `last_error`.
    pub(crate) last_stderr: String,
    /// The owner's messages written to the task's stdin, when its kind has
    /// `stdin = "messages"`: a checkpoint takes in those it has read.
    inbox: Option<Arc<StdinInbox>>,
}

impl Protocol {
    /// Handles one line: a message, the result, a checkpoint or a wait.
    ///
    /// # Errors
    /// The message or checkpoint could not be stored, or a wait line is malformed.
    pub(crate) async fn line(&mut self, ctx: &TaskContext, line: Line) -> Result<(), TaskError> {
        let mut text = line.text;
        if line.dropped > 0 {
            text.push_str(&format!(" [line cut: {} more bytes dropped]", line.dropped));
        }
        match line.stream {
            Stream::Stderr => {
                self.last_stderr.clone_from(&text);
                ctx.progress("stderr", Value::String(text)).await
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
                            self.result = obj.remove("result").unwrap_or(Value::Null);
                            Ok(())
                        } else if obj.len() == 1 && obj.contains_key("checkpoint") {
                            if let Some(pipe) = &self.inbox {
                                pipe.record(ctx).await;
                            }
                            ctx.checkpoint(obj.remove("checkpoint").unwrap_or(Value::Null))
                                .await
                        } else if obj.len() == 1 && obj.contains_key("wait") {
                            // Takes effect when the task exits 0.
                            self.wait = Some(Outcome::wait_from_json(
                                obj.get("wait").unwrap_or(&Value::Null),
                            )?);
                            Ok(())
                        } else {
                            // A kind outside API.md's name rules (empty, long, control
                            // characters) is stored as `log`.
                            let kind = obj
                                .get("kind")
                                .and_then(Value::as_str)
                                .filter(|k| crate::task::valid_name(k))
                                .unwrap_or("log")
                                .to_string();
                            ctx.progress(kind, Value::Object(obj)).await
                        }
                    }
                    _ => ctx.progress("log", Value::String(text)).await,
                }
            }
        }
    }

    /// Whether the task asked to wait (which takes effect if it exits 0).
    fn waits(&self) -> bool {
        self.wait.is_some()
    }

    /// The attempt's outcome from the task's exit code: 0 completes (or waits), anything else
    /// fails with retry, quoting the last stderr line.
    ///
    /// # Errors
    /// A non-zero exit code.
    pub(crate) fn exit(self, code: i64) -> Result<Outcome, TaskError> {
        match code {
            0 => Ok(self.wait.unwrap_or(Outcome::Completed(self.result))),
            c if c == i64::from(EXIT_TEMPFAIL) => Err(TaskError::retry(format!(
                "exit {EXIT_TEMPFAIL} (temporary failure){}",
                tail(&self.last_stderr)
            ))),
            c => Err(TaskError::retry(format!(
                "exit {c}{}",
                tail(&self.last_stderr)
            ))),
        }
    }
}

/// The owner's messages on a command's stdin (`stdin = "messages"`): the payload line, then a
/// JSON line per message as it is written. A message counts as read once the command has taken
/// its whole line from the pipe, not once spool wrote it there: spool keeps a handle on the
/// pipe's read end and asks the kernel how many bytes are still in it (`FIONREAD`), so a message
/// written in the instant the command prints its wait and exits is left for the next attempt.
/// (What a command reads into a buffer of its own and never looks at counts as read: spool
/// cannot see into it.)
///
/// Holding the read end also means a child that closes its stdin early never makes a write
/// fail: the writer waits on the full pipe until the attempt ends, and what sits in the pipe is
/// unread.
#[derive(Debug)]
pub(crate) struct StdinInbox {
    /// spool's handle on the read end.
    read_end: std::io::PipeReader,
    /// Bytes written into the pipe, and the messages not yet recorded as read with the offset
    /// just past each one's line.
    log: std::sync::Mutex<WrittenLog>,
}

#[derive(Debug, Default)]
struct WrittenLog {
    written: u64,
    lines: std::collections::VecDeque<(i64, u64)>,
}

impl StdinInbox {
    /// The pipe: spool's side, the child's stdin, and the write end.
    fn pipe() -> std::io::Result<(Self, Stdio, tokio::net::unix::pipe::Sender)> {
        let (read_end, write_end) = std::io::pipe()?;
        let child_end = Stdio::from(read_end.try_clone()?);
        let sender =
            tokio::net::unix::pipe::Sender::from_owned_fd(std::os::fd::OwnedFd::from(write_end))?;
        let inbox = Self {
            read_end,
            log: std::sync::Mutex::new(WrittenLog::default()),
        };
        Ok((inbox, child_end, sender))
    }

    /// Writes the payload line, then each of the owner's messages as a JSON line as they come,
    /// until `over`, the inbox ends, or a write fails.
    async fn feed(
        self: Arc<Self>,
        mut pipe: tokio::net::unix::pipe::Sender,
        mut payload: Vec<u8>,
        messages: impl futures::Stream<Item = Result<crate::task::Message, TaskError>>,
        over: tokio_util::sync::CancellationToken,
    ) {
        payload.push(b'\n');
        let failed = tokio::select! {
            _ = over.cancelled() => true,
            r = self.write(&mut pipe, &payload, None) => r.is_err(),
        };
        if failed {
            return;
        }
        futures::pin_mut!(messages);
        loop {
            let next = tokio::select! {
                _ = over.cancelled() => return,
                m = futures::StreamExt::next(&mut messages) => m,
            };
            let Some(Ok(m)) = next else { return };
            let mut line = m.to_json().to_string().into_bytes();
            line.push(b'\n');
            let failed = tokio::select! {
                _ = over.cancelled() => true,
                r = self.write(&mut pipe, &line, Some(m.id)) => r.is_err(),
            };
            if failed {
                return;
            }
        }
    }

    /// Writes `bytes` (the line of message `id`, if any), counting each byte once it is in the
    /// pipe. The line is logged first, so the count never passes a line it does not know.
    async fn write(
        &self,
        pipe: &mut tokio::net::unix::pipe::Sender,
        bytes: &[u8],
        id: Option<i64>,
    ) -> std::io::Result<()> {
        if let (Some(id), Ok(mut log)) = (id, self.log.lock()) {
            let end = log.written + bytes.len() as u64;
            log.lines.push_back((id, end));
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = pipe.write(rest).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            if let Ok(mut log) = self.log.lock() {
                log.written += n as u64;
            }
            rest = &rest[n..];
        }
        Ok(())
    }

    /// The newest message whose whole line the command has taken from the pipe and that was not
    /// recorded yet. The log is held while the kernel is asked: a write that lands meanwhile is
    /// in the pipe but not yet in `written`, so it makes this count fewer, never more.
    fn read_upto(&self) -> Option<i64> {
        let mut log = self.log.lock().ok()?;
        let unread = rustix::io::ioctl_fionread(&self.read_end).ok()?;
        let taken = log.written.saturating_sub(unread);
        let mut upto = None;
        while let Some(&(id, end)) = log.lines.front() {
            if end > taken {
                break;
            }
            upto = Some(id);
            log.lines.pop_front();
        }
        upto
    }

    /// Records what the command has read so far as read by its attempt. A failure is logged
    /// and passed over: what is not recorded is handed over again, never lost.
    async fn record(&self, ctx: &TaskContext) {
        if let Some(upto) = self.read_upto() {
            if let Err(e) = ctx.inbox_read(upto).await {
                tracing::warn!(task = %ctx.id(), error = %e.message, "the messages the command read are not recorded as read; the next attempt gets them again");
            }
        }
    }
}

pub(crate) fn tail(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        let cut: String = stderr.chars().take(500).collect();
        format!(": {cut}")
    }
}

/// What every attempt of a command or container kind is told, as environment variables: which
/// task and attempt it is, whose, where its inbox starts, why it woke (after a wait), and, when
/// spool's API is reachable, the URL and the attempt's own task token (it posts progress and
/// reads its owner's messages with it; it dies with the attempt). Nothing else of spool's.
pub(crate) async fn attempt_env(
    ctx: &TaskContext,
    api_url: Option<&str>,
) -> Result<Vec<(&'static str, String)>, TaskError> {
    let mut env = vec![
        ("SPOOL_TASK_ID", ctx.id().to_string()),
        ("SPOOL_ATTEMPT", ctx.attempt().to_string()),
        ("SPOOL_USER", ctx.owner_name().await?),
        ("SPOOL_INBOX_AFTER", ctx.task().inbox_cursor.to_string()),
    ];
    if let Some(url) = api_url {
        let token = ctx
            .task_token()
            .await
            .map_err(|e| TaskError::retry(format!("cannot create the task token: {e}")))?;
        env.push(("SPOOL_URL", url.to_string()));
        env.push(("SPOOL_TASK_TOKEN", token));
    }
    if let Some(why) = ctx.wake_reason() {
        env.push(("SPOOL_WAKE", why.as_str().to_string()));
    }
    Ok(env)
}
