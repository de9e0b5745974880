//! The SQLite store, the embedded default: one writer thread with group commit (`writer`),
//! and a pool of read-only connections. By concern:
//!
//! | module | holds |
//! |---|---|
//! | `mod.rs` | opening (WAL, pragmas, migrations, the reader pool) and the [`Store`] methods |
//! | `writer` | the writer thread, group commit, savepoints, backpressure |
//! | `insert` | enqueue: chunked inserts, idempotency keys, per-user quotas |
//! | `claim` | the claim and the rescue of expired leases |
//! | `lookup` | reads shared by several methods (an owned task, a message page, users) |
//! | `rows` | rows to values, columns found by name |
//! | [`migrate`] | the schema versions |
//! | `sql` | every statement, from `sql/sqlite/queries/` |

mod admission;
mod claim;
mod insert;
mod lookup;
pub(crate) mod migrate;
mod rows;
mod schedules;
pub(crate) mod sql;
mod writer;

use claim::claim;
use insert::{check_usage, insert_tasks};
use lookup::{get_owned, insert_user, messages_after, user_by_jwt, user_by_name};
use writer::{writer_loop, WriteJob};

use super::{
    ChangePage, ChangeParams, ClaimParams, FinishParams, HeldLease, Inserted, ListParams,
    MessageCheck, QueueStats, Queued, Result, Store, StoreError, TaskPage, TaskTokenCheck,
    TokenCreate, TokenInfo, TokenRevoke, User, WorkerInfo, ADMIN_NAME, CHANGE_PAGE_BYTES,
    LIST_PAGE_BYTES,
};
use crate::clock::UnixMillis;
use crate::events::{Event, EventHub};
use crate::queue::{self, CancelAction};
use crate::store::rules;
use crate::task::{Author, Message, NewTask, Task, TaskId, TaskStatus, WakeReason};
pub use migrate::LATEST_VERSION;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{named_params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 1024;
/// The write connection's page cache, KiB.
const WRITER_CACHE_KIB: u32 = 32 * 1024;
/// Default capacity of the writer's channel; past it requests get `503` at once.
pub const DEFAULT_WRITE_QUEUE: usize = 8192;

/// `PRAGMA synchronous` of the write connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged task survives power loss.
    Full,
    /// fsync at checkpoints: survives a crash of spool, not of the machine.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The database file.
    pub path: PathBuf,
    /// `PRAGMA synchronous`.
    pub synchronous: Synchronous,
    /// How long a write waits for another process's lock before `503`.
    pub busy_timeout_ms: u64,
    /// Read-only connections in the pool.
    pub readers: u32,
    /// Capacity of the writer's channel.
    pub write_queue: usize,
    /// Quotas enforced in the write transactions (default: none).
    pub limits: super::Limits,
}

impl StoreOptions {
    /// Defaults for a file.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Full,
            busy_timeout_ms: 5000,
            readers: 8,
            write_queue: DEFAULT_WRITE_QUEUE,
            limits: super::Limits::default(),
        }
    }
}

/// The SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    tx: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: r2d2::Pool<SqliteConnectionManager>,
    hub: Arc<EventHub>,
    path: PathBuf,
    limits: super::Limits,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn open_write_connection(opts: &StoreOptions) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&opts.path, flags).map_err(|e| {
        StoreError::Unavailable(format!("cannot open {}: {e}", opts.path.display()))
    })?;
    conn.busy_timeout(Duration::from_millis(opts.busy_timeout_ms))?;
    // journal_mode reads the header first: a file that is not a database fails here, unwritten.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| match StoreError::from(e) {
            StoreError::NotADatabase(_) => {
                StoreError::NotADatabase(opts.path.display().to_string())
            }
            other => other,
        })?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "could not switch {} to WAL (journal_mode is {mode})",
            opts.path.display()
        )));
    }
    // The writer's page cache: SQLite's default (2 MiB) is smaller than the pages one busy
    // second touches, so pages were evicted and read back (and their memory freed and faulted
    // in again) within a batch. It grows only as pages are used. Statement journals and the
    // temporary tables behind `IN (SELECT ...)` and RETURNING stay in memory (temp_store): as
    // files they cost a third of the claim.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; PRAGMA cache_size = -{}; PRAGMA temp_store = MEMORY;",
        opts.synchronous.pragma(),
        WRITER_CACHE_KIB
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if missing) the database, applies pending migrations, starts the writer
    /// thread and the reader pool.
    ///
    /// # Errors
    /// The file cannot be opened or is not a database, the schema is newer than this spool,
    /// or a migration failed.
    pub fn open(opts: StoreOptions) -> Result<Self> {
        Self::open_with_hub(opts, Arc::new(EventHub::new()))
    }

    /// As [`SqliteStore::open`], publishing on the given hub.
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub fn open_with_hub(opts: StoreOptions, hub: Arc<EventHub>) -> Result<Self> {
        // Two processes starting at once on a new file can meet in the switch to WAL, which
        // SQLite answers with "locked" without waiting: try again for up to the busy timeout.
        let give_up = std::time::Instant::now() + Duration::from_millis(opts.busy_timeout_ms);
        let conn = loop {
            match open_write_connection(&opts).and_then(|c| migrate::migrate(&c).map(|_| c)) {
                Err(StoreError::Unavailable(m)) if std::time::Instant::now() < give_up => {
                    tracing::debug!(error = %m, "database busy at open; trying again");
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other?,
            }
        };

        let busy = opts.busy_timeout_ms;
        let manager = SqliteConnectionManager::file(&opts.path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(move |c| {
                c.busy_timeout(Duration::from_millis(busy))?;
                c.execute_batch("PRAGMA query_only = ON;")
            });
        let readers = r2d2::Pool::builder()
            .max_size(opts.readers.max(1))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_millis(opts.busy_timeout_ms.max(1000)))
            .build(manager)?;

        let (tx, rx) = mpsc::channel::<Box<dyn WriteJob>>(opts.write_queue.max(1));
        let writer_hub = hub.clone();
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer_loop(conn, rx, &writer_hub))
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer thread: {e}")))?;

        Ok(Self {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers,
            hub,
            path: opts.path,
            limits: opts.limits,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the writer after it finished what it was given, closing the write connection.
    fn stop(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    // ---- writes -------------------------------------------------------------------------

    /// Enqueues tasks, all or nothing. A task whose idempotency key the user used before comes
    /// back as the original (`created: false`) when the request hash matches, and fails the whole
    /// call with [`StoreError::IdempotencyMismatch`] when it does not.
    ///
    /// # Errors
    /// `IdempotencyMismatch`, `Unavailable`, or a database error; nothing is written then.
    async fn task_insert(&self, tasks: Vec<NewTask>, now: UnixMillis) -> Result<Vec<Inserted>> {
        // Payloads are turned into text here, on the caller's thread: the writer is the one
        // serial resource, so it does only what must be serial.
        let prepared = tasks
            .into_iter()
            .map(|t| {
                serde_json::to_string(&t.payload)
                    .map(|p| (t, p))
                    .map_err(json_err)
            })
            .collect::<Result<Vec<_>>>()?;
        // Even one task is several statements (the task, its change-log row, its owner's usage:
        // 0014), so in a group commit it has a savepoint of its own: a failure undoes all three.
        let limits = self.limits;
        self.submit(false, false, move |conn| {
            insert_tasks(conn, prepared, &limits, now)
        })
        .await
    }

    /// Claims runnable tasks for a worker; first rescues expired leases (a lost lease counts as
    /// a failed attempt). Returns the claimed tasks, best first.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn task_claim(&self, p: ClaimParams) -> Result<Vec<Arc<Task>>> {
        // In its own savepoint even as one statement: the UPDATE changes every row on its first
        // step, and a row that then fails to read back must not stay claimed by nobody.
        self.write(true, move |conn| claim(conn, &p)).await
    }

    async fn lease_extend(
        &self,
        owner: String,
        tasks: Vec<TaskId>,
        lease_ms: u64,
        now: UnixMillis,
    ) -> Result<Vec<HeldLease>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(&tasks.iter().map(|t| t.to_string()).collect::<Vec<_>>())
            .unwrap_or_else(|_| "[]".into());
        self.write_one(true, move |conn| {
            let mut st = conn.prepare_cached(sql::LEASE_EXTEND)?;
            let rows = st.query_map(
                named_params! {":owner": owner, ":ids": ids, ":expires_at": now + lease_ms as i64},
                |r| {
                    Ok((
                        r.get::<_, String>("id")?,
                        r.get::<_, i64>("attempts")?,
                        r.get::<_, bool>("cancel_requested")?,
                    ))
                },
            )?;
            let mut held = Vec::new();
            for row in rows {
                let (id, attempt, cancel_requested) = row?;
                if let Ok(id) = id.parse::<TaskId>() {
                    held.push(HeldLease {
                        id,
                        attempt: attempt as u32,
                        cancel_requested,
                    });
                }
            }
            Ok((held, Vec::new()))
        })
        .await
    }

    /// As [`SqliteStore::task_finish`], in two steps: this returns once the write is queued (a
    /// claim queued after it cannot commit before it), and its [`Queued::answer`] once committed.
    ///
    /// # Errors
    /// As [`SqliteStore::task_finish`].
    async fn task_finish(&self, p: FinishParams) -> Result<Queued<Option<Arc<Task>>>> {
        // The result is written out here, on the caller's thread, not on the writer.
        let result_text = match &p.result {
            Some(v) => Some(serde_json::to_string(v).map_err(json_err)?),
            None => None,
        };
        self.enqueue(true, true, move |conn| {
            let claimed = &p.task;
            // One writer: no message can be written between this look and the finish.
            let unread = p.status == TaskStatus::Waiting
                && conn
                    .prepare_cached(sql::TASK_INBOX_UNREAD)?
                    .query_row(named_params! {":id": claimed.id.to_string()}, |r| {
                        r.get::<_, bool>(0)
                    })?;
            let mut st = conn.prepare_cached(sql::TASK_FINISH)?;
            let row = st
                .query_row(
                    named_params! {
                        ":id": claimed.id.to_string(), ":owner": p.owner,
                        ":attempt": claimed.attempts, ":status": p.status.as_str(),
                        ":result": result_text, ":error": p.error, ":run_at": p.run_at,
                        ":uncount": p.uncount as i64, ":now": p.now,
                        ":wait_until": p.wait_until, ":unread": unread,
                    },
                    |r| {
                        Ok((
                            (
                                r.get::<_, String>("status")?,
                                r.get::<_, i64>("attempts")?,
                                r.get::<_, Option<String>>("last_error")?,
                                r.get::<_, i64>("run_at")?,
                                r.get::<_, Option<i64>>("completed_at")?,
                                r.get::<_, bool>("cancel_requested")?,
                            ),
                            (
                                r.get::<_, Option<i64>>("wait_until")?,
                                r.get::<_, Option<String>>("wake_reason")?,
                                r.get::<_, i64>("inbox_cursor")?,
                                r.get::<_, Option<String>>("checkpoint")?,
                            ),
                        ))
                    },
                )
                .optional()?;
            let Some((
                (status, attempts, last_error, run_at, completed_at, cancel_requested),
                (wait_until, wake_reason, inbox_cursor, checkpoint),
            )) = row
            else {
                return Ok((None, Vec::new()));
            };
            let task = Arc::new(Task {
                status: status
                    .parse()
                    .map_err(|e: String| StoreError::Backend(e.into()))?,
                attempts: attempts.max(0) as u32,
                last_error,
                run_at,
                completed_at,
                cancel_requested,
                result: p.result,
                lease_owner: None,
                lease_expires_at: None,
                updated_at: p.now,
                wait_until,
                wake_reason: wake_reason.as_deref().and_then(WakeReason::parse),
                inbox_cursor,
                // The attempt may have saved one since its claim.
                checkpoint: checkpoint.map(rows::parse_json_lenient),
                ..Task::clone(claimed)
            });
            Ok((Some(task.clone()), vec![Event::Task(task)]))
        })
        .await
    }

    /// Cancels a task: a pending one ends at once; a running one is marked `cancel_requested`
    /// for its worker to stop. `user` limits it to that user's tasks.
    ///
    /// # Errors
    /// `NotFound`, `Conflict` for a terminal task, `Unavailable`.
    async fn task_cancel(&self, id: TaskId, user: Option<String>, now: UnixMillis) -> Result<Task> {
        self.write_one(false, move |conn| {
            let task = get_owned(conn, id, user.as_deref())?;
            let query = match queue::cancel(id, task.status).map_err(StoreError::Conflict)? {
                CancelAction::EndNow => sql::TASK_CANCEL_PENDING,
                CancelAction::AskWorker => sql::TASK_CANCEL_RUNNING,
            };
            let t = rows::task(
                &mut *conn.prepare_cached(query)?,
                named_params! {":id": id.to_string(), ":now": now},
            )?
            .ok_or(StoreError::NotFound(id))?;
            Ok((t.clone(), vec![Event::Task(Arc::new(t))]))
        })
        .await
    }

    /// Puts a failed or canceled task back to pending with attempts reset.
    ///
    /// # Errors
    /// `NotFound`, `Conflict` for other states, `Unavailable`.
    async fn task_retry(
        &self,
        id: TaskId,
        user: Option<String>,
        reset_checkpoint: bool,
        now: UnixMillis,
    ) -> Result<Task> {
        let limits = self.limits;
        self.write_one(false, move |conn| {
            let task = get_owned(conn, id, user.as_deref())?;
            queue::retry(id, task.status).map_err(StoreError::Conflict)?;
            // A retried task is unfinished again: it counts against its owner's quota (its
            // payload is stored already).
            if limits.pending_tasks_per_user != u64::MAX {
                check_usage(conn, &task.user_id, 1, 0, &limits)?;
            }
            let t = rows::task(
                &mut *conn.prepare_cached(sql::TASK_RETRY)?,
                named_params! {":id": id.to_string(), ":now": now, ":reset": reset_checkpoint},
            )?
            .ok_or(StoreError::NotFound(id))?;
            Ok((t.clone(), vec![Event::Task(Arc::new(t))]))
        })
        .await
    }

    /// Appends a message to a task. With `user`, the task must be that user's and not terminal
    /// (the API's rule); without, any existing task takes it (a worker's progress).
    ///
    /// `messages_per_task` of the store's limits: past it a user's message is refused
    /// (`LimitReached`); the task's own first message past it is stored as one `truncated`
    /// message instead, and every later one is dropped (`Ok(None)`): the task goes on.
    ///
    /// # Errors
    /// `NotFound`, `Conflict` for a terminal task, `LimitReached`, `Unavailable`.
    async fn message_insert(
        &self,
        task_id: TaskId,
        kind: String,
        content: Value,
        check: MessageCheck,
        now: UnixMillis,
    ) -> Result<Option<Message>> {
        let wait = matches!(check, MessageCheck::Worker | MessageCheck::Lease { .. });
        let cap = self.limits.messages_per_task;
        // Two writes (the message, then the wake of a waiting task): a savepoint of its own,
        // so in a group commit a failed wake takes its message back with it.
        self.write(wait, move |conn| {
            let scope = match &check {
                MessageCheck::User(u) => u.as_deref(),
                _ => None,
            };
            let mut waiting = false;
            if !matches!(check, MessageCheck::Worker) {
                let t = get_owned(conn, task_id, scope)?;
                rules::message_allowed(&t, &check)?;
                if let MessageCheck::Attempt(a) = &check {
                    // The token is deleted when its attempt ends.
                    let holds = conn
                        .prepare_cached(sql::TASK_TOKEN_HOLDS)?
                        .exists(named_params! {":token_hash": a.token_hash,
                        ":task_id": task_id.to_string()})?;
                    if !holds {
                        return Err(StoreError::Conflict(format!(
                            "attempt {} of task {task_id} has ended",
                            a.attempt
                        )));
                    }
                }
                waiting = t.status == TaskStatus::Waiting;
            }
            let author = rules::author(&check);
            let (kind, content) = if cap == u64::MAX {
                (kind, content)
            } else {
                let n: i64 = conn
                    .prepare_cached(sql::MESSAGE_COUNT_GET)?
                    .query_row(named_params! {":task_id": task_id.to_string()}, |r| {
                        r.get(0)
                    })
                    .optional()?
                    .unwrap_or(0);
                match rules::capped_message(n.max(0) as u64, cap, &check, kind, content)? {
                    Some(m) => m,
                    None => return Ok((None, Vec::new())),
                }
            };
            let text = serde_json::to_string(&content).map_err(json_err)?;
            let id: i64 = conn
                .prepare_cached(sql::MESSAGE_INSERT)?
                .query_row(
                    named_params! {":task_id": task_id.to_string(), ":kind": kind,
                    ":content": text, ":now": now, ":author": author.as_str()},
                    |r| r.get(0),
                )
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        StoreError::NotFound(task_id)
                    }
                    e => e.into(),
                })?;
            let m = Message {
                id,
                task_id,
                kind,
                author,
                content,
                created_at: now,
            };
            let mut events = vec![Event::Message(Arc::new(m.clone()))];
            // The owner's message wakes a waiting task: pending at once, told why.
            if waiting && author == Author::User {
                if let Some(t) = rows::task(
                    &mut *conn.prepare_cached(sql::TASK_WAKE)?,
                    named_params! {":id": task_id.to_string(), ":now": now},
                )? {
                    events.push(Event::Task(Arc::new(t)));
                }
            }
            Ok((Some(m), events))
        })
        .await
    }

    async fn task_checkpoint(
        &self,
        id: TaskId,
        checkpoint: Value,
        fence: MessageCheck,
        now: UnixMillis,
    ) -> Result<Task> {
        let f = rules::attempt_fence(&fence)?;
        let text = serde_json::to_string(&checkpoint).map_err(json_err)?;
        self.write_one(true, move |conn| {
            let t = rows::task(
                &mut *conn.prepare_cached(sql::TASK_CHECKPOINT)?,
                named_params! {":id": id.to_string(), ":checkpoint": text, ":attempt": f.attempt,
                ":owner": f.owner, ":token": f.token_hash, ":now": now},
            )?;
            match t {
                Some(t) => Ok((t, Vec::new())),
                None => {
                    // Why not: no such task, or the attempt has ended.
                    get_owned(conn, id, None)?;
                    Err(StoreError::Conflict(format!(
                        "attempt {} of task {id} has ended",
                        f.attempt
                    )))
                }
            }
        })
        .await
    }

    async fn inbox_read(
        &self,
        id: TaskId,
        fence: MessageCheck,
        upto: i64,
        _now: UnixMillis,
    ) -> Result<bool> {
        let f = rules::attempt_fence(&fence)?;
        self.write_one(true, move |conn| {
            let n = conn
                .prepare_cached(sql::TASK_INBOX_READ)?
                .execute(named_params! {
                    ":id": id.to_string(), ":upto": upto, ":attempt": f.attempt,
                    ":owner": f.owner, ":token": f.token_hash,
                })?;
            Ok((n > 0, Vec::new()))
        })
        .await
    }

    async fn stream_token_create(
        &self,
        token_hash: String,
        task_id: TaskId,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<()> {
        self.write_one(false, move |conn| {
            conn.prepare_cached(sql::STREAM_TOKEN_PRUNE)?
                .execute(named_params! {":now": now})?;
            conn.prepare_cached(sql::STREAM_TOKEN_INSERT)?
                .execute(
                    named_params! {":hash": token_hash, ":task_id": task_id.to_string(),
                    ":expires_at": expires_at},
                )
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        StoreError::NotFound(task_id)
                    }
                    e => e.into(),
                })?;
            conn.prepare_cached(sql::STREAM_TOKEN_CAP)?
                .execute(named_params! {
                    ":task_id": task_id.to_string(),
                    ":keep": super::STREAM_TOKENS_PER_TASK,
                })?;
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn stream_token_task(
        &self,
        token_hash: String,
        now: UnixMillis,
    ) -> Result<Option<TaskId>> {
        self.read(move |conn| {
            let id: Option<String> = conn
                .prepare_cached(sql::STREAM_TOKEN_GET)?
                .query_row(named_params! {":hash": token_hash, ":now": now}, |r| {
                    r.get(0)
                })
                .optional()?;
            Ok(id.and_then(|s| s.parse().ok()))
        })
        .await
    }

    /// Pauses or resumes a queue.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn queue_set_paused(&self, name: String, paused: bool, now: UnixMillis) -> Result<()> {
        self.write_one(false, move |conn| {
            conn.prepare_cached(sql::QUEUE_SET_PAUSED)?
                .execute(named_params! {":name": name, ":paused": paused, ":now": now})?;
            Ok(((), Vec::new()))
        })
        .await
    }

    /// Stores a new token of a token user (hashed): a new user, or with
    /// [`ExistingUser::AddToken`] an existing one, never one silently for the other. The name
    /// [`ADMIN_NAME`] belongs to an admin only; `admin` must match an existing user's flag.
    /// Returns the user.
    ///
    /// # Errors
    /// `Conflict` naming the reason (the user exists, does not exist, or is not as asked);
    /// `Unavailable` or a database error. Nothing is written then.
    async fn token_create(&self, p: TokenCreate) -> Result<User> {
        self.write(true, move |conn| {
            let found = user_by_name(conn, &p.name)?;
            let user = match rules::token_owner(found, &p)? {
                Some(u) => u,
                None => insert_user(conn, &p.name, None, p.admin, p.now)?,
            };
            conn.prepare_cached(sql::TOKEN_INSERT)?
                .execute(named_params! {
                ":user_id": user.id, ":token_hash": p.token_hash, ":now": p.now})?;
            Ok((user, Vec::new()))
        })
        .await
    }

    /// The first start's admin token: stored only when the database holds no token at all, for
    /// the user [`ADMIN_NAME`] (made, or made an admin, if need be). True when it was stored;
    /// the caller may show the token only after this returned true (the insert committed).
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn token_bootstrap_admin(&self, token_hash: String, now: UnixMillis) -> Result<bool> {
        self.write(true, move |conn| {
            let any: bool = conn
                .prepare_cached(sql::TOKEN_ANY)?
                .query_row([], |r| r.get(0))?;
            if any {
                return Ok((false, Vec::new()));
            }
            let user = match user_by_name(conn, ADMIN_NAME)? {
                Some(u) => {
                    if !u.is_admin {
                        conn.prepare_cached(sql::USER_SET_ADMIN)?
                            .execute(named_params! {":id": u.id})?;
                    }
                    u
                }
                None => insert_user(conn, ADMIN_NAME, None, true, now)?,
            };
            conn.prepare_cached(sql::TOKEN_INSERT)?
                .execute(named_params! {
                ":user_id": user.id, ":token_hash": token_hash, ":now": now})?;
            Ok((true, Vec::new()))
        })
        .await
    }

    /// The token user of `name`, made if missing (the owner of `spool enqueue --user` and of
    /// [`crate::app::Spool::enqueue_with`]): [`ADMIN_NAME`] is made an admin, any other name not.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn user_resolve(&self, name: String, now: UnixMillis) -> Result<User> {
        let known = self
            .read({
                let name = name.clone();
                move |conn| user_by_name(conn, &name)
            })
            .await?;
        if let Some(u) = known {
            return Ok(u);
        }
        self.write(true, move |conn| {
            let u = match user_by_name(conn, &name)? {
                Some(u) => u,
                None => insert_user(conn, &name, None, name == ADMIN_NAME, now)?,
            };
            Ok((u, Vec::new()))
        })
        .await
    }

    /// The user of a JWT identity (issuer and user claim), made on first sight. JWT users are a
    /// namespace of their own: a JWT whose subject is `admin` is not the token user `admin`.
    /// The returned `is_admin` is false: a JWT user's admin right comes from each token.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn user_jwt(&self, issuer: String, name: String, now: UnixMillis) -> Result<User> {
        let (i2, n2) = (issuer.clone(), name.clone());
        let known = self.read(move |conn| user_by_jwt(conn, &i2, &n2)).await?;
        if let Some(u) = known {
            return Ok(u);
        }
        self.write(true, move |conn| {
            let u = match user_by_jwt(conn, &issuer, &name)? {
                Some(u) => u,
                None => insert_user(conn, &name, Some(&issuer), false, now)?,
            };
            Ok((u, Vec::new()))
        })
        .await
    }

    /// Deletes tokens; returns how many. A revoked token is refused by every process on the
    /// database once its cache entry lapses (at most a second, see the HTTP layer).
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn token_revoke(&self, which: TokenRevoke) -> Result<usize> {
        self.write(true, move |conn| {
            let n = match which {
                TokenRevoke::User(name) => conn
                    .prepare_cached(sql::TOKEN_REVOKE_USER)?
                    .execute(named_params! {":name": name})?,
                TokenRevoke::Hash(h) => conn
                    .prepare_cached(sql::TOKEN_REVOKE_HASH)?
                    .execute(named_params! {":token_hash": h})?,
                TokenRevoke::Id(id) => conn
                    .prepare_cached(sql::TOKEN_REVOKE_ID)?
                    .execute(named_params! {":id": id})?,
            };
            Ok((n, Vec::new()))
        })
        .await
    }

    /// Records this worker process and its heartbeat; forgets workers silent since `stale_before`.
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
    ) -> Result<()> {
        self.write(true, move |conn| {
            conn.prepare_cached(sql::WORKER_DELETE)?
                .execute(named_params! {":id": "", ":stale_before": stale_before})?;
            conn.prepare_cached(sql::WORKER_UPSERT)?
                .execute(named_params! {":id": id, ":host": host, ":pid": pid, ":now": now})?;
            Ok(((), Vec::new()))
        })
        .await
    }

    /// Forgets a worker process that stopped.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn worker_remove(&self, id: String) -> Result<()> {
        self.write(true, move |conn| {
            conn.prepare_cached(sql::WORKER_DELETE)?
                .execute(named_params! {":id": id, ":stale_before": i64::MIN})?;
            Ok(((), Vec::new()))
        })
        .await
    }

    /// The registered worker pools, by host then start, each with the tasks it holds running.
    ///
    /// # Errors
    /// A database error.
    async fn worker_list(&self) -> Result<Vec<WorkerInfo>> {
        self.read(|conn| {
            let mut st = conn.prepare_cached(sql::WORKER_LIST)?;
            let rows = st.query_map([], |r| {
                Ok(WorkerInfo {
                    id: r.get("id")?,
                    host: r.get("host")?,
                    pid: r.get("pid")?,
                    started_at: r.get("started_at")?,
                    heartbeat_at: r.get("heartbeat_at")?,
                    running: r.get("running")?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Deletes up to `limit` tasks that ended with `status` before `before`; returns how many.
    ///
    /// # Errors
    /// `Unavailable` or a database error.
    async fn task_prune(
        &self,
        status: TaskStatus,
        before: UnixMillis,
        limit: u32,
    ) -> Result<usize> {
        self.write(true, move |conn| {
            let n = conn.prepare_cached(sql::TASK_PRUNE)?.execute(
                named_params! {":status": status.as_str(), ":before": before, ":limit": limit},
            )?;
            Ok((n, Vec::new()))
        })
        .await
    }

    /// Issues a token for the running attempt of `task` as it was claimed (for a webhook
    /// receiver); stores its hash. The token is written only while that claim still runs (same
    /// attempt, worker and start), and is deleted when the attempt ends, however it ends.
    ///
    /// # Errors
    /// `Conflict` when the attempt has already ended; `Unavailable` or a database error.
    async fn task_token_create(&self, task: &Task, hash: String, now: UnixMillis) -> Result<()> {
        let (id, attempt) = (task.id, task.attempts);
        let owner = task.lease_owner.clone().unwrap_or_default();
        let started_at = task.started_at;
        let n = self
            .write_one(true, move |conn| {
                let n = conn
                    .prepare_cached(sql::TASK_TOKEN_INSERT)?
                    .execute(named_params! {
                    ":token_hash": hash, ":task_id": id.to_string(), ":attempt": attempt,
                    ":owner": owner, ":started_at": started_at, ":now": now})?;
                Ok((n, Vec::new()))
            })
            .await?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "attempt {attempt} of task {id} has ended"
            )));
        }
        Ok(())
    }

    /// What a task token is worth at `now`: unknown (never issued, or its attempt ended),
    /// expired (its lease ran out), or valid for a task and attempt.
    ///
    /// # Errors
    /// A database error.
    async fn task_token_lookup(
        &self,
        token_hash: String,
        now: UnixMillis,
    ) -> Result<TaskTokenCheck> {
        self.read(move |conn| {
            let row = conn
                .prepare_cached(sql::TASK_TOKEN_GET)?
                .query_row(
                    named_params! {":token_hash": token_hash, ":now": now},
                    |r| {
                        Ok((
                            r.get::<_, String>("task_id")?,
                            r.get::<_, i64>("attempt")?,
                            r.get::<_, i64>("started_at")?,
                            r.get::<_, Option<bool>>("live")?,
                        ))
                    },
                )
                .optional()?;
            Ok(match row {
                None => TaskTokenCheck::Unknown,
                Some((id, attempt, started_at, live)) => match id.parse::<TaskId>() {
                    Err(_) => TaskTokenCheck::Unknown,
                    Ok(_) if live != Some(true) => TaskTokenCheck::Expired,
                    Ok(id) => TaskTokenCheck::Valid(id, attempt.max(0) as u32, started_at),
                },
            })
        })
        .await
    }

    // ---- reads --------------------------------------------------------------------------

    /// One task; with `user`, only that user's.
    ///
    /// # Errors
    /// `NotFound` or a database error.
    async fn task_get(&self, id: TaskId, user: Option<String>) -> Result<Task> {
        self.read(move |conn| get_owned(conn, id, user.as_deref()))
            .await
    }

    /// A page of tasks, newest first.
    ///
    /// # Errors
    /// A database error.
    async fn task_list(&self, p: ListParams) -> Result<TaskPage> {
        self.read(move |conn| {
            let query = if p.user_id.is_some() {
                sql::TASK_LIST_USER
            } else {
                sql::TASK_LIST
            };
            rows::task_page(
                &mut *conn.prepare_cached(query)?,
                named_params! {
                    ":user_id": p.user_id, ":status": p.status.map(|s| s.as_str()),
                    ":queue": p.queue, ":kind": p.kind,
                    ":cursor": p.cursor.map(|c| c.to_string()), ":limit": p.limit,
                },
                LIST_PAGE_BYTES,
            )
        })
        .await
    }

    /// A task's messages with ids greater than `after`, oldest first.
    ///
    /// # Errors
    /// A database error.
    async fn message_list(
        &self,
        task_id: TaskId,
        after: i64,
        limit: u32,
        author: Option<Author>,
    ) -> Result<Vec<Message>> {
        self.read(move |conn| messages_after(conn, task_id, after, limit, author))
            .await
    }

    /// A task (scoped to `user`) and its messages after `after`, read in one snapshot. The page
    /// holds at most `limit` messages and about [`MESSAGE_PAGE_BYTES`] of content (at least one
    /// message): continue after the last id returned.
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
    ) -> Result<(Task, Vec<Message>)> {
        self.read(move |conn| {
            // A short read transaction so the task and the messages agree; it ends at once.
            conn.execute_batch("BEGIN")?;
            let out = (|| {
                let t = get_owned(conn, id, user.as_deref())?;
                let m = messages_after(conn, id, after, limit, author)?;
                Ok((t, m))
            })();
            let _ = conn.execute_batch("COMMIT");
            out
        })
        .await
    }

    /// Depths of every queue that has a task, a pause record, or is named in `configured`.
    ///
    /// # Errors
    /// A database error.
    async fn queue_stats(
        &self,
        configured: Vec<String>,
        now: UnixMillis,
    ) -> Result<Vec<QueueStats>> {
        self.read(move |conn| {
            let mut by: BTreeMap<String, QueueStats> = BTreeMap::new();
            for name in configured {
                by.entry(name.clone()).or_insert_with(|| QueueStats {
                    name,
                    ..Default::default()
                });
            }
            let mut st = conn.prepare_cached(sql::QUEUE_LIST)?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, String>("name")?, r.get::<_, bool>("paused")?))
            })?;
            for row in rows {
                let (name, paused) = row?;
                by.entry(name.clone())
                    .or_insert_with(|| QueueStats {
                        name,
                        ..Default::default()
                    })
                    .paused = paused;
            }
            let mut st = conn.prepare_cached(sql::QUEUE_STATS)?;
            let rows = st.query_map(named_params! {":now": now}, |r| {
                Ok((
                    r.get::<_, String>("queue")?,
                    r.get::<_, String>("status")?,
                    r.get::<_, i64>("n")?,
                    r.get::<_, Option<i64>>("due")?,
                    r.get::<_, Option<i64>>("oldest_due")?,
                ))
            })?;
            for row in rows {
                let (queue, status, n, due, oldest) = row?;
                let q = by.entry(queue.clone()).or_insert_with(|| QueueStats {
                    name: queue,
                    ..Default::default()
                });
                let n = n.max(0) as u64;
                match status.as_str() {
                    "pending" => {
                        let due = due.unwrap_or(0).max(0) as u64;
                        q.pending += due;
                        q.scheduled += n.saturating_sub(due);
                    }
                    "running" => q.running += n,
                    "waiting" => q.waiting += n,
                    "completed" => q.completed += n,
                    "failed" => q.failed += n,
                    "canceled" => q.canceled += n,
                    _ => {}
                }
                if let Some(o) = oldest {
                    q.oldest_pending_age_ms = Some((now - o).max(0) as u64);
                }
            }
            Ok(by.into_values().collect())
        })
        .await
    }

    async fn schedule_list(&self) -> Result<Vec<super::ScheduleRow>> {
        self.read(schedules::list).await
    }

    async fn schedule_put(
        &self,
        row: super::ScheduleRow,
        config: bool,
        now: UnixMillis,
    ) -> Result<super::ScheduleRow> {
        self.write_one(false, move |conn| {
            Ok((schedules::put(conn, &row, config, now)?, Vec::new()))
        })
        .await
    }

    async fn schedule_delete(&self, name: String) -> Result<bool> {
        self.write_one(false, move |conn| {
            Ok((schedules::delete(conn, &name)?, Vec::new()))
        })
        .await
    }

    async fn schedule_prune_config(&self, keep: Vec<String>) -> Result<usize> {
        self.write_one(true, move |conn| {
            Ok((schedules::prune_config(conn, &keep)?, Vec::new()))
        })
        .await
    }

    async fn schedule_fired(
        &self,
        name: String,
        at: UnixMillis,
        task_id: Option<String>,
    ) -> Result<()> {
        self.write_one(true, move |conn| {
            Ok((
                schedules::fired(conn, &name, at, task_id.as_deref())?,
                Vec::new(),
            ))
        })
        .await
    }

    async fn queue_buckets(&self) -> Result<Vec<(String, super::Bucket)>> {
        self.read(|conn| {
            let mut st = conn.prepare_cached(admission::TOKENS_LIST)?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    super::Bucket {
                        tokens: r.get(1)?,
                        updated_at: r.get(2)?,
                    },
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Names of paused queues.
    ///
    /// # Errors
    /// A database error.
    async fn queue_paused(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut st = conn.prepare_cached(sql::QUEUE_LIST)?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, String>("name")?, r.get::<_, bool>("paused")?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, paused) = row?;
                if paused {
                    out.push(name);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The user a token hash names (`None`: unknown or revoked).
    ///
    /// # Errors
    /// A database error.
    async fn user_by_token(&self, token_hash: String) -> Result<Option<User>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(sql::USER_BY_TOKEN)?
                .query_row(named_params! {":token_hash": token_hash}, rows::user)
                .optional()?)
        })
        .await
    }

    /// A user by id: the owner of a task whose `user_id` is `id` (its name for display; a JWT
    /// user's `is_admin` is false here, as it comes from each token).
    ///
    /// # Errors
    /// A database error.
    async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(sql::USER_GET_BY_ID)?
                .query_row(named_params! {":id": id}, rows::user)
                .optional()?)
        })
        .await
    }

    /// Every token, oldest first, as `spool token list` shows them (never the tokens).
    ///
    /// # Errors
    /// A database error.
    async fn token_list(&self) -> Result<Vec<TokenInfo>> {
        self.read(|conn| {
            let mut st = conn.prepare_cached(sql::TOKEN_LIST)?;
            let rows = st.query_map([], |r| {
                Ok(TokenInfo {
                    id: r.get("id")?,
                    user: r.get("name")?,
                    admin: r.get("is_admin")?,
                    created_at: r.get("created_at")?,
                    hash_prefix: r.get("hash_prefix")?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Whether the database holds any token.
    ///
    /// # Errors
    /// A database error.
    async fn token_any(&self) -> Result<bool> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(sql::TOKEN_ANY)?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }

    /// Running tasks (oldest first) and the latest failures, for `spool inspect`.
    ///
    /// # Errors
    /// A database error.
    async fn inspect_lists(&self, limit: u32) -> Result<(Vec<Task>, Vec<Task>)> {
        self.read(move |conn| {
            let running = rows::tasks(
                &mut *conn.prepare_cached(sql::RUNNING_LIST)?,
                named_params! {":limit": limit},
            )?;
            let failed = rows::tasks(
                &mut *conn.prepare_cached(sql::FAILURES_LIST)?,
                named_params! {":limit": limit},
            )?;
            Ok((running, failed))
        })
        .await
    }

    /// Whether the database takes a write now (for `/readyz`): an empty write transaction.
    ///
    /// # Errors
    /// `Unavailable` when it does not.
    async fn ping_write(&self, now: UnixMillis) -> Result<()> {
        self.write_one(false, move |conn| {
            // A real page write: a full disk or a lock held elsewhere fails it.
            conn.prepare_cached(sql::HEALTH_TOUCH)?
                .execute(named_params! {":now": now})?;
            Ok(((), Vec::new()))
        })
        .await
    }

    async fn schema_version(&self) -> Result<u32> {
        self.read(migrate::current_version).await
    }

    fn known_schema_version(&self) -> u32 {
        migrate::LATEST_VERSION
    }

    async fn changes_prune(&self, before: UnixMillis, keep: u64) -> Result<usize> {
        // The newest change always stays: `changes` tells a gap by the oldest change kept, and
        // an emptied table would tell a cursor behind the pruned changes that it missed none.
        let keep = keep.clamp(1, i64::MAX as u64) as i64;
        self.write(true, move |conn| {
            let n = conn
                .prepare_cached(sql::CHANGE_PRUNE)?
                .execute(named_params! {
                ":before": before, ":keep": keep, ":limit": super::CHANGES_PRUNE_BATCH as i64})?;
            Ok((n, Vec::new()))
        })
        .await
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    fn close(&self) {
        self.stop();
    }

    fn hub(&self) -> &Arc<EventHub> {
        &self.hub
    }

    async fn changes(&self, p: ChangeParams) -> Result<ChangePage> {
        self.read(move |conn| {
            // One read transaction: the bounds and the page agree.
            conn.execute_batch("BEGIN")?;
            let out = (|| {
                let (oldest, newest, page_end): (Option<i64>, Option<i64>, Option<i64>) = conn
                    .prepare_cached(sql::CHANGE_BOUNDS)?
                    .query_row(named_params! {":after": p.after, ":limit": p.limit}, |r| {
                        Ok((r.get("oldest")?, r.get("newest")?, r.get("page_end")?))
                    })?;
                let mut st = conn.prepare_cached(sql::CHANGE_LIST)?;
                let cols = rows::TaskColumns::of(&st)?;
                let seq_col = st.column_index("change_seq")?;
                let status_col = st.column_index("change_status")?;
                let content = rows::ContentColumns::of(&st)?;
                let mut rows = st.query(named_params! {":after": p.after, ":limit": p.limit,
                ":user_id": p.user_id, ":queue": p.queue})?;
                let (mut changes, mut bytes, mut cut) = (Vec::new(), 0usize, None);
                while let Some(r) = rows.next()? {
                    let size = content.bytes(r);
                    if !changes.is_empty() && bytes.saturating_add(size) > CHANGE_PAGE_BYTES {
                        // Stop before it: the next page starts right after the last one kept.
                        cut = changes.last().map(|c: &super::Change| c.seq);
                        break;
                    }
                    bytes = bytes.saturating_add(size);
                    let mut task = cols.task(r)?;
                    // The status it changed to, which a later change may have moved on.
                    let status: String = r.get(status_col)?;
                    if let Ok(s) = status.parse() {
                        task.status = s;
                    }
                    changes.push(super::Change {
                        seq: r.get(seq_col)?,
                        task: Arc::new(task),
                    });
                }
                let newest = newest.unwrap_or(0);
                let next = cut.or(page_end).unwrap_or(p.after).max(p.after);
                Ok(ChangePage {
                    // Changes after `after` were pruned when the oldest kept is past the next.
                    gap: p.after > 0 && oldest.is_some_and(|o| o > p.after.saturating_add(1)),
                    next,
                    newest,
                    more: next < newest,
                    changes,
                })
            })();
            let _ = conn.execute_batch("COMMIT");
            out
        })
        .await
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop();
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
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
                _ => StoreError::Backend(Box::new(e)),
            },
            _ => StoreError::Backend(Box::new(e)),
        }
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::Unavailable(format!("no database connection free: {e}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::store::ExistingUser;

    #[tokio::test]
    async fn users_are_found_by_token_name_and_id_and_a_jwt_user_is_another_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(StoreOptions::new(dir.path().join("u.db"))).unwrap();
        let bob = store
            .token_create(TokenCreate {
                name: "bob".into(),
                admin: false,
                existing: ExistingUser::Refuse,
                token_hash: "h1".into(),
                now: 1,
            })
            .await
            .unwrap();
        assert_eq!(
            store.user_by_token("h1".into()).await.unwrap(),
            Some(bob.clone())
        );
        assert_eq!(store.user_by_id(bob.id).await.unwrap(), Some(bob.clone()));
        assert_eq!(store.user_resolve("bob".into(), 2).await.unwrap(), bob);
        let jwt_bob = store
            .user_jwt("https://idp".into(), "bob".into(), 3)
            .await
            .unwrap();
        assert_ne!(jwt_bob.id, bob.id);
        assert_eq!(
            store
                .user_jwt("https://idp".into(), "bob".into(), 4)
                .await
                .unwrap(),
            jwt_bob
        );
        assert_eq!(
            store
                .token_revoke(TokenRevoke::User("bob".into()))
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.user_by_token("h1".into()).await.unwrap(), None);
        store.close();
    }

    use super::insert::{
        multi_changes_sql, multi_insert_sql, CHANGE_PARAMS, INSERT_CHUNK, TASK_INSERT_PARAMS,
    };

    #[test]
    fn task_insert_binds_its_parameters_in_the_order_the_sql_numbers_them() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("p.db")).unwrap();
        migrate::migrate(&conn).unwrap();
        let st = conn.prepare(sql::TASK_INSERT).unwrap();
        assert_eq!(st.parameter_count(), TASK_INSERT_PARAMS.len());
        for (i, name) in TASK_INSERT_PARAMS.iter().enumerate() {
            assert_eq!(st.parameter_name(i + 1), Some(*name), "parameter {}", i + 1);
        }
        let st = conn.prepare(sql::TASK_CHANGES_INSERTED).unwrap();
        assert_eq!(st.parameter_count(), CHANGE_PARAMS.len());
        for (i, name) in CHANGE_PARAMS.iter().enumerate() {
            assert_eq!(st.parameter_name(i + 1), Some(*name), "parameter {}", i + 1);
        }
    }

    #[test]
    fn queue_depths_and_the_pruner_read_indexes_not_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("p.db")).unwrap();
        migrate::migrate(&conn).unwrap();
        let plan = |q: &str| -> String {
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {q}")).unwrap();
            // Parameters left unbound are NULL, which is all a plan needs.
            let mut rows = st.raw_query();
            let mut out = Vec::new();
            while let Some(r) = rows.next().unwrap() {
                out.push(r.get::<_, String>(3).unwrap());
            }
            out.join("\n")
        };
        for (name, q) in [
            ("queue_stats", sql::QUEUE_STATS),
            ("task_prune", sql::TASK_PRUNE),
            ("failures_list", sql::FAILURES_LIST),
        ] {
            let p = plan(q);
            assert!(
                !p.lines()
                    .any(|l| l.trim() == "SCAN tasks" || l.trim() == "SCAN t"),
                "{name} scans the whole table:\n{p}"
            );
        }
        let p = plan(sql::TASK_PRUNE);
        assert!(
            p.contains("tasks_finished (status=? AND queue=? AND completed_at<?)"),
            "the pruner does not range over each queue's old tasks:\n{p}"
        );
        // A task's stream tokens are found by task (the cap, and the cascade when it is deleted).
        let p = plan(sql::STREAM_TOKEN_CAP);
        assert!(
            p.contains("stream_tokens_task (task_id=?)") && !p.contains("SCAN stream_tokens"),
            "the stream token cap scans the tokens:\n{p}"
        );
    }

    #[test]
    fn hot_statements_run_again_without_being_prepared_again() {
        // SQLite re-prepares a statement on every run when its plan depends on a bound value
        // (a bound LIMIT does, since 3.4x): that re-parse was 6% of the writer's time.
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("p.db")).unwrap();
        migrate::migrate(&conn).unwrap();
        for (name, q) in [
            ("task_insert", sql::TASK_INSERT),
            ("task_claim", sql::TASK_CLAIM),
            ("task_finish", sql::TASK_FINISH),
            ("lease_extend", sql::LEASE_EXTEND),
            ("lease_expired_cancel", sql::LEASE_EXPIRED_CANCEL),
            ("lease_expired_fail", sql::LEASE_EXPIRED_FAIL),
            ("lease_expired_rescue", sql::LEASE_EXPIRED_RESCUE),
            ("wait_expired", sql::WAIT_EXPIRED),
            ("task_inbox_unread", sql::TASK_INBOX_UNREAD),
            ("task_list", sql::TASK_LIST),
            ("task_list_user", sql::TASK_LIST_USER),
            ("message_list", sql::MESSAGE_LIST),
            ("queue_stats", sql::QUEUE_STATS),
            ("failures_list", sql::FAILURES_LIST),
            ("running_list", sql::RUNNING_LIST),
        ] {
            let mut st = conn.prepare(q).unwrap();
            for round in 1..=3i64 {
                for i in 1..=st.parameter_count() {
                    let v: rusqlite::types::Value = match st.parameter_name(i) {
                        Some(":id") => format!("task-{round}").into(),
                        Some(":status") => "completed".to_string().into(),
                        _ => round.into(),
                    };
                    st.raw_bind_parameter(i, v).unwrap();
                }
                let mut rows = st.raw_query();
                while rows.next().unwrap().is_some() {}
            }
            let n = st.get_status(rusqlite::StatementStatus::RePrepare);
            assert_eq!(n, 0, "{name} was prepared again {n} times in 3 runs");
        }
    }

    #[test]
    fn chunked_inserts_store_every_row_as_returned_in_order_around_keyed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("p.db")).unwrap();
        migrate::migrate(&conn).unwrap();
        assert_eq!(
            conn.prepare(&multi_insert_sql(INSERT_CHUNK))
                .unwrap()
                .parameter_count(),
            INSERT_CHUNK * TASK_INSERT_PARAMS.len()
        );
        assert_eq!(
            conn.prepare(&multi_changes_sql(INSERT_CHUNK))
                .unwrap()
                .parameter_count(),
            INSERT_CHUNK * CHANGE_PARAMS.len()
        );
        // 70 tasks: a keyed one at 40 and 41 (the same key: the second is the first replayed)
        // splits the unkeyed runs into a chunk of 32, singles, and a tail.
        let tasks: Vec<(NewTask, String)> = (0..70)
            .map(|i| {
                let key = (i == 40 || i == 41).then(|| "k".to_string());
                let t = NewTask {
                    id: TaskId::new(),
                    user_id: "u".into(),
                    queue: format!("q{}", i % 3),
                    kind: "spool.noop".into(),
                    payload: serde_json::json!({ "i": i }),
                    priority: (i % 5) as i32 - 2,
                    run_at: 1_000 + i,
                    max_attempts: 3,
                    timeout_ms: 60_000,
                    request_hash: key.as_ref().map(|_| "h".to_string()),
                    idempotency_key: key,
                    concurrency_key: (i % 7 == 0).then(|| format!("c{i}")),
                };
                let text = serde_json::to_string(&t.payload).unwrap();
                (t, text)
            })
            .collect();
        let ids: Vec<TaskId> = tasks.iter().map(|(t, _)| t.id).collect();
        let bytes: usize = tasks
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 41)
            .map(|(_, (_, p))| p.len())
            .sum();
        let (out, events) =
            insert_tasks(&conn, tasks, &crate::store::Limits::default(), 5).unwrap();
        assert_eq!(out.len(), 70);
        assert_eq!(events.len(), 69, "the replayed key is not a new task");
        assert!(!out[41].created);
        assert_eq!(out[41].task.id, ids[40]);
        for (i, ins) in out.iter().enumerate() {
            if i != 41 {
                assert_eq!(ins.task.id, ids[i], "row {i} out of order");
            }
            let stored = get_owned(&conn, ins.task.id, None).unwrap();
            assert_eq!(stored, *ins.task, "row {i} differs from what was stored");
        }
        let n: i64 = conn
            .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 69);
        // Each new task has one change-log row, pending at its insertion time, in insertion
        // order (the chunks and the singles around the keyed ones alike); the replay has none.
        let logged: Vec<(String, String, i64)> = conn
            .prepare("SELECT task_id, status, at FROM task_changes ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let expected: Vec<(String, String, i64)> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 41)
            .map(|(_, id)| (id.to_string(), "pending".to_string(), 5))
            .collect();
        assert_eq!(logged, expected);
        // The owner's usage grew by the 69 new tasks and their payload bytes, once each.
        let usage: (i64, i64) = conn
            .query_row(
                "SELECT unfinished, payload_bytes FROM user_usage WHERE user_id = 'u'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(usage, (69, bytes as i64));
    }
}
