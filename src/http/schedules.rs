//! `/v1/schedules` routes (admin only): list, create or replace, delete, trigger now.

use super::extract::{Admin, ApiJson};
#[allow(unused_imports)]
use super::openapi::{ErrorBody, ScheduleList, ScheduleView, TaskView};
use super::{ApiError, ApiResult, AppState};
use crate::schedule::{self, CatchUp, ScheduleSpec, ScheduleTask};
use crate::store::ADMIN_NAME;
use crate::task::TaskOf;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// The body of `PUT /v1/schedules/{name}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PutSchedule {
    /// A cron expression: 5 fields, or 6 with seconds first (`"0 3 * * *"`, `"*/10 * * * * *"`,
    /// `@hourly`).
    cron: String,
    /// An IANA time zone name (default `UTC`); firings follow its wall clock across DST.
    #[serde(default)]
    timezone: Option<String>,
    /// The task each firing enqueues: as `POST /v1/tasks`, without `idempotency_key` and
    /// `run_at`.
    task: ScheduleTask,
    /// Firings missed while no process ran: `skip` none, `latest` the newest, `all` every one
    /// (the newest `catch_up_max`). Default `latest`.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^(skip|latest|all)$")]
    catch_up: Option<String>,
    /// Missed firings `all` enqueues at most, 1..=10000 (default 100).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    catch_up_max: Option<u32>,
}

fn check_name(name: &str) -> ApiResult<()> {
    if crate::task::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::Invalid(
            "a schedule name must be 1 to 128 characters of [A-Za-z0-9._:-]".into(),
        ))
    }
}

/// Every schedule with its next and last firing (admin).
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", responses((status = 200, description = "schedules", body = ScheduleList), (status = 403, description = "not an admin token", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn list(State(st): State<AppState>, _admin: Admin) -> ApiResult<Json<Value>> {
    let now = st.clock.now();
    let rows = st.store.schedule_list().await?;
    let list: Vec<Value> = rows.iter().map(|r| schedule::to_json(r, now)).collect();
    Ok(Json(json!({ "schedules": list })))
}

/// Create or replace an API schedule (admin). A bad cron expression, time zone or task is
/// `400` naming it; a config schedule's name is `409`.
#[utoipa::path(put, path = "/v1/schedules/{name}", tag = "schedules", request_body = PutSchedule, params(("name" = String, Path, description = "schedule name")), responses((status = 200, description = "the schedule", body = ScheduleView), (status = 409, description = "a config schedule has this name", body = ErrorBody), (status = 403, description = "not an admin token", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn put(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PutSchedule>,
) -> ApiResult<Json<Value>> {
    check_name(&name)?;
    let spec = ScheduleSpec {
        name,
        cron: req.cron,
        timezone: req.timezone.unwrap_or_else(|| "UTC".into()),
        task: req.task,
        catch_up: CatchUp::parse(req.catch_up.as_deref().unwrap_or("latest"))
            .map_err(ApiError::Invalid)?,
        catch_up_max: req.catch_up_max.unwrap_or(schedule::DEFAULT_CATCH_UP_MAX),
    };
    let now = st.clock.now();
    spec.validate(&st.cfg, now).map_err(ApiError::Invalid)?;
    let row = st.store.schedule_put(spec.row("api"), false, now).await?;
    Ok(Json(schedule::to_json(&row, now)))
}

/// Delete an API schedule (admin): `204`; a config schedule is `409`, an unknown one `404`.
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path, description = "schedule name")), responses((status = 204, description = "deleted"), (status = 404, description = "no such schedule", body = ErrorBody), (status = 409, description = "a config schedule", body = ErrorBody), (status = 403, description = "not an admin token", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn delete(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    check_name(&name)?;
    if st.store.schedule_delete(name.clone()).await? {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let rows = st.store.schedule_list().await?;
    match rows.iter().find(|r| r.name == name) {
        Some(_) => Err(ApiError::Conflict(format!(
            "schedule {name:?} comes from the config file; remove it there"
        ))),
        None => Err(ApiError::NotFound(format!("schedule {name:?} not found"))),
    }
}

/// Fire a schedule now (admin): `201` with the task it enqueued, keyed
/// `schedule:<name>:<now RFC 3339>`; `200` with the task already enqueued under that key.
#[utoipa::path(post, path = "/v1/schedules/{name}/trigger", tag = "schedules", params(("name" = String, Path, description = "schedule name")), responses((status = 201, description = "the task enqueued", body = TaskView), (status = 200, description = "a firing of this time was already enqueued: that task", body = TaskView), (status = 422, description = "a firing of this time was enqueued from another definition", body = ErrorBody), (status = 404, description = "no such schedule", body = ErrorBody), (status = 403, description = "not an admin token", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn trigger(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    check_name(&name)?;
    let rows = st.store.schedule_list().await?;
    let row = rows
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("schedule {name:?} not found")))?;
    let spec = ScheduleSpec::of_row(row).map_err(ApiError::Invalid)?;
    let now = st.clock.now();
    let owner = st
        .store
        .user_resolve(ADMIN_NAME.into(), now)
        .await?
        .owner_key();
    let task = schedule::task_for(&st.cfg, &spec, now, owner).map_err(ApiError::Invalid)?;
    let mut out = st.store.task_insert(vec![task], now).await?;
    let ins = out
        .pop()
        .ok_or_else(|| ApiError::Internal("insert returned nothing".into()))?;
    // As `POST /v1/tasks`: a firing already enqueued under this key (this very millisecond) is
    // `200` with that task.
    let code = if ins.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(TaskOf(&ins.task, ADMIN_NAME))).into_response())
}
