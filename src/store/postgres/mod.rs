//! The PostgreSQL store: many `spool serve` and `spool work` processes on one database.
//! tokio-postgres with a deadpool pool (async, no database needed to compile), rustls for TLS.
//!
//! | module | holds |
//! |---|---|
//! | `mod.rs` | opening (the pool, migrations) and the [`Store`] methods |
//! | [`migrate`] | the schema versions, applied under an advisory lock |
//! | `rows` | rows to values, columns read by name |
//! | `sql` | every statement, from `sql/postgres/queries/` |
//! | [`url`] | `database.url`: parsing, the redacted form, TLS |
//!
//! Every write commits before its method returns (so [`Store::task_finish`] hands out a
//! [`Queued::ready`]), and its events are published on the hub after the commit. Writers do
//! not take turns: the change log behind `/v1/events` is numbered after commit, by its readers
//! (see `sql/postgres/migrations/0005_change_log_unlocked.sql`, which also gives the order in
//! which writers lock rows so that they never deadlock).

mod admission;
mod batch;
mod complete;
pub(crate) mod migrate;
mod rows;
mod schedules;
mod session;
pub(crate) mod sql;
pub mod url;

pub use migrate::LATEST_VERSION;
pub use url::PostgresUrl;

use super::{
    rules, ChangePage, ChangeParams, ClaimParams, FinishParams, HeldLease, Inserted, Limits,
    ListParams, MessageCheck, QueueStats, Queued, Result, Store, StoreError, TaskPage,
    TaskTokenCheck, TokenCreate, TokenInfo, TokenRevoke, User, WorkerInfo, ADMIN_NAME,
    CHANGE_PAGE_BYTES, LIST_PAGE_BYTES, MESSAGE_PAGE_BYTES,
};
use crate::clock::{Clock, Reading, SyncedClock, UnixMillis};
use crate::events::{Event, EventHub};
use crate::queue::{self, CancelAction};
use crate::task::{Author, Message, NewTask, Task, TaskId, TaskStatus};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;
use uuid::Uuid;

/// How to open the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Where the database is.
    pub url: PostgresUrl,
    /// Connections in the pool, at most.
    pub max_connections: usize,
    /// How long to wait for a connection (to be made, or to come free) before `Unavailable`.
    pub timeout_ms: u64,
    /// Quotas enforced in the write transactions (default: none).
    pub limits: Limits,
}

impl PostgresOptions {
    /// Defaults for a URL.
    pub fn new(url: PostgresUrl) -> Self {
        Self {
            url,
            max_connections: 16,
            timeout_ms: 5000,
            limits: Limits::default(),
        }
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PostgresStore {
    pool: Pool,
    hub: Arc<EventHub>,
    limits: Limits,
    described: String,
    closed: AtomicBool,
    /// The database, for the wake-up listener's connection.
    url: PostgresUrl,
    timeout: Duration,
    /// The wake-up listener (see [`listen`]), started by the first use of the store once
    /// something in the process waits for wake-ups.
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    listening: AtomicBool,
    /// Group commit of small enqueues (see [`batch`]).
    batcher: batch::Batcher,
    /// Group commit of outcomes (see [`complete`]).
    completer: complete::Completer,
    /// The database's clock, read at open and by [`Store::clock_sync`].
    clock: DbClock,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.described)
            .finish()
    }
}

/// The pooled connection type.
type Conn = deadpool_postgres::Object;

/// A database error as a store error: a database that cannot be reached, is shutting down, out
/// of connections or of disk, or a lock it gave up on is `Unavailable` (HTTP 503, retry);
/// anything else is `Backend`.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if stale_plan(&e) {
        return StoreError::Unavailable(
            "PostgreSQL: the schema changed under a prepared statement (0A000); \
             this connection prepares its statements again"
                .into(),
        );
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let unavailable = code.starts_with("08") // connection exception
            || code.starts_with("53") // insufficient resources (disk full, too many connections)
            || code.starts_with("57") // operator intervention (shutdown, query canceled)
            || code.starts_with("58") // system error (I/O)
            || code == "55P03" // lock not available
            || code == "40P01" // deadlock detected
            || code == "40001" // serialization failure
            || code == "25006"; // read-only transaction (a standby)
        if unavailable {
            return StoreError::Unavailable(format!("PostgreSQL: {}", describe_err(&e)));
        }
        if code == "26000" {
            pooled_away();
            return StoreError::Unavailable(format!("PostgreSQL: {}", describe_err(&e)));
        }
        return StoreError::Backend(Box::new(PgError(e)));
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    let text = e.to_string();
    if e.is_closed() || io || text.contains("connect") || text.contains("timeout") {
        return StoreError::Unavailable(format!("PostgreSQL: {text}"));
    }
    StoreError::Backend(Box::new(PgError(e)))
}

/// Set once a statement this process prepared was gone from its session (SQLSTATE 26000): a
/// pooler in transaction mode (PgBouncer's `pool_mode = transaction`) hands each transaction to
/// any server session, where this process's statements are lost and statements of another
/// process, named alike, could run in their place. From then on the process does no database
/// work (503) until it is restarted on a direct connection or a session-mode pooler.
static POOLED_AWAY: AtomicBool = AtomicBool::new(false);

const POOLED_AWAY_TEXT: &str = "PostgreSQL is reached through a connection pooler in \
    transaction mode (a statement spool prepared was gone from its session), where one spool \
    process's statements can run in another's session: this process does no more database \
    work. Use pool_mode = session or connect to PostgreSQL directly, then restart it";

/// Records that a pooler lost a statement (see [`POOLED_AWAY`]); says so once.
fn pooled_away() {
    if !POOLED_AWAY.swap(true, Ordering::AcqRel) {
        tracing::error!("{POOLED_AWAY_TEXT}");
    }
}

/// A connection of the pool: the one way every part of the store gets one. `Unavailable` once a
/// pooler lost a statement of this process (see [`POOLED_AWAY`]), or when none comes in time.
pub(super) async fn checkout(pool: &Pool) -> Result<Conn> {
    if POOLED_AWAY.load(Ordering::Acquire) {
        return Err(StoreError::Unavailable(POOLED_AWAY_TEXT.into()));
    }
    pool.get().await.map_err(pool_err)
}

/// A PostgreSQL error kept whole (its SQLSTATE is read back, see [`quota_refusal`]), shown as
/// [`describe_err`] tells it: tokio-postgres's own text of a database error is only "db error".
#[derive(Debug)]
pub(crate) struct PgError(pub(crate) tokio_postgres::Error);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe_err(&self.0))
    }
}

/// No `source`: its text already is the whole of it (a chain would print it twice).
impl std::error::Error for PgError {}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => match pg_err(e) {
            StoreError::Backend(e) => {
                StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}"))
            }
            other => other,
        },
        deadpool_postgres::PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(e)) => {
            StoreError::Unavailable(format!(
                "cannot set up a PostgreSQL connection: {}",
                describe_err(&e)
            ))
        }
        deadpool_postgres::PoolError::PostCreateHook(deadpool_postgres::HookError::Message(m)) => {
            StoreError::Unavailable(format!("cannot set up a PostgreSQL connection: {m}"))
        }
        deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Create) => {
            StoreError::Unavailable(
                "cannot connect to PostgreSQL: no host of database.url took a connection in time"
                    .into(),
            )
        }
        deadpool_postgres::PoolError::Closed => {
            StoreError::Unavailable("the store is closed".into())
        }
        e => StoreError::Unavailable(format!("no PostgreSQL connection free: {e}")),
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn uuid(id: TaskId) -> Uuid {
    id.0
}

/// Connects once, outside the pool, on the current runtime (for migrations).
pub(crate) async fn connect_direct(
    url: &PostgresUrl,
    timeout: Duration,
) -> Result<tokio_postgres::Client> {
    let configs = host_configs(url, timeout)?;
    let connected = match url.tls() {
        url::TlsMode::Disable => connect_driven(&configs, tokio_postgres::NoTls, timeout).await,
        _ => {
            let tls = url::tls_connector(url).map_err(StoreError::Unavailable)?;
            connect_driven(&configs, tls, timeout).await
        }
    };
    connected.map(|(client, _)| client).map_err(|e| {
        StoreError::Unavailable(format!("cannot connect to {url}: {}", describe_err(&e)))
    })
}

/// The URL's connection settings, one per host to try in turn, each with `timeout` as its TCP
/// connect timeout unless the URL gives one.
fn host_configs(url: &PostgresUrl, timeout: Duration) -> Result<Vec<tokio_postgres::Config>> {
    let mut configs = url.host_configs().map_err(StoreError::Unavailable)?;
    for cfg in &mut configs {
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(timeout);
        }
    }
    Ok(configs)
}

/// Connects through the first of `configs` (one per host of the URL, in order) that takes the
/// connection, giving each host `timeout` for the whole of it: TCP, TLS, the start-up and the
/// `target_session_attrs` check. tokio-postgres's own turn over hosts limits only each TCP
/// connect, so a host that accepts connections and never answers (a server process stopped
/// on a running machine) would hold every new connection, and the hosts after it would never
/// be tried.
async fn connect_first<T>(
    configs: &[tokio_postgres::Config],
    tls: T,
    timeout: Duration,
) -> std::result::Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, T::Stream>,
    ),
    tokio_postgres::Error,
>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone,
{
    let mut last = None;
    for cfg in configs {
        // A config naming several hosts (`?host=a&host=b`) is tried by tokio-postgres in turn.
        let limit = timeout.saturating_mul(url::hosts_in(cfg));
        match tokio::time::timeout(limit, cfg.connect(tls.clone())).await {
            Ok(Ok(connected)) => return Ok(connected),
            Ok(Err(e)) => last = Some(e),
            // tokio-postgres's own error for this ("timeout waiting for server").
            Err(_) => last = Some(tokio_postgres::Error::__private_api_timeout()),
        }
    }
    Err(last.unwrap_or_else(tokio_postgres::Error::__private_api_timeout))
}

/// The pool's way of making a connection: [`connect_first`] over the URL's hosts, with the
/// connection's task spawned as deadpool's own connector does.
struct HostByHost<T> {
    configs: Vec<tokio_postgres::Config>,
    tls: T,
    timeout: Duration,
}

impl<T> deadpool_postgres::Connect for HostByHost<T>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    fn connect(
        &self,
        _: &tokio_postgres::Config,
    ) -> futures::future::BoxFuture<
        '_,
        std::result::Result<
            (tokio_postgres::Client, tokio::task::JoinHandle<()>),
            tokio_postgres::Error,
        >,
    > {
        Box::pin(connect_driven(
            &self.configs,
            self.tls.clone(),
            self.timeout,
        ))
    }
}

/// [`connect_first`], with the connection driven by a task of its own (which ends with it).
async fn connect_driven<T>(
    configs: &[tokio_postgres::Config],
    tls: T,
    timeout: Duration,
) -> std::result::Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone,
    T::Stream: Send + 'static,
{
    let (client, conn) = connect_first(configs, tls, timeout).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %describe_err(&e), "a PostgreSQL connection ended");
        }
    });
    Ok((client, task))
}

/// The pool's limit for making one connection: `timeout` for each host the URL names (tried
/// in turn, see [`connect_first`]), and once more.
fn connect_limit(url: &PostgresUrl, timeout: Duration) -> Duration {
    timeout.saturating_mul(url.hosts().saturating_add(1))
}

/// Readings of the database's clock taken at once, of which [`SyncedClock::adjust`] keeps the
/// one with the shortest round trip.
const CLOCK_READINGS: usize = 3;

/// How far this host's wall clock may be from the database's before it is logged as a warning
/// (the queue is right either way: it keeps the database's time).
const CLOCK_WARN_MS: u64 = 1000;

/// The database's clock as this process reads it, and the difference from this host's clock
/// that was last logged.
struct DbClock {
    clock: Arc<SyncedClock>,
    logged: AtomicI64,
}

impl DbClock {
    fn new() -> Self {
        Self {
            clock: Arc::new(SyncedClock::new()),
            logged: AtomicI64::new(0),
        }
    }

    /// Reads the database's clock; returns how far it is ahead of this host's wall clock, in
    /// milliseconds, and sets `spool_clock_offset_seconds` to it. Logs the difference when it
    /// is news ([`clock_news`]).
    async fn read(&self, c: &tokio_postgres::Client) -> Result<i64> {
        let st = c.prepare(sql::CLOCK_READ).await.map_err(pg_err)?;
        let mut readings = Vec::with_capacity(CLOCK_READINGS);
        for _ in 0..CLOCK_READINGS {
            let sent = SyncedClock::local();
            let row = c.query_one(&st, &[]).await.map_err(pg_err)?;
            let received = SyncedClock::local();
            let theirs: i64 = row.try_get(0).map_err(pg_err)?;
            readings.push(Reading {
                theirs,
                sent,
                received,
            });
        }
        let ahead = self.clock.adjust(&readings).unwrap_or(0);
        metrics::gauge!("spool_clock_offset_seconds").set(ahead as f64 / 1000.0);
        if clock_news(self.logged.load(Ordering::Relaxed), ahead) {
            self.logged.store(ahead, Ordering::Relaxed);
            if ahead.unsigned_abs() > CLOCK_WARN_MS {
                tracing::warn!(
                    database_ahead_ms = ahead,
                    "this host's clock is {:.1} s {} the database's: spool keeps the database's \
                     time (leases, run_at, every *_at), but set this host's clock right (NTP)",
                    ahead.unsigned_abs() as f64 / 1000.0,
                    if ahead > 0 { "behind" } else { "ahead of" }
                );
            } else {
                tracing::info!(
                    database_ahead_ms = ahead,
                    "this host's clock is back within a second of the database's"
                );
            }
        }
        Ok(ahead)
    }
}

/// Whether a difference of `ahead` ms between the database's clock and this host's is worth a
/// line in the log after `logged` was the last logged (0 before any): when it moved by more
/// than [`CLOCK_WARN_MS`] since, so a host found off is told once, again after a step of either
/// clock, and once more when it is back; not at every reading.
fn clock_news(logged: i64, ahead: i64) -> bool {
    ahead.saturating_sub(logged).unsigned_abs() > CLOCK_WARN_MS
}

/// An error's text with its database message, if it has one.
pub(crate) fn describe_err(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let text = format!("{} ({code})", db.message());
            // What a PgBouncer between spool and PostgreSQL answers: say what to change.
            if code == "26000" {
                format!(
                    "{text}: a connection pooler in transaction mode, such as PgBouncer's \
                     pool_mode = transaction, loses the statements spool prepares; use \
                     pool_mode = session or connect to PostgreSQL directly"
                )
            } else if db
                .message()
                .contains("unsupported startup parameter: options")
            {
                format!(
                    "{text}: a connection pooler such as PgBouncer refuses the options \
                     parameter of database.url; take it out of the URL and set those \
                     settings on spool's role (ALTER ROLE ... SET) instead"
                )
            } else {
                text
            }
        }
        None => {
            let text = match std::error::Error::source(e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            };
            // rustls names the check that failed, not what to do about it.
            if text.contains("UnknownIssuer") {
                format!(
                    "{text} (no CA this host trusts signed the server's certificate: name \
                     its CA with sslrootcert=/path/ca.pem in the URL)"
                )
            } else {
                text
            }
        }
    }
}

impl PostgresStore {
    /// Connects, applies pending migrations and makes the pool.
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be reached; `SchemaTooNew` when it was made by
    /// a newer spool (it is not touched); `Migration` when a step failed.
    pub async fn open(opts: PostgresOptions) -> Result<Self> {
        Self::open_with_hub(opts, Arc::new(EventHub::new())).await
    }

    /// As [`PostgresStore::open`], publishing on the given hub.
    ///
    /// # Errors
    /// As [`PostgresStore::open`].
    pub async fn open_with_hub(opts: PostgresOptions, hub: Arc<EventHub>) -> Result<Self> {
        let timeout = Duration::from_millis(opts.timeout_ms.max(1));
        let mut c = connect_direct(&opts.url, timeout).await?;
        migrate::migrate(&mut c).await?;
        let clock = DbClock::new();
        clock.read(&c).await?;
        drop(c);
        Self::with_pool(opts, hub, clock)
    }

    /// [`PostgresStore::open`] from synchronous code (inside a runtime or not): the migrations
    /// run on a thread of their own; the pool connects on first use, on the caller's runtime.
    ///
    /// # Errors
    /// As [`PostgresStore::open`].
    pub fn open_blocking(opts: PostgresOptions) -> Result<Self> {
        let url = opts.url.clone();
        let timeout = Duration::from_millis(opts.timeout_ms.max(1));
        let clock = DbClock::new();
        let migrated = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError::Unavailable(format!("cannot start a runtime: {e}")))?;
                rt.block_on(async {
                    let mut c = connect_direct(&url, timeout).await?;
                    migrate::migrate(&mut c).await?;
                    clock.read(&c).await.map(|_| ())
                })
            })
            .join()
            .unwrap_or_else(|_| Err(StoreError::Unavailable("migration thread failed".into())))
        });
        migrated?;
        Self::with_pool(opts, Arc::new(EventHub::new()), clock)
    }

    fn with_pool(opts: PostgresOptions, hub: Arc<EventHub>, clock: DbClock) -> Result<Self> {
        let timeout = Duration::from_millis(opts.timeout_ms.max(1));
        // Only for deadpool's manager, which hands it to its connector: HostByHost connects
        // through `configs` instead.
        let cfg = opts.url.config().map_err(StoreError::Unavailable)?;
        let mut configs = host_configs(&opts.url, timeout)?;
        for c in &mut configs {
            session::harden(c, timeout);
        }
        let mgr_cfg = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match opts.url.tls() {
            url::TlsMode::Disable => Manager::from_connect(
                cfg,
                HostByHost {
                    configs,
                    tls: tokio_postgres::NoTls,
                    timeout,
                },
                mgr_cfg,
            ),
            _ => Manager::from_connect(
                cfg,
                HostByHost {
                    configs,
                    tls: url::tls_connector(&opts.url).map_err(StoreError::Unavailable)?,
                    timeout,
                },
                mgr_cfg,
            ),
        };
        let pool = Pool::builder(mgr)
            .max_size(opts.max_connections.max(1))
            // The connection used last is handed out first: the enqueue batcher, one commit
            // after another, keeps one warm backend (its plans, plpgsql and caches) instead of
            // going round every idle connection (README, PostgreSQL figures: about 1.2× the
            // single enqueues of the default FIFO).
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            // Each host of the URL in turn, and the start-up exchange (see connect_limit).
            .create_timeout(Some(connect_limit(&opts.url, timeout)))
            .recycle_timeout(Some(timeout))
            // Not covered by the create timeout: given a limit of its own.
            .post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
                let set = session::set_timeout(timeout);
                Box::pin(async move {
                    match tokio::time::timeout(timeout, client.batch_execute(&set)).await {
                        Ok(done) => done.map_err(deadpool_postgres::HookError::Backend),
                        Err(_) => Err(deadpool_postgres::HookError::message(format!(
                            "no answer to the connection's first statement within {} ms",
                            timeout.as_millis()
                        ))),
                    }
                })
            }))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot make the pool: {e}")))?;
        Ok(Self {
            pool,
            hub,
            limits: opts.limits,
            described: opts.url.redacted().to_string(),
            closed: AtomicBool::new(false),
            url: opts.url,
            timeout,
            listener: std::sync::Mutex::new(None),
            listening: AtomicBool::new(false),
            batcher: batch::Batcher::new(),
            completer: complete::Completer::new(),
            clock,
        })
    }

    async fn conn(&self) -> Result<Conn> {
        self.open_for_use()?;
        checkout(&self.pool).await
    }

    /// `Unavailable` once closed; starts the wake-up listener on the first use after something
    /// in this process came to wait for wake-ups ([`EventHub::wakeups_wanted`]).
    fn open_for_use(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        if self.hub.wakeups_wanted() && !self.listening.swap(true, Ordering::AcqRel) {
            let task = tokio::spawn(listen(self.url.clone(), self.timeout, self.hub.clone()));
            if let Ok(mut l) = self.listener.lock() {
                *l = Some(task);
            }
        }
        Ok(())
    }

    fn stop_listener(&self) {
        if let Ok(mut l) = self.listener.lock() {
            if let Some(t) = l.take() {
                t.abort();
            }
        }
    }

    fn publish(&self, events: Vec<Event>) {
        for e in events {
            self.hub.publish(e);
        }
    }
}

/// True when PostgreSQL refused a prepared statement because its result columns changed since
/// it was prepared: another host's newer spool added a column to a table it reads whole.
fn stale_plan(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.code() == &tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED
            && d.message()
                .contains("cached plan must not change result type")
    })
}

/// A pooled client, or a transaction of one, with the statements it has prepared.
pub(super) trait Cached: GenericClient {
    fn statements(&self) -> &deadpool_postgres::StatementCache;
}

impl Cached for Conn {
    fn statements(&self) -> &deadpool_postgres::StatementCache {
        &self.statement_cache
    }
}

impl Cached for deadpool_postgres::Transaction<'_> {
    fn statements(&self) -> &deadpool_postgres::StatementCache {
        &self.statement_cache
    }
}

/// `e` as a store error; a statement made stale by a change of the schema
/// ([`stale_plan`]) also empties `c`'s cache, so the next use of the connection prepares every
/// statement again and works (this one answers `Unavailable`: retry).
fn forget_stale<C: Cached>(c: &C, e: tokio_postgres::Error) -> StoreError {
    if stale_plan(&e) {
        c.statements().clear();
        tracing::warn!(
            "the schema changed under this connection's prepared statements; preparing them again"
        );
    }
    pg_err(e)
}

/// Runs one prepared (and cached) statement, returning its rows.
async fn query<C: Cached>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>> {
    let st = c
        .prepare_cached(sql)
        .await
        .map_err(|e| forget_stale(c, e))?;
    c.query(&st, params).await.map_err(|e| forget_stale(c, e))
}

async fn query_opt<C: Cached>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<tokio_postgres::Row>> {
    let st = c
        .prepare_cached(sql)
        .await
        .map_err(|e| forget_stale(c, e))?;
    c.query_opt(&st, params)
        .await
        .map_err(|e| forget_stale(c, e))
}

async fn execute<C: Cached>(c: &C, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
    let st = c
        .prepare_cached(sql)
        .await
        .map_err(|e| forget_stale(c, e))?;
    c.execute(&st, params).await.map_err(|e| forget_stale(c, e))
}

/// The columns of `task_insert.sql`, one array each.
struct InsertRows<'a> {
    ids: Vec<Uuid>,
    users: Vec<&'a str>,
    queues: Vec<&'a str>,
    kinds: Vec<&'a str>,
    payloads: Vec<&'a str>,
    priorities: Vec<i32>,
    run_ats: Vec<i64>,
    max_attempts: Vec<i64>,
    timeouts: Vec<i64>,
    keys: Vec<Option<&'a str>>,
    hashes: Vec<Option<&'a str>>,
    nows: Vec<i64>,
    ckeys: Vec<Option<&'a str>>,
}

impl<'a> InsertRows<'a> {
    fn new(rows: &'a [(NewTask, String, UnixMillis)]) -> Self {
        let n = rows.len();
        let mut r = InsertRows {
            ids: Vec::with_capacity(n),
            users: Vec::with_capacity(n),
            queues: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            priorities: Vec::with_capacity(n),
            run_ats: Vec::with_capacity(n),
            max_attempts: Vec::with_capacity(n),
            timeouts: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
            nows: Vec::with_capacity(n),
            ckeys: Vec::with_capacity(n),
        };
        for (t, payload, now) in rows {
            r.ids.push(t.id.0);
            r.users.push(t.user_id.as_str());
            r.queues.push(t.queue.as_str());
            r.kinds.push(t.kind.as_str());
            r.payloads.push(payload.as_str());
            r.priorities.push(t.priority);
            r.run_ats.push(t.run_at);
            r.max_attempts.push(i64::from(t.max_attempts));
            r.timeouts
                .push(i64::try_from(t.timeout_ms).unwrap_or(i64::MAX));
            r.keys.push(t.idempotency_key.as_deref());
            r.hashes.push(t.request_hash.as_deref());
            r.nows.push(*now);
            r.ckeys.push(t.concurrency_key.as_deref());
        }
        r
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 13] {
        [
            &self.ids,
            &self.users,
            &self.queues,
            &self.kinds,
            &self.payloads,
            &self.priorities,
            &self.run_ats,
            &self.max_attempts,
            &self.timeouts,
            &self.keys,
            &self.hashes,
            &self.nows,
            &self.ckeys,
        ]
    }
}

/// Enqueues `tasks` in one transaction sent as one pipeline (see [`pipeline`]): the INSERT and
/// the quota check of their users (when quotas are on), then, after the COMMIT in the same
/// round trip, the NOTIFY of their queues (see [`notify_work`]). Only for
/// tasks without an idempotency key (a key may find its twin: those take [`insert_tasks_at`] in
/// a transaction of their own); `Err` with the tasks, untouched, for others.
async fn insert_pipelined(
    c: &Conn,
    tasks: Vec<(NewTask, String, UnixMillis)>,
    limits: &Limits,
) -> Result<std::result::Result<Vec<Inserted>, Vec<(NewTask, String, UnixMillis)>>> {
    if tasks.iter().any(|(t, _, _)| t.idempotency_key.is_some()) {
        return Ok(Err(tasks));
    }
    let queues: Vec<String> = tasks
        .iter()
        .map(|(t, _, _)| t.queue.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    {
        let rows = InsertRows::new(&tasks);
        let insert = rows.params();
        let notify: [&(dyn ToSql + Sync); 1] = [&queues];
        let (max_unfinished, max_bytes) = quota_caps(limits);
        let check: [&(dyn ToSql + Sync); 3] = [&rows.users, &max_unfinished, &max_bytes];
        let mut statements: Vec<(&str, &[&(dyn ToSql + Sync)])> = vec![(sql::TASK_INSERT, &insert)];
        // Checked after the insert (see `write_rows`), in the same pipeline: over a quota, the
        // check raises and the COMMIT behind it rolls everything back.
        if rules::quotas_on(limits) {
            statements.push((sql::USAGE_CHECK, &check));
        }
        pipeline(c, &statements, (sql::WORK_NOTIFY, &notify))
            .await
            .map_err(|e| quota_refusal(e, limits))?;
    }
    Ok(Ok(tasks
        .into_iter()
        .map(|(t, _, now)| Inserted {
            task: Arc::new(rules::inserted_task(t, now)),
            created: true,
        })
        .collect()))
}

/// A refusal of `spool_check_usage` (SQLSTATE SPQ01 or SPQ02) as the quota it names; any other
/// error as it is.
fn quota_refusal(e: StoreError, limits: &Limits) -> StoreError {
    let code = match &e {
        StoreError::Backend(b) => b
            .downcast_ref::<PgError>()
            .and_then(|p| p.0.code())
            .map(|c| c.code().to_string()),
        _ => None,
    };
    match code.as_deref() {
        Some("SPQ01") => StoreError::LimitReached {
            what: "pending tasks per user",
            limit: limits.pending_tasks_per_user,
        },
        Some("SPQ02") => StoreError::LimitReached {
            what: "payload bytes per user",
            limit: limits.payload_bytes_per_user,
        },
        _ => e,
    }
}

/// Enqueues `tasks` (each with its request's time) in one committed transaction: one pipeline
/// when [`insert_pipelined`] can take them (no idempotency keys), else the general path (keys
/// and quotas checked in order); the NOTIFY of the queues it created tasks in goes with it.
async fn insert_committed(
    c: &mut Conn,
    tasks: Vec<(NewTask, String, UnixMillis)>,
    limits: &Limits,
) -> Result<Vec<Inserted>> {
    let tasks = match insert_pipelined(c, tasks, limits).await? {
        Ok(out) => return Ok(out),
        Err(tasks) => tasks,
    };
    let tx = c.transaction().await.map_err(pg_err)?;
    let out = insert_tasks_at(&tx, tasks, limits).await?;
    let queues: std::collections::BTreeSet<String> = out
        .iter()
        .filter(|i| i.created)
        .map(|i| i.task.queue.clone())
        .collect();
    tx.commit().await.map_err(pg_err)?;
    notify_work(&*c, queues.into_iter().collect()).await;
    Ok(out)
}

/// A transaction sent as one pipeline: `BEGIN`, `statements` in order, `COMMIT`, then the
/// statement `after` on its own (outside the transaction: for [`notify_work`]'s NOTIFY), written
/// to the server back to back without waiting for the answers in between (one round trip
/// instead of one per statement). So each statement must not depend on the rows of an earlier
/// one.
///
/// Returns each statement's rows. On any error, a statement's or the commit's, nothing is
/// committed: a failed statement aborts the transaction, and the server answers the `COMMIT` of
/// an aborted transaction by rolling it back. `after` runs either way (a wake-up with nothing
/// new to take, after a refusal), and its failure is only logged: the transaction's outcome is
/// the answer.
async fn pipeline(
    c: &Conn,
    statements: &[(&str, &[&(dyn ToSql + Sync)])],
    after: (&str, &[&(dyn ToSql + Sync)]),
) -> Result<Vec<Vec<tokio_postgres::Row>>> {
    let mut prepared = Vec::with_capacity(statements.len());
    for (text, _) in statements {
        prepared.push(
            c.prepare_cached(text)
                .await
                .map_err(|e| forget_stale(c, e))?,
        );
    }
    let after_st = c
        .prepare_cached(after.0)
        .await
        .map_err(|e| forget_stale(c, e))?;
    let client: &tokio_postgres::Client = c;
    // tokio-postgres writes a request when its future is first polled, and join! polls in
    // order: the server receives them in this order, without waiting for this process.
    let (begin, rows, commit, then) = tokio::join!(
        client.batch_execute(sql::BEGIN),
        futures::future::join_all(
            prepared
                .iter()
                .zip(statements)
                .map(|(st, (_, params))| client.query(st, params))
        ),
        client.batch_execute(sql::COMMIT),
        client.query(&after_st, after.1),
    );
    if let Err(e) = then {
        notify_lost(&pg_err(e));
    }
    begin.map_err(pg_err)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(r.map_err(|e| forget_stale(c, e))?);
    }
    commit.map_err(pg_err)?;
    Ok(out)
}

/// A task, locked until the transaction ends, and how many messages it holds; with `user`,
/// only that user's.
async fn get_owned_locked<C: Cached>(c: &C, id: TaskId, user: Option<&str>) -> Result<(Task, i64)> {
    let row = query_opt(c, sql::TASK_GET_FOR_UPDATE, &[&uuid(id)]).await?;
    match row {
        Some(r) => {
            let t = rows::task(&r)?;
            if user.is_some_and(|u| u != t.user_id) {
                return Err(StoreError::NotFound(id));
            }
            // Messages are never deleted apart from their task: the count is the last position
            // less the positions a task copied from SQLite skipped (schema version 2).
            let seq: i64 = r.try_get("message_seq").map_err(pg_err)?;
            let skipped: i64 = r.try_get("message_seq_skipped").map_err(pg_err)?;
            Ok((t, seq.saturating_sub(skipped)))
        }
        None => Err(StoreError::NotFound(id)),
    }
}

async fn get_owned<C: Cached>(c: &C, id: TaskId, user: Option<&str>) -> Result<Task> {
    match query_opt(c, sql::TASK_GET, &[&uuid(id)]).await? {
        Some(r) => {
            let t = rows::task(&r)?;
            if user.is_some_and(|u| u != t.user_id) {
                return Err(StoreError::NotFound(id));
            }
            Ok(t)
        }
        None => Err(StoreError::NotFound(id)),
    }
}

async fn messages_after<C: Cached>(
    c: &C,
    task_id: TaskId,
    after: i64,
    limit: u32,
    author: Option<Author>,
) -> Result<Vec<Message>> {
    let author = author.map(Author::as_str);
    let rows = query(
        c,
        sql::MESSAGE_LIST,
        &[
            &uuid(task_id),
            &after,
            &i64::from(limit),
            &author,
            &(MESSAGE_PAGE_BYTES as i64),
        ],
    )
    .await?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for r in &rows {
        let (m, size) = rows::message(task_id, r)?;
        if !out.is_empty() && bytes.saturating_add(size) > MESSAGE_PAGE_BYTES {
            break;
        }
        bytes = bytes.saturating_add(size);
        out.push(m);
    }
    Ok(out)
}

/// The quotas of `users` after this transaction's writes: `spool_check_usage` locks their usage
/// rows (to commit) and reads them, which already count what the transaction wrote (it sees its
/// own changes); the same check the pipelined enqueue sends. Every write that adds to a user's
/// usage checks this way, after writing: refused, the caller rolls it all back.
async fn check_written_quotas<C: Cached>(c: &C, users: &[&str], limits: &Limits) -> Result<()> {
    let (max_unfinished, max_bytes) = quota_caps(limits);
    query(c, sql::USAGE_CHECK, &[&users, &max_unfinished, &max_bytes])
        .await
        .map(|_| ())
        .map_err(|e| quota_refusal(e, limits))
}

/// The quotas as `spool_check_usage` takes them (no quota: the largest value).
fn quota_caps(limits: &Limits) -> (i64, i64) {
    let cap = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    (
        cap(limits.pending_tasks_per_user),
        cap(limits.payload_bytes_per_user),
    )
}

/// Writes the waiting (unkeyed) rows in one statement and moves them, as the tasks they now
/// are, to `out`.
async fn write_rows<C: Cached>(
    c: &C,
    waiting: &mut Vec<(NewTask, String, UnixMillis)>,
    out: &mut Vec<Inserted>,
) -> Result<()> {
    if waiting.is_empty() {
        return Ok(());
    }
    let rows = InsertRows::new(waiting);
    execute(c, sql::TASK_INSERT, &rows.params()).await?;
    for (t, _, now) in waiting.drain(..) {
        out.push(Inserted {
            task: Arc::new(rules::inserted_task(t, now)),
            created: true,
        });
    }
    Ok(())
}

/// The task `user` made under an idempotency key, and its request hash.
async fn task_by_key<C: Cached>(
    c: &C,
    user: &str,
    key: &str,
) -> Result<Option<(Task, Option<String>)>> {
    match query_opt(c, sql::TASK_GET_BY_KEY, &[&user, &key]).await? {
        Some(r) => {
            let hash: Option<String> = r.try_get("request_hash").map_err(pg_err)?;
            Ok(Some((rows::task(&r)?, hash)))
        }
        None => Ok(None),
    }
}

/// Enqueues `tasks` in the open transaction `c` (see [`Store::task_insert`]), each with its own
/// `now` (a group commit writes several requests).
async fn insert_tasks_at<C: Cached>(
    c: &C,
    tasks: Vec<(NewTask, String, UnixMillis)>,
    limits: &Limits,
) -> Result<Vec<Inserted>> {
    let mut out = Vec::with_capacity(tasks.len());
    // Unkeyed tasks wait and are written together; a keyed task first writes what waits, so
    // rows keep their order and a repeated key sees its twin.
    let mut waiting: Vec<(NewTask, String, UnixMillis)> = Vec::new();
    for (index, (t, payload, now)) in tasks.into_iter().enumerate() {
        let Some(key) = t.idempotency_key.clone() else {
            waiting.push((t, payload, now));
            continue;
        };
        write_rows(c, &mut waiting, &mut out).await?;
        let mut existing = task_by_key(c, &t.user_id, &key).await?;
        if existing.is_none() {
            let inserted = query_opt(
                c,
                sql::TASK_INSERT_KEYED,
                &[
                    &t.id.0,
                    &t.user_id,
                    &t.queue,
                    &t.kind,
                    &payload,
                    &t.priority,
                    &t.run_at,
                    &i64::from(t.max_attempts),
                    &i64::try_from(t.timeout_ms).unwrap_or(i64::MAX),
                    &t.idempotency_key,
                    &t.request_hash,
                    &now,
                    &t.concurrency_key,
                ],
            )
            .await?;
            if inserted.is_some() {
                out.push(Inserted {
                    task: Arc::new(rules::inserted_task(t, now)),
                    created: true,
                });
                continue;
            }
            // Another writer took the key between the look-up and the insert.
            existing = task_by_key(c, &t.user_id, &key).await?;
        }
        let Some((task, hash)) = existing else {
            return Err(StoreError::Backend(
                format!("idempotency key {key:?} conflicts but names no task").into(),
            ));
        };
        if hash != t.request_hash {
            return Err(StoreError::IdempotencyMismatch { index, key });
        }
        out.push(Inserted {
            task: Arc::new(task),
            created: false,
        });
    }
    write_rows(c, &mut waiting, &mut out).await?;
    // The quotas are checked once, after every row is written: `spool_check_usage` locks the
    // users' usage rows (to commit) in user order, so two transactions that enqueue for the
    // same users never hold one user's row while waiting for another's (a check per request,
    // in request order, could: a deadlock), and none holds a user's row while it waits for
    // another writer's idempotency key. Usage only grows here, so the sums passing means each
    // request's own check would have passed in turn; refused, the caller rolls it all back.
    if rules::quotas_on(limits) {
        let users: Vec<&str> = out
            .iter()
            .filter(|i| i.created)
            .map(|i| i.task.user_id.as_str())
            .collect();
        if !users.is_empty() {
            check_written_quotas(c, &users, limits).await?;
        }
    }
    Ok(out)
}

/// Ends or frees the tasks whose lease expired ([`queue::rescue`]), guarded by their state and
/// attempt; returns them as they are now.
async fn rescue<C: Cached>(c: &C, now: UnixMillis) -> Result<Vec<Task>> {
    let limit = i64::from(crate::store::EXPIRED_LEASES_PER_CLAIM);
    let expired = query(c, sql::LEASE_EXPIRED, &[&now, &limit]).await?;
    if expired.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_status: BTreeMap<&'static str, (Vec<Uuid>, Vec<i64>)> = BTreeMap::new();
    for r in &expired {
        let id: Uuid = r.try_get("id").map_err(pg_err)?;
        let attempts: i64 = r.try_get("attempts").map_err(pg_err)?;
        let max_attempts: i64 = r.try_get("max_attempts").map_err(pg_err)?;
        let cancel: bool = r.try_get("cancel_requested").map_err(pg_err)?;
        let status = queue::rescue(cancel, attempts.max(0) as u32, max_attempts.max(0) as u32);
        let e = by_status.entry(status.as_str()).or_default();
        e.0.push(id);
        e.1.push(attempts);
    }
    let mut out = Vec::new();
    for (status, (ids, attempts)) in by_status {
        let rows = query(
            c,
            sql::LEASE_RESCUE,
            &[&status, &queue::LOST_LEASE_ERROR, &now, &ids, &attempts],
        )
        .await?;
        for t in rows::tasks(&rows)? {
            tracing::warn!(task.id = %t.id, task.kind = %t.kind, task.queue = %t.queue,
                status = %t.status, "rescued task from a dead worker (lease expired)");
            out.push(t);
        }
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    // ---- tasks ------------------------------------------------------------------------------

    async fn task_insert(&self, tasks: Vec<NewTask>, now: UnixMillis) -> Result<Vec<Inserted>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        if tasks.len() <= batch::SMALL {
            self.open_for_use()?;
            return self
                .batcher
                .insert(&self.pool, &self.hub, &self.limits, tasks, now)
                .await;
        }
        let prepared = tasks
            .into_iter()
            .map(|mut t| rows::jsonb_text(&mut t.payload).map(|p| (t, p)))
            .collect::<Result<Vec<_>>>()?;
        let mut c = self.conn().await?;
        let prepared = prepared.into_iter().map(|(t, p)| (t, p, now)).collect();
        let out = insert_committed(&mut c, prepared, &self.limits).await?;
        self.publish(
            out.iter()
                .filter(|i| i.created)
                .map(|i| Event::Task(i.task.clone()))
                .collect(),
        );
        Ok(out)
    }

    async fn task_get(&self, id: TaskId, user: Option<String>) -> Result<Task> {
        let c = self.conn().await?;
        get_owned(&c, id, user.as_deref()).await
    }

    async fn task_list(&self, p: ListParams) -> Result<TaskPage> {
        let c = self.conn().await?;
        let query_text = if p.user_id.is_some() {
            sql::TASK_LIST_USER
        } else {
            sql::TASK_LIST
        };
        let status = p.status.map(|s| s.as_str());
        let cursor = p.cursor.map(uuid);
        let rows = query(
            &c,
            query_text,
            &[
                &p.user_id,
                &status,
                &p.queue,
                &p.kind,
                &cursor,
                &i64::from(p.limit),
                &(LIST_PAGE_BYTES as i64),
            ],
        )
        .await?;
        let (mut page, mut bytes) = (TaskPage::default(), 0usize);
        for r in &rows {
            let size: Option<i64> = r.try_get("content_bytes").map_err(pg_err)?;
            let size = usize::try_from(size.unwrap_or(0)).unwrap_or(0);
            if !page.tasks.is_empty() && bytes.saturating_add(size) > LIST_PAGE_BYTES {
                page.cut = true;
                break;
            }
            bytes = bytes.saturating_add(size);
            page.tasks.push(rows::task(r)?);
        }
        Ok(page)
    }

    async fn task_with_messages(
        &self,
        id: TaskId,
        user: Option<String>,
        after: i64,
        limit: u32,
        author: Option<Author>,
    ) -> Result<(Task, Vec<Message>)> {
        let mut c = self.conn().await?;
        // One snapshot: the task and the messages agree.
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err)?;
        let t = get_owned(&tx, id, user.as_deref()).await?;
        let m = messages_after(&tx, id, after, limit, author).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok((t, m))
    }

    async fn task_cancel(&self, id: TaskId, user: Option<String>, now: UnixMillis) -> Result<Task> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let (task, _) = get_owned_locked(&tx, id, user.as_deref()).await?;
        let q = match queue::cancel(id, task.status).map_err(StoreError::Conflict)? {
            CancelAction::EndNow => sql::TASK_CANCEL_PENDING,
            CancelAction::AskWorker => sql::TASK_CANCEL_RUNNING,
        };
        let row = query_opt(&tx, q, &[&uuid(id), &now])
            .await?
            .ok_or(StoreError::NotFound(id))?;
        let t = rows::task(&row)?;
        tx.commit().await.map_err(pg_err)?;
        self.publish(vec![Event::Task(Arc::new(t.clone()))]);
        Ok(t)
    }

    async fn task_retry(
        &self,
        id: TaskId,
        user: Option<String>,
        reset_checkpoint: bool,
        now: UnixMillis,
    ) -> Result<Task> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let (task, _) = get_owned_locked(&tx, id, user.as_deref()).await?;
        queue::retry(id, task.status).map_err(StoreError::Conflict)?;
        let row = query_opt(&tx, sql::TASK_RETRY, &[&uuid(id), &now, &reset_checkpoint])
            .await?
            .ok_or(StoreError::NotFound(id))?;
        // A retried task is unfinished again: it counts against its owner's quota.
        if self.limits.pending_tasks_per_user != u64::MAX {
            check_written_quotas(&tx, &[task.user_id.as_str()], &self.limits).await?;
        }
        let t = rows::task(&row)?;
        tx.commit().await.map_err(pg_err)?;
        notify_work(&c, vec![t.queue.clone()]).await;
        self.publish(vec![Event::Task(Arc::new(t.clone()))]);
        Ok(t)
    }

    async fn task_prune(
        &self,
        status: TaskStatus,
        before: UnixMillis,
        limit: u32,
    ) -> Result<usize> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let n = execute(
            &tx,
            sql::TASK_PRUNE,
            &[&status.as_str(), &before, &i64::from(limit)],
        )
        .await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(n as usize)
    }

    // ---- leases -----------------------------------------------------------------------------

    async fn task_claim(&self, p: ClaimParams) -> Result<Vec<Arc<Task>>> {
        let limited = p
            .queues
            .iter()
            .any(|q| q.admission.as_ref().is_some_and(|a| a.is_limited()));
        if !p.rescue && !limited {
            // The usual claim: one statement, its own transaction.
            if p.total == 0 || p.queues.is_empty() {
                return Ok(Vec::new());
            }
            let names: Vec<&str> = p.queues.iter().map(|q| q.queue.as_str()).collect();
            let limits: Vec<i64> = p.queues.iter().map(|q| i64::from(q.limit)).collect();
            let c = self.conn().await?;
            let lease = i64::try_from(p.lease_ms).unwrap_or(i64::MAX);
            let total = i64::from(p.total);
            let params: [&(dyn ToSql + Sync); 6] =
                [&p.owner, &p.now, &lease, &names, &limits, &total];
            let rows = query(&c, sql::TASK_CLAIM, &params).await?;
            let mut claimed: Vec<Arc<Task>> =
                rows::tasks(&rows)?.into_iter().map(Arc::new).collect();
            rules::sort_claimed(&mut claimed);
            self.publish(claimed.iter().map(|t| Event::Task(t.clone())).collect());
            return Ok(claimed);
        }
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        // Limited queues' claims take turns, each queue's under its own lock, taken first and
        // in name order (so two claims never wait for each other in a circle).
        let mut limited: Vec<&str> = p
            .queues
            .iter()
            .filter(|q| q.admission.as_ref().is_some_and(|a| a.is_limited()))
            .map(|q| q.queue.as_str())
            .collect();
        limited.sort_unstable();
        limited.dedup();
        for q in limited {
            query(&tx, sql::ADMISSION_LOCK, &[&q]).await?;
        }
        let mut events = Vec::new();
        let mut woken = std::collections::BTreeSet::new();
        if p.rescue {
            for t in rescue(&tx, p.now).await? {
                if t.status == TaskStatus::Pending {
                    woken.insert(t.queue.clone());
                }
                events.push(Event::Task(Arc::new(t)));
            }
            // Waits that timed out are runnable again, and claimed below like any other.
            let limit = i64::from(crate::store::EXPIRED_WAITS_PER_CLAIM);
            for r in query(&tx, sql::WAIT_EXPIRED, &[&p.now, &limit]).await? {
                let t = rows::task(&r)?;
                tracing::info!(task.id = %t.id, task.queue = %t.queue, "wait timed out");
                woken.insert(t.queue.clone());
                events.push(Event::Task(Arc::new(t)));
            }
        }
        let mut claimed = Vec::new();
        // Limited queues first (their locks are held); the rest in one statement.
        let mut remaining = p.total;
        for q in &p.queues {
            if let Some(adm) = q.admission.as_ref().filter(|a| a.is_limited()) {
                let limit = q.limit.min(remaining);
                for t in admission::claim_admitted(&tx, &p, &q.queue, limit, adm).await? {
                    claimed.push(t);
                    remaining = remaining.saturating_sub(1);
                }
            }
        }
        let free: Vec<&crate::store::QueueClaim> = p
            .queues
            .iter()
            .filter(|q| !q.admission.as_ref().is_some_and(|a| a.is_limited()))
            .collect();
        let names: Vec<&str> = free.iter().map(|q| q.queue.as_str()).collect();
        let limits: Vec<i64> = free.iter().map(|q| i64::from(q.limit)).collect();
        if remaining > 0 && !names.is_empty() {
            let rows = query(
                &tx,
                sql::TASK_CLAIM,
                &[
                    &p.owner,
                    &p.now,
                    &i64::try_from(p.lease_ms).unwrap_or(i64::MAX),
                    &names,
                    &limits,
                    &i64::from(remaining),
                ],
            )
            .await?;
            for t in rows::tasks(&rows)? {
                claimed.push(Arc::new(t));
            }
        }
        tx.commit().await.map_err(pg_err)?;
        // Idle workers of other processes may take what this claim left of the tasks it made
        // pending again.
        notify_work(&c, woken.into_iter().collect()).await;
        rules::sort_claimed(&mut claimed);
        events.extend(claimed.iter().map(|t| Event::Task(t.clone())));
        self.publish(events);
        Ok(claimed)
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
        let c = self.conn().await?;
        let expires = now.saturating_add(i64::try_from(lease_ms).unwrap_or(i64::MAX));
        let ids: Vec<Uuid> = tasks.iter().map(|t| uuid(*t)).collect();
        let rows = query(&c, sql::LEASE_EXTEND, &[&owner, &expires, &ids]).await?;
        let mut held = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: Uuid = r.try_get("id").map_err(pg_err)?;
            let attempt: i64 = r.try_get("attempts").map_err(pg_err)?;
            held.push(HeldLease {
                id: TaskId(id),
                attempt: attempt.max(0) as u32,
                cancel_requested: r.try_get("cancel_requested").map_err(pg_err)?,
            });
        }
        Ok(held)
    }

    /// Commits before it returns: the answer is [`Queued::ready`].
    async fn task_finish(&self, p: FinishParams) -> Result<Queued<Option<Arc<Task>>>> {
        self.open_for_use()?;
        let done = self.completer.finish(&self.pool, &self.hub, p).await;
        Ok(Queued::ready(done))
    }

    async fn task_token_create(&self, task: &Task, hash: String, now: UnixMillis) -> Result<()> {
        let (id, attempt) = (task.id, task.attempts);
        let owner = task.lease_owner.clone().unwrap_or_default();
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let n = execute(
            &tx,
            sql::TASK_TOKEN_INSERT,
            &[
                &hash,
                &uuid(id),
                &i64::from(attempt),
                &owner,
                &task.started_at,
                &now,
            ],
        )
        .await?;
        tx.commit().await.map_err(pg_err)?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "attempt {attempt} of task {id} has ended"
            )));
        }
        Ok(())
    }

    async fn task_token_lookup(
        &self,
        token_hash: String,
        now: UnixMillis,
    ) -> Result<TaskTokenCheck> {
        let c = self.conn().await?;
        let row = query_opt(&c, sql::TASK_TOKEN_GET, &[&token_hash, &now]).await?;
        Ok(match row {
            None => TaskTokenCheck::Unknown,
            Some(r) => {
                let id: Uuid = r.try_get("task_id").map_err(pg_err)?;
                let attempt: i64 = r.try_get("attempt").map_err(pg_err)?;
                let started_at: i64 = r.try_get("started_at").map_err(pg_err)?;
                let live: Option<bool> = r.try_get("live").map_err(pg_err)?;
                if live == Some(true) {
                    TaskTokenCheck::Valid(TaskId(id), attempt.max(0) as u32, started_at)
                } else {
                    TaskTokenCheck::Expired
                }
            }
        })
    }

    // ---- messages ---------------------------------------------------------------------------

    async fn message_insert(
        &self,
        task_id: TaskId,
        kind: String,
        content: Value,
        check: MessageCheck,
        now: UnixMillis,
    ) -> Result<Option<Message>> {
        let cap = self.limits.messages_per_task;
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        // The task's row lock, held until commit, orders its messages: positions are handed
        // out one transaction at a time, in commit order.
        let user = match &check {
            MessageCheck::User(u) => u.as_deref(),
            _ => None,
        };
        let author = rules::author(&check);
        let (t, count) = get_owned_locked(&tx, task_id, user).await?;
        rules::message_allowed(&t, &check)?;
        if let MessageCheck::Attempt(a) = &check {
            // Under the row lock: the attempt cannot end (and take its token) meanwhile.
            if query_opt(&tx, sql::TASK_TOKEN_HOLDS, &[&a.token_hash, &uuid(task_id)])
                .await?
                .is_none()
            {
                return Err(StoreError::Conflict(format!(
                    "attempt {} of task {task_id} has ended",
                    a.attempt
                )));
            }
        }
        let Some((kind, mut content)) =
            rules::capped_message(count.max(0) as u64, cap, &check, kind, content)?
        else {
            return Ok(None);
        };
        let text = rows::jsonb_text(&mut content)?;
        let owners = author == Author::User;
        let row = query_opt(
            &tx,
            sql::MESSAGE_SEQ_NEXT,
            &[&uuid(task_id), &1i64, &owners],
        )
        .await?
        .ok_or(StoreError::NotFound(task_id))?;
        let seq: i64 = row.try_get("message_seq").map_err(pg_err)?;
        execute(
            &tx,
            sql::MESSAGE_INSERT,
            &[&uuid(task_id), &seq, &kind, &text, &now, &author.as_str()],
        )
        .await?;
        let mut woken = None;
        if t.status == TaskStatus::Waiting && author == Author::User {
            // The owner's message wakes a waiting task: pending at once, told why.
            if let Some(r) = query_opt(&tx, sql::TASK_WAKE, &[&uuid(task_id), &now]).await? {
                woken = Some(rows::task(&r)?);
            }
        }
        tx.commit().await.map_err(pg_err)?;
        if let Some(t) = &woken {
            notify_work(&c, vec![t.queue.clone()]).await;
        }
        let m = Message {
            id: seq,
            task_id,
            kind,
            author,
            content,
            created_at: now,
        };
        let mut events = vec![Event::Message(Arc::new(m.clone()))];
        events.extend(woken.map(|t| Event::Task(Arc::new(t))));
        self.publish(events);
        Ok(Some(m))
    }

    async fn message_list(
        &self,
        task_id: TaskId,
        after: i64,
        limit: u32,
        author: Option<Author>,
    ) -> Result<Vec<Message>> {
        let c = self.conn().await?;
        messages_after(&c, task_id, after, limit, author).await
    }

    async fn task_checkpoint(
        &self,
        id: TaskId,
        checkpoint: Value,
        fence: MessageCheck,
        now: UnixMillis,
    ) -> Result<Task> {
        let f = rules::attempt_fence(&fence)?;
        let mut checkpoint = checkpoint;
        let text = rows::jsonb_text(&mut checkpoint)?;
        let c = self.conn().await?;
        let row = query_opt(
            &c,
            sql::TASK_CHECKPOINT,
            &[
                &uuid(id),
                &text,
                &i64::from(f.attempt),
                &f.owner,
                &now,
                &f.token_hash,
            ],
        )
        .await?;
        match row {
            Some(r) => rows::task(&r),
            None => {
                get_owned(&c, id, None).await?;
                Err(StoreError::Conflict(format!(
                    "attempt {} of task {id} has ended",
                    f.attempt
                )))
            }
        }
    }

    async fn inbox_read(
        &self,
        id: TaskId,
        fence: MessageCheck,
        upto: i64,
        _now: UnixMillis,
    ) -> Result<bool> {
        let f = rules::attempt_fence(&fence)?;
        let c = self.conn().await?;
        let n = execute(
            &c,
            sql::TASK_INBOX_READ,
            &[
                &uuid(id),
                &upto,
                &i64::from(f.attempt),
                &f.owner,
                &f.token_hash,
            ],
        )
        .await?;
        Ok(n > 0)
    }

    async fn stream_token_create(
        &self,
        token_hash: String,
        task_id: TaskId,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<()> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        execute(&tx, sql::STREAM_TOKEN_PRUNE, &[&now]).await?;
        let n = tx
            .execute(
                sql::STREAM_TOKEN_INSERT,
                &[&token_hash, &uuid(task_id), &expires_at],
            )
            .await;
        match n {
            Ok(_) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => {
                return Err(StoreError::NotFound(task_id))
            }
            Err(e) => return Err(pg_err(e)),
        }
        execute(
            &tx,
            sql::STREAM_TOKEN_CAP,
            &[&uuid(task_id), &super::STREAM_TOKENS_PER_TASK],
        )
        .await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(())
    }

    async fn stream_token_task(
        &self,
        token_hash: String,
        now: UnixMillis,
    ) -> Result<Option<TaskId>> {
        let c = self.conn().await?;
        Ok(query_opt(&c, sql::STREAM_TOKEN_GET, &[&token_hash, &now])
            .await?
            .map(|r| r.try_get::<_, Uuid>("task_id").map(TaskId))
            .transpose()
            .map_err(pg_err)?)
    }

    // ---- queues -----------------------------------------------------------------------------

    async fn queue_stats(
        &self,
        configured: Vec<String>,
        now: UnixMillis,
    ) -> Result<Vec<QueueStats>> {
        let mut c = self.conn().await?;
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err)?;
        let mut by: BTreeMap<String, QueueStats> = BTreeMap::new();
        for name in configured {
            by.entry(name.clone()).or_insert_with(|| QueueStats {
                name,
                ..Default::default()
            });
        }
        for r in query(&tx, sql::QUEUE_LIST, &[]).await? {
            let name: String = r.try_get("name").map_err(pg_err)?;
            let paused: bool = r.try_get("paused").map_err(pg_err)?;
            by.entry(name.clone())
                .or_insert_with(|| QueueStats {
                    name,
                    ..Default::default()
                })
                .paused = paused;
        }
        for r in query(&tx, sql::QUEUE_STATS, &[&now]).await? {
            let queue: String = r.try_get(0).map_err(pg_err)?;
            let status: String = r.try_get(1).map_err(pg_err)?;
            let n: i64 = r.try_get(2).map_err(pg_err)?;
            let due: Option<i64> = r.try_get(3).map_err(pg_err)?;
            let oldest: Option<i64> = r.try_get(4).map_err(pg_err)?;
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
        tx.commit().await.map_err(pg_err)?;
        Ok(by.into_values().collect())
    }

    async fn schedule_list(&self) -> Result<Vec<super::ScheduleRow>> {
        let c = self.conn().await?;
        schedules::list(&c).await
    }

    async fn schedule_put(
        &self,
        row: super::ScheduleRow,
        config: bool,
        now: UnixMillis,
    ) -> Result<super::ScheduleRow> {
        let c = self.conn().await?;
        schedules::put(&c, &row, config, now).await
    }

    async fn schedule_delete(&self, name: String) -> Result<bool> {
        let c = self.conn().await?;
        schedules::delete(&c, &name).await
    }

    async fn schedule_prune_config(&self, keep: Vec<String>) -> Result<usize> {
        let c = self.conn().await?;
        schedules::prune_config(&c, &keep).await
    }

    async fn schedule_fired(
        &self,
        name: String,
        at: UnixMillis,
        task_id: Option<String>,
    ) -> Result<()> {
        let c = self.conn().await?;
        schedules::fired(&c, &name, at, task_id.as_deref()).await
    }

    async fn queue_buckets(&self) -> Result<Vec<(String, super::Bucket)>> {
        let c = self.conn().await?;
        let rows = query(&c, admission::TOKENS_LIST, &[]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((
                r.try_get::<_, String>(0).map_err(pg_err)?,
                super::Bucket {
                    tokens: r.try_get(1).map_err(pg_err)?,
                    updated_at: r.try_get(2).map_err(pg_err)?,
                },
            ));
        }
        Ok(out)
    }

    async fn queue_paused(&self) -> Result<Vec<String>> {
        let c = self.conn().await?;
        let mut out = Vec::new();
        for r in query(&c, sql::QUEUE_LIST, &[]).await? {
            let paused: bool = r.try_get("paused").map_err(pg_err)?;
            if paused {
                out.push(r.try_get("name").map_err(pg_err)?);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn queue_set_paused(&self, name: String, paused: bool, now: UnixMillis) -> Result<()> {
        let c = self.conn().await?;
        execute(&c, sql::QUEUE_SET_PAUSED, &[&name, &paused, &now]).await?;
        Ok(())
    }

    // ---- users and tokens -------------------------------------------------------------------

    async fn token_create(&self, p: TokenCreate) -> Result<User> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let found = user_by_name(&tx, &p.name).await?;
        let user = match rules::token_owner(found, &p)? {
            Some(u) => u,
            // A racing create of the same name wins; this one is refused as if it came later.
            None => insert_user(&tx, &p.name, None, p.admin, p.now)
                .await?
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "user {:?} already exists: pass --existing to add a token to it",
                        p.name
                    ))
                })?,
        };
        execute(&tx, sql::TOKEN_INSERT, &[&user.id, &p.token_hash, &p.now]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(user)
    }

    async fn token_bootstrap_admin(&self, token_hash: String, now: UnixMillis) -> Result<bool> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        // One process at a time, so two first starts store one token.
        query(&tx, sql::LOCK_BOOTSTRAP, &[]).await?;
        let any: bool = query_opt(&tx, sql::TOKEN_ANY, &[])
            .await?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(pg_err)?
            .unwrap_or(false);
        if any {
            return Ok(false);
        }
        let user = match user_by_name(&tx, ADMIN_NAME).await? {
            Some(u) => {
                if !u.is_admin {
                    execute(&tx, sql::USER_SET_ADMIN, &[&u.id]).await?;
                }
                u
            }
            None => match insert_user(&tx, ADMIN_NAME, None, true, now).await? {
                Some(u) => u,
                None => user_by_name(&tx, ADMIN_NAME)
                    .await?
                    .ok_or_else(|| StoreError::Backend("the admin user vanished".into()))?,
            },
        };
        execute(&tx, sql::TOKEN_INSERT, &[&user.id, &token_hash, &now]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(true)
    }

    async fn user_resolve(&self, name: String, now: UnixMillis) -> Result<User> {
        let c = self.conn().await?;
        if let Some(u) = user_by_name(&c, &name).await? {
            return Ok(u);
        }
        if let Some(u) = insert_user(&c, &name, None, name == ADMIN_NAME, now).await? {
            return Ok(u);
        }
        // Made by another process meanwhile.
        user_by_name(&c, &name)
            .await?
            .ok_or_else(|| StoreError::Backend(format!("user {name:?} vanished").into()))
    }

    async fn user_jwt(&self, issuer: String, name: String, now: UnixMillis) -> Result<User> {
        let c = self.conn().await?;
        if let Some(u) = user_by_jwt(&c, &issuer, &name).await? {
            return Ok(u);
        }
        if let Some(u) = insert_user(&c, &name, Some(&issuer), false, now).await? {
            return Ok(u);
        }
        user_by_jwt(&c, &issuer, &name)
            .await?
            .ok_or_else(|| StoreError::Backend(format!("JWT user {name:?} vanished").into()))
    }

    async fn token_revoke(&self, which: TokenRevoke) -> Result<usize> {
        let c = self.conn().await?;
        let n = match which {
            TokenRevoke::User(name) => execute(&c, sql::TOKEN_REVOKE_USER, &[&name]).await?,
            TokenRevoke::Hash(h) => execute(&c, sql::TOKEN_REVOKE_HASH, &[&h]).await?,
            TokenRevoke::Id(id) => execute(&c, sql::TOKEN_REVOKE_ID, &[&id]).await?,
        };
        Ok(n as usize)
    }

    async fn user_by_token(&self, token_hash: String) -> Result<Option<User>> {
        let c = self.conn().await?;
        match query_opt(&c, sql::USER_BY_TOKEN, &[&token_hash]).await? {
            Some(r) => rows::user(&r).map(Some),
            None => Ok(None),
        }
    }

    async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        let c = self.conn().await?;
        match query_opt(&c, sql::USER_GET_BY_ID, &[&id]).await? {
            Some(r) => rows::user(&r).map(Some),
            None => Ok(None),
        }
    }

    async fn token_list(&self) -> Result<Vec<TokenInfo>> {
        let c = self.conn().await?;
        query(&c, sql::TOKEN_LIST, &[])
            .await?
            .iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.try_get("id").map_err(pg_err)?,
                    user: r.try_get("name").map_err(pg_err)?,
                    admin: r.try_get("is_admin").map_err(pg_err)?,
                    created_at: r.try_get("created_at").map_err(pg_err)?,
                    hash_prefix: r.try_get("hash_prefix").map_err(pg_err)?,
                })
            })
            .collect()
    }

    async fn token_any(&self) -> Result<bool> {
        let c = self.conn().await?;
        Ok(query_opt(&c, sql::TOKEN_ANY, &[])
            .await?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(pg_err)?
            .unwrap_or(false))
    }

    // ---- workers ----------------------------------------------------------------------------

    async fn worker_heartbeat(
        &self,
        id: String,
        host: String,
        pid: u32,
        stale_before: UnixMillis,
        now: UnixMillis,
    ) -> Result<()> {
        let c = self.conn().await?;
        execute(&c, sql::WORKER_DELETE, &[&"", &stale_before]).await?;
        execute(&c, sql::WORKER_UPSERT, &[&id, &host, &i64::from(pid), &now]).await?;
        Ok(())
    }

    async fn worker_remove(&self, id: String) -> Result<()> {
        let c = self.conn().await?;
        execute(&c, sql::WORKER_DELETE, &[&id, &i64::MIN]).await?;
        Ok(())
    }

    async fn worker_list(&self) -> Result<Vec<WorkerInfo>> {
        let c = self.conn().await?;
        query(&c, sql::WORKER_LIST, &[])
            .await?
            .iter()
            .map(|r| {
                Ok(WorkerInfo {
                    id: r.try_get("id")?,
                    host: r.try_get("host")?,
                    pid: r.try_get("pid")?,
                    started_at: r.try_get("started_at")?,
                    heartbeat_at: r.try_get("heartbeat_at")?,
                    running: r.try_get("running")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(pg_err)
    }

    // ---- operations -------------------------------------------------------------------------

    async fn ping_write(&self, now: UnixMillis) -> Result<()> {
        let c = self.conn().await?;
        execute(&c, sql::HEALTH_TOUCH, &[&now]).await?;
        Ok(())
    }

    async fn inspect_lists(&self, limit: u32) -> Result<(Vec<Task>, Vec<Task>)> {
        let c = self.conn().await?;
        let limit = i64::from(limit);
        let running = rows::tasks(&query(&c, sql::RUNNING_LIST, &[&limit]).await?)?;
        let failed = rows::tasks(&query(&c, sql::FAILURES_LIST, &[&limit]).await?)?;
        Ok((running, failed))
    }

    async fn schema_version(&self) -> Result<u32> {
        let c = self.conn().await?;
        migrate::current_version(&c).await
    }

    fn known_schema_version(&self) -> u32 {
        migrate::LATEST_VERSION
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clock.clone()
    }

    async fn clock_sync(&self) -> Result<Option<i64>> {
        let c = self.conn().await?;
        self.clock.read(&c).await.map(Some)
    }

    async fn changes_prune(&self, before: UnixMillis, keep: u64) -> Result<usize> {
        // The newest change always stays: `changes` tells a gap by the oldest change kept.
        let keep = keep.clamp(1, i64::MAX as u64) as i64;
        let c = self.conn().await?;
        // What committed since the last reader is numbered first, so the table of unnumbered
        // changes stays small even while nobody reads the log; with it, the usage shards of
        // sessions that ended are folded (see migration 0005).
        while number_changes(&c).await? >= CHANGES_NUMBER_BATCH {
            tokio::task::yield_now().await;
        }
        fold_usage(&c).await?;
        let n = execute(
            &c,
            sql::CHANGE_PRUNE,
            &[&before, &keep, &(super::CHANGES_PRUNE_BATCH as i64)],
        )
        .await?;
        Ok(n as usize)
    }

    fn describe(&self) -> String {
        self.described.clone()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.pool.close();
        self.stop_listener();
    }

    // ---- events -----------------------------------------------------------------------------

    fn hub(&self) -> &Arc<EventHub> {
        &self.hub
    }

    async fn changes(&self, p: ChangeParams) -> Result<ChangePage> {
        let mut c = self.conn().await?;
        // Changes committed so far get their positions (in a transaction of their own), then
        // the page is read. A page of a log longer than one numbering says `more`.
        number_changes(&c).await?;
        // One snapshot: the bounds and the page agree.
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err)?;
        let limit = i64::from(p.limit);
        let b = query_opt(&tx, sql::CHANGE_BOUNDS, &[&p.after, &limit])
            .await?
            .ok_or_else(|| StoreError::Backend("change bounds returned no row".into()))?;
        let oldest: Option<i64> = b.try_get("oldest").map_err(pg_err)?;
        let newest: Option<i64> = b.try_get("newest").map_err(pg_err)?;
        let page_end: Option<i64> = b.try_get("page_end").map_err(pg_err)?;
        let rows = query(
            &tx,
            sql::CHANGE_LIST,
            &[
                &p.after,
                &limit,
                &p.user_id,
                &p.queue,
                &(CHANGE_PAGE_BYTES as i64),
            ],
        )
        .await?;
        tx.commit().await.map_err(pg_err)?;
        let (mut changes, mut bytes, mut cut) = (Vec::new(), 0usize, None);
        for r in &rows {
            let size: Option<i64> = r.try_get("content_bytes").map_err(pg_err)?;
            let size = size.unwrap_or(0).max(0) as usize;
            if !changes.is_empty() && bytes.saturating_add(size) > CHANGE_PAGE_BYTES {
                cut = changes.last().map(|c: &super::Change| c.seq);
                break;
            }
            bytes = bytes.saturating_add(size);
            let mut task = rows::task(r)?;
            let status: String = r.try_get("change_status").map_err(pg_err)?;
            if let Ok(s) = status.parse() {
                task.status = s;
            }
            changes.push(super::Change {
                seq: r.try_get("change_seq").map_err(pg_err)?,
                task: Arc::new(task),
            });
        }
        let newest = newest.unwrap_or(0);
        let next = cut.or(page_end).unwrap_or(p.after).max(p.after);
        Ok(ChangePage {
            gap: p.after > 0 && oldest.is_some_and(|o| o > p.after.saturating_add(1)),
            next,
            newest,
            more: next < newest,
            changes,
        })
    }
}

/// Moves the usage shards of ended sessions into the users' rows, in a transaction of its own;
/// returns how many it moved.
async fn fold_usage(c: &Conn) -> Result<i64> {
    count_of(c, sql::USAGE_FOLD, &[], "folding usage").await
}

/// The count a maintenance function returns (NULL: none).
async fn count_of(c: &Conn, text: &str, params: &[&(dyn ToSql + Sync)], what: &str) -> Result<i64> {
    let row = query_opt(c, text, params)
        .await?
        .ok_or_else(|| StoreError::Backend(format!("{what} returned no row").into()))?;
    let n: Option<i64> = row.try_get(0).map_err(pg_err)?;
    Ok(n.unwrap_or(0))
}

/// Changes numbered per call of `spool_number_changes`, at most.
const CHANGES_NUMBER_BATCH: i64 = 50_000;

/// Gives positions in the change log to changes committed so far (at most
/// [`CHANGES_NUMBER_BATCH`]), in a transaction of its own; returns how many it numbered.
async fn number_changes(c: &Conn) -> Result<i64> {
    count_of(
        c,
        sql::CHANGE_NUMBER,
        &[&CHANGES_NUMBER_BATCH],
        "numbering the change log",
    )
    .await
}

async fn user_by_name<C: Cached>(c: &C, name: &str) -> Result<Option<User>> {
    match query_opt(c, sql::USER_GET_BY_NAME, &[&name]).await? {
        Some(r) => rows::user(&r).map(Some),
        None => Ok(None),
    }
}

async fn user_by_jwt<C: Cached>(c: &C, issuer: &str, name: &str) -> Result<Option<User>> {
    match query_opt(c, sql::USER_GET_JWT, &[&issuer, &name]).await? {
        Some(r) => rows::user(&r).map(Some),
        None => Ok(None),
    }
}

/// A new user, or `None` when that identity exists already.
async fn insert_user<C: Cached>(
    c: &C,
    name: &str,
    issuer: Option<&str>,
    is_admin: bool,
    now: UnixMillis,
) -> Result<Option<User>> {
    let row = query_opt(c, sql::USER_INSERT, &[&name, &issuer, &is_admin, &now]).await?;
    match row {
        Some(r) => Ok(Some(User {
            id: r.try_get("id").map_err(pg_err)?,
            name: name.to_string(),
            is_admin,
            jwt: false,
        })),
        None => Ok(None),
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.pool.close();
        self.stop_listener();
    }
}

// ---- wake-ups across processes ----------------------------------------------------------------

/// Wakes the idle workers of every process on `queues` (`NOTIFY spool_work, '<queue>'` for
/// each), in a statement of its own after the commit that made their tasks pending.
///
/// Never inside that commit: PostgreSQL takes one cluster-wide lock for each transaction that
/// notifies and holds it until the transaction's commit is on disk, so commits that notify take
/// turns, each waiting for the flush of the one before (every host's enqueues, one at a time).
/// Eight `pgbench` clients committing one row each made 9,019–9,576 commits/s, and 2,363–2,834
/// with a NOTIFY in each transaction; with the NOTIFY sent after the commit instead, as here,
/// 4,986–5,197 against 4,307–5,368 for the same round trips without it. A statement that only
/// notifies has nothing to flush (alone, 6,600–9,100 a second on one connection).
///
/// A wake-up that fails here is logged and dropped, as one lost on the way would be: the
/// change is committed, and polling (`worker.poll_interval_ms`) finds it.
async fn notify_work<C: Cached>(c: &C, queues: Vec<String>) {
    if queues.is_empty() {
        return;
    }
    if let Err(e) = query(c, sql::WORK_NOTIFY, &[&queues]).await {
        notify_lost(&e);
    }
}

/// Logs a wake-up NOTIFY that could not be sent after its commit.
fn notify_lost(e: &StoreError) {
    tracing::warn!(error = %e, "wake-up NOTIFY not sent; idle workers find the tasks at their next poll");
}

/// The wake-up listener: `LISTEN spool_work` on a connection of its own; each notification
/// wakes this process's idle pools of that queue. A lost connection is made again (after 0.2 s,
/// longer while it keeps failing), and every pool then looks in the database at once for what
/// was missed meanwhile; polling (`worker.poll_interval_ms`) stays the fallback, so a lost
/// notification delays a task, never strands it.
async fn listen(url: PostgresUrl, timeout: Duration, hub: Arc<EventHub>) {
    let mut failures = 0u32;
    loop {
        match listen_once(&url, timeout, &hub).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(error = %e, failures, "wake-up listener: reconnecting");
                }
            }
        }
        hub.wake_all_work();
        tokio::time::sleep(Duration::from_millis(
            200 * u64::from(failures.clamp(1, 25)),
        ))
        .await;
    }
}

async fn listen_once(url: &PostgresUrl, timeout: Duration, hub: &Arc<EventHub>) -> Result<()> {
    let mut configs = host_configs(url, timeout)?;
    for cfg in &mut configs {
        // A link that dies silently is noticed within about a minute.
        cfg.keepalives(true);
        cfg.keepalives_idle(Duration::from_secs(30));
        cfg.keepalives_interval(Duration::from_secs(5));
        cfg.keepalives_retries(6);
    }
    match url.tls() {
        url::TlsMode::Disable => {
            let (client, conn) = connect_first(&configs, tokio_postgres::NoTls, timeout)
                .await
                .map_err(pg_err)?;
            drive_listener(client, conn, hub).await
        }
        _ => {
            let tls = url::tls_connector(url).map_err(StoreError::Unavailable)?;
            let (client, conn) = connect_first(&configs, tls, timeout)
                .await
                .map_err(pg_err)?;
            drive_listener(client, conn, hub).await
        }
    }
}

/// Listens on `client` until its connection ends.
async fn drive_listener<S, T>(
    client: tokio_postgres::Client,
    mut conn: tokio_postgres::Connection<S, T>,
    hub: &Arc<EventHub>,
) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures::StreamExt;
    let wake = hub.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => wake.wake_queue(n.payload()),
                Ok(_) => {}
                Err(e) => return Err(pg_err(e)),
            }
        }
        Ok(())
    });
    let listened = client.batch_execute(sql::WORK_LISTEN).await.map_err(pg_err);
    if let Err(e) = listened {
        driver.abort();
        return Err(e);
    }
    // Listening now: whatever was enqueued before (or while reconnecting) is looked for at once.
    hub.wake_all_work();
    let r = driver.await;
    drop(client);
    match r {
        Ok(r) => r,
        Err(e) => Err(StoreError::Unavailable(format!("wake-up listener: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::clock_news;

    #[test]
    fn a_clock_difference_is_logged_when_found_moved_or_mended_not_at_every_reading() {
        // Within a second at start: nothing to say.
        assert!(!clock_news(0, 400));
        // Found two minutes off: said once, not again at the next readings.
        assert!(clock_news(0, 120_000));
        assert!(!clock_news(120_000, 120_300));
        // Either clock stepped by a minute: said again.
        assert!(clock_news(120_000, 60_000));
        // Set right: said once more.
        assert!(clock_news(60_000, 5));
        assert!(!clock_news(5, -200));
    }
}
