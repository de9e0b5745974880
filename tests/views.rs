//! The operator views (`task_overview`, `queue_depth`, `recent_failures`) read through the
//! sqlite3 shell the OS ships (Debian's /usr/bin/sqlite3, 3.40 on bookworm), not only through
//! the SQLite bundled into spool: operators use the former, and a view that needs a newer SQLite
//! answers 0 and NULL there without an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::*;
use rusqlite::Connection;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// The system shell. tests/run.sh installs it (Debian's `sqlite3` package); missing is a failure.
const SQLITE3: &str = "/usr/bin/sqlite3";

/// Functions, modifiers and syntax that SQLite 3.31 (the oldest shell the views support) does
/// not know, each with the version that brought it.
const NEWER_THAN_3_31: &[(&str, &str)] = &[
    // The function; the 'unixepoch' modifier of strftime() is as old as SQLite 3.
    ("unixepoch(", "3.38"),
    ("subsec", "3.42"),
    ("iif(", "3.32"),
    ("->", "3.38"),
    ("strict", "3.37"),
    ("format(", "3.38"),
    ("concat(", "3.44"),
    ("concat_ws(", "3.44"),
    ("octet_length(", "3.43"),
    ("timediff(", "3.43"),
    ("string_agg(", "3.44"),
    ("unistr(", "3.50"),
];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Runs `sql` with the system sqlite3 on `db`; one `|`-separated line per row.
fn shell(db: &Path, sql: &str) -> Vec<String> {
    let out = Command::new(SQLITE3)
        .arg("-batch")
        .arg("-bail")
        .arg(db)
        .arg(sql)
        .output()
        .unwrap_or_else(|e| {
            panic!("{SQLITE3} is needed (Debian's sqlite3 package; tests/run.sh installs it): {e}")
        });
    assert!(
        out.status.success(),
        "sqlite3 failed on {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The same query through the bundled library, in the shell's format.
fn bundled(conn: &Connection, sql: &str) -> Vec<String> {
    let mut st = conn.prepare(sql).unwrap();
    let n = st.column_count();
    let mut rows = st.query([]).unwrap();
    let mut out = Vec::new();
    while let Some(r) = rows.next().unwrap() {
        let cols: Vec<String> = (0..n)
            .map(|i| match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => String::new(),
                rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                rusqlite::types::ValueRef::Real(v) => format!("{v:?}"),
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                rusqlite::types::ValueRef::Blob(_) => "<blob>".into(),
            })
            .collect();
        out.push(cols.join("|"));
    }
    out
}

/// A migrated spool database (made by `spool migrate`, as an operator's would be) holding one
/// task in each state, on two queues, plus a paused queue with no tasks. Returns its path and
/// the "now" the rows were written against.
fn database(dir: &Path) -> (std::path::PathBuf, i64) {
    let cfg = write_config(dir, "");
    let out = Command::new(spool_bin())
        .args(["migrate", "--config"])
        .arg(&cfg)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = dir.join("data/spool.db");
    let conn = Connection::open(&db).unwrap();
    let now = now_ms();
    let hour = 3_600_000;
    let insert = |id: &str,
                  queue: &str,
                  status: &str,
                  run_at: i64,
                  created_at: i64,
                  lease: Option<i64>,
                  completed_at: Option<i64>,
                  last_error: Option<&str>| {
        conn.execute(
            "INSERT INTO tasks (id, user_id, queue, kind, status, run_at, attempts, max_attempts,
                                timeout_ms, lease_owner, lease_expires_at, last_error,
                                created_at, completed_at, updated_at)
             VALUES (?1, 'u', ?2, 'k', ?3, ?4, 1, 3, 60000, ?5, ?6, ?7, ?8, ?9, ?8)",
            rusqlite::params![
                id,
                queue,
                status,
                run_at,
                lease.map(|_| "w1"),
                lease,
                last_error,
                created_at,
                completed_at
            ],
        )
        .unwrap();
    };
    // Runnable now, enqueued an hour ago: it has an age.
    insert(
        "a-pending",
        "mail",
        "pending",
        now - hour,
        now - hour,
        None,
        None,
        None,
    );
    // Due tomorrow: scheduled, not pending.
    insert(
        "b-scheduled",
        "mail",
        "pending",
        now + 24 * hour,
        now - 1000,
        None,
        None,
        None,
    );
    // Lease runs out in ten minutes.
    insert(
        "c-running",
        "mail",
        "running",
        now - hour,
        now - hour,
        Some(now + 600_000),
        None,
        None,
    );
    // Created at a fixed instant, to check the readable times.
    insert(
        "d-completed",
        "mail",
        "completed",
        1_700_000_000_123,
        1_700_000_000_123,
        None,
        Some(1_700_000_001_000),
        None,
    );
    insert(
        "e-failed",
        "mail",
        "failed",
        now - hour,
        now - hour,
        None,
        Some(now - 5000),
        Some("boom"),
    );
    insert(
        "f-canceled",
        "mail",
        "canceled",
        now - hour,
        now - hour,
        None,
        Some(now - 4000),
        None,
    );
    insert(
        "g-pending",
        "video",
        "pending",
        now - 10,
        now - 10,
        None,
        None,
        None,
    );
    conn.execute(
        "INSERT INTO queues (name, paused, updated_at) VALUES ('idle', 1, ?1)",
        [now],
    )
    .unwrap();
    (db, now)
}

#[test]
fn the_system_sqlite3_is_there() {
    let out = Command::new(SQLITE3)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!("{SQLITE3} is needed (Debian's sqlite3 package; tests/run.sh installs it): {e}")
        });
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    eprintln!("system sqlite3: {}", v.trim());
    assert!(v.starts_with("3."), "{v}");
}

#[test]
fn queue_depth_counts_every_state_in_the_systems_sqlite3() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = database(dir.path());
    let q = "SELECT queue, paused, pending, scheduled, running, completed, failed, canceled \
             FROM queue_depth";
    let want = vec![
        "idle|1|0|0|0|0|0|0".to_string(),
        "mail|0|1|1|1|1|1|1".to_string(),
        "video|0|1|0|0|0|0|0".to_string(),
    ];
    assert_eq!(shell(&db, q), want, "the system sqlite3");
    let conn = Connection::open(&db).unwrap();
    assert_eq!(bundled(&conn, q), want, "the bundled SQLite");
    // Pending tasks a per-key claim parked (0015) are pending and scheduled all the same.
    let parked = conn
        .execute(
            "UPDATE tasks SET parked = 1 WHERE queue = 'mail' AND status = 'pending'",
            [],
        )
        .unwrap();
    assert_eq!(parked, 2, "mail's due and scheduled tasks");
    assert_eq!(shell(&db, q), want, "the system sqlite3, tasks parked");
    assert_eq!(bundled(&conn, q), want, "the bundled SQLite, tasks parked");
}

#[test]
fn task_overview_gives_ages_lease_time_and_readable_times_in_the_systems_sqlite3() {
    let dir = tempfile::tempdir().unwrap();
    let (db, written) = database(dir.path());
    let q = "SELECT id, status, attempts, age_s, lease_left_s, created, run_at \
             FROM task_overview ORDER BY id";
    let before = now_ms();
    let rows = shell(&db, q);
    let after = now_ms();
    assert_eq!(rows.len(), 7, "{rows:?}");
    let cols: Vec<Vec<&str>> = rows.iter().map(|r| r.split('|').collect()).collect();
    let num = |s: &str| -> f64 {
        s.parse()
            .unwrap_or_else(|_| panic!("expected a number, got {s:?} in {rows:?}"))
    };
    // The age of a task created an hour before `written`, read between `before` and `after`
    // (0.1 s of rounding either way).
    let hour_s = 3600.0;
    let age_lo = hour_s + (before - written) as f64 / 1000.0 - 0.1;
    let age_hi = hour_s + (after - written) as f64 / 1000.0 + 0.1;
    let a = &cols[0];
    assert_eq!(&a[..3], &["a-pending", "pending", "1/3"]);
    let age = num(a[3]);
    assert!(
        (age_lo..=age_hi).contains(&age),
        "age_s {age} not in {age_lo}..{age_hi}"
    );
    assert_eq!(a[4], "", "lease_left_s is only for running tasks");
    // The running task's lease runs out ten minutes after `written`.
    let c = &cols[2];
    assert_eq!(c[1], "running");
    let left = num(c[4]);
    let left_lo = 600.0 - (after - written) as f64 / 1000.0 - 0.1;
    let left_hi = 600.0 - (before - written) as f64 / 1000.0 + 0.1;
    assert!(
        (left_lo..=left_hi).contains(&left),
        "lease_left_s {left} not in {left_lo}..{left_hi}"
    );
    // Fixed instants read as RFC 3339 with milliseconds.
    let d = &cols[3];
    assert_eq!(d[1], "completed");
    assert_eq!(d[5], "2023-11-14T22:13:20.123Z");
    assert_eq!(d[6], "2023-11-14T22:13:20.123Z");
    let d_age = num(d[3]);
    assert!(d_age > 60_000_000.0, "age of a task from 2023: {d_age}");
    // Every task has an age.
    for row in &cols {
        assert!(!row[3].is_empty(), "age_s is NULL: {rows:?}");
    }
    // The bundled SQLite agrees on everything but the instant it was read at.
    let conn = Connection::open(&db).unwrap();
    let lib = bundled(&conn, "SELECT id, status, attempts, lease_left_s IS NULL, created, run_at FROM task_overview ORDER BY id");
    let sys = shell(&db, "SELECT id, status, attempts, lease_left_s IS NULL, created, run_at FROM task_overview ORDER BY id");
    assert_eq!(lib, sys);
}

#[test]
fn recent_failures_lists_the_failed_task_in_the_systems_sqlite3() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = database(dir.path());
    let rows = shell(
        &db,
        "SELECT id, queue, attempts, last_error FROM recent_failures",
    );
    assert_eq!(rows, vec!["e-failed|mail|1|boom".to_string()]);
}

#[test]
fn the_stored_schema_uses_nothing_newer_than_sqlite_3_31() {
    // An operator's shell parses the whole schema when it opens the file; a view (or table)
    // written with newer SQL fails or, worse, answers NULL there.
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = database(dir.path());
    let conn = Connection::open(&db).unwrap();
    let mut st = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        .unwrap();
    let rows: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(rows.iter().any(|(n, _)| n == "queue_depth"));
    for (name, sql) in &rows {
        // Comments may say anything; only the SQL counts.
        let code: String = sql
            .lines()
            .map(|l| l.split("--").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
            .to_lowercase();
        for (token, since) in NEWER_THAN_3_31 {
            assert!(
                !code.contains(token),
                "{name} uses {token:?}, which SQLite knows only since {since}:\n{sql}"
            );
        }
    }
}
