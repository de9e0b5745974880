//! Rules every store applies the same way inside its own transactions: who may get a token,
//! which appends a task takes, what a message past the cap becomes, whether an enqueue passes a
//! user's quota. Pure: a store reads what they need, asks them, and writes what they say.

use super::{
    ExistingUser, Limits, MessageCheck, Result, StoreError, TokenAttempt, TokenCreate, User,
    ADMIN_NAME,
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
        // The store checks the token itself (it is gone once its attempt ended).
        MessageCheck::Attempt(TokenAttempt { attempt: a, .. }) => {
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
        concurrency_key: t.concurrency_key,
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

/// What a checkpoint or an inbox read is fenced by: the attempt number, and the worker holding
/// the lease (a worker's own write) or the task token's hash (a token's write), whichever the
/// check names.
#[derive(Debug)]
pub(crate) struct Fence {
    pub attempt: u32,
    pub owner: Option<String>,
    pub token_hash: Option<String>,
}

/// The fence of a checkpoint or an inbox read under `check`.
///
/// # Errors
/// `Conflict` for a check that names no attempt.
pub(crate) fn attempt_fence(check: &MessageCheck) -> Result<Fence> {
    match check {
        MessageCheck::Attempt(a) => Ok(Fence {
            attempt: a.attempt,
            owner: None,
            token_hash: Some(a.token_hash.clone()),
        }),
        MessageCheck::Lease { owner, attempt } => Ok(Fence {
            attempt: *attempt,
            owner: Some(owner.clone()),
            token_hash: None,
        }),
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

/// A queue's token bucket at `now`: what was `stored` plus the tokens earned since, at most
/// `burst`; a bucket never stored starts full. A clock behind the stored time earns nothing and
/// keeps the later time, so processes with skewed clocks never mint tokens twice.
pub(crate) fn bucket_at(
    stored: Option<super::Bucket>,
    rate: &super::RateLimit,
    now: crate::clock::UnixMillis,
) -> super::Bucket {
    let burst = f64::from(rate.burst.max(1));
    match stored {
        None => super::Bucket {
            tokens: burst,
            updated_at: now,
        },
        Some(b) => {
            let elapsed = now.saturating_sub(b.updated_at).max(0) as f64;
            let earned = elapsed * f64::from(rate.count) / rate.period_ms.max(1) as f64;
            super::Bucket {
                tokens: (b.tokens.max(0.0) + earned).min(burst),
                updated_at: b.updated_at.max(now),
            }
        }
    }
}

/// How many tasks a limited queue may start now: the claim's `limit`, less what the queue's
/// `global_concurrency` has left (`running`: the queue's running tasks across all processes),
/// and at most the whole tokens in its bucket.
pub(crate) fn admission_room(
    limit: u32,
    adm: &super::Admission,
    running: u64,
    bucket: Option<&super::Bucket>,
) -> u32 {
    let mut room = u64::from(limit);
    if let Some(g) = adm.global_concurrency {
        room = room.min(u64::from(g).saturating_sub(running));
    }
    if let Some(b) = bucket {
        room = room.min(b.tokens.max(0.0).floor() as u64);
    }
    u32::try_from(room).unwrap_or(u32::MAX)
}

/// A runnable task a per-key claim may take: `rank` is its place among its key's runnable
/// tasks (1: the key's best; every task without a key is 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate<I> {
    /// The row (SQLite's rowid, PostgreSQL's id): the last tie-breaker.
    pub(crate) id: I,
    pub(crate) priority: i32,
    pub(crate) rank: u32,
    pub(crate) run_at: crate::clock::UnixMillis,
}

/// The candidates a per-key claim takes, best first, at most `room`: higher priority first,
/// then round robin by key (every key's first task before any key's second), then the oldest
/// `run_at`. A key with a thousand runnable tasks thus delays another key's one by no more than
/// one task.
pub(crate) fn admit<I: Ord>(mut c: Vec<Candidate<I>>, room: u32) -> Vec<I> {
    c.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.rank.cmp(&b.rank))
            .then(a.run_at.cmp(&b.run_at))
            .then(a.id.cmp(&b.id))
    });
    c.into_iter().take(room as usize).map(|c| c.id).collect()
}

#[cfg(test)]
mod admission_tests {
    use super::*;
    use crate::store::{Admission, Bucket, RateLimit};

    const R: RateLimit = RateLimit {
        count: 20,
        period_ms: 1000,
        burst: 5,
    };

    #[test]
    fn a_new_bucket_is_full_and_refills_at_the_rate_up_to_the_burst() {
        let b = bucket_at(None, &R, 1000);
        assert_eq!(b.tokens, 5.0);
        let empty = Bucket {
            tokens: 0.0,
            updated_at: 1000,
        };
        assert_eq!(bucket_at(Some(empty), &R, 1100).tokens, 2.0);
        assert_eq!(bucket_at(Some(empty), &R, 9000).tokens, 5.0);
        // A clock behind the stored one earns nothing and keeps the later time.
        let back = bucket_at(Some(empty), &R, 500);
        assert_eq!((back.tokens, back.updated_at), (0.0, 1000));
    }

    #[test]
    fn room_is_the_least_of_limit_global_room_and_whole_tokens() {
        let adm = Admission {
            global_concurrency: Some(3),
            ..Admission::default()
        };
        assert_eq!(admission_room(8, &adm, 1, None), 2);
        assert_eq!(admission_room(8, &adm, 5, None), 0);
        let b = Bucket {
            tokens: 1.9,
            updated_at: 0,
        };
        assert_eq!(admission_room(8, &Admission::default(), 0, Some(&b)), 1);
    }

    #[test]
    fn admission_takes_priority_then_round_robin_by_key_then_age() {
        let c = |id, priority, rank, run_at| Candidate {
            id,
            priority,
            rank,
            run_at,
        };
        // Key A's three tasks are older than key B's one, yet B goes second.
        let got = admit(
            vec![
                c(1, 0, 1, 10),
                c(2, 0, 2, 11),
                c(3, 0, 3, 12),
                c(4, 0, 1, 50),
                c(5, 5, 2, 99),
            ],
            4,
        );
        assert_eq!(got, vec![5, 1, 4, 2]);
    }
}
