//! Time as the queue sees it: milliseconds since the Unix epoch, read through a [`Clock`] so tests
//! can drive lease expiry and backoff without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the unit of every `*_at` column.
pub type UnixMillis = i64;

/// A source of the current time. The store never reads the clock itself: callers pass `now`.
pub trait Clock: Send + Sync + 'static {
    /// The current time in milliseconds since the epoch.
    fn now(&self) -> UnixMillis;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to, for tests of leases and backoff.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: UnixMillis) -> Self {
        Self(AtomicI64::new(start))
    }

    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: UnixMillis) {
        self.0.store(t, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        self.0.load(Ordering::SeqCst)
    }
}

/// Formats `ms` as RFC 3339 in UTC with millisecond precision, as the API shows times.
pub fn rfc3339(ms: UnixMillis) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses an RFC 3339 UTC time (`2026-11-21T22:30:04.123Z`) into milliseconds.
///
/// # Errors
/// A message naming what is wrong when the text is not such a time.
pub fn parse_rfc3339(s: &str) -> Result<UnixMillis, String> {
    let t =
        humantime::parse_rfc3339_weak(s).map_err(|e| format!("not an RFC 3339 UTC time ({e})"))?;
    if !s.ends_with('Z') && !s.ends_with('z') {
        return Err("times must be in UTC, ending in Z".into());
    }
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "time is before 1970".to_string())?;
    i64::try_from(d.as_millis()).map_err(|_| "time is out of range".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_milliseconds() {
        let ms = 1_795_300_204_123;
        let s = rfc3339(ms);
        assert!(s.ends_with('Z'), "{s}");
        assert_eq!(parse_rfc3339(&s), Ok(ms));
    }

    #[test]
    fn parse_rejects_offsets_and_garbage() {
        assert!(parse_rfc3339("2026-11-21T22:30:04+02:00").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
