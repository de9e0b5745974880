//! Rows to values, columns read by name.

use super::pg_err;
use crate::store::{Result, User};
use crate::task::{Author, Message, Task, TaskId, WakeReason};
use serde_json::Value;
use tokio_postgres::Row;

/// A `tasks` row (every column).
pub(super) fn task(r: &Row) -> Result<Task> {
    let status: String = r.try_get("status").map_err(pg_err)?;
    Ok(Task {
        id: TaskId(r.try_get("id").map_err(pg_err)?),
        user_id: r.try_get("user_id").map_err(pg_err)?,
        queue: r.try_get("queue").map_err(pg_err)?,
        kind: r.try_get("kind").map_err(pg_err)?,
        status: status
            .parse()
            .map_err(|e: String| crate::store::StoreError::Backend(e.into()))?,
        priority: r.try_get("priority").map_err(pg_err)?,
        payload: r.try_get("payload").map_err(pg_err)?,
        result: r.try_get::<_, Option<Value>>("result").map_err(pg_err)?,
        attempts: r.try_get::<_, i64>("attempts").map_err(pg_err)?.max(0) as u32,
        max_attempts: r.try_get::<_, i64>("max_attempts").map_err(pg_err)?.max(0) as u32,
        last_error: r.try_get("last_error").map_err(pg_err)?,
        idempotency_key: r.try_get("idempotency_key").map_err(pg_err)?,
        run_at: r.try_get("run_at").map_err(pg_err)?,
        timeout_ms: r.try_get::<_, i64>("timeout_ms").map_err(pg_err)?.max(0) as u64,
        cancel_requested: r.try_get("cancel_requested").map_err(pg_err)?,
        lease_owner: r.try_get("lease_owner").map_err(pg_err)?,
        lease_expires_at: r.try_get("lease_expires_at").map_err(pg_err)?,
        created_at: r.try_get("created_at").map_err(pg_err)?,
        started_at: r.try_get("started_at").map_err(pg_err)?,
        completed_at: r.try_get("completed_at").map_err(pg_err)?,
        updated_at: r.try_get("updated_at").map_err(pg_err)?,
        checkpoint: r
            .try_get::<_, Option<Value>>("checkpoint")
            .map_err(pg_err)?,
        wait_until: r.try_get("wait_until").map_err(pg_err)?,
        wake_reason: r
            .try_get::<_, Option<String>>("wake_reason")
            .map_err(pg_err)?
            .as_deref()
            .and_then(WakeReason::parse),
        inbox_cursor: r.try_get("inbox_cursor").map_err(pg_err)?,
        concurrency_key: r.try_get("concurrency_key").map_err(pg_err)?,
    })
}

/// Every task of `rows`.
pub(super) fn tasks(rows: &[Row]) -> Result<Vec<Task>> {
    rows.iter().map(task).collect()
}

/// JSON text as spool wrote it; an operator's hand edit that is not JSON is shown as a string.
pub(super) fn parse_json_lenient(s: String) -> Value {
    serde_json::from_str(&s).unwrap_or(Value::String(s))
}

/// A `message_list` row of task `task_id`, and the size of its content.
pub(super) fn message(task_id: TaskId, r: &Row) -> Result<(Message, usize)> {
    let content: String = r.try_get("content").map_err(pg_err)?;
    let size = content.len();
    let author: String = r.try_get("author").map_err(pg_err)?;
    Ok((
        Message {
            // Anything else an operator wrote by hand reads as the task's.
            author: author.parse().unwrap_or(Author::Task),
            id: r.try_get("seq").map_err(pg_err)?,
            task_id,
            kind: r.try_get("kind").map_err(pg_err)?,
            content: parse_json_lenient(content),
            created_at: r.try_get("created_at").map_err(pg_err)?,
        },
        size,
    ))
}

/// A `users` row (never marked JWT: the HTTP layer marks the caller).
pub(super) fn user(r: &Row) -> Result<User> {
    Ok(User {
        id: r.try_get("id").map_err(pg_err)?,
        name: r.try_get("name").map_err(pg_err)?,
        is_admin: r.try_get("is_admin").map_err(pg_err)?,
        jwt: false,
    })
}

/// JSON text for a `jsonb` column. PostgreSQL's `jsonb` cannot hold U+0000, so a NUL in a string
/// or a key is stored as U+FFFD (the replacement character) rather than refused: a task's output
/// or a client's payload is never lost to it (SQLite keeps it as it came). `v` is changed the same
/// way, so that what the caller answers with is what was stored.
pub(super) fn jsonb_text(v: &mut serde_json::Value) -> Result<String> {
    let text = serde_json::to_string(v).map_err(super::json_err)?;
    if !text.contains("\\u0000") {
        return Ok(text);
    }
    scrub_nul(v);
    serde_json::to_string(v).map_err(super::json_err)
}

fn scrub_nul(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => *s = pg_text(s).into_owned(),
        Value::Array(a) => a.iter_mut().for_each(scrub_nul),
        Value::Object(m) => {
            let old = std::mem::take(m);
            for (k, mut v) in old {
                scrub_nul(&mut v);
                m.insert(pg_text(&k).into_owned(), v);
            }
        }
        _ => {}
    }
}

/// Text for a `text` column: PostgreSQL refuses U+0000 there too; it becomes U+FFFD.
pub(super) fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}
