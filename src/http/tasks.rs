//! `/v1/tasks` routes: enqueue (one or a batch), get, list, cancel, retry, messages.

use super::extract::{ApiJson, ApiQuery, Auth, Caller, Reader, TaskPath};
use super::openapi::{
    ErrorBody, MessagePage, MessageView, StreamTokenView, TaskBatch, TaskPage, TaskView,
};
use super::{ApiError, ApiResult, AppState};
use crate::clock::parse_rfc3339;
use crate::store::ListParams;
use crate::store::MessageCheck;
use crate::task::{valid_name, Author, NewTask, TaskId, TaskOf, TaskStatus};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The body of `POST /v1/tasks` and each item of a batch.
#[derive(Debug, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTask {
    /// Picks the handler: 1 to 128 characters of `[A-Za-z0-9._:-]`.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    kind: String,
    /// The input: any JSON (default null).
    #[serde(default)]
    payload: Value,
    /// Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    queue: Option<String>,
    /// -100..=100, higher first; default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -100, maximum = 100)]
    priority: Option<i64>,
    /// RFC 3339, at most a year ahead: not claimed before. Not together with `delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    run_at: Option<String>,
    /// Not claimed before this many ms from now, at most a year. Not together with `run_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 31_622_400_000_i64)]
    delay_ms: Option<i64>,
    /// 1..=100; default the kind's retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: Option<i64>,
    /// Time limit of one attempt, at most a week; default the kind's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 604_800_000_i64)]
    timeout_ms: Option<i64>,
    /// 1 to 255 characters, no control characters: the same key again returns the original task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    idempotency_key: Option<String>,
    /// 1 to 255 characters, no control characters: with `[queues.NAME] per_key_concurrency = N`,
    /// at most N tasks with one key of that queue run at once, across all processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    concurrency_key: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBatch {
    /// 1 to 1000 tasks, all or nothing.
    #[schema(min_items = 1, max_items = 1000)]
    tasks: Vec<CreateTask>,
}

/// Turns a request into a validated task for `user`. `header_key` is the `Idempotency-Key`.
fn validate(
    st: &AppState,
    user: &crate::store::User,
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
    let run_at = match &req.run_at {
        Some(t) => Some(parse_rfc3339(t).map_err(|e| format!("run_at: {e}"))?),
        None => None,
    };
    let rules = st.cfg.enqueue_rules(&req.kind);
    crate::queue::new_task(
        &rules,
        crate::queue::NewTaskRequest {
            kind: req.kind,
            queue: req.queue,
            payload: req.payload,
            priority: req.priority,
            asked: crate::queue::Asked {
                max_attempts: req.max_attempts,
                timeout_ms: req.timeout_ms,
                run_at,
                delay_ms: req.delay_ms,
            },
            idempotency_key: key,
            request_hash,
            concurrency_key: req.concurrency_key,
        },
        TaskId::new(),
        user.owner_key(),
        now,
    )
}

/// A kind with `users = [..]` in config is run only by those users (and admins): others get
/// `403 forbidden` naming the kind.
fn may_run(st: &AppState, user: &crate::store::User, kind: &str) -> ApiResult<()> {
    if st.cfg.may_run(kind, user) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "user {:?} may not run tasks of kind {kind:?}",
            user.name
        )))
    }
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
    may_run(&st, &user, &req.kind)?;
    let task = validate(&st, &user, req, hk.as_deref(), now).map_err(ApiError::Invalid)?;
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
        metrics::counter!("spool_tasks_enqueued_total", "queue" => crate::labels::queue(&ins.task.queue), "kind" => crate::labels::kind(&ins.task.kind)).increment(1);
    }
    Ok((code, Json(TaskOf(&ins.task, &user.name))).into_response())
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
        may_run(&st, &user, &t.kind).map_err(|e| match e {
            ApiError::Forbidden(m) => ApiError::Forbidden(format!("tasks[{i}]: {m}")),
            e => e,
        })?;
        tasks.push(
            validate(&st, &user, t, None, now)
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
        metrics::counter!("spool_tasks_enqueued_total", "queue" => crate::labels::queue(&ins.task.queue), "kind" => crate::labels::kind(&ins.task.kind)).increment(1);
    }
    let tasks: Vec<TaskOf<'_>> = out.iter().map(|i| TaskOf(&i.task, &user.name)).collect();
    Ok((StatusCode::CREATED, Json(TaskList { tasks })).into_response())
}

/// `{"tasks": [...]}`, written straight from the tasks (no intermediate JSON tree).
#[derive(serde::Serialize)]
struct TaskList<'a> {
    tasks: Vec<TaskOf<'a>>,
}

/// One task.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "task id (UUID)")),
    responses((status = 200, description = "the task", body = TaskView), (status = 404, description = "no such task of yours", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn get_one(
    State(st): State<AppState>,
    auth: Auth,
    TaskPath(id): TaskPath,
) -> ApiResult<Json<Value>> {
    let t = st.store.task_get(id, auth.scope()).await?;
    Ok(Json(st.task_json(Some(&auth.0), &t).await))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Only tasks in this status.
    #[param(inline, value_type = Option<super::openapi::TaskStatusView>)]
    status: Option<String>,
    /// Only tasks of this queue.
    #[param(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    queue: Option<String>,
    /// Only tasks of this kind.
    #[param(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    kind: Option<String>,
    /// 1..=500, default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(format = "uuid")]
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
    let page = st
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
    // A page cut by its content's bytes (crate::store::LIST_PAGE_BYTES) goes on after its last
    // task like a full one.
    let tasks = page.tasks;
    let next = if tasks.len() as u32 == limit || page.cut {
        tasks.last().map(|t| t.id.to_string())
    } else {
        None
    };
    let mut out = Vec::with_capacity(tasks.len());
    for t in &tasks {
        out.push(st.task_json(Some(&auth.0), t).await);
    }
    Ok(Json(json!({"tasks": out, "next_cursor": next})))
}

/// Cancel: pending ends at once; running is stopped by its worker within a heartbeat.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path, description = "task id (UUID)")),
    responses((status = 200, description = "the task", body = TaskView), (status = 404, description = "no such task of yours", body = ErrorBody), (status = 409, description = "already terminal", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn cancel(
    State(st): State<AppState>,
    auth: Auth,
    TaskPath(id): TaskPath,
) -> ApiResult<Json<Value>> {
    let t = st
        .store
        .task_cancel(id, auth.scope(), st.clock.now())
        .await?;
    Ok(Json(st.task_json(Some(&auth.0), &t).await))
}

/// The optional body of `POST /v1/tasks/{id}/retry`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryBody {
    /// Start from scratch: forget the task's checkpoint (default false: keep it).
    #[serde(default)]
    reset_checkpoint: bool,
}

/// Run a failed or canceled task again, attempts reset; its checkpoint stays unless
/// `{"reset_checkpoint": true}`.
#[utoipa::path(post, path = "/v1/tasks/{id}/retry", tag = "tasks", params(("id" = String, Path, description = "task id (UUID)")), request_body(content = Option<RetryBody>, description = "optional"),
    responses((status = 200, description = "the task, pending", body = TaskView), (status = 404, description = "no such task of yours", body = ErrorBody), (status = 409, description = "not failed or canceled", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn retry(
    State(st): State<AppState>,
    auth: Auth,
    TaskPath(id): TaskPath,
    body: OptionalJson<RetryBody>,
) -> ApiResult<Json<Value>> {
    let reset = body.0.unwrap_or_default().reset_checkpoint;
    let t = st
        .store
        .task_retry(id, auth.scope(), reset, st.clock.now())
        .await?;
    Ok(Json(st.task_json(Some(&auth.0), &t).await))
}

/// A JSON body that may be left out: no body at all is `None`; a body is read as [`ApiJson`].
pub(super) struct OptionalJson<T>(pub(super) Option<T>);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(
        req: axum::extract::Request,
        st: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let empty = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_none()
            && req
                .headers()
                .get(axum::http::header::CONTENT_LENGTH)
                .is_none_or(|v| v.as_bytes() == b"0")
            && req
                .headers()
                .get(axum::http::header::TRANSFER_ENCODING)
                .is_none();
        if empty {
            return Ok(OptionalJson(None));
        }
        let ApiJson(v) = ApiJson::<T>::from_request(req, st).await?;
        Ok(OptionalJson(Some(v)))
    }
}

/// Save the running attempt's checkpoint (with its task token): durable when this answers, and
/// every later attempt of the task starts with it.
#[utoipa::path(put, path = "/v1/tasks/{id}/checkpoint", tag = "messages", params(("id" = String, Path, description = "task id (UUID)")), request_body(content = Value, description = "any JSON, at most `limits.message_bytes` written out"),
    responses((status = 200, description = "the task, with its checkpoint", body = TaskView), (status = 401, description = "not the running attempt's task token", body = ErrorBody), (status = 404, description = "no such task", body = ErrorBody), (status = 413, description = "checkpoint over the limit", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn put_checkpoint(
    State(st): State<AppState>,
    caller: Caller,
    TaskPath(id): TaskPath,
    ApiJson(value): ApiJson<Value>,
) -> ApiResult<Json<Value>> {
    let attempt = match caller {
        Caller::Task(task, attempt) if task == id => attempt,
        Caller::Task(..) => {
            return Err(ApiError::Unauthorized(
                "this task token belongs to another task".into(),
            ))
        }
        Caller::User(_) => return Err(ApiError::Unauthorized(
            "only the running attempt saves a checkpoint: use its task token (SPOOL_TASK_TOKEN)"
                .into(),
        )),
    };
    let size = serde_json::to_vec(&value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > st.cfg.max_message_bytes {
        return Err(ApiError::TooLarge(format!(
            "checkpoint is {size} bytes; the limit is {}",
            st.cfg.max_message_bytes
        )));
    }
    let t = st
        .store
        .task_checkpoint(id, value, MessageCheck::Attempt(attempt), st.clock.now())
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(_) => ApiError::Unauthorized(
                "the attempt this task token was issued for has ended".into(),
            ),
            e => e.into(),
        })?;
    Ok(Json(st.task_json(None, &t).await))
}

/// A short-lived read token for this task's events and messages, for a browser's
/// `EventSource` (which cannot send `Authorization`): pass it as `?access_token=`.
#[utoipa::path(post, path = "/v1/tasks/{id}/stream_token", tag = "events", params(("id" = String, Path, description = "task id (UUID)")),
    responses((status = 201, description = "the token", body = StreamTokenView), (status = 404, description = "no such task of yours", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn stream_token(
    State(st): State<AppState>,
    auth: Auth,
    TaskPath(id): TaskPath,
) -> ApiResult<Response> {
    // Only the owner (or an admin) of an existing task.
    st.store.task_get(id, auth.scope()).await?;
    let now = st.clock.now();
    let expires_at = now.saturating_add(st.cfg.http.stream_token_ttl.as_millis() as i64);
    let token = crate::token::new_stream_token();
    st.store
        .stream_token_create(crate::token::hash_token(&token), id, expires_at, now)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": crate::clock::rfc3339(expires_at)})),
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct MessagesQuery {
    /// Messages with ids greater than this; default 0.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// 1..=1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// With nothing new, wait up to this long (long poll); at most 30000.
    #[param(minimum = 0, maximum = 30000)]
    wait_ms: Option<u64>,
    /// Only messages of this author: `user` (the owner's) or `task`.
    #[param(value_type = Option<String>, pattern = "^(user|task)$")]
    author: Option<String>,
    /// A stream token (`POST /v1/tasks/{id}/stream_token`) instead of `Authorization`.
    #[param(value_type = Option<String>)]
    #[allow(dead_code)]
    // read by the `Reader` extractor; named here so it is documented and allowed
    access_token: Option<String>,
}

/// `?author=`, checked.
pub(super) fn author_param(a: Option<&str>) -> ApiResult<Option<Author>> {
    a.map(|a| {
        a.parse::<Author>()
            .map_err(|_| ApiError::Invalid("author must be user or task".into()))
    })
    .transpose()
}

/// A task's messages after a cursor; with `wait_ms`, a long poll.
#[utoipa::path(get, path = "/v1/tasks/{id}/messages", tag = "messages", params(("id" = String, Path, description = "task id (UUID)"), MessagesQuery),
    responses((status = 200, description = "a page of messages", body = MessagePage), (status = 404, description = "no such task of yours", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn messages(
    State(st): State<AppState>,
    reader: Reader,
    TaskPath(id): TaskPath,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> ApiResult<Json<Value>> {
    let scope = reader.scope_for(id)?;
    let owner = reader.owner(&st, id).await?;
    let author = author_param(q.author.as_deref())?;
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
    // A long poll holds a stream slot while it waits (dropped with this future, also when the
    // client goes away).
    let _slot = if wait_ms > 0 {
        Some(st.limits.stream_slot(&owner)?)
    } else {
        None
    };
    // Watch before the first read, so a message committed in between is not missed.
    let watch = st.store.hub().watch(id);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let poll = Duration::from_millis(st.cfg.worker.poll_interval_ms);
    loop {
        let (task, msgs) = st
            .store
            .task_with_messages(id, scope.clone(), after, limit, author)
            .await?;
        let now = tokio::time::Instant::now();
        if !msgs.is_empty() || task.status.is_terminal() || now >= deadline {
            // The running attempt read its owner's messages: a checkpoint or a wait of it
            // takes them in (see Store::inbox_read).
            if let Reader::Task(_, attempt) = &reader {
                let upto = msgs
                    .iter()
                    .filter(|m| m.author == Author::User)
                    .map(|m| m.id)
                    .max();
                if let Some(upto) = upto {
                    let recorded = st
                        .store
                        .inbox_read(
                            id,
                            MessageCheck::Attempt(attempt.clone()),
                            upto,
                            st.clock.now(),
                        )
                        .await?;
                    // Its attempt ended while it waited (a wait gives the number to the next
                    // attempt): what it read is not the next attempt's, and it gets no more.
                    if !recorded {
                        return Err(ApiError::Unauthorized(
                            "the attempt this task token was issued for has ended".into(),
                        ));
                    }
                }
            }
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
    /// `log`, `progress`, ...: 1 to 128 characters of `[A-Za-z0-9._:-]`.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    kind: String,
    /// Any JSON (default null), at most `max_message_bytes` written out.
    #[serde(default)]
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
        Caller::Task(_, attempt) => MessageCheck::Attempt(attempt.clone()),
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
    // None: a task token's message past the task's message limit was dropped.
    let m = m.ok_or(ApiError::TooManyRequests {
        message: format!(
            "messages per task limit of {} reached; nothing was written",
            st.cfg.limits.messages_per_task
        ),
        retry_after_s: 60,
    })?;
    Ok((StatusCode::CREATED, Json(m.to_json())).into_response())
}
