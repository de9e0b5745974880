//! Wiring and shutdown order. [`Spool`] is the embeddable queue: build it with handlers, enqueue
//! from your own code, then `run` the worker pool or `serve` HTTP and workers together.
//!
//! Shutdown order: the signal cancels the root token; HTTP stops accepting and streams end; the
//! pool stops claiming, waits `shutdown.grace_ms` for running attempts, stops the rest and
//! releases their leases; the store's writer finishes what it was given and closes last.

use crate::clock::Clock;
use crate::config::{Config, DatabaseUrl};
use crate::executor::{Handler, Registry};
use crate::http::serve::{serve as serve_http, ServeOptions};
use crate::http::{hash_token, metrics_router, new_token, router, AppState};
use crate::store::{SqliteStore, Store, StoreError, StoreOptions, TokenRevoke, ADMIN_NAME};
use crate::task::{NewTask, Task, TaskId};
use crate::worker::{prune_once, prune_workdirs, WorkerPool};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Open connections at most on the `http.metrics_listen` listener.
const METRICS_MAX_CONNECTIONS: usize = 64;

/// How often a running process reads the database's schema version, to stop once a newer
/// spool has migrated it (see [`Spool::run`]).
const SCHEMA_CHECK: Duration = Duration::from_secs(1);

/// How often a running process reads the database's clock again (PostgreSQL: see
/// [`Store::clock`]), to follow the drift between it and this host's clock.
const CLOCK_SYNC: Duration = Duration::from_secs(30);

/// Errors of starting or running spool.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory or a file in it.
    #[error("{0}")]
    Io(String),
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
}

/// Builds a [`Spool`].
#[derive(Default)]
pub struct SpoolBuilder {
    config: Option<Config>,
    registry: Registry,
    clock: Option<Arc<dyn Clock>>,
    jitter: Option<crate::worker::Jitter>,
}

impl SpoolBuilder {
    /// Uses `cfg` (default: [`Config::defaults`]).
    pub fn config(mut self, cfg: Config) -> Self {
        self.config = Some(cfg);
        self
    }

    /// Registers a Rust handler for `kind` (it wins over a configured command of that kind).
    pub fn handler(mut self, kind: impl Into<String>, h: impl Handler) -> Self {
        self.registry.insert(kind, h);
        self
    }

    /// Uses `clock` instead of the store's (the wall clock on SQLite, the database's on
    /// PostgreSQL): tests.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Uses `jitter` (values in `[0, 1)`) for retry delays instead of the random source (tests).
    pub fn jitter(mut self, jitter: crate::worker::Jitter) -> Self {
        self.jitter = Some(jitter);
        self
    }

    /// Creates the data directory if missing, opens the database and applies migrations.
    ///
    /// # Errors
    /// The data directory cannot be made or written, or the database cannot be opened.
    pub fn build(self) -> Result<Spool, AppError> {
        let cfg = self.config.unwrap_or_else(Config::defaults);
        let mut registry =
            Registry::from_config(&cfg, &|k| std::env::var(k).ok()).map_err(AppError::Invalid)?;
        registry.extend(self.registry);
        // Only these names become metric labels; every other kind or queue is `other`.
        let queues = crate::http::configured_queues(&cfg);
        crate::labels::register(
            registry.kinds().chain(cfg.kinds.keys().map(String::as_str)),
            queues.iter().map(String::as_str).chain(["default"]),
        );
        let store = open_store(&cfg)?;
        let clock = self.clock.unwrap_or_else(|| store.clock());
        Ok(Spool {
            cfg: Arc::new(cfg),
            store,
            registry: Arc::new(registry),
            clock,
            jitter: self.jitter.unwrap_or_else(crate::worker::random_jitter),
            owners: Default::default(),
        })
    }
}

/// Validates an enqueue of the embedded API or the CLI into a task of `owner` (a user's
/// [`crate::store::User::owner_key`]), by the same rules as the HTTP API
/// ([`crate::queue::settle`]), touching nothing: a refusal writes nothing.
///
/// # Errors
/// `AppError::Invalid` naming the field.
pub fn new_task(
    cfg: &Config,
    kind: &str,
    payload: Value,
    o: EnqueueOptions,
    owner: String,
    now: crate::clock::UnixMillis,
) -> Result<NewTask, AppError> {
    let req = crate::queue::NewTaskRequest {
        kind: kind.to_string(),
        queue: o.queue,
        payload,
        priority: Some(i64::from(o.priority)),
        asked: crate::queue::Asked {
            max_attempts: o.max_attempts.map(i64::from),
            timeout_ms: o.timeout_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
            run_at: None,
            delay_ms: o
                .delay
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        },
        idempotency_key: None,
        request_hash: None,
        concurrency_key: o.concurrency_key,
    };
    crate::queue::new_task(&cfg.enqueue_rules(kind), req, TaskId::new(), owner, now)
        .map_err(AppError::Invalid)
}

/// Makes the data directory and opens the store of `cfg`. The directory is made `0700` (an
/// existing one that others may read or enter is tightened to `0700`, with a warning), the
/// database file is made `0600` before SQLite first opens it (SQLite gives its `-wal` and `-shm`
/// files the database's mode), and an existing database, `-wal` or `-shm` readable by others is
/// tightened to `0600` (a warning only, when the mode cannot be changed: not our file).
///
/// # Errors
/// The directory cannot be made, or the database cannot be opened.
pub fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, AppError> {
    match &cfg.database.url {
        DatabaseUrl::Sqlite(path) => open_sqlite(cfg, path),
        DatabaseUrl::Postgres(url) => open_postgres(cfg, url),
    }
}

/// The quotas of `cfg` as the store enforces them (0 in config turns a limit off).
fn store_limits(cfg: &Config) -> crate::store::Limits {
    let limit = |v: u64| if v == 0 { u64::MAX } else { v };
    crate::store::Limits {
        pending_tasks_per_user: limit(cfg.limits.pending_tasks_per_user),
        payload_bytes_per_user: limit(cfg.limits.payload_bytes_per_user),
        messages_per_task: limit(cfg.limits.messages_per_task),
    }
}

/// The PostgreSQL store: the data directory is still made (0700) for `admin.token`.
fn open_postgres(
    cfg: &Config,
    url: &crate::store::PostgresUrl,
) -> Result<Arc<dyn Store>, AppError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DATA_DIR_MODE)
        .create(&cfg.data_dir)
        .map_err(|e| {
            AppError::Io(format!(
                "cannot create data_dir {}: {e}",
                cfg.data_dir.display()
            ))
        })?;
    let mut opts = crate::store::PostgresOptions::new(url.clone());
    opts.max_connections = cfg.database.max_connections as usize;
    opts.timeout_ms = cfg.database.busy_timeout_ms;
    opts.limits = store_limits(cfg);
    let store = crate::store::PostgresStore::open_blocking(opts).map_err(AppError::Store)?;
    Ok(Arc::new(store))
}

fn open_sqlite(cfg: &Config, path: &Path) -> Result<Arc<dyn Store>, AppError> {
    make_data_dir(&cfg.data_dir, path)?;
    let mut opts = StoreOptions::new(path);
    opts.synchronous = cfg.database.synchronous;
    opts.busy_timeout_ms = cfg.database.busy_timeout_ms;
    opts.readers = cfg.database.readers;
    opts.limits = store_limits(cfg);
    let store = SqliteStore::open(opts).map_err(|e| match e {
        StoreError::Unavailable(m) => AppError::Io(format!(
            "{m} (is data_dir {} writable?)",
            cfg.data_dir.display()
        )),
        e => AppError::Store(e),
    })?;
    // Only once the file proved to be spool's database: a file refused above is left as it was.
    tighten_data_dir(&cfg.data_dir, path)?;
    Ok(Arc::new(store))
}

/// Mode of the data directory.
pub const DATA_DIR_MODE: u32 = 0o700;
/// Mode of the database files and `admin.token`.
pub const DATA_FILE_MODE: u32 = 0o600;

/// Makes the data directory (0700) and an empty database file (0600) if they are missing.
fn make_data_dir(dir: &Path, db: &Path) -> Result<(), AppError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DATA_DIR_MODE)
        .create(dir)
        .map_err(|e| AppError::Io(format!("cannot create data_dir {}: {e}", dir.display())))?;
    // A database.url outside data_dir: its directory too.
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DATA_DIR_MODE)
            .create(parent)
            .map_err(|e| AppError::Io(format!("cannot create {}: {e}", parent.display())))?;
    }
    // Made here, empty, with its final mode: SQLite takes an empty file as a new database and
    // gives the -wal and -shm files it makes this mode too.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(DATA_FILE_MODE)
        .open(db)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(AppError::Io(format!(
            "cannot create {}: {e} (is data_dir {} writable?)",
            db.display(),
            dir.display()
        ))),
    }
}

/// Tightens a data directory, database, `-wal` or `-shm` that others may read (an older
/// install's, or made by hand) to 0700 / 0600, with a warning; only warns when it cannot.
fn tighten_data_dir(dir: &Path, db: &Path) -> Result<(), AppError> {
    use std::os::unix::fs::PermissionsExt;
    let tighten = |path: &Path, mode: u32| -> Result<(), AppError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(AppError::Io(format!("{}: {e}", path.display()))),
        };
        let now = meta.permissions().mode() & 0o777;
        if now & 0o077 != 0 {
            match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
                Ok(()) => tracing::warn!(path = %path.display(), from = format!("{now:o}"),
                    to = format!("{mode:o}"), "others could read spool's data; tightened its mode"),
                Err(e) => tracing::warn!(path = %path.display(), mode = format!("{now:o}"),
                    error = %e, "others can read spool's data and its mode cannot be tightened"),
            }
        }
        Ok(())
    };
    tighten(dir, DATA_DIR_MODE)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        tighten(Path::new(&p), DATA_FILE_MODE)?;
    }
    Ok(())
}

/// A queue with its handlers, embeddable in a Rust program.
pub struct Spool {
    cfg: Arc<Config>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
    jitter: crate::worker::Jitter,
    /// Owner keys of the user names enqueued as (users are never deleted; ids never change).
    owners: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("db", &self.store.describe())
            .finish()
    }
}

/// Options of [`Spool::enqueue_with`].
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Queue (default `default`).
    pub queue: Option<String>,
    /// -100..=100.
    pub priority: i32,
    /// Wait this long before the first attempt.
    pub delay: Option<Duration>,
    /// Attempts (default: the kind's).
    pub max_attempts: Option<u32>,
    /// Attempt timeout (default: the kind's).
    pub timeout_ms: Option<u64>,
    /// The owner's user name (default `admin`); a name with no user yet gets one (`admin` an
    /// admin, any other name not). Tasks are owned by the user's id, not the name.
    pub user: Option<String>,
    /// The admission key: tasks with one key share the queue's `per_key_concurrency`.
    pub concurrency_key: Option<String>,
}

impl Spool {
    /// A builder.
    pub fn builder() -> SpoolBuilder {
        SpoolBuilder::default()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    /// Enqueues a task of `kind` on the default queue.
    ///
    /// # Errors
    /// A bad kind, or the database is unavailable.
    pub async fn enqueue(&self, kind: &str, payload: Value) -> Result<Task, AppError> {
        self.enqueue_with(kind, payload, EnqueueOptions::default())
            .await
    }

    /// Enqueues a task with options.
    ///
    /// # Errors
    /// A bad kind, queue or priority, or the database is unavailable.
    pub async fn enqueue_with(
        &self,
        kind: &str,
        payload: Value,
        o: EnqueueOptions,
    ) -> Result<Task, AppError> {
        let now = self.clock.now();
        let name = o.user.clone().unwrap_or_else(|| ADMIN_NAME.into());
        // Validated before the owner is looked up (which may create the user): a refusal
        // writes nothing.
        let mut task = new_task(&self.cfg, kind, payload, o, String::new(), now)?;
        let known = self.owners.lock().ok().and_then(|m| m.get(&name).cloned());
        let owner = match known {
            Some(k) => k,
            None => {
                let k = self
                    .store
                    .user_resolve(name.clone(), now)
                    .await?
                    .owner_key();
                if let Ok(mut m) = self.owners.lock() {
                    m.insert(name, k.clone());
                }
                k
            }
        };
        task.user_id = owner;
        let mut out = self.store.task_insert(vec![task], now).await?;
        out.pop()
            .map(|i| Arc::unwrap_or_clone(i.task))
            .ok_or_else(|| AppError::Invalid("insert returned nothing".into()))
    }

    /// Runs the worker pool and the retention pruner until `shutdown` is cancelled, then stops
    /// as `[shutdown]` says.
    ///
    /// A newer spool on another host may migrate the database while this one runs. This
    /// process would then go on writing in the older way, so once it reads a newer schema
    /// version (every [`SCHEMA_CHECK`]) it stops as on SIGTERM (`shutdown` itself is left
    /// alone) and returns `SchemaMigratedSince`.
    ///
    /// # Errors
    /// The worker could not register in the database; a newer spool migrated the database.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), AppError> {
        self.run_until(shutdown.child_token()).await
    }

    /// [`Spool::run`] until `shutdown`, which the schema check cancels (so it must be this
    /// process's own token, not the caller's).
    async fn run_until(&self, shutdown: CancellationToken) -> Result<(), AppError> {
        let schema = self.spawn_schema_watch(shutdown.clone());
        let clock_sync = self.spawn_clock_sync(shutdown.clone());
        let pruner = self.spawn_pruner(shutdown.clone());
        // Every serve and work process runs the scheduler: firings are idempotent, so any
        // number of them fire each time once, and one of them alive is enough.
        let scheduler = tokio::spawn(crate::schedule::run(
            self.store.clone(),
            self.cfg.clone(),
            self.clock.clone(),
            shutdown.clone(),
        ));
        let sweeper = self.spawn_container_sweeper(shutdown.clone());
        let res = if self.cfg.worker.concurrency > 0 {
            let pool = WorkerPool::new(
                self.store.clone(),
                self.registry.clone(),
                self.clock.clone(),
                self.cfg.clone(),
                self.jitter.clone(),
            );
            pool.run(shutdown.clone()).await.map_err(AppError::from)
        } else {
            shutdown.cancelled().await;
            Ok(())
        };
        pruner.abort();
        clock_sync.abort();
        scheduler.abort();
        let _ = scheduler.await;
        schema.abort();
        let moved_on = schema.await.ok().flatten();
        if let Some(s) = sweeper {
            s.abort();
            // Containers of attempts stopped by the shutdown are being stopped and removed.
            crate::executor::container::wait_for_cleanups(
                Duration::from_secs(60) + self.cfg.shutdown_grace,
            )
            .await;
        }
        match moved_on {
            Some(e) => Err(e.into()),
            None => res,
        }
    }

    /// Reads the schema version every [`SCHEMA_CHECK`] until `shutdown`; when it is newer than
    /// this build knows, cancels `shutdown` and returns the error to stop with. A read that
    /// fails (the database is out of reach) is tried again at the next check.
    fn spawn_schema_watch(
        &self,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<Option<StoreError>> {
        let store = self.store.clone();
        let known = store.known_schema_version();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(SCHEMA_CHECK) => {}
                }
                match store.schema_version().await {
                    Ok(found) if found > known => {
                        tracing::info!(
                            found,
                            known,
                            "stopping: a newer spool migrated the database"
                        );
                        shutdown.cancel();
                        return Some(StoreError::SchemaMigratedSince { found, known });
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot read the schema version"),
                }
            }
        })
    }

    /// Reads the database's clock now (the metrics recorder may have started since the store
    /// opened) and again every [`CLOCK_SYNC`] until `shutdown` (PostgreSQL; on SQLite, whose
    /// clock is this host's, it ends at once). A read that fails is tried again at the next
    /// one; the clock runs on from the last reading meanwhile.
    fn spawn_clock_sync(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        tokio::spawn(async move {
            loop {
                match store.clock_sync().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    // At most one line per CLOCK_SYNC.
                    Err(e) => tracing::warn!(error = %e, "cannot read the database's clock"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(CLOCK_SYNC) => {}
                }
            }
        })
    }

    /// Checks that the container engine answers when a container kind is configured: `serve`
    /// and `work` refuse to start otherwise.
    ///
    /// # Errors
    /// `AppError::Invalid` naming the endpoint and the container kinds.
    pub async fn check_container_engine(&self) -> Result<(), AppError> {
        let Some(engine) = self.registry.engine() else {
            return Ok(());
        };
        engine.ping().await.map_err(|e| {
            let kinds: Vec<&str> = self
                .cfg
                .kinds
                .iter()
                .filter(|(_, k)| matches!(k.handler, crate::config::KindHandler::Container(_)))
                .map(|(n, _)| n.as_str())
                .collect();
            AppError::Invalid(format!(
                "{e}; the container kinds {kinds:?} need it (set docker.host or DOCKER_HOST)"
            ))
        })
    }

    /// At start, then every lease period: removes the containers of attempts nobody holds (a
    /// crashed process's) and the workspaces of finished tasks.
    fn spawn_container_sweeper(
        &self,
        shutdown: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let engine = self.registry.engine()?.clone();
        let store = self.store.clone();
        let clock = self.clock.clone();
        let every = Duration::from_millis(self.cfg.worker.lease_ms.clamp(500, 60_000));
        Some(tokio::spawn(async move {
            loop {
                match crate::executor::container::sweep(&engine, store.as_ref(), clock.now()).await
                {
                    Ok((0, 0)) => {}
                    Ok((c, v)) => tracing::info!(
                        containers = c,
                        volumes = v,
                        "removed containers and workspaces no attempt holds"
                    ),
                    Err(e) => tracing::warn!(error = %e, "container sweep failed; will retry"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        }))
    }

    fn spawn_pruner(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let cfg = self.cfg.clone();
        let clock = self.clock.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(cfg.retention.interval) => {
                        if let Err(e) = prune_once(store.as_ref(), &cfg.retention, clock.now()).await {
                            tracing::warn!(error = %e, "pruning failed; will retry");
                        }
                        if let Err(e) = prune_workdirs(store.as_ref(), &cfg, 1000).await {
                            tracing::warn!(error = %e, "pruning working directories failed; will retry");
                        }
                    }
                }
            }
        })
    }

    /// On a database with no token at all (the first start), stores a new admin token for the
    /// user `admin` and only then, once that insert committed, writes it to
    /// `<data_dir>/admin.token` (0600); returns the path then. Of several processes starting at
    /// once exactly one stores a token, and only that one writes the file, so the file always
    /// holds a token the database knows.
    ///
    /// # Errors
    /// The file cannot be written (the token is revoked again then) or the database is
    /// unavailable.
    pub async fn bootstrap_admin(&self) -> Result<Option<PathBuf>, AppError> {
        if self.store.token_any().await? {
            return Ok(None);
        }
        let token = new_token();
        let hash = hash_token(&token);
        if !self
            .store
            .token_bootstrap_admin(hash.clone(), self.clock.now())
            .await?
        {
            return Ok(None);
        }
        let path = self.cfg.data_dir.join("admin.token");
        if let Err(e) = write_secret(&path, &format!("{token}\n")) {
            // A token nobody can read is of no use to anyone: take it back.
            if let Err(r) = self.store.token_revoke(TokenRevoke::Hash(hash)).await {
                tracing::warn!(error = %r, "could not revoke the unwritten admin token");
            }
            return Err(e);
        }
        Ok(Some(path))
    }

    /// Serves HTTP on `listener` (and `/metrics` on `http.metrics_listen` when set) and runs
    /// the worker pool until `shutdown`, or until a newer spool migrates the database (see
    /// [`Spool::run`]).
    ///
    /// # Errors
    /// The metrics address cannot be bound, the worker pool could not start, the server
    /// failed, or a newer spool migrated the database.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        let metrics = match self.cfg.http.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| AppError::Io(format!("cannot listen on {addr}: {e}")))?,
            ),
            None => None,
        };
        self.serve_listeners(listener, metrics, shutdown).await
    }

    /// As [`Spool::serve`], with the `/metrics` listener already bound (`http.metrics_listen`).
    ///
    /// # Errors
    /// The worker pool could not start, the server failed, or a newer spool migrated the
    /// database.
    pub async fn serve_listeners(
        &self,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        if let Some(j) = &self.cfg.auth.jwt {
            // Refuse to start rather than serve with JWT sign-in broken.
            crate::jwt::JwtVerifier::new(j).map_err(AppError::Invalid)?;
        }
        self.run_serving(Some(listener), metrics_listener, shutdown)
            .await
    }

    /// [`Spool::run`], serving `/metrics` on `metrics_listener` meanwhile when given
    /// (`spool work` with `worker.metrics_listen`): this process's task counters and timings,
    /// which no other process has, and the queue depths.
    ///
    /// # Errors
    /// As [`Spool::run`].
    pub async fn work_listeners(
        &self,
        metrics_listener: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        self.run_serving(None, metrics_listener, shutdown).await
    }

    /// The workers until `shutdown`, with the API on `api` and `/metrics` on `metrics` when
    /// given. HTTP and the workers stop together: on the token, when the schema check stops
    /// them, or when the workers could not start.
    async fn run_serving(
        &self,
        api: Option<TcpListener>,
        metrics: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        let shutdown = shutdown.child_token();
        let tracker = tokio_util::task::TaskTracker::new();
        if api.is_some() || metrics.is_some() {
            let state = self.app_state(&shutdown);
            let opts = ServeOptions::from_config(&self.cfg.http);
            if let Some(ml) = metrics {
                tracker.spawn(serve_metrics(
                    ml,
                    state.clone(),
                    opts.clone(),
                    shutdown.clone(),
                ));
            }
            if let Some(l) = api {
                let app = router(state).layer(tower_http::trace::TraceLayer::new_for_http());
                tracker.spawn(serve_http(l, app, opts, shutdown.clone()));
            }
        }
        tracker.close();
        let workers = self.run_until(shutdown.clone()).await;
        shutdown.cancel();
        close_http(tracker).await;
        workers
    }

    /// What the HTTP handlers share, with the metrics recorder installed.
    fn app_state(&self, shutdown: &CancellationToken) -> AppState {
        AppState::new(
            self.store.clone(),
            self.cfg.clone(),
            self.clock.clone(),
            shutdown.clone(),
            install_metrics(),
        )
    }

    /// Stops the writer and closes the database (also done on drop).
    pub fn close(&self) {
        self.store.close();
    }
}

/// Serves `/metrics` on `listener` until `shutdown`. Scrapers are few: the operator's listener
/// does not get a second full share of descriptors.
async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    mut opts: ServeOptions,
    shutdown: CancellationToken,
) {
    opts.max_connections = opts.max_connections.min(METRICS_MAX_CONNECTIONS);
    serve_http(listener, metrics_router(state), opts, shutdown).await;
}

/// Waits for the HTTP servers of `tracker`, which end on their token; a connection (a stream)
/// still open after 5 s is cut.
async fn close_http(tracker: tokio_util::task::TaskTracker) {
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("http connections still open after 5 s; closing");
    }
}

/// Writes a file readable by its owner only, in full or not at all: the text goes to a new file
/// (`O_EXCL`, mode 0600, so nothing already there, nor a planted symlink, is written through),
/// is synced, and is renamed over `path`.
fn write_secret(path: &Path, text: &str) -> Result<(), AppError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| AppError::Io(format!("cannot write {}: {e}", path.display()));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(DATA_FILE_MODE)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// The process's Prometheus recorder, installed once.
fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0,
            ];
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    &buckets,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(
                            "spool_writer_batch_size".into(),
                        ),
                        &[
                            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                        ],
                    )
                })
                .and_then(|b| b.install_recorder())
                .ok()
        })
        .clone()
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled, so a signal that arrives right after start is not lost.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        let t = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let i = async {
            match int.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = t => {}
            _ = i => {}
        }
    }
}
