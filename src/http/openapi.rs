//! The OpenAPI 3.1 document of the API, generated from the handlers' annotations and the
//! request/response types (utoipa). Served at `GET /openapi.json`.

use super::{queues, sse, tasks};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// A task as every route shows it (`Task::to_json`; a test keeps the two in step).
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    /// UUID v7.
    id: String,
    /// The owner's user name.
    user: String,
    /// 1 to 128 characters of `[A-Za-z0-9._:-]`.
    queue: String,
    /// Picks the handler.
    kind: String,
    /// `pending`, `running`, `completed`, `failed` or `canceled`.
    status: String,
    /// -100..=100, higher first.
    priority: i32,
    /// The input.
    #[schema(value_type = Object)]
    payload: Value,
    /// The output of a completed task.
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    /// Attempts started.
    attempts: u32,
    /// Attempts allowed.
    max_attempts: u32,
    /// The last failure.
    last_error: Option<String>,
    /// The client's idempotency key.
    idempotency_key: Option<String>,
    /// RFC 3339: not claimed before.
    run_at: String,
    /// Time limit of one attempt.
    timeout_ms: u64,
    /// A cancel was asked for while it ran.
    cancel_requested: bool,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339, start of the latest attempt.
    started_at: Option<String>,
    /// RFC 3339, when it became terminal.
    completed_at: Option<String>,
    /// RFC 3339.
    updated_at: String,
}

/// A progress message.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    /// Strictly increasing, the SSE event id.
    id: i64,
    /// Its task.
    task_id: String,
    /// `log`, `stderr`, `progress`, ...
    kind: String,
    /// Any JSON.
    #[schema(value_type = Object)]
    content: Value,
    /// RFC 3339.
    created_at: String,
}

/// A page of tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPage {
    /// Newest first.
    tasks: Vec<TaskView>,
    /// Pass back as `cursor` for the next page; null on the last one.
    next_cursor: Option<String>,
}

/// Tasks of a batch, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskBatch {
    /// The tasks.
    tasks: Vec<TaskView>,
}

/// A page of messages.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    /// Oldest first.
    messages: Vec<MessageView>,
    /// The last id returned, or `after` when none was.
    next_after: i64,
    /// The task's status at the time of the read.
    task_status: String,
}

/// Depths of one queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// The queue.
    name: String,
    /// Workers skip it.
    paused: bool,
    /// Runnable now.
    pending: u64,
    /// Waiting for a future `run_at`.
    scheduled: u64,
    /// Claimed.
    running: u64,
    /// Completed.
    completed: u64,
    /// Failed.
    failed: u64,
    /// Canceled.
    canceled: u64,
    /// Age of the oldest runnable task.
    oldest_pending_age_ms: Option<u64>,
}

/// All queues.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    /// The queues.
    queues: Vec<QueueView>,
}

/// The body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    error: ErrorDetail,
}

/// A stable code and a message for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `invalid_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `idempotency_mismatch`, `unavailable`.
    code: String,
    /// What went wrong.
    message: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The API document.
#[derive(OpenApi)]
#[openapi(
    info(title = "spool", description = "A durable job queue: the HTTP API v1. Every /v1 route needs `Authorization: Bearer <token>`."),
    paths(
        tasks::create, tasks::create_batch, tasks::get_one, tasks::list, tasks::cancel, tasks::retry,
        tasks::messages, tasks::append_message, sse::task_events, sse::all_events,
        queues::list, queues::pause, queues::resume,
    ),
    components(schemas(TaskView, MessageView, TaskPage, TaskBatch, MessagePage, QueueView, QueueList, ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn task_view_matches_the_json_the_routes_send() {
        let doc: Value = serde_json::from_str(&document()).unwrap();
        let props = doc["components"]["schemas"]["TaskView"]["properties"]
            .as_object()
            .unwrap();
        let mut documented: Vec<&String> = props.keys().collect();
        documented.sort();
        let t = crate::task::Task {
            id: crate::task::TaskId::new(),
            user_id: "u".into(),
            queue: "q".into(),
            kind: "k".into(),
            status: crate::task::TaskStatus::Pending,
            priority: 0,
            payload: Value::Null,
            result: None,
            attempts: 0,
            max_attempts: 1,
            last_error: None,
            idempotency_key: None,
            run_at: 0,
            timeout_ms: 1,
            cancel_requested: false,
            lease_owner: None,
            lease_expires_at: None,
            created_at: 0,
            started_at: None,
            completed_at: None,
            updated_at: 0,
        };
        let sent = t.to_json();
        let mut keys: Vec<&String> = sent.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(documented, keys);
    }

    #[test]
    fn every_route_is_documented() {
        let doc: Value = serde_json::from_str(&document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/tasks",
            "/v1/tasks/batch",
            "/v1/tasks/{id}",
            "/v1/tasks/{id}/cancel",
            "/v1/tasks/{id}/retry",
            "/v1/tasks/{id}/messages",
            "/v1/tasks/{id}/events",
            "/v1/events",
            "/v1/queues",
            "/v1/queues/{name}/pause",
            "/v1/queues/{name}/resume",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
    }
}
