//! The store owns the database: migrations, every SQL statement, transactions and the writer.
//! It knows nothing of HTTP or processes.
//!
//! Writes go through one writer thread (group commit, see [`sqlite`]); reads use a pool of
//! read-only connections on blocking threads.

pub(crate) mod migrate;
pub(crate) mod sql;
pub mod sqlite;

pub use migrate::LATEST_VERSION;
pub use sqlite::{Queued, SqliteStore, StoreOptions, Synchronous};

use crate::clock::UnixMillis;
use crate::task::{Task, TaskId, TaskStatus};
use serde_json::Value;
use std::sync::Arc;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not take the write in time (busy, disk full, writer overloaded).
    /// Nothing was written.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other SQLite error.
    #[error("sqlite: {0}")]
    Sqlite(rusqlite::Error),
    /// The reader pool could not hand out a connection.
    #[error("reader pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// No such task (or not the caller's).
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// The same idempotency key came with a different request.
    #[error("idempotency key {key:?} was already used with a different request")]
    IdempotencyMismatch {
        /// Index of the item in a batch (0 for a single enqueue).
        index: usize,
        /// The key.
        key: String,
    },
    /// The action does not fit the task's state.
    #[error("{0}")]
    Conflict(String),
    /// A quota of [`Limits`] is reached; nothing was written.
    #[error("{what} limit of {limit} reached")]
    LimitReached {
        /// Which limit (`pending tasks per user`, ...).
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The database was made by a newer spool.
    #[error(
        "database schema version {found} is newer than this spool knows ({known}): upgrade spool"
    )]
    SchemaTooNew {
        /// Version found in the file.
        found: u32,
        /// Newest version this build knows.
        known: u32,
    },
    /// The file exists but is not a SQLite database.
    #[error("{0} is not a SQLite database")]
    NotADatabase(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match &e {
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                C::DatabaseBusy | C::DatabaseLocked => {
                    StoreError::Unavailable(format!("database is locked by another writer ({e})"))
                }
                C::DiskFull => StoreError::Unavailable(format!("disk full ({e})")),
                C::SystemIoFailure | C::CannotOpen | C::ReadOnly | C::OutOfMemory => {
                    StoreError::Unavailable(e.to_string())
                }
                C::NotADatabase => StoreError::NotADatabase(e.to_string()),
                _ => StoreError::Sqlite(e),
            },
            _ => StoreError::Sqlite(e),
        }
    }
}

/// Quotas the store enforces inside its write transactions, so no number of concurrent
/// requests can pass one. Set once, when the store opens; `u64::MAX` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Unfinished (pending, running) tasks per user.
    pub pending_tasks_per_user: u64,
    /// Bytes of payload JSON per user over their stored tasks.
    pub payload_bytes_per_user: u64,
    /// Messages per task: a user's message past it is refused; a running attempt's first
    /// message past it is replaced by one `truncated` message and the rest are dropped.
    pub messages_per_task: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            pending_tasks_per_user: u64::MAX,
            payload_bytes_per_user: u64::MAX,
            messages_per_task: u64::MAX,
        }
    }
}

/// Short for a store result.
pub type Result<T> = std::result::Result<T, StoreError>;

/// One queue's share of a claim.
#[derive(Debug, Clone)]
pub struct QueueClaim {
    /// The queue.
    pub queue: String,
    /// At most this many of its tasks.
    pub limit: u32,
}

/// What a claim asks for.
#[derive(Debug, Clone)]
pub struct ClaimParams {
    /// The worker taking the leases.
    pub owner: String,
    /// Queues and how many tasks of each, in the order they are served.
    pub queues: Vec<QueueClaim>,
    /// At most this many tasks in all.
    pub total: u32,
    /// Also look for expired leases first (a pool does this once per poll interval).
    pub rescue: bool,
    /// Lease length.
    pub lease_ms: u64,
    /// The time now.
    pub now: UnixMillis,
}

/// How an attempt ends, fenced by owner and attempt.
#[derive(Debug, Clone)]
pub struct FinishParams {
    /// The task as it was claimed: its id and attempt number (the fencing token) are the ones
    /// matched, and the updated task is built from it rather than read back.
    pub task: Arc<Task>,
    /// The worker that claimed it.
    pub owner: String,
    /// The new status.
    pub status: TaskStatus,
    /// The result (completed only).
    pub result: Option<Value>,
    /// The error to record, if any.
    pub error: Option<String>,
    /// When it may run again (a retry).
    pub run_at: Option<UnixMillis>,
    /// True when the attempt is given back, not spent (shutdown).
    pub uncount: bool,
    /// The time now.
    pub now: UnixMillis,
}

/// A lease still held after a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    /// The task.
    pub id: TaskId,
    /// Its current attempt.
    pub attempt: u32,
    /// Whether a cancel was asked for.
    pub cancel_requested: bool,
}

/// Filters of a task list.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// Only this user's tasks (None: all, for admins).
    pub user_id: Option<String>,
    /// Only this status.
    pub status: Option<TaskStatus>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Tasks older than this one.
    pub cursor: Option<TaskId>,
    /// Page size.
    pub limit: u32,
}

/// The result of one enqueue.
#[derive(Debug, Clone)]
pub struct Inserted {
    /// The task (the original one on an idempotent replay).
    pub task: std::sync::Arc<Task>,
    /// False when an earlier task with the same key was returned.
    pub created: bool,
}

/// Depths of one queue, as `GET /v1/queues` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// The queue.
    pub name: String,
    /// Whether workers skip it.
    pub paused: bool,
    /// Runnable now.
    pub pending: u64,
    /// Waiting for a future `run_at`.
    pub scheduled: u64,
    /// Claimed.
    pub running: u64,
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
    /// Canceled.
    pub canceled: u64,
    /// Age of the oldest runnable task.
    pub oldest_pending_age_ms: Option<u64>,
}

/// A user as a token (or a JWT) names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The stable id: tasks are owned by it, never by the name.
    pub id: i64,
    /// The user name (a JWT user's is the value of its user claim).
    pub name: String,
    /// May see every task and use the queue routes.
    pub is_admin: bool,
    /// Set when this caller signed in with a JWT: JWT users are another namespace than token
    /// users of the same name.
    pub jwt: bool,
}

impl User {
    /// The owner key stored in `tasks.user_id`: the id, in decimal.
    pub fn owner_key(&self) -> String {
        self.id.to_string()
    }
}

/// Whether `spool token create` may add a token to a user who already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingUser {
    /// A new user only: an existing name is refused.
    Refuse,
    /// An existing user only (`--existing`): a missing name is refused.
    AddToken,
}

/// A new token for a token user, as `spool token create` asks for it.
#[derive(Debug, Clone)]
pub struct TokenCreate {
    /// The user name.
    pub name: String,
    /// Whether the user is (or is to be) an admin.
    pub admin: bool,
    /// New user or existing one.
    pub existing: ExistingUser,
    /// The hash of the new token.
    pub token_hash: String,
    /// The time now.
    pub now: UnixMillis,
}

/// The name reserved for the admin user the first start creates: no non-admin may take it.
pub const ADMIN_NAME: &str = "admin";

/// One token as `spool token list` shows it: never the token, only the start of its hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    /// The token's id (`spool token revoke --id`).
    pub id: i64,
    /// Its user's name.
    pub user: String,
    /// Whether that user is an admin.
    pub admin: bool,
    /// When it was made.
    pub created_at: UnixMillis,
    /// The first 12 hex digits of its SHA-256 (not a secret; tells tokens apart).
    pub hash_prefix: String,
}

/// Which tokens `spool token revoke` removes.
#[derive(Debug, Clone)]
pub enum TokenRevoke {
    /// Every token of this token user.
    User(String),
    /// The token with this hash.
    Hash(String),
    /// The token with this id.
    Id(i64),
}

/// What a task token is worth now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskTokenCheck {
    /// No such token: never issued, or its attempt ended (tokens are deleted with it).
    Unknown,
    /// Its attempt still has the task but the lease ran out.
    Expired,
    /// Valid for this task and attempt.
    Valid(TaskId, u32),
}
