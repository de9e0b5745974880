//! `spool bench`: measures the queue on this machine, against a floor measured in the same run
//! (raw SQLite inserts on the same disk at the same `synchronous`), since shared machines are
//! noisy and only ratios measured together mean something.
//!
//! It starts its own `spool serve` (this binary, a child process, a temporary data dir,
//! 127.0.0.1 only) unless `--url` points at one, and runs: the floor; single enqueues from C
//! clients; 1,000-task batches; end-to-end no-op work; enqueue-to-start latency with an idle
//! pool; SSE write-to-client latency over S streams; and the server's memory.

mod postgres;

use crate::clock::{Clock, SystemClock};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A server to target instead of starting one (its token in `token`).
    pub url: Option<String>,
    /// The token for `url`.
    pub token: Option<String>,
    /// `full` or `normal` for the started server and the floor.
    pub synchronous: String,
    /// Concurrent clients of the single-enqueue test.
    pub clients: usize,
    /// Tasks of the single-enqueue test.
    pub n: usize,
    /// Tasks of the batch test.
    pub batch_n: usize,
    /// Tasks of the end-to-end test.
    pub e2e_n: usize,
    /// Worker slots of the started server.
    pub concurrency: u32,
    /// `worker.prefetch` of the started server.
    pub prefetch: u32,
    /// Samples of the latency test.
    pub latency_samples: usize,
    /// Streams of the SSE test.
    pub streams: usize,
    /// Messages per stream in the SSE test.
    pub messages_per_stream: usize,
    /// Idle streams held open for the memory figure (0: skip).
    pub idle_streams: usize,
    /// Where the temporary data dir goes (default: the system temp dir).
    pub dir: Option<PathBuf>,
    /// A PostgreSQL database (`postgres://...`) to measure instead of SQLite: `spool serve` and
    /// two `spool work` processes on it, against a PostgreSQL floor (see `bench/postgres.rs`).
    pub database: Option<String>,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// Value divided by the relevant floor, when there is one.
    pub ratio: Option<f64>,
    /// The goal, in words.
    pub goal: String,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Machine facts.
    pub machine: Value,
    /// `synchronous` of the run.
    pub synchronous: String,
    /// The figures, in order.
    pub figures: Vec<Figure>,
}

fn fig(name: &str, value: f64, unit: &str, ratio: Option<f64>, goal: &str) -> Figure {
    Figure {
        name: name.into(),
        value,
        unit: unit.into(),
        ratio,
        goal: goal.into(),
    }
}

fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:<34} {bar:30} {pos}/{len} {per_sec} eta {eta}")
    {
        pb.set_style(style);
    }
    pb.set_message(msg.to_string());
    pb
}

/// The floor: raw inserts of a task-sized row on the same disk, one per commit and 1,000 per
/// commit. Returns rows/s for each.
///
/// # Errors
/// The database cannot be written.
pub fn floor(
    dir: &Path,
    synchronous: &str,
    single_n: usize,
    batch_n: usize,
) -> rusqlite::Result<(f64, f64)> {
    let path = dir.join("floor.db");
    let conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};
         CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, queue TEXT, kind TEXT, payload TEXT,
           status TEXT, priority INTEGER, run_at INTEGER, created_at INTEGER);"
    ))?;
    let insert = |conn: &rusqlite::Connection, i: usize| -> rusqlite::Result<()> {
        conn.prepare_cached(
            "INSERT INTO t VALUES (?1, 'q', 'spool.noop', '{\"i\":1}', 'pending', 0, ?2, ?2)",
        )?
        .execute(rusqlite::params![
            uuid::Uuid::now_v7().to_string(),
            i as i64
        ])?;
        Ok(())
    };
    let pb = bar(single_n as u64, "floor: 1 row per commit");
    let t = Instant::now();
    for i in 0..single_n {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        insert(&conn, i)?;
        conn.execute_batch("COMMIT")?;
        pb.inc(1);
    }
    let single = single_n as f64 / t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let pb = bar(batch_n as u64, "floor: 1,000 rows per commit");
    let t = Instant::now();
    let mut i = 0;
    while i < batch_n {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for _ in 0..1000.min(batch_n - i) {
            insert(&conn, i)?;
            i += 1;
        }
        conn.execute_batch("COMMIT")?;
        pb.set_position(i as u64);
    }
    let batched = batch_n as f64 / t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    drop(conn);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(dir.join("floor.db-wal"));
    let _ = std::fs::remove_file(dir.join("floor.db-shm"));
    Ok((single, batched))
}

fn rss_kib(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The whole machine's CPU time so far, in clock ticks, from Linux's `/proc/stat`: the time it
/// had work, and the part of that a hypervisor gave to other guests ("steal": time a virtual
/// CPU was ready to run and did not). A phase measured while a fifth of its CPU time was stolen
/// measured a shared machine more than spool, so the bench reports the stolen share beside the
/// figures it can skew. Of the time with work, not of all time (as `vmstat`'s `st`): a phase
/// that leaves a core idle would otherwise read as less disturbed than it was.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTimes {
    busy: u64,
    steal: u64,
}

impl CpuTimes {
    /// Now; `None` where there is no `/proc/stat`.
    fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// From `/proc/stat`'s `cpu` line: user, nice, system, idle, iowait, irq, softirq, steal
    /// (the guest times after them are already counted in user and nice). Busy is all but
    /// idle and iowait.
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let t = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|v| v.parse::<u64>().ok())
            .collect::<Option<Vec<_>>>()?;
        let [user, nice, system, _idle, _iowait, irq, softirq, steal] = t[..] else {
            return None;
        };
        Some(Self {
            busy: [user, nice, system, irq, softirq, steal]
                .iter()
                .try_fold(0u64, |a, &x| a.checked_add(x))?,
            steal,
        })
    }

    /// From `self` to `later`: the stolen share of the busy time in percent (0 with no busy
    /// time), the busy time in ticks, and the busy time less the stolen part (the CPU time the
    /// machine's processes had) in ticks.
    fn stolen_until(self, later: Self) -> Option<(f64, u64, u64)> {
        let busy = later.busy.checked_sub(self.busy)?;
        let steal = later.steal.checked_sub(self.steal)?;
        let share = if busy == 0 {
            0.0
        } else {
            100.0 * steal as f64 / busy as f64
        };
        Some((share, busy, busy.saturating_sub(steal)))
    }
}

/// The figure `name`: the share of the busy CPU time stolen since `from`, its unit naming how
/// much busy time that was (a short phase is a few ticks: a coarse share). None without
/// `from`.
fn stolen_since(from: Option<CpuTimes>, name: &str) -> Option<Figure> {
    cpu_since(from, name, 0).into_iter().next()
}

/// A phase's CPU figures since `from`: the stolen share (as [`stolen_since`]) and, for a
/// phase of `tasks` tasks (none for 0), the CPU time the whole machine spent per task, stolen
/// time left out. That counts every process on the machine (spool, a database on the same
/// host, the bench's own clients, anything else running). It is a cost, where a rate is a
/// cost and the waits together, and it is steadier than the rate from run to run.
fn cpu_since(from: Option<CpuTimes>, name: &str, tasks: usize) -> Vec<Figure> {
    let Some((share, busy, used)) = from
        .zip(CpuTimes::now())
        .and_then(|(a, b)| a.stolen_until(b))
    else {
        return vec![];
    };
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as f64;
    let mut figures = vec![fig(
        name,
        share,
        &format!("% of {:.1} CPU-s", busy as f64 / per_second),
        None,
        "",
    )];
    if tasks > 0 {
        figures.push(fig(
            CPU_PER_TASK,
            used as f64 / per_second / tasks as f64 * 1e6,
            "µs",
            None,
            "",
        ));
    }
    figures
}

/// The name of the CPU-per-task figure of a phase, printed under the phase's figure.
const CPU_PER_TASK: &str = "  CPU per task, whole machine";

/// The name of the stolen-CPU figure of a phase, printed under the phase's figure.
const STOLEN_MEANWHILE: &str = "  CPU stolen by the hypervisor meanwhile";

/// The name of the stolen-CPU figure of the whole run.
const STOLEN_IN_RUN: &str = "CPU stolen by the hypervisor during the run";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A `spool serve` started for the run.
struct Server {
    child: tokio::process::Child,
    base: String,
    token: String,
    _dir: tempfile::TempDir,
}

async fn start_server(opts: &BenchOptions) -> anyhow_like::Result<Server> {
    let dir = match &opts.dir {
        Some(d) => tempfile::Builder::new()
            .prefix("spool-bench-")
            .tempdir_in(d),
        None => tempfile::Builder::new().prefix("spool-bench-").tempdir(),
    }
    .map_err(|e| format!("temp dir: {e}"))?;
    let cfg = dir.path().join("spool.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[database]\nsynchronous = {:?}\n[worker]\nconcurrency = {}\nprefetch = {}\nqueues = [\"default\", \"bench-e2e\", \"bench-keyed\"]\n[queues.default]\nconcurrency = {}\n[queues.bench-e2e]\nconcurrency = {}\n[queues.bench-keyed]\nconcurrency = {}\nper_key_concurrency = 1\n[retention]\ncompleted = \"forever\"\n[http]\nmax_connections = 1000000\n# The load is one user's: per-user limits would stop the run, not measure it.\n[limits]\nrequests_per_second = 0\nstreams_per_user = 0\npending_tasks_per_user = 1000000000\npayload_bytes_per_user = 1000000000000\n",
            dir.path().join("data").display().to_string(),
            opts.synchronous,
            opts.concurrency,
            opts.prefetch,
            // A queue's cap counts prefetched tasks too: let the buffer fill.
            opts.concurrency + opts.prefetch,
            opts.concurrency + opts.prefetch,
            opts.concurrency + opts.prefetch
        ),
    )
    .map_err(|e| format!("write config: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start spool serve: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(b) = l.strip_prefix("listening on ") {
                return Some(b.to_string());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or("spool serve did not start")?;
    let token = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .map_err(|e| format!("admin token: {e}"))?
        .trim()
        .to_string();
    Ok(Server {
        child,
        base,
        token,
        _dir: dir,
    })
}

/// Tiny error plumbing: the bench reports failures as text.
mod anyhow_like {
    pub(super) type Result<T> = std::result::Result<T, String>;
}

struct Api {
    c: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let r = self
            .c
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let s = r.status().as_u16();
        let v = r.json().await.unwrap_or(Value::Null);
        Ok((s, v))
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.c
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = match self.c.get(format!("{}/metrics", self.base)).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return f64::NAN,
        };
        text.lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| {
                l.split_whitespace()
                    .last()
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .sum()
    }

    async fn queue(&self, name: &str) -> Value {
        let v = self.get("/v1/queues").await.unwrap_or(Value::Null);
        v["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }
}

/// A minimal HTTP/1.1 keep-alive client for the load phases: one connection, one prepared
/// request sent again and again, the answer's status read and its body skipped. A load
/// generator must cost far less than the server it measures, and a general client (reqwest)
/// cost about as much CPU per request as spool itself on this 2-core machine.
struct RawConn {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl RawConn {
    async fn connect(base: &str) -> Result<Self, String> {
        let addr = base.trim_start_matches("http://").trim_end_matches('/');
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        Ok(Self {
            stream: tokio::io::BufReader::new(tcp),
        })
    }

    /// Sends `request` (a whole HTTP/1.1 request) and returns the response status.
    async fn send(&mut self, request: &[u8]) -> Result<u16, String> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        self.stream
            .get_mut()
            .write_all(request)
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stream
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("bad status line")?;
        let mut len = 0usize;
        loop {
            line.clear();
            let n = self
                .stream
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    }
}

fn raw_request(base: &str, token: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// `clients` connections each sending `request` until `total` were sent; returns (seconds, non-201s).
async fn raw_load(
    base: &str,
    request: Vec<u8>,
    clients: usize,
    total: usize,
    pb: &ProgressBar,
    step: u64,
) -> Result<(f64, usize), String> {
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(RawConn::connect(base).await?);
    }
    let t = Instant::now();
    let mut hs = vec![];
    for mut conn in conns {
        let (request, next, errors, pb) =
            (request.clone(), next.clone(), errors.clone(), pb.clone());
        hs.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                match conn.send(&request).await {
                    Ok(201) => {}
                    Ok(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                pb.inc(step);
            }
        }));
    }
    for h in hs {
        let _ = h.await;
    }
    Ok((t.elapsed().as_secs_f64(), errors.load(Ordering::Relaxed)))
}

/// Runs the benchmark and returns its figures.
///
/// # Errors
/// The server could not be started or a phase failed outright.
pub async fn run(opts: BenchOptions) -> Result<BenchReport, String> {
    raise_fd_limit();
    if let Some(url) = opts.database.clone() {
        return postgres::run(opts, url).await;
    }
    // With --url the server is on another machine: this machine's stolen CPU is not its.
    let cpu_now = || opts.url.is_none().then(CpuTimes::now).flatten();
    let run_cpu = cpu_now();
    let mut figures = Vec::new();
    let server = match &opts.url {
        Some(_) => None,
        None => Some(start_server(&opts).await?),
    };
    let (base, token) = match (&server, &opts.url) {
        (Some(s), _) => (s.base.clone(), s.token.clone()),
        (None, Some(u)) => (u.clone(), opts.token.clone().ok_or("--url needs --token")?),
        (None, None) => return Err("no server".into()),
    };
    let pid = server.as_ref().and_then(|s| s.child.id());
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.clients.max(64))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let api = Arc::new(Api { c, base, token });

    // Idle memory, before any load.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(pid) = pid {
        if let Some(kib) = rss_kib(pid, "VmRSS:") {
            figures.push(fig(
                "server RSS, idle",
                kib / 1024.0,
                "MiB",
                None,
                "≤ 30 MiB",
            ));
        }
    }

    // 1. The floor, on the same disk as the server's data dir.
    let floor_dir = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    let fdir = tempfile::Builder::new()
        .prefix("spool-floor-")
        .tempdir_in(&floor_dir)
        .map_err(|e| e.to_string())?;
    let (floor1, floor1000) =
        floor(fdir.path(), &opts.synchronous, 3000, 200_000).map_err(|e| e.to_string())?;
    figures.push(fig(
        "floor: SQLite, 1 row per commit",
        floor1,
        "rows/s",
        Some(1.0),
        "baseline",
    ));
    figures.push(fig(
        "floor: SQLite, 1,000 rows per commit",
        floor1000,
        "rows/s",
        Some(1.0),
        "baseline",
    ));

    // 2. Single enqueues from C clients.
    let batch_sum0 = api.metric("spool_writer_batch_size_sum").await;
    let batch_cnt0 = api.metric("spool_writer_batch_size_count").await;
    let pb = bar(
        opts.n as u64,
        &format!("enqueue, 1/request, {} clients", opts.clients),
    );
    let body = br#"{"kind": "spool.noop", "queue": "bench-enqueue", "payload": {"n": 1}}"#;
    let request = raw_request(&api.base, &api.token, "/v1/tasks", body);
    let cpu = cpu_now();
    let (secs, errs) = raw_load(&api.base, request, opts.clients, opts.n, &pb, 1).await?;
    let stolen = cpu_since(cpu, STOLEN_MEANWHILE, opts.n);
    let single = opts.n as f64 / secs;
    pb.finish_and_clear();
    let mean_batch = (api.metric("spool_writer_batch_size_sum").await - batch_sum0)
        / (api.metric("spool_writer_batch_size_count").await - batch_cnt0).max(1.0);
    figures.push(fig(
        &format!("HTTP enqueue, 1 task/request, {} clients", opts.clients),
        single,
        "tasks/s",
        Some(single / floor1),
        "≥ 20,000/s and ≥ 2.5× floor",
    ));
    figures.extend(stolen);
    figures.push(fig(
        "  writer mean batch under that load",
        mean_batch,
        "writes/commit",
        None,
        "group commit",
    ));
    if errs > 0 {
        figures.push(fig(
            "  enqueue errors (non-201)",
            errs as f64,
            "requests",
            None,
            "0",
        ));
    }
    if let Some(pid) = pid {
        if let Some(kib) = rss_kib(pid, "VmHWM:") {
            figures.push(fig(
                "server peak RSS under enqueue load",
                kib / 1024.0,
                "MiB",
                None,
                "≤ 200 MiB",
            ));
        }
    }

    // 2b. One producer, one request at a time: what a lone client waits per enqueue.
    let one_n = opts.n.min(5000);
    let pb = bar(one_n as u64, "enqueue, 1/request, 1 producer");
    let body = br#"{"kind": "spool.noop", "queue": "bench-one", "payload": {"n": 1}}"#;
    let request = raw_request(&api.base, &api.token, "/v1/tasks", body);
    let mut conn = RawConn::connect(&api.base).await?;
    let mut took = Vec::with_capacity(one_n);
    let mut refused = 0usize;
    let t = Instant::now();
    for _ in 0..one_n {
        let sent = Instant::now();
        if conn.send(&request).await? != 201 {
            refused += 1;
        }
        took.push(sent.elapsed().as_secs_f64() * 1000.0);
        pb.inc(1);
    }
    let one = one_n as f64 / t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    took.sort_by(f64::total_cmp);
    figures.push(fig(
        "HTTP enqueue, 1 producer, sequential",
        one,
        "tasks/s",
        Some(one / floor1),
        "",
    ));
    figures.push(fig(
        "  its request p50",
        percentile(&took, 0.5),
        "ms",
        None,
        "≤ 0.5 ms at full",
    ));
    figures.push(fig(
        "  its request p99",
        percentile(&took, 0.99),
        "ms",
        None,
        "",
    ));
    if refused > 0 {
        figures.push(fig(
            "  its enqueue errors (non-201)",
            refused as f64,
            "requests",
            None,
            "0",
        ));
    }

    // 2c. The embedded API (`Spool::enqueue`) in this process, one caller: the library's cost
    // without HTTP, on its own database at the same `synchronous`.
    let embedded = embedded_enqueue(&floor_dir, &opts.synchronous, one_n).await?;
    figures.push(fig(
        "embedded enqueue (Spool::enqueue), 1 caller",
        embedded,
        "tasks/s",
        Some(embedded / floor1),
        "≥ 1× floor",
    ));

    // 3. Batches of 1,000.
    let requests = (opts.batch_n / 1000).max(1);
    let pb = bar(requests as u64 * 1000, "batch enqueue, 1,000/request");
    let tasks: Vec<Value> = (0..1000)
        .map(|i| json!({"kind": "spool.noop", "queue": "bench-batch", "payload": {"i": i}}))
        .collect();
    let body = serde_json::to_vec(&json!({ "tasks": tasks })).map_err(|e| e.to_string())?;
    let request = raw_request(&api.base, &api.token, "/v1/tasks/batch", &body);
    let (secs, _) = raw_load(&api.base, request, 4, requests, &pb, 1000).await?;
    let batched = (requests * 1000) as f64 / secs;
    pb.finish_and_clear();
    figures.push(fig(
        "HTTP batch enqueue, 1,000 tasks/request",
        batched,
        "tasks/s",
        Some(batched / floor1000),
        "≥ 125,000/s and ≥ 0.3× floor",
    ));

    // 4. End to end: pre-enqueue into a paused queue, resume, time until all are completed.
    let _ = api.post("/v1/queues/bench-e2e/pause", &json!({})).await;
    let pb = bar(opts.e2e_n as u64, "end to end: enqueue (paused)");
    let mut left = opts.e2e_n;
    let mut last_id = None;
    while left > 0 {
        let k = left.min(1000);
        let tasks: Vec<Value> = (0..k)
            .map(|_| json!({"kind": "spool.noop", "queue": "bench-e2e"}))
            .collect();
        if let Ok((201, v)) = api
            .post("/v1/tasks/batch", &json!({ "tasks": tasks }))
            .await
        {
            last_id = v["tasks"][k - 1]["id"].as_str().map(str::to_string);
        }
        left -= k;
        pb.inc(k as u64);
    }
    pb.finish_and_clear();
    let pb = bar(opts.e2e_n as u64, "end to end: work (no-op)");
    let cpu = cpu_now();
    let t = Instant::now();
    let _ = api.post("/v1/queues/bench-e2e/resume", &json!({})).await;
    wait_all_done(&api, "bench-e2e", last_id.as_deref(), opts.e2e_n, &pb).await;
    let e2e = opts.e2e_n as f64 / t.elapsed().as_secs_f64();
    let stolen = cpu_since(cpu, STOLEN_MEANWHILE, opts.e2e_n);
    pb.finish_and_clear();
    figures.push(fig(
        &format!("end to end, no-op, {} slots", opts.concurrency),
        e2e,
        "tasks/s",
        Some(e2e / floor1),
        "≥ 26,000/s",
    ));
    figures.extend(stolen);

    // 4b. The same with admission on: a per-key limit of 1 over 1,000 keys (issue 16: the
    // claim stays within 20% of the unlimited one).
    let keyed = e2e_keyed(&api, opts.e2e_n, 1000).await?;
    figures.push(fig(
        &format!(
            "end to end, no-op, {} slots, per_key_concurrency = 1 over 1,000 keys",
            opts.concurrency
        ),
        keyed,
        "tasks/s",
        Some(keyed / e2e),
        "≥ 0.8× the unlimited end to end",
    ));

    // 5. Enqueue → start with an idle pool, one at a time: started_at - created_at (ms clock).
    let pb = bar(opts.latency_samples as u64, "enqueue → start, idle pool");
    let cpu = cpu_now();
    let mut ids = vec![];
    for _ in 0..opts.latency_samples {
        if let Ok((201, v)) = api.post("/v1/tasks", &json!({"kind": "spool.noop"})).await {
            if let Some(id) = v["id"].as_str() {
                ids.push(id.to_string());
            }
        }
        // Let the pool go idle again.
        tokio::time::sleep(Duration::from_millis(5)).await;
        pb.inc(1);
    }
    let stolen = stolen_since(cpu, STOLEN_MEANWHILE);
    pb.finish_and_clear();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut lat = vec![];
    for id in &ids {
        if let Ok(v) = api.get(&format!("/v1/tasks/{id}")).await {
            let p = |k: &str| {
                v[k].as_str()
                    .and_then(|s| crate::clock::parse_rfc3339(s).ok())
            };
            if let (Some(c), Some(s)) = (p("created_at"), p("started_at")) {
                lat.push((s - c) as f64);
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    for (name, p, goal) in [
        ("p50", 0.5, "≤ 1 ms"),
        ("p90", 0.9, ""),
        ("p99", 0.99, "≤ 5 ms"),
    ] {
        figures.push(fig(
            &format!("enqueue → start {name} (ms resolution)"),
            percentile(&lat, p),
            "ms",
            None,
            goal,
        ));
    }
    figures.push(fig(
        "enqueue → start max",
        lat.last().copied().unwrap_or(f64::NAN),
        "ms",
        None,
        "",
    ));
    figures.extend(stolen);

    // 6. SSE: S streams on their own tasks, messages at a steady rate, write-to-client latency.
    if opts.streams > 0 {
        let (p50, p99, rss) = sse_phase(&api, opts.streams, opts.messages_per_stream, pid).await?;
        figures.push(fig(
            &format!("SSE write→client p50, {} streams", opts.streams),
            p50,
            "ms",
            None,
            "",
        ));
        figures.push(fig(
            &format!("SSE write→client p99, {} streams", opts.streams),
            p99,
            "ms",
            None,
            "≤ 20 ms",
        ));
        if let Some(r) = rss {
            figures.push(fig(
                &format!("server RSS with {} streams", opts.streams),
                r,
                "MiB",
                None,
                "",
            ));
        }
    }
    if opts.idle_streams > 0 {
        if let Some(r) = idle_streams_phase(&api, opts.idle_streams, pid).await? {
            figures.push(fig(
                &format!("server RSS with {} idle streams", opts.idle_streams),
                r,
                "MiB",
                None,
                "< 1 GiB",
            ));
        }
    }
    figures.extend(stolen_since(run_cpu, STOLEN_IN_RUN));

    let machine = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpu_model": cpu_model(),
        "at": crate::clock::rfc3339(SystemClock.now()),
    });
    drop(server);
    Ok(BenchReport {
        machine,
        synchronous: opts.synchronous,
        figures,
    })
}

/// Waits (up to 10 minutes) until `n` tasks of `queue` have completed. Counting a queue's
/// finished tasks reads an index of every task, which would load the server being measured
/// (polled every 50 ms during the per-key run, those reads took as much of the server's CPU as
/// its writer, by `perf`): until the last task enqueued, claimed about last, has ended, look
/// only at it; then count, until every task is done.
async fn wait_all_done(api: &Api, queue: &str, last_id: Option<&str>, n: usize, pb: &ProgressBar) {
    let deadline = Instant::now() + Duration::from_secs(600);
    if let Some(id) = last_id {
        while Instant::now() < deadline {
            let t = api
                .get(&format!("/v1/tasks/{id}"))
                .await
                .unwrap_or_default();
            if matches!(
                t["status"].as_str(),
                Some("completed" | "failed" | "canceled")
            ) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    loop {
        let done = api.queue(queue).await["completed"].as_u64().unwrap_or(0);
        pb.set_position(done);
        if done as usize >= n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// End to end through the per-key limited queue `bench-keyed`: `n` no-op tasks over `keys`
/// concurrency keys enqueued into the paused queue, then resumed; tasks per second until all
/// are completed.
async fn e2e_keyed(api: &Api, n: usize, keys: usize) -> Result<f64, String> {
    let _ = api.post("/v1/queues/bench-keyed/pause", &json!({})).await;
    let pb = bar(n as u64, "end to end, per-key limit: enqueue (paused)");
    let mut i = 0usize;
    let mut last_id = None;
    while i < n {
        let k = (n - i).min(1000);
        let tasks: Vec<Value> = (i..i + k)
            .map(|j| {
                json!({"kind": "spool.noop", "queue": "bench-keyed",
                    "concurrency_key": format!("k{}", j % keys.max(1))})
            })
            .collect();
        let (_, v) = api
            .post("/v1/tasks/batch", &json!({ "tasks": tasks }))
            .await?;
        last_id = v["tasks"][k - 1]["id"].as_str().map(str::to_string);
        i += k;
        pb.inc(k as u64);
    }
    pb.finish_and_clear();
    let pb = bar(n as u64, "end to end, per-key limit: work (no-op)");
    let t = Instant::now();
    let _ = api.post("/v1/queues/bench-keyed/resume", &json!({})).await;
    wait_all_done(api, "bench-keyed", last_id.as_deref(), n, &pb).await;
    pb.finish_and_clear();
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Sequential `Spool::enqueue` calls on a fresh database in `dir`; tasks a second.
async fn embedded_enqueue(dir: &Path, synchronous: &str, n: usize) -> Result<f64, String> {
    let tmp = tempfile::Builder::new()
        .prefix("spool-embedded-")
        .tempdir_in(dir)
        .map_err(|e| e.to_string())?;
    let cfg_path = tmp.path().join("spool.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "data_dir = {:?}\n[database]\nsynchronous = {synchronous:?}\n[worker]\nconcurrency = 0\n[limits]\npending_tasks_per_user = 0\n",
            tmp.path().join("data").display().to_string()
        ),
    )
    .map_err(|e| e.to_string())?;
    let cfg = crate::config::Config::load(Some(&cfg_path)).map_err(|e| e.to_string())?;
    let spool =
        tokio::task::spawn_blocking(move || crate::app::Spool::builder().config(cfg).build())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    let pb = bar(n as u64, "embedded enqueue, 1 caller");
    // The owner is resolved on the first call; time the calls after it.
    spool
        .enqueue("spool.noop", json!(null))
        .await
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    for _ in 0..n {
        spool
            .enqueue("spool.noop", json!({"n": 1}))
            .await
            .map_err(|e| e.to_string())?;
        pb.inc(1);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    spool.close();
    Ok(rate)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

/// Raises the soft open-files limit to the hard one (many streams need many sockets).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Opens an SSE stream and feeds each `event: message` data line to `f`.
async fn read_stream(api: &Api, task: &str, mut f: impl FnMut(&str) -> bool) -> Result<(), String> {
    use futures::StreamExt;
    let resp = api
        .c
        .get(format!("{}/v1/tasks/{task}/events", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut event = String::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let line = line.trim_end();
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                if event == "message" && !f(d) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

async fn sse_phase(
    api: &Arc<Api>,
    streams: usize,
    per_stream: usize,
    pid: Option<u32>,
) -> Result<(f64, f64, Option<f64>), String> {
    // Tasks on an unworked queue, so they stay pending and their streams stay open.
    let mut tasks = vec![];
    let mut left = streams;
    while left > 0 {
        let k = left.min(1000);
        let items: Vec<Value> = (0..k)
            .map(|_| json!({"kind": "spool.noop", "queue": "bench-sse"}))
            .collect();
        let (_, v) = api
            .post("/v1/tasks/batch", &json!({ "tasks": items }))
            .await?;
        for t in v["tasks"].as_array().cloned().unwrap_or_default() {
            if let Some(id) = t["id"].as_str() {
                tasks.push(id.to_string());
            }
        }
        left -= k;
    }
    let lat = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let pb = bar(
        (streams * per_stream) as u64,
        &format!("SSE: {streams} streams"),
    );
    let mut readers = vec![];
    for id in &tasks {
        let (api, id, lat, pb) = (api.clone(), id.clone(), lat.clone(), pb.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            let _ = read_stream(&api, &id, |data| {
                if let Ok(v) = serde_json::from_str::<Value>(data) {
                    if let Some(sent) = v["content"]["sent_us"].as_i64() {
                        if let Ok(mut l) = lat.lock() {
                            l.push((micros_now() - sent) as f64 / 1000.0);
                        }
                    }
                }
                pb.inc(1);
                seen += 1;
                seen < per_stream
            })
            .await;
        }));
    }
    // Let every stream connect and replay (nothing yet).
    tokio::time::sleep(Duration::from_millis(1000 + streams as u64)).await;
    // Steady rate: each round writes one message to every stream, spread over 200 ms. The
    // writes go over a pool of minimal keep-alive connections (as in the enqueue phases), so the
    // load generator's own CPU does not crowd out the server it measures.
    let (give, take) = tokio::sync::mpsc::unbounded_channel::<RawConn>();
    for _ in 0..32 {
        let _ = give.send(RawConn::connect(&api.base).await?);
    }
    let take = Arc::new(tokio::sync::Mutex::new(take));
    let mut rss_mib = None;
    for round in 0..per_stream {
        let gap = Duration::from_micros(200_000 / streams.max(1) as u64);
        let mut tick = tokio::time::interval(gap);
        let mut hs = vec![];
        for id in &tasks {
            tick.tick().await;
            let (api, id, give, take) = (api.clone(), id.clone(), give.clone(), take.clone());
            hs.push(tokio::spawn(async move {
                let conn = take.lock().await.recv().await;
                let Some(mut conn) = conn else { return };
                let body = format!(
                    r#"{{"kind":"progress","content":{{"sent_us":{}}}}}"#,
                    micros_now()
                );
                let request = raw_request(
                    &api.base,
                    &api.token,
                    &format!("/v1/tasks/{id}/messages"),
                    body.as_bytes(),
                );
                if conn.send(&request).await.is_ok() {
                    let _ = give.send(conn);
                } else if let Ok(c) = RawConn::connect(&api.base).await {
                    let _ = give.send(c);
                }
            }));
        }
        for h in hs {
            let _ = h.await;
        }
        if round == per_stream / 2 {
            rss_mib = pid.and_then(|p| rss_kib(p, "VmRSS:")).map(|k| k / 1024.0);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for r in readers {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, r).await;
    }
    pb.finish_and_clear();
    let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_by(|a, b| a.total_cmp(b));
    Ok((percentile(&l, 0.5), percentile(&l, 0.99), rss_mib))
}

async fn idle_streams_phase(
    api: &Arc<Api>,
    n: usize,
    pid: Option<u32>,
) -> Result<Option<f64>, String> {
    let (_, v) = api
        .post(
            "/v1/tasks",
            &json!({"kind": "spool.noop", "queue": "bench-sse"}),
        )
        .await?;
    let id = v["id"].as_str().ok_or("no task")?.to_string();
    let pb = bar(n as u64, "idle SSE streams");
    let opened = Arc::new(AtomicUsize::new(0));
    let mut hs = vec![];
    // Each stream its own connection (HTTP/1.1), as phones would be.
    for _ in 0..n {
        let c = reqwest::Client::builder()
            .build()
            .map_err(|e| e.to_string())?;
        let (base, token, id, opened, pb) = (
            api.base.clone(),
            api.token.clone(),
            id.clone(),
            opened.clone(),
            pb.clone(),
        );
        hs.push(tokio::spawn(async move {
            if let Ok(resp) = c
                .get(format!("{base}/v1/tasks/{id}/events"))
                .bearer_auth(&token)
                .send()
                .await
            {
                opened.fetch_add(1, Ordering::Relaxed);
                pb.inc(1);
                // Hold the stream open until aborted.
                let _keep = resp;
                std::future::pending::<()>().await;
            }
        }));
        if hs.len() % 200 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while opened.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = pid.and_then(|p| rss_kib(p, "VmRSS:")).map(|k| k / 1024.0);
    pb.finish_and_clear();
    for h in hs {
        h.abort();
    }
    Ok(rss)
}

/// The report as a table.
pub fn table(r: &BenchReport) -> String {
    let mut out = format!(
        "spool bench — {} CPUs ({}), synchronous={}, {}\n\n",
        r.machine["cpus"],
        r.machine["cpu_model"].as_str().unwrap_or(""),
        r.synchronous,
        r.machine["at"].as_str().unwrap_or("")
    );
    out.push_str(&format!(
        "{:<46} {:>14} {:<14} {:>9}  {}\n",
        "measure", "value", "unit", "× floor", "goal"
    ));
    for f in &r.figures {
        let ratio = f.ratio.map(|x| format!("{x:.2}")).unwrap_or_default();
        let value = if f.value >= 100.0 {
            format!("{:.0}", f.value)
        } else {
            format!("{:.2}", f.value)
        };
        out.push_str(&format!(
            "{:<46} {:>14} {:<14} {:>9}  {}\n",
            f.name, value, f.unit, ratio, f.goal
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // /proc/stat's first lines on a guest: user nice system idle iowait irq softirq steal guest
    // guest_nice. Between the two: 500 user, 200 system, 50 softirq and 250 stolen ticks of
    // work, 600 idle, and 70 of guest time (already inside user).
    const BEFORE: &str =
        "cpu  1000 10 500 8000 100 0 40 350 0 0\ncpu0 500 5 250 4000 50 0 20 175 0 0\n";
    const AFTER: &str =
        "cpu  1500 10 700 8600 100 0 90 600 70 0\ncpu0 750 5 350 4300 50 0 45 300 35 0\n";

    #[test]
    fn proc_stat_gives_the_machines_busy_and_stolen_ticks() {
        assert_eq!(
            CpuTimes::parse(BEFORE),
            Some(CpuTimes {
                busy: 1900,
                steal: 350
            })
        );
        // Idle and iowait are not busy; guest time is already in user, so not counted twice.
        assert_eq!(CpuTimes::parse(AFTER).map(|c| c.busy), Some(2900));
        assert_eq!(CpuTimes::parse("intr 1 2 3\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 3\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn the_stolen_share_is_of_the_busy_time_between_two_readings() {
        let (a, b) = (
            CpuTimes::parse(BEFORE).unwrap(),
            CpuTimes::parse(AFTER).unwrap(),
        );
        // 250 of 1,000 busy ticks; the 600 idle ones do not dilute it.
        assert_eq!(a.stolen_until(b), Some((25.0, 1000, 750)));
        assert_eq!(a.stolen_until(a), Some((0.0, 0, 0)));
        // Readings out of order are no figure, not a wrapped one.
        assert_eq!(b.stolen_until(a), None);
    }
}
