//! The restore drill: prove the backup restores. Restores the newest replica through the
//! `litestream` binary into a temporary file (never over the live one), checks it (integrity,
//! foreign keys, schema version), compares it with the live database when that file is
//! reachable (read-only), and decides pass or fail against a lag threshold. The temporary
//! directory goes away whatever happens.

use crate::clock::{rfc3339, UnixMillis};
use crate::store::LATEST_VERSION;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How to run a drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The litestream binary.
    pub litestream: PathBuf,
    /// The Litestream config naming the database and its replica.
    pub litestream_config: PathBuf,
    /// The live database path as the Litestream config names it.
    pub db_path: PathBuf,
    /// Fail when the replica is further behind the live database than this.
    pub max_lag: Duration,
    /// Give up on the restore after this long.
    pub restore_timeout: Duration,
}

/// What a database holds, for comparing the replica with the live file.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Tasks by status.
    pub tasks_by_status: BTreeMap<String, i64>,
    /// All tasks.
    pub tasks: i64,
    /// All messages.
    pub messages: i64,
    /// The newest task's id.
    pub newest_task_id: Option<String>,
    /// The newest message's id.
    pub newest_message_id: Option<i64>,
    /// The latest change: a task's `updated_at` or a message's `created_at` (ms).
    pub newest_change_at: Option<UnixMillis>,
    /// `PRAGMA user_version`.
    pub schema_version: i64,
}

/// The outcome.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// Pass or fail.
    pub passed: bool,
    /// One line for people.
    pub verdict: String,
    /// Why it failed (empty when it passed).
    pub reasons: Vec<String>,
    /// When the drill ran (RFC 3339).
    pub ran_at: String,
    /// How long it took.
    pub duration_ms: u64,
    /// Size of the restored file.
    pub restored_bytes: Option<u64>,
    /// `PRAGMA integrity_check` of the restored file.
    pub integrity: Option<String>,
    /// Rows of `PRAGMA foreign_key_check`.
    pub foreign_key_violations: Option<i64>,
    /// What the replica holds.
    pub replica: Option<Snapshot>,
    /// What the live file holds, when reachable.
    pub live: Option<Snapshot>,
    /// How far the replica is behind the live file (ms), when both are known.
    pub lag_ms: Option<i64>,
}

/// Reads what a spool database holds.
///
/// # Errors
/// The file cannot be read as a spool database.
pub fn snapshot(conn: &Connection) -> rusqlite::Result<Snapshot> {
    let schema_version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut by = BTreeMap::new();
    let mut st = conn.prepare("SELECT status, count(*) FROM tasks GROUP BY status")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (s, n) = row?;
        by.insert(s, n);
    }
    let tasks = by.values().sum();
    let messages: i64 = conn.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))?;
    let newest_task_id: Option<String> = conn
        .query_row("SELECT max(id) FROM tasks", [], |r| r.get(0))
        .optional()?
        .flatten();
    let newest_message_id: Option<i64> = conn
        .query_row("SELECT max(id) FROM messages", [], |r| r.get(0))
        .optional()?
        .flatten();
    let newest_change_at: Option<i64> = conn.query_row(
        "SELECT max(coalesce((SELECT max(updated_at) FROM tasks), 0), coalesce((SELECT max(created_at) FROM messages), 0))",
        [],
        |r| r.get(0),
    )?;
    Ok(Snapshot {
        tasks_by_status: by,
        tasks,
        messages,
        newest_task_id,
        newest_message_id,
        newest_change_at: newest_change_at.filter(|t| *t > 0),
        schema_version,
    })
}

fn fmt_ms(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// Runs the drill. Never touches the live file except to read it.
pub async fn run(opts: &DrillOptions, now: UnixMillis) -> DrillReport {
    let started = Instant::now();
    let mut report = DrillReport {
        passed: false,
        verdict: String::new(),
        reasons: vec![],
        ran_at: rfc3339(now),
        duration_ms: 0,
        restored_bytes: None,
        integrity: None,
        foreign_key_violations: None,
        replica: None,
        live: None,
        lag_ms: None,
    };
    if let Err(reason) = drill_into(opts, &mut report).await {
        report.reasons.push(reason);
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    report.passed = report.reasons.is_empty();
    report.verdict = verdict(&report, opts);
    report
}

fn verdict(r: &DrillReport, opts: &DrillOptions) -> String {
    if !r.passed {
        return format!("drill FAIL: {}", r.reasons.join("; "));
    }
    let tasks = r.replica.as_ref().map(|s| s.tasks).unwrap_or(0);
    let lag = match r.lag_ms {
        Some(l) => format!(
            "lag {} (max {})",
            fmt_ms(l),
            humantime::format_duration(opts.max_lag)
        ),
        None => "live database not reachable, lag unknown".into(),
    };
    format!(
        "drill PASS: replica restored ({} tasks, {} bytes, schema {}, integrity ok), {lag}, in {}",
        tasks,
        r.restored_bytes.unwrap_or(0),
        r.replica.as_ref().map(|s| s.schema_version).unwrap_or(0),
        fmt_ms(r.duration_ms as i64)
    )
}

async fn drill_into(opts: &DrillOptions, report: &mut DrillReport) -> Result<(), String> {
    // Dropped at the end of this function, on every path: the restored copy never lingers.
    let tmp = tempfile::Builder::new()
        .prefix("spool-drill-")
        .tempdir()
        .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let out = tmp.path().join("restored.db");
    restore(opts, &out).await?;
    let meta = std::fs::metadata(&out)
        .map_err(|_| "the replica is empty: litestream restored no database".to_string())?;
    report.restored_bytes = Some(meta.len());

    let out2 = out.clone();
    let checked = tokio::task::spawn_blocking(move || check_restored(&out2))
        .await
        .map_err(|e| format!("check failed: {e}"))?;
    let (integrity, fk, replica) = checked?;
    report.integrity = Some(integrity.clone());
    report.foreign_key_violations = Some(fk);
    if integrity != "ok" {
        report.reasons.push(format!(
            "the restored database is damaged: integrity_check says {integrity:?}"
        ));
    }
    if fk > 0 {
        report.reasons.push(format!(
            "the restored database has {fk} foreign key violations"
        ));
    }
    if replica.schema_version == 0 {
        report
            .reasons
            .push("the restored file has no spool schema (user_version 0)".into());
    } else if replica.schema_version > i64::from(LATEST_VERSION) {
        report.reasons.push(format!(
            "the restored schema version {} is newer than this spool knows ({LATEST_VERSION})",
            replica.schema_version
        ));
    }

    let live_path = opts.db_path.clone();
    if live_path.exists() {
        let live = tokio::task::spawn_blocking(move || read_live(&live_path))
            .await
            .map_err(|e| format!("reading the live database failed: {e}"))?;
        match live {
            Ok(live) => {
                if live.schema_version != replica.schema_version {
                    report.reasons.push(format!(
                        "schema version differs: replica {} vs live {}",
                        replica.schema_version, live.schema_version
                    ));
                }
                let lag = match (live.newest_change_at, replica.newest_change_at) {
                    (Some(l), Some(r)) => (l - r).max(0),
                    (Some(_), None) => i64::MAX,
                    _ => 0,
                };
                report.lag_ms = Some(lag);
                if lag > opts.max_lag.as_millis() as i64 {
                    report.reasons.push(if lag == i64::MAX {
                        "the replica holds no task while the live database does".into()
                    } else {
                        format!(
                            "the replica is {} behind the live database (max {})",
                            fmt_ms(lag),
                            humantime::format_duration(opts.max_lag)
                        )
                    });
                }
                report.live = Some(live);
            }
            Err(e) => report
                .reasons
                .push(format!("the live database could not be read: {e}")),
        }
    }
    report.replica = Some(replica);
    drop(tmp);
    Ok(())
}

async fn restore(opts: &DrillOptions, out: &Path) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&opts.litestream);
    cmd.arg("restore")
        .arg("-config")
        .arg(&opts.litestream_config)
        .arg("-o")
        .arg(out)
        .arg(&opts.db_path)
        // Litestream 0.5's S3 client refuses to start with AWS_CA_BUNDLE set.
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", opts.litestream.display()))?;
    let output = tokio::time::timeout(opts.restore_timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "litestream restore took longer than {}",
                humantime::format_duration(opts.restore_timeout)
            )
        })?
        .map_err(|e| format!("litestream restore: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    if text.contains("no matching backup")
        || text.contains("no backups")
        || text.contains("no snapshots")
    {
        return Err(format!("the replica is empty: no backup found ({last})"));
    }
    Err(format!(
        "litestream restore failed ({}): {last}",
        output.status
    ))
}

type Checked = (String, i64, Snapshot);

fn check_restored(path: &Path) -> Result<Checked, String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("the restored file cannot be opened: {e}"))?;
    let damaged = |e: rusqlite::Error| format!("the restored database is damaged: {e}");
    let mut st = conn.prepare("PRAGMA integrity_check").map_err(damaged)?;
    let lines: Vec<String> = st
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(damaged)?
        .collect::<Result<_, _>>()
        .map_err(damaged)?;
    let integrity = lines.join("; ");
    let fk: i64 = {
        let mut st = conn.prepare("PRAGMA foreign_key_check").map_err(damaged)?;
        let rows = st.query_map([], |_| Ok(())).map_err(damaged)?;
        rows.count() as i64
    };
    let snap = snapshot(&conn).map_err(damaged)?;
    Ok((integrity, fk, snap))
}

fn read_live(path: &Path) -> rusqlite::Result<Snapshot> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // One read transaction so the counts agree; it ends at once.
    conn.execute_batch("BEGIN")?;
    let s = snapshot(&conn);
    let _ = conn.execute_batch("COMMIT");
    s
}

/// Records a drill's result in the live database (the `drills` table), for `/metrics` and
/// `spool inspect`.
///
/// # Errors
/// The live database cannot take the write.
pub fn record(db_path: &Path, report: &DrillReport, now: UnixMillis) -> rusqlite::Result<()> {
    let conn = Connection::open_with_flags(db_path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let details = serde_json::to_string(report).unwrap_or_else(|_| "{}".into());
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = conn.execute(
        "INSERT INTO drills (ran_at, passed, lag_ms, verdict, details) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![now, report.passed, report.lag_ms, report.verdict, details],
    );
    match r {
        Ok(_) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The latest drill and the latest passing one, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct LastDrill {
    /// When the latest drill ran.
    pub ran_at: String,
    /// Whether it passed.
    pub passed: bool,
    /// Its verdict line.
    pub verdict: String,
    /// Its lag.
    pub lag_ms: Option<i64>,
    /// When the latest passing drill ran (ms since the epoch).
    pub last_pass_at_ms: Option<i64>,
}

/// The latest drill recorded for the database at `db`, read on a blocking thread through a
/// read-only connection (`None` when there is none or it cannot be read).
pub async fn last_at(db: PathBuf) -> Option<LastDrill> {
    tokio::task::spawn_blocking(move || {
        let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        conn.busy_timeout(Duration::from_secs(1)).ok()?;
        last(&conn).ok().flatten()
    })
    .await
    .ok()
    .flatten()
}

/// Reads the latest recorded drill.
///
/// # Errors
/// A database error.
pub fn last(conn: &Connection) -> rusqlite::Result<Option<LastDrill>> {
    let last_pass: Option<i64> =
        conn.query_row("SELECT max(ran_at) FROM drills WHERE passed = 1", [], |r| {
            r.get(0)
        })?;
    conn.query_row(
        "SELECT ran_at, passed, verdict, lag_ms FROM drills ORDER BY id DESC LIMIT 1",
        [],
        |r| {
            Ok(LastDrill {
                ran_at: rfc3339(r.get(0)?),
                passed: r.get(1)?,
                verdict: r.get(2)?,
                lag_ms: r.get(3)?,
                last_pass_at_ms: last_pass,
            })
        },
    )
    .optional()
}
