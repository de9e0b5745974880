//! The handlers that run tasks: a child process per task ([`command`]), a signed POST
//! ([`webhook`], later), built-in kinds ([`builtin`]) and Rust [`Handler`]s registered by kind.
//! Executors never touch SQL: they report through the [`TaskContext`].

pub mod builtin;
pub mod command;
pub mod container;
pub mod reap;
pub mod webhook;

use crate::clock::Clock;
use crate::store::MessageCheck;
use crate::store::Store;
use crate::task::{Author, Message, Task, TaskId, WakeReason};
use futures::future::BoxFuture;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    /// What went wrong, stored as the task's `last_error`.
    pub message: String,
    /// No retry will help: the task fails at once.
    pub permanent: bool,
    /// Try again after this long instead of the backoff delay.
    pub retry_after: Option<Duration>,
}

impl TaskError {
    /// A failure worth retrying (with backoff).
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
            retry_after: None,
        }
    }

    /// A failure no retry can fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
            retry_after: None,
        }
    }

    /// A failure to retry after `delay`.
    pub fn retry_after(message: impl Into<String>, delay: Duration) -> Self {
        Self {
            message: message.into(),
            permanent: false,
            retry_after: Some(delay),
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

/// How an attempt ends when it does not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done, with this result.
    Completed(Value),
    /// Park the task until its owner writes to it or `timeout` passes: the slot is free at
    /// once, no attempt is spent, and the next attempt starts with the checkpoint and learns
    /// why it woke ([`TaskContext::wake_reason`]).
    Wait {
        /// How long to wait at most (capped at [`crate::queue::MAX_WAIT_MS`]).
        timeout: Duration,
    },
}

impl From<Value> for Outcome {
    fn from(v: Value) -> Self {
        Outcome::Completed(v)
    }
}

impl Outcome {
    /// A wait from the `{"for": "message", "timeout_ms": N}` object of a command's
    /// `{"wait": ..}` line or a webhook's `202` answer (no `timeout_ms`: the longest wait).
    ///
    /// # Errors
    /// A permanent error naming what is wrong with the object.
    pub fn wait_from_json(v: &Value) -> Result<Self, TaskError> {
        let obj = v.as_object().ok_or_else(|| {
            TaskError::permanent(
                "wait must be an object like {\"for\": \"message\", \"timeout_ms\": 3600000}",
            )
        })?;
        match obj.get("for").and_then(Value::as_str) {
            Some("message") => {}
            _ => {
                return Err(TaskError::permanent(
                    "wait.for must be \"message\" (the only thing a task can wait for)",
                ))
            }
        }
        let ms = match obj.get("timeout_ms") {
            None | Some(Value::Null) => crate::queue::MAX_WAIT_MS,
            Some(v) => v.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                TaskError::permanent(
                    "wait.timeout_ms must be a whole number of milliseconds, at least 1",
                )
            })?,
        };
        Ok(Outcome::Wait {
            timeout: Duration::from_millis(ms.min(crate::queue::MAX_WAIT_MS)),
        })
    }
}

/// What a handler gets for one attempt.
#[derive(Clone)]
pub struct TaskContext {
    task: Arc<Task>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
    /// The task's message limit was reached: later progress is dropped here.
    capped: Arc<std::sync::atomic::AtomicBool>,
    /// The newest checkpoint: the one the attempt started with, then its own.
    checkpoint: Arc<std::sync::Mutex<Option<Value>>>,
    /// The owner's messages up to here were handed to this attempt.
    inbox_cursor: Arc<std::sync::atomic::AtomicI64>,
    /// Largest checkpoint (JSON bytes).
    max_bytes: usize,
    /// How often the inbox looks for messages written by other processes.
    poll: Duration,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("task", &self.task.id)
            .finish()
    }
}

impl TaskContext {
    /// A context for one attempt of `task`.
    pub fn new(
        task: Arc<Task>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            checkpoint: Arc::new(std::sync::Mutex::new(task.checkpoint.clone())),
            inbox_cursor: Arc::new(std::sync::atomic::AtomicI64::new(task.inbox_cursor)),
            task,
            store,
            clock,
            cancel,
            capped: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            max_bytes: command::DEFAULT_MAX_LINE,
            poll: Duration::from_millis(500),
        }
    }

    /// Sets the largest checkpoint (JSON bytes; `limits.message_bytes`) and how often the
    /// inbox looks for messages written by other processes (`worker.poll_interval_ms`).
    pub fn with_limits(mut self, max_bytes: usize, poll: Duration) -> Self {
        self.max_bytes = max_bytes.max(1);
        self.poll = poll.max(Duration::from_millis(10));
        self
    }

    /// Why this attempt follows a wait: its owner wrote, or the wait timed out (`None`: it
    /// does not follow one).
    pub fn wake_reason(&self) -> Option<WakeReason> {
        self.task.wake_reason
    }

    /// The newest checkpoint of the task: the one this attempt started with (saved by an
    /// earlier attempt), or the one it saved since.
    pub fn last_checkpoint(&self) -> Option<Value> {
        self.checkpoint.lock().ok().and_then(|c| c.clone())
    }

    /// Saves a checkpoint, durable before this returns: every later attempt of the task (after
    /// a retry, a crash, a wait) starts with it, and the owner's messages this attempt has
    /// taken from its inbox so far are not handed to them again.
    ///
    /// # Errors
    /// Over `limits.message_bytes`, the attempt has ended, or the database is unavailable.
    pub async fn checkpoint(&self, value: Value) -> Result<(), TaskError> {
        let size = serde_json::to_vec(&value)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.max_bytes {
            return Err(TaskError::retry(format!(
                "checkpoint is {size} bytes; the limit is {} (limits.message_bytes)",
                self.max_bytes
            )));
        }
        self.store
            .task_checkpoint(self.task.id, value.clone(), self.fence(), self.clock.now())
            .await
            .map_err(|e| TaskError::retry(format!("cannot save the checkpoint: {e}")))?;
        if let Ok(mut c) = self.checkpoint.lock() {
            *c = Some(value);
        }
        Ok(())
    }

    /// The owner's messages to this attempt, in order, each once: those written since the
    /// task's last checkpoint or wait (which took the ones before in), then each new one as it
    /// is written, from any process. Ends when the attempt is canceled. Every stream of one
    /// attempt shares one cursor.
    pub fn inbox(
        &self,
    ) -> impl futures::Stream<Item = Result<Message, TaskError>> + Send + 'static {
        self.inbox_stream(true)
    }

    /// [`TaskContext::inbox`] without taking what it hands over as read: for an executor that
    /// knows better when the task has read a message (a command's stdin pipe) and says so with
    /// [`TaskContext::inbox_read`].
    pub(crate) fn inbox_unread(
        &self,
    ) -> impl futures::Stream<Item = Result<Message, TaskError>> + Send + 'static {
        self.inbox_stream(false)
    }

    /// Records that this attempt has read the owner's messages up to `upto` (see
    /// [`Store::inbox_read`]).
    ///
    /// # Errors
    /// The database is unavailable.
    pub(crate) async fn inbox_read(&self, upto: i64) -> Result<(), TaskError> {
        self.store
            .inbox_read(self.task.id, self.fence(), upto, self.clock.now())
            .await
            .map(|_| ())
            .map_err(|e| TaskError::retry(format!("cannot record the inbox read: {e}")))
    }

    fn inbox_stream(
        &self,
        record: bool,
    ) -> impl futures::Stream<Item = Result<Message, TaskError>> + Send + 'static {
        let ctx = self.clone();
        async_stream::stream! {
            let watch = ctx.store.hub().watch(ctx.task.id);
            loop {
                let after = ctx.inbox_cursor.load(std::sync::atomic::Ordering::SeqCst);
                let page = match ctx
                    .store
                    .message_list(ctx.task.id, after, 100, Some(Author::User))
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        yield Err(TaskError::retry(format!("cannot read the inbox: {e}")));
                        return;
                    }
                };
                if let Some(last) = page.last() {
                    // Read, as far as the task is concerned, before it is handed over: a
                    // checkpoint or a wait after this takes these messages in.
                    if record {
                        if let Err(e) = ctx.inbox_read(last.id).await {
                            yield Err(e);
                            return;
                        }
                    }
                    ctx.inbox_cursor.store(last.id, std::sync::atomic::Ordering::SeqCst);
                    for m in page {
                        yield Ok(m);
                    }
                    continue;
                }
                tokio::select! {
                    _ = watch.changed() => {}
                    _ = tokio::time::sleep(ctx.poll) => {}
                    _ = ctx.cancel.cancelled() => return,
                }
            }
        }
    }

    /// The fence of this attempt's own writes.
    fn fence(&self) -> MessageCheck {
        MessageCheck::Lease {
            owner: self.task.lease_owner.clone().unwrap_or_default(),
            attempt: self.task.attempts,
        }
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.task.id
    }

    /// The attempt number, from 1.
    pub fn attempt(&self) -> u32 {
        self.task.attempts
    }

    /// The task's input.
    pub fn payload(&self) -> &Value {
        &self.task.payload
    }

    /// The whole task as claimed.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The owner's user name (`tasks.user_id` holds the owner's id): what `SPOOL_USER` and the
    /// webhook body's `user` carry.
    ///
    /// # Errors
    /// The database could not be read.
    pub async fn owner_name(&self) -> Result<String, TaskError> {
        let Ok(id) = self.task.user_id.parse::<i64>() else {
            // Written before owners were ids (or by hand): the value is the name.
            return Ok(self.task.user_id.clone());
        };
        match self.store.user_by_id(id).await {
            Ok(Some(u)) => Ok(u.name),
            Ok(None) => Ok(self.task.user_id.clone()),
            Err(e) => Err(TaskError::retry(format!(
                "cannot read the task's owner: {e}"
            ))),
        }
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// A new token for this attempt (for a webhook receiver), valid until the attempt ends.
    ///
    /// # Errors
    /// The attempt has ended, or the database is unavailable.
    pub async fn task_token(&self) -> Result<String, crate::store::StoreError> {
        let token = crate::token::new_task_token();
        let hash = crate::token::hash_token(&token);
        self.store
            .task_token_create(&self.task, hash, self.clock.now())
            .await?;
        Ok(token)
    }

    /// Appends a progress message; it is committed before this returns, in order. A `kind`
    /// outside API.md's name rules is stored as `log`.
    ///
    /// # Errors
    /// The message could not be stored (the database is unavailable).
    pub async fn progress(&self, kind: impl Into<String>, content: Value) -> Result<(), TaskError> {
        // Past the task's message limit nothing more is stored: stop here, without a trip to
        // the writer per line (a child printing endlessly costs the limit, not its timeout).
        if self.capped.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let mut kind = kind.into();
        if !crate::task::valid_name(&kind) {
            kind = "log".into();
        }
        self.store
            .message_insert(self.task.id, kind, content, self.fence(), self.clock.now())
            .await
            .map(|m| {
                if m.is_none() || m.is_some_and(|m| m.kind == "truncated") {
                    self.capped
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .map_err(|e| TaskError::retry(format!("cannot store progress: {e}")))
    }

    /// Resolves when the attempt is canceled (a cancel request, a lost lease, shutdown).
    /// Handlers that hold resources await this; the future of a handler that does not is dropped.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Whether the attempt was canceled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Runs tasks of one kind.
///
/// ```
/// use spool::executor::{Handler, Outcome, TaskContext, TaskError};
/// use futures::future::BoxFuture;
/// use serde_json::{json, Value};
///
/// struct Double;
/// impl Handler for Double {
///     fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
///         Box::pin(async move {
///             let n = ctx.payload()["n"].as_i64().ok_or_else(|| TaskError::permanent("n must be a number"))?;
///             ctx.progress("log", json!("doubling")).await?;
///             Ok(json!(n * 2).into())
///         })
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt: its result (`Ok(value.into())`), a wait ([`Outcome::Wait`]), or a
    /// failure. The returned future is dropped when the attempt is canceled or times out, so
    /// anything it owns must clean up on drop.
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>>;

    /// Called once the attempt's outcome is stored, with the task as it now is (a terminal
    /// status means no attempt follows): release what the task held between attempts.
    fn attempt_ended(&self, _task: &Task) {}
}

/// Handlers by kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
    /// The container engine, when a container kind is configured.
    engine: Option<container::Engine>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in kinds plus a handler for each configured command, webhook and container
    /// kind (the container kinds share one client of `docker.host`).
    /// Command children start from `env` (spool's environment): only `PATH`, `HOME`, `LANG`
    /// and `TZ` are taken from it.
    ///
    /// # Errors
    /// The HTTP client for webhooks cannot be built (no TLS roots), or the container
    /// engine's endpoint cannot be used.
    pub fn from_config(
        cfg: &crate::config::Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut r = Self::new();
        builtin::register(&mut r);
        // One HTTP client for every webhook kind, so connections are reused across tasks.
        // It follows no redirect: a receiver must not be able to send the task's token and
        // signature, or make its answer come from, another host.
        let client = reqwest::Client::builder()
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {}", e.without_url()))?;
        for (kind, k) in &cfg.kinds {
            match &k.handler {
                crate::config::KindHandler::Command(spec) => {
                    r.insert(
                        kind.clone(),
                        command::CommandHandler::new(
                            spec.clone(),
                            cfg.worker.workdir.clone(),
                            cfg.max_message_bytes,
                            env,
                        )
                        .with_api_url(cfg.worker.api_url.clone()),
                    );
                }
                crate::config::KindHandler::Webhook { url, secret } => {
                    r.insert(
                        kind.clone(),
                        webhook::WebhookHandler::new(url.clone(), secret.clone(), client.clone()),
                    );
                }
                crate::config::KindHandler::Container(spec) => {
                    let engine = match &r.engine {
                        Some(e) => e.clone(),
                        None => {
                            let e = container::Engine::connect(&cfg.docker_host)?;
                            r.engine = Some(e.clone());
                            e
                        }
                    };
                    r.insert(
                        kind.clone(),
                        container::ContainerHandler::new(
                            kind.clone(),
                            spec.clone(),
                            engine,
                            cfg.max_message_bytes,
                        )
                        .with_api_url(cfg.worker.api_url.clone()),
                    );
                }
                crate::config::KindHandler::None => {}
            }
        }
        Ok(r)
    }

    /// Registers `handler` for `kind`, replacing any earlier one.
    pub fn insert(&mut self, kind: impl Into<String>, handler: impl Handler) {
        self.handlers.insert(kind.into(), Arc::new(handler));
    }

    /// Adds every handler of `other`, replacing same-kind ones.
    pub fn extend(&mut self, other: Registry) {
        self.handlers.extend(other.handlers);
        if self.engine.is_none() {
            self.engine = other.engine;
        }
    }

    /// The container engine of the configured container kinds (`None`: there are none).
    pub fn engine(&self) -> Option<&container::Engine> {
        self.engine.as_ref()
    }

    /// The kinds that have a handler.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }

    /// The handler of a kind.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }
}
