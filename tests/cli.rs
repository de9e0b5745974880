//! Bad input to the CLI and config: a one-line error naming the problem, exit code 2, nothing
//! written. And the commands that work: enqueue, inspect, migrate, token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(spool_bin())
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn assert_usage_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{err:?} should name {needle:?}");
}

#[test]
fn missing_config_file_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["serve", "--config", "nope/spool.toml"]);
    assert_usage_error(&out, "nope/spool.toml");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written"
    );
}

#[test]
fn unknown_key_and_bad_values_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    for (text, needle) in [
        ("[worker]\nconcurency = 4\n", "concurency"),
        ("[worker]\nlease_ms = 10\n", "worker.lease_ms"),
        ("[database]\nsynchronous = \"sometimes\"\n", "database.synchronous"),
        ("listen = \"not an address\"\n", "listen"),
        ("[retention]\ncompleted = \"a while\"\n", "retention.completed"),
        ("[worker]\nconcurrency = \"eight\"\n", "concurrency"),
        ("[kinds.hook]\nwebhook = \"http://127.0.0.1:9/h\"\nsecret_env = \"SPOOL_TEST_UNSET_SECRET\"\n", "SPOOL_TEST_UNSET_SECRET"),
        // A workspace kept longer than its task: the sweep could not tell it was ours.
        ("[retention]\ncompleted = \"1h\"\n[kinds.agent]\ncontainer = { image = \"x\", keep_workspace_s = 3600 }\n", "kinds.agent.container.keep_workspace_s"),
    ] {
        std::fs::write(&cfg, format!("data_dir = \"d\"\n{text}")).unwrap();
        let out = run(dir.path(), &["--config", "c.toml", "serve"]);
        assert_usage_error(&out, needle);
        assert!(!dir.path().join("d").exists(), "nothing written for {text:?}");
    }
}

#[test]
fn bad_environment_override_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(spool_bin())
        .args(["migrate"])
        .current_dir(dir.path())
        .env("SPOOL_WORKER_CONCURRENCY", "lots")
        .env("SPOOL_DATA_DIR", "d")
        .output()
        .unwrap();
    assert_usage_error(&out, "SPOOL_WORKER_CONCURRENCY");
}

#[test]
fn unwritable_data_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("afile"), "x").unwrap();
    std::fs::write(dir.path().join("c.toml"), "data_dir = \"afile/data\"\n").unwrap();
    let out = run(dir.path(), &["--config", "c.toml", "migrate"]);
    assert_usage_error(&out, "afile/data");
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let junk = b"this is not a database, it is a shopping list: eggs, milk\n".repeat(200);
    std::fs::write(dir.path().join("d/spool.db"), &junk).unwrap();
    std::fs::write(dir.path().join("c.toml"), "data_dir = \"d\"\n").unwrap();
    for cmd in ["serve", "work", "migrate"] {
        let out = run(dir.path(), &["--config", "c.toml", cmd]);
        assert_usage_error(&out, "not a SQLite database");
    }
    assert_eq!(std::fs::read(dir.path().join("d/spool.db")).unwrap(), junk);
    assert!(!dir.path().join("d/spool.db-wal").exists());
}

#[test]
fn a_database_from_a_newer_spool_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let c = rusqlite::Connection::open(dir.path().join("d/spool.db")).unwrap();
    c.execute_batch("PRAGMA user_version = 99; CREATE TABLE future (x);")
        .unwrap();
    drop(c);
    std::fs::write(dir.path().join("c.toml"), "data_dir = \"d\"\n").unwrap();
    let out = run(dir.path(), &["--config", "c.toml", "migrate"]);
    assert_usage_error(&out, "newer");
    let c = rusqlite::Connection::open(dir.path().join("d/spool.db")).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
}

#[test]
fn enqueue_refuses_bad_payload_and_names_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "data_dir = \"d\"\n").unwrap();
    assert_usage_error(
        &run(
            dir.path(),
            &["--config", "c.toml", "enqueue", "echo", "{not json"],
        ),
        "PAYLOAD",
    );
    assert_usage_error(
        &run(dir.path(), &["--config", "c.toml", "enqueue", "bad kind"]),
        "kind must be",
    );
    assert_usage_error(
        &run(
            dir.path(),
            &["--config", "c.toml", "enqueue", "echo", "--priority", "500"],
        ),
        "priority",
    );
    assert!(!dir.path().join("d").exists());
    // clap's own usage errors also exit 2
    assert_eq!(run(dir.path(), &["enqueue"]).status.code(), Some(2));
    assert_eq!(run(dir.path(), &["frobnicate"]).status.code(), Some(2));
}

#[test]
fn enqueue_prints_the_id_and_inspect_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "data_dir = \"d\"\n[worker]\nqueues = [\"default\"]\n",
    )
    .unwrap();
    let out = run(
        dir.path(),
        &[
            "--config",
            "c.toml",
            "enqueue",
            "echo",
            "{\"x\": 1}",
            "--queue",
            "q1",
            "--priority",
            "-3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(id.parse::<spool::TaskId>().is_ok(), "{id}");

    let out = run(dir.path(), &["--config", "c.toml", "inspect", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let q1 = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "q1")
        .unwrap();
    assert_eq!(q1["pending"], 1);
    assert_eq!(v["running"], serde_json::json!([]));
    // Checked against the database itself.
    let c = rusqlite::Connection::open(dir.path().join("d/spool.db")).unwrap();
    let (queue, prio, payload): (String, i64, String) = c
        .query_row(
            "SELECT queue, priority, payload FROM tasks WHERE id = ?",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (queue.as_str(), prio, payload.as_str()),
        ("q1", -3, "{\"x\":1}")
    );

    let out = run(dir.path(), &["--config", "c.toml", "inspect"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("QUEUE") && text.contains("q1") && text.contains("RECENT FAILURES"),
        "{text}"
    );
}

#[test]
fn inspect_json_shows_each_queues_limits_as_the_queues_route_does() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "data_dir = \"d\"\n[queues.agents]\nconcurrency = 2\nglobal_concurrency = 3\n\
         per_key_concurrency = 1\nrate = \"10/s\"\nburst = 5\n",
    )
    .unwrap();
    let out = run(
        dir.path(),
        &["--config", "c.toml", "enqueue", "echo", "--queue", "agents"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(dir.path(), &["--config", "c.toml", "inspect", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let queue = |name: &str| {
        v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("no queue {name}: {v}"))
            .clone()
    };
    let agents = queue("agents");
    assert_eq!(agents["pending"], 1);
    // No claim has taken a token yet: the bucket is full.
    assert_eq!(
        agents["limits"],
        serde_json::json!({"concurrency": 2, "global_concurrency": 3, "per_key_concurrency": 1,
            "rate": "10/s", "burst": 5, "tokens": 5.0})
    );
    assert_eq!(
        queue("default")["limits"],
        serde_json::json!({"concurrency": null, "global_concurrency": null,
            "per_key_concurrency": null, "rate": null, "burst": null, "tokens": null})
    );
}

#[test]
fn inspect_without_a_database_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "data_dir = \"d\"\n").unwrap();
    assert_usage_error(
        &run(dir.path(), &["--config", "c.toml", "inspect"]),
        "no database",
    );
}

#[test]
fn migrate_reports_the_schema_version_and_token_create_prints_a_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "data_dir = \"d\"\n").unwrap();
    let out = run(dir.path(), &["migrate", "--config", "c.toml"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("schema version {}", spool::store::LATEST_VERSION)),
        "{text}"
    );
    let out = run(
        dir.path(),
        &["--config", "c.toml", "token", "create", "--user", "alice"],
    );
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("spool_") && token.len() > 30);
    let c = rusqlite::Connection::open(dir.path().join("d/spool.db")).unwrap();
    let (name, admin): (String, bool) = c
        .query_row(
            "SELECT u.name, u.is_admin FROM tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = ?",
            [spool::http::hash_token(&token)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((name.as_str(), admin), ("alice", false));
    let clear: i64 = c
        .query_row(
            "SELECT count(*) FROM tokens WHERE token_hash = ?",
            [&token],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(clear, 0, "tokens are never stored in clear");
}

#[test]
fn serve_writes_an_admin_token_file_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let mut s = serve(&cfg, &[]);
    let mode = std::fs::metadata(dir.path().join("data/admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(s.token.starts_with("spool_"));
    assert_eq!(
        s.proc
            .terminate(std::time::Duration::from_secs(30))
            .map(|x| x.code()),
        Some(Some(0))
    );
}

#[test]
fn the_embedded_example_runs_its_tasks_to_the_end() {
    // Built by `cargo build --profile ci --all-targets` in tests/run.sh, beside the spool binary.
    let exe = spool_bin().parent().unwrap().join("examples/embedded");
    assert!(exe.exists(), "build the examples first: {}", exe.display());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(exe).current_dir(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("resize completed attempts=1"), "{text}");
    assert!(text.contains("resize failed attempts=1"), "{text}");
    assert!(text.contains("greet completed attempts=2"), "{text}");
    // The interactive one asked, waited, and went on with the answer.
    assert!(
        text.contains(r#"ask completed attempts=1 result={"answer":"yes, push","asked":"may I push to main?"}"#),
        "{text}"
    );
}

#[test]
fn tools_that_run_no_workers_start_without_the_webhook_and_jwt_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "data_dir = \"d\"\n\
         [kinds.hook]\nwebhook = \"http://127.0.0.1:9/h\"\nsecret_env = \"SPOOL_TEST_UNSET_SECRET\"\n\
         [auth.jwt]\nhs256_secret_env = \"SPOOL_TEST_UNSET_JWT\"\nissuer = \"i\"\naudience = \"a\"\n",
    )
    .unwrap();
    for args in [
        &["--config", "c.toml", "migrate"][..],
        &["--config", "c.toml", "token", "create", "--user", "alice"],
        &["--config", "c.toml", "token", "list"],
        &["--config", "c.toml", "inspect"],
        &["--config", "c.toml", "enqueue", "hook"],
    ] {
        let out = run(dir.path(), args);
        assert!(
            out.status.success(),
            "spool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The processes that would sign webhooks or check JWTs still refuse to start without them.
    for cmd in ["serve", "work"] {
        assert_usage_error(
            &run(dir.path(), &["--config", "c.toml", cmd]),
            "SPOOL_TEST_UNSET_SECRET",
        );
    }
}

#[test]
fn database_url_puts_the_database_where_it_says_and_an_unknown_scheme_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "data_dir = \"d\"\n[database]\nurl = \"sqlite://elsewhere/q.db\"\n",
    )
    .unwrap();
    let out = run(dir.path(), &["--config", "c.toml", "migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("elsewhere/q.db").is_file());
    assert!(!dir.path().join("d/spool.db").exists(), "not in data_dir");
    let id = String::from_utf8(run(dir.path(), &["--config", "c.toml", "enqueue", "echo"]).stdout)
        .unwrap();
    let db = rusqlite::Connection::open(dir.path().join("elsewhere/q.db")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM tasks WHERE id = ?",
            [id.trim()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "the CLI enqueued into the database the url names");

    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("c.toml"),
        "[database]\nurl = \"mysql://127.0.0.1/spool\"\n",
    )
    .unwrap();
    let out = run(other.path(), &["--config", "c.toml", "migrate"]);
    assert_usage_error(&out, "database.url");
    assert!(
        std::fs::read_dir(other.path()).unwrap().count() == 1,
        "nothing but the config written"
    );
}

/// The report of a `spool bench --json` run, which must have succeeded.
fn bench_report(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A bench run cleans up after itself: nothing is left in its `--dir`.
fn assert_left_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The figure named exactly `name`.
fn figure<'a>(figures: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    figures
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no figure {name:?} in {figures:?}"))
}

/// The value of figure `name`, which must be a finite, positive measure.
fn positive(figures: &[serde_json::Value], name: &str) -> f64 {
    let v = figure(figures, name)["value"].as_f64().unwrap();
    assert!(v.is_finite() && v > 0.0, "{name}: {v}");
    v
}

/// The ratio of figure `name` must be its value over `floor`, the floor of the same run.
fn assert_ratio_to(figures: &[serde_json::Value], name: &str, floor: f64) {
    let value = positive(figures, name);
    let ratio = figure(figures, name)["ratio"].as_f64().unwrap();
    assert!(
        (ratio - value / floor).abs() < 1e-9 * ratio.max(1.0),
        "{name}: ratio {ratio} against {value} / {floor}"
    );
}

/// What every bench report holds: no failed enqueue (a rate of failures is no rate), the
/// enqueue → start percentiles (whole milliseconds: a start within the same millisecond is 0),
/// the share of busy CPU the hypervisor stole (0 to 100) under each of the single-enqueue,
/// end-to-end and enqueue → start phases and for the whole run, and the machine's CPU time per
/// task under the single-enqueue phase (of `n` tasks) and the end-to-end one (of `e2e_n`).
fn assert_every_bench_has(figures: &[serde_json::Value], n: usize, e2e_n: usize) {
    assert!(
        figures
            .iter()
            .all(|f| f["name"] != "  enqueue errors (non-201)"),
        "{figures:?}"
    );
    for name in [
        "enqueue → start p50 (ms resolution)",
        "enqueue → start p99 (ms resolution)",
    ] {
        assert!(
            figure(figures, name)["value"].as_f64().unwrap() >= 0.0,
            "{name}"
        );
    }
    let stolen: Vec<f64> = figures
        .iter()
        .filter(|f| f["name"] == "  CPU stolen by the hypervisor meanwhile")
        .chain([figure(
            figures,
            "CPU stolen by the hypervisor during the run",
        )])
        .map(|f| f["value"].as_f64().unwrap())
        .collect();
    assert_eq!(stolen.len(), 4, "three phases and the run: {figures:?}");
    assert!(
        stolen.iter().all(|v| (0.0..=100.0).contains(v)),
        "{stolen:?}"
    );
    assert_cpu_per_task(figures, "HTTP enqueue, 1 task/request", n);
    assert_cpu_per_task(figures, "end to end, no-op", e2e_n);
    assert_eq!(
        figures
            .iter()
            .filter(|f| f["name"] == "  CPU per task, whole machine")
            .count(),
        2,
        "{figures:?}"
    );
}

/// Under the first figure named `phase…` (a rate of `tasks` tasks), the machine's CPU time per
/// task: in microseconds, at most what every CPU could give over the phase (its tasks at its
/// rate, plus 0.3 s for the readings around it and the clock's ticks).
fn assert_cpu_per_task(figures: &[serde_json::Value], phase: &str, tasks: usize) {
    let at = figures
        .iter()
        .position(|f| f["name"].as_str().unwrap().starts_with(phase))
        .unwrap_or_else(|| panic!("no {phase:?} in {figures:?}"));
    let rate = positive(figures, figures[at]["name"].as_str().unwrap());
    let cpu = figures[at + 1..]
        .iter()
        .take_while(|f| f["name"].as_str().unwrap().starts_with("  "))
        .find(|f| f["name"] == "  CPU per task, whole machine")
        .unwrap_or_else(|| panic!("no CPU per task under {phase:?}: {figures:?}"));
    assert_eq!(cpu["unit"], "µs");
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    let most = cpus * (tasks as f64 / rate + 0.3) / tasks as f64 * 1e6;
    let v = cpu["value"].as_f64().unwrap();
    assert!(
        (0.0..=most).contains(&v),
        "{phase}: {v} µs a task, at most {most}"
    );
}

/// `spool bench` is how every speed figure in the README is measured: a small run at 8 slots
/// reports each figure issue 17 asks for (the lone producer's rate and request latency, the
/// embedded rate, worked/s at the given concurrency, enqueue→start), each finite, with the
/// ratio to the floor measured in the same run.
#[test]
fn bench_at_eight_slots_reports_every_figure_against_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let args = "bench --concurrency 8 --prefetch 4 --synchronous normal --n 300 --batch-n 2000 \
                --e2e-n 500 --streams 5 --messages 5 --latency-samples 20 --json --dir";
    let mut args: Vec<&str> = args.split_whitespace().collect();
    args.push(d);
    let out = run(dir.path(), &args);
    let report = bench_report(&out);
    let figures = report["figures"].as_array().unwrap();
    assert_eq!(report["synchronous"], "normal");
    let floor = positive(figures, "floor: SQLite, 1 row per commit");
    positive(figures, "floor: SQLite, 1,000 rows per commit");
    positive(figures, "HTTP enqueue, 1 task/request, 64 clients");
    assert_ratio_to(figures, "HTTP enqueue, 1 producer, sequential", floor);
    let p50 = positive(figures, "  its request p50");
    assert!(p50 <= positive(figures, "  its request p99"));
    positive(figures, "embedded enqueue (Spool::enqueue), 1 caller");
    positive(figures, "HTTP batch enqueue, 1,000 tasks/request");
    positive(figures, "end to end, no-op, 8 slots");
    positive(
        figures,
        "end to end, no-op, 8 slots, per_key_concurrency = 1 over 1,000 keys",
    );
    assert_every_bench_has(figures, 300, 500);
    // No data directory or floor file is left.
    assert_left_empty(dir.path());
}

/// `spool bench --database postgres://...` measures what issue 13 names on PostgreSQL, each
/// rate against a PostgreSQL floor from the same run: single enqueues from 64 clients (to the
/// one-row floor), batches (to the 1,000-row floor), end to end through two `spool work`
/// processes, enqueue → start. It leaves its tasks in the database and nothing in its
/// directory, and a second run on that database is refused rather than measured on top of
/// them.
#[tokio::test]
async fn postgres_bench_reports_every_figure_against_its_floor_and_wants_an_empty_database() {
    let url = crate::pg::server().fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let args = "bench --n 300 --batch-n 2000 --e2e-n 500 --latency-samples 10 --json --database";
    let mut args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
    args.extend([url.clone(), "--dir".into(), d]);
    let (out, again) = {
        let dir = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            (run(&dir, &args), run(&dir, &args))
        })
        .await
        .unwrap()
    };
    let report = bench_report(&out);
    let figures = report["figures"].as_array().unwrap();
    let floor = positive(figures, "floor: PostgreSQL, 1 row per commit");
    let floor1000 = positive(figures, "floor: PostgreSQL, 1,000 rows per commit");
    assert_ratio_to(figures, "HTTP enqueue, 1 task/request, 64 clients", floor);
    // The floor measured again after the single enqueues, against the one before them.
    assert_ratio_to(figures, "  floor again after it, 1 row per commit", floor);
    assert_ratio_to(
        figures,
        "HTTP batch enqueue, 1,000 tasks/request",
        floor1000,
    );
    // Default --concurrency 256: 128 slots in each of the two `spool work` processes.
    assert_ratio_to(
        figures,
        "end to end, no-op, serve + 2 spool work × 128 slots",
        floor,
    );
    assert_every_bench_has(figures, 300, 500);
    assert_left_empty(dir.path());
    let db = crate::pg::server().client(&url).await;
    let floor_table = db
        .query_one("SELECT to_regclass('spool_bench_floor') IS NULL", &[])
        .await
        .unwrap();
    assert!(
        floor_table.get::<_, bool>(0),
        "the floor's table was left behind"
    );

    assert!(!again.status.success(), "a second run on the same database");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("the database holds tasks"), "{err}");
}
