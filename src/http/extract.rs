//! Extractors whose rejections use the API's error shape: JSON bodies, bearer tokens, task ids
//! in paths, query strings.

use super::{ApiError, AppState};
use crate::store::{TaskTokenCheck, TokenAttempt, User};
use crate::task::TaskId;
use crate::token::{hash_token, STREAM_TOKEN_PREFIX, TASK_TOKEN_PREFIX};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// How much of a too-large body is read and dropped before the `413` (see [`ApiJson`]).
const MAX_DRAIN_BYTES: usize = 16 << 20;

/// A JSON body: `application/json` only (415), at most `http.max_body_bytes` (413), and
/// well-formed with no unknown fields (400 naming the problem).
pub(super) struct ApiJson<T>(pub(super) T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = st.cfg.http.max_body_bytes;
        let timeout = || {
            ApiError::RequestTimeout(format!(
                "the body did not arrive within http.body_timeout_ms ({} ms)",
                st.cfg.http.body_timeout.as_millis()
            ))
        };
        let mut body = req.into_body().into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut body).await {
            let chunk = chunk.map_err(|e| {
                if super::serve::is_body_timeout(&e) {
                    timeout()
                } else {
                    ApiError::Invalid(format!("reading the body: {e}"))
                }
            })?;
            if bytes.len() + chunk.len() > limit {
                // The 413 closes the connection. Closing a socket with unread data makes the
                // kernel answer with a reset, which can destroy the 413 before the client reads
                // it: read (and drop) what the client is still sending first, within the body
                // timeout and up to a bound, so the close is an orderly one.
                let mut drained = 0usize;
                while let Some(Ok(c)) = futures::StreamExt::next(&mut body).await {
                    drained += c.len();
                    if drained > MAX_DRAIN_BYTES {
                        break;
                    }
                }
                return Err(ApiError::TooLarge(format!(
                    "the body is over the limit of {limit} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let value = parse_json::<T>(&bytes)?;
        Ok(ApiJson(value))
    }
}

/// Parses JSON with a message that says where it went wrong.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // The happy path with plain serde_json (which also refuses trailing characters); the
    // slower path-tracking parse runs only to explain a failure.
    if let Ok(v) = serde_json::from_slice::<T>(bytes) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ApiError::Invalid(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::Invalid(format!("invalid JSON body at {path}: {inner}"))
        }
    })?;
    // Anything after the value (`{"kind": "a"} x`) makes the whole body invalid.
    de.end()
        .map_err(|e| ApiError::Invalid(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// The caller, from `Authorization: Bearer <token>`.
pub(super) struct Auth(pub(super) User);

impl Auth {
    /// The owner filter for store reads (the user's id): `None` for an admin (sees everything).
    pub(super) fn scope(&self) -> Option<String> {
        if self.0.is_admin {
            None
        } else {
            Some(self.0.owner_key())
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if token.starts_with(TASK_TOKEN_PREFIX) {
            // Task tokens only append messages to their own task (see `Caller`).
            return Err(ApiError::Unauthorized(
                "a task token only posts messages to its own task".into(),
            ));
        }
        if token.starts_with(STREAM_TOKEN_PREFIX) {
            return Err(ApiError::Unauthorized(
                "a stream token only reads its own task's events and messages".into(),
            ));
        }
        let user = super::auth::authenticate(st, token).await?;
        // limits.requests_per_second, counted per user (by id) once they are known.
        st.limits
            .request(&user.owner_key(), std::time::Instant::now())?;
        Ok(Auth(user))
    }
}

/// An admin caller; a user's token gets 403.
pub(super) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let Auth(u) = Auth::from_request_parts(parts, st).await?;
        if !u.is_admin {
            return Err(ApiError::Forbidden(
                "this route needs an admin token".into(),
            ));
        }
        Ok(Admin)
    }
}

/// A task id from the path: malformed is 400.
pub(super) struct TaskPath(pub(super) TaskId);

impl FromRequestParts<AppState> for TaskPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, st)
            .await
            .map_err(|_| ApiError::Invalid("bad task id in the path".into()))?;
        raw.parse::<TaskId>()
            .map(TaskPath)
            .map_err(ApiError::Invalid)
    }
}

/// A query string parsed into `T` (unknown parameters rejected by `T` itself).
pub(super) struct ApiQuery<T>(pub(super) T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _st: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<T>(q)
            .map(ApiQuery)
            .map_err(|e| ApiError::Invalid(format!("bad query string: {e}")))
    }
}

/// Who may append a message: a user, or a webhook receiver holding its attempt's task token.
pub(super) enum Caller {
    /// A user token.
    User(Auth),
    /// A task token: this task, the attempt the token names.
    Task(TaskId, TokenAttempt),
}

/// The token of `Authorization: Bearer <token>`; the scheme in any case (RFC 9110: schemes
/// are case-insensitive), one or more spaces before the token.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer <token>".into()))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty() && !t.contains(' '))
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be \"Bearer <token>\"".into()))
}

/// Who may read a task's events and messages: a user, the running attempt's task token, or a
/// stream token of that task (`POST /v1/tasks/{id}/stream_token`), which a browser's
/// `EventSource` (it cannot send headers) passes as `?access_token=`.
pub(super) enum Reader {
    /// A user token.
    User(Auth),
    /// A task token: this task, the attempt the token names.
    Task(TaskId, TokenAttempt),
    /// A stream token of this task.
    Stream(TaskId),
}

impl Reader {
    /// The owner this read counts against (`limits.requests_per_second`, stream slots): the
    /// user, or for a task's own tokens the task's owner, whose request rate is charged here (a
    /// user's was charged when the token was checked), so a stream or task token is no way
    /// around its owner's limits.
    ///
    /// # Errors
    /// `429` over the owner's rate; `404` or a database error reading the task.
    pub(super) async fn owner(&self, st: &AppState, id: TaskId) -> Result<String, ApiError> {
        match self {
            Reader::User(a) => Ok(a.0.owner_key()),
            _ => {
                let owner = st.store.task_get(id, None).await?.user_id;
                st.limits.request(&owner, std::time::Instant::now())?;
                Ok(owner)
            }
        }
    }

    /// The owner filter for reads of task `id`: a user's scope; none for a task's own token.
    ///
    /// # Errors
    /// `401` for a task or stream token of another task.
    pub(super) fn scope_for(&self, id: TaskId) -> Result<Option<String>, ApiError> {
        match self {
            Reader::User(a) => Ok(a.scope()),
            Reader::Task(t, _) | Reader::Stream(t) if *t == id => Ok(None),
            Reader::Task(..) => Err(ApiError::Unauthorized(
                "this task token belongs to another task".into(),
            )),
            Reader::Stream(_) => Err(ApiError::Unauthorized(
                "this stream token belongs to another task".into(),
            )),
        }
    }
}

/// `access_token` of the query string, if any.
fn query_token(parts: &Parts) -> Option<String> {
    let q = parts.uri.query()?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let token =
            match (
                parts
                    .headers
                    .contains_key(axum::http::header::AUTHORIZATION),
                query_token(parts),
            ) {
                (true, _) => bearer(parts)?.to_string(),
                (false, Some(t)) if !t.is_empty() => t,
                (false, _) => return Err(ApiError::Unauthorized(
                    "missing Authorization: Bearer <token> (or ?access_token= with a stream token)"
                        .into(),
                )),
            };
        if token.starts_with(STREAM_TOKEN_PREFIX) {
            return match st
                .store
                .stream_token_task(hash_token(&token), st.clock.now())
                .await?
            {
                Some(id) => Ok(Reader::Stream(id)),
                None => Err(ApiError::Unauthorized(
                    "unknown or expired stream token: ask for a new one".into(),
                )),
            };
        }
        if token.starts_with(TASK_TOKEN_PREFIX) {
            let (id, attempt) = task_token(st, &token).await?;
            return Ok(Reader::Task(id, attempt));
        }
        if !parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION)
        {
            // A user's long-lived token in a URL would end up in logs and histories.
            return Err(ApiError::Unauthorized(
                "access_token takes a stream token only (POST /v1/tasks/{id}/stream_token)".into(),
            ));
        }
        Ok(Reader::User(Auth::from_request_parts(parts, st).await?))
    }
}

/// The task and attempt a task token is good for now.
async fn task_token(st: &AppState, token: &str) -> Result<(TaskId, TokenAttempt), ApiError> {
    let token_hash = hash_token(token);
    let check = st
        .store
        .task_token_lookup(token_hash.clone(), st.clock.now())
        .await?;
    match check {
        TaskTokenCheck::Valid(id, attempt, started_at) => Ok((
            id,
            TokenAttempt {
                attempt,
                started_at,
                token_hash,
            },
        )),
        TaskTokenCheck::Expired => Err(ApiError::Unauthorized(
            "the lease of this task token's attempt has run out".into(),
        )),
        TaskTokenCheck::Unknown => Err(ApiError::Unauthorized(
            "unknown task token: its attempt has ended, or it was never issued".into(),
        )),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if token.starts_with(TASK_TOKEN_PREFIX) {
            let (id, attempt) = task_token(st, token).await?;
            return Ok(Caller::Task(id, attempt));
        }
        Ok(Caller::User(Auth::from_request_parts(parts, st).await?))
    }
}
