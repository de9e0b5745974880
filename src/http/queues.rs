//! `/v1/queues` routes (admin only): depths, pause, resume.

use super::extract::Admin;
#[allow(unused_imports)]
use super::openapi::{ErrorBody, QueueList, QueueView};
use super::{configured_queues, ApiError, ApiResult, AppState};
use crate::store::{Bucket, QueueStats};
use crate::task::valid_name;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Every queue's depths (admin).
#[utoipa::path(get, path = "/v1/queues", tag = "queues", responses((status = 200, description = "queues", body = QueueList), (status = 403, description = "not an admin token", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn list(State(st): State<AppState>, _admin: Admin) -> ApiResult<Json<Value>> {
    let now = st.clock.now();
    let qs = st
        .store
        .queue_stats(configured_queues(&st.cfg), now)
        .await?;
    let buckets = buckets(&st).await?;
    let qs: Vec<Value> = qs
        .into_iter()
        .map(|q| with_limits(&st, q, &buckets, now))
        .collect();
    Ok(Json(json!({ "queues": qs })))
}

/// Every stored token bucket, when any queue has a rate (none is read otherwise).
async fn buckets(st: &AppState) -> ApiResult<HashMap<String, Bucket>> {
    if !st.cfg.any_rate() {
        return Ok(HashMap::new());
    }
    Ok(st.store.queue_buckets().await?.into_iter().collect())
}

/// A queue's JSON with its `limits` ([`crate::config::Config::queue_limits`]).
fn with_limits(st: &AppState, q: QueueStats, buckets: &HashMap<String, Bucket>, now: i64) -> Value {
    let limits = st
        .cfg
        .queue_limits(&q.name, buckets.get(&q.name).copied(), now);
    let mut v = json!(q);
    v["limits"] = limits;
    v
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
    let buckets = buckets(&st).await?;
    Ok(Json(with_limits(&st, q, &buckets, st.clock.now())))
}

/// Pause a queue: it accepts tasks, no worker claims from it (admin).
#[utoipa::path(post, path = "/v1/queues/{name}/pause", tag = "queues", params(("name" = String, Path, description = "queue name")), responses((status = 200, description = "the queue", body = QueueView), (status = 403, description = "not an admin token", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn pause(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(st, name, true).await
}

/// Resume a paused queue (admin).
#[utoipa::path(post, path = "/v1/queues/{name}/resume", tag = "queues", params(("name" = String, Path, description = "queue name")), responses((status = 200, description = "the queue", body = QueueView), (status = 403, description = "not an admin token", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn resume(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(st, name, false).await
}
