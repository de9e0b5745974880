//! `spool bench --database postgres://...`: the same table on PostgreSQL, with a PostgreSQL
//! floor measured in the same run through the same driver (tokio-postgres): one INSERT of a
//! task-sized row per commit, and 1,000 rows per commit.
//!
//! It starts one `spool serve` (an HTTP front end, no slots) and two `spool work` processes
//! (this binary, child processes, 127.0.0.1 only) on the database, which must hold no tasks:
//! the bench's tasks stay in it afterwards (drop the database when done).

use super::{bar, cpu_model, fig, percentile, raw_load, raw_request, rss_kib, Api, Figure};
use super::{cpu_since, stolen_since, CpuTimes, STOLEN_IN_RUN, STOLEN_MEANWHILE};
use super::{BenchOptions, BenchReport};
use crate::clock::{Clock, SystemClock};
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

type R<T> = Result<T, String>;

/// The started processes; killed when dropped.
struct Procs {
    serve: tokio::process::Child,
    workers: Vec<tokio::process::Child>,
    base: String,
    token: String,
    _dir: tempfile::TempDir,
}

async fn connect(url: &str) -> R<tokio_postgres::Client> {
    let url = crate::store::postgres::PostgresUrl::parse(url).map_err(|e| e.to_string())?;
    let cfg = url.config()?;
    let (client, conn) = match url.tls() {
        crate::store::postgres::url::TlsMode::Disable => {
            let (c, conn) = cfg
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("connect to {url}: {e}"))?;
            (c, tokio::spawn(async move { drop(conn.await) }))
        }
        _ => {
            let tls = crate::store::postgres::url::tls_connector(&url)?;
            let (c, conn) = cfg
                .connect(tls)
                .await
                .map_err(|e| format!("connect to {url}: {e}"))?;
            (c, tokio::spawn(async move { drop(conn.await) }))
        }
    };
    drop(conn);
    // The bench's own reads (a count of completed tasks every 250 ms) run in this session alone:
    // a parallel plan would start worker processes for each, taken from what is measured.
    client
        .batch_execute("SET max_parallel_workers_per_gather = 0")
        .await
        .map_err(|e| format!("set up the bench's session: {e}"))?;
    Ok(client)
}

/// The name of the floor measured again after the single enqueues.
const FLOOR_AGAIN: &str = "  floor again after it, 1 row per commit";

/// The floor: rows/s of one task-sized INSERT per commit and of 1,000 rows per commit.
async fn floor(db: &tokio_postgres::Client, single_n: usize, batch_n: usize) -> R<(f64, f64)> {
    let e = |e: tokio_postgres::Error| format!("floor: {e}");
    let single = floor_one_per_commit(db, single_n).await?;
    let many = db
        .prepare(
            "INSERT INTO spool_bench_floor SELECT id, 'q', 'spool.noop', '{\"i\":1}', \
             'pending', 0, n, n FROM unnest($1::uuid[], $2::int8[]) AS r(id, n)",
        )
        .await
        .map_err(e)?;
    let pb = bar(batch_n as u64, "floor: 1,000 rows per commit");
    let t = Instant::now();
    let mut i = 0;
    while i < batch_n {
        let k = 1000.min(batch_n - i);
        let ids: Vec<uuid::Uuid> = (0..k).map(|_| uuid::Uuid::now_v7()).collect();
        let ns: Vec<i64> = (i..i + k).map(|n| n as i64).collect();
        db.execute(&many, &[&ids, &ns]).await.map_err(e)?;
        i += k;
        pb.set_position(i as u64);
    }
    let batched = batch_n as f64 / t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    drop_floor_table(db).await?;
    Ok((single, batched))
}

/// Drops the floor's table, so the bench leaves only its tasks in the database.
async fn drop_floor_table(db: &tokio_postgres::Client) -> R<()> {
    db.batch_execute("DROP TABLE spool_bench_floor")
        .await
        .map_err(|e| format!("floor: {e}"))
}

/// Rows/s of `n` task-sized INSERTs, one per commit, into a new `spool_bench_floor` table
/// (left for the caller to drop).
async fn floor_one_per_commit(db: &tokio_postgres::Client, n: usize) -> R<f64> {
    let e = |e: tokio_postgres::Error| format!("floor: {e}");
    db.batch_execute(
        "DROP TABLE IF EXISTS spool_bench_floor;
         CREATE TABLE spool_bench_floor (id uuid PRIMARY KEY, queue text, kind text,
           payload json, status text, priority int, run_at bigint, created_at bigint)",
    )
    .await
    .map_err(e)?;
    let one = db
        .prepare(
            "INSERT INTO spool_bench_floor VALUES ($1, 'q', 'spool.noop', '{\"i\":1}', \
             'pending', 0, $2, $2)",
        )
        .await
        .map_err(e)?;
    let pb = bar(n as u64, "floor: 1 row per commit");
    let t = Instant::now();
    for i in 0..n {
        db.execute(&one, &[&uuid::Uuid::now_v7(), &(i as i64)])
            .await
            .map_err(e)?;
        pb.inc(1);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    Ok(rate)
}

async fn start(opts: &BenchOptions, url: &str) -> R<Procs> {
    let dir = match &opts.dir {
        Some(d) => tempfile::Builder::new()
            .prefix("spool-bench-")
            .tempdir_in(d),
        None => tempfile::Builder::new().prefix("spool-bench-").tempdir(),
    }
    .map_err(|e| format!("temp dir: {e}"))?;
    let common = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[database]\nurl = {url:?}\n\
         max_connections = 32\n[retention]\ncompleted = \"forever\"\n\
         [http]\nmax_connections = 1000000\n\
         # The load is one user's: per-user limits would stop the run, not measure it.\n\
         [limits]\nrequests_per_second = 0\nstreams_per_user = 0\n\
         pending_tasks_per_user = 1000000000\npayload_bytes_per_user = 1000000000000\n",
        dir.path().join("data").display().to_string(),
    );
    let serve_cfg = dir.path().join("serve.toml");
    std::fs::write(&serve_cfg, format!("{common}[worker]\nconcurrency = 0\n"))
        .map_err(|e| format!("write config: {e}"))?;
    let work_cfg = dir.path().join("work.toml");
    let slots = opts.concurrency.div_ceil(2).max(1);
    std::fs::write(
        &work_cfg,
        format!(
            "{common}[worker]\nconcurrency = {slots}\nprefetch = {}\n\
             queues = [\"bench-e2e\", \"bench-lat\"]\n\
             [queues.bench-e2e]\nconcurrency = {}\n[queues.bench-lat]\nconcurrency = {}\n",
            opts.prefetch,
            slots + opts.prefetch,
            slots + opts.prefetch
        ),
    )
    .map_err(|e| format!("write config: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let spawn = |args: &[&str], cfg: &std::path::Path| {
        tokio::process::Command::new(&exe)
            .args(args)
            .arg("--config")
            .arg(cfg)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start spool {args:?}: {e}"))
    };
    let mut serve = spawn(&["serve"], &serve_cfg)?;
    let out = serve.stdout.take().ok_or("no stdout")?;
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
        .map_err(|e| format!("admin token (the database must be new to spool): {e}"))?
        .trim()
        .to_string();
    let workers = vec![spawn(&["work"], &work_cfg)?, spawn(&["work"], &work_cfg)?];
    Ok(Procs {
        serve,
        workers,
        base,
        token,
        _dir: dir,
    })
}

/// Waits until `n` tasks of `queue` are completed (at most ten minutes); returns when the last
/// of them completed (the database's `completed_at`, unix ms). The count is taken every 250 ms
/// only, and the time comes from the rows, not from when the count saw them: the bench's own
/// polling (a scan of the queue's tasks) would otherwise take a good part of two cores from the
/// processes it measures, and a coarse poll would add up to its period to the figure.
async fn until_completed(db: &tokio_postgres::Client, queue: &str, n: usize) -> R<i64> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let row = db
            .query_one(
                "SELECT count(*), max(completed_at) FROM tasks \
                 WHERE queue = $1 AND status = 'completed'",
                &[&queue],
            )
            .await
            .map_err(|e| e.to_string())?;
        let done: i64 = row.get(0);
        if done as usize >= n {
            return Ok(row.get::<_, Option<i64>>(1).unwrap_or(0));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {done} of {n} tasks of {queue} completed in 10 minutes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the PostgreSQL bench on the database at `url`.
pub(super) async fn run(opts: BenchOptions, url: String) -> R<BenchReport> {
    let run_cpu = CpuTimes::now();
    let mut figures: Vec<Figure> = Vec::new();
    let db = connect(&url).await?;
    let existing: Option<i64> = match db
        .query_one("SELECT to_regclass('tasks') IS NOT NULL", &[])
        .await
        .map_err(|e| e.to_string())?
        .get::<_, bool>(0)
    {
        true => Some(
            db.query_one("SELECT count(*) FROM tasks", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0),
        ),
        false => None,
    };
    if existing.is_some_and(|n| n > 0) {
        return Err("the database holds tasks: run the bench on a database of its own".into());
    }

    // 1. The floor, through the same driver on the same server.
    let (floor1, floor1000) = floor(&db, 3000, 200_000).await?;
    figures.push(fig(
        "floor: PostgreSQL, 1 row per commit",
        floor1,
        "rows/s",
        Some(1.0),
        "baseline",
    ));
    figures.push(fig(
        "floor: PostgreSQL, 1,000 rows per commit",
        floor1000,
        "rows/s",
        Some(1.0),
        "baseline",
    ));

    let procs = start(&opts, &url).await?;
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.clients.max(64))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let api = Arc::new(Api {
        c,
        base: procs.base.clone(),
        token: procs.token.clone(),
    });

    // 2. Single enqueues from C clients (a queue no process works).
    let pb = bar(
        opts.n as u64,
        &format!("enqueue, 1/request, {} clients", opts.clients),
    );
    let body = br#"{"kind": "spool.noop", "queue": "bench-enqueue", "payload": {"n": 1}}"#;
    let request = raw_request(&api.base, &api.token, "/v1/tasks", body);
    let cpu = CpuTimes::now();
    let (secs, errs) = raw_load(&api.base, request, opts.clients, opts.n, &pb, 1).await?;
    let stolen = cpu_since(cpu, STOLEN_MEANWHILE, opts.n);
    let single = opts.n as f64 / secs;
    pb.finish_and_clear();
    figures.push(fig(
        &format!("HTTP enqueue, 1 task/request, {} clients", opts.clients),
        single,
        "tasks/s",
        Some(single / floor1),
        "≥ 5× floor",
    ));
    figures.extend(stolen);
    // The floor again at once: how far the disk's commit rate moved while the phase ran (the
    // ratio above is against the floor before it; on a shared machine the two can differ).
    let again = floor_one_per_commit(&db, 3000).await?;
    drop_floor_table(&db).await?;
    figures.push(fig(
        FLOOR_AGAIN,
        again,
        "rows/s",
        Some(again / floor1),
        "the floor's drift",
    ));
    let groups = api
        .metric("spool_enqueue_group_commit_requests_count")
        .await;
    let grouped = api.metric("spool_enqueue_group_commit_requests_sum").await;
    if groups > 0.0 {
        figures.push(fig(
            "  requests per group commit",
            grouped / groups,
            "requests",
            None,
            "group commit",
        ));
    }
    if errs > 0 {
        figures.push(fig(
            "  enqueue errors (non-201)",
            errs as f64,
            "requests",
            None,
            "0",
        ));
    }

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
        "≥ 50,000/s",
    ));

    // 4. End to end: enqueue into a paused queue, resume, time until all are completed by the
    // two `spool work` processes.
    let _ = api.post("/v1/queues/bench-e2e/pause", &json!({})).await;
    let pb = bar(opts.e2e_n as u64, "end to end: enqueue (paused)");
    let mut left = opts.e2e_n;
    while left > 0 {
        let k = left.min(1000);
        let tasks: Vec<Value> = (0..k)
            .map(|_| json!({"kind": "spool.noop", "queue": "bench-e2e"}))
            .collect();
        let (st, v) = api
            .post("/v1/tasks/batch", &json!({ "tasks": tasks }))
            .await?;
        if st != 201 {
            return Err(format!("end to end: enqueue answered {st}: {v}"));
        }
        left -= k;
        pb.inc(k as u64);
    }
    pb.finish_and_clear();
    let cpu = CpuTimes::now();
    // The rows' times are the database's (every spool process keeps its clock): so is this,
    // read by the store's own statement (microseconds).
    let resumed: i64 = db
        .query_one(crate::store::postgres::sql::CLOCK_READ, &[])
        .await
        .and_then(|r| r.try_get::<_, i64>(0))
        .map_err(|e| format!("end to end: read the database's clock: {e}"))?
        / 1000;
    let _ = api.post("/v1/queues/bench-e2e/resume", &json!({})).await;
    let last = until_completed(&db, "bench-e2e", opts.e2e_n).await?;
    let stolen = cpu_since(cpu, STOLEN_MEANWHILE, opts.e2e_n);
    // One clock, the database's: from the resume to the last completion, in the rows.
    let e2e = opts.e2e_n as f64 / ((last - resumed).max(1) as f64 / 1000.0);
    figures.push(fig(
        &format!(
            "end to end, no-op, serve + 2 spool work × {} slots",
            opts.concurrency.div_ceil(2).max(1)
        ),
        e2e,
        "tasks/s",
        Some(e2e / floor1),
        "≥ 5,000/s",
    ));
    figures.extend(stolen);

    // 5. Enqueue → start, idle workers in other processes (woken by NOTIFY).
    let pb = bar(opts.latency_samples as u64, "enqueue → start, idle workers");
    let cpu = CpuTimes::now();
    let mut ids = vec![];
    for _ in 0..opts.latency_samples {
        if let Ok((201, v)) = api
            .post(
                "/v1/tasks",
                &json!({"kind": "spool.noop", "queue": "bench-lat"}),
            )
            .await
        {
            if let Some(id) = v["id"].as_str() {
                ids.push(id.to_string());
            }
        }
        // Let the workers go idle again.
        tokio::time::sleep(Duration::from_millis(20)).await;
        pb.inc(1);
    }
    let stolen = stolen_since(cpu, STOLEN_MEANWHILE);
    pb.finish_and_clear();
    until_completed(&db, "bench-lat", ids.len()).await?;
    let mut lat: Vec<f64> = db
        .query(
            "SELECT started_at - created_at FROM tasks WHERE queue = 'bench-lat' \
             AND started_at IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| r.get::<_, i64>(0) as f64)
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    for (name, p, goal) in [
        ("p50", 0.5, "≤ 5 ms"),
        ("p90", 0.9, ""),
        ("p99", 0.99, "≤ 20 ms"),
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
    if let Some(kib) = procs.serve.id().and_then(|p| rss_kib(p, "VmHWM:")) {
        figures.push(fig("serve peak RSS", kib / 1024.0, "MiB", None, ""));
    }
    for (i, w) in procs.workers.iter().enumerate() {
        if let Some(kib) = w.id().and_then(|p| rss_kib(p, "VmHWM:")) {
            figures.push(fig(
                &format!("spool work #{} peak RSS", i + 1),
                kib / 1024.0,
                "MiB",
                None,
                "",
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
        "database": crate::store::postgres::PostgresUrl::parse(&url)
            .map(|u| u.redacted().to_string())
            .unwrap_or_default(),
    });
    drop(procs);
    Ok(BenchReport {
        machine,
        synchronous: "PostgreSQL (the server's synchronous_commit)".into(),
        figures,
    })
}
