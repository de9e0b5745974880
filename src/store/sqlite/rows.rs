//! Rows to values. A task row is read through [`TaskColumns`]: each column found by its name
//! once per statement, then read by that position for every row, so no query depends on the
//! order of the table's columns and no row pays for a name lookup per column.

use super::super::{Message, Result, TaskPage, User};
use crate::task::{Author, Task, WakeReason};
use rusqlite::{Row, Statement};
use serde_json::Value;

/// Where each column of a `tasks` row is in one statement's result.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskColumns {
    id: usize,
    user_id: usize,
    queue: usize,
    kind: usize,
    payload: usize,
    status: usize,
    priority: usize,
    run_at: usize,
    attempts: usize,
    max_attempts: usize,
    timeout_ms: usize,
    lease_owner: usize,
    lease_expires_at: usize,
    cancel_requested: usize,
    last_error: usize,
    result: usize,
    idempotency_key: usize,
    request_hash: usize,
    created_at: usize,
    started_at: usize,
    completed_at: usize,
    updated_at: usize,
    checkpoint: usize,
    wait_until: usize,
    wake_reason: usize,
    inbox_cursor: usize,
    concurrency_key: usize,
}

impl TaskColumns {
    /// The columns of `st`, which selects (or returns) every column of `tasks`.
    pub(crate) fn of(st: &Statement<'_>) -> rusqlite::Result<Self> {
        let c = |name: &str| st.column_index(name);
        Ok(Self {
            id: c("id")?,
            user_id: c("user_id")?,
            queue: c("queue")?,
            kind: c("kind")?,
            payload: c("payload")?,
            status: c("status")?,
            priority: c("priority")?,
            run_at: c("run_at")?,
            attempts: c("attempts")?,
            max_attempts: c("max_attempts")?,
            timeout_ms: c("timeout_ms")?,
            lease_owner: c("lease_owner")?,
            lease_expires_at: c("lease_expires_at")?,
            cancel_requested: c("cancel_requested")?,
            last_error: c("last_error")?,
            result: c("result")?,
            idempotency_key: c("idempotency_key")?,
            request_hash: c("request_hash")?,
            created_at: c("created_at")?,
            started_at: c("started_at")?,
            completed_at: c("completed_at")?,
            updated_at: c("updated_at")?,
            checkpoint: c("checkpoint")?,
            wait_until: c("wait_until")?,
            wake_reason: c("wake_reason")?,
            inbox_cursor: c("inbox_cursor")?,
            concurrency_key: c("concurrency_key")?,
        })
    }

    /// The task in `r`.
    pub(crate) fn task(&self, r: &Row<'_>) -> rusqlite::Result<Task> {
        let conv = |i: usize, e: String| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
        };
        let id: String = r.get(self.id)?;
        let status: String = r.get(self.status)?;
        let payload: String = r.get(self.payload)?;
        let result: Option<String> = r.get(self.result)?;
        let checkpoint: Option<String> = r.get(self.checkpoint)?;
        let wake: Option<String> = r.get(self.wake_reason)?;
        Ok(Task {
            id: id.parse().map_err(|e| conv(self.id, e))?,
            user_id: r.get(self.user_id)?,
            queue: r.get(self.queue)?,
            kind: r.get(self.kind)?,
            status: status.parse().map_err(|e| conv(self.status, e))?,
            priority: r.get(self.priority)?,
            payload: parse_json_lenient(payload),
            result: result.map(parse_json_lenient),
            attempts: r.get::<_, i64>(self.attempts)?.max(0) as u32,
            max_attempts: r.get::<_, i64>(self.max_attempts)?.max(0) as u32,
            last_error: r.get(self.last_error)?,
            idempotency_key: r.get(self.idempotency_key)?,
            run_at: r.get(self.run_at)?,
            timeout_ms: r.get::<_, i64>(self.timeout_ms)?.max(0) as u64,
            cancel_requested: r.get(self.cancel_requested)?,
            lease_owner: r.get(self.lease_owner)?,
            lease_expires_at: r.get(self.lease_expires_at)?,
            created_at: r.get(self.created_at)?,
            started_at: r.get(self.started_at)?,
            completed_at: r.get(self.completed_at)?,
            updated_at: r.get(self.updated_at)?,
            checkpoint: checkpoint.map(parse_json_lenient),
            wait_until: r.get(self.wait_until)?,
            wake_reason: wake.as_deref().and_then(WakeReason::parse),
            inbox_cursor: r.get(self.inbox_cursor)?,
            concurrency_key: r.get(self.concurrency_key)?,
        })
    }

    /// The request hash stored with an idempotency key.
    pub(crate) fn request_hash(&self, r: &Row<'_>) -> rusqlite::Result<Option<String>> {
        r.get(self.request_hash)
    }
}

/// Every task `st` returns for `params`.
pub(crate) fn tasks(st: &mut Statement<'_>, params: impl rusqlite::Params) -> Result<Vec<Task>> {
    let cols = TaskColumns::of(st)?;
    let rows = st.query_map(params, |r| cols.task(r))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Where a task row's content is (its payload and result): what pages of tasks are bounded by.
pub(crate) struct ContentColumns([usize; 2]);

impl ContentColumns {
    pub(crate) fn of(st: &Statement<'_>) -> Result<Self> {
        Ok(Self([
            st.column_index("payload")?,
            st.column_index("result")?,
        ]))
    }

    /// The bytes of the row's payload and result (NULL: none).
    pub(crate) fn bytes(&self, r: &Row<'_>) -> usize {
        self.0
            .iter()
            .map(|&c| {
                r.get_ref(c)
                    .ok()
                    .and_then(|v| v.as_bytes().ok())
                    .map_or(0, <[u8]>::len)
            })
            .sum()
    }
}

/// The tasks `st` returns for `params`, stopping before the one that would take their content
/// (payload and result) past `max_bytes`; the first is always kept.
pub(crate) fn task_page(
    st: &mut Statement<'_>,
    params: impl rusqlite::Params,
    max_bytes: usize,
) -> Result<TaskPage> {
    let cols = TaskColumns::of(st)?;
    let content = ContentColumns::of(st)?;
    let mut rows = st.query(params)?;
    let (mut page, mut bytes) = (TaskPage::default(), 0usize);
    while let Some(r) = rows.next()? {
        let size = content.bytes(r);
        if !page.tasks.is_empty() && bytes.saturating_add(size) > max_bytes {
            page.cut = true;
            break;
        }
        bytes = bytes.saturating_add(size);
        page.tasks.push(cols.task(r)?);
    }
    Ok(page)
}

/// The one task `st` returns for `params`, if any.
pub(crate) fn task(st: &mut Statement<'_>, params: impl rusqlite::Params) -> Result<Option<Task>> {
    let cols = TaskColumns::of(st)?;
    let mut rows = st.query(params)?;
    Ok(match rows.next()? {
        Some(r) => Some(cols.task(r)?),
        None => None,
    })
}

/// JSON columns are written by spool as JSON; an operator's hand edit that is not JSON is shown
/// as a string rather than failing the read.
pub(crate) fn parse_json_lenient(s: String) -> Value {
    serde_json::from_str(&s).unwrap_or(Value::String(s))
}

/// A `task_messages` row.
pub(crate) fn message(r: &Row<'_>) -> rusqlite::Result<Message> {
    let task_id: String = r.get("task_id")?;
    let content: String = r.get("content")?;
    let author: String = r.get("author")?;
    Ok(Message {
        // Anything else an operator wrote by hand reads as the task's.
        author: author.parse().unwrap_or(Author::Task),
        id: r.get("id")?,
        task_id: task_id.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
        })?,
        kind: r.get("kind")?,
        content: parse_json_lenient(content),
        created_at: r.get("created_at")?,
    })
}

/// A `users` row (never marked JWT: the HTTP layer marks the caller).
pub(crate) fn user(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get("id")?,
        name: r.get("name")?,
        is_admin: r.get("is_admin")?,
        jwt: false,
    })
}
