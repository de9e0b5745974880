//! Wiring and shutdown order. [`Spool`] is the embeddable queue: build it with handlers, enqueue
//! from your own code, then `run` the worker pool or `serve` HTTP and workers together.
//!
//! Shutdown order: the signal cancels the root token; HTTP stops accepting and streams end; the
//! pool stops claiming, waits `shutdown.grace_ms` for running attempts, stops the rest and
//! releases their leases; the store's writer finishes what it was given and closes last.

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::executor::{Handler, Registry};
use crate::http::serve::{serve as serve_http, ServeOptions};
use crate::http::{hash_token, metrics_router, new_token, router, AppState};
use crate::store::{SqliteStore, StoreError, StoreOptions};
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

    /// Uses `clock` instead of the wall clock (tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
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
        Ok(Spool {
            cfg: Arc::new(cfg),
            store: Arc::new(store),
            registry: Arc::new(registry),
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
        })
    }
}

/// Validates an enqueue of the embedded API or the CLI into a task, by the same rules as the
/// HTTP API ([`crate::queue::settle`]), touching nothing: a refusal writes nothing.
///
/// # Errors
/// `AppError::Invalid` naming the field.
pub fn new_task(
    cfg: &Config,
    kind: &str,
    payload: Value,
    o: EnqueueOptions,
    now: crate::clock::UnixMillis,
) -> Result<NewTask, AppError> {
    let queue = o.queue.unwrap_or_else(|| "default".into());
    if !crate::task::valid_name(kind) {
        return Err(AppError::Invalid(
            "kind must be 1 to 128 characters of [A-Za-z0-9._:-]".into(),
        ));
    }
    if !crate::task::valid_name(&queue) {
        return Err(AppError::Invalid(
            "queue must be 1 to 128 characters of [A-Za-z0-9._:-]".into(),
        ));
    }
    if !(-100..=100).contains(&o.priority) {
        return Err(AppError::Invalid(
            "priority must be between -100 and 100".into(),
        ));
    }
    let asked = crate::queue::Asked {
        max_attempts: o.max_attempts.map(i64::from),
        timeout_ms: o.timeout_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
        run_at: None,
        delay_ms: o
            .delay
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    };
    let settled =
        crate::queue::settle(&cfg.enqueue_rules(kind), asked, now).map_err(AppError::Invalid)?;
    Ok(NewTask {
        id: TaskId::new(),
        user_id: o.user.unwrap_or_else(|| "admin".into()),
        queue,
        kind: kind.to_string(),
        payload,
        priority: o.priority,
        run_at: settled.run_at,
        max_attempts: settled.max_attempts,
        timeout_ms: settled.timeout_ms,
        idempotency_key: None,
        request_hash: None,
    })
}

/// Makes the data directory and opens the store of `cfg`.
///
/// # Errors
/// The directory cannot be made, or the database cannot be opened.
pub fn open_store(cfg: &Config) -> Result<SqliteStore, AppError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        AppError::Io(format!(
            "cannot create data_dir {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    let mut opts = StoreOptions::new(cfg.db_path());
    opts.synchronous = cfg.database.synchronous;
    opts.busy_timeout_ms = cfg.database.busy_timeout_ms;
    opts.readers = cfg.database.readers;
    // 0 in config turns a limit off.
    let limit = |v: u64| if v == 0 { u64::MAX } else { v };
    opts.limits = crate::store::Limits {
        pending_tasks_per_user: limit(cfg.limits.pending_tasks_per_user),
        payload_bytes_per_user: limit(cfg.limits.payload_bytes_per_user),
        messages_per_task: limit(cfg.limits.messages_per_task),
    };
    SqliteStore::open(opts).map_err(|e| match e {
        StoreError::Unavailable(m) => AppError::Io(format!(
            "{m} (is data_dir {} writable?)",
            cfg.data_dir.display()
        )),
        e => AppError::Store(e),
    })
}

/// A queue with its handlers, embeddable in a Rust program.
pub struct Spool {
    cfg: Arc<Config>,
    store: Arc<SqliteStore>,
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("db", &self.store.path())
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
    /// Owner (default `admin`).
    pub user: Option<String>,
}

impl Spool {
    /// A builder.
    pub fn builder() -> SpoolBuilder {
        SpoolBuilder::default()
    }

    /// The store.
    pub fn store(&self) -> &Arc<SqliteStore> {
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
        let task = new_task(&self.cfg, kind, payload, o, now)?;
        let mut out = self.store.task_insert(vec![task], now).await?;
        out.pop()
            .map(|i| Arc::unwrap_or_clone(i.task))
            .ok_or_else(|| AppError::Invalid("insert returned nothing".into()))
    }

    /// Runs the worker pool and the retention pruner until `shutdown` is cancelled, then stops
    /// as `[shutdown]` says.
    ///
    /// # Errors
    /// The worker could not register in the database.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), AppError> {
        let pruner = self.spawn_pruner(shutdown.clone());
        let res = if self.cfg.worker.concurrency > 0 {
            let pool = WorkerPool::new(
                self.store.clone(),
                self.registry.clone(),
                self.clock.clone(),
                self.cfg.clone(),
            );
            pool.run(shutdown.clone()).await.map_err(AppError::from)
        } else {
            shutdown.cancelled().await;
            Ok(())
        };
        pruner.abort();
        res
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
                        if let Err(e) = prune_once(&store, &cfg.retention, clock.now()).await {
                            tracing::warn!(error = %e, "pruning failed; will retry");
                        }
                        if let Err(e) = prune_workdirs(&store, &cfg, 1000).await {
                            tracing::warn!(error = %e, "pruning working directories failed; will retry");
                        }
                    }
                }
            }
        })
    }

    /// Writes a new admin token to `<data_dir>/admin.token` (0600) when the database has no
    /// user yet; returns its path then.
    ///
    /// # Errors
    /// The file cannot be written or the database is unavailable.
    pub async fn bootstrap_admin(&self) -> Result<Option<PathBuf>, AppError> {
        let has_users = self
            .store
            .read_raw(|c| {
                Ok(c.query_row("SELECT EXISTS (SELECT 1 FROM users)", [], |r| {
                    r.get::<_, bool>(0)
                })?)
            })
            .await?;
        if has_users {
            return Ok(None);
        }
        let token = new_token();
        let path = self.cfg.data_dir.join("admin.token");
        write_secret(&path, &format!("{token}\n"))?;
        if self
            .store
            .user_bootstrap_admin(hash_token(&token), self.clock.now())
            .await?
        {
            Ok(Some(path))
        } else {
            Ok(None)
        }
    }

    /// Serves HTTP on `listener` (and `/metrics` on `http.metrics_listen` when set) and runs
    /// the worker pool until `shutdown`.
    ///
    /// # Errors
    /// The metrics address cannot be bound, the worker pool could not start, or the server
    /// failed.
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
    /// The worker pool could not start, or the server failed.
    pub async fn serve_listeners(
        &self,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        let metrics = install_metrics();
        let state = AppState::new(
            self.store.clone(),
            self.cfg.clone(),
            self.clock.clone(),
            shutdown.clone(),
            metrics,
        );
        let opts = ServeOptions::from_config(&self.cfg.http);
        let tracker = tokio_util::task::TaskTracker::new();
        if let Some(ml) = metrics_listener {
            let app = metrics_router(state.clone());
            // Scrapers are few: the operator's listener does not get a second full share of
            // descriptors.
            let mut mopts = opts.clone();
            mopts.max_connections = mopts.max_connections.min(METRICS_MAX_CONNECTIONS);
            tracker.spawn(serve_http(ml, app, mopts, shutdown.clone()));
        }
        let app = router(state).layer(tower_http::trace::TraceLayer::new_for_http());
        tracker.spawn(serve_http(listener, app, opts, shutdown.clone()));
        tracker.close();
        let workers = self.run(shutdown.clone()).await;
        // Streams end on the token; a connection still open after a while is cut.
        if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("http connections still open after 5 s; closing");
        }
        workers
    }

    /// Stops the writer and closes the database (also done on drop).
    pub fn close(&self) {
        self.store.close();
    }
}

/// Writes a file readable by its owner only.
fn write_secret(path: &Path, text: &str) -> Result<(), AppError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| AppError::Io(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(())
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
