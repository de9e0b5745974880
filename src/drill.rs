//! The restore drill: prove the backup restores. Asks Litestream where the replica is, reads the
//! live database right after (read-only, when that file is reachable), checks that the temporary
//! directory has room, restores the replica as it was at that position through the `litestream`
//! binary into a temporary file (never over the live one), checks it (integrity, foreign keys,
//! schema version), compares it with what the live database held, and decides pass or fail
//! against a lag threshold. The temporary directory goes away whatever happens.
//!
//! The lag is replication's, not the drill's: both sides are read before the restore starts and
//! the restore is pinned to the position listed then, so however long the restore and the checks
//! take, they are not counted in it.
//!
//! The result is recorded in a small side file beside the database ([`record`], read back by
//! [`last_at`]), never in the database itself: a write there while Litestream is stopped would be
//! the last connection to close, SQLite would checkpoint the WAL away, and the next
//! `litestream replicate` would upload the whole database again.

use crate::clock::{rfc3339, UnixMillis};
use crate::store::LATEST_VERSION;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const DRILL_COUNTS: &str = include_str!("../sql/sqlite/queries/drill_counts.sql");
const DRILL_NEWEST_CHANGE: &str = include_str!("../sql/sqlite/queries/drill_newest_change.sql");
const DRILL_PENDING: &str = include_str!("../sql/sqlite/queries/drill_pending.sql");
/// The schema version that added `tasks.parked` (0015_parked.sql), which `DRILL_PENDING` reads;
/// a file at an older version is read with `DRILL_PENDING_BEFORE_0015`.
const PARKED_SINCE: i64 = 15;
const DRILL_PENDING_BEFORE_0015: &str =
    include_str!("../sql/sqlite/queries/drill_pending_before_0015.sql");
const DRILL_NEWEST_IDS: &str = include_str!("../sql/sqlite/queries/drill_newest_ids.sql");

/// The restore timeout when none is given: at least this long...
pub const RESTORE_TIMEOUT_MIN: Duration = Duration::from_secs(600);
/// ...and long enough to restore the database's size at this many bytes a second: a seventh of
/// the ~70 MB/s measured (Litestream 0.5, bound by its own CPU), so a slow disk or a busy machine
/// is not mistaken for a broken backup. 10 minutes covers up to ~6 GB; 40 GB gets ~68 minutes.
pub const RESTORE_FLOOR_BYTES_PER_S: u64 = 10 << 20;

/// How long `litestream ltx` may take to list the replica before the drill goes on without it.
const POSITION_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Give up on the restore after this long; `None`: [`restore_timeout_for`] the database's size.
    pub restore_timeout: Option<Duration>,
    /// Where the restored copy is written (it needs about the database's size free).
    pub tmp_dir: PathBuf,
}

/// The restore timeout for a database of `bytes` (unknown: the minimum): see
/// [`RESTORE_TIMEOUT_MIN`] and [`RESTORE_FLOOR_BYTES_PER_S`].
pub fn restore_timeout_for(bytes: Option<u64>) -> Duration {
    let scaled = Duration::from_secs(bytes.unwrap_or(0) / RESTORE_FLOOR_BYTES_PER_S);
    scaled.max(RESTORE_TIMEOUT_MIN)
}

/// The free space the restore needs for a database of `bytes`: the restored file, plus a
/// twentieth and 1 MiB for the filesystem's own overhead.
pub fn space_needed_for(bytes: u64) -> u64 {
    bytes.saturating_add(bytes / 20).saturating_add(1 << 20)
}

/// What a database holds, for comparing the replica with the live file.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Tasks by status (statuses with no task left out).
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
    /// The database's size: `page_count` × `page_size` (what a restore writes).
    pub bytes: u64,
}

/// How long each step took (ms), in the order they run; a step that did not run is `null`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepTimings {
    /// Asking Litestream for the replica's position (`litestream ltx`), first.
    pub replica_position: Option<u64>,
    /// Reading the live database, right after.
    pub live_read: Option<u64>,
    /// `litestream restore` into the temporary directory.
    pub restore: Option<u64>,
    /// `PRAGMA integrity_check` of the restored file.
    pub integrity_check: Option<u64>,
    /// `PRAGMA foreign_key_check` of the restored file.
    pub foreign_key_check: Option<u64>,
    /// Reading the restored file's counts and newest change, and comparing with the live side.
    pub compare: Option<u64>,
}

/// Where the replica is, as Litestream lists it (`litestream ltx -level all`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReplicaPosition {
    /// The newest transaction id in the replica (hex, as Litestream writes it).
    pub txid: String,
    /// When the file holding it was written (RFC 3339, to the second).
    pub written_at: String,
    /// How many files the replica holds, all levels.
    pub files: usize,
    /// Their total size (compressed).
    pub bytes: u64,
    /// The size of the newest snapshot (level 9, compressed).
    pub snapshot_bytes: Option<u64>,
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
    /// When the drill began, which is when the live database was read (RFC 3339).
    pub ran_at: String,
    /// How long the whole drill took: not part of the lag.
    pub duration_ms: u64,
    /// Each step's time.
    pub timings_ms: StepTimings,
    /// Size of the restored file.
    pub restored_bytes: Option<u64>,
    /// The restore's time limit.
    pub restore_timeout_ms: u64,
    /// Where the restored copy went.
    pub tmp_dir: String,
    /// Free space there before the restore.
    pub tmp_free_bytes: Option<u64>,
    /// Free space the restore needs (unknown when neither the live file nor the replica's
    /// listing tells the size).
    pub tmp_needed_bytes: Option<u64>,
    /// `PRAGMA integrity_check` of the restored file.
    pub integrity: Option<String>,
    /// Rows of `PRAGMA foreign_key_check`.
    pub foreign_key_violations: Option<i64>,
    /// Where the replica was when the drill began, when Litestream lists it: the restore is
    /// pinned to this transaction (`-txid`).
    pub replica_position: Option<ReplicaPosition>,
    /// What the replica holds.
    pub replica: Option<Snapshot>,
    /// What the live file held when the drill began, when reachable.
    pub live: Option<Snapshot>,
    /// The replication lag (ms): the live side's newest change when the drill began minus the
    /// newest change in the replica as it was then, 0 when the replica had caught up; `null`
    /// when the live file is not reachable. Not the drill's duration.
    pub lag_ms: Option<i64>,
}

/// Reads what a spool database holds, from indexes (see `sql/sqlite/queries/drill_*.sql`).
///
/// # Errors
/// The file cannot be read as a spool database.
pub fn snapshot(conn: &Connection) -> rusqlite::Result<Snapshot> {
    let schema_version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let page_count: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    let pending_sql = if schema_version >= PARKED_SINCE {
        DRILL_PENDING
    } else {
        DRILL_PENDING_BEFORE_0015
    };
    let (pending, pending_newest): (i64, i64) =
        conn.query_row(pending_sql, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut by = BTreeMap::new();
    if pending > 0 {
        by.insert("pending".to_string(), pending);
    }
    let mut st = conn.prepare(DRILL_COUNTS)?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (s, n) = row?;
        if n > 0 {
            by.insert(s, n);
        }
    }
    let tasks = by.values().sum();
    let (messages, newest_task_id, newest_message_id) =
        conn.query_row(DRILL_NEWEST_IDS, [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
    let newest_change_at: Option<i64> = conn.query_row(DRILL_NEWEST_CHANGE, [], |r| r.get(0))?;
    Ok(Snapshot {
        tasks_by_status: by,
        tasks,
        messages,
        newest_task_id,
        newest_message_id,
        newest_change_at: newest_change_at
            .max(Some(pending_newest))
            .filter(|t| *t > 0),
        schema_version,
        bytes: (page_count.max(0) as u64).saturating_mul(page_size.max(0) as u64),
    })
}

fn fmt_ms(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30))
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
    } else {
        format!("{} KiB", b.div_ceil(1024))
    }
}

fn ms_since(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
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
        timings_ms: StepTimings::default(),
        restored_bytes: None,
        restore_timeout_ms: 0,
        tmp_dir: opts.tmp_dir.display().to_string(),
        tmp_free_bytes: None,
        tmp_needed_bytes: None,
        integrity: None,
        foreign_key_violations: None,
        replica_position: None,
        replica: None,
        live: None,
        lag_ms: None,
    };
    if let Err(reason) = drill_into(opts, &mut report).await {
        report.reasons.push(reason);
    }
    report.duration_ms = ms_since(started);
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
    let t = &r.timings_ms;
    format!(
        "drill PASS: replica restored ({} tasks, {} bytes, schema {}, integrity ok), {lag}, in {} (restore {}, checks {})",
        tasks,
        r.restored_bytes.unwrap_or(0),
        r.replica.as_ref().map(|s| s.schema_version).unwrap_or(0),
        fmt_ms(r.duration_ms as i64),
        fmt_ms(t.restore.unwrap_or(0) as i64),
        fmt_ms(
            (t.integrity_check.unwrap_or(0) + t.foreign_key_check.unwrap_or(0) + t.compare.unwrap_or(0))
                as i64
        ),
    )
}

async fn drill_into(opts: &DrillOptions, report: &mut DrillReport) -> Result<(), String> {
    // 1. Where the replica is (one listing). The restore below is pinned to this transaction,
    // so what is restored is the replica as it was now, however long the restore takes.
    let t = Instant::now();
    report.replica_position = replica_position(opts).await;
    report.timings_ms.replica_position = Some(ms_since(t));

    // 2. The live side, right after: the lag compares the two as they were at the start (the
    // live side a few milliseconds later, so the lag is never understated), and the drill's own
    // run time is never counted in it.
    let live_path = opts.db_path.clone();
    if live_path.exists() {
        let t = Instant::now();
        let live = tokio::task::spawn_blocking(move || read_live(&live_path))
            .await
            .map_err(|e| format!("reading the live database failed: {e}"))?;
        report.timings_ms.live_read = Some(ms_since(t));
        match live {
            Ok(live) => report.live = Some(live),
            Err(e) => report
                .reasons
                .push(format!("the live database could not be read: {e}")),
        }
    }

    // 3. Room for the restored copy, before anything is written.
    let size = report.live.as_ref().map(|l| l.bytes).or_else(|| {
        report
            .replica_position
            .as_ref()
            .and_then(|p| p.snapshot_bytes.or(Some(p.bytes)))
    });
    check_space(opts, size, report)?;
    let timeout = opts
        .restore_timeout
        .unwrap_or_else(|| restore_timeout_for(size));
    report.restore_timeout_ms = timeout.as_millis() as u64;

    // 4. The restore. Dropped at the end of this function, on every path: the restored copy
    // never lingers.
    let tmp = tempfile::Builder::new()
        .prefix("spool-drill-")
        .tempdir_in(&opts.tmp_dir)
        .map_err(|e| {
            format!(
                "cannot make a temporary directory in {} (--tmp-dir): {e}",
                opts.tmp_dir.display()
            )
        })?;
    let out = tmp.path().join("restored.db");
    let t = Instant::now();
    let txid = report.replica_position.as_ref().map(|p| p.txid.clone());
    restore(opts, &out, txid.as_deref(), timeout).await?;
    report.timings_ms.restore = Some(ms_since(t));
    let meta = std::fs::metadata(&out)
        .map_err(|_| "the replica is empty: litestream restored no database".to_string())?;
    report.restored_bytes = Some(meta.len());

    // 5. The checks, timed one by one.
    let out2 = out.clone();
    let checked = tokio::task::spawn_blocking(move || check_restored(&out2))
        .await
        .map_err(|e| format!("check failed: {e}"))?;
    let c = checked?;
    report.timings_ms.integrity_check = Some(c.integrity_ms);
    report.timings_ms.foreign_key_check = Some(c.fk_ms);
    // The check results first: a replica too damaged to read still reports what the checks saw.
    report.integrity = Some(c.integrity.clone());
    report.foreign_key_violations = Some(c.fk);
    let t = Instant::now();
    let replica = c.snapshot?;
    if c.integrity != "ok" {
        report.reasons.push(format!(
            "the restored database is damaged: integrity_check says {:?}",
            c.integrity
        ));
    }
    if c.fk > 0 {
        report.reasons.push(format!(
            "the restored database has {} foreign key violations",
            c.fk
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
    if let Some(live) = &report.live {
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
    }
    report.replica = Some(replica);
    report.timings_ms.compare = Some(c.snapshot_ms + ms_since(t));
    drop(tmp);
    Ok(())
}

/// Fails when the temporary directory has less room than a restore of `size` needs.
fn check_space(
    opts: &DrillOptions,
    size: Option<u64>,
    report: &mut DrillReport,
) -> Result<(), String> {
    let st = nix::sys::statvfs::statvfs(&opts.tmp_dir).map_err(|e| {
        format!(
            "cannot use the temporary directory {} (--tmp-dir): {e}",
            opts.tmp_dir.display()
        )
    })?;
    let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
    report.tmp_free_bytes = Some(free);
    let Some(size) = size else {
        return Ok(());
    };
    let needed = space_needed_for(size);
    report.tmp_needed_bytes = Some(needed);
    if free < needed {
        return Err(format!(
            "not enough free space for the restore in {}: {} free, {} needed (the database is {}); \
             pass --tmp-dir DIR on a filesystem with room (a tmpfs /tmp holds the copy in RAM)",
            opts.tmp_dir.display(),
            fmt_bytes(free),
            fmt_bytes(needed),
            fmt_bytes(size)
        ));
    }
    Ok(())
}

fn litestream_cmd(opts: &DrillOptions) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&opts.litestream);
    // Litestream 0.5's S3 client refuses to start with AWS_CA_BUNDLE set.
    cmd.env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// One file of `litestream ltx -json`.
#[derive(Debug, Deserialize)]
struct LtxFile {
    level: u32,
    max_txid: String,
    size: u64,
    timestamp: String,
}

/// The replica's newest transaction, from one listing; `None` when Litestream cannot say (an
/// older Litestream without `ltx`, an empty replica, an unreachable store: the restore that
/// follows reports those).
async fn replica_position(opts: &DrillOptions) -> Option<ReplicaPosition> {
    let mut cmd = litestream_cmd(opts);
    cmd.args(["ltx", "-json", "-level", "all", "-config"])
        .arg(&opts.litestream_config)
        .arg(&opts.db_path);
    let child = cmd.spawn().ok()?;
    let out = tokio::time::timeout(POSITION_TIMEOUT, child.wait_with_output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let files: Vec<LtxFile> = serde_json::from_slice(&out.stdout).ok()?;
    let txid = |f: &LtxFile| u64::from_str_radix(&f.max_txid, 16).unwrap_or(0);
    let newest = files.iter().max_by_key(|f| txid(f))?;
    let snapshot_bytes = files
        .iter()
        .filter(|f| f.level == 9)
        .max_by_key(|f| txid(f))
        .map(|f| f.size);
    Some(ReplicaPosition {
        txid: newest.max_txid.clone(),
        written_at: newest.timestamp.clone(),
        files: files.len(),
        bytes: files.iter().map(|f| f.size).sum(),
        snapshot_bytes,
    })
}

/// `litestream restore` into `out`, up to `txid` when given (else the newest transaction).
async fn restore(
    opts: &DrillOptions,
    out: &Path,
    txid: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let mut cmd = litestream_cmd(opts);
    cmd.arg("restore")
        .arg("-config")
        .arg(&opts.litestream_config)
        .arg("-o")
        .arg(out);
    if let Some(txid) = txid {
        cmd.arg("-txid").arg(txid);
    }
    cmd.arg(&opts.db_path);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", opts.litestream.display()))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "litestream restore took longer than {} (--timeout)",
                humantime::format_duration(timeout)
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

/// The checks of the restored file, each timed.
struct Checked {
    integrity: String,
    integrity_ms: u64,
    fk: i64,
    fk_ms: u64,
    /// A restored file whose counts cannot be read is damaged: reported after the checks.
    snapshot: Result<Snapshot, String>,
    snapshot_ms: u64,
}

fn check_restored(path: &Path) -> Result<Checked, String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("the restored file cannot be opened: {e}"))?;
    let damaged = |e: rusqlite::Error| format!("the restored database is damaged: {e}");
    let t = Instant::now();
    let mut lines: Vec<String> = vec![];
    conn.pragma_query(None, "integrity_check", |r| {
        lines.push(r.get::<_, String>(0)?);
        Ok(())
    })
    .map_err(damaged)?;
    let integrity_ms = ms_since(t);
    let t = Instant::now();
    let mut fk = 0i64;
    conn.pragma_query(None, "foreign_key_check", |_| {
        fk += 1;
        Ok(())
    })
    .map_err(damaged)?;
    let fk_ms = ms_since(t);
    let t = Instant::now();
    let snapshot = snapshot(&conn).map_err(damaged);
    Ok(Checked {
        integrity: lines.join("; "),
        integrity_ms,
        fk,
        fk_ms,
        snapshot,
        snapshot_ms: ms_since(t),
    })
}

/// Reads the live database read-only, in one read transaction so the figures agree. The
/// connection never checkpoints (it cannot write, and checkpoint-on-close is off besides): the
/// WAL Litestream has not shipped yet stays where it is.
fn read_live(path: &Path) -> rusqlite::Result<Snapshot> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let tx = conn.unchecked_transaction()?;
    let s = snapshot(&tx);
    drop(tx);
    s
}

/// The side file holding the last drill: `<database file>.drill.json`, beside the database
/// (`data/spool.db.drill.json`). Litestream does not replicate it; it is a record of the
/// machine that ran the drill, not of the data.
pub fn record_path(db_path: &Path) -> PathBuf {
    let mut name = db_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "spool.db".into());
    name.push(".drill.json");
    db_path.with_file_name(name)
}

/// What the side file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recorded {
    /// When the drill ran (ms since the epoch).
    ran_at_ms: UnixMillis,
    passed: bool,
    verdict: String,
    lag_ms: Option<i64>,
    duration_ms: Option<u64>,
    /// When the latest passing drill ran, this one or an earlier one.
    last_pass_at_ms: Option<UnixMillis>,
    /// The whole report, for people.
    #[serde(default)]
    report: serde_json::Value,
}

/// Records a drill's result in the side file ([`record_path`]) for `/metrics` and
/// `spool inspect`: written to a temporary file in the same directory (mode 0600), flushed, and
/// renamed over the old one, so a reader sees the old record or the new one, never half of one.
/// The latest passing drill's time is carried over from the old record when this one failed.
/// When run as root for a database owned by another user, the file is given to that user, so the
/// server can read it.
///
/// # Errors
/// The directory cannot take the file.
pub fn record(db_path: &Path, report: &DrillReport, now: UnixMillis) -> std::io::Result<()> {
    let path = record_path(db_path);
    let previous = read_recorded(&path).ok().flatten();
    let last_pass_at_ms = if report.passed {
        Some(now)
    } else {
        previous.and_then(|p| p.last_pass_at_ms)
    };
    let rec = Recorded {
        ran_at_ms: now,
        passed: report.passed,
        verdict: report.verdict.clone(),
        lag_ms: report.lag_ms,
        duration_ms: Some(report.duration_ms),
        last_pass_at_ms,
        report: serde_json::to_value(report).unwrap_or_default(),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".drill-")
        .suffix(".json.tmp")
        .tempfile_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, &rec)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    give_to_db_owner(tmp.as_file(), db_path);
    tmp.persist(&path).map_err(|e| e.error)?;
    // The rename itself is durable once the directory is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Root recording a drill for a database another user owns hands the file to that user.
fn give_to_db_owner(file: &std::fs::File, db_path: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Ok(m) = std::fs::metadata(db_path) {
        if m.uid() != 0 {
            let _ = nix::unistd::fchown(
                file,
                Some(nix::unistd::Uid::from_raw(m.uid())),
                Some(nix::unistd::Gid::from_raw(m.gid())),
            );
        }
    }
}

fn read_recorded(path: &Path) -> std::io::Result<Option<Recorded>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
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
    /// Its replication lag.
    pub lag_ms: Option<i64>,
    /// How long it took (not part of the lag).
    pub duration_ms: Option<u64>,
    /// When the latest passing drill ran (ms since the epoch).
    pub last_pass_at_ms: Option<i64>,
}

/// Reads the latest recorded drill for the database at `db_path` from its side file (a plain
/// file read: no database, no lock). `None` when no drill was recorded, or when the file cannot
/// be read (logged).
pub fn last_at(db_path: &Path) -> Option<LastDrill> {
    let path = record_path(db_path);
    match read_recorded(&path) {
        Ok(r) => r.map(|r| LastDrill {
            ran_at: rfc3339(r.ran_at_ms),
            passed: r.passed,
            verdict: r.verdict,
            lag_ms: r.lag_ms,
            duration_ms: r.duration_ms,
            last_pass_at_ms: r.last_pass_at_ms,
        }),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the last drill's record cannot be read");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn report(passed: bool) -> DrillReport {
        DrillReport {
            passed,
            verdict: if passed {
                "drill PASS: x"
            } else {
                "drill FAIL: y"
            }
            .into(),
            reasons: vec![],
            ran_at: rfc3339(0),
            duration_ms: 4200,
            timings_ms: StepTimings::default(),
            restored_bytes: None,
            restore_timeout_ms: 0,
            tmp_dir: "/tmp".into(),
            tmp_free_bytes: None,
            tmp_needed_bytes: None,
            integrity: None,
            foreign_key_violations: None,
            replica_position: None,
            replica: None,
            live: None,
            lag_ms: Some(300),
        }
    }

    #[test]
    fn a_recorded_drill_is_read_back_and_a_failure_keeps_the_last_pass() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("spool.db");
        assert!(last_at(&db).is_none());
        record(&db, &report(true), 1_000).unwrap();
        let path = record_path(&db);
        assert_eq!(path, dir.path().join("spool.db.drill.json"));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let d = last_at(&db).unwrap();
        assert!(d.passed);
        assert_eq!(d.last_pass_at_ms, Some(1_000));
        assert_eq!(d.lag_ms, Some(300));
        assert_eq!(d.duration_ms, Some(4200));
        record(&db, &report(false), 2_000).unwrap();
        let d = last_at(&db).unwrap();
        assert!(!d.passed);
        assert_eq!(d.ran_at, rfc3339(2_000));
        assert_eq!(d.verdict, "drill FAIL: y");
        assert_eq!(d.last_pass_at_ms, Some(1_000));
        // Only the record is left in the directory: no temporary file.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("spool.db.drill.json")]);
    }

    #[test]
    fn an_unreadable_record_is_no_drill() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("spool.db");
        std::fs::write(record_path(&db), "{not json").unwrap();
        assert!(last_at(&db).is_none());
        // The next drill replaces it.
        record(&db, &report(false), 5).unwrap();
        assert_eq!(last_at(&db).unwrap().last_pass_at_ms, None);
    }

    #[test]
    fn the_restore_timeout_scales_with_the_size_above_ten_minutes() {
        assert_eq!(restore_timeout_for(None), RESTORE_TIMEOUT_MIN);
        assert_eq!(restore_timeout_for(Some(1 << 30)), RESTORE_TIMEOUT_MIN);
        assert_eq!(
            restore_timeout_for(Some(40 << 30)),
            Duration::from_secs(4096)
        );
        assert_eq!(space_needed_for(20 << 20), (21 << 20) + (1 << 20));
    }
}
