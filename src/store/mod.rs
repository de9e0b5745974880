//! The store owns the database: migrations, every SQL statement, transactions and the writer.
//! It knows nothing of HTTP or processes.
//!
//! [`Store`] is the seam: everything above it (HTTP, the worker pool, the CLI, embedders) holds an
//! `Arc<dyn Store>` and never names a driver type, a connection, a rowid or a PRAGMA. A store's
//! statements never read the clock, a random source or the environment: the time, ids and
//! tokens come in as arguments, so two stores given the same calls do the same thing. Which
//! clock callers read is the store's to say ([`Store::clock`]): the host's on SQLite, the
//! database's on PostgreSQL. [`sqlite`] is the
//! embedded default (one writer thread with group commit, a pool of readers); [`postgres`] is
//! for many processes on many hosts sharing one database.
//! [`migrate_pg`] copies a SQLite database into an empty PostgreSQL one
//! (`spool migrate-to-postgres`).

pub mod migrate_pg;
pub mod postgres;
pub(crate) mod rules;
pub mod sqlite;

pub use postgres::{PostgresOptions, PostgresStore, PostgresUrl};
pub use sqlite::LATEST_VERSION;
pub use sqlite::{SqliteStore, StoreOptions, Synchronous};

use crate::clock::UnixMillis;
use crate::events::EventHub;
use crate::task::{Author, Message, NewTask, Task, TaskId, TaskStatus};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::oneshot;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not take the write in time (busy, disk full, writer overloaded).
    /// Nothing was written.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other error of the database or its driver.
    #[error("database error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
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
    /// A newer spool migrated the database while this process ran: it writes nothing more
    /// and stops (see [`crate::app::Spool::run`]).
    #[error(
        "a newer spool migrated the database to schema version {found} since this process \
         started (it knows {known}): start the newer spool in its place"
    )]
    SchemaMigratedSince {
        /// Version found in the database.
        found: u32,
        /// Newest version this build knows.
        known: u32,
    },
    /// The file exists but is not a SQLite database.
    #[error("{0} is not a SQLite database")]
    NotADatabase(String),
    /// The schema cannot be brought to this spool's version (a migration was refused or failed).
    #[error("migration: {0}")]
    Migration(String),
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

/// Message content read per page, at most (the page still holds at least one message): a
/// reader holds its page while its client is slow, so pages are bounded by bytes, not only by
/// count (500 messages of 64 KiB would be 32 MB per open stream).
pub const MESSAGE_PAGE_BYTES: usize = 1 << 20;

/// Changes [`Store::changes_prune`] removes per call, at most.
pub const CHANGES_PRUNE_BATCH: usize = 10_000;

/// The stream tokens a task keeps (the newest by expiry): minting one more forgets the oldest,
/// so the table stays bounded whatever a client does.
pub const STREAM_TOKENS_PER_TASK: i64 = 16;

/// Short for a store result.
pub type Result<T> = std::result::Result<T, StoreError>;

/// One queue's share of a claim.
#[derive(Debug, Clone)]
pub struct QueueClaim {
    /// The queue.
    pub queue: String,
    /// At most this many of its tasks.
    pub limit: u32,
    /// The queue's admission limits, checked in the claim's transaction against what every
    /// process on the database runs (`None`: no limit, today's claim).
    pub admission: Option<Admission>,
}

/// A queue's admission limits (`[queues.NAME]` in config). A task that cannot be admitted stays
/// `pending` and is looked at again by the next claim; it never blocks other tasks.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Admission {
    /// At most this many of the queue's tasks running at once, across all processes.
    pub global_concurrency: Option<u32>,
    /// At most this many running tasks with one `concurrency_key`, across all processes.
    pub per_key_concurrency: Option<u32>,
    /// Claims take a token each from the queue's bucket, kept in the database.
    pub rate: Option<RateLimit>,
}

impl Admission {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.global_concurrency.is_some()
            || self.per_key_concurrency.is_some()
            || self.rate.is_some()
    }
}

/// A token bucket: `count` tokens every `period_ms`, at most `burst` in the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per period.
    pub count: u32,
    /// The period, ms (1000, 60000 or 3600000).
    pub period_ms: u64,
    /// The bucket's size: tasks that may start at once after a quiet spell.
    pub burst: u32,
}

/// A cron schedule as stored (see [`crate::schedule`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    /// Its name.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// IANA time zone name.
    pub timezone: String,
    /// The task each firing enqueues (JSON, as `POST /v1/tasks` without a key).
    pub task: Value,
    /// `skip`, `latest` or `all`.
    pub catch_up: String,
    /// Missed firings `all` enqueues at most.
    pub catch_up_max: u32,
    /// `config` or `api`.
    pub source: String,
    /// The newest firing handled (fired or skipped).
    pub last_fire_at: Option<UnixMillis>,
    /// The task the newest firing enqueued.
    pub last_task_id: Option<String>,
    /// When it was first stored.
    pub created_at: UnixMillis,
    /// Its last change.
    pub updated_at: UnixMillis,
}

/// A queue's token bucket as stored: tokens at `updated_at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens in the bucket at `updated_at`.
    pub tokens: f64,
    /// The last refill.
    pub updated_at: UnixMillis,
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
    /// True when the attempt is given back, not spent (shutdown, a wait).
    pub uncount: bool,
    /// With status `waiting`: when the wait times out (the task is pending again then).
    pub wait_until: Option<UnixMillis>,
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

/// Task content (payload and result) read per page of a task list, at most: the page still
/// holds at least one task. 500 tasks of 1 MiB payloads would be 500 MB per request.
pub const LIST_PAGE_BYTES: usize = 4 << 20;

/// How many timed-out waits one claim makes runnable again at most (the oldest first); the rest
/// wait for the next claim that rescues. After a long outage many waits time out at once, and
/// one claim's transaction should not rewrite them all while enqueues wait behind it.
pub const EXPIRED_WAITS_PER_CLAIM: u32 = 1_000;

/// How many expired leases one claim rescues at most on PostgreSQL (the oldest first; every
/// host's running tasks can be there at once after an outage); the rest, at the next claim.
pub const EXPIRED_LEASES_PER_CLAIM: u32 = 1_000;

/// A page of a task list: at most `limit` tasks, newest first, and about [`LIST_PAGE_BYTES`]
/// of content.
#[derive(Debug, Clone, Default)]
pub struct TaskPage {
    /// The tasks, newest first.
    pub tasks: Vec<Task>,
    /// True when the page stopped at [`LIST_PAGE_BYTES`] before `limit`: more may follow the
    /// last task.
    pub cut: bool,
}

/// The result of one enqueue.
#[derive(Debug, Clone)]
pub struct Inserted {
    /// The task (the original one on an idempotent replay).
    pub task: std::sync::Arc<Task>,
    /// False when an earlier task with the same key was returned.
    pub created: bool,
}

/// A worker pool (a `spool work` process, or the slots of a `spool serve`) as it registered
/// itself, for `spool inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The pool's id: the `lease_owner` of the tasks it runs.
    pub id: String,
    /// The host name it registered under.
    pub host: String,
    /// Its process id on that host.
    pub pid: i64,
    /// When it registered.
    pub started_at: UnixMillis,
    /// Its last heartbeat (every third of `worker.lease_ms`).
    pub heartbeat_at: UnixMillis,
    /// The tasks it holds running now.
    pub running: i64,
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
    /// Parked until their owner writes to them or their wait times out.
    pub waiting: u64,
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
    /// Valid for this task and attempt, which began (was claimed) at this time.
    Valid(TaskId, u32, UnixMillis),
}

/// The attempt a task token names: its number and the token's hash.
///
/// A wait gives its attempt number back, so the next claim runs with the same number; the
/// number alone would let a request or stream of the attempt that waited act for the next one.
/// The token tells them apart: it is deleted, in the same transaction, when its attempt ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAttempt {
    /// The attempt number the token was issued for.
    pub attempt: u32,
    /// When that attempt was claimed (`started_at`): a reader that cannot ask for the token at
    /// every turn (an SSE stream) tells its attempt from the next by it.
    pub started_at: UnixMillis,
    /// The token's hash, as stored.
    pub token_hash: String,
}

/// Who may append a message, and so what is checked.
#[derive(Debug, Clone)]
pub enum MessageCheck {
    /// A user through the API (`None`: an admin): the task must be theirs and not terminal.
    User(Option<String>),
    /// A task token (a webhook receiver's, a command's `SPOOL_TASK_TOKEN`): the attempt it was
    /// issued for must still be running.
    Attempt(TokenAttempt),
    /// This process's worker: only that the task exists (tools and tests).
    Worker,
    /// A running attempt: the task must still be running under this owner and attempt, so a
    /// worker that lost its lease cannot write into the next attempt's messages.
    Lease {
        /// The worker holding the lease.
        owner: String,
        /// The attempt.
        attempt: u32,
    },
}

/// A write a store has accepted and ordered but may not have committed yet;
/// [`Queued::answer`] waits for its commit. A store that commits before it answers hands out
/// one that is [`Queued::ready`].
#[derive(Debug)]
pub struct Queued<T>(oneshot::Receiver<Result<T>>);

impl<T> Queued<T> {
    /// A write whose outcome will be sent on the other end of the channel.
    pub fn new(rx: oneshot::Receiver<Result<T>>) -> Self {
        Self(rx)
    }

    /// A write that has already committed (or failed).
    pub fn ready(outcome: Result<T>) -> Self {
        let (tx, rx) = oneshot::channel();
        // The receiver is held right here: the send cannot fail.
        let _ = tx.send(outcome);
        Self(rx)
    }

    /// The write's outcome, once its transaction committed (or failed).
    ///
    /// # Errors
    /// The write's own error, or `Unavailable` when the store stopped first.
    pub async fn answer(self) -> Result<T> {
        self.0
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }
}

/// A change of a task as the database recorded it, in commit order: what `/v1/events` streams,
/// from any process on the database.
#[derive(Debug, Clone)]
pub struct Change {
    /// The change's position: changes committed later have greater ones.
    pub seq: i64,
    /// The task as it is when read, with the status this change gave it (a task changed twice
    /// since a cursor shows up once for each change, each with its own status).
    pub task: Arc<Task>,
}

/// A page of changes after a cursor.
#[derive(Debug, Clone, Default)]
pub struct ChangePage {
    /// Changes after the cursor, oldest first.
    pub changes: Vec<Change>,
    /// The greatest position read (the cursor to continue from; the cursor given when none).
    pub next: i64,
    /// True when changes after the cursor were already pruned: the reader missed some.
    pub gap: bool,
    /// The newest position recorded when the page was read (0: none yet).
    pub newest: i64,
    /// True when the page was cut (by `limit` or by [`CHANGE_PAGE_BYTES`]) before the end of
    /// the log: read again from `next`.
    pub more: bool,
}

/// Task content (payload and result) read per page of changes, at most (a page still holds at
/// least one change).
pub const CHANGE_PAGE_BYTES: usize = 1 << 20;

/// Filters of a change page.
#[derive(Debug, Clone, Default)]
pub struct ChangeParams {
    /// Read after this position (0: from the oldest kept).
    pub after: i64,
    /// Only this user's tasks (None: all).
    pub user_id: Option<String>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Read at most this many changes (before the filters), and about [`CHANGE_PAGE_BYTES`] of
    /// task content.
    pub limit: u32,
}

/// The database behind spool. Every implementation passes the one conformance suite
/// (`tests/conformance/`); the methods are grouped as tasks, leases, messages, queues, users
/// and tokens, workers, operations and events.
///
/// Times (`now`) are passed in by the caller, as are ids and tokens (as hashes); a store reads
/// no clock, random source or environment of its own.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    // ---- tasks ------------------------------------------------------------------------------

    /// Enqueues tasks, all or nothing. A task whose idempotency key the user used before comes
    /// back as the original (`created: false`) when the request hash matches, and fails the whole
    /// call with [`StoreError::IdempotencyMismatch`] when it does not. Refused with
    /// `LimitReached` when a user's quota of [`Limits`] would be passed.
    ///
    /// # Errors
    /// `IdempotencyMismatch`, `LimitReached`, `Unavailable`, or `Backend`; nothing is written then.
    async fn task_insert(&self, tasks: Vec<NewTask>, now: UnixMillis) -> Result<Vec<Inserted>>;

    /// One task; with `user`, only that user's.
    ///
    /// # Errors
    /// `NotFound` or a database error.
    async fn task_get(&self, id: TaskId, user: Option<String>) -> Result<Task>;

    /// A page of tasks, newest first.
    ///
    /// # Errors
    /// A database error.
    async fn task_list(&self, p: ListParams) -> Result<TaskPage>;

    /// A task (scoped to `user`) and its messages after `after`, read in one snapshot (see
    /// [`Store::message_list`] for the page).
    ///
    /// # Errors
    /// `NotFound` or a database error.
    async fn task_with_messages(
        &self,
        id: TaskId,
        user: Option<String>,
        after: i64,
        limit: u32,
        author: Option<Author>,
    ) -> Result<(Task, Vec<Message>)>;

    /// Cancels a task ([`crate::queue::cancel`] decides how: a pending or waiting task ends at
    /// once); `user` limits it to that user's.
    ///
    /// # Errors
    /// `NotFound`, `Conflict` for a terminal task, `Unavailable`.
    async fn task_cancel(&self, id: TaskId, user: Option<String>, now: UnixMillis) -> Result<Task>;

    /// Puts a failed or canceled task back to pending with its attempts reset
    /// ([`crate::queue::retry`]); it counts against its owner's quota again. Its checkpoint
    /// stays unless `reset_checkpoint` (then the owner's messages are all ahead of it again).
    ///
    /// # Errors
    /// `NotFound`, `Conflict` for other states, `LimitReached`, `Unavailable`.
    async fn task_retry(
        &self,
        id: TaskId,
        user: Option<String>,
        reset_checkpoint: bool,
        now: UnixMillis,
    ) -> Result<Task>;

    /// Saves the running attempt's checkpoint (fenced by `fence`: [`MessageCheck::Lease`] or
    /// [`MessageCheck::Attempt`]), durable when this returns; the owner's messages the attempt
    /// has read ([`Store::inbox_read`]) are behind the task from now on. Returns the task.
    ///
    /// # Errors
    /// `NotFound`; `Conflict` when the attempt has ended; `Unavailable`.
    async fn task_checkpoint(
        &self,
        id: TaskId,
        checkpoint: Value,
        fence: MessageCheck,
        now: UnixMillis,
    ) -> Result<Task>;

    /// Records that the running attempt (fenced as for [`Store::task_checkpoint`]) has read the
    /// owner's messages up to `upto`. A checkpoint or a wait of that attempt then takes them as
    /// behind the task; an attempt that ends otherwise leaves them to the next one. Returns
    /// whether it was recorded: `false` when that attempt has ended.
    ///
    /// # Errors
    /// `Unavailable` or a database error. An ended attempt changes nothing and is no error.
    async fn inbox_read(
        &self,
        id: TaskId,
        fence: MessageCheck,
        upto: i64,
        now: UnixMillis,
    ) -> Result<bool>;

    /// Stores a read token (its hash) for one task's events and messages until `expires_at`,
    /// and forgets some expired ones and the task's tokens beyond its
    /// [`STREAM_TOKENS_PER_TASK`] newest (by expiry).
    ///
    /// # Errors
    /// `NotFound` when the task is gone; `Unavailable` or a database error.
    async fn stream_token_create(
        &self,
        token_hash: String,
        task_id: TaskId,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<()>;

    /// The task a read token is good for at `now` (`None`: unknown or expired).
    ///
    /// # Errors
    /// A database error.
    async fn stream_token_task(
        &self,
        token_hash: String,
        now: UnixMillis,
    ) -> Result<Option<TaskId>>;

    /// Deletes up to `limit` tasks that ended with `status` before `before` (with their
    /// messages); returns how many.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn task_prune(&self, status: TaskStatus, before: UnixMillis, limit: u32)
        -> Result<usize>;

    // ---- leases -----------------------------------------------------------------------------

    /// Claims runnable tasks for a worker, best first; with `rescue`, first ends or frees the
    /// tasks whose lease expired ([`crate::queue::rescue`]) and makes waiting tasks whose wait
    /// timed out pending (wake reason `timeout`), in every queue, not only the ones claimed from.
    /// A claim starts the attempt's inbox at the task's `inbox_cursor`.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn task_claim(&self, p: ClaimParams) -> Result<Vec<Arc<Task>>>;

    /// Extends the leases `owner` holds on `tasks` to `now + lease_ms`; returns those still
    /// held. Only the tasks named: a lease the worker no longer knows of (an attempt it
    /// dropped, a claim whose answer it never got) must run out, so another worker rescues it.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn lease_extend(
        &self,
        owner: String,
        tasks: Vec<TaskId>,
        lease_ms: u64,
        now: UnixMillis,
    ) -> Result<Vec<HeldLease>>;

    /// Ends an attempt, fenced by owner and attempt number; the answer is `None` when the fence
    /// did not match (the lease was lost) and nothing changed.
    ///
    /// **Ordering contract:** once this returns, no claim made later through the same store can
    /// commit before this write. A worker may therefore free the attempt's slot as soon as this
    /// returns, before [`Queued::answer`]: the task cannot be claimed again by this process ahead
    /// of its own outcome. (SQLite meets this once the write is queued on its one writer; a store
    /// without such a queue returns after the commit.)
    ///
    /// # Errors
    /// `Unavailable` when the write could not be queued; the answer carries the write's error.
    async fn task_finish(&self, p: FinishParams) -> Result<Queued<Option<Arc<Task>>>>;

    /// [`Store::task_finish`], waiting for the commit.
    ///
    /// # Errors
    /// As [`Store::task_finish`], and the write's own error.
    async fn task_finish_wait(&self, p: FinishParams) -> Result<Option<Arc<Task>>> {
        self.task_finish(p).await?.answer().await
    }

    /// Stores the hash of a token for the running attempt of `task` as it was claimed (for a
    /// webhook receiver). It is stored only while that claim still runs (same attempt, worker
    /// and start), and is deleted when the attempt ends, however it ends.
    ///
    /// # Errors
    /// `Conflict` when the attempt has already ended; `Unavailable` or a database error.
    async fn task_token_create(
        &self,
        task: &Task,
        token_hash: String,
        now: UnixMillis,
    ) -> Result<()>;

    /// What a task token is worth at `now`.
    ///
    /// # Errors
    /// A database error.
    async fn task_token_lookup(
        &self,
        token_hash: String,
        now: UnixMillis,
    ) -> Result<TaskTokenCheck>;

    // ---- messages ---------------------------------------------------------------------------

    /// Appends a message to a task after `check`. `messages_per_task` of [`Limits`]: past it a
    /// user's message is refused (`LimitReached`); the task's own first message past it is
    /// stored as one `truncated` message instead, and every later one is dropped (`Ok(None)`).
    /// A [`MessageCheck::User`] message is authored `user` (else `task`), and wakes a waiting
    /// task in the same transaction (pending at `now`, wake reason `message`).
    ///
    /// # Errors
    /// `NotFound`, `Conflict` for a terminal task or an ended attempt, `LimitReached`,
    /// `Unavailable`.
    async fn message_insert(
        &self,
        task_id: TaskId,
        kind: String,
        content: Value,
        check: MessageCheck,
        now: UnixMillis,
    ) -> Result<Option<Message>>;

    /// A task's messages after the cursor `after` (a message's `id`; 0 for the first), oldest
    /// first: at most `limit`, and about [`MESSAGE_PAGE_BYTES`] of content (at least one
    /// message). Continue after the last id returned: a reader that does so sees every
    /// committed message of the task once, in order, never skipping one that commits late.
    /// With `author`, only that author's messages.
    ///
    /// # Errors
    /// A database error.
    async fn message_list(
        &self,
        task_id: TaskId,
        after: i64,
        limit: u32,
        author: Option<Author>,
    ) -> Result<Vec<Message>>;

    // ---- queues -----------------------------------------------------------------------------

    /// Depths of every queue that has a task, a pause record, or is named in `configured`.
    ///
    /// # Errors
    /// A database error.
    async fn queue_stats(
        &self,
        configured: Vec<String>,
        now: UnixMillis,
    ) -> Result<Vec<QueueStats>>;

    /// Every rate-limited queue's token bucket as last stored (refill it with the rate to know
    /// the tokens now).
    ///
    /// # Errors
    /// A database error.
    async fn queue_buckets(&self) -> Result<Vec<(String, Bucket)>>;

    /// Names of paused queues.
    ///
    /// # Errors
    /// A database error.
    async fn queue_paused(&self) -> Result<Vec<String>>;

    /// Pauses or resumes a queue.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn queue_set_paused(&self, name: String, paused: bool, now: UnixMillis) -> Result<()>;

    // ---- schedules ----------------------------------------------------------------------------

    /// Every schedule, by name.
    ///
    /// # Errors
    /// A database error.
    async fn schedule_list(&self) -> Result<Vec<ScheduleRow>>;

    /// Creates or replaces a schedule's definition, keeping its last firing, unless the cron
    /// expression or the time zone changes: then the last firing becomes `now`, so nothing from
    /// before the change is due (a catch-up would fire the new expression's times from when
    /// the old one held). With `config` false (the API) a config schedule of that name is not
    /// touched: `Conflict`.
    ///
    /// # Errors
    /// `Conflict`, `Unavailable` or a database error.
    async fn schedule_put(
        &self,
        row: ScheduleRow,
        config: bool,
        now: UnixMillis,
    ) -> Result<ScheduleRow>;

    /// Deletes an API schedule; false when there is none of that name (config ones are kept).
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn schedule_delete(&self, name: String) -> Result<bool>;

    /// Deletes the config schedules not named in `keep`; returns how many.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn schedule_prune_config(&self, keep: Vec<String>) -> Result<usize>;

    /// Records that a schedule handled its firings up to `at` (it never moves back) and the task
    /// the newest enqueued.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn schedule_fired(
        &self,
        name: String,
        at: UnixMillis,
        task_id: Option<String>,
    ) -> Result<()>;

    // ---- users and tokens -------------------------------------------------------------------

    /// Stores a new token of a token user (hashed): a new user, or with
    /// [`ExistingUser::AddToken`] an existing one, never one silently for the other. The name
    /// [`ADMIN_NAME`] belongs to an admin only; `admin` must match an existing user's flag.
    ///
    /// # Errors
    /// `Conflict` naming the reason; `Unavailable` or a database error. Nothing is written then.
    async fn token_create(&self, p: TokenCreate) -> Result<User>;

    /// The first start's admin token: stored only when the database holds no token at all (so
    /// again once every token was revoked), for the user [`ADMIN_NAME`] (made, or made an
    /// admin, if need be). True when it was stored.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn token_bootstrap_admin(&self, token_hash: String, now: UnixMillis) -> Result<bool>;

    /// The token user of `name`, made if missing: [`ADMIN_NAME`] is made an admin, any other
    /// name not.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn user_resolve(&self, name: String, now: UnixMillis) -> Result<User>;

    /// The user of a JWT identity (issuer and user claim), made on first sight; its `is_admin`
    /// is false (a JWT user's admin right comes from each token).
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn user_jwt(&self, issuer: String, name: String, now: UnixMillis) -> Result<User>;

    /// Deletes tokens; returns how many.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn token_revoke(&self, which: TokenRevoke) -> Result<usize>;

    /// The user a token hash names (`None`: unknown or revoked).
    ///
    /// # Errors
    /// A database error.
    async fn user_by_token(&self, token_hash: String) -> Result<Option<User>>;

    /// A user by id (the owner of a task whose `user_id` is `id`).
    ///
    /// # Errors
    /// A database error.
    async fn user_by_id(&self, id: i64) -> Result<Option<User>>;

    /// Every token, oldest first (never the tokens).
    ///
    /// # Errors
    /// A database error.
    async fn token_list(&self) -> Result<Vec<TokenInfo>>;

    /// Whether the database holds any token.
    ///
    /// # Errors
    /// A database error.
    async fn token_any(&self) -> Result<bool>;

    // ---- workers ----------------------------------------------------------------------------

    /// Records a worker process and its heartbeat; forgets workers silent since `stale_before`.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn worker_heartbeat(
        &self,
        id: String,
        host: String,
        pid: u32,
        stale_before: UnixMillis,
        now: UnixMillis,
    ) -> Result<()>;

    /// Forgets a worker process that stopped.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn worker_remove(&self, id: String) -> Result<()>;

    /// The registered worker pools, by host then start, each with the tasks it holds running.
    ///
    /// # Errors
    /// A database error.
    async fn worker_list(&self) -> Result<Vec<WorkerInfo>>;

    // ---- operations -------------------------------------------------------------------------

    /// Whether the database takes a durable write now (for `/readyz`).
    ///
    /// # Errors
    /// `Unavailable` when it does not.
    async fn ping_write(&self, now: UnixMillis) -> Result<()>;

    /// Running tasks (oldest first) and the latest failures, for `spool inspect`.
    ///
    /// # Errors
    /// A database error.
    async fn inspect_lists(&self, limit: u32) -> Result<(Vec<Task>, Vec<Task>)>;

    /// The schema version of the database.
    ///
    /// # Errors
    /// A database error.
    async fn schema_version(&self) -> Result<u32>;

    /// The newest schema version this build of spool knows (and migrates a database to).
    fn known_schema_version(&self) -> u32;

    /// The clock every time this store keeps must be read from. SQLite: this host's own (the
    /// file has one host). PostgreSQL: the database's, as [`crate::clock::SyncedClock`] reads
    /// it (processes on several hosts compare each other's leases and `run_at`).
    fn clock(&self) -> Arc<dyn crate::clock::Clock> {
        Arc::new(crate::clock::SystemClock)
    }

    /// Reads the database's clock again, so [`Store::clock`] follows the drift between this
    /// host's clock and the database's; returns how far the store's clock is ahead of this
    /// host's wall clock, in milliseconds (`None` on SQLite, whose clock is the host's).
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn clock_sync(&self) -> Result<Option<i64>> {
        Ok(None)
    }

    /// Forgets recorded changes older than `before`, keeping at least the newest `keep`;
    /// returns how many were removed: at most [`CHANGES_PRUNE_BATCH`], so a caller that got
    /// that many calls again.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn changes_prune(&self, before: UnixMillis, keep: u64) -> Result<usize>;

    /// Where the database is, for logs and `spool inspect` (no secrets).
    fn describe(&self) -> String;

    /// Stops taking writes once those already taken are done, and closes the database.
    fn close(&self);

    // ---- events -----------------------------------------------------------------------------

    /// In-process announcements of this store's committed changes: they wake waiters at once.
    /// Changes made by other processes are not announced here; [`Store::changes`] has them.
    fn hub(&self) -> &Arc<EventHub>;

    /// Task changes committed after `p.after` by any process on the database, in commit order.
    ///
    /// # Errors
    /// A database error.
    async fn changes(&self, p: ChangeParams) -> Result<ChangePage>;
}
