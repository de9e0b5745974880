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
/// Default `worker.workdir`: the parent of each command task's own working directory, a
/// directory of this name beside `data_dir` (never inside it).
pub const DEFAULT_WORKDIR: &str = "work";
/// Default `limits.pending_tasks_per_user`: unfinished (pending or running) tasks a user may have.
pub const DEFAULT_PENDING_TASKS_PER_USER: u64 = 100_000;
/// Default `limits.payload_bytes_per_user`: bytes of payload a user's stored tasks may hold (1 GiB).
pub const DEFAULT_PAYLOAD_BYTES_PER_USER: u64 = 1 << 30;
/// Default `limits.messages_per_task`: messages one task may have; a running attempt's
/// messages past it are dropped after one `truncated` message.
pub const DEFAULT_MESSAGES_PER_TASK: u64 = 10_000;
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
    auth: RawAuth,
    #[serde(default)]
    queues: BTreeMap<String, RawQueue>,
    #[serde(default)]
    kinds: BTreeMap<String, RawKind>,
    #[serde(default)]
    schedules: BTreeMap<String, RawSchedule>,
    #[serde(default)]
    docker: RawDocker,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: Option<String>,
    timezone: Option<String>,
    task: Option<crate::schedule::ScheduleTask>,
    catch_up: Option<String>,
    catch_up_max: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    host: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    image: Option<String>,
    command: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    workdir: Option<String>,
    network: Option<String>,
    cpus: Option<f64>,
    memory_mb: Option<u64>,
    pids_limit: Option<i64>,
    user: Option<String>,
    read_only_root: Option<bool>,
    mounts: Option<Vec<String>>,
    keep_workspace_s: Option<u64>,
    stop_grace_s: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    synchronous: Option<String>,
    busy_timeout_ms: Option<u64>,
    readers: Option<u32>,
    max_connections: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    concurrency: Option<u32>,
    lease_ms: Option<u64>,
    poll_interval_ms: Option<u64>,
    prefetch: Option<u32>,
    queues: Option<Vec<String>>,
    workdir: Option<PathBuf>,
    api_url: Option<String>,
    metrics_listen: Option<String>,
    /// `HOSTNAME` from the environment, read with the rest of it at load.
    #[serde(skip)]
    host: Option<String>,
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
    stream_token_ttl_ms: Option<u64>,
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
    changes: Option<String>,
    changes_kept: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    message_bytes: Option<usize>,
    pending_tasks_per_user: Option<u64>,
    payload_bytes_per_user: Option<u64>,
    messages_per_task: Option<u64>,
    streams_per_user: Option<u32>,
    requests_per_second: Option<u32>,
    requests_burst: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    jwt: Option<RawJwt>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    jwks_url: Option<String>,
    hs256_secret_env: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    user_claim: Option<String>,
    admin_claim: Option<String>,
    leeway_s: Option<u64>,
    jwks_min_refresh_ms: Option<u64>,
    jwks_max_age_s: Option<u64>,
    jwks_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    concurrency: Option<u32>,
    global_concurrency: Option<u32>,
    per_key_concurrency: Option<u32>,
    rate: Option<String>,
    burst: Option<u32>,
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
    env: Option<BTreeMap<String, String>>,
    user: Option<String>,
    keep_workdir: Option<bool>,
    stdin: Option<String>,
    users: Option<Vec<String>>,
    container: Option<RawContainer>,
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
    /// Per-user limits and quotas (`[limits]`).
    pub limits: LimitsConfig,
    /// Per-queue settings.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Per-kind settings and handlers.
    pub kinds: BTreeMap<String, KindConfig>,
    /// `[auth]`: bearer tokens besides spool's own.
    pub auth: AuthConfig,
    /// `[schedules.NAME]`: cron schedules, upserted into the database at start.
    pub schedules: Vec<crate::schedule::ScheduleSpec>,
    /// The container engine's endpoint (`[docker] host`, else `DOCKER_HOST`, else
    /// [`DEFAULT_DOCKER_HOST`]); used only when a container kind is configured.
    pub docker_host: String,
}

/// Whether loading the config reads the secrets that only running workers and the server need
/// (webhook keys, the JWT HMAC secret) from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// `serve` and `work`: a secret variable that is unset is an error naming it.
    Required,
    /// Tools that run no workers and serve nothing (`token`, `inspect`, `migrate`, `drill`,
    /// `enqueue`): secrets are not needed and, if unset, left empty. A config loaded this way
    /// must not be used to run workers or serve.
    Skip,
}

/// Default `auth.jwt.user_claim`.
pub const DEFAULT_JWT_USER_CLAIM: &str = "sub";
/// Default `auth.jwt.leeway_s`: clock skew allowed on `exp` and `nbf`, seconds.
pub const DEFAULT_JWT_LEEWAY_S: u64 = 30;
/// Default `auth.jwt.jwks_min_refresh_ms`: the JWKS is fetched at most this often, however many
/// unknown key ids arrive.
pub const DEFAULT_JWKS_MIN_REFRESH_MS: u64 = 10_000;
/// Default `auth.jwt.jwks_max_age_s`: cached keys older than this are fetched again when used.
pub const DEFAULT_JWKS_MAX_AGE_S: u64 = 3600;
/// Default `auth.jwt.jwks_timeout_ms`: connect plus response time of one JWKS fetch.
pub const DEFAULT_JWKS_TIMEOUT_MS: u64 = 5000;
/// Shortest HS256 secret accepted, bytes (RFC 7518: at least the hash size).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// `[auth]`.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// `[auth.jwt]`: JWTs of an identity provider accepted as bearer tokens.
    pub jwt: Option<JwtConfig>,
}

/// `[auth.jwt]`.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Where the verification keys come from.
    pub keys: JwtKeys,
    /// The `iss` a token must carry.
    pub issuer: String,
    /// An `aud` a token must carry.
    pub audience: String,
    /// The claim whose value names the user (with the issuer, the user's identity).
    pub user_claim: String,
    /// The claim that makes the user an admin, if any.
    pub admin_claim: Option<AdminClaim>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_s: u64,
    /// The JWKS is fetched at most this often.
    pub jwks_min_refresh: Duration,
    /// Cached keys older than this are fetched again when next used.
    pub jwks_max_age: Duration,
    /// Time limit of one JWKS fetch.
    pub jwks_timeout: Duration,
}

/// The keys JWTs are checked with.
#[derive(Clone)]
pub enum JwtKeys {
    /// RSA, EC or EdDSA public keys from a JWKS URL, chosen by the token's `kid`.
    Jwks {
        /// The JWKS URL.
        url: String,
    },
    /// One HMAC secret (HS256 only).
    Hs256 {
        /// The secret, read from `hs256_secret_env`.
        secret: String,
    },
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Jwks { url } => f.debug_struct("Jwks").field("url", url).finish(),
            Self::Hs256 { .. } => f.write_str("Hs256 { secret: <hidden> }"),
        }
    }
}

/// `auth.jwt.admin_claim`: `"NAME"` (the claim is boolean `true`) or `"NAME=VALUE"` (the claim
/// is the string VALUE, or an array holding it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminClaim {
    /// The claim is `true`.
    True(String),
    /// The claim is this string or an array containing it.
    Equals(String, String),
}

/// Where the database is: `database.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://PATH`: the embedded store on this file (a relative path is taken from the
    /// working directory; `sqlite:///abs/path` is absolute).
    Sqlite(PathBuf),
    /// `postgres://user:password@host:port/db` (or `postgresql://`): the PostgreSQL store, for
    /// many processes on many hosts. Shown without its password.
    Postgres(crate::store::PostgresUrl),
}

impl DatabaseUrl {
    /// Parses `database.url`; an unknown scheme is an error naming the key.
    ///
    /// # Errors
    /// Not a URL of a scheme this build knows, or an empty path.
    pub fn parse(v: &str) -> Result<Self, ConfigError> {
        let Some((scheme, rest)) = v.split_once("://") else {
            return Err(invalid(
                "database.url",
                format!("{v:?} is not a URL like \"sqlite://data/spool.db\""),
            ));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                if rest.is_empty() || rest.contains('?') || rest.contains('#') {
                    return Err(invalid(
                        "database.url",
                        format!("{v:?} names no database file (sqlite://PATH, no options)"),
                    ));
                }
                Ok(Self::Sqlite(PathBuf::from(rest)))
            }
            "postgres" | "postgresql" => crate::store::PostgresUrl::parse(v)
                .map(Self::Postgres)
                .map_err(|e| invalid("database.url", e)),
            other => Err(invalid(
                "database.url",
                format!(
                    "the scheme {other:?} is not one this spool knows (known: \"sqlite\", \"postgres\")"
                ),
            )),
        }
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Self::Postgres(u) => write!(f, "{u}"),
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Where the database is (default: `sqlite://<data_dir>/spool.db`).
    pub url: DatabaseUrl,
    /// `PRAGMA synchronous`.
    pub synchronous: Synchronous,
    /// Wait for another process's write lock this long before `503`.
    pub busy_timeout_ms: u64,
    /// Read-only connections.
    pub readers: u32,
    /// PostgreSQL only: connections in this process's pool, at most.
    pub max_connections: u32,
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
    /// Tasks claimed ahead of free slots (leased like any claim), so a slot that frees starts
    /// its next task without waiting for a commit.
    pub prefetch: u32,
    /// Queues this process works.
    pub queues: Vec<String>,
    /// Parent of each command task's own working directory (outside the data directory).
    pub workdir: PathBuf,
    /// The host name workers are registered under: `HOSTNAME` from the environment (read at
    /// load), else the system's host name (a service started by systemd has no `HOSTNAME`).
    pub host: String,
    /// Where a task reaches spool's API (`SPOOL_URL` of command tasks): `worker.api_url`, else
    /// `http://` and the listen address (a wildcard address as loopback).
    pub api_url: String,
    /// Where `spool work` serves `/metrics` (its own listener; `serve` uses
    /// `http.metrics_listen`): unset, `spool work` serves nothing.
    pub metrics_listen: Option<SocketAddr>,
    /// `api_url` was not configured: it follows the address `serve` binds (see
    /// [`Config::bound_to`]).
    pub api_url_from_listen: bool,
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
    /// How long a stream token (`POST /v1/tasks/{id}/stream_token`) stays good.
    pub stream_token_ttl: Duration,
}

/// Who may read `/metrics` (`http.metrics_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAuth {
    /// No token (API.md's default).
    None,
    /// An admin token.
    Admin,
}

/// `[limits]`: what one user may take of what all share; 0 turns a limit off. A request over
/// one is answered `429 too_many_requests` naming the limit, and nothing is written.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Unfinished (pending, running) tasks per user.
    pub pending_tasks_per_user: u64,
    /// Bytes of payload JSON per user, over every stored task of theirs.
    pub payload_bytes_per_user: u64,
    /// Messages per task.
    pub messages_per_task: u64,
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
    /// Recorded task changes (what `/v1/events` resumes from) are kept this long...
    pub changes: Duration,
    /// ...and at most this many of the newest.
    pub changes_kept: u64,
}

/// `[queues.NAME]`.
#[derive(Debug, Clone, Default)]
pub struct QueueConfig {
    /// At most this many of the queue's tasks at once in this process.
    pub concurrency: Option<u32>,
    /// At most this many of the queue's tasks at once across every process on the database.
    pub global_concurrency: Option<u32>,
    /// At most this many running tasks with one `concurrency_key`, across every process.
    pub per_key_concurrency: Option<u32>,
    /// Tasks started per period across every process (a token bucket in the database), and
    /// the bucket's size.
    pub rate: Option<crate::store::RateLimit>,
    /// `rate` as written (`"100/s"`).
    pub rate_text: Option<String>,
}

impl QueueConfig {
    /// The limits the claim enforces in its transaction (`None` when the queue has none).
    pub fn admission(&self) -> Option<crate::store::Admission> {
        let a = crate::store::Admission {
            global_concurrency: self.global_concurrency,
            per_key_concurrency: self.per_key_concurrency,
            rate: self.rate,
        };
        a.is_limited().then_some(a)
    }
}

/// Parses a queue's `rate` (`"N/s"`, `"N/m"` or `"N/h"`, N ≥ 1) with its `burst` (default N,
/// one period's worth).
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_rate(text: &str, burst: Option<u32>) -> Result<crate::store::RateLimit, String> {
    let bad = || format!("{text:?} is not a rate like \"100/s\", \"20/m\" or \"5/h\"");
    let (n, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = n.trim().parse().map_err(|_| bad())?;
    if count == 0 || count > 1_000_000 {
        return Err(format!("{text:?}: the count must be 1..=1000000"));
    }
    let period_ms = match unit.trim() {
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    let burst = burst.unwrap_or(count);
    if burst == 0 || burst > 1_000_000 {
        return Err("burst must be 1..=1000000".into());
    }
    Ok(crate::store::RateLimit {
        count,
        period_ms,
        burst,
    })
}

/// A command kind: what runs, with what environment, as whom.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CommandSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The kind's own `env = {..}` table, added to the child's cleared environment.
    pub env: BTreeMap<String, String>,
    /// The Unix user the child runs as (`user = "name"`); `None`: spool's own user.
    pub run_as: Option<RunAs>,
    /// Keep the task's working directory when the task is terminal (for debugging).
    pub keep_workdir: bool,
    /// What the child's stdin carries after the payload line.
    pub stdin: StdinMode,
}

/// A command kind's `stdin`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StdinMode {
    /// The payload, then end of input (the default).
    #[default]
    Payload,
    /// The payload as one line, then each of the owner's messages as a JSON line, as they come;
    /// stdin stays open while the attempt runs.
    Messages,
}

/// A Unix user looked up at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its home directory.
    pub home: PathBuf,
}

/// How a kind is run.
#[derive(Debug, Clone, PartialEq)]
pub enum KindHandler {
    /// A child process per task.
    Command(CommandSpec),
    /// A signed POST per attempt.
    Webhook {
        /// The URL.
        url: String,
        /// The HMAC key (read from `secret_env` at start).
        secret: String,
    },
    /// A container per attempt, through the Docker Engine API.
    Container(ContainerSpec),
    /// Only settings; the handler is registered in Rust (or built in).
    None,
}

/// Default `docker.host` when neither it nor `DOCKER_HOST` is set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// Default `container.workdir`: where the task's workspace volume is mounted.
pub const DEFAULT_CONTAINER_WORKDIR: &str = "/workspace";
/// Default `container.network`: no network at all.
pub const DEFAULT_CONTAINER_NETWORK: &str = "none";
/// Default `container.cpus`: one CPU's worth of time.
pub const DEFAULT_CONTAINER_CPUS: f64 = 1.0;
/// Default `container.memory_mb`: the container is killed (OOM) past 2 GiB.
pub const DEFAULT_CONTAINER_MEMORY_MB: u64 = 2048;
/// Default `container.pids_limit`: processes and threads inside the container.
pub const DEFAULT_CONTAINER_PIDS_LIMIT: i64 = 256;
/// Default `container.stop_grace_s`: SIGTERM, then SIGKILL after this many seconds.
pub const DEFAULT_CONTAINER_STOP_GRACE_S: u64 = 5;

/// A container kind (`[kinds.NAME] container = {..}`): what runs, and inside which limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// The image (must be on the engine already: spool does not pull).
    pub image: String,
    /// The command; empty: the image's own.
    pub command: Vec<String>,
    /// The kind's own variables, added to the ones spool grants.
    pub env: BTreeMap<String, String>,
    /// Where the task's workspace volume is mounted, and the command's working directory.
    pub workdir: String,
    /// `none`, `bridge`, or the name of a network on the engine.
    pub network: String,
    /// CPUs' worth of time (fractions allowed).
    pub cpus: f64,
    /// Memory limit in MiB (no swap beyond it); past it the container is killed.
    pub memory_mb: u64,
    /// Most processes and threads at once.
    pub pids_limit: i64,
    /// `user` or `uid:gid` inside the container; `None`: the image's own.
    pub user: Option<String>,
    /// Mount the image's root file system read-only (`/tmp` is then a tmpfs).
    pub read_only_root: bool,
    /// Extra mounts, `SOURCE:TARGET` or `SOURCE:TARGET:ro` (a host path or a volume name).
    pub mounts: Vec<ContainerMount>,
    /// Keep the workspace volume this long after the task is terminal (0: remove at once).
    pub keep_workspace_s: u64,
    /// SIGTERM, then SIGKILL after this many seconds, when an attempt is stopped.
    pub stop_grace_s: u64,
}

/// One entry of `container.mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMount {
    /// An absolute host path, or a volume name.
    pub source: String,
    /// An absolute path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
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
    /// Whether the kind sets its own `max_attempts` (then a ceiling for its tasks).
    pub max_attempts_set: bool,
    /// Users allowed to enqueue the kind; `None`: everyone.
    pub users: Option<Vec<String>>,
}

impl Config {
    /// The defaults, as `config/spool.toml` shows them.
    pub fn defaults() -> Self {
        match Self::from_raw(RawConfig::default(), &|_| None, Secrets::Required) {
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
        Self::load_with_env_for(path, env, Secrets::Required)
    }

    /// As [`Config::load`], reading secrets only when `secrets` says so (see [`Secrets`]).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and field.
    pub fn load_for(path: Option<&Path>, secrets: Secrets) -> Result<Self, ConfigError> {
        Self::load_with_env_for(path, &|k| std::env::var(k).ok(), secrets)
    }

    /// As [`Config::load_with_env`], reading secrets only when `secrets` says so.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and field.
    pub fn load_with_env_for(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: Secrets,
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
        Self::from_raw(raw, env, secrets)
    }

    fn from_raw(
        mut raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: Secrets,
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
        let url = match raw.database.url.as_deref() {
            Some(v) => DatabaseUrl::parse(v)?,
            None => DatabaseUrl::Sqlite(data_dir.join("spool.db")),
        };
        let readers = raw.database.readers.unwrap_or(8);
        if !(1..=256).contains(&readers) {
            return Err(invalid("database.readers", "must be 1..=256"));
        }
        let max_connections = raw.database.max_connections.unwrap_or(16);
        if !(1..=1000).contains(&max_connections) {
            return Err(invalid("database.max_connections", "must be 1..=1000"));
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
        let prefetch = raw.worker.prefetch.unwrap_or(0);
        if prefetch > 10_000 {
            return Err(invalid("worker.prefetch", "must be at most 10000"));
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

        let workdir = raw.worker.workdir.unwrap_or_else(|| {
            data_dir
                .parent()
                .map(|p| p.join(DEFAULT_WORKDIR))
                .unwrap_or_else(|| DEFAULT_WORKDIR.into())
        });
        if workdir.as_os_str().is_empty() {
            return Err(invalid("worker.workdir", "must not be empty"));
        }
        if overlaps(&workdir, &data_dir) {
            return Err(invalid(
                "worker.workdir",
                "must be outside data_dir (tasks must not reach the database or admin.token)",
            ));
        }
        let max_message_bytes = raw.limits.message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE);
        if !(256..=(16 << 20)).contains(&max_message_bytes) {
            return Err(invalid("limits.message_bytes", "must be 256..=16777216"));
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
            changes: retention_value("retention.changes", raw.retention.changes.as_deref(), "24h")?
                .ok_or_else(|| {
                    invalid(
                        "retention.changes",
                        "must be a duration: changes are kept for a bounded time",
                    )
                })?,
            changes_kept: match raw.retention.changes_kept.unwrap_or(1_000_000) {
                n @ 1..=1_000_000_000 => n,
                _ => return Err(invalid("retention.changes_kept", "must be 1..=1000000000")),
            },
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
            for (key, v) in [
                ("global_concurrency", q.global_concurrency),
                ("per_key_concurrency", q.per_key_concurrency),
            ] {
                if v == Some(0) || v.is_some_and(|v| v > 1_000_000) {
                    return Err(invalid(
                        format!("queues.{name}.{key}"),
                        "must be 1..=1000000",
                    ));
                }
            }
            let rate = match &q.rate {
                Some(text) => Some(parse_rate(text, q.burst).map_err(|e| {
                    let field = if e.starts_with("burst") {
                        "burst"
                    } else {
                        "rate"
                    };
                    invalid(format!("queues.{name}.{field}"), e)
                })?),
                None if q.burst.is_some() => {
                    return Err(invalid(
                        format!("queues.{name}.burst"),
                        "burst needs a rate",
                    ))
                }
                None => None,
            };
            queues_cfg.insert(
                name,
                QueueConfig {
                    concurrency: q.concurrency,
                    global_concurrency: q.global_concurrency,
                    per_key_concurrency: q.per_key_concurrency,
                    rate,
                    rate_text: q.rate.clone(),
                },
            );
        }

        let mut kinds = BTreeMap::new();
        for (name, k) in raw.kinds {
            let field = format!("kinds.{name}");
            if !crate::task::valid_name(&name) {
                return Err(invalid(field, "not a kind name"));
            }
            let handlers = [
                k.command.is_some(),
                k.webhook.is_some(),
                k.container.is_some(),
            ];
            if handlers.iter().filter(|h| **h).count() > 1 {
                return Err(invalid(
                    field,
                    "set one of command, webhook and container, not several",
                ));
            }
            let handler = match (&k.command, &k.webhook) {
                _ if k.container.is_some() => {
                    if k.env.is_some() || k.user.is_some() || k.keep_workdir.is_some() {
                        return Err(invalid(
                            field,
                            "env and user of a container kind go inside container = {..}, and keep_workdir is keep_workspace_s there",
                        ));
                    }
                    if k.stdin.is_some() {
                        return Err(invalid(
                            format!("{field}.stdin"),
                            "a container kind gets the payload on stdin; its owner's messages are read over HTTP with SPOOL_TASK_TOKEN",
                        ));
                    }
                    let c = k.container.clone().unwrap_or_default();
                    KindHandler::Container(container_spec(&format!("{field}.container"), c)?)
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(field, "set either command or webhook, not both"))
                }
                (Some(cmd), None) => {
                    if cmd.is_empty() || cmd[0].is_empty() {
                        return Err(invalid(format!("{field}.command"), "must name a program"));
                    }
                    KindHandler::Command(command_spec(&field, cmd, &k)?)
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
                    let secret =
                        secret_from_env(env, &format!("{field}.secret_env"), &var, secrets)?;
                    KindHandler::Webhook {
                        url: url.clone(),
                        secret,
                    }
                }
                (None, None) => {
                    if k.env.is_some()
                        || k.user.is_some()
                        || k.keep_workdir.is_some()
                        || k.stdin.is_some()
                    {
                        return Err(invalid(
                            field,
                            "env, user, keep_workdir and stdin apply to command kinds only",
                        ));
                    }
                    KindHandler::None
                }
            };
            if let Some(users) = &k.users {
                if users.iter().any(|u| u.is_empty()) {
                    return Err(invalid(format!("{field}.users"), "a user name is empty"));
                }
            }
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
                    max_attempts_set: k.max_attempts.is_some(),
                    users: k.users.clone(),
                },
            );
        }

        let auth = AuthConfig {
            jwt: raw
                .auth
                .jwt
                .map(|j| jwt_config(j, env, secrets))
                .transpose()?,
        };

        let mut schedules = Vec::new();
        for (name, r) in raw.schedules {
            let field = format!("schedules.{name}");
            let spec = crate::schedule::ScheduleSpec {
                name: name.clone(),
                cron: r
                    .cron
                    .ok_or_else(|| invalid(format!("{field}.cron"), "a schedule needs cron"))?,
                timezone: r.timezone.unwrap_or_else(|| "UTC".into()),
                task: r
                    .task
                    .ok_or_else(|| invalid(format!("{field}.task"), "a schedule needs a task"))?,
                catch_up: crate::schedule::CatchUp::parse(
                    r.catch_up.as_deref().unwrap_or("latest"),
                )
                .map_err(|e| invalid(format!("{field}.catch_up"), e))?,
                catch_up_max: r
                    .catch_up_max
                    .unwrap_or(crate::schedule::DEFAULT_CATCH_UP_MAX),
            };
            schedules.push(spec);
        }

        let docker_host = match raw.docker.host.clone() {
            Some(h) => docker_host("docker.host", h)?,
            None => match env("DOCKER_HOST").filter(|h| !h.is_empty()) {
                Some(h) => docker_host("DOCKER_HOST", h)?,
                None => DEFAULT_DOCKER_HOST.to_string(),
            },
        };

        let cfg = Config {
            schedules,
            docker_host,
            auth,
            listen,
            data_dir,
            database: DatabaseConfig {
                url,
                synchronous,
                busy_timeout_ms,
                readers,
                max_connections,
            },
            worker: WorkerConfig {
                concurrency,
                lease_ms,
                poll_interval_ms,
                prefetch,
                queues,
                workdir,
                host: raw.worker.host.unwrap_or_else(system_host_name),
                metrics_listen: listen_address(
                    "worker.metrics_listen",
                    raw.worker.metrics_listen.as_deref(),
                )?,
                api_url_from_listen: raw.worker.api_url.is_none(),
                api_url: match raw.worker.api_url {
                    Some(u) => {
                        let ok = url::Url::parse(&u)
                            .ok()
                            .filter(|p| matches!(p.scheme(), "http" | "https"))
                            .is_some();
                        if !ok {
                            return Err(invalid(
                                "worker.api_url",
                                "must be an http:// or https:// URL",
                            ));
                        }
                        u.trim_end_matches('/').to_string()
                    }
                    None => api_url_of(listen),
                },
            },
            retry,
            http,
            shutdown_grace: Duration::from_millis(
                raw.shutdown.grace_ms.unwrap_or(DEFAULT_GRACE_MS),
            ),
            retention,
            max_message_bytes,
            limits,
            queues: queues_cfg,
            kinds,
        };
        // The sweep removes a kept workspace volume only while its task is in the database (a
        // volume of a task it does not know may be another spool's on the same engine): the
        // task must outlive the keeping, and one sweep period (a lease) after it. A workspace
        // not kept is removed by the attempt that ends the task.
        let kept_tasks = [cfg.retention.completed, cfg.retention.failed]
            .into_iter()
            .flatten()
            .min();
        if let Some(kept_tasks) = kept_tasks {
            for (name, kind) in &cfg.kinds {
                let KindHandler::Container(c) = &kind.handler else {
                    continue;
                };
                if c.keep_workspace_s == 0 {
                    continue;
                }
                let keep = Duration::from_secs(c.keep_workspace_s)
                    .saturating_add(Duration::from_millis(cfg.worker.lease_ms));
                if keep >= kept_tasks {
                    return Err(invalid(
                        format!("kinds.{name}.container.keep_workspace_s"),
                        format!(
                            "must be less than the retention of finished tasks ({} s) less one lease ({} ms): a workspace is swept only while its task is in the database",
                            kept_tasks.as_secs(),
                            cfg.worker.lease_ms
                        ),
                    ));
                }
            }
        }
        // A schedule must fire at some time after the config is loaded.
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        for spec in &cfg.schedules {
            spec.validate(&cfg, now)
                .map_err(|e| invalid(format!("schedules.{}", spec.name), e))?;
        }
        Ok(cfg)
    }

    /// Whether any queue has a `rate`: only then is there a token bucket worth reading.
    pub fn any_rate(&self) -> bool {
        self.queues.values().any(|q| q.rate.is_some())
    }

    /// A queue's `limits` as `GET /v1/queues` and `spool inspect --json` show them (API.md
    /// "Admission control and schedules"): each `null` when not set; `tokens` is the queue's
    /// stored `bucket` refilled to `now` (a full one when none is stored yet).
    pub fn queue_limits(
        &self,
        queue: &str,
        bucket: Option<crate::store::Bucket>,
        now: crate::clock::UnixMillis,
    ) -> serde_json::Value {
        let cfg = self.queues.get(queue);
        let rate = cfg.and_then(|c| c.rate);
        let tokens = rate.map(|r| {
            let b = crate::store::rules::bucket_at(bucket, &r, now);
            (b.tokens.max(0.0) * 1000.0).floor() / 1000.0
        });
        serde_json::json!({
            "concurrency": cfg.and_then(|c| c.concurrency),
            "global_concurrency": cfg.and_then(|c| c.global_concurrency),
            "per_key_concurrency": cfg.and_then(|c| c.per_key_concurrency),
            "rate": cfg.and_then(|c| c.rate_text.clone()),
            "burst": rate.map(|r| r.burst),
            "tokens": tokens,
        })
    }

    /// The database file of the SQLite store. With PostgreSQL there is none: this is where
    /// SQLite's file would be (`<data_dir>/spool.db`); callers that need a real file ask
    /// [`Config::sqlite_path`].
    pub fn db_path(&self) -> PathBuf {
        match &self.database.url {
            DatabaseUrl::Sqlite(p) => p.clone(),
            DatabaseUrl::Postgres(_) => self.data_dir.join("spool.db"),
        }
    }

    /// The SQLite database file, when the store is SQLite.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.database.url {
            DatabaseUrl::Sqlite(p) => Some(p),
            DatabaseUrl::Postgres(_) => None,
        }
    }

    /// The retry policy of a kind.
    pub fn retry_for(&self, kind: &str) -> RetryPolicy {
        self.kinds.get(kind).map(|k| k.retry).unwrap_or(self.retry)
    }

    /// The timeout of a kind's attempts when the task sets none; with [`Config::caps_for`]'s
    /// ceiling when the kind sets one.
    pub fn timeout_for(&self, kind: &str) -> u64 {
        self.kinds
            .get(kind)
            .and_then(|k| k.timeout_ms)
            .unwrap_or(DEFAULT_TIMEOUT_MS)
    }
}

impl Config {
    /// The ceilings a kind puts on its tasks' own `timeout_ms` and `max_attempts`: the
    /// operator's values win over a task's (a task may ask for less, never more).
    pub fn caps_for(&self, kind: &str) -> (Option<u64>, Option<u32>) {
        match self.kinds.get(kind) {
            Some(k) => (
                k.timeout_ms,
                k.max_attempts_set.then_some(k.retry.max_attempts),
            ),
            None => (None, None),
        }
    }

    /// The enqueue rules of `kind`: its defaults and ceilings.
    pub fn enqueue_rules(&self, kind: &str) -> crate::queue::EnqueueRules {
        let (timeout_cap, max_attempts_cap) = self.caps_for(kind);
        crate::queue::EnqueueRules {
            default_max_attempts: self.retry_for(kind).max_attempts,
            max_attempts_cap,
            default_timeout_ms: self.timeout_for(kind),
            timeout_cap,
        }
    }

    /// Whether a user may enqueue tasks of `kind` (`users = [..]` of the kind; admins may
    /// run every kind). A bare name in `users` is a token user; a user signed in with a JWT is
    /// listed as `jwt:<name>` (its user claim), so a JWT whose subject is `alice` is not the
    /// token user `alice`.
    pub fn may_run(&self, kind: &str, user: &crate::store::User) -> bool {
        match self.kinds.get(kind).and_then(|k| k.users.as_ref()) {
            Some(users) => {
                user.is_admin
                    || users.iter().any(|u| match u.strip_prefix("jwt:") {
                        Some(sub) => user.jwt && sub == user.name,
                        None => !user.jwt && *u == user.name,
                    })
            }
            None => true,
        }
    }
}

/// Whether one of two directories lies inside the other (lexically, after making both
/// absolute against the working directory).
fn overlaps(a: &Path, b: &Path) -> bool {
    fn abs(p: &Path) -> PathBuf {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        // Lexical normalisation: `.` dropped, `..` pops.
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
    }
    let (a, b) = (abs(a), abs(b));
    a.starts_with(&b) || b.starts_with(&a)
}

/// Validates a command kind's `env`, `user` and `keep_workdir`.
fn command_spec(field: &str, argv: &[String], k: &RawKind) -> Result<CommandSpec, ConfigError> {
    let env = k.env.clone().unwrap_or_default();
    for name in env.keys() {
        let ok = !name.is_empty()
            && !name.contains('=')
            && !name.contains('\0')
            && !name.starts_with("SPOOL_");
        if !ok {
            return Err(invalid(
                format!("{field}.env"),
                format!("{name:?} is not a variable a kind may set (SPOOL_* are spool's own)"),
            ));
        }
    }
    let run_as = match &k.user {
        None => None,
        Some(name) => {
            let user = nix::unistd::User::from_name(name)
                .map_err(|e| {
                    invalid(
                        format!("{field}.user"),
                        format!("cannot look up {name:?}: {e}"),
                    )
                })?
                .ok_or_else(|| {
                    invalid(format!("{field}.user"), format!("no Unix user {name:?}"))
                })?;
            Some(RunAs {
                name: name.clone(),
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                home: user.dir,
            })
        }
    };
    let stdin = match k.stdin.as_deref() {
        None | Some("payload") => StdinMode::Payload,
        Some("messages") => StdinMode::Messages,
        Some(other) => {
            return Err(invalid(
                format!("{field}.stdin"),
                format!("{other:?} is not one of \"payload\", \"messages\""),
            ))
        }
    };
    Ok(CommandSpec {
        argv: argv.to_vec(),
        env,
        run_as,
        keep_workdir: k.keep_workdir.unwrap_or(false),
        stdin,
    })
}

/// Validates a container engine endpoint: `unix:///path`, `tcp://host:port` or
/// `http://host:port`.
fn docker_host(field: &str, h: String) -> Result<String, ConfigError> {
    let ok = match h.split_once("://") {
        Some(("unix", path)) => path.starts_with('/'),
        Some(("tcp" | "http", rest)) => !rest.is_empty(),
        _ => false,
    };
    if ok {
        Ok(h)
    } else {
        Err(invalid(
            field,
            format!("{h:?} is not unix:///path/to/socket, tcp://host:port or http://host:port"),
        ))
    }
}

/// Validates `[kinds.NAME] container = {..}`; `field` is `kinds.NAME.container`.
fn container_spec(field: &str, c: RawContainer) -> Result<ContainerSpec, ConfigError> {
    let image = c
        .image
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| invalid(format!("{field}.image"), "a container kind needs an image"))?;
    if image
        .chars()
        .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        return Err(invalid(format!("{field}.image"), "must not contain spaces"));
    }
    let command = c.command.unwrap_or_default();
    if command.first().is_some_and(|p| p.is_empty()) {
        return Err(invalid(
            format!("{field}.command"),
            "must name a program (or leave command out for the image's own)",
        ));
    }
    let env = c.env.unwrap_or_default();
    for name in env.keys() {
        let ok = !name.is_empty()
            && !name.contains('=')
            && !name.contains('\0')
            && !name.starts_with("SPOOL_");
        if !ok {
            return Err(invalid(
                format!("{field}.env"),
                format!("{name:?} is not a variable a kind may set (SPOOL_* are spool's own)"),
            ));
        }
    }
    let workdir = c
        .workdir
        .unwrap_or_else(|| DEFAULT_CONTAINER_WORKDIR.to_string());
    if !workdir.starts_with('/') || workdir == "/" || workdir.contains(':') {
        return Err(invalid(
            format!("{field}.workdir"),
            "must be an absolute path inside the container other than /",
        ));
    }
    let network = c
        .network
        .unwrap_or_else(|| DEFAULT_CONTAINER_NETWORK.to_string());
    if network.is_empty()
        || network
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        return Err(invalid(
            format!("{field}.network"),
            "must be \"none\", \"bridge\" or the name of a network",
        ));
    }
    // A task is hostile code: the host's network namespace (loopback services, the engine on
    // tcp://127.0.0.1) or another container's is not a network it may join.
    if network == "host" || network.starts_with("container:") || network.starts_with("ns:") {
        return Err(invalid(
            format!("{field}.network"),
            "host, container:<id> and ns:<path> would share another namespace with the task; use \"none\", \"bridge\" or the name of a network",
        ));
    }
    let cpus = c.cpus.unwrap_or(DEFAULT_CONTAINER_CPUS);
    if !(cpus.is_finite() && (0.01..=1024.0).contains(&cpus)) {
        return Err(invalid(
            format!("{field}.cpus"),
            "must be between 0.01 and 1024",
        ));
    }
    let memory_mb = c.memory_mb.unwrap_or(DEFAULT_CONTAINER_MEMORY_MB);
    if !(6..=(1 << 30)).contains(&memory_mb) {
        return Err(invalid(
            format!("{field}.memory_mb"),
            "must be at least 6 (the engine's smallest limit)",
        ));
    }
    let pids_limit = c.pids_limit.unwrap_or(DEFAULT_CONTAINER_PIDS_LIMIT);
    if pids_limit < 1 {
        return Err(invalid(format!("{field}.pids_limit"), "must be at least 1"));
    }
    if let Some(u) = &c.user {
        let ok = !u.is_empty()
            && u.split(':').count() <= 2
            && !u.split(':').any(str::is_empty)
            && !u.chars().any(|ch| ch.is_whitespace() || ch.is_control());
        if !ok {
            return Err(invalid(
                format!("{field}.user"),
                format!("{u:?} is not \"user\", \"uid\" or \"uid:gid\""),
            ));
        }
    }
    let mut mounts = Vec::new();
    for m in c.mounts.unwrap_or_default() {
        let parts: Vec<&str> = m.split(':').collect();
        let (source, target, read_only) = match parts.as_slice() {
            [s, t] => (*s, *t, false),
            [s, t, "ro"] => (*s, *t, true),
            [s, t, "rw"] => (*s, *t, false),
            _ => {
                return Err(invalid(
                    format!("{field}.mounts"),
                    format!("{m:?} is not SOURCE:TARGET or SOURCE:TARGET:ro"),
                ))
            }
        };
        if source.is_empty() || !target.starts_with('/') {
            return Err(invalid(
                format!("{field}.mounts"),
                format!("{m:?}: the source must not be empty and the target must be absolute"),
            ));
        }
        if target == workdir {
            return Err(invalid(
                format!("{field}.mounts"),
                format!("{m:?}: {workdir} is the task's workspace"),
            ));
        }
        mounts.push(ContainerMount {
            source: source.to_string(),
            target: target.to_string(),
            read_only,
        });
    }
    Ok(ContainerSpec {
        image,
        command,
        env,
        workdir,
        network,
        cpus,
        memory_mb,
        pids_limit,
        user: c.user,
        read_only_root: c.read_only_root.unwrap_or(false),
        mounts,
        keep_workspace_s: c.keep_workspace_s.unwrap_or(0),
        stop_grace_s: c.stop_grace_s.unwrap_or(DEFAULT_CONTAINER_STOP_GRACE_S),
    })
}

/// `http://` and `addr`, a wildcard address as loopback.
fn api_url_of(mut addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{addr}")
}

impl Config {
    /// `serve` bound `addr` (port 0 picks one): tasks reach the API there unless
    /// `worker.api_url` says otherwise.
    pub fn bound_to(&mut self, addr: SocketAddr) {
        if self.worker.api_url_from_listen {
            self.worker.api_url = api_url_of(addr);
        }
    }
}

/// The system's host name (`gethostname`), or `localhost` where it has none.
fn system_host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// An optional listening address of `key` ("" or unset: none).
fn listen_address(key: &str, v: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => t
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| invalid(key, format!("{t:?} is not an address like 127.0.0.1:9187"))),
    }
}

/// Validates `[http]` (less the body and stall limits, checked with the rest before it).
fn http_config(
    raw: RawHttp,
    max_body_bytes: usize,
    stall_timeout_ms: u64,
) -> Result<HttpConfig, ConfigError> {
    let metrics_listen = listen_address("http.metrics_listen", raw.metrics_listen.as_deref())?;
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
        stream_token_ttl: {
            let v = raw.stream_token_ttl_ms.unwrap_or(3_600_000);
            if !(1_000..=86_400_000).contains(&v) {
                return Err(invalid(
                    "http.stream_token_ttl_ms",
                    "must be 1000..=86400000",
                ));
            }
            Duration::from_millis(v)
        },
    })
}

/// Validates the per-user limits of `[limits]`.
fn limits_config(raw: &RawLimits) -> Result<LimitsConfig, ConfigError> {
    let l = LimitsConfig {
        pending_tasks_per_user: raw
            .pending_tasks_per_user
            .unwrap_or(DEFAULT_PENDING_TASKS_PER_USER),
        payload_bytes_per_user: raw
            .payload_bytes_per_user
            .unwrap_or(DEFAULT_PAYLOAD_BYTES_PER_USER),
        messages_per_task: raw.messages_per_task.unwrap_or(DEFAULT_MESSAGES_PER_TASK),
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

/// A secret from the environment variable `var` (named by the key `field`): required, or left
/// empty when `secrets` is [`Secrets::Skip`] and it is unset.
fn secret_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    field: &str,
    var: &str,
    secrets: Secrets,
) -> Result<String, ConfigError> {
    match (env(var).filter(|s| !s.is_empty()), secrets) {
        (Some(s), _) => Ok(s),
        (None, Secrets::Skip) => Ok(String::new()),
        (None, Secrets::Required) => Err(invalid(
            field,
            format!("environment variable {var} is not set"),
        )),
    }
}

/// Validates `[auth.jwt]`.
fn jwt_config(
    j: RawJwt,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
) -> Result<JwtConfig, ConfigError> {
    let keys = match (j.jwks_url, j.hs256_secret_env) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "auth.jwt",
                "set either jwks_url or hs256_secret_env, not both",
            ))
        }
        (None, None) => {
            return Err(invalid(
                "auth.jwt",
                "set jwks_url (RS256/ES256 keys of an identity provider) or hs256_secret_env",
            ))
        }
        (Some(url), None) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid("auth.jwt.jwks_url", "must be an http(s) URL"));
            }
            JwtKeys::Jwks { url }
        }
        (None, Some(var)) => {
            let secret = secret_from_env(env, "auth.jwt.hs256_secret_env", &var, secrets)?;
            if secrets == Secrets::Required && secret.len() < MIN_HS256_SECRET_BYTES {
                return Err(invalid(
                    "auth.jwt.hs256_secret_env",
                    format!(
                        "the secret in {var} is {} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES}",
                        secret.len()
                    ),
                ));
            }
            JwtKeys::Hs256 { secret }
        }
    };
    let required = |v: Option<String>, field: &str| -> Result<String, ConfigError> {
        v.filter(|s| !s.trim().is_empty())
            .ok_or_else(|| invalid(field, "is required: tokens of any other value are refused"))
    };
    let issuer = required(j.issuer, "auth.jwt.issuer")?;
    let audience = required(j.audience, "auth.jwt.audience")?;
    let user_claim = j
        .user_claim
        .unwrap_or_else(|| DEFAULT_JWT_USER_CLAIM.into());
    if user_claim.is_empty() {
        return Err(invalid("auth.jwt.user_claim", "must not be empty"));
    }
    let admin_claim = match j.admin_claim {
        None => None,
        Some(c) => Some(match c.split_once('=') {
            Some((name, value)) if !name.is_empty() && !value.is_empty() => {
                AdminClaim::Equals(name.to_string(), value.to_string())
            }
            None if !c.is_empty() => AdminClaim::True(c),
            _ => {
                return Err(invalid(
                    "auth.jwt.admin_claim",
                    format!("{c:?} is not \"NAME\" or \"NAME=VALUE\""),
                ))
            }
        }),
    };
    let leeway_s = j.leeway_s.unwrap_or(DEFAULT_JWT_LEEWAY_S);
    if leeway_s > 600 {
        return Err(invalid("auth.jwt.leeway_s", "must be 0..=600"));
    }
    let min_refresh = j.jwks_min_refresh_ms.unwrap_or(DEFAULT_JWKS_MIN_REFRESH_MS);
    if !(10..=3_600_000).contains(&min_refresh) {
        return Err(invalid(
            "auth.jwt.jwks_min_refresh_ms",
            "must be 10..=3600000",
        ));
    }
    let max_age = j.jwks_max_age_s.unwrap_or(DEFAULT_JWKS_MAX_AGE_S);
    if !(1..=604_800).contains(&max_age) {
        return Err(invalid("auth.jwt.jwks_max_age_s", "must be 1..=604800"));
    }
    let timeout = j.jwks_timeout_ms.unwrap_or(DEFAULT_JWKS_TIMEOUT_MS);
    if !(100..=60_000).contains(&timeout) {
        return Err(invalid("auth.jwt.jwks_timeout_ms", "must be 100..=60000"));
    }
    Ok(JwtConfig {
        keys,
        issuer,
        audience,
        user_claim,
        admin_claim,
        leeway_s,
        jwks_min_refresh: Duration::from_millis(min_refresh),
        jwks_max_age: Duration::from_secs(max_age),
        jwks_timeout: Duration::from_millis(timeout),
    })
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
    raw.worker.host = env("HOSTNAME").filter(|h| !h.is_empty());
    if let Some(v) = env("SPOOL_LISTEN") {
        raw.listen = Some(v);
    }
    if let Some(v) = env("SPOOL_DATA_DIR") {
        raw.data_dir = Some(v.into());
    }
    if let Some(v) = env("SPOOL_DATABASE_SYNCHRONOUS") {
        raw.database.synchronous = Some(v);
    }
    if let Some(v) = env("SPOOL_DATABASE_URL") {
        raw.database.url = Some(v);
    }
    if let Some(v) = env("SPOOL_DATABASE_BUSY_TIMEOUT_MS") {
        raw.database.busy_timeout_ms = Some(num("SPOOL_DATABASE_BUSY_TIMEOUT_MS", v)?);
    }
    if let Some(v) = env("SPOOL_DATABASE_MAX_CONNECTIONS") {
        raw.database.max_connections = Some(num("SPOOL_DATABASE_MAX_CONNECTIONS", v)?);
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
    if let Some(v) = env("SPOOL_WORKER_API_URL") {
        raw.worker.api_url = Some(v);
    }
    if let Some(v) = env("SPOOL_WORKER_PREFETCH") {
        raw.worker.prefetch = Some(num("SPOOL_WORKER_PREFETCH", v)?);
    }
    if let Some(v) = env("SPOOL_WORKER_QUEUES") {
        raw.worker.queues = Some(v.split(',').map(|s| s.trim().to_string()).collect());
    }
    if let Some(v) = env("SPOOL_WORKER_WORKDIR") {
        raw.worker.workdir = Some(v.into());
    }
    if let Some(v) = env("SPOOL_WORKER_METRICS_LISTEN") {
        raw.worker.metrics_listen = Some(v);
    }
    if let Some(v) = env("SPOOL_LIMITS_MESSAGE_BYTES") {
        raw.limits.message_bytes = Some(num("SPOOL_LIMITS_MESSAGE_BYTES", v)?);
    }
    if let Some(v) = env("SPOOL_LIMITS_PENDING_TASKS_PER_USER") {
        raw.limits.pending_tasks_per_user = Some(num("SPOOL_LIMITS_PENDING_TASKS_PER_USER", v)?);
    }
    if let Some(v) = env("SPOOL_LIMITS_PAYLOAD_BYTES_PER_USER") {
        raw.limits.payload_bytes_per_user = Some(num("SPOOL_LIMITS_PAYLOAD_BYTES_PER_USER", v)?);
    }
    if let Some(v) = env("SPOOL_LIMITS_MESSAGES_PER_TASK") {
        raw.limits.messages_per_task = Some(num("SPOOL_LIMITS_MESSAGES_PER_TASK", v)?);
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
    if let Some(v) = env("SPOOL_HTTP_HEADER_TIMEOUT_MS") {
        raw.http.header_timeout_ms = Some(num("SPOOL_HTTP_HEADER_TIMEOUT_MS", v)?);
    }
    if let Some(v) = env("SPOOL_HTTP_BODY_TIMEOUT_MS") {
        raw.http.body_timeout_ms = Some(num("SPOOL_HTTP_BODY_TIMEOUT_MS", v)?);
    }
    if let Some(v) = env("SPOOL_HTTP_IDLE_TIMEOUT_MS") {
        raw.http.idle_timeout_ms = Some(num("SPOOL_HTTP_IDLE_TIMEOUT_MS", v)?);
    }
    if let Some(v) = env("SPOOL_LIMITS_REQUESTS_BURST") {
        raw.limits.requests_burst = Some(num("SPOOL_LIMITS_REQUESTS_BURST", v)?);
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
    if let Some(v) = env("SPOOL_DOCKER_HOST") {
        raw.docker.host = Some(v);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_env(text, &|_| None)
    }

    /// `text` with the environment `env`.
    fn parse_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "t".into(),
            reason: e.to_string(),
        })?;
        Config::from_raw(raw, env, Secrets::Required)
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
    fn container_kinds_take_defaults_and_bad_values_name_the_field() {
        let c = parse("[kinds.box]\ncontainer = { image = \"img:1\" }\n").unwrap();
        let KindHandler::Container(spec) = &c.kinds["box"].handler else {
            panic!("not a container kind")
        };
        assert_eq!(spec.image, "img:1");
        assert!(spec.command.is_empty());
        assert_eq!(spec.workdir, "/workspace");
        assert_eq!(spec.network, "none");
        assert_eq!(spec.memory_mb, DEFAULT_CONTAINER_MEMORY_MB);
        assert_eq!(spec.pids_limit, DEFAULT_CONTAINER_PIDS_LIMIT);
        assert_eq!(c.docker_host, DEFAULT_DOCKER_HOST);
        // The example the shipped file documents (commented out there) is valid.
        let example = include_str!("../config/spool.toml")
            .lines()
            .find(|l| l.starts_with("# container = {"))
            .unwrap()
            .trim_start_matches("# ");
        let c = parse(&format!("[kinds.agent]\n{example}\n")).unwrap();
        assert!(matches!(
            c.kinds["agent"].handler,
            KindHandler::Container(_)
        ));
        for (bad, field) in [
            (
                "container = { command = [\"x\"] }",
                "kinds.k.container.image",
            ),
            (
                "container = { image = \"i\", workdir = \"rel\" }",
                "kinds.k.container.workdir",
            ),
            (
                "container = { image = \"i\", cpus = 0.0 }",
                "kinds.k.container.cpus",
            ),
            (
                "container = { image = \"i\", memory_mb = 1 }",
                "kinds.k.container.memory_mb",
            ),
            (
                "container = { image = \"i\", pids_limit = 0 }",
                "kinds.k.container.pids_limit",
            ),
            (
                "container = { image = \"i\", user = \"a:b:c\" }",
                "kinds.k.container.user",
            ),
            (
                "container = { image = \"i\", mounts = [\"/x\"] }",
                "kinds.k.container.mounts",
            ),
            (
                "container = { image = \"i\", env = { SPOOL_X = \"1\" } }",
                "kinds.k.container.env",
            ),
            (
                "container = { image = \"i\" }\ncommand = [\"sh\"]",
                "kinds.k",
            ),
            (
                "container = { image = \"i\", network = \"host\" }",
                "kinds.k.container.network",
            ),
            (
                "container = { image = \"i\", network = \"container:abc\" }",
                "kinds.k.container.network",
            ),
            (
                "container = { image = \"i\" }\nstdin = \"messages\"",
                "kinds.k.stdin",
            ),
        ] {
            let e = parse(&format!("[kinds.k]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
        let e = parse("[kinds.k]\ncontainer = { image = \"i\", ports = 1 }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ports"), "{e}");
        let e = parse("[docker]\nhost = \"/var/run/docker.sock\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("docker.host"), "{e}");
        let c = parse_env("", &|k| {
            (k == "DOCKER_HOST").then(|| "tcp://127.0.0.1:2375".to_string())
        })
        .unwrap();
        assert_eq!(c.docker_host, "tcp://127.0.0.1:2375");
    }

    #[test]
    fn the_shipped_config_file_is_valid() {
        let text = include_str!("../config/spool.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8787");
    }

    #[test]
    fn database_url_defaults_to_the_data_dir_and_an_unknown_scheme_names_the_key() {
        let c = parse("data_dir = \"d\"\n").unwrap();
        assert_eq!(
            c.database.url,
            DatabaseUrl::Sqlite(PathBuf::from("d/spool.db"))
        );
        assert_eq!(c.db_path(), PathBuf::from("d/spool.db"));
        let c = parse("[database]\nurl = \"sqlite:///var/lib/q.db\"\n").unwrap();
        assert_eq!(c.db_path(), PathBuf::from("/var/lib/q.db"));
        let c = parse("[database]\nurl = \"postgres://bob:pw@db.local:5433/spool\"\n").unwrap();
        assert!(c.sqlite_path().is_none());
        let shown = format!("{} {:?}", c.database.url, c.database.url);
        assert!(!shown.contains("pw"), "{shown}");
        assert!(
            shown.contains("postgres://bob@db.local:5433/spool"),
            "{shown}"
        );
        assert!(parse("[database]\nurl = \"postgresql://h/db?sslmode=require\"\n").is_ok());
        for (bad, says) in [
            ("mysql://h/db", "\"mysql\""),
            ("postgres://bob:pw@h/db?sslmode=maybe", "sslmode"),
            ("postgres://bob:pw@h/", "names no database"),
            ("data/spool.db", "not a URL"),
            ("sqlite://", "names no database file"),
        ] {
            let e = parse(&format!("[database]\nurl = {bad:?}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("database.url") && e.contains(says), "{bad}: {e}");
        }
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
    fn tools_that_run_no_workers_do_not_need_secrets() {
        let text = "[kinds.n]\nwebhook = \"http://127.0.0.1:1/h\"\nsecret_env = \"NOPE_SECRET_X\"\n\
                    [auth.jwt]\nhs256_secret_env = \"NOPE_JWT_X\"\nissuer = \"i\"\naudience = \"a\"\n";
        let raw: RawConfig = toml::from_str(text).unwrap();
        let c = Config::from_raw(raw, &|_| None, Secrets::Skip).unwrap();
        assert!(c.kinds.contains_key("n"));
        let raw: RawConfig = toml::from_str(text).unwrap();
        let e = Config::from_raw(raw, &|_| None, Secrets::Required)
            .unwrap_err()
            .to_string();
        assert!(e.contains("NOPE_SECRET_X"), "{e}");
    }

    #[test]
    fn jwt_settings_are_checked_and_name_the_field() {
        let e = parse("[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.jwt") && e.contains("jwks_url"), "{e}");
        let e = parse("[auth.jwt]\njwks_url = \"http://127.0.0.1:1/k\"\naudience = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.jwt.issuer"), "{e}");
        let e = parse(
            "[auth.jwt]\njwks_url = \"http://127.0.0.1:1/k\"\nissuer = \"i\"\naudience = \"a\"\nadmin_claim = \"=x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("auth.jwt.admin_claim"), "{e}");
        let e = parse_env(
            "[auth.jwt]\nhs256_secret_env = \"S\"\nissuer = \"i\"\naudience = \"a\"\n",
            &|k| (k == "S").then(|| "short".to_string()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("at least 32"), "{e}");
        let c = parse(
            "[auth.jwt]\njwks_url = \"https://idp/k\"\nissuer = \"i\"\naudience = \"a\"\nadmin_claim = \"role=admin\"\n",
        )
        .unwrap();
        let j = c.auth.jwt.unwrap();
        assert_eq!(j.user_claim, "sub");
        assert_eq!(j.leeway_s, 30);
        assert_eq!(
            j.admin_claim,
            Some(AdminClaim::Equals("role".into(), "admin".into()))
        );
    }

    #[test]
    fn env_overrides_file() {
        let c = parse_env("listen = \"127.0.0.1:1\"", &|k| match k {
            "SPOOL_LISTEN" => Some("127.0.0.1:2".into()),
            "SPOOL_WORKER_CONCURRENCY" => Some("3".into()),
            "SPOOL_DATABASE_MAX_CONNECTIONS" => Some("5".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.worker.concurrency, 3);
        assert_eq!(c.database.max_connections, 5);
        let e = parse_env("", &|k| {
            (k == "SPOOL_DATABASE_MAX_CONNECTIONS").then(|| "0".into())
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("database.max_connections"), "{e}");
        // Each host's unit can point its processes at the shared database.
        let c = parse_env("[database]\nurl = \"sqlite://x.db\"", &|k| {
            (k == "SPOOL_DATABASE_URL").then(|| "postgres://spool:pw@db.internal/spool".into())
        })
        .unwrap();
        match &c.database.url {
            DatabaseUrl::Postgres(u) => assert_eq!(
                u.redacted(),
                "postgres://spool@db.internal/spool?sslmode=disable"
            ),
            other => panic!("SPOOL_DATABASE_URL was not taken: {other:?}"),
        }
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
        assert_eq!(c.worker.metrics_listen, None);
        let e = parse("[worker]\nmetrics_listen = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker.metrics_listen"), "{e}");
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

    #[test]
    fn queue_admission_limits_parse_and_bad_ones_name_the_field() {
        let c = parse(
            "[queues.agents]\nper_key_concurrency = 1\nglobal_concurrency = 3\nrate = \"20/s\"\nburst = 5\n",
        )
        .unwrap();
        let a = c.queues["agents"].admission().unwrap();
        assert_eq!(a.per_key_concurrency, Some(1));
        assert_eq!(a.global_concurrency, Some(3));
        assert_eq!(
            a.rate,
            Some(crate::store::RateLimit {
                count: 20,
                period_ms: 1000,
                burst: 5
            })
        );
        let c = parse("[queues.q]\nrate = \"30/m\"\n").unwrap();
        assert_eq!(c.queues["q"].rate.unwrap().burst, 30, "burst defaults to N");
        assert_eq!(c.queues["q"].rate.unwrap().period_ms, 60_000);
        assert!(parse("[queues.q]\nconcurrency = 2\n").unwrap().queues["q"]
            .admission()
            .is_none());
        for (text, field) in [
            ("per_key_concurrency = 0", "queues.q.per_key_concurrency"),
            ("global_concurrency = 0", "queues.q.global_concurrency"),
            ("rate = \"fast\"", "queues.q.rate"),
            ("rate = \"10/d\"", "queues.q.rate"),
            ("rate = \"0/s\"", "queues.q.rate"),
            ("rate = \"10/s\"\nburst = 0", "queues.q.burst"),
            ("burst = 3", "queues.q.burst"),
        ] {
            let e = parse(&format!("[queues.q]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }
}
