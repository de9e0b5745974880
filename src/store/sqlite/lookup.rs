//! Lookups shared by reads and writes: a task as its owner may see it, a page of messages, users.

use super::{rows, sql};
use crate::clock::UnixMillis;
use crate::store::{Message, Result, StoreError, User, MESSAGE_PAGE_BYTES};
use crate::task::{Author, Task, TaskId};
use rusqlite::{named_params, Connection, OptionalExtension};

pub(super) fn messages_after(
    conn: &Connection,
    task_id: TaskId,
    after: i64,
    limit: u32,
    author: Option<Author>,
) -> Result<Vec<Message>> {
    let mut st = conn.prepare_cached(sql::MESSAGE_LIST)?;
    let mut rows = st.query(named_params! {
        ":task_id": task_id.to_string(), ":after": after, ":limit": limit,
        ":author": author.map(Author::as_str),
    })?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(r) = rows.next()? {
        let size = r
            .get_ref("content")?
            .as_bytes()
            .map(<[u8]>::len)
            .unwrap_or(0);
        if !out.is_empty() && bytes.saturating_add(size) > MESSAGE_PAGE_BYTES {
            break;
        }
        bytes = bytes.saturating_add(size);
        out.push(rows::message(r)?);
    }
    Ok(out)
}

pub(super) fn user_by_name(conn: &Connection, name: &str) -> Result<Option<User>> {
    Ok(conn
        .prepare_cached(sql::USER_GET_BY_NAME)?
        .query_row(named_params! {":name": name}, rows::user)
        .optional()?)
}

pub(super) fn user_by_jwt(conn: &Connection, issuer: &str, name: &str) -> Result<Option<User>> {
    Ok(conn
        .prepare_cached(sql::USER_GET_JWT)?
        .query_row(named_params! {":issuer": issuer, ":name": name}, rows::user)
        .optional()?)
}

pub(super) fn insert_user(
    conn: &Connection,
    name: &str,
    issuer: Option<&str>,
    is_admin: bool,
    now: UnixMillis,
) -> Result<User> {
    let id: i64 = conn.prepare_cached(sql::USER_INSERT)?.query_row(
        named_params! {":name": name, ":issuer": issuer, ":is_admin": is_admin, ":now": now},
        |r| r.get(0),
    )?;
    Ok(User {
        id,
        name: name.to_string(),
        is_admin,
        // Set by the HTTP layer for a caller signed in with a JWT, as for rows read back.
        jwt: false,
    })
}

pub(super) fn get_owned(conn: &Connection, id: TaskId, user: Option<&str>) -> Result<Task> {
    let t = rows::task(
        &mut *conn.prepare_cached(sql::TASK_GET)?,
        named_params! {":id": id.to_string()},
    )?;
    match t {
        Some(t) if user.is_none_or(|u| u == t.user_id) => Ok(t),
        _ => Err(StoreError::NotFound(id)),
    }
}
