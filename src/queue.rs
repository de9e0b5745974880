//! The task state machine: what the end of an attempt leads to. Pure: no SQL, no clock, no
//! randomness of its own, so every transition is testable on its own.
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
use crate::task::TaskStatus;
use serde_json::Value;
use std::time::Duration;

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
}

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
}
