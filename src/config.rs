//! One typed configuration, read once at start: defaults, then `config/spool.toml` (or the file
//! given), then `SPOOL_*` environment variables, then validation with errors naming the field.

use crate::backoff::RetryPolicy;
use crate::store::Synchronous;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "data";
/// Default config file.
pub const DEFAULT_CONFIG_PATH: &str = "config/spool.toml";
/// Default `worker.concurrency`: task slots per process.
pub const DEFAULT_CONCURRENCY: u32 = 8;
/// Default `worker.lease_ms`: a dead worker's task runs again after this long.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// Smallest allowed lease.
pub const MIN_LEASE_MS: u64 = 500;
/// Default `worker.poll_interval_ms`: how often idle workers look for rows of other processes.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 500;
/// Default task timeout: ten minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 600_000;
/// Default `http.max_body_bytes`: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// Default cap of a message's content: 64 KiB.
pub const DEFAULT_MAX_MESSAGE: usize = 64 << 10;
/// Default `shutdown.grace_ms`.
pub const DEFAULT_GRACE_MS: u64 = 30_000;
/// Default `http.header_timeout_ms`: a request's head must arrive within 10 s of its first byte.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// Default `http.body_timeout_ms`: a request's body must arrive within 30 s of its head.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 30_000;
/// Default `http.idle_timeout_ms`: a keep-alive connection with no request is closed after 60 s.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default `http.max_connections`: open client connections; more wait in the accept backlog.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Default `limits.streams_per_user`: open SSE streams and long polls per user.
pub const DEFAULT_STREAMS_PER_USER: u32 = 32;
/// Default `limits.requests_per_second`: the sustained rate of one user's API requests.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 100;
/// Default `limits.requests_burst`: requests a user may send at once above the rate.
pub const DEFAULT_REQUESTS_BURST: u32 = 200;

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML for spool (unknown key, wrong type).
    #[error("config file {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Why, with the key.
        reason: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config: {field}: {reason}")]
    Invalid {
        /// The key, dotted.
        field: String,
        /// Why.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    worker: RawWorker,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    queues: BTreeMap<String, RawQueue>,
    #[serde(default)]
    kinds: BTreeMap<String, RawKind>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    synchronous: Option<String>,
    busy_timeout_ms: Option<u64>,
    readers: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    concurrency: Option<u32>,
    lease_ms: Option<u64>,
    poll_interval_ms: Option<u64>,
    queues: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    base_ms: Option<u64>,
    max_ms: Option<u64>,
    max_attempts: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    max_body_bytes: Option<usize>,
    metrics: Option<bool>,
    metrics_listen: Option<String>,
    metrics_auth: Option<String>,
    stall_timeout_ms: Option<u64>,
    header_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    completed: Option<String>,
    failed: Option<String>,
    interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    message_bytes: Option<usize>,
    streams_per_user: Option<u32>,
    requests_per_second: Option<u32>,
    requests_burst: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    concurrency: Option<u32>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawKind {
    command: Option<Vec<String>>,
    webhook: Option<String>,
    secret_env: Option<String>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Directory of `spool.db` and `admin.token`.
    pub data_dir: PathBuf,
    /// Database settings.
    pub database: DatabaseConfig,
    /// Worker pool settings.
    pub worker: WorkerConfig,
    /// Default retry policy.
    pub retry: RetryPolicy,
    /// HTTP settings.
    pub http: HttpConfig,
    /// Time running tasks get to finish on SIGTERM.
    pub shutdown_grace: Duration,
    /// Retention of finished tasks.
    pub retention: RetentionConfig,
    /// Largest message content, in bytes of JSON.
    pub max_message_bytes: usize,
    /// Per-user limits (`[limits]`).
    pub limits: LimitsConfig,
    /// Per-queue settings.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Per-kind settings and handlers.
    pub kinds: BTreeMap<String, KindConfig>,
}

/// `[database]`.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `PRAGMA synchronous`.
    pub synchronous: Synchronous,
    /// Wait for another process's write lock this long before `503`.
    pub busy_timeout_ms: u64,
    /// Read-only connections.
    pub readers: u32,
}

/// `[worker]`.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Task slots in this process; 0 runs no workers.
    pub concurrency: u32,
    /// Lease length.
    pub lease_ms: u64,
    /// Idle poll for rows written by other processes.
    pub poll_interval_ms: u64,
    /// Queues this process works.
    pub queues: Vec<String>,
}

/// `[http]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Whether `/metrics` is served.
    pub metrics: bool,
    /// A client that takes none of the data sent to it for this long is disconnected
    /// (TCP_USER_TIMEOUT), so a stalled SSE reader costs the server nothing for long.
    pub stall_timeout: Duration,
    /// A second listener serving only `/metrics` (the main one then does not serve it).
    pub metrics_listen: Option<SocketAddr>,
    /// Who may read `/metrics`.
    pub metrics_auth: MetricsAuth,
    /// A request's head must be complete this long after its first byte.
    pub header_timeout: Duration,
    /// A request's body must be complete this long after its head.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
    /// Open client connections at most; further ones wait in the listen backlog.
    pub max_connections: u32,
}

/// Who may read `/metrics` (`http.metrics_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAuth {
    /// No token (API.md's default).
    None,
    /// An admin token.
    Admin,
}

/// `[limits]`: per-user limits; 0 turns a limit off.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Open SSE streams and long polls per user.
    pub streams_per_user: u32,
    /// Sustained API requests per second per user.
    pub requests_per_second: u32,
    /// Requests a user may send at once (the bucket's size).
    pub requests_burst: u32,
}

/// `[retention]`: `None` keeps forever.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Completed and canceled tasks.
    pub completed: Option<Duration>,
    /// Failed tasks.
    pub failed: Option<Duration>,
    /// How often the pruner runs.
    pub interval: Duration,
}

/// `[queues.NAME]`.
#[derive(Debug, Clone, Default)]
pub struct QueueConfig {
    /// At most this many of the queue's tasks at once in this process.
    pub concurrency: Option<u32>,
}

/// How a kind is run.
#[derive(Debug, Clone, PartialEq)]
pub enum KindHandler {
    /// A child process per task.
    Command(Vec<String>),
    /// A signed POST per attempt.
    Webhook {
        /// The URL.
        url: String,
        /// The HMAC key (read from `secret_env` at start).
        secret: String,
    },
    /// Only settings; the handler is registered in Rust (or built in).
    None,
}

/// `[kinds.NAME]`.
#[derive(Debug, Clone)]
pub struct KindConfig {
    /// The handler.
    pub handler: KindHandler,
    /// The kind's attempt timeout.
    pub timeout_ms: Option<u64>,
    /// The kind's retry policy.
    pub retry: RetryPolicy,
}

impl Config {
    /// The defaults, as `config/spool.toml` shows them.
    pub fn defaults() -> Self {
        match Self::from_raw(RawConfig::default(), &|_| None) {
            Ok(c) => c,
            // INVARIANT: the defaults validate; a test proves it.
            #[allow(clippy::unreachable)]
            Err(e) => unreachable!("default config invalid: {e}"),
        }
    }

    /// Loads `path` (which must exist), or the default file if present, else the defaults; then
    /// applies `SPOOL_*` environment variables and validates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and field.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, &|k| std::env::var(k).ok())
    }

    /// As [`Config::load`] with an explicit environment (for tests).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and field.
    pub fn load_with_env(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (text, shown) = match path {
            Some(p) => (
                Some(std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?),
                p.display().to_string(),
            ),
            None => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                match std::fs::read_to_string(p) {
                    Ok(t) => (Some(t), p.display().to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, String::new()),
                    Err(e) => {
                        return Err(ConfigError::Read {
                            path: p.display().to_string(),
                            reason: e.to_string(),
                        })
                    }
                }
            }
        };
        let raw: RawConfig = match text {
            Some(t) => parse_toml(&t).map_err(|reason| ConfigError::Parse {
                path: shown,
                reason,
            })?,
            None => RawConfig::default(),
        };
        Self::from_raw(raw, env)
    }

    fn from_raw(
        mut raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        apply_env(&mut raw, env)?;

        let listen_text = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen_text:?} is not an address like 127.0.0.1:8787"),
            )
        })?;
        let data_dir = raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }

        let synchronous = match raw.database.synchronous.as_deref().unwrap_or("full") {
            s if s.eq_ignore_ascii_case("full") => Synchronous::Full,
            s if s.eq_ignore_ascii_case("normal") => Synchronous::Normal,
            other => {
                return Err(invalid(
                    "database.synchronous",
                    format!("{other:?} is not one of \"full\", \"normal\""),
                ))
            }
        };
        let busy_timeout_ms = raw.database.busy_timeout_ms.unwrap_or(5000);
        if !(1..=600_000).contains(&busy_timeout_ms) {
            return Err(invalid("database.busy_timeout_ms", "must be 1..=600000"));
        }
        let readers = raw.database.readers.unwrap_or(8);
        if !(1..=256).contains(&readers) {
            return Err(invalid("database.readers", "must be 1..=256"));
        }

        let concurrency = raw.worker.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency > 10_000 {
            return Err(invalid("worker.concurrency", "must be at most 10000"));
        }
        let lease_ms = raw.worker.lease_ms.unwrap_or(DEFAULT_LEASE_MS);
        if !(MIN_LEASE_MS..=86_400_000).contains(&lease_ms) {
            return Err(invalid(
                "worker.lease_ms",
                format!("must be {MIN_LEASE_MS}..=86400000"),
            ));
        }
        let poll_interval_ms = raw
            .worker
            .poll_interval_ms
            .unwrap_or(DEFAULT_POLL_INTERVAL_MS);
        if !(10..=60_000).contains(&poll_interval_ms) {
            return Err(invalid("worker.poll_interval_ms", "must be 10..=60000"));
        }
        let queues = raw.worker.queues.unwrap_or_else(|| vec!["default".into()]);
        for q in &queues {
            if !crate::task::valid_name(q) {
                return Err(invalid(
                    "worker.queues",
                    format!("{q:?} is not a queue name"),
                ));
            }
        }

        let retry = retry_policy(
            "retry",
            raw.retry.base_ms,
            raw.retry.max_ms,
            raw.retry.max_attempts,
            &RetryPolicy::default(),
        )?;

        let max_body_bytes = raw.http.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
        if !(1024..=(256 << 20)).contains(&max_body_bytes) {
            return Err(invalid("http.max_body_bytes", "must be 1024..=268435456"));
        }

        let stall_timeout_ms = raw.http.stall_timeout_ms.unwrap_or(30_000);
        if !(1000..=3_600_000).contains(&stall_timeout_ms) {
            return Err(invalid("http.stall_timeout_ms", "must be 1000..=3600000"));
        }
        let http = http_config(raw.http, max_body_bytes, stall_timeout_ms)?;
        let limits = limits_config(&raw.limits)?;
        let retention = RetentionConfig {
            completed: retention_value(
                "retention.completed",
                raw.retention.completed.as_deref(),
                "7d",
            )?,
            failed: retention_value("retention.failed", raw.retention.failed.as_deref(), "30d")?,
            interval: Duration::from_millis(raw.retention.interval_ms.unwrap_or(60_000).max(100)),
        };

        let mut queues_cfg = BTreeMap::new();
        for (name, q) in raw.queues {
            if !crate::task::valid_name(&name) {
                return Err(invalid(format!("queues.{name}"), "not a queue name"));
            }
            if q.concurrency == Some(0) {
                return Err(invalid(
                    format!("queues.{name}.concurrency"),
                    "must be at least 1",
                ));
            }
            queues_cfg.insert(
                name,
                QueueConfig {
                    concurrency: q.concurrency,
                },
            );
        }

        let mut kinds = BTreeMap::new();
        for (name, k) in raw.kinds {
            let field = format!("kinds.{name}");
            if !crate::task::valid_name(&name) {
                return Err(invalid(field, "not a kind name"));
            }
            let handler = match (&k.command, &k.webhook) {
                (Some(_), Some(_)) => {
                    return Err(invalid(field, "set either command or webhook, not both"))
                }
                (Some(cmd), None) => {
                    if cmd.is_empty() || cmd[0].is_empty() {
                        return Err(invalid(format!("{field}.command"), "must name a program"));
                    }
                    KindHandler::Command(cmd.clone())
                }
                (None, Some(url)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(invalid(
                            format!("{field}.webhook"),
                            "must be an http(s) URL",
                        ));
                    }
                    let var = k.secret_env.clone().ok_or_else(|| {
                        invalid(
                            format!("{field}.secret_env"),
                            "a webhook kind needs secret_env",
                        )
                    })?;
                    let secret = env(&var).filter(|s| !s.is_empty()).ok_or_else(|| {
                        invalid(
                            format!("{field}.secret_env"),
                            format!("environment variable {var} is not set"),
                        )
                    })?;
                    KindHandler::Webhook {
                        url: url.clone(),
                        secret,
                    }
                }
                (None, None) => KindHandler::None,
            };
            if k.timeout_ms == Some(0) {
                return Err(invalid(format!("{field}.timeout_ms"), "must be at least 1"));
            }
            let retry = retry_policy(
                &field,
                k.retry_base_ms,
                k.retry_max_ms,
                k.max_attempts,
                &retry,
            )?;
            kinds.insert(
                name,
                KindConfig {
                    handler,
                    timeout_ms: k.timeout_ms,
                    retry,
                },
            );
        }

        Ok(Config {
            listen,
            data_dir,
            database: DatabaseConfig {
                synchronous,
                busy_timeout_ms,
                readers,
            },
            worker: WorkerConfig {
                concurrency,
                lease_ms,
                poll_interval_ms,
                queues,
            },
            retry,
            http,
            shutdown_grace: Duration::from_millis(
                raw.shutdown.grace_ms.unwrap_or(DEFAULT_GRACE_MS),
            ),
            retention,
            max_message_bytes: raw.limits.message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE),
            limits,
            queues: queues_cfg,
            kinds,
        })
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("spool.db")
    }

    /// The retry policy of a kind.
    pub fn retry_for(&self, kind: &str) -> RetryPolicy {
        self.kinds.get(kind).map(|k| k.retry).unwrap_or(self.retry)
    }

    /// The timeout of a kind's attempts when the task sets none.
    pub fn timeout_for(&self, kind: &str) -> u64 {
        self.kinds
            .get(kind)
            .and_then(|k| k.timeout_ms)
            .unwrap_or(DEFAULT_TIMEOUT_MS)
    }
}

/// Validates `[http]` (less the body and stall limits, checked with the rest before it).
fn http_config(
    raw: RawHttp,
    max_body_bytes: usize,
    stall_timeout_ms: u64,
) -> Result<HttpConfig, ConfigError> {
    let metrics_listen = match raw.metrics_listen.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => Some(t.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "http.metrics_listen",
                format!("{t:?} is not an address like 127.0.0.1:9187"),
            )
        })?),
    };
    let metrics_auth = match raw.metrics_auth.as_deref().unwrap_or("none") {
        "none" => MetricsAuth::None,
        "admin" => MetricsAuth::Admin,
        other => {
            return Err(invalid(
                "http.metrics_auth",
                format!("{other:?} is not one of \"none\", \"admin\""),
            ))
        }
    };
    let ms = |field: &str, v: Option<u64>, default: u64| {
        let v = v.unwrap_or(default);
        if (100..=3_600_000).contains(&v) {
            Ok(Duration::from_millis(v))
        } else {
            Err(invalid(field, "must be 100..=3600000"))
        }
    };
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(invalid("http.max_connections", "must be 1..=1000000"));
    }
    Ok(HttpConfig {
        max_body_bytes,
        metrics: raw.metrics.unwrap_or(true),
        stall_timeout: Duration::from_millis(stall_timeout_ms),
        metrics_listen,
        metrics_auth,
        header_timeout: ms(
            "http.header_timeout_ms",
            raw.header_timeout_ms,
            DEFAULT_HEADER_TIMEOUT_MS,
        )?,
        body_timeout: ms(
            "http.body_timeout_ms",
            raw.body_timeout_ms,
            DEFAULT_BODY_TIMEOUT_MS,
        )?,
        idle_timeout: ms(
            "http.idle_timeout_ms",
            raw.idle_timeout_ms,
            DEFAULT_IDLE_TIMEOUT_MS,
        )?,
        max_connections,
    })
}

/// Validates the per-user limits of `[limits]`.
fn limits_config(raw: &RawLimits) -> Result<LimitsConfig, ConfigError> {
    let l = LimitsConfig {
        streams_per_user: raw.streams_per_user.unwrap_or(DEFAULT_STREAMS_PER_USER),
        requests_per_second: raw
            .requests_per_second
            .unwrap_or(DEFAULT_REQUESTS_PER_SECOND),
        requests_burst: raw.requests_burst.unwrap_or(DEFAULT_REQUESTS_BURST),
    };
    if l.streams_per_user > 1_000_000 {
        return Err(invalid("limits.streams_per_user", "must be 0..=1000000"));
    }
    if l.requests_per_second > 1_000_000 {
        return Err(invalid("limits.requests_per_second", "must be 0..=1000000"));
    }
    if l.requests_per_second > 0 && l.requests_burst == 0 {
        return Err(invalid(
            "limits.requests_burst",
            "must be at least 1 when requests_per_second is set",
        ));
    }
    if l.requests_burst > 1_000_000 {
        return Err(invalid("limits.requests_burst", "must be 0..=1000000"));
    }
    Ok(l)
}

/// Parses TOML into the raw config; errors name the key (`worker.concurrency: invalid type`).
fn parse_toml(text: &str) -> Result<RawConfig, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        e.message().to_string()
            + &e.span()
                .map(|s| format!(" (at byte {})", s.start))
                .unwrap_or_default()
    })?;
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.trim_end();
        if path.is_empty() || path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

fn retry_policy(
    field: &str,
    base: Option<u64>,
    max: Option<u64>,
    attempts: Option<u32>,
    fallback: &RetryPolicy,
) -> Result<RetryPolicy, ConfigError> {
    let (bf, mf, af) = if field == "retry" {
        (
            "retry.base_ms".to_string(),
            "retry.max_ms".to_string(),
            "retry.max_attempts".to_string(),
        )
    } else {
        (
            format!("{field}.retry_base_ms"),
            format!("{field}.retry_max_ms"),
            format!("{field}.max_attempts"),
        )
    };
    let p = RetryPolicy {
        base_ms: base.unwrap_or(fallback.base_ms),
        max_ms: max.unwrap_or(fallback.max_ms),
        max_attempts: attempts.unwrap_or(fallback.max_attempts),
    };
    if p.base_ms == 0 {
        return Err(invalid(bf, "must be at least 1"));
    }
    if p.max_ms < p.base_ms {
        return Err(invalid(mf, "must be at least the base delay"));
    }
    if !(1..=100).contains(&p.max_attempts) {
        return Err(invalid(af, "must be 1..=100"));
    }
    Ok(p)
}

fn retention_value(
    field: &str,
    v: Option<&str>,
    default: &str,
) -> Result<Option<Duration>, ConfigError> {
    let v = v.unwrap_or(default);
    if v == "forever" {
        return Ok(None);
    }
    humantime::parse_duration(v).map(Some).map_err(|e| {
        invalid(
            field,
            format!("{v:?} is not a duration like \"7d\" or \"forever\" ({e})"),
        )
    })
}

/// `SPOOL_*` variables that override keys: the name is the dotted key, upper-cased, dots as `_`.
fn apply_env(raw: &mut RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    fn num<T: std::str::FromStr>(var: &str, v: String) -> Result<T, ConfigError> {
        v.trim()
            .parse()
            .map_err(|_| invalid(var, format!("{v:?} is not a number")))
    }
    if let Some(v) = env("SPOOL_LISTEN") {
        raw.listen = Some(v);
    }
    if let Some(v) = env("SPOOL_DATA_DIR") {
        raw.data_dir = Some(v.into());
    }
    if let Some(v) = env("SPOOL_DATABASE_SYNCHRONOUS") {
        raw.database.synchronous = Some(v);
    }
    if let Some(v) = env("SPOOL_DATABASE_BUSY_TIMEOUT_MS") {
        raw.database.busy_timeout_ms = Some(num("SPOOL_DATABASE_BUSY_TIMEOUT_MS", v)?);
    }
    if let Some(v) = env("SPOOL_WORKER_CONCURRENCY") {
        raw.worker.concurrency = Some(num("SPOOL_WORKER_CONCURRENCY", v)?);
    }
    if let Some(v) = env("SPOOL_WORKER_LEASE_MS") {
        raw.worker.lease_ms = Some(num("SPOOL_WORKER_LEASE_MS", v)?);
    }
    if let Some(v) = env("SPOOL_WORKER_POLL_INTERVAL_MS") {
        raw.worker.poll_interval_ms = Some(num("SPOOL_WORKER_POLL_INTERVAL_MS", v)?);
    }
    if let Some(v) = env("SPOOL_WORKER_QUEUES") {
        raw.worker.queues = Some(v.split(',').map(|s| s.trim().to_string()).collect());
    }
    if let Some(v) = env("SPOOL_RETRY_BASE_MS") {
        raw.retry.base_ms = Some(num("SPOOL_RETRY_BASE_MS", v)?);
    }
    if let Some(v) = env("SPOOL_RETRY_MAX_MS") {
        raw.retry.max_ms = Some(num("SPOOL_RETRY_MAX_MS", v)?);
    }
    if let Some(v) = env("SPOOL_RETRY_MAX_ATTEMPTS") {
        raw.retry.max_attempts = Some(num("SPOOL_RETRY_MAX_ATTEMPTS", v)?);
    }
    if let Some(v) = env("SPOOL_HTTP_MAX_BODY_BYTES") {
        raw.http.max_body_bytes = Some(num("SPOOL_HTTP_MAX_BODY_BYTES", v)?);
    }
    if let Some(v) = env("SPOOL_HTTP_METRICS") {
        raw.http.metrics = Some(match v.as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(invalid("SPOOL_HTTP_METRICS", "must be true or false")),
        });
    }
    if let Some(v) = env("SPOOL_HTTP_METRICS_LISTEN") {
        raw.http.metrics_listen = Some(v);
    }
    if let Some(v) = env("SPOOL_HTTP_METRICS_AUTH") {
        raw.http.metrics_auth = Some(v);
    }
    if let Some(v) = env("SPOOL_HTTP_MAX_CONNECTIONS") {
        raw.http.max_connections = Some(num("SPOOL_HTTP_MAX_CONNECTIONS", v)?);
    }
    if let Some(v) = env("SPOOL_LIMITS_STREAMS_PER_USER") {
        raw.limits.streams_per_user = Some(num("SPOOL_LIMITS_STREAMS_PER_USER", v)?);
    }
    if let Some(v) = env("SPOOL_LIMITS_REQUESTS_PER_SECOND") {
        raw.limits.requests_per_second = Some(num("SPOOL_LIMITS_REQUESTS_PER_SECOND", v)?);
    }
    if let Some(v) = env("SPOOL_SHUTDOWN_GRACE_MS") {
        raw.shutdown.grace_ms = Some(num("SPOOL_SHUTDOWN_GRACE_MS", v)?);
    }
    if let Some(v) = env("SPOOL_RETENTION_COMPLETED") {
        raw.retention.completed = Some(v);
    }
    if let Some(v) = env("SPOOL_RETENTION_FAILED") {
        raw.retention.failed = Some(v);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "t".into(),
            reason: e.to_string(),
        })?;
        Config::from_raw(raw, &|_| None)
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(c.db_path(), PathBuf::from("data/spool.db"));
        assert_eq!(c.worker.concurrency, 8);
        assert_eq!(c.worker.lease_ms, 30_000);
        assert_eq!(c.retry, RetryPolicy::default());
        assert_eq!(c.database.synchronous, Synchronous::Full);
    }

    #[test]
    fn the_shipped_config_file_is_valid() {
        let text = include_str!("../config/spool.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8787");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        let e = parse("[worker]\nconcurency = 3\n").unwrap_err().to_string();
        assert!(e.contains("concurency"), "{e}");
        let e = parse("[worker]\nlease_ms = 10\n").unwrap_err().to_string();
        assert!(e.contains("worker.lease_ms"), "{e}");
        let e = parse("[database]\nsynchronous = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("database.synchronous"), "{e}");
    }

    #[test]
    fn webhook_kind_needs_its_secret_variable() {
        let e = parse(
            "[kinds.n]\nwebhook = \"http://127.0.0.1:1/h\"\nsecret_env = \"NOPE_SECRET_X\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("NOPE_SECRET_X"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let raw: RawConfig = toml::from_str("listen = \"127.0.0.1:1\"").unwrap();
        let c = Config::from_raw(raw, &|k| match k {
            "SPOOL_LISTEN" => Some("127.0.0.1:2".into()),
            "SPOOL_WORKER_CONCURRENCY" => Some("3".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.worker.concurrency, 3);
    }

    #[test]
    fn hardening_keys_have_defaults_and_name_the_field() {
        let c = Config::defaults();
        assert_eq!(c.http.header_timeout, Duration::from_secs(10));
        assert_eq!(c.http.body_timeout, Duration::from_secs(30));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.http.max_connections, 10_000);
        assert_eq!(c.http.metrics_auth, MetricsAuth::None);
        assert_eq!(c.http.metrics_listen, None);
        assert_eq!(c.limits.streams_per_user, 32);
        assert_eq!(
            (c.limits.requests_per_second, c.limits.requests_burst),
            (100, 200)
        );
        let e = parse("[http]\nmetrics_auth = \"token\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.metrics_auth"), "{e}");
        let e = parse("[http]\nmetrics_listen = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.metrics_listen"), "{e}");
        let e = parse("[http]\nheader_timeout_ms = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.header_timeout_ms"), "{e}");
        let e = parse("[limits]\nrequests_burst = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.requests_burst"), "{e}");
    }

    #[test]
    fn kind_settings_override_retry_defaults() {
        let c = parse("[kinds.echo]\ncommand=[\"cat\"]\nmax_attempts = 3\nretry_base_ms = 500\n")
            .unwrap();
        let p = c.retry_for("echo");
        assert_eq!((p.base_ms, p.max_attempts, p.max_ms), (500, 3, 300_000));
        assert_eq!(c.retry_for("other"), RetryPolicy::default());
    }
}
