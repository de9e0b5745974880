//! Server-sent events: a task's messages and status changes, resumable with `Last-Event-ID`,
//! and every status change of the caller's tasks.
//!
//! A task stream replays from the database after the cursor, then waits: an in-process event
//! wakes it at once, a poll tick finds rows of other processes. Each wake is one short read (no
//! transaction is held between polls: an open read would pin the WAL). The stream is pulled by
//! the client's socket, so a slow client slows only itself, and its memory stays one page (at
//! most about 1 MiB of content). Each stream takes one of its user's `limits.streams_per_user`
//! slots for as long as it is open.

use super::extract::{ApiQuery, Auth, Reader, TaskPath};
use super::feed::FeedItem;
#[allow(unused_imports)]
use super::openapi::ErrorBody;
use super::{ApiError, ApiResult, AppState};
use crate::store::{Change, ChangeParams};
use crate::task::{Author, Task, TaskStatus};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Messages read per database page (a page also stops at about 1 MiB of content).
const PAGE: u32 = 500;
/// Reconnect hint sent to clients.
const RETRY_HINT: Duration = Duration::from_secs(2);
/// Keep-alive comment interval.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct TaskEventsQuery {
    /// Start after this message id (`Last-Event-ID` wins).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Only messages of this author: `user` (the owner's) or `task`.
    #[param(value_type = Option<String>, pattern = "^(user|task)$")]
    author: Option<String>,
    /// A stream token (`POST /v1/tasks/{id}/stream_token`) instead of `Authorization`: a
    /// browser's `EventSource` cannot send headers.
    #[param(value_type = Option<String>)]
    #[allow(dead_code)]
    // read by the `Reader` extractor; named here so it is documented and allowed
    access_token: Option<String>,
}

/// Changes read per page when a stream replays from the database.
const REPLAY_PAGE: u32 = 500;

/// `Last-Event-ID`, if sent: a non-negative integer, `what` in the error.
fn last_event_id(headers: &HeaderMap, what: &str) -> ApiResult<Option<i64>> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| ApiError::Invalid(format!("Last-Event-ID must be {what}"))),
    }
}

/// A change as a `status` event whose id is its position; `user` is the task owner's name.
fn change_event(c: &Change, user: &str) -> Event {
    status_event("status", &c.task, user).id(c.seq.to_string())
}

fn status_event(name: &'static str, t: &Task, user: &str) -> Event {
    Event::default()
        .event(name)
        .data(t.to_json_for(user).to_string())
}

fn signature(t: &Task) -> (TaskStatus, u32, bool) {
    (t.status, t.attempts, t.cancel_requested)
}

/// Server-sent events of one task: `status`, `message` (with `id:`), then `end`.
/// Resumes after `Last-Event-ID` (wins) or `?after=`.
#[utoipa::path(get, path = "/v1/tasks/{id}/events", tag = "events",
    params(("id" = String, Path, description = "task id (UUID)"), ("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]+$", description = "last message id seen (wins over `after`)"), TaskEventsQuery),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream", body = String), (status = 404, description = "no such task of yours", body = ErrorBody), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn task_events(
    State(st): State<AppState>,
    reader: Reader,
    TaskPath(id): TaskPath,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<TaskEventsQuery>,
) -> ApiResult<Response> {
    let after = match (last_event_id(&headers, "a message id")?, q.after) {
        (Some(h), _) => h,
        (None, Some(a)) if a >= 0 => a,
        (None, Some(_)) => return Err(ApiError::Invalid("after must be 0 or more".into())),
        (None, None) => 0,
    };
    let scope = reader.scope_for(id)?;
    let owner = reader.owner(&st, id).await?;
    let author = super::tasks::author_param(q.author.as_deref())?;
    // Watch before the first read so nothing committed in between is missed.
    let watch = st.store.hub().watch(id);
    let first = st.store.task_get(id, scope.clone()).await?;
    // The owner of one task does not change: its name is read once (and not at all when the
    // owner is the one reading).
    let viewer = match &reader {
        Reader::User(auth) => Some(&auth.0),
        Reader::Task(..) | Reader::Stream(_) => None,
    };
    let user = st.names.name(&*st.store, viewer, &first.user_id).await;
    // Held by the stream: freed when it ends, the client goes away, or the server stops. A
    // task's own tokens count against its owner.
    let slot = st.limits.stream_slot(&owner)?;
    let poll = Duration::from_millis(st.cfg.worker.poll_interval_ms);
    // The running attempt reading its own task's stream reads its inbox: as with a long poll,
    // a checkpoint or a wait of it takes in the owner's messages it was sent.
    let attempt = match &reader {
        Reader::Task(_, attempt) => Some(attempt.clone()),
        Reader::User(_) | Reader::Stream(_) => None,
    };

    let stream = async_stream::stream! {
        let _slot = slot;
        let mut cursor = after;
        let mut last = signature(&first);
        yield Ok::<Event, Infallible>(status_event("status", &first, &user).retry(RETRY_HINT));
        loop {
            let (task, msgs) = match st.store.task_with_messages(id, scope.clone(), cursor, PAGE, author).await {
                Ok(v) => v,
                // Gone (pruned) or the database is unavailable: close; the client resumes.
                Err(_) => break,
            };
            // A task token's stream ends with its attempt: a later attempt has the same number
            // after a wait, but not the same start. (The read recorded below is fenced by the
            // token itself.)
            if attempt.as_ref().is_some_and(|a| {
                task.status != TaskStatus::Running
                    || task.attempts != a.attempt
                    || task.started_at != Some(a.started_at)
            }) {
                break;
            }
            // A page cut by count or by bytes may have more behind it: read again at once.
            let more = !msgs.is_empty();
            let upto = msgs.iter().filter(|m| m.author == Author::User).map(|m| m.id).max();
            if let (Some(attempt), Some(upto)) = (&attempt, upto) {
                let fence = crate::store::MessageCheck::Attempt(attempt.clone());
                match st.store.inbox_read(id, fence, upto, st.clock.now()).await {
                    Ok(true) => {}
                    // Its attempt has ended (after a wait, the next one runs with its number).
                    Ok(false) => break,
                    // Not recorded, so not sent: close; the client resumes from its last id.
                    Err(_) => break,
                }
            }
            for m in msgs {
                cursor = m.id;
                yield Ok(Event::default().event("message").id(m.id.to_string()).data(m.to_json().to_string()));
            }
            if signature(&task) != last {
                last = signature(&task);
                yield Ok(status_event("status", &task, &user));
            }
            if more {
                continue;
            }
            if task.status.is_terminal() {
                yield Ok(status_event("end", &task, &user));
                break;
            }
            tokio::select! {
                _ = watch.changed() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = st.shutdown.cancelled() => break,
            }
        }
    };
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AllEventsQuery {
    /// Only tasks of this queue.
    #[param(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    queue: Option<String>,
    /// Start after this change id (`Last-Event-ID` wins).
    #[param(minimum = 0)]
    after: Option<i64>,
}

/// Server-sent `status` events for every change of the caller's tasks, made by any process on
/// the database, each with its change position as `id:`. Resumes after `Last-Event-ID` (or
/// `?after=`): the changes since are replayed from the database first; a position older than
/// the kept changes gets a `lagged` event first (re-read the list).
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]+$", description = "last change id seen (wins over `after`)"), AllEventsQuery),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream", body = String), (status = 400, description = "invalid request", body = ErrorBody), (status = 401, description = "missing or unknown token", body = ErrorBody), (status = 503, description = "database unavailable; nothing written", body = ErrorBody)))]
pub(super) async fn all_events(
    State(st): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<AllEventsQuery>,
) -> ApiResult<Response> {
    if let Some(qn) = &q.queue {
        if !crate::task::valid_name(qn) {
            return Err(ApiError::Invalid(
                "queue must be 1 to 128 characters of [A-Za-z0-9._:-]".into(),
            ));
        }
    }
    let resume = match (last_event_id(&headers, "a change id")?, q.after) {
        (Some(h), _) => Some(h),
        (None, Some(a)) if a >= 0 => Some(a),
        (None, Some(_)) => return Err(ApiError::Invalid("after must be 0 or more".into())),
        (None, None) => None,
    };
    let scope = auth.scope();
    let slot = st.limits.stream_slot(&auth.0.owner_key())?;
    let viewer = auth.0.clone();
    let mut sub = st.feed.subscribe().await?;
    let stream = async_stream::stream! {
        let _slot = slot;
        // The last position sent (or skipped as not the caller's): nothing at or before it
        // is sent again, whichever way it arrives. A position past the log's end is not one of
        // this database's (a restore from backup rewound it): start from now, and say so.
        let mut sent = resume.unwrap_or(sub.head);
        let foreign = sent > sub.newest;
        if foreign {
            sent = sub.head;
        }
        // The first block carries the position: a client that reconnects before any event
        // still resumes from here.
        yield Ok::<Event, Infallible>(Event::default().comment("subscribed").id(sent.to_string()).retry(RETRY_HINT));
        if foreign {
            yield Ok(Event::default().event("lagged").data("Last-Event-ID is past this database's changes; re-read the list"));
        }
        // Read from the database up to `upto` (the feed has everything after it).
        let mut upto = if resume.is_some() && !foreign { Some(sub.head) } else { None };
        'stream: loop {
            if let Some(end) = upto.take() {
                while sent < end {
                    let page = match st.store.changes(ChangeParams {
                        after: sent,
                        user_id: scope.clone(),
                        queue: q.queue.clone(),
                        limit: REPLAY_PAGE,
                    }).await {
                        Ok(p) => p,
                        // The database is unavailable: close; the client resumes.
                        Err(_) => break 'stream,
                    };
                    if page.gap {
                        yield Ok(Event::default().event("lagged").data("changes were pruned; re-read the list"));
                    }
                    for c in &page.changes {
                        let user = st.names.name(&*st.store, Some(&viewer), &c.task.user_id).await;
                        yield Ok(change_event(c, &user));
                    }
                    if page.next <= sent {
                        break;
                    }
                    sent = page.next;
                }
            }
            tokio::select! {
                ev = sub.rx.recv() => match ev {
                    // The log stays unreadable: end, so the client reconnects.
                    Ok(FeedItem::Failed) => break,
                    Ok(FeedItem::Change(c)) => {
                        if c.seq <= sent {
                            continue;
                        }
                        sent = c.seq;
                        let mine = scope.as_deref().is_none_or(|u| u == c.task.user_id);
                        let queue_ok = q.queue.as_deref().is_none_or(|qn| qn == c.task.queue);
                        if mine && queue_ok {
                            let user = st.names.name(&*st.store, Some(&viewer), &c.task.user_id).await;
                            yield Ok(change_event(&c, &user));
                        }
                    }
                    // Fell behind the feed: read what was missed from the database.
                    Err(RecvError::Lagged(_)) => {
                        sub.rx = sub.rx.resubscribe();
                        upto = Some(st.feed.head().unwrap_or(sent));
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = st.shutdown.cancelled() => break,
            }
        }
    };
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}
