//! The OpenAPI 3.1 document of the API, generated from the handlers' annotations and the
//! request/response types (utoipa). Served at `GET /openapi.json`.

use super::{queues, sse, tasks};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The pattern of queue and kind names (`task::valid_name`).
pub(super) const NAME_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// A task's status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum TaskStatusView {
    /// Waiting, perhaps until `run_at`, perhaps after a failed attempt.
    Pending,
    /// Claimed by a worker under a lease.
    Running,
    /// Parked by its attempt until its owner writes to it or the wait times out; no lease.
    Waiting,
    /// Terminal: done.
    Completed,
    /// Terminal: attempts exhausted or a permanent error.
    Failed,
    /// Terminal: canceled.
    Canceled,
}

/// A task as every route shows it (`Task::to_json`; a test keeps the two in step).
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    /// UUID v7.
    #[schema(format = "uuid")]
    id: String,
    /// 1 to 128 characters of `[A-Za-z0-9._:-]`.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    queue: String,
    /// Picks the handler.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    kind: String,
    /// `pending`, `running`, `waiting`, `completed`, `failed` or `canceled`.
    status: TaskStatusView,
    /// -100..=100, higher first.
    #[schema(minimum = -100, maximum = 100)]
    priority: i32,
    /// The input: any JSON.
    payload: Value,
    /// The output of a completed task: any JSON, or null.
    result: Option<Value>,
    /// Attempts started.
    attempts: u32,
    /// Attempts allowed.
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: u32,
    /// The last failure, or null.
    last_error: Option<String>,
    /// The client's idempotency key, or null.
    idempotency_key: Option<String>,
    /// The admission key (`per_key_concurrency` of its queue), or null.
    concurrency_key: Option<String>,
    /// RFC 3339: not claimed before.
    #[schema(format = DateTime)]
    run_at: String,
    /// Time limit of one attempt.
    #[schema(minimum = 1)]
    timeout_ms: u64,
    /// A cancel was asked for while it ran.
    cancel_requested: bool,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
    /// RFC 3339, start of the latest attempt, or null.
    #[schema(format = DateTime)]
    started_at: Option<String>,
    /// RFC 3339, when it became terminal, or null.
    #[schema(format = DateTime)]
    completed_at: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    updated_at: String,
    /// While waiting: what for and until when; else null.
    wait: Option<WaitView>,
    /// The JSON an attempt saved (any JSON), or null: every later attempt starts with it.
    checkpoint: Option<Value>,
}

/// What a waiting task waits for.
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitView {
    /// Always `message`: a message from the task's owner.
    #[serde(rename = "for")]
    #[schema(pattern = "^message$")]
    for_: String,
    /// RFC 3339: the wait times out then (the task becomes pending, woken by `timeout`).
    #[schema(format = DateTime)]
    until: String,
}

/// Who wrote a message.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum AuthorView {
    /// The task's owner (or an admin) through the API.
    User,
    /// The running attempt: worker progress, a task token.
    Task,
}

/// A read token for one task's events and messages.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamTokenView {
    /// Pass as `?access_token=` (or as a Bearer token) to `GET /v1/tasks/{id}/events` and
    /// `GET /v1/tasks/{id}/messages` of this task only.
    token: String,
    /// RFC 3339: it is refused after this.
    #[schema(format = DateTime)]
    expires_at: String,
}

/// A progress message.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    /// Strictly increasing, the SSE event id.
    #[schema(minimum = 1)]
    id: i64,
    /// Its task.
    #[schema(format = "uuid")]
    task_id: String,
    /// `log`, `stderr`, `progress`, ...
    kind: String,
    /// Who wrote it.
    author: AuthorView,
    /// Any JSON.
    content: Value,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
}

/// A page of tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPage {
    /// Newest first.
    tasks: Vec<TaskView>,
    /// Pass back as `cursor` for the next page; null on the last one.
    #[schema(format = "uuid")]
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
    #[schema(minimum = 0)]
    next_after: i64,
    /// The task's status at the time of the read.
    task_status: TaskStatusView,
}

/// Depths of one queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// The queue.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    name: String,
    /// Workers skip it.
    paused: bool,
    /// Runnable now.
    pending: u64,
    /// Waiting for a future `run_at`.
    scheduled: u64,
    /// Claimed.
    running: u64,
    /// Parked until their owner writes to them or their wait times out.
    waiting: u64,
    /// Completed.
    completed: u64,
    /// Failed.
    failed: u64,
    /// Canceled.
    canceled: u64,
    /// Age of the oldest runnable task, or null when none is.
    oldest_pending_age_ms: Option<u64>,
    /// The queue's limits from config (null: none).
    limits: QueueLimits,
}

/// A queue's limits (`[queues.NAME]` in config); each is null when not set.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueLimits {
    /// At most this many of its tasks at once in each process.
    #[schema(minimum = 1)]
    concurrency: Option<u32>,
    /// At most this many of its tasks at once across every process.
    #[schema(minimum = 1)]
    global_concurrency: Option<u32>,
    /// At most this many running tasks with one `concurrency_key`, across every process.
    #[schema(minimum = 1)]
    per_key_concurrency: Option<u32>,
    /// Tasks started per second, minute or hour (`"100/s"`, `"20/m"`, `"5/h"`).
    #[schema(pattern = "^[0-9]+/[smh]$")]
    rate: Option<String>,
    /// Tasks that may start at once after a quiet spell (the token bucket's size).
    #[schema(minimum = 1)]
    burst: Option<u32>,
    /// Tokens in the bucket now (a task takes one to start).
    #[schema(minimum = 0)]
    tokens: Option<f64>,
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

/// The stable machine codes of errors (API.md's table).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ErrorCode {
    /// 400.
    InvalidRequest,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 409.
    Conflict,
    /// 413.
    PayloadTooLarge,
    /// 415.
    UnsupportedMediaType,
    /// 408.
    RequestTimeout,
    /// 422.
    IdempotencyMismatch,
    /// 429.
    TooManyRequests,
    /// 503.
    Unavailable,
    /// 500 (a bug; never detailed).
    Internal,
}

/// A stable code and a message for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The machine code.
    code: ErrorCode,
    /// What went wrong.
    message: String,
}

/// One server-sent event, as a client's parser sees it (OpenAPI 3.1 has no `itemSchema`, so an
/// event stream's `schema` describes each event).
#[derive(Debug, Serialize, ToSchema)]
pub struct SseEvent {
    /// `status` (data: the task), `message` (data: the message, with `id`), `end` (data: the
    /// final task; the stream closes), `lagged` (data: how many changes were missed; re-read).
    event: SseEventName,
    /// JSON text: the task or message as the other routes show them, or a count for `lagged`.
    data: String,
    /// The message id, for `Last-Event-ID` on reconnect (a browser repeats the last one).
    #[schema(pattern = "^[0-9]+$")]
    id: Option<String>,
    /// Reconnect delay hint, milliseconds.
    #[schema(minimum = 0)]
    retry: Option<u64>,
}

/// The names of the events.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum SseEventName {
    /// The task's current state.
    Status,
    /// A progress message.
    Message,
    /// The last event of a finished task's stream.
    End,
    /// `/v1/events` only: status changes were dropped for a slow reader.
    Lagged,
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
    info(title = "spool", description = "A durable job queue: the HTTP API v1. Every /v1 route needs `Authorization: Bearer <token>`; the service routes (`/`, `/healthz`, `/readyz`, `/metrics`, `/openapi.json`) need none. Every error is JSON `{\"error\": {\"code\", \"message\"}}`; a path with a method it does not take is `405 method_not_allowed`, an unknown path `404 not_found`."),
    paths(
        tasks::create, tasks::create_batch, tasks::get_one, tasks::list, tasks::cancel, tasks::retry,
        tasks::messages, tasks::append_message, tasks::put_checkpoint, tasks::stream_token,
        sse::task_events, sse::all_events,
        queues::list, queues::pause, queues::resume,
        super::dashboard, super::healthz, super::readyz, super::metrics_text, super::openapi_json,
    ),
    components(schemas(TaskView, TaskStatusView, WaitView, AuthorView, StreamTokenView, MessageView, TaskPage, TaskBatch, MessagePage, QueueView, QueueLimits, QueueList, ErrorBody, ErrorDetail, ErrorCode, SseEvent, SseEventName)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The document as JSON: generated once, then served as is.
pub fn document() -> String {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let Ok(mut doc) = serde_json::to_value(ApiDoc::openapi()) else {
            return "{}".into();
        };
        contract(&mut doc);
        serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into())
    })
    .clone()
}

/// An error response: the error body, and the headers it carries.
fn error_response(description: &str, headers: Value) -> Value {
    let mut r = serde_json::json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    });
    if headers.as_object().is_some_and(|h| !h.is_empty()) {
        r["headers"] = headers;
    }
    r
}

fn retry_after(description: &str) -> Value {
    serde_json::json!({"Retry-After": {
        "description": description,
        "schema": {"type": "integer", "minimum": 1},
    }})
}

/// What every route shares, written once here rather than on each handler: 405 (another method
/// on a known path), the errors any /v1 route can answer (401, 429, 503, the last two with
/// `Retry-After`), those of a JSON body (400, 408, 413, 415), the schema of each server-sent event,
/// the forms of path parameters (a task id is a UUID, a queue name a name), and the one rule of
/// a new task that is across fields (`run_at` and `delay_ms` not both).
fn contract(doc: &mut Value) {
    let empty = || serde_json::json!({});
    let common: Vec<(&str, Value)> = vec![
        ("401", error_response("missing or unknown token", empty())),
        (
            "429",
            error_response(
                "too_many_requests: a per-user limit (streams, pending tasks, bytes, requests per second) is reached; nothing was written",
                retry_after("seconds until a retry may succeed"),
            ),
        ),
        (
            "503",
            error_response(
                "unavailable: the database could not take the work in time; nothing was written",
                retry_after("seconds to wait before retrying"),
            ),
        ),
    ];
    let everywhere: Vec<(&str, Value)> = vec![(
        "405",
        error_response(
            "method_not_allowed: this path with a method it does not take",
            empty(),
        ),
    )];
    let with_body: Vec<(&str, Value)> = vec![
        ("400", error_response("invalid request", empty())),
        (
            "413",
            error_response(
                "payload_too_large: the body is over http.max_body_bytes (the connection is closed)",
                empty(),
            ),
        ),
        (
            "415",
            error_response(
                "unsupported_media_type: the body is not Content-Type: application/json",
                empty(),
            ),
        ),
        (
            "408",
            error_response(
                "request_timeout: the body did not arrive within http.body_timeout_ms (the connection is closed)",
                empty(),
            ),
        ),
    ];
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (_method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                for p in params {
                    if p["in"] != "path" {
                        continue;
                    }
                    match p["name"].as_str() {
                        Some("id") => {
                            p["schema"] = serde_json::json!({"type": "string", "format": "uuid"})
                        }
                        Some("name") => {
                            p["schema"] =
                                serde_json::json!({"type": "string", "pattern": NAME_PATTERN})
                        }
                        _ => {}
                    }
                }
            }
            // Every event stream: each event as `SseEvent` describes it.
            if let Some(rs) = op.get_mut("responses").and_then(Value::as_object_mut) {
                for r in rs.values_mut() {
                    if let Some(c) = r.pointer_mut("/content/text~1event-stream") {
                        c["schema"] = serde_json::json!({"$ref": "#/components/schemas/SseEvent"});
                    }
                }
            }
            let has_body = op.contains_key("requestBody");
            let responses = op.entry("responses").or_insert_with(empty).as_object_mut();
            let Some(responses) = responses else { continue };
            // A handler's own description wins; the headers are added to it.
            let mut add = |list: &[(&str, Value)]| {
                for (code, r) in list {
                    match responses.get_mut(*code) {
                        None => {
                            responses.insert((*code).to_string(), r.clone());
                        }
                        Some(have) => {
                            if let Some(h) = r.get("headers") {
                                have["headers"] = h.clone();
                            }
                        }
                    }
                }
            };
            add(&everywhere);
            if path.starts_with("/v1/") {
                add(&common);
            }
            if has_body {
                add(&with_body);
            }
        }
    }
    // A new task: `run_at` and `delay_ms` may not both be given (null counts as not given).
    if let Some(create) = doc
        .pointer_mut("/components/schemas/CreateTask")
        .and_then(Value::as_object_mut)
    {
        create.insert(
            "not".into(),
            serde_json::json!({
                "required": ["run_at", "delay_ms"],
                "properties": {"run_at": {"type": "string"}, "delay_ms": {"type": "integer"}},
            }),
        );
    }
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
            checkpoint: None,
            wait_until: None,
            wake_reason: None,
            inbox_cursor: 0,
            concurrency_key: None,
        };
        let sent = t.to_json();
        let mut keys: Vec<&String> = sent.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(documented, keys);
    }

    fn doc() -> Value {
        serde_json::from_str(&document()).unwrap()
    }

    /// Every (path, method, operation) of the document.
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((path.clone(), method.clone(), op.clone()));
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented_with_its_content_type() {
        let doc = doc();
        let paths = doc["paths"].as_object().unwrap();
        for (p, method, status, content_type) in [
            ("/v1/tasks", "post", "201", "application/json"),
            ("/v1/tasks", "get", "200", "application/json"),
            ("/v1/tasks/batch", "post", "201", "application/json"),
            ("/v1/tasks/{id}", "get", "200", "application/json"),
            ("/v1/tasks/{id}/cancel", "post", "200", "application/json"),
            ("/v1/tasks/{id}/retry", "post", "200", "application/json"),
            ("/v1/tasks/{id}/messages", "get", "200", "application/json"),
            ("/v1/tasks/{id}/messages", "post", "201", "application/json"),
            ("/v1/tasks/{id}/events", "get", "200", "text/event-stream"),
            ("/v1/events", "get", "200", "text/event-stream"),
            ("/v1/queues", "get", "200", "application/json"),
            ("/v1/queues/{name}/pause", "post", "200", "application/json"),
            (
                "/v1/queues/{name}/resume",
                "post",
                "200",
                "application/json",
            ),
            ("/", "get", "200", "text/html"),
            ("/healthz", "get", "200", "text/plain"),
            ("/readyz", "get", "200", "text/plain"),
            ("/metrics", "get", "200", "text/plain"),
            ("/openapi.json", "get", "200", "application/json"),
        ] {
            let content = &paths.get(p).unwrap_or_else(|| panic!("{p} missing"))[method]
                ["responses"][status]["content"];
            let types: Vec<&String> = content.as_object().unwrap().keys().collect();
            assert_eq!(types, vec![content_type], "{method} {p} {status}");
        }
        // The service routes need no token; the API's do.
        for (path, method, op) in operations(&doc) {
            let open = op["security"] == serde_json::json!([{}]);
            assert_eq!(open, !path.starts_with("/v1/"), "{method} {path}");
        }
    }

    #[test]
    fn payload_result_and_message_content_are_any_json() {
        let doc = doc();
        let s = &doc["components"]["schemas"];
        for (schema, field) in [
            ("TaskView", "payload"),
            ("TaskView", "result"),
            ("MessageView", "content"),
            ("TaskView", "checkpoint"),
            ("CreateTask", "payload"),
            ("AppendMessage", "content"),
        ] {
            let f = s[schema]["properties"][field].as_object().unwrap();
            assert!(
                !f.contains_key("type") && !f.contains_key("$ref"),
                "{schema}.{field} is constrained: {f:?}"
            );
        }
    }

    #[test]
    fn nullable_fields_are_marked_nullable() {
        let doc = doc();
        let s = &doc["components"]["schemas"];
        for (schema, field) in [
            ("TaskView", "last_error"),
            ("TaskView", "idempotency_key"),
            ("TaskView", "started_at"),
            ("TaskView", "completed_at"),
            ("TaskPage", "next_cursor"),
            ("QueueView", "oldest_pending_age_ms"),
            ("QueueLimits", "rate"),
            ("QueueLimits", "tokens"),
        ] {
            let t = &s[schema]["properties"][field]["type"];
            assert!(
                t.as_array().is_some_and(|a| a.contains(&"null".into())),
                "{schema}.{field}: {t}"
            );
        }
    }

    #[test]
    fn event_streams_describe_each_event() {
        let doc = doc();
        for p in ["/v1/tasks/{id}/events", "/v1/events"] {
            let c = &doc["paths"][p]["get"]["responses"]["200"]["content"]["text/event-stream"];
            assert_eq!(c["schema"]["$ref"], "#/components/schemas/SseEvent", "{p}");
        }
        let ev = &doc["components"]["schemas"]["SseEvent"];
        assert_eq!(ev["properties"]["data"]["type"], "string");
    }

    #[test]
    fn every_api_operation_documents_the_errors_it_can_answer() {
        let doc = doc();
        for (path, method, op) in operations(&doc) {
            let r = &op["responses"];
            let has = |code: &str| r.get(code).is_some();
            assert!(has("405"), "{method} {path} lacks 405");
            if path.starts_with("/v1/") {
                for code in ["401", "429", "503"] {
                    assert!(has(code), "{method} {path} lacks {code}");
                }
                for code in ["429", "503"] {
                    assert!(
                        r[code]["headers"].get("Retry-After").is_some(),
                        "{method} {path} {code} lacks Retry-After"
                    );
                }
                assert_eq!(
                    r["429"]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody"
                );
            }
            if op.get("requestBody").is_some() {
                for code in ["400", "413", "415"] {
                    assert!(has(code), "{method} {path} lacks {code}");
                }
            }
        }
    }

    #[test]
    fn names_ranges_and_ids_are_constrained_as_the_server_checks_them() {
        let doc = doc();
        let s = &doc["components"]["schemas"];
        let create = &s["CreateTask"]["properties"];
        for f in ["kind", "queue"] {
            assert_eq!(create[f]["pattern"], NAME_PATTERN, "CreateTask.{f}");
        }
        assert_eq!(
            s["AppendMessage"]["properties"]["kind"]["pattern"],
            NAME_PATTERN
        );
        let range = |v: &Value| (v["minimum"].as_i64(), v["maximum"].as_i64());
        assert_eq!(range(&create["priority"]), (Some(-100), Some(100)));
        assert_eq!(range(&create["max_attempts"]), (Some(1), Some(100)));
        assert_eq!(create["idempotency_key"]["maxLength"], 255);
        assert_eq!(s["CreateBatch"]["properties"]["tasks"]["maxItems"], 1000);
        assert_eq!(s["CreateBatch"]["properties"]["tasks"]["minItems"], 1);
        // run_at and delay_ms: not both.
        assert_eq!(
            s["CreateTask"]["not"]["required"],
            serde_json::json!(["run_at", "delay_ms"])
        );
        let param = |path: &str, method: &str, name: &str| -> Value {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))["schema"]
                .clone()
        };
        assert_eq!(
            range(&param("/v1/tasks", "get", "limit")),
            (Some(1), Some(500))
        );
        assert_eq!(param("/v1/tasks", "get", "queue")["pattern"], NAME_PATTERN);
        assert_eq!(param("/v1/tasks", "get", "kind")["pattern"], NAME_PATTERN);
        let m = "/v1/tasks/{id}/messages";
        assert_eq!(range(&param(m, "get", "limit")), (Some(1), Some(1000)));
        assert_eq!(range(&param(m, "get", "wait_ms")), (Some(0), Some(30000)));
        assert_eq!(param("/v1/events", "get", "queue")["pattern"], NAME_PATTERN);
        for (path, method, op) in operations(&doc) {
            for p in op["parameters"].as_array().into_iter().flatten() {
                match p["name"].as_str() {
                    Some("id") => assert_eq!(p["schema"]["format"], "uuid", "{method} {path}"),
                    Some("name") => {
                        assert_eq!(p["schema"]["pattern"], NAME_PATTERN, "{method} {path}")
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(s["TaskView"]["properties"]["id"]["format"], "uuid");
        assert_eq!(s["MessageView"]["properties"]["task_id"]["format"], "uuid");
    }
}
