//! `spool migrate-to-postgres`: copies a spool SQLite file (live or stopped) into an empty
//! PostgreSQL database, then proves the copy.
//!
//! What is copied is [`TABLES`]: for each table, the list of its columns, which both the copy and
//! the checksum read; a column added to the schema is one line there. Not copied ([`NOT_COPIED`]):
//! `workers` (each process registers itself when it starts), `health` (the one `/readyz` row),
//! `drills` (results of restore drills of the SQLite file), `task_message_counts` (on PostgreSQL
//! a task's message count lives on the task, set from the copied messages) and `queue_tokens`
//! (a rate limit's bucket starts full on the new database).
//!
//! # How
//! 1. The SQLite file is opened read-only and read in one read transaction: one snapshot of a
//!    live file (WAL readers never block its writer, nor it them). Its schema must be the one
//!    this spool writes.
//! 2. The target is refused when any of its tables holds a row (nothing is written); otherwise
//!    its migrations run (`sql/postgres/migrations/`).
//! 3. One transaction copies every table, [`BATCH_ROWS`] rows per `COPY`, in foreign-key order.
//!    One transaction for the whole copy, not one per table: a copy that fails anywhere (a row
//!    PostgreSQL refuses, a lost connection, Ctrl-C, a checksum that differs) leaves the target
//!    as empty as it was, so it can simply be run again, and no `spool` process ever sees half
//!    a queue (tasks without their messages, users without their tokens). PostgreSQL keeps a
//!    large transaction without trouble; its cost is that the copied rows take disk twice until
//!    autovacuum's next pass after commit (the `UPDATE` of the tasks that have messages).
//! 4. Still in that transaction, every table is read back and compared with what was read from
//!    SQLite: row counts, and a SHA-256 over the rows in key order, each value in one canonical
//!    text form ([`Digest`]). Only then does it commit.
//!
//! Ids are kept: task ids, user and token ids (the ids of users and tokens go on after the
//! largest copied), change-log positions (so `/v1/events` resumes with the same `Last-Event-ID`),
//! and each message's SQLite id as its position within its task (so a task's SSE stream resumes
//! with the same `Last-Event-ID`; new messages go on after the task's last). Running tasks keep
//! their lease (owner and expiry): a PostgreSQL worker rescues them once it expires.
//!
//! The statements are made from [`TABLES`] (the one place where spool builds SQL text), so that
//! the copy, the read-back and the checksum can never disagree on a column.

use super::postgres::{connect_direct, describe_err, migrate, sql, PostgresUrl};
use super::{sqlite, StoreError};
use bytes::Bytes;
use futures::{SinkExt, TryStreamExt};
use indicatif::ProgressBar;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

/// Rows per `COPY` statement.
pub const BATCH_ROWS: usize = 1000;

/// How a column's values are read, written and compared. Every value travels as text: JSON as
/// the exact text spool wrote (PostgreSQL's `json` keeps it), a UUID as its lowercase form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An integer (SQLite INTEGER, PostgreSQL bigint or integer).
    Int,
    /// Text, JSON or a UUID.
    Text,
    /// SQLite's 0 or 1, PostgreSQL's boolean: `0` or `1` in the checksum.
    Bool,
}

/// A column: its name on SQLite, its name on PostgreSQL, its kind.
#[derive(Debug)]
struct Col {
    sqlite: &'static str,
    pg: &'static str,
    kind: Kind,
}

/// A column of the same name on both sides.
const fn col(name: &'static str, kind: Kind) -> Col {
    Col {
        sqlite: name,
        pg: name,
        kind,
    }
}

/// A table to copy.
#[derive(Debug)]
struct Table {
    /// Its name on both sides.
    name: &'static str,
    /// The rows of the SQLite table that are copied (a row whose parent is gone, left by a
    /// write with foreign keys off, would be refused by PostgreSQL's keys).
    sqlite_where: &'static str,
    /// The order both sides are read in for the checksum: the key, compared byte by byte on
    /// both (SQLite's BINARY collation, PostgreSQL's "C").
    sqlite_order: &'static str,
    pg_order: &'static str,
    /// The columns, copied and checked.
    cols: &'static [Col],
}

/// Every table copied, parents before children. Adding a column to the schema: add it here.
const TABLES: &[Table] = &[
    Table {
        name: "users",
        sqlite_where: "",
        sqlite_order: "id",
        pg_order: "id",
        cols: &[
            col("id", Kind::Int),
            col("name", Kind::Text),
            col("issuer", Kind::Text),
            col("is_admin", Kind::Bool),
            col("created_at", Kind::Int),
        ],
    },
    Table {
        name: "tokens",
        sqlite_where: "WHERE user_id IN (SELECT id FROM users)",
        sqlite_order: "id",
        pg_order: "id",
        cols: &[
            col("id", Kind::Int),
            col("user_id", Kind::Int),
            col("token_hash", Kind::Text),
            col("created_at", Kind::Int),
        ],
    },
    Table {
        name: "queues",
        sqlite_where: "",
        sqlite_order: "name",
        pg_order: "name COLLATE \"C\"",
        cols: &[
            col("name", Kind::Text),
            col("paused", Kind::Bool),
            col("updated_at", Kind::Int),
        ],
    },
    Table {
        name: "tasks",
        sqlite_where: "",
        sqlite_order: "id",
        pg_order: "id",
        cols: &[
            col("id", Kind::Text),
            col("user_id", Kind::Text),
            col("queue", Kind::Text),
            col("kind", Kind::Text),
            col("payload", Kind::Text),
            col("status", Kind::Text),
            col("priority", Kind::Int),
            col("run_at", Kind::Int),
            col("attempts", Kind::Int),
            col("max_attempts", Kind::Int),
            col("timeout_ms", Kind::Int),
            col("lease_owner", Kind::Text),
            col("lease_expires_at", Kind::Int),
            col("cancel_requested", Kind::Bool),
            col("last_error", Kind::Text),
            col("result", Kind::Text),
            col("idempotency_key", Kind::Text),
            col("request_hash", Kind::Text),
            col("created_at", Kind::Int),
            col("started_at", Kind::Int),
            col("completed_at", Kind::Int),
            col("updated_at", Kind::Int),
            col("checkpoint", Kind::Text),
            col("wait_until", Kind::Int),
            col("wake_reason", Kind::Text),
            col("inbox_cursor", Kind::Int),
            col("inbox_read", Kind::Int),
            col("concurrency_key", Kind::Text),
        ],
    },
    Table {
        name: "messages",
        sqlite_where: "WHERE task_id IN (SELECT id FROM tasks)",
        sqlite_order: "task_id, id",
        pg_order: "task_id, seq",
        cols: &[
            col("task_id", Kind::Text),
            // The SQLite id becomes the position within the task: Last-Event-ID carries over.
            Col {
                sqlite: "id",
                pg: "seq",
                kind: Kind::Int,
            },
            col("kind", Kind::Text),
            col("content", Kind::Text),
            col("created_at", Kind::Int),
            col("author", Kind::Text),
        ],
    },
    Table {
        name: "stream_tokens",
        sqlite_where: "WHERE task_id IN (SELECT id FROM tasks)",
        sqlite_order: "token_hash",
        pg_order: "token_hash COLLATE \"C\"",
        cols: &[
            col("token_hash", Kind::Text),
            col("task_id", Kind::Text),
            col("expires_at", Kind::Int),
        ],
    },
    Table {
        name: "task_tokens",
        sqlite_where: "WHERE task_id IN (SELECT id FROM tasks)",
        sqlite_order: "token_hash",
        pg_order: "token_hash COLLATE \"C\"",
        cols: &[
            col("token_hash", Kind::Text),
            col("task_id", Kind::Text),
            col("attempt", Kind::Int),
            col("lease_owner", Kind::Text),
            col("started_at", Kind::Int),
            col("created_at", Kind::Int),
        ],
    },
    Table {
        name: "task_changes",
        sqlite_where: "",
        sqlite_order: "seq",
        pg_order: "seq",
        cols: &[
            col("seq", Kind::Int),
            col("task_id", Kind::Text),
            col("status", Kind::Text),
            col("at", Kind::Int),
        ],
    },
    Table {
        name: "schedules",
        sqlite_where: "",
        sqlite_order: "name",
        pg_order: "name COLLATE \"C\"",
        cols: &[
            col("name", Kind::Text),
            col("cron", Kind::Text),
            col("timezone", Kind::Text),
            col("task", Kind::Text),
            col("catch_up", Kind::Text),
            col("catch_up_max", Kind::Int),
            col("source", Kind::Text),
            col("last_fire_at", Kind::Int),
            col("last_task_id", Kind::Text),
            col("created_at", Kind::Int),
            col("updated_at", Kind::Int),
        ],
    },
    Table {
        name: "user_usage",
        sqlite_where: "",
        sqlite_order: "user_id",
        pg_order: "user_id COLLATE \"C\"",
        cols: &[
            col("user_id", Kind::Text),
            col("unfinished", Kind::Int),
            col("payload_bytes", Kind::Int),
        ],
    },
];

/// The SQLite tables not copied, and why (see the module comment; `queue_tokens`: a rate
/// limit's bucket starts full on the new database, one burst at most). Every other table of the
/// schema must be in [`TABLES`]: a unit test holds the two lists to the schema.
#[cfg_attr(not(test), allow(dead_code))]
const NOT_COPIED: &[&str] = &[
    "workers",
    "health",
    "drills",
    "task_message_counts",
    "queue_tokens",
];

impl Table {
    fn sqlite_count(&self) -> String {
        format!("SELECT count(*) FROM {} {}", self.name, self.sqlite_where)
    }

    fn sqlite_select(&self) -> String {
        let cols: Vec<&str> = self.cols.iter().map(|c| c.sqlite).collect();
        format!(
            "SELECT {} FROM {} {} ORDER BY {}",
            cols.join(", "),
            self.name,
            self.sqlite_where,
            self.sqlite_order
        )
    }

    fn pg_copy(&self) -> String {
        let cols: Vec<&str> = self.cols.iter().map(|c| c.pg).collect();
        format!(
            "COPY {} ({}) FROM STDIN (FORMAT text)",
            self.name,
            cols.join(", ")
        )
    }

    /// Every column as text, in the canonical form of [`sqlite_value`]. The values are named
    /// `v0`, `v1`, ...: named after their column, `ORDER BY seq` would sort by the text.
    fn pg_select(&self) -> String {
        let cols: Vec<String> = self
            .cols
            .iter()
            .enumerate()
            .map(|(i, c)| match c.kind {
                Kind::Bool => format!("({})::int::text AS v{i}", c.pg),
                Kind::Int | Kind::Text => format!("({})::text AS v{i}", c.pg),
            })
            .collect();
        format!(
            "SELECT {} FROM {} ORDER BY {}",
            cols.join(", "),
            self.name,
            self.pg_order
        )
    }
}

/// What went wrong. Whatever it is, the target holds nothing of this run.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The SQLite file cannot be read as a spool database of this version.
    #[error("{0}")]
    Source(String),
    /// The target holds rows already; nothing was written.
    #[error(
        "{target} is not empty (rows in {tables}): migrate-to-postgres copies into an empty \
         database only; nothing was written"
    )]
    NotEmpty {
        /// The target, without its password.
        target: String,
        /// The tables that hold rows.
        tables: String,
    },
    /// The target could not be reached, migrated or written.
    #[error("{0}")]
    Target(StoreError),
    /// The copy read back differs from what was read; it was rolled back.
    #[error(
        "the copy does not match the SQLite file ({0}); it was rolled back, nothing was written"
    )]
    Mismatch(String),
}

impl MoveError {
    /// Whether the user can fix it by changing the command or the files (exit code 2), rather
    /// than it being a fault to retry (1).
    pub fn is_usage(&self) -> bool {
        match self {
            MoveError::Source(_) | MoveError::NotEmpty { .. } => true,
            MoveError::Target(e) => matches!(e, StoreError::SchemaTooNew { .. }),
            MoveError::Mismatch(_) => false,
        }
    }
}

impl From<StoreError> for MoveError {
    fn from(e: StoreError) -> Self {
        MoveError::Target(e)
    }
}

/// What to copy where.
#[derive(Debug, Clone)]
pub struct MoveOptions {
    /// The SQLite file.
    pub from: PathBuf,
    /// The PostgreSQL database.
    pub to: PostgresUrl,
    /// How long to wait to connect.
    pub connect_timeout: Duration,
}

/// One table as copied: rows and checksum, the same on both sides.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableCopied {
    /// The table.
    pub table: String,
    /// Its rows.
    pub rows: u64,
    /// SHA-256 (hex) over its rows in key order, each value in canonical text form.
    pub sha256: String,
}

/// A finished, verified copy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MoveReport {
    /// The SQLite file.
    pub from: PathBuf,
    /// The target, without its password.
    pub to: String,
    /// The PostgreSQL schema version the target is at.
    pub schema_version: u32,
    /// Every table copied, in copy order.
    pub tables: Vec<TableCopied>,
}

/// A row: each column's value as canonical text, or NULL.
type Row = Vec<Option<String>>;

/// The running checksum of one side of one table.
#[derive(Debug, Default)]
struct Digest {
    rows: u64,
    hash: Sha256,
}

impl Digest {
    /// Adds a row: per value, a tag (0 NULL, 1 a value), then the value's length (8 bytes, little
    /// endian) and its UTF-8 bytes, so no two different rows hash alike by shifting text
    /// between columns.
    fn add(&mut self, row: &[Option<String>]) {
        self.rows += 1;
        for v in row {
            match v {
                None => self.hash.update([0u8]),
                Some(s) => {
                    self.hash.update([1u8]);
                    self.hash.update((s.len() as u64).to_le_bytes());
                    self.hash.update(s.as_bytes());
                }
            }
        }
    }

    fn finish(self) -> (u64, String) {
        (self.rows, hex::encode(self.hash.finalize()))
    }
}

/// What the SQLite reader sends the PostgreSQL writer.
enum Batch {
    /// Rows of each table, in [`TABLES`] order (for the progress bar).
    Totals(Vec<u64>),
    /// Up to [`BATCH_ROWS`] rows of table `table`.
    Rows { table: usize, rows: Vec<Row> },
}

/// Copies, verifies, commits. `bar` shows progress (rows); hide it where nobody watches.
///
/// # Errors
/// [`MoveError`]: in every case nothing of this run is in the target.
pub async fn run(opts: &MoveOptions, bar: &ProgressBar) -> Result<MoveReport, MoveError> {
    let from = opts.from.clone();
    // The source is checked before the target is touched.
    let conn = tokio::task::spawn_blocking(move || open_source(&from))
        .await
        .map_err(|e| MoveError::Source(format!("reader thread: {e}")))??;

    let mut client = connect_direct(&opts.to, opts.connect_timeout).await?;
    let target = opts.to.redacted().to_string();
    refuse_non_empty(&client, &target).await?;
    migrate::migrate(&mut client).await?;
    let schema_version = migrate::current_version(&client).await?;

    let tx = client.transaction().await.map_err(pg)?;
    tx.batch_execute(sql::MOVE_BEGIN)
        .await
        .map_err(|e| MoveError::Target(pg(e)))?;
    // Under the lock: nothing was written by another process since the first look.
    refuse_non_empty(&tx, &target).await?;

    // The reader: one read transaction over the whole file, batches through a short queue (a
    // slow target slows the reader instead of filling memory).
    let (send, mut recv) = mpsc::channel::<Batch>(4);
    let reader = tokio::task::spawn_blocking(move || read_source(&conn, &send));

    let mut total = 0u64;
    let mut statements: Vec<Option<String>> = TABLES.iter().map(|_| None).collect();
    let mut copy_failed = None;
    while let Some(batch) = recv.recv().await {
        match batch {
            Batch::Totals(t) => {
                total = t.iter().sum();
                bar.set_length(total);
                bar.set_position(0);
            }
            Batch::Rows { table, rows } => {
                let Some(t) = TABLES.get(table) else { continue };
                bar.set_message(format!("copying {}", t.name));
                let statement = statements[table].get_or_insert_with(|| t.pg_copy());
                if let Err(e) = copy_rows(&tx, statement, &rows).await {
                    copy_failed = Some(MoveError::Target(StoreError::Unavailable(format!(
                        "copying {}: {}",
                        t.name,
                        describe(&e)
                    ))));
                    break;
                }
                bar.inc(rows.len() as u64);
            }
        }
    }
    // Dropping the receiver stops a reader still sending.
    drop(recv);
    let read = reader
        .await
        .map_err(|e| MoveError::Source(format!("reader thread: {e}")));
    if let Some(e) = copy_failed {
        return Err(e); // the transaction rolls back as it drops
    }
    let source = read??;
    if source.len() != TABLES.len() {
        return Err(MoveError::Mismatch(
            "the SQLite reader stopped before the last table".into(),
        ));
    }

    tx.batch_execute(sql::MOVE_SEAL).await.map_err(pg)?;

    // Read back and compare, before anything is committed.
    bar.set_length(total);
    bar.set_position(0);
    let mut tables = Vec::new();
    for (t, (rows, sha)) in TABLES.iter().zip(source) {
        bar.set_message(format!("verifying {}", t.name));
        let (pg_rows, pg_sha) = digest_target(&tx, t, bar).await.map_err(pg)?;
        if pg_rows != rows {
            return Err(MoveError::Mismatch(format!(
                "{}: {rows} rows in SQLite, {pg_rows} in PostgreSQL",
                t.name
            )));
        }
        if pg_sha != sha {
            return Err(MoveError::Mismatch(format!(
                "{}: checksum {sha} in SQLite, {pg_sha} in PostgreSQL",
                t.name
            )));
        }
        tables.push(TableCopied {
            table: t.name.to_string(),
            rows,
            sha256: sha,
        });
    }
    tx.commit().await.map_err(pg)?;
    bar.finish_and_clear();
    Ok(MoveReport {
        from: opts.from.clone(),
        to: target,
        schema_version,
        tables,
    })
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    super::postgres::pg_err(e)
}

/// The error's text with PostgreSQL's message and where it happened (`COPY tasks, line 3`).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error().and_then(|d| d.where_()) {
        Some(w) => format!("{} at {w}", describe_err(e)),
        None => describe_err(e),
    }
}

/// Refuses a target any of whose tables holds a row.
async fn refuse_non_empty<C: tokio_postgres::GenericClient>(
    c: &C,
    target: &str,
) -> Result<(), MoveError> {
    let names: Vec<String> = c
        .query(sql::MOVE_TABLES, &[])
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.try_get::<_, String>("name"))
        .collect::<Result<_, _>>()
        .map_err(pg)?;
    let mut full = Vec::new();
    for name in names {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let row = c
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {quoted})"), &[])
            .await
            .map_err(pg)?;
        if row.try_get::<_, bool>(0).map_err(pg)? {
            full.push(name);
        }
    }
    if full.is_empty() {
        Ok(())
    } else {
        Err(MoveError::NotEmpty {
            target: target.to_string(),
            tables: full.join(", "),
        })
    }
}

/// Opens the SQLite file read-only and checks that it is a spool database of this version.
fn open_source(path: &Path) -> Result<Connection, MoveError> {
    let shown = path.display();
    if !path.is_file() {
        return Err(MoveError::Source(format!("no SQLite file at {shown}")));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| MoveError::Source(format!("cannot open {shown}: {e}")))?;
    let err = |e: rusqlite::Error| MoveError::Source(format!("cannot read {shown}: {e}"));
    conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
    conn.execute_batch("PRAGMA query_only = ON").map_err(err)?;
    let version = sqlite::migrate::current_version(&conn)
        .map_err(|e| MoveError::Source(format!("cannot read {shown}: {e}")))?;
    if version == 0 {
        return Err(MoveError::Source(format!(
            "{shown} is not a spool database (no schema version)"
        )));
    }
    if version != sqlite::LATEST_VERSION {
        return Err(MoveError::Source(format!(
            "{shown} is at schema version {version}, this spool copies version {}: {}",
            sqlite::LATEST_VERSION,
            if version < sqlite::LATEST_VERSION {
                "run `spool migrate` on it with this spool first"
            } else {
                "use the spool that made it"
            }
        )));
    }
    Ok(conn)
}

/// Reads every table in one read transaction, sends its rows in batches and returns each
/// table's row count and checksum.
fn read_source(
    conn: &Connection,
    send: &mpsc::Sender<Batch>,
) -> Result<Vec<(u64, String)>, MoveError> {
    let err = |e: rusqlite::Error| MoveError::Source(format!("reading the SQLite file: {e}"));
    // One snapshot: the transaction starts at its first read and sees no later commit.
    conn.execute_batch("BEGIN").map_err(err)?;
    let mut totals = Vec::new();
    for t in TABLES {
        let n: i64 = conn
            .query_row(&t.sqlite_count(), [], |r| r.get(0))
            .map_err(err)?;
        totals.push(n.max(0) as u64);
    }
    if send.blocking_send(Batch::Totals(totals)).is_err() {
        return Ok(Vec::new()); // the writer stopped: its error is the one to report
    }
    let mut out = Vec::new();
    for (i, t) in TABLES.iter().enumerate() {
        let mut digest = Digest::default();
        let mut st = conn.prepare(&t.sqlite_select()).map_err(err)?;
        let mut rows = st.query([]).map_err(err)?;
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        while let Some(r) = rows.next().map_err(err)? {
            let mut row = Vec::with_capacity(t.cols.len());
            for (j, c) in t.cols.iter().enumerate() {
                // By position: the SELECT lists the columns in `t.cols` order.
                let v = r.get_ref(j).map_err(err)?;
                row.push(sqlite_value(t, c, v)?);
            }
            digest.add(&row);
            batch.push(row);
            if batch.len() == BATCH_ROWS {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                if send
                    .blocking_send(Batch::Rows {
                        table: i,
                        rows: full,
                    })
                    .is_err()
                {
                    return Ok(Vec::new());
                }
            }
        }
        if !batch.is_empty()
            && send
                .blocking_send(Batch::Rows {
                    table: i,
                    rows: batch,
                })
                .is_err()
        {
            return Ok(Vec::new());
        }
        out.push(digest.finish());
    }
    conn.execute_batch("COMMIT").map_err(err)?;
    Ok(out)
}

/// A SQLite value in canonical text form: an integer in decimal, a 0/1 flag as `0` or `1`, text
/// as it is. Anything else (a REAL, a BLOB, a flag that is neither) is not what spool writes.
fn sqlite_value(t: &Table, c: &Col, v: ValueRef<'_>) -> Result<Option<String>, MoveError> {
    let bad = |what: &str| {
        MoveError::Source(format!(
            "{}.{} holds {what}, which spool never writes there; fix the row first",
            t.name, c.sqlite
        ))
    };
    Ok(match (c.kind, v) {
        (_, ValueRef::Null) => None,
        (Kind::Bool, ValueRef::Integer(b @ (0 | 1))) => Some(b.to_string()),
        (Kind::Bool, _) => return Err(bad("a value other than 0 or 1")),
        (Kind::Int, ValueRef::Integer(n)) => Some(n.to_string()),
        (Kind::Int, _) => return Err(bad("a value that is not an integer")),
        (Kind::Text, ValueRef::Text(b)) => {
            Some(String::from_utf8(b.to_vec()).map_err(|_| bad("text that is not UTF-8"))?)
        }
        (Kind::Text, ValueRef::Integer(n)) => Some(n.to_string()),
        (Kind::Text, _) => return Err(bad("a value that is not text")),
    })
}

/// One `COPY` of `rows` in PostgreSQL's text format.
async fn copy_rows(
    tx: &tokio_postgres::Transaction<'_>,
    statement: &str,
    rows: &[Row],
) -> Result<(), tokio_postgres::Error> {
    let mut buf = String::with_capacity(rows.len() * 128);
    for row in rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                buf.push('\t');
            }
            match v {
                None => buf.push_str("\\N"),
                Some(s) => {
                    for ch in s.chars() {
                        match ch {
                            '\\' => buf.push_str("\\\\"),
                            '\n' => buf.push_str("\\n"),
                            '\r' => buf.push_str("\\r"),
                            '\t' => buf.push_str("\\t"),
                            other => buf.push(other),
                        }
                    }
                }
            }
        }
        buf.push('\n');
    }
    let sink = tx.copy_in::<_, Bytes>(statement).await?;
    futures::pin_mut!(sink);
    sink.send(Bytes::from(buf)).await?;
    sink.as_mut().finish().await?;
    Ok(())
}

/// Reads a table back from the target, in key order, and returns its row count and checksum.
async fn digest_target(
    tx: &tokio_postgres::Transaction<'_>,
    t: &Table,
    bar: &ProgressBar,
) -> Result<(u64, String), tokio_postgres::Error> {
    let stream = tx
        .query_raw(&t.pg_select(), std::iter::empty::<&(dyn ToSql + Sync)>())
        .await?;
    futures::pin_mut!(stream);
    let mut digest = Digest::default();
    while let Some(r) = stream.try_next().await? {
        let mut row = Vec::with_capacity(t.cols.len());
        for j in 0..t.cols.len() {
            // By position: the SELECT lists the columns in `t.cols` order.
            row.push(r.try_get::<_, Option<String>>(j)?);
        }
        digest.add(&row);
        if digest.rows % 1024 == 0 {
            bar.inc(1024);
        }
    }
    Ok(digest.finish())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_table_of_the_sqlite_schema_is_copied_or_named_as_not_copied() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::store::sqlite::migrate::migrate(&conn).unwrap();
        let mut st = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )
            .unwrap();
        let schema: Vec<String> = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mut listed: Vec<String> = TABLES
            .iter()
            .map(|t| t.name)
            .chain(NOT_COPIED.iter().copied())
            .map(str::to_string)
            .collect();
        listed.sort();
        assert_eq!(schema, listed);
    }

    #[test]
    fn every_table_has_columns_and_names_its_key_among_them() {
        for t in TABLES {
            assert!(!t.cols.is_empty(), "{}", t.name);
            let first = t.sqlite_order.split([',', ' ']).next().unwrap_or("");
            assert!(
                t.cols.iter().any(|c| c.sqlite == first),
                "{} orders by {first}, not one of its columns",
                t.name
            );
        }
    }

    #[test]
    fn the_digest_tells_apart_rows_that_only_shift_text_between_columns() {
        let mut a = Digest::default();
        a.add(&[Some("ab".into()), Some("c".into())]);
        let mut b = Digest::default();
        b.add(&[Some("a".into()), Some("bc".into())]);
        let mut c = Digest::default();
        c.add(&[None, Some("abc".into())]);
        let mut d = Digest::default();
        d.add(&[Some(String::new()), Some("abc".into())]);
        let all = [a.finish(), b.finish(), c.finish(), d.finish()];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j], "{i} and {j}");
            }
        }
    }
}
