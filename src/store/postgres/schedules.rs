//! Schedules: rows of `schedules` (see [`crate::schedule`] for what they mean).

use super::{execute, pg_err, query};
use crate::store::{Result, ScheduleRow, StoreError};
use tokio_postgres::Row;

const LIST: &str = include_str!("../../../sql/postgres/queries/schedule_list.sql");
const PUT: &str = include_str!("../../../sql/postgres/queries/schedule_put.sql");
const DELETE: &str = include_str!("../../../sql/postgres/queries/schedule_delete.sql");
const PRUNE_CONFIG: &str = include_str!("../../../sql/postgres/queries/schedule_prune_config.sql");
const FIRED: &str = include_str!("../../../sql/postgres/queries/schedule_fired.sql");

fn row(r: &Row) -> Result<ScheduleRow> {
    let max: i64 = r.try_get("catch_up_max").map_err(pg_err)?;
    Ok(ScheduleRow {
        name: r.try_get("name").map_err(pg_err)?,
        cron: r.try_get("cron").map_err(pg_err)?,
        timezone: r.try_get("timezone").map_err(pg_err)?,
        task: r.try_get("task").map_err(pg_err)?,
        catch_up: r.try_get("catch_up").map_err(pg_err)?,
        catch_up_max: max.clamp(1, i64::from(u32::MAX)) as u32,
        source: r.try_get("source").map_err(pg_err)?,
        last_fire_at: r.try_get("last_fire_at").map_err(pg_err)?,
        last_task_id: r.try_get("last_task_id").map_err(pg_err)?,
        created_at: r.try_get("created_at").map_err(pg_err)?,
        updated_at: r.try_get("updated_at").map_err(pg_err)?,
    })
}

pub(super) async fn list<C: super::Cached>(c: &C) -> Result<Vec<ScheduleRow>> {
    query(c, LIST, &[]).await?.iter().map(row).collect()
}

pub(super) async fn put<C: super::Cached>(
    c: &C,
    r: &ScheduleRow,
    config: bool,
    now: i64,
) -> Result<ScheduleRow> {
    let source = if config { "config" } else { "api" };
    let task = super::rows::jsonb_text(&mut r.task.clone())?;
    let rows = query(
        c,
        PUT,
        &[
            &r.name,
            &r.cron,
            &r.timezone,
            &task,
            &r.catch_up,
            &i64::from(r.catch_up_max),
            &source,
            &now,
        ],
    )
    .await?;
    match rows.first() {
        Some(found) => row(found),
        None => Err(StoreError::Conflict(format!(
            "schedule {:?} comes from the config file; change it there",
            r.name
        ))),
    }
}

pub(super) async fn delete<C: super::Cached>(c: &C, name: &str) -> Result<bool> {
    Ok(execute(c, DELETE, &[&name]).await? > 0)
}

pub(super) async fn prune_config<C: super::Cached>(c: &C, keep: &[String]) -> Result<usize> {
    Ok(execute(c, PRUNE_CONFIG, &[&keep]).await? as usize)
}

pub(super) async fn fired<C: super::Cached>(
    c: &C,
    name: &str,
    at: i64,
    task: Option<&str>,
) -> Result<()> {
    execute(c, FIRED, &[&name, &at, &task]).await?;
    Ok(())
}
