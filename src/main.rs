//! The `spool` binary: arguments, configuration, logging, then the library. The only place
//! that uses `anyhow`.

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use spool::app::{open_store, shutdown_signal, EnqueueOptions, Spool};
use spool::clock::{rfc3339, Clock, SystemClock};
use spool::config::Secrets;
use spool::http::{configured_queues, hash_token, new_token};
use spool::store::{ExistingUser, TokenCreate, TokenRevoke};
use spool::Config;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// mimalloc: the request path allocates many small, short-lived objects (JSON values, strings);
/// glibc's malloc showed up as ~12% of the server's CPU under enqueue load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "spool",
    version,
    about = "A durable job queue in one binary, SQLite-backed"
)]
struct Cli {
    /// Config file (default: config/spool.toml if present, else built-in defaults).
    #[arg(long, global = true, env = "SPOOL_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the HTTP API and run workers.
    Serve,
    /// Run workers only (more processes on the same database file).
    Work,
    /// Enqueue a task and print its id.
    Enqueue {
        /// The task kind.
        kind: String,
        /// The payload, as JSON (default null).
        payload: Option<String>,
        /// Queue.
        #[arg(long, default_value = "default")]
        queue: String,
        /// Priority, -100..=100, higher first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Wait this many milliseconds before the first attempt.
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Attempts before the task fails.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Owner of the task.
        #[arg(long, default_value = "admin")]
        user: String,
        /// Admission key: tasks with one key share the queue's per_key_concurrency.
        #[arg(long)]
        concurrency_key: Option<String>,
    },
    /// Show queue depths, running leases and recent failures.
    Inspect {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Refresh every 2 seconds until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Apply pending schema migrations and print the version.
    Migrate,
    /// Copy a SQLite database (live or stopped) into an empty PostgreSQL database, verify it,
    /// and print what to change in the config.
    MigrateToPostgres {
        /// The SQLite file (default: the database of the config, <data_dir>/spool.db).
        #[arg(long)]
        from: Option<PathBuf>,
        /// The PostgreSQL database: postgres://user:password@host:5432/db (empty; made with
        /// CREATE DATABASE). The password is never printed.
        #[arg(long)]
        to: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput and latency against a raw-SQLite floor measured in the same run.
    Bench {
        /// Target a running server instead of starting one.
        #[arg(long)]
        url: Option<String>,
        /// Token for --url.
        #[arg(long)]
        token: Option<String>,
        /// synchronous of the started server and of the floor: full or normal.
        #[arg(long, default_value = "full")]
        synchronous: String,
        /// Concurrent clients of the single-enqueue test.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Tasks of the single-enqueue test.
        #[arg(long, default_value_t = 50_000)]
        n: usize,
        /// Tasks of the batch test.
        #[arg(long, default_value_t = 200_000)]
        batch_n: usize,
        /// Tasks of the end-to-end test.
        #[arg(long, default_value_t = 50_000)]
        e2e_n: usize,
        /// Worker slots of the started server.
        #[arg(long, default_value_t = 256)]
        concurrency: u32,
        /// `worker.prefetch` of the started server: tasks claimed ahead of free slots.
        #[arg(long, default_value_t = 0)]
        prefetch: u32,
        /// Samples of the enqueue-to-start latency test.
        #[arg(long, default_value_t = 500)]
        latency_samples: usize,
        /// SSE streams.
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// Messages per SSE stream.
        #[arg(long, default_value_t = 20)]
        messages: usize,
        /// Idle SSE streams held open for the memory figure (0 skips).
        #[arg(long, default_value_t = 0)]
        idle_streams: usize,
        /// Directory for the temporary data dir and the floor (default: the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Measure PostgreSQL instead: `spool serve` and two `spool work` on this database
        /// (postgres://..., holding no tasks), against a PostgreSQL floor.
        #[arg(long)]
        database: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The restore drill: restore the newest replica to a temporary file, check it, compare it
    /// with the live database, print a verdict; exit 0 only on pass.
    Drill {
        /// The Litestream config (default: $LITESTREAM_CONFIG, else ./litestream.yml).
        #[arg(long)]
        litestream_config: Option<PathBuf>,
        /// The litestream binary (default: found on PATH).
        #[arg(long)]
        litestream: Option<PathBuf>,
        /// Fail when the replica is further behind the live database than this.
        #[arg(long, default_value = "5m")]
        max_lag: String,
        /// Give up on the restore after this long (default: 10 minutes, or longer for a database
        /// that takes longer to restore at 10 MiB/s).
        #[arg(long)]
        timeout: Option<String>,
        /// Where to write the restored copy (default: $TMPDIR, else /tmp); it needs about the
        /// database's size free, checked before the restore.
        #[arg(long)]
        tmp_dir: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Do not record the result (in the side file beside the database, <db>.drill.json).
        #[arg(long)]
        no_record: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Create a token and print it (only this once). Makes a new user NAME; with --existing,
    /// adds a token to the existing user NAME instead (never silently).
    Create {
        /// The user name.
        #[arg(long)]
        user: String,
        /// The user may see every task and use the queue routes.
        #[arg(long)]
        admin: bool,
        /// Add a token to the user NAME, who must exist already.
        #[arg(long)]
        existing: bool,
    },
    /// List tokens: id, user, admin, created, and the start of the token's hash (never the token).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke tokens: every process on the database refuses them within a second.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["user", "token", "id"])))]
    Revoke {
        /// Every token of this user.
        #[arg(long)]
        user: Option<String>,
        /// This token.
        #[arg(long)]
        token: Option<String>,
        /// The token with this id (from `spool token list`).
        #[arg(long)]
        id: Option<i64>,
    },
}

/// An error of the user's making (arguments, config, files): exit code 2.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

fn main() -> ExitCode {
    // Before anything opens SQLite: its page cache can be chosen only before it initializes.
    let page_cache = spool_pcache::install();
    let cli = Cli::parse();
    init_tracing(&cli);
    if let Err(e) = page_cache {
        tracing::warn!(error = %e, "SQLite's page cache runs unwrapped (slower commits)");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<DrillFailed>().is_some() => ExitCode::from(1),
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {line}");
            let user_made = e.downcast_ref::<UsageError>().is_some()
                || e.downcast_ref::<spool::app::AppError>().is_some_and(|a| {
                    !matches!(
                        a,
                        spool::app::AppError::Store(spool::StoreError::Unavailable(_))
                    )
                });
            ExitCode::from(if user_made { 2 } else { 1 })
        }
    }
}

fn init_tracing(cli: &Cli) {
    let default = match cli.command {
        Command::Serve | Command::Work => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal (and not with NO_COLOR): a log file or journald gets plain
    // text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    // Only the processes that run workers or serve need the secrets (webhook keys, the JWT
    // secret): the tools start without them.
    let secrets = match cli.command {
        Command::Serve | Command::Work => Secrets::Required,
        _ => Secrets::Skip,
    };
    Config::load_for(cli.config.as_deref(), secrets).map_err(|e| usage(e.to_string()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = load_config(&cli)?;
    match cli.command {
        Command::Serve => serve(cfg).await,
        Command::Work => work(cfg).await,
        Command::Enqueue {
            kind,
            payload,
            queue,
            priority,
            delay_ms,
            max_attempts,
            user,
            concurrency_key,
        } => {
            let payload: Value = match payload {
                None => Value::Null,
                Some(p) => serde_json::from_str(&p)
                    .map_err(|e| usage(format!("PAYLOAD is not JSON: {e}")))?,
            };
            let opts = EnqueueOptions {
                queue: Some(queue),
                priority,
                delay: delay_ms.map(Duration::from_millis),
                max_attempts,
                timeout_ms: None,
                user: Some(user),
                concurrency_key,
            };
            // The one enqueue rule, checked before anything is opened: a refusal writes
            // nothing, not even the data directory.
            spool::app::new_task(&cfg, &kind, payload.clone(), opts.clone(), String::new(), 0)
                .map_err(|e| match e {
                    spool::app::AppError::Invalid(m) => usage(m),
                    e => e.into(),
                })?;
            let spool = Spool::builder().config(cfg).build()?;
            let task = spool.enqueue_with(&kind, payload, opts).await?;
            println!("{}", task.id);
            Ok(())
        }
        Command::Inspect { json, watch } => inspect(cfg, json, watch).await,
        Command::Token { cmd } => token(cfg, cmd).await,
        Command::Bench {
            url,
            token,
            synchronous,
            clients,
            n,
            batch_n,
            e2e_n,
            concurrency,
            prefetch,
            latency_samples,
            streams,
            messages,
            idle_streams,
            dir,
            database,
            json,
        } => {
            if !matches!(synchronous.as_str(), "full" | "normal") {
                return Err(usage("--synchronous must be full or normal"));
            }
            if let Some(d) = &database {
                if !(d.starts_with("postgres://") || d.starts_with("postgresql://")) {
                    return Err(usage("--database must be a postgres:// URL"));
                }
                if url.is_some() {
                    return Err(usage(
                        "--database starts its own processes: leave out --url",
                    ));
                }
            }
            if clients == 0 || n == 0 || concurrency == 0 {
                return Err(usage("--clients, --n and --concurrency must be at least 1"));
            }
            if let Some(u) = &url {
                if !(u.starts_with("http://127.")
                    || u.starts_with("http://localhost")
                    || u.starts_with("http://[::1]"))
                {
                    return Err(usage(
                        "--url must be a loopback address (http://127.0.0.1:PORT)",
                    ));
                }
            }
            let opts = spool::bench::BenchOptions {
                url,
                token,
                synchronous,
                clients,
                n,
                batch_n,
                e2e_n,
                concurrency,
                prefetch,
                latency_samples,
                streams,
                messages_per_stream: messages,
                idle_streams,
                dir,
                database,
            };
            let report = spool::bench::run(opts)
                .await
                .map_err(|e| anyhow::anyhow!("bench failed: {e}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", spool::bench::table(&report));
            }
            Ok(())
        }
        Command::Drill {
            litestream_config,
            litestream,
            max_lag,
            timeout,
            tmp_dir,
            json,
            no_record,
        } => {
            drill(
                cfg,
                litestream_config,
                litestream,
                &max_lag,
                timeout.as_deref(),
                tmp_dir,
                json,
                no_record,
            )
            .await
        }
        Command::MigrateToPostgres { from, to, json } => {
            migrate_to_postgres(&cfg, from, &to, json).await
        }
        Command::Migrate => {
            // Migrations run inside open_store; on a large file (a new index over millions of
            // rows) that takes a while, so show that something is happening.
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_message(format!("applying migrations to {}…", cfg.database.url));
            spinner.enable_steady_tick(Duration::from_millis(120));
            let store = open_store(&cfg);
            spinner.finish_and_clear();
            let store = store?;
            let v = store.schema_version().await?;
            store.close();
            println!("database {} is at schema version {v}", store.describe());
            Ok(())
        }
    }
}

async fn migrate_to_postgres(
    cfg: &Config,
    from: Option<PathBuf>,
    to: &str,
    as_json: bool,
) -> anyhow::Result<()> {
    use spool::store::migrate_pg::{self, MoveOptions};
    use std::io::IsTerminal;
    let to = spool::store::PostgresUrl::parse(to).map_err(|e| usage(format!("--to: {e}")))?;
    let from = match from.or_else(|| cfg.sqlite_path().map(PathBuf::from)) {
        Some(f) => f,
        None => {
            return Err(usage(
                "--from: the config's database is not SQLite; name the SQLite file",
            ))
        }
    };
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:24} [{bar:32}] {human_pos}/{human_len} rows ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("reading the SQLite file");
    let opts = MoveOptions {
        from: from.clone(),
        to: to.clone(),
        connect_timeout: Duration::from_millis(cfg.database.busy_timeout_ms.max(5000)),
    };
    let out = migrate_pg::run(&opts, &bar).await;
    bar.finish_and_clear();
    let report = match out {
        Ok(r) => r,
        Err(e) if e.is_usage() => return Err(usage(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "copied {} to {} (PostgreSQL schema version {})",
        from.display(),
        report.to,
        report.schema_version
    );
    let mut rows = vec![vec![
        "TABLE".to_string(),
        "ROWS".into(),
        "SHA-256 (same in SQLite and PostgreSQL)".into(),
    ]];
    for t in &report.tables {
        rows.push(vec![t.table.clone(), t.rows.to_string(), t.sha256.clone()]);
    }
    print_table(&rows);
    println!(
        "verified: every table has the same rows and checksum on both sides\n\n\
         Next:\n\
         1. Stop every spool process that uses {from} (a task changed there after this copy \
            began is not in PostgreSQL: stop them first and copy again into a fresh database \
            if you copied a live file).\n\
         2. Point every spool serve and spool work at PostgreSQL, in the config:\n\
         \n    [database]\n    url = \"{url}\"\n\n\
            or in the environment: SPOOL_DATABASE_URL={url}\n\
            (put your password in the URL; it is not shown here).\n\
         3. Start them. Tokens, tasks and their messages are all there; running tasks run \
            again once their lease runs out.",
        from = from.display(),
        url = report.to,
    );
    Ok(())
}

async fn token(cfg: Config, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            user,
            admin,
            existing,
        } => {
            if user.is_empty() || user.chars().count() > 128 || user.chars().any(char::is_control) {
                return Err(usage(
                    "--user must be 1 to 128 characters with no control characters",
                ));
            }
            let store = open_store(&cfg)?;
            let token = new_token();
            let made = store
                .token_create(TokenCreate {
                    name: user,
                    admin,
                    existing: if existing {
                        ExistingUser::AddToken
                    } else {
                        ExistingUser::Refuse
                    },
                    token_hash: hash_token(&token),
                    now: store.clock().now(),
                })
                .await;
            store.close();
            match made {
                Ok(_) => {
                    println!("{token}");
                    Ok(())
                }
                Err(spool::StoreError::Conflict(m)) => Err(usage(m)),
                Err(e) => Err(anyhow::Error::new(e).context("store the token")),
            }
        }
        TokenCmd::List { json } => {
            let store = open_store(&cfg)?;
            let list = store.token_list().await;
            store.close();
            let list = list?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let mut rows = vec![vec![
                "ID".to_string(),
                "USER".into(),
                "ADMIN".into(),
                "CREATED".into(),
                "HASH".into(),
            ]];
            for t in &list {
                rows.push(vec![
                    t.id.to_string(),
                    t.user.clone(),
                    if t.admin { "yes" } else { "no" }.into(),
                    rfc3339(t.created_at),
                    format!("{}…", t.hash_prefix),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        TokenCmd::Revoke { user, token, id } => {
            let (which, what) = match (user, token, id) {
                (Some(u), None, None) => (TokenRevoke::User(u.clone()), format!("user {u:?}")),
                (None, Some(t), None) => (
                    TokenRevoke::Hash(hash_token(t.trim())),
                    "that token".to_string(),
                ),
                (None, None, Some(i)) => (TokenRevoke::Id(i), format!("id {i}")),
                _ => return Err(usage("pass one of --user, --token, --id")),
            };
            let store = open_store(&cfg)?;
            let n = store.token_revoke(which).await;
            store.close();
            match n? {
                0 => Err(usage(format!("no token matched {what}"))),
                n => {
                    println!("revoked {n} token{}", if n == 1 { "" } else { "s" });
                    Ok(())
                }
            }
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    // Every SSE stream is a socket: allow as many as the hard limit does.
    spool::bench::raise_fd_limit();
    let listen = cfg.listen;
    spool::executor::reap::protect_process();
    spool::executor::reap::become_subreaper();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| usage(format!("cannot listen on {listen}: {e}")))?;
    let bound = listener.local_addr().ok();
    let addr = bound.map(|a| a.to_string()).unwrap_or_default();
    let mut cfg = cfg;
    if let Some(a) = bound {
        cfg.bound_to(a);
    }
    let spool = Spool::builder().config(cfg).build()?;
    spool.check_container_engine().await?;
    if let Some(path) = spool.bootstrap_admin().await? {
        tracing::info!(path = %path.display(), "created the first admin token; read it from this file");
    }
    let metrics_listener =
        bind_metrics(spool.config().http.metrics_listen, "http.metrics_listen").await?;
    let shutdown = stop_on_signal();
    tracing::info!(%addr, db = %spool.store().describe(), "spool serving");
    // Printed (after the signal handlers are in place) for scripts and tests that bind port 0.
    print_metrics_address(metrics_listener.as_ref());
    println!("listening on http://{addr}");
    spool
        .serve_listeners(listener, metrics_listener, shutdown)
        .await?;
    spool.close();
    Ok(())
}

/// A token cancelled by SIGTERM or Ctrl-C; the handlers are installed before this returns.
fn stop_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let signal = shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("stopping: no new tasks are claimed");
        stop.cancel();
    });
    shutdown
}

async fn work(cfg: Config) -> anyhow::Result<()> {
    if cfg.worker.concurrency == 0 {
        return Err(usage(
            "worker.concurrency is 0: this process would run nothing",
        ));
    }
    spool::executor::reap::protect_process();
    spool::executor::reap::become_subreaper();
    let spool = Spool::builder().config(cfg).build()?;
    spool.check_container_engine().await?;
    let metrics_listener = bind_metrics(
        spool.config().worker.metrics_listen,
        "worker.metrics_listen",
    )
    .await?;
    let shutdown = stop_on_signal();
    print_metrics_address(metrics_listener.as_ref());
    spool.work_listeners(metrics_listener, shutdown).await?;
    spool.close();
    Ok(())
}

/// The `/metrics` listener on `addr` (the config's `key`), when set.
async fn bind_metrics(
    addr: Option<std::net::SocketAddr>,
    key: &str,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(m) = addr else {
        return Ok(None);
    };
    let l = tokio::net::TcpListener::bind(m)
        .await
        .map_err(|e| usage(format!("cannot listen on {m} ({key}): {e}")))?;
    Ok(Some(l))
}

/// Prints where `/metrics` is served (for scripts and tests that bind port 0).
fn print_metrics_address(l: Option<&tokio::net::TcpListener>) {
    if let Some(m) = l.and_then(|l| l.local_addr().ok()) {
        println!("metrics listening on http://{m}");
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[allow(clippy::too_many_arguments)]
async fn drill(
    cfg: Config,
    litestream_config: Option<PathBuf>,
    litestream: Option<PathBuf>,
    max_lag: &str,
    timeout: Option<&str>,
    tmp_dir: Option<PathBuf>,
    as_json: bool,
    no_record: bool,
) -> anyhow::Result<()> {
    if cfg.sqlite_path().is_none() {
        return Err(usage(format!(
            "spool drill restores a Litestream replica of a SQLite database; database.url is {}: \
             use PostgreSQL's own backup and restore tests",
            cfg.database.url
        )));
    }
    let max_lag = humantime::parse_duration(max_lag)
        .map_err(|e| usage(format!("--max-lag {max_lag:?}: {e}")))?;
    let restore_timeout = match timeout {
        None => None,
        Some(t) => Some(
            humantime::parse_duration(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| usage(format!("--timeout {t:?}: not a duration above zero")))?,
        ),
    };
    let tmp_dir = tmp_dir.unwrap_or_else(std::env::temp_dir);
    if !tmp_dir.is_dir() {
        return Err(usage(format!(
            "--tmp-dir {}: no such directory",
            tmp_dir.display()
        )));
    }
    let litestream = match litestream {
        Some(p) if p.exists() => p,
        Some(p) => return Err(usage(format!("--litestream {}: no such file", p.display()))),
        None => find_on_path("litestream").ok_or_else(|| {
            usage("litestream is not on PATH: install it or pass --litestream PATH")
        })?,
    };
    let ls_config = litestream_config
        .or_else(|| std::env::var_os("LITESTREAM_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("litestream.yml"));
    if !ls_config.is_file() {
        return Err(usage(format!(
            "no Litestream config at {} (pass --litestream-config)",
            ls_config.display()
        )));
    }
    let db_path =
        std::path::absolute(cfg.db_path()).map_err(|e| usage(format!("data_dir: {e}")))?;
    let opts = spool::drill::DrillOptions {
        litestream,
        litestream_config: ls_config,
        db_path: db_path.clone(),
        max_lag,
        restore_timeout,
        tmp_dir,
    };
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message("restoring the newest replica into a temporary file…");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let now = SystemClock.now();
    let report = tokio::select! {
        r = spool::drill::run(&opts, now) => r,
        _ = shutdown_signal() => {
            spinner.finish_and_clear();
            anyhow::bail!("drill interrupted; temporary files removed");
        }
    };
    spinner.finish_and_clear();
    if !no_record && db_path.exists() {
        if let Err(e) = spool::drill::record(&db_path, &report, now) {
            eprintln!(
                "warning: could not record the drill in {}: {e}",
                spool::drill::record_path(&db_path).display()
            );
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.verdict);
    }
    if report.passed {
        Ok(())
    } else {
        Err(anyhow::Error::new(DrillFailed))
    }
}

/// A drill that ran and failed: its verdict is already printed.
#[derive(Debug)]
struct DrillFailed;

impl std::fmt::Display for DrillFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the restore drill failed")
    }
}

impl std::error::Error for DrillFailed {}

async fn inspect(cfg: Config, as_json: bool, watch: bool) -> anyhow::Result<()> {
    let path = cfg.db_path();
    if cfg.sqlite_path().is_some() && !path.exists() {
        return Err(usage(format!(
            "no database at {} (start spool serve first, or check data_dir)",
            path.display()
        )));
    }
    let store = open_store(&cfg)?;
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let clock = store.clock();
    loop {
        let now = clock.now();
        let queues = store.queue_stats(configured_queues(&cfg), now).await?;
        // Token buckets are read only when some queue has a rate, as `GET /v1/queues` does.
        let buckets: HashMap<String, spool::store::Bucket> = if cfg.any_rate() {
            store.queue_buckets().await?.into_iter().collect()
        } else {
            HashMap::new()
        };
        let (running, failed) = store.inspect_lists(20).await?;
        let workers = store.worker_list().await?;
        let schedules: Vec<Value> = store
            .schedule_list()
            .await?
            .iter()
            .map(|r| spool::schedule::to_json(r, now))
            .collect();
        let last_drill = cfg.sqlite_path().and_then(spool::drill::last_at);
        if as_json {
            let running: Vec<Value> = running
                .iter()
                .map(|t| {
                    let mut v = t.to_json();
                    v["lease_owner"] = json!(t.lease_owner);
                    v["lease_expires_at"] = json!(t.lease_expires_at.map(rfc3339));
                    v
                })
                .collect();
            let failed: Vec<Value> = failed.iter().map(|t| t.to_json()).collect();
            // Each queue as `GET /v1/queues` shows it, with its `limits`.
            let queues: Vec<Value> = queues
                .iter()
                .map(|q| {
                    let mut v = json!(q);
                    v["limits"] = cfg.queue_limits(&q.name, buckets.get(&q.name).copied(), now);
                    v
                })
                .collect();
            let workers: Vec<Value> = workers
                .iter()
                .map(|w| {
                    json!({
                        "id": w.id,
                        "host": w.host,
                        "pid": w.pid,
                        "running": w.running,
                        "started_at": rfc3339(w.started_at),
                        "heartbeat_at": rfc3339(w.heartbeat_at),
                        "heartbeat_age_ms": (now - w.heartbeat_at).max(0),
                    })
                })
                .collect();
            let out = json!({"queues": queues, "running": running, "workers": workers, "recent_failures": failed, "schedules": schedules, "last_drill": last_drill});
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            println!("spool {}  (at {})\n", store.describe(), rfc3339(now));
            let mut rows = vec![vec![
                "QUEUE".to_string(),
                "PAUSED".into(),
                "PENDING".into(),
                "SCHEDULED".into(),
                "RUNNING".into(),
                "WAITING".into(),
                "COMPLETED".into(),
                "FAILED".into(),
                "CANCELED".into(),
                "OLDEST PENDING".into(),
            ]];
            for q in &queues {
                rows.push(vec![
                    q.name.clone(),
                    if q.paused { "yes" } else { "no" }.into(),
                    q.pending.to_string(),
                    q.scheduled.to_string(),
                    q.running.to_string(),
                    q.waiting.to_string(),
                    q.completed.to_string(),
                    q.failed.to_string(),
                    q.canceled.to_string(),
                    q.oldest_pending_age_ms
                        .map(age)
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            print_table(&rows);
            println!("\nRUNNING ({})", running.len());
            let mut rows = vec![vec![
                "TASK".to_string(),
                "KIND".into(),
                "QUEUE".into(),
                "ATTEMPT".into(),
                "OWNER".into(),
                "LEASE LEFT".into(),
            ]];
            for t in &running {
                rows.push(vec![
                    t.id.to_string(),
                    t.kind.clone(),
                    t.queue.clone(),
                    format!("{}/{}", t.attempts, t.max_attempts),
                    t.lease_owner.clone().unwrap_or_default(),
                    t.lease_expires_at
                        .map(|e| age((e - now).max(0) as u64))
                        .unwrap_or_default(),
                ]);
            }
            print_table(&rows);
            println!("\nWORKERS ({})", workers.len());
            let mut rows = vec![vec![
                "WORKER".to_string(),
                "HOST".into(),
                "PID".into(),
                "RUNNING".into(),
                "UP".into(),
                "LAST HEARTBEAT".into(),
            ]];
            for w in &workers {
                rows.push(vec![
                    w.id.clone(),
                    w.host.clone(),
                    w.pid.to_string(),
                    w.running.to_string(),
                    age((now - w.started_at).max(0) as u64),
                    format!("{} ago", age((now - w.heartbeat_at).max(0) as u64)),
                ]);
            }
            print_table(&rows);
            if !schedules.is_empty() {
                println!("\nSCHEDULES ({})", schedules.len());
                let mut rows = vec![vec![
                    "NAME".to_string(),
                    "CRON".into(),
                    "TIMEZONE".into(),
                    "SOURCE".into(),
                    "NEXT".into(),
                    "LAST".into(),
                ]];
                let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
                for sc in &schedules {
                    rows.push(vec![
                        text(&sc["name"]),
                        text(&sc["cron"]),
                        text(&sc["timezone"]),
                        text(&sc["source"]),
                        text(&sc["next_fire_at"]),
                        text(&sc["last_fire_at"]),
                    ]);
                }
                print_table(&rows);
            }
            match &last_drill {
                Some(d) => println!(
                    "\nLAST DRILL  {} at {}: {}",
                    if d.passed { "PASS" } else { "FAIL" },
                    d.ran_at,
                    d.verdict
                ),
                None => println!("\nLAST DRILL  none recorded (run spool drill)"),
            }
            println!("\nRECENT FAILURES ({})", failed.len());
            let mut rows = vec![vec![
                "TASK".to_string(),
                "KIND".into(),
                "FAILED AT".into(),
                "ERROR".into(),
            ]];
            for t in &failed {
                let err: String = t
                    .last_error
                    .clone()
                    .unwrap_or_default()
                    .chars()
                    .take(80)
                    .collect();
                rows.push(vec![
                    t.id.to_string(),
                    t.kind.clone(),
                    t.completed_at.map(rfc3339).unwrap_or_default(),
                    err,
                ]);
            }
            print_table(&rows);
        }
        if !watch {
            break;
        }
        tokio::select! {
            _ = &mut signal => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    store.close();
    Ok(())
}

fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{:.1}m", ms as f64 / 60_000.0),
        _ => format!("{:.1}h", ms as f64 / 3_600_000.0),
    }
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map(|s| s.chars().count()).unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
