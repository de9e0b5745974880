//! The retry delay of a failed attempt: pure arithmetic, the randomness passed in.

use std::time::Duration;

/// How a kind retries: the base and cap of the exponential delay, and how many attempts it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt, before jitter.
    pub base_ms: u64,
    /// Upper bound of any delay, before jitter.
    pub max_ms: u64,
    /// Attempts a task gets before it is `failed`.
    pub max_attempts: u32,
}

/// Default `retry.base_ms`: one second.
pub const DEFAULT_RETRY_BASE_MS: u64 = 1_000;
/// Default `retry.max_ms`: five minutes.
pub const DEFAULT_RETRY_MAX_MS: u64 = 300_000;
/// Default `retry.max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_ms: DEFAULT_RETRY_BASE_MS,
            max_ms: DEFAULT_RETRY_MAX_MS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// The delay before the next try after failed attempt number `attempt` (1-based):
/// `min(max, base * 2^(attempt-1))`, times `0.5 + 0.5 * jitter` where `jitter ∈ [0, 1)`.
/// Arithmetic saturates, so a large attempt number gives the cap, never an overflow.
///
/// ```
/// use spool::backoff::{retry_delay, RetryPolicy};
/// use std::time::Duration;
/// let p = RetryPolicy { base_ms: 1000, max_ms: 300_000, max_attempts: 5 };
/// // jitter 0.999.. gives (almost) the full delay; 0 gives half of it
/// assert_eq!(retry_delay(&p, 1, 0.0), Duration::from_millis(500));
/// assert_eq!(retry_delay(&p, 3, 0.0), Duration::from_millis(2000));
/// assert_eq!(retry_delay(&p, 4, 0.5), Duration::from_millis(6000));
/// assert_eq!(retry_delay(&p, 60, 0.0), Duration::from_millis(150_000));
/// ```
pub fn retry_delay(p: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(63);
    let raw = p
        .base_ms
        .saturating_mul(1u64.checked_shl(exp).unwrap_or(u64::MAX));
    let capped = raw.min(p.max_ms);
    let j = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    Duration::from_millis((capped as f64 * (0.5 + 0.5 * j)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_then_caps() {
        let p = RetryPolicy {
            base_ms: 100,
            max_ms: 1000,
            max_attempts: 10,
        };
        let full: Vec<u64> = (1..=6)
            .map(|a| retry_delay(&p, a, 1.0).as_millis() as u64)
            .collect();
        assert_eq!(full, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let p = RetryPolicy::default();
        for a in 1..20 {
            let lo = retry_delay(&p, a, 0.0);
            let hi = retry_delay(&p, a, 1.0);
            assert_eq!(lo * 2, hi);
            assert!(hi <= Duration::from_millis(p.max_ms));
        }
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = RetryPolicy {
            base_ms: u64::MAX / 2,
            max_ms: u64::MAX,
            max_attempts: 100,
        };
        let d = retry_delay(&p, u32::MAX, 1.0);
        assert!(d.as_millis() > 0);
    }
}
