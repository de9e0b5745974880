//! The task state machine: every transition of a task, and the one validation of a new task.
//! Pure: no SQL, no clock, no randomness of its own, so every transition is testable on its own.
//! A store applies these rules; where it applies one set-wise in its own language (SQL for many
//! rows at once), the conformance suite checks that it agrees with the function here.
//!
//! | transition | rule here | applied by |
//! |---|---|---|
//! | enqueue | [`new_task`] (via [`settle`]) | HTTP, the CLI, the embedded API; stores insert as given |
//! | claim | pending, `run_at` due, queue not paused: best priority, then oldest `run_at` | `Store::task_claim` |
//! | end of an attempt | [`decide`], then [`finish_status`] | worker, then `Store::task_finish` |
//! | cancel | [`cancel`] | `Store::task_cancel` |
//! | retry route | [`retry`] | `Store::task_retry` |
//! | lost lease | [`rescue`] | `Store::task_claim` with `rescue` |
//!
//! ```text
//!            enqueue                claim                 ok
//!   (new) ───────────▶ pending ─────────────▶ running ─────────▶ completed
//!                       ▲   │                  │ │ │
//!        retry (backoff)│   │ cancel           │ │ └─ error, attempts left ─▶ pending (run_at later)
//!                       │   ▼                  │ └─── error, none left / permanent ─▶ failed
//!                       │ canceled ◀── cancel ─┘      lease lost ─▶ rescued by the next claim
//!                       └── retry route (failed | canceled) ──┘
//! ```

use crate::backoff::{retry_delay, RetryPolicy};
use crate::clock::UnixMillis;
use crate::task::{valid_name, NewTask, TaskId, TaskStatus};
use serde_json::Value;
use std::time::Duration;

/// The latest time a task may be planned for: the end of year 9999, the last a task's times
/// can be written in RFC 3339 (a representational bound, not a policy: API.md sets none).
pub const MAX_RUN_AT: UnixMillis = 253_402_300_799_999;

/// What the operator decides for a kind's tasks at enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnqueueRules {
    /// `max_attempts` when the task names none.
    pub default_max_attempts: u32,
    /// The kind's own `max_attempts`, a ceiling: a task may ask for fewer, never more.
    pub max_attempts_cap: Option<u32>,
    /// `timeout_ms` when the task names none.
    pub default_timeout_ms: u64,
    /// The kind's own `timeout_ms`, a ceiling.
    pub timeout_cap: Option<u64>,
}

/// What a task asked for at enqueue (already parsed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    /// Attempts asked for.
    pub max_attempts: Option<i64>,
    /// Attempt timeout asked for.
    pub timeout_ms: Option<i64>,
    /// An absolute start time.
    pub run_at: Option<UnixMillis>,
    /// A start time relative to now.
    pub delay_ms: Option<i64>,
}

/// The settings a new task gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Attempt timeout.
    pub timeout_ms: u64,
    /// First claimable time.
    pub run_at: UnixMillis,
}

/// Settles a new task's attempts, timeout and start time: the one enqueue rule every entry
/// point (HTTP, batch, the embedded API, the CLI) uses. The kind's configured values are
/// ceilings (the operator's limits win); a start time in the past means now.
///
/// # Errors
/// A message naming the field that is out of range.
pub fn settle(rules: &EnqueueRules, asked: Asked, now: UnixMillis) -> Result<Settled, String> {
    let max_attempts = match asked.max_attempts {
        None => i64::from(rules.default_max_attempts),
        Some(n) if (1..=100).contains(&n) => n,
        Some(_) => return Err("max_attempts must be between 1 and 100".into()),
    };
    let max_attempts = match rules.max_attempts_cap {
        Some(cap) => max_attempts.min(i64::from(cap)),
        None => max_attempts,
    };
    let timeout_ms = match asked.timeout_ms {
        None => i64::try_from(rules.default_timeout_ms).unwrap_or(i64::MAX),
        Some(n) if (1..=MAX_TIMEOUT_MS).contains(&n) => n,
        Some(_) => return Err(format!("timeout_ms must be between 1 and {MAX_TIMEOUT_MS}")),
    };
    let timeout_ms = match rules.timeout_cap {
        Some(cap) => timeout_ms.min(i64::try_from(cap).unwrap_or(i64::MAX)),
        None => timeout_ms,
    };
    let run_at = match (asked.run_at, asked.delay_ms) {
        (Some(_), Some(_)) => return Err("give run_at or delay_ms, not both".into()),
        (Some(at), None) if at > MAX_RUN_AT => {
            return Err("run_at must be before the year 10000".into())
        }
        (Some(at), None) => at.max(now),
        (None, Some(d)) if d < 0 => return Err("delay_ms must not be negative".into()),
        (None, Some(d)) => match now.checked_add(d) {
            Some(at) if at <= MAX_RUN_AT => at,
            _ => return Err("delay_ms reaches past the year 9999".into()),
        },
        (None, None) => now,
    };
    Ok(Settled {
        max_attempts: u32::try_from(max_attempts.max(1)).unwrap_or(1),
        timeout_ms: u64::try_from(timeout_ms.max(1)).unwrap_or(1),
        run_at,
    })
}

/// A new task as a caller asks for it, before validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewTaskRequest {
    /// Its kind.
    pub kind: String,
    /// Its queue (`default` when none).
    pub queue: Option<String>,
    /// Its input.
    pub payload: Value,
    /// -100..=100 (0 when none).
    pub priority: Option<i64>,
    /// Attempts, timeout and start time asked for.
    pub asked: Asked,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// A hash of the request, to tell a replay from a different request under the same key.
    pub request_hash: Option<String>,
    /// The admission key: tasks with one key share the queue's `per_key_concurrency`.
    pub concurrency_key: Option<String>,
}

/// The one validation of a new task, for every entry point: names, priority, the idempotency
/// key, and [`settle`] for attempts, timeout and start time. `id` and `owner` are the caller's.
///
/// # Errors
/// A message naming the field that is wrong; nothing is to be written then.
pub fn new_task(
    rules: &EnqueueRules,
    req: NewTaskRequest,
    id: TaskId,
    owner: String,
    now: UnixMillis,
) -> Result<NewTask, String> {
    if !valid_name(&req.kind) {
        return Err("kind must be 1 to 128 characters of [A-Za-z0-9._:-]".into());
    }
    let queue = req.queue.unwrap_or_else(|| "default".into());
    if !valid_name(&queue) {
        return Err("queue must be 1 to 128 characters of [A-Za-z0-9._:-]".into());
    }
    let priority = req.priority.unwrap_or(0);
    if !(-100..=100).contains(&priority) {
        return Err("priority must be between -100 and 100".into());
    }
    if let Some(k) = &req.idempotency_key {
        if k.is_empty() || k.chars().count() > 255 || k.chars().any(char::is_control) {
            return Err(
                "idempotency_key must be 1 to 255 characters with no control characters".into(),
            );
        }
    }
    if let Some(k) = &req.concurrency_key {
        if k.is_empty() || k.chars().count() > 255 || k.chars().any(char::is_control) {
            return Err(
                "concurrency_key must be 1 to 255 characters with no control characters".into(),
            );
        }
    }
    let settled = settle(rules, req.asked, now)?;
    Ok(NewTask {
        id,
        user_id: owner,
        queue,
        kind: req.kind,
        payload: req.payload,
        priority: priority as i32,
        run_at: settled.run_at,
        max_attempts: settled.max_attempts,
        timeout_ms: settled.timeout_ms,
        idempotency_key: req.idempotency_key,
        request_hash: req.request_hash,
        concurrency_key: req.concurrency_key,
    })
}

/// What a cancel does to a task in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAction {
    /// No worker holds it: it ends `canceled` at once.
    EndNow,
    /// A worker runs it: `cancel_requested` is set and the worker ends it `canceled`.
    AskWorker,
}

/// The cancel rule.
///
/// # Errors
/// A terminal task cannot be canceled (the message says why).
pub fn cancel(id: TaskId, status: TaskStatus) -> Result<CancelAction, String> {
    match status {
        TaskStatus::Pending | TaskStatus::Waiting => Ok(CancelAction::EndNow),
        TaskStatus::Running => Ok(CancelAction::AskWorker),
        s => Err(format!("task {id} is already {s} and cannot be canceled")),
    }
}

/// The retry route's rule: only a failed or canceled task runs again, from a clean count
/// (attempts 0, runnable now, no cancel request, no result).
///
/// # Errors
/// Any other status (the message says why).
pub fn retry(id: TaskId, status: TaskStatus) -> Result<(), String> {
    match status {
        TaskStatus::Failed | TaskStatus::Canceled => Ok(()),
        s => Err(format!(
            "task {id} is {s} and only failed or canceled tasks can be retried"
        )),
    }
}

/// What becomes of a running task whose lease expired (its worker is gone). A lost lease
/// counts as a failed attempt; the error recorded is [`LOST_LEASE_ERROR`].
pub fn rescue(cancel_requested: bool, attempts: u32, max_attempts: u32) -> TaskStatus {
    if cancel_requested {
        TaskStatus::Canceled
    } else if attempts >= max_attempts {
        TaskStatus::Failed
    } else {
        // Runnable again at once: the time went by already.
        TaskStatus::Pending
    }
}

/// The error a rescued task records.
pub const LOST_LEASE_ERROR: &str = "lease expired: worker lost";

/// The status an attempt's end writes: what [`decide`] chose, except that a task whose cancel
/// was asked for never goes back to pending (it ends canceled). Applied by the store at the
/// write, against the cancel request as it is then.
pub fn finish_status(decided: TaskStatus, cancel_requested: bool) -> TaskStatus {
    if cancel_requested && matches!(decided, TaskStatus::Pending | TaskStatus::Waiting) {
        TaskStatus::Canceled
    } else {
        decided
    }
}

/// Longest `timeout_ms` a task may ask for: one week.
pub const MAX_TIMEOUT_MS: i64 = 7 * 24 * 3600 * 1000;

/// How an attempt ended, as the worker saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler returned a result.
    Completed(Value),
    /// The handler failed.
    Failed {
        /// What went wrong.
        error: String,
        /// No retry will help.
        permanent: bool,
        /// The handler asked for this delay instead of the backoff (a webhook's Retry-After).
        retry_after: Option<Duration>,
    },
    /// The attempt ran past its timeout and was stopped.
    TimedOut(Duration),
    /// A cancel was asked for and the attempt was stopped.
    Canceled,
    /// The attempt parked the task until its owner writes to it, or `timeout` passes (capped
    /// at [`MAX_WAIT_MS`]). Not a failure: no attempt is spent.
    Wait {
        /// How long to wait at most.
        timeout: Duration,
    },
}

/// Longest wait an attempt may ask for: 30 days.
pub const MAX_WAIT_MS: u64 = 30 * 24 * 3600 * 1000;

/// The write that ends the attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The new status.
    pub status: TaskStatus,
    /// The result (completed).
    pub result: Option<Value>,
    /// The error to record.
    pub error: Option<String>,
    /// When the task may run again (a retry).
    pub run_at: Option<UnixMillis>,
}

/// Decides what the end of attempt number `attempt` leads to. `jitter ∈ [0, 1)` comes from the
/// caller. A `Retry-After` replaces the backoff delay, capped at the policy's maximum.
pub fn decide(
    outcome: Outcome,
    attempt: u32,
    max_attempts: u32,
    policy: &RetryPolicy,
    jitter: f64,
    now: UnixMillis,
) -> Transition {
    let (error, permanent, retry_after) = match outcome {
        Outcome::Completed(v) => {
            return Transition {
                status: TaskStatus::Completed,
                result: Some(v),
                error: None,
                run_at: None,
            }
        }
        Outcome::Canceled => {
            return Transition {
                status: TaskStatus::Canceled,
                result: None,
                error: Some("canceled while running".into()),
                run_at: None,
            }
        }
        Outcome::Wait { timeout } => {
            let ms = (timeout.as_millis() as u64).min(MAX_WAIT_MS);
            return Transition {
                status: TaskStatus::Waiting,
                result: None,
                error: None,
                run_at: Some(now.saturating_add(ms as i64)),
            };
        }
        Outcome::TimedOut(d) => (format!("timed out after {} ms", d.as_millis()), false, None),
        Outcome::Failed {
            error,
            permanent,
            retry_after,
        } => (error, permanent, retry_after),
    };
    if permanent || attempt >= max_attempts {
        let error = if permanent {
            error
        } else {
            format!("{error} (attempt {attempt} of {max_attempts}, giving up)")
        };
        return Transition {
            status: TaskStatus::Failed,
            result: None,
            error: Some(error),
            run_at: None,
        };
    }
    let delay = match retry_after {
        Some(d) => d.min(Duration::from_millis(policy.max_ms)),
        None => retry_delay(policy, attempt, jitter),
    };
    Transition {
        status: TaskStatus::Pending,
        result: None,
        error: Some(error),
        run_at: Some(now.saturating_add(delay.as_millis() as i64)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn p() -> RetryPolicy {
        RetryPolicy {
            base_ms: 1000,
            max_ms: 60_000,
            max_attempts: 3,
        }
    }

    #[test]
    fn success_completes_with_result() {
        let t = decide(Outcome::Completed(Value::from(7)), 1, 3, &p(), 0.0, 0);
        assert_eq!(t.status, TaskStatus::Completed);
        assert_eq!(t.result, Some(Value::from(7)));
    }

    #[test]
    fn failure_with_attempts_left_retries_after_backoff() {
        let f = Outcome::Failed {
            error: "boom".into(),
            permanent: false,
            retry_after: None,
        };
        let t = decide(f, 2, 3, &p(), 0.0, 10_000);
        assert_eq!(t.status, TaskStatus::Pending);
        assert_eq!(t.run_at, Some(10_000 + 1000)); // 2000 * 0.5
    }

    #[test]
    fn last_attempt_failure_is_final() {
        let f = Outcome::Failed {
            error: "boom".into(),
            permanent: false,
            retry_after: None,
        };
        let t = decide(f, 3, 3, &p(), 0.0, 0);
        assert_eq!(t.status, TaskStatus::Failed);
        assert!(t.error.unwrap().contains("giving up"));
    }

    #[test]
    fn permanent_error_fails_at_once() {
        let f = Outcome::Failed {
            error: "bad input".into(),
            permanent: true,
            retry_after: None,
        };
        let t = decide(f, 1, 3, &p(), 0.0, 0);
        assert_eq!(t.status, TaskStatus::Failed);
        assert_eq!(t.error.as_deref(), Some("bad input"));
    }

    #[test]
    fn retry_after_replaces_backoff_but_is_capped() {
        let f = |s| Outcome::Failed {
            error: "429".into(),
            permanent: false,
            retry_after: Some(Duration::from_secs(s)),
        };
        assert_eq!(decide(f(7), 1, 3, &p(), 0.0, 0).run_at, Some(7000));
        assert_eq!(decide(f(3600), 1, 3, &p(), 0.0, 0).run_at, Some(60_000));
    }

    #[test]
    fn timeout_counts_as_a_retryable_failure() {
        let t = decide(
            Outcome::TimedOut(Duration::from_millis(50)),
            1,
            3,
            &p(),
            0.0,
            0,
        );
        assert_eq!(t.status, TaskStatus::Pending);
        assert!(t.error.unwrap().contains("timed out after 50 ms"));
    }

    #[test]
    fn cancel_ends_canceled() {
        assert_eq!(
            decide(Outcome::Canceled, 1, 3, &p(), 0.0, 0).status,
            TaskStatus::Canceled
        );
    }

    const RULES: EnqueueRules = EnqueueRules {
        default_max_attempts: 3,
        max_attempts_cap: Some(3),
        default_timeout_ms: 60_000,
        timeout_cap: Some(60_000),
    };

    #[test]
    fn the_kinds_values_are_ceilings_for_a_task() {
        let asked = Asked {
            max_attempts: Some(100),
            timeout_ms: Some(7 * 24 * 3600 * 1000),
            ..Asked::default()
        };
        let s = settle(&RULES, asked, 1_000).unwrap();
        assert_eq!((s.max_attempts, s.timeout_ms), (3, 60_000));
        // Less is fine.
        let asked = Asked {
            max_attempts: Some(1),
            timeout_ms: Some(5),
            ..Asked::default()
        };
        let s = settle(&RULES, asked, 1_000).unwrap();
        assert_eq!((s.max_attempts, s.timeout_ms), (1, 5));
        // Without a kind's ceiling, the task's own values stand.
        let free = EnqueueRules {
            max_attempts_cap: None,
            timeout_cap: None,
            ..RULES
        };
        let asked = Asked {
            max_attempts: Some(100),
            timeout_ms: Some(3_600_000),
            ..Asked::default()
        };
        let s = settle(&free, asked, 1_000).unwrap();
        assert_eq!((s.max_attempts, s.timeout_ms), (100, 3_600_000));
    }

    #[test]
    fn a_start_in_the_past_means_now_and_the_future_has_no_bound() {
        let now = 1_795_300_204_123;
        let past = Asked {
            run_at: Some(0),
            ..Asked::default()
        };
        assert_eq!(settle(&RULES, past, now).unwrap().run_at, now);
        let before_1970 = Asked {
            run_at: Some(-5_000),
            ..Asked::default()
        };
        assert_eq!(settle(&RULES, before_1970, now).unwrap().run_at, now);
        let y2030 = Asked {
            run_at: Some(1_893_456_000_000),
            ..Asked::default()
        };
        assert_eq!(
            settle(&RULES, y2030, now).unwrap().run_at,
            1_893_456_000_000
        );
        let far = Asked {
            delay_ms: Some(i64::MAX),
            ..Asked::default()
        };
        assert!(settle(&RULES, far, now).is_err());
        let both = Asked {
            run_at: Some(now),
            delay_ms: Some(1),
            ..Asked::default()
        };
        assert!(settle(&RULES, both, now).is_err());
    }

    #[test]
    fn a_new_task_is_validated_once_for_every_entry_point() {
        let req = |f: &dyn Fn(&mut NewTaskRequest)| {
            let mut r = NewTaskRequest {
                kind: "echo".into(),
                ..Default::default()
            };
            f(&mut r);
            new_task(&RULES, r, TaskId::new(), "7".into(), 1_000)
        };
        let t = req(&|_| {}).unwrap();
        assert_eq!(
            (t.queue.as_str(), t.priority, t.run_at),
            ("default", 0, 1_000)
        );
        assert_eq!(t.user_id, "7");
        for (what, f, says) in [
            (
                "kind",
                &(|r: &mut NewTaskRequest| r.kind = "bad kind".into())
                    as &dyn Fn(&mut NewTaskRequest),
                "kind",
            ),
            (
                "queue",
                &|r: &mut NewTaskRequest| r.queue = Some(String::new()),
                "queue",
            ),
            (
                "priority",
                &|r: &mut NewTaskRequest| r.priority = Some(101),
                "priority",
            ),
            (
                "key",
                &|r: &mut NewTaskRequest| r.idempotency_key = Some("a\nb".into()),
                "idempotency_key",
            ),
            (
                "attempts 0",
                &|r: &mut NewTaskRequest| r.asked.max_attempts = Some(0),
                "max_attempts",
            ),
        ] {
            let e = req(f).unwrap_err();
            assert!(e.contains(says), "{what}: {e}");
        }
    }

    #[test]
    fn cancel_retry_rescue_and_finish_follow_the_state_machine() {
        let id = TaskId::new();
        assert_eq!(cancel(id, TaskStatus::Pending), Ok(CancelAction::EndNow));
        assert_eq!(cancel(id, TaskStatus::Running), Ok(CancelAction::AskWorker));
        for s in [
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Canceled,
        ] {
            assert!(cancel(id, s).unwrap_err().contains("cannot be canceled"));
        }
        assert!(retry(id, TaskStatus::Failed).is_ok() && retry(id, TaskStatus::Canceled).is_ok());
        for s in [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Completed,
        ] {
            assert!(retry(id, s).is_err());
        }
        assert_eq!(rescue(true, 1, 5), TaskStatus::Canceled);
        assert_eq!(rescue(false, 5, 5), TaskStatus::Failed);
        assert_eq!(rescue(false, 1, 5), TaskStatus::Pending);
        assert_eq!(
            finish_status(TaskStatus::Pending, true),
            TaskStatus::Canceled
        );
        assert_eq!(
            finish_status(TaskStatus::Completed, true),
            TaskStatus::Completed
        );
        assert_eq!(
            finish_status(TaskStatus::Pending, false),
            TaskStatus::Pending
        );
    }
}
