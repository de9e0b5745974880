//! `/v1/queues` routes (admin only): depths, pause, resume.

use super::extract::Admin;
use super::{configured_queues, ApiError, ApiResult, AppState};
use crate::task::valid_name;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

pub(super) async fn list(State(st): State<AppState>, _admin: Admin) -> ApiResult<Json<Value>> {
    let qs = st
        .store
        .queue_stats(configured_queues(&st.cfg), st.clock.now())
        .await?;
    Ok(Json(json!({ "queues": qs })))
}

async fn set_paused(st: AppState, name: String, paused: bool) -> ApiResult<Json<Value>> {
    if !valid_name(&name) {
        return Err(ApiError::Invalid(
            "queue must be 1 to 128 characters of [A-Za-z0-9._:-]".into(),
        ));
    }
    st.store
        .queue_set_paused(name.clone(), paused, st.clock.now())
        .await?;
    let qs = st
        .store
        .queue_stats(vec![name.clone()], st.clock.now())
        .await?;
    let q = qs
        .into_iter()
        .find(|q| q.name == name)
        .ok_or_else(|| ApiError::Internal(format!("queue {name} vanished after update")))?;
    Ok(Json(json!(q)))
}

pub(super) async fn pause(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(st, name, true).await
}

pub(super) async fn resume(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(st, name, false).await
}
