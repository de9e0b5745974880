//! The handlers that run tasks: a child process per task ([`command`]), a signed POST
//! ([`webhook`], later), built-in kinds ([`builtin`]) and Rust [`Handler`]s registered by kind.
//! Executors never touch SQL: they report through the [`TaskContext`].

pub mod builtin;
pub mod command;
pub mod webhook;

use crate::clock::Clock;
use crate::store::sqlite::MessageCheck;
use crate::store::SqliteStore;
use crate::task::{Task, TaskId};
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

/// What a handler gets for one attempt.
#[derive(Clone)]
pub struct TaskContext {
    task: Arc<Task>,
    store: Arc<SqliteStore>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
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
        store: Arc<SqliteStore>,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            task,
            store,
            clock,
            cancel,
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

    /// The store, for executors that need more than progress (webhook task tokens).
    pub fn store(&self) -> &Arc<SqliteStore> {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Appends a progress message; it is committed before this returns, in order.
    ///
    /// # Errors
    /// The message could not be stored (the database is unavailable).
    pub async fn progress(&self, kind: impl Into<String>, content: Value) -> Result<(), TaskError> {
        self.store
            .message_insert(
                self.task.id,
                kind.into(),
                content,
                MessageCheck::Lease {
                    owner: self.task.lease_owner.clone().unwrap_or_default(),
                    attempt: self.task.attempts,
                },
                self.clock.now(),
            )
            .await
            .map(|_| ())
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
/// use spool::executor::{Handler, TaskContext, TaskError};
/// use futures::future::BoxFuture;
/// use serde_json::{json, Value};
///
/// struct Double;
/// impl Handler for Double {
///     fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Value, TaskError>> {
///         Box::pin(async move {
///             let n = ctx.payload()["n"].as_i64().ok_or_else(|| TaskError::permanent("n must be a number"))?;
///             ctx.progress("log", json!("doubling")).await?;
///             Ok(json!(n * 2))
///         })
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt. The returned future is dropped when the attempt is canceled or times
    /// out, so anything it owns must clean up on drop.
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Value, TaskError>>;
}

/// Handlers by kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
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

    /// The built-in kinds plus a handler for each configured command kind.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let mut r = Self::new();
        builtin::register(&mut r);
        // One HTTP client for every webhook kind, so connections are reused across tasks.
        let client = reqwest::Client::builder()
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build()
            .unwrap_or_default();
        for (kind, k) in &cfg.kinds {
            match &k.handler {
                crate::config::KindHandler::Command(argv) => {
                    r.insert(kind.clone(), command::CommandHandler::new(argv.clone()));
                }
                crate::config::KindHandler::Webhook { url, secret } => {
                    r.insert(
                        kind.clone(),
                        webhook::WebhookHandler::new(url.clone(), secret.clone(), client.clone()),
                    );
                }
                crate::config::KindHandler::None => {}
            }
        }
        r
    }

    /// Registers `handler` for `kind`, replacing any earlier one.
    pub fn insert(&mut self, kind: impl Into<String>, handler: impl Handler) {
        self.handlers.insert(kind.into(), Arc::new(handler));
    }

    /// Adds every handler of `other`, replacing same-kind ones.
    pub fn extend(&mut self, other: Registry) {
        self.handlers.extend(other.handlers);
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
