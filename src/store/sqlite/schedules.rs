//! Schedules: rows of `schedules` (see [`crate::schedule`] for what they mean).

use super::rows::parse_json_lenient;
use crate::store::{Result, ScheduleRow, StoreError};
use rusqlite::{named_params, Connection, Row};

pub(super) const LIST: &str = include_str!("../../../sql/sqlite/queries/schedule_list.sql");
const PUT: &str = include_str!("../../../sql/sqlite/queries/schedule_put.sql");
const DELETE: &str = include_str!("../../../sql/sqlite/queries/schedule_delete.sql");
const PRUNE_CONFIG: &str = include_str!("../../../sql/sqlite/queries/schedule_prune_config.sql");
const FIRED: &str = include_str!("../../../sql/sqlite/queries/schedule_fired.sql");

pub(super) fn row(r: &Row<'_>) -> rusqlite::Result<ScheduleRow> {
    let task: String = r.get("task")?;
    Ok(ScheduleRow {
        name: r.get("name")?,
        cron: r.get("cron")?,
        timezone: r.get("timezone")?,
        task: parse_json_lenient(task),
        catch_up: r.get("catch_up")?,
        catch_up_max: r
            .get::<_, i64>("catch_up_max")?
            .clamp(1, i64::from(u32::MAX)) as u32,
        source: r.get("source")?,
        last_fire_at: r.get("last_fire_at")?,
        last_task_id: r.get("last_task_id")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
    })
}

pub(super) fn list(conn: &Connection) -> Result<Vec<ScheduleRow>> {
    let mut st = conn.prepare_cached(LIST)?;
    let rows = st.query_map([], row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(super) fn put(
    conn: &Connection,
    r: &ScheduleRow,
    config: bool,
    now: i64,
) -> Result<ScheduleRow> {
    let source = if config { "config" } else { "api" };
    let mut st = conn.prepare_cached(PUT)?;
    let mut rows = st.query(named_params! {":name": r.name, ":cron": r.cron,
    ":timezone": r.timezone, ":task": r.task.to_string(), ":catch_up": r.catch_up,
    ":catch_up_max": i64::from(r.catch_up_max), ":source": source, ":now": now})?;
    match rows.next()? {
        Some(found) => Ok(row(found)?),
        None => Err(StoreError::Conflict(format!(
            "schedule {:?} comes from the config file; change it there",
            r.name
        ))),
    }
}

pub(super) fn delete(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(DELETE)?
        .execute(named_params! {":name": name})?
        > 0)
}

pub(super) fn prune_config(conn: &Connection, keep: &[String]) -> Result<usize> {
    let names = serde_json::to_string(keep).unwrap_or_else(|_| "[]".into());
    Ok(conn
        .prepare_cached(PRUNE_CONFIG)?
        .execute(named_params! {":names": names})?)
}

pub(super) fn fired(conn: &Connection, name: &str, at: i64, task: Option<&str>) -> Result<()> {
    conn.prepare_cached(FIRED)?
        .execute(named_params! {":name": name, ":at": at, ":task_id": task})?;
    Ok(())
}
