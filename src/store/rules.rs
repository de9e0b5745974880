//! Rules every store applies the same way inside its own transactions: who may get a token,
//! which appends a task takes, what a message past the cap becomes, whether an enqueue passes a
//! user's quota. Pure: a store reads what they need, asks them, and writes what they say.

use super::{
    ExistingUser, Limits, MessageCheck, Result, StoreError, TokenCreate, User, ADMIN_NAME,
};
use crate::task::{Author, NewTask, Task, TaskStatus};
use serde_json::Value;

/// Whom a new token goes to: `Some` an existing user, `None` a new user (named `p.name`, admin
/// as `p.admin`) that the store makes.
///
/// # Errors
/// `Conflict` naming why: the user exists (and `--existing` was not given), does not exist,
/// is not the kind of user asked for, or the name is the admin's.
pub(crate) fn token_owner(found: Option<User>, p: &TokenCreate) -> Result<Option<User>> {
    match (found, p.existing) {
        (Some(_), ExistingUser::Refuse) => Err(StoreError::Conflict(format!(
            "user {:?} already exists: pass --existing to add a token to it",
            p.name
        ))),
        (None, ExistingUser::AddToken) => Err(StoreError::Conflict(format!(
            "there is no user {:?} to add a token to (leave out --existing to create it)",
            p.name
        ))),
        (Some(u), ExistingUser::AddToken) if u.is_admin != p.admin => {
            Err(StoreError::Conflict(if u.is_admin {
                format!(
                    "user {:?} is an admin: pass --admin to add a token to it",
                    p.name
                )
            } else {
                format!(
                    "user {:?} is not an admin; admin belongs to a user, not a token",
                    p.name
                )
            }))
        }
        (Some(u), ExistingUser::AddToken) => Ok(Some(u)),
        (None, ExistingUser::Refuse) if p.name == ADMIN_NAME && !p.admin => {
            Err(StoreError::Conflict(format!(
                "the name {ADMIN_NAME:?} is reserved for an admin user"
            )))
        }
        (None, ExistingUser::Refuse) => Ok(None),
    }
}

/// Whether `t` takes a message under `check` (the task was found, and scoped to the user for
/// [`MessageCheck::User`]). [`MessageCheck::Worker`] checks nothing more.
///
/// # Errors
/// `Conflict`: the attempt ended or lost its lease, or the task is terminal.
pub(crate) fn message_allowed(t: &Task, check: &MessageCheck) -> Result<()> {
    let id = t.id;
    match check {
        MessageCheck::Worker => return Ok(()),
        MessageCheck::User(_) => {}
        MessageCheck::Attempt(a) => {
            if t.status != TaskStatus::Running || t.attempts != *a {
                return Err(StoreError::Conflict(format!(
                    "attempt {a} of task {id} has ended"
                )));
            }
        }
        MessageCheck::Lease { owner, attempt } => {
            if t.status != TaskStatus::Running
                || t.attempts != *attempt
                || t.lease_owner.as_deref() != Some(owner.as_str())
            {
                return Err(StoreError::Conflict(format!(
                    "attempt {attempt} of task {id} no longer holds its lease"
                )));
            }
        }
    }
    if t.status.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "task {id} is {} and takes no more messages",
            t.status
        )));
    }
    Ok(())
}

/// What becomes of a message appended to a task that holds `count` already, under the
/// `messages_per_task` cap: stored as asked, the one `truncated` message in its place, or
/// (`None`) dropped.
///
/// # Errors
/// `LimitReached` for a user's message past the cap (the task's own go on).
pub(crate) fn capped_message(
    count: u64,
    cap: u64,
    check: &MessageCheck,
    kind: String,
    content: Value,
) -> Result<Option<(String, Value)>> {
    if count < cap {
        Ok(Some((kind, content)))
    } else if matches!(check, MessageCheck::User(_)) {
        Err(StoreError::LimitReached {
            what: "messages per task",
            limit: cap,
        })
    } else if count == cap {
        Ok(Some((
            "truncated".to_string(),
            serde_json::json!({
                "limit": cap,
                "message": format!("the task reached its limit of {cap} messages; later ones are dropped"),
            }),
        )))
    } else {
        Ok(None)
    }
}

/// Whether quotas are on at all (else nothing need be read).
pub(crate) fn quotas_on(limits: &Limits) -> bool {
    limits.pending_tasks_per_user != u64::MAX || limits.payload_bytes_per_user != u64::MAX
}

/// New rows (with their payload text) summed per user: (user, tasks, payload bytes), in user
/// order, so stores that lock usage rows lock them in one order.
pub(crate) fn usage_adds(waiting: &[(NewTask, String)]) -> Vec<(&str, u64, u64)> {
    // Usually one user per call; a few at most.
    let mut adds: Vec<(&str, u64, u64)> = Vec::new();
    for (t, payload) in waiting {
        match adds.iter_mut().find(|(u, _, _)| *u == t.user_id) {
            Some(a) => {
                a.1 += 1;
                a.2 += payload.len() as u64;
            }
            None => adds.push((&t.user_id, 1, payload.len() as u64)),
        }
    }
    adds.sort_by(|a, b| a.0.cmp(b.0));
    adds
}

/// Refuses adding `tasks` unfinished tasks and `bytes` of payload to a user whose usage is
/// `unfinished` tasks and `stored` bytes, when that would pass a quota.
///
/// # Errors
/// `LimitReached` naming the quota.
pub(crate) fn check_usage(
    unfinished: i64,
    stored: i64,
    tasks: u64,
    bytes: u64,
    limits: &Limits,
) -> Result<()> {
    if (unfinished.max(0) as u64).saturating_add(tasks) > limits.pending_tasks_per_user {
        return Err(StoreError::LimitReached {
            what: "pending tasks per user",
            limit: limits.pending_tasks_per_user,
        });
    }
    if (stored.max(0) as u64).saturating_add(bytes) > limits.payload_bytes_per_user {
        return Err(StoreError::LimitReached {
            what: "payload bytes per user",
            limit: limits.payload_bytes_per_user,
        });
    }
    Ok(())
}

/// The task a new row is, as inserted at `now`: built, not read back.
pub(crate) fn inserted_task(t: NewTask, now: crate::clock::UnixMillis) -> Task {
    Task {
        id: t.id,
        user_id: t.user_id,
        queue: t.queue,
        kind: t.kind,
        status: TaskStatus::Pending,
        priority: t.priority,
        payload: t.payload,
        result: None,
        attempts: 0,
        max_attempts: t.max_attempts,
        last_error: None,
        idempotency_key: t.idempotency_key,
        run_at: t.run_at,
        timeout_ms: t.timeout_ms,
        cancel_requested: false,
        lease_owner: None,
        lease_expires_at: None,
        created_at: now,
        started_at: None,
        completed_at: None,
        updated_at: now,
        checkpoint: None,
        wait_until: None,
        wake_reason: None,
        inbox_cursor: 0,
    }
}

/// Who a message appended under `check` is by: the owner (or an admin) through the API, or
/// the task itself.
pub(crate) fn author(check: &MessageCheck) -> Author {
    match check {
        MessageCheck::User(_) => Author::User,
        _ => Author::Task,
    }
}

/// The attempt (and the worker, if one is named) a checkpoint or an inbox read is fenced by.
///
/// # Errors
/// `Conflict` for a check that names no attempt.
pub(crate) fn attempt_fence(check: &MessageCheck) -> Result<(u32, Option<String>)> {
    match check {
        MessageCheck::Attempt(a) => Ok((*a, None)),
        MessageCheck::Lease { owner, attempt } => Ok((*attempt, Some(owner.clone()))),
        _ => Err(StoreError::Conflict(
            "only the running attempt saves a checkpoint or reads its inbox".into(),
        )),
    }
}

/// Claimed tasks in the order they are served: priority, then `run_at`, then id (a claim's
/// `RETURNING` does not keep its subquery's order).
pub(crate) fn sort_claimed(claimed: &mut [std::sync::Arc<Task>]) {
    claimed.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.run_at.cmp(&b.run_at))
            .then(a.id.cmp(&b.id))
    });
}
