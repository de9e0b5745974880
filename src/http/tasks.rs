//! `/v1/tasks` routes: enqueue (one or a batch), get, list, cancel, retry, messages.

use super::extract::{ApiJson, ApiQuery, Auth, Caller, TaskPath};
use super::openapi::{ErrorBody, MessagePage, MessageView, TaskBatch, TaskPage, TaskView};
use super::{ApiError, ApiResult, AppState};
use crate::clock::parse_rfc3339;
use crate::store::sqlite::MessageCheck;
use crate::store::ListParams;
use crate::task::{valid_name, NewTask, TaskId, TaskStatus};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Longest `delay_ms` or distance of `run_at` into the future: one year.
const MAX_DELAY_MS: i64 = 366 * 24 * 3600 * 1000;
/// Longest `timeout_ms`: one week.
const MAX_TIMEOUT_MS: i64 = 7 * 24 * 3600 * 1000;

/// The body of `POST /v1/tasks` and each item of a batch.
#[derive(Debug, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTask {
    kind: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delay_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_attempts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBatch {
    tasks: Vec<CreateTask>,
}

/// Turns a request into a validated task for `user`. `header_key` is the `Idempotency-Key`.
fn validate(
    st: &AppState,
    user: &str,
    mut req: CreateTask,
    header_key: Option<&str>,
    now: i64,
) -> Result<NewTask, String> {
    // The request as sent, less the key itself: a replay must match it exactly. serde_json's
    // map is ordered, so the text is canonical.
    let field_key = req.idempotency_key.take();
    let key = match (field_key, header_key) {
        (Some(f), Some(h)) if f != h => {
            return Err("the Idempotency-Key header and the idempotency_key field differ".into())
        }
        (Some(f), _) => Some(f),
        (None, h) => h.map(str::to_string),
    };
    // Only a keyed request is ever compared, so only then is it written out and hashed.
    let request_hash = key.as_ref().map(|_| {
        let canonical = serde_json::to_vec(&req).unwrap_or_default();
        hex::encode(Sha256::digest(&canonical))
    });
    if !valid_name(&req.kind) {
        return Err("kind must be 1 to 128 characters of [A-Za-z0-9._:-]".into());
    }
    let queue = req.queue.take().unwrap_or_else(|| "default".into());
    if !valid_name(&queue) {
        return Err("queue must be 1 to 128 characters of [A-Za-z0-9._:-]".into());
    }
    let priority = req.priority.unwrap_or(0);
    if !(-100..=100).contains(&priority) {
        return Err("priority must be between -100 and 100".into());
    }
    let run_at = match (&req.run_at, req.delay_ms) {
        (Some(_), Some(_)) => return Err("give run_at or delay_ms, not both".into()),
        (Some(t), None) => {
            let at = parse_rfc3339(t).map_err(|e| format!("run_at: {e}"))?;
            if at > now.saturating_add(MAX_DELAY_MS) {
                return Err("run_at must be within a year from now".into());
            }
            at
        }
        (None, Some(d)) => {
            if !(0..=MAX_DELAY_MS).contains(&d) {
                return Err(format!("delay_ms must be between 0 and {MAX_DELAY_MS}"));
            }
            now + d
        }
        (None, None) => now,
    };
    let policy = st.cfg.retry_for(&req.kind);
    let max_attempts = req.max_attempts.unwrap_or(i64::from(policy.max_attempts));
    if !(1..=100).contains(&max_attempts) {
        return Err("max_attempts must be between 1 and 100".into());
    }
    let timeout_ms = req
        .timeout_ms
        .unwrap_or(st.cfg.timeout_for(&req.kind) as i64);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(format!("timeout_ms must be between 1 and {MAX_TIMEOUT_MS}"));
    }
    if let Some(k) = &key {
        if k.is_empty() || k.chars().count() > 255 || k.chars().any(char::is_control) {
            return Err(
                "idempotency_key must be 1 to 255 characters with no control characters".into(),
            );
        }
    }
    Ok(NewTask {
        id: TaskId::new(),
        user_id: user.to_string(),
        queue,
        kind: req.kind,
        payload: req.payload,
        priority: priority as i32,
        run_at,
        max_attempts: max_attempts as u32,
        timeout_ms: timeout_ms as u64,
        idempotency_key: key,
        request_hash,
    })
}

fn header_key(h: &HeaderMap) -> Result<Option<String>, ApiError> {
    match h.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| ApiError::Invalid("Idempotency-Key must be visible ASCII".into())),
    }
}

/// Enqueue one task.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = CreateTask,
    params(("Idempotency-Key" = Option<String>, Header, description = "same as the idempotency_key field")),
    responses((status = 201, description = "committed", body = TaskView), (status = 200, description = "replay of an idempotency key: the original task", body = TaskView),
        (status = 413, description = "body over the limit", body = ErrorBody), (status = 415, description = "not application/json", body = ErrorBody),
        (status = 422, description = "same key, different request", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn create(
    State(st): State<AppState>,
    Auth(user): Auth,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateTask>,
) -> ApiResult<Response> {
    let now = st.clock.now();
    let hk = header_key(&headers)?;
    let task =
        validate(&st, &user.owner_key(), req, hk.as_deref(), now).map_err(ApiError::Invalid)?;
    let mut out = st.store.task_insert(vec![task], now).await?;
    let ins = out
        .pop()
        .ok_or_else(|| ApiError::Internal("insert returned nothing".into()))?;
    let code = if ins.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    if ins.created {
        metrics::counter!("spool_tasks_enqueued_total", "queue" => ins.task.queue.clone(), "kind" => ins.task.kind.clone()).increment(1);
    }
    Ok((code, Json(&*ins.task)).into_response())
}

/// Enqueue 1 to 1000 tasks, all or nothing.
#[utoipa::path(post, path = "/v1/tasks/batch", tag = "tasks", request_body = CreateBatch,
    responses((status = 201, description = "all committed, in order", body = TaskBatch), (status = 422, description = "an item's key was used with a different request", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn create_batch(
    State(st): State<AppState>,
    Auth(user): Auth,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateBatch>,
) -> ApiResult<Response> {
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::Invalid(
            "a batch takes idempotency_key per item, not the header".into(),
        ));
    }
    let n = req.tasks.len();
    if !(1..=1000).contains(&n) {
        return Err(ApiError::Invalid(format!(
            "a batch holds 1 to 1000 tasks, not {n}"
        )));
    }
    let now = st.clock.now();
    let mut tasks = Vec::with_capacity(n);
    for (i, t) in req.tasks.into_iter().enumerate() {
        tasks.push(
            validate(&st, &user.owner_key(), t, None, now)
                .map_err(|e| ApiError::Invalid(format!("tasks[{i}]: {e}")))?,
        );
    }
    let out = st
        .store
        .task_insert(tasks, now)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::IdempotencyMismatch { index, key } => {
                ApiError::IdempotencyMismatch(format!(
            "tasks[{index}]: idempotency key {key:?} was already used with a different request"
        ))
            }
            e => e.into(),
        })?;
    for ins in out.iter().filter(|i| i.created) {
        metrics::counter!("spool_tasks_enqueued_total", "queue" => ins.task.queue.clone(), "kind" => ins.task.kind.clone()).increment(1);
    }
    let tasks: Vec<&crate::task::Task> = out.iter().map(|i| &*i.task).collect();
    Ok((StatusCode::CREATED, Json(TaskList { tasks })).into_response())
}

/// `{"tasks": [...]}`, written straight from the tasks (no intermediate JSON tree).
#[derive(serde::Serialize)]
struct TaskList<'a> {
    tasks: Vec<&'a crate::task::Task>,
}

/// One task.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "task id (UUID)")),
    responses((status = 200, description = "the task", body = TaskView), (status = 404, description = "no such task of yours", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn get_one(
    State(st): State<AppState>,
    auth: Auth,
    TaskPath(id): TaskPath,
) -> ApiResult<Json<Value>> {
    Ok(Json(st.store.task_get(id, auth.scope()).await?.to_json()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    status: Option<String>,
    queue: Option<String>,
    kind: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Tasks, newest first, with a stable cursor.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(ListQuery),
    responses((status = 200, description = "a page", body = TaskPage), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn list(
    State(st): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<TaskStatus>().map_err(ApiError::Invalid)?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::Invalid("limit must be between 1 and 500".into()));
    }
    for (name, v) in [("queue", &q.queue), ("kind", &q.kind)] {
        if let Some(v) = v {
            if !valid_name(v) {
                return Err(ApiError::Invalid(format!(
                    "{name} must be 1 to 128 characters of [A-Za-z0-9._:-]"
                )));
            }
        }
    }
    let cursor = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<TaskId>().map_err(|_| {
            ApiError::Invalid("bad cursor: pass back next_cursor as it came".into())
        })?),
    };
    let tasks = st
        .store
        .task_list(ListParams {
            user_id: auth.scope(),
            status,
            queue: q.queue,
            kind: q.kind,
            cursor,
            limit,
        })
        .await?;
    let next = if tasks.len() as u32 == limit {
        tasks.last().map(|t| t.id.to_string())
    } else {
        None
    };
    let tasks: Vec<Value> = tasks.iter().map(|t| t.to_json()).collect();
    Ok(Json(json!({"tasks": tasks, "next_cursor": next})))
}

/// Cancel: pending ends at once; running is stopped by its worker within a heartbeat.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path, description = "task id (UUID)")),
    responses((status = 200, description = "the task", body = TaskView), (status = 404, description = "no such task of yours", body = ErrorBody), (status = 409, description = "already terminal", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn cancel(
    State(st): State<AppState>,
    auth: Auth,
    TaskPath(id): TaskPath,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        st.store
            .task_cancel(id, auth.scope(), st.clock.now())
            .await?
            .to_json(),
    ))
}

/// Run a failed or canceled task again, attempts reset.
#[utoipa::path(post, path = "/v1/tasks/{id}/retry", tag = "tasks", params(("id" = String, Path, description = "task id (UUID)")),
    responses((status = 200, description = "the task, pending", body = TaskView), (status = 404, description = "no such task of yours", body = ErrorBody), (status = 409, description = "not failed or canceled", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn retry(
    State(st): State<AppState>,
    auth: Auth,
    TaskPath(id): TaskPath,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        st.store
            .task_retry(id, auth.scope(), st.clock.now())
            .await?
            .to_json(),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct MessagesQuery {
    after: Option<i64>,
    limit: Option<u32>,
    wait_ms: Option<u64>,
}

/// A task's messages after a cursor; with `wait_ms`, a long poll.
#[utoipa::path(get, path = "/v1/tasks/{id}/messages", tag = "messages", params(("id" = String, Path, description = "task id (UUID)"), MessagesQuery),
    responses((status = 200, description = "a page of messages", body = MessagePage), (status = 404, description = "no such task of yours", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn messages(
    State(st): State<AppState>,
    auth: Auth,
    TaskPath(id): TaskPath,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> ApiResult<Json<Value>> {
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::Invalid("after must be 0 or more".into()));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::Invalid("limit must be between 1 and 1000".into()));
    }
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms > 30_000 {
        return Err(ApiError::Invalid("wait_ms must be at most 30000".into()));
    }
    // Watch before the first read, so a message committed in between is not missed.
    let watch = st.store.hub().watch(id);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let poll = Duration::from_millis(st.cfg.worker.poll_interval_ms);
    loop {
        let (task, msgs) = st
            .store
            .task_with_messages(id, auth.scope(), after, limit)
            .await?;
        let now = tokio::time::Instant::now();
        if !msgs.is_empty() || task.status.is_terminal() || now >= deadline {
            let next_after = msgs.last().map(|m| m.id).unwrap_or(after);
            let msgs: Vec<Value> = msgs.iter().map(|m| m.to_json()).collect();
            return Ok(Json(
                json!({"messages": msgs, "next_after": next_after, "task_status": task.status}),
            ));
        }
        // Wait for a change of this task in this process, a poll tick (rows of other
        // processes), the deadline, or shutdown.
        let wake = watch.changed();
        tokio::select! {
            _ = wake => {}
            _ = tokio::time::sleep(poll.min(deadline - now)) => {}
            _ = st.shutdown.cancelled() => {}
        }
        if st.shutdown.is_cancelled() {
            return Err(ApiError::Unavailable("the server is stopping".into()));
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AppendMessage {
    kind: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    content: Value,
}

/// Append a message to a task that is not terminal.
#[utoipa::path(post, path = "/v1/tasks/{id}/messages", tag = "messages", params(("id" = String, Path, description = "task id (UUID)")), request_body = AppendMessage,
    responses((status = 201, description = "stored", body = MessageView), (status = 404, description = "no such task of yours", body = ErrorBody), (status = 409, description = "task is terminal", body = ErrorBody), (status = 413, description = "content over the limit", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn append_message(
    State(st): State<AppState>,
    caller: Caller,
    TaskPath(id): TaskPath,
    ApiJson(req): ApiJson<AppendMessage>,
) -> ApiResult<Response> {
    if !valid_name(&req.kind) {
        return Err(ApiError::Invalid(
            "kind must be 1 to 128 characters of [A-Za-z0-9._:-]".into(),
        ));
    }
    let size = serde_json::to_vec(&req.content)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > st.cfg.max_message_bytes {
        return Err(ApiError::TooLarge(format!(
            "message content is {size} bytes; the limit is {}",
            st.cfg.max_message_bytes
        )));
    }
    let check = match &caller {
        Caller::User(auth) => MessageCheck::User(auth.scope()),
        // A task token reaches only its own task, and only while its attempt runs.
        Caller::Task(task, _) if *task != id => {
            return Err(ApiError::Unauthorized(
                "this task token belongs to another task".into(),
            ))
        }
        Caller::Task(_, attempt) => MessageCheck::Attempt(*attempt),
    };
    let m = st
        .store
        .message_insert(id, req.kind, req.content, check, st.clock.now())
        .await
        .map_err(|e| match (&caller, e) {
            (Caller::Task(..), crate::store::StoreError::Conflict(_)) => ApiError::Unauthorized(
                "the attempt this task token was issued for has ended".into(),
            ),
            (_, e) => e.into(),
        })?;
    Ok((StatusCode::CREATED, Json(m.to_json())).into_response())
}
