//! Time as the queue sees it: milliseconds since the Unix epoch, read through a [`Clock`] so tests
//! can drive lease expiry and backoff without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the unit of every `*_at` column.
pub type UnixMillis = i64;

/// A source of the current time. The store's statements never read the clock: callers pass
/// `now`, from the clock [`crate::store::Store::clock`] names.
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

/// Another machine's clock as this process reads it: the time of a reading, moved on since by
/// this host's boot clock (`CLOCK_BOOTTIME`: monotonic, and counting time suspended). On
/// PostgreSQL, processes on several hosts compare each other's times (a lease one worker set is
/// judged run out by another, a `run_at` one host wrote falls due by another's clock), so every
/// process reads the database's clock rather than its own: a host whose clock is off cannot
/// rescue tasks that are running, run delayed tasks early, or keep leases past their time. Read
/// again now and then ([`SyncedClock::adjust`]), it follows the drift between the two machines;
/// a step of this host's wall clock (NTP) does not move it.
#[derive(Debug)]
pub struct SyncedClock {
    /// The other clock's time when this host's boot clock read zero, in microseconds.
    at_zero: AtomicI64,
}

/// One reading of another clock, in microseconds: its time (since the epoch), and this host's
/// boot clock ([`SyncedClock::local`]) when the request left and when the answer came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The other clock's time, in microseconds since the epoch.
    pub theirs: i64,
    /// When the request was sent.
    pub sent: i64,
    /// When the answer came.
    pub received: i64,
}

impl Default for SyncedClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncedClock {
    /// A clock that reads as this host's wall clock until it is first adjusted.
    pub fn new() -> Self {
        Self {
            at_zero: AtomicI64::new(
                SystemClock
                    .now()
                    .saturating_mul(1000)
                    .saturating_sub(Self::local()),
            ),
        }
    }

    /// This host's boot clock in microseconds: the `sent` and `received` of a [`Reading`].
    pub fn local() -> i64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        t.tv_sec
            .saturating_mul(1_000_000)
            .saturating_add(t.tv_nsec / 1000)
    }

    /// Follows the best of `readings` (the one whose answer came soonest: the least doubt about
    /// when the other clock was read, taken as the middle of its round trip). Returns how far
    /// this clock now is ahead of this host's wall clock, in milliseconds (negative: behind), or
    /// `None` when there was no reading.
    pub fn adjust(&self, readings: &[Reading]) -> Option<i64> {
        let best = readings
            .iter()
            .min_by_key(|r| r.received.saturating_sub(r.sent))?;
        let middle = best
            .sent
            .saturating_add(best.received.saturating_sub(best.sent) / 2);
        self.at_zero
            .store(best.theirs.saturating_sub(middle), Ordering::SeqCst);
        Some(self.now().saturating_sub(SystemClock.now()))
    }
}

impl Clock for SyncedClock {
    fn now(&self) -> UnixMillis {
        self.at_zero
            .load(Ordering::SeqCst)
            .saturating_add(Self::local())
            .div_euclid(1000)
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
#[allow(clippy::unwrap_used)]
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
    fn a_synced_clock_follows_the_reading_with_the_shortest_round_trip() {
        let c = SyncedClock::new();
        // Before any reading: this host's wall clock.
        assert!((c.now() - SystemClock.now()).abs() < 1000);
        let t = SyncedClock::local();
        let off = c
            .adjust(&[
                // A slow answer, whose middle says another time: not taken.
                Reading {
                    theirs: 5_000_000_000,
                    sent: t,
                    received: t + 400_000,
                },
                Reading {
                    theirs: 1_000_000_000,
                    sent: t,
                    received: t + 2000,
                },
            ])
            .unwrap();
        // Taken at the middle of the 2 ms round trip, and moved on since by the boot clock.
        let now = c.now();
        assert!((1_000_000 - 1..1_000_000 + 1000).contains(&now), "{now}");
        assert!((off - (now - SystemClock.now())).abs() < 1000, "{off}");
        assert_eq!(c.adjust(&[]), None);
    }

    #[test]
    fn parse_rejects_offsets_and_garbage() {
        assert!(parse_rfc3339("2026-11-21T22:30:04+02:00").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
