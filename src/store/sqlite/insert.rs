//! Enqueue: tasks written in chunks of [`INSERT_CHUNK`] rows per statement, each chunk's
//! change-log rows in one more, idempotency keys looked up in the same transaction, the per-user
//! quotas checked before anything is written and the owners' usage added after.

use super::writer::JobOutput;
use super::{rows, sql};
use crate::clock::UnixMillis;
use crate::events::Event;
use crate::store::{rules, Inserted, Limits, Result, StoreError};
use crate::task::NewTask;
use rusqlite::{named_params, Connection, OptionalExtension};
use std::sync::Arc;

pub(super) fn insert_tasks(
    conn: &Connection,
    tasks: Vec<(NewTask, String)>,
    limits: &Limits,
    now: UnixMillis,
) -> JobOutput<Vec<Inserted>> {
    let mut out = Vec::with_capacity(tasks.len());
    // Tasks without a key wait here and are written INSERT_CHUNK rows per statement; a keyed
    // task first writes what waits, so rows keep their order and a repeated key sees its twin.
    let mut waiting: Vec<(NewTask, String)> = Vec::with_capacity(INSERT_CHUNK);
    for (index, (t, payload)) in tasks.into_iter().enumerate() {
        let Some(key) = &t.idempotency_key else {
            waiting.push((t, payload));
            if waiting.len() == INSERT_CHUNK {
                write_rows(conn, &mut waiting, limits, now, &mut out)?;
            }
            continue;
        };
        write_rows(conn, &mut waiting, limits, now, &mut out)?;
        let mut by_key = conn.prepare_cached(sql::TASK_GET_BY_KEY)?;
        let cols = rows::TaskColumns::of(&by_key)?;
        let existing = by_key
            .query_row(
                named_params! {":user_id": t.user_id, ":idempotency_key": key},
                |r| Ok((cols.task(r)?, cols.request_hash(r)?)),
            )
            .optional()?;
        if let Some((task, hash)) = existing {
            if hash != t.request_hash {
                return Err(StoreError::IdempotencyMismatch {
                    index,
                    key: key.clone(),
                });
            }
            out.push(Inserted {
                task: Arc::new(task),
                created: false,
            });
            continue;
        }
        waiting.push((t, payload));
        write_rows(conn, &mut waiting, limits, now, &mut out)?;
    }
    write_rows(conn, &mut waiting, limits, now, &mut out)?;
    let events = out
        .iter()
        .filter(|i| i.created)
        .map(|i| Event::Task(i.task.clone()))
        .collect();
    Ok((out, events))
}

/// Rows per multi-row INSERT. Each statement run has a fixed cost (cursors opened and closed,
/// the statement's end); in batches of 1,000 that cost was a sixth of the writer's time.
pub(super) const INSERT_CHUNK: usize = 32;

/// Refuses new rows, summed per user in `adds` ([`rules::usage_adds`]: a replayed idempotency
/// key adds nothing), when they would take a user past a quota. Runs before the rows are
/// written, in the same transaction, so the usage it reads (added by each insert, see
/// 0014_insert_bookkeeping.sql, and kept by triggers since 0009_quotas.sql) includes everything
/// committed or written before it: concurrent requests cannot pass a limit together.
fn check_user_quotas(conn: &Connection, adds: &[(&str, u64, u64)], limits: &Limits) -> Result<()> {
    if !rules::quotas_on(limits) {
        return Ok(());
    }
    for &(user, tasks, bytes) in adds {
        check_usage(conn, user, tasks, bytes, limits)?;
    }
    Ok(())
}

/// Refuses adding `tasks` unfinished tasks and `bytes` of payload to `user`'s usage when that
/// would pass a quota.
pub(super) fn check_usage(
    conn: &Connection,
    user: &str,
    tasks: u64,
    bytes: u64,
    limits: &Limits,
) -> Result<()> {
    let (unfinished, stored): (i64, i64) = conn
        .prepare_cached(sql::USER_USAGE_GET)?
        .query_row(named_params! {":user_id": user}, |r| {
            Ok((r.get("unfinished")?, r.get("payload_bytes")?))
        })
        .optional()?
        .unwrap_or((0, 0));
    rules::check_usage(unfinished, stored, tasks, bytes, limits)
}

/// `TASK_INSERT` for `rows` rows: its VALUES tuple repeated, each copy's parameters numbered
/// `?N` after the position of their name in [`TASK_INSERT_PARAMS`].
pub(super) fn multi_insert_sql(rows: usize) -> String {
    multi_row_sql(sql::TASK_INSERT, &TASK_INSERT_PARAMS, rows)
}

/// `TASK_CHANGES_INSERTED` for `rows` rows, numbered as [`multi_insert_sql`] numbers its own.
pub(super) fn multi_changes_sql(rows: usize) -> String {
    multi_row_sql(sql::TASK_CHANGES_INSERTED, &CHANGE_PARAMS, rows)
}

/// The parameters of `TASK_CHANGES_INSERTED` in the order `write_rows` binds them.
pub(super) const CHANGE_PARAMS: [&str; 2] = [":task_id", ":now"];

/// An `INSERT ... VALUES (...)` statement with its VALUES tuple repeated `rows` times, each
/// copy's parameters numbered `?N` after the position of their name in `params`.
fn multi_row_sql(sql: &str, params: &[&str], rows: usize) -> String {
    let at = sql
        .rfind("VALUES")
        .map_or(sql.len(), |i| i + "VALUES".len());
    let (head, tuple) = sql.split_at(at);
    let n = params.len();
    // OR FAIL: a statement of many rows that may ABORT keeps a statement journal to undo its
    // own earlier rows; these rows cannot conflict (fresh ids and positions, no keys), and the
    // job's savepoint undoes the whole batch anyway if anything fails.
    let mut out = head.replacen("INSERT INTO", "INSERT OR FAIL INTO", 1);
    for r in 0..rows {
        if r > 0 {
            out.push(',');
        }
        let mut rest = tuple;
        while let Some(i) = rest.find(':') {
            out.push_str(&rest[..i]);
            let name_len = rest[i + 1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len() - i - 1);
            let name = &rest[i..i + 1 + name_len];
            match params.iter().position(|p| *p == name) {
                Some(k) => out.push_str(&format!("?{}", r * n + k + 1)),
                None => out.push_str(name),
            }
            rest = &rest[i + 1 + name_len..];
        }
        out.push_str(rest);
    }
    out
}

/// Writes the waiting rows (one statement for a full chunk, else one each) with their
/// change-log rows and their owners' usage (see 0014_insert_bookkeeping.sql), and moves them,
/// as the tasks they now are, to `out`.
pub(super) fn write_rows(
    conn: &Connection,
    waiting: &mut Vec<(NewTask, String)>,
    limits: &Limits,
    now: UnixMillis,
    out: &mut Vec<Inserted>,
) -> Result<()> {
    static CHUNK_SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static CHANGES_SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if waiting.is_empty() {
        return Ok(());
    }
    // Checked before the rows are written, added to the owners' usage after: one sum per user.
    let adds = rules::usage_adds(waiting);
    check_user_quotas(conn, &adds, limits)?;
    // A full chunk is one statement; anything less is a row per statement.
    let (mut st, mut changes, per_statement) = if waiting.len() == INSERT_CHUNK {
        let sql = CHUNK_SQL.get_or_init(|| multi_insert_sql(INSERT_CHUNK));
        let changes = CHANGES_SQL.get_or_init(|| multi_changes_sql(INSERT_CHUNK));
        (
            conn.prepare_cached(sql)?,
            conn.prepare_cached(changes)?,
            INSERT_CHUNK,
        )
    } else {
        (
            conn.prepare_cached(sql::TASK_INSERT)?,
            conn.prepare_cached(sql::TASK_CHANGES_INSERTED)?,
            1,
        )
    };
    for group in waiting.chunks(per_statement) {
        // Bound by position (the order of TASK_INSERT_PARAMS and CHANGE_PARAMS, checked by a
        // test): a name lookup per parameter showed in profiles.
        let (mut i, mut j) = (0, 0);
        for (t, payload) in group {
            let id = t.id.to_string();
            let values: [&dyn rusqlite::ToSql; 13] = [
                &id,
                &t.user_id,
                &t.queue,
                &t.kind,
                payload,
                &t.priority,
                &t.run_at,
                &t.max_attempts,
                &(t.timeout_ms as i64),
                &t.idempotency_key,
                &t.request_hash,
                &now,
                &t.concurrency_key,
            ];
            for v in values {
                i += 1;
                st.raw_bind_parameter(i, v)?;
            }
            changes.raw_bind_parameter(j + 1, &id)?;
            changes.raw_bind_parameter(j + 2, now)?;
            j += 2;
        }
        st.raw_execute()?;
        // After its tasks, in their order: positions in the log follow insertion.
        changes.raw_execute()?;
    }
    let mut usage = conn.prepare_cached(sql::USER_USAGE_ADD)?;
    for (user, tasks, bytes) in adds {
        usage.execute(named_params! {
            ":user_id": user,
            ":tasks": i64::try_from(tasks).unwrap_or(i64::MAX),
            ":bytes": i64::try_from(bytes).unwrap_or(i64::MAX),
        })?;
    }
    for (t, _) in waiting.drain(..) {
        // The row is exactly what was inserted: build it here rather than read it back.
        let task = Arc::new(rules::inserted_task(t, now));
        out.push(Inserted {
            task,
            created: true,
        });
    }
    Ok(())
}

/// The parameters of `TASK_INSERT` in the order `write_rows` binds them.
pub(crate) const TASK_INSERT_PARAMS: [&str; 13] = [
    ":id",
    ":user_id",
    ":queue",
    ":kind",
    ":payload",
    ":priority",
    ":run_at",
    ":max_attempts",
    ":timeout_ms",
    ":idempotency_key",
    ":request_hash",
    ":now",
    ":concurrency_key",
];
