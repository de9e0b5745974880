//! Per-user fair use, in memory: open streams and long polls (`limits.streams_per_user`), and
//! requests per second (`limits.requests_per_second`, a token bucket per user with
//! `limits.requests_burst`). Over a limit a request is `429 too_many_requests` with
//! `Retry-After`, before it reads or writes anything. Also [`Shared`], a result reused for a
//! while by every caller (for `/readyz` and the queue depths of `/metrics`).
//!
//! The counts are per process: several servers on one database each allow the limit.

use super::ApiError;
use crate::config::LimitsConfig;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A bucket table is swept of idle users when it grows past this many (and then past twice
/// what the sweep left), so its memory follows the users active in the last few seconds.
const SWEEP_AT: usize = 1024;

/// One user's request bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The per-user limits and their counters.
#[derive(Debug)]
pub struct UserLimits {
    cfg: LimitsConfig,
    streams: Mutex<HashMap<String, u32>>,
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    by_user: HashMap<String, Bucket>,
    sweep_at: usize,
}

impl UserLimits {
    /// Counters for `cfg`.
    pub fn new(cfg: LimitsConfig) -> Self {
        Self {
            cfg,
            streams: Mutex::new(HashMap::new()),
            buckets: Mutex::new(Buckets {
                by_user: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        }
    }

    /// Takes one of `user`'s stream slots, held until the returned guard drops (the stream
    /// or long poll ended, the client went away, or the server stopped).
    ///
    /// # Errors
    /// `429` when the user has `limits.streams_per_user` open already.
    pub fn stream_slot(self: &Arc<Self>, user: &str) -> Result<StreamSlot, ApiError> {
        let cap = self.cfg.streams_per_user;
        if cap > 0 {
            let mut m = self
                .streams
                .lock()
                .map_err(|_| ApiError::Internal("stream counter poisoned".into()))?;
            let n = m.entry(user.to_string()).or_insert(0);
            if *n >= cap {
                return Err(ApiError::TooManyRequests {
                    message: format!(
                        "limits.streams_per_user: {cap} streams and long polls are open for this user; close one"
                    ),
                    retry_after_s: 1,
                });
            }
            *n += 1;
        }
        Ok(StreamSlot {
            limits: self.clone(),
            user: user.to_string(),
            counted: cap > 0,
        })
    }

    /// Takes one request from `user`'s bucket at `now`.
    ///
    /// # Errors
    /// `429` naming `limits.requests_per_second` when the bucket is empty.
    pub fn request(&self, user: &str, now: Instant) -> Result<(), ApiError> {
        let rate = f64::from(self.cfg.requests_per_second);
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = f64::from(self.cfg.requests_burst.max(1));
        let mut b = self
            .buckets
            .lock()
            .map_err(|_| ApiError::Internal("rate buckets poisoned".into()))?;
        if !b.by_user.contains_key(user) && b.by_user.len() >= b.sweep_at {
            // A bucket that has refilled is the same as no bucket: drop those.
            let full_after = Duration::from_secs_f64(burst / rate);
            b.by_user
                .retain(|_, k| now.saturating_duration_since(k.at) < full_after);
            b.sweep_at = (b.by_user.len() * 2).max(SWEEP_AT);
        }
        let k = b.by_user.entry(user.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.saturating_duration_since(k.at).as_secs_f64() * rate;
        k.tokens = (k.tokens + refill).min(burst);
        k.at = now;
        if k.tokens >= 1.0 {
            k.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - k.tokens) / rate).ceil().max(1.0) as u64;
            Err(ApiError::TooManyRequests {
                message: format!(
                    "limits.requests_per_second: at most {} requests per second (burst {}) for this user",
                    self.cfg.requests_per_second, self.cfg.requests_burst
                ),
                retry_after_s: wait,
            })
        }
    }

    /// Users with a bucket now (for tests of the sweep).
    #[cfg(test)]
    fn bucket_count(&self) -> usize {
        self.buckets.lock().map(|b| b.by_user.len()).unwrap_or(0)
    }
}

/// An open stream or long poll of one user; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamSlot {
    limits: Arc<UserLimits>,
    user: String,
    counted: bool,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        if let Ok(mut m) = self.limits.streams.lock() {
            if let Some(n) = m.get_mut(&self.user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.user);
                }
            }
        }
    }
}

/// A value computed at most once per `ttl`, however many callers ask: callers that arrive while
/// it is being computed wait for that computation and share its result. A result the caller
/// does not want kept (a failure, for `/readyz`) is shared only with the callers that waited
/// for it; the next caller computes afresh.
#[derive(Debug)]
pub struct Shared<T> {
    ttl: Duration,
    /// Computations finished; a caller that saw a lower number on arrival takes the last result.
    done: std::sync::atomic::AtomicU64,
    /// The single flight, and the last result: (when, whether kept for `ttl`, value).
    slot: tokio::sync::Mutex<Option<(Instant, bool, T)>>,
}

impl<T: Clone> Shared<T> {
    /// Nothing computed yet.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            done: std::sync::atomic::AtomicU64::new(0),
            slot: tokio::sync::Mutex::new(None),
        }
    }

    /// The value computed less than `ttl` ago (or while this caller waited), else `f()`'s,
    /// kept for the next `ttl` when `keep` says so.
    pub async fn get_or<F, Fut>(&self, f: F, keep: impl Fn(&T) -> bool) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        use std::sync::atomic::Ordering;
        let seen = self.done.load(Ordering::Acquire);
        // The async lock is the single flight: one computation, the others queue behind it.
        let mut slot = self.slot.lock().await;
        if let Some((at, kept, v)) = slot.as_ref() {
            let finished_while_waiting = self.done.load(Ordering::Acquire) != seen;
            if finished_while_waiting || (*kept && at.elapsed() < self.ttl) {
                return v.clone();
            }
        }
        let v = f().await;
        *slot = Some((Instant::now(), keep(&v), v.clone()));
        self.done.fetch_add(1, Ordering::Release);
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(streams: u32, rps: u32, burst: u32) -> Arc<UserLimits> {
        Arc::new(UserLimits::new(LimitsConfig {
            streams_per_user: streams,
            requests_per_second: rps,
            requests_burst: burst,
            pending_tasks_per_user: 0,
            payload_bytes_per_user: 0,
            messages_per_task: 0,
        }))
    }

    #[test]
    fn stream_slots_are_counted_per_user_and_freed_on_drop() {
        let l = limits(2, 0, 0);
        let a = l.stream_slot("alice").unwrap();
        let _b = l.stream_slot("alice").unwrap();
        let e = l.stream_slot("alice").unwrap_err();
        assert!(matches!(e, ApiError::TooManyRequests { .. }), "{e:?}");
        let _bob = l.stream_slot("bob").unwrap();
        drop(a);
        let _c = l.stream_slot("alice").unwrap();
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let l = limits(0, 10, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.request("u", t0).unwrap();
        }
        let e = l.request("u", t0).unwrap_err();
        match e {
            ApiError::TooManyRequests {
                message,
                retry_after_s,
            } => {
                assert!(message.contains("limits.requests_per_second"), "{message}");
                assert_eq!(retry_after_s, 1);
            }
            other => panic!("{other:?}"),
        }
        // 100 ms later one token is back.
        let t1 = t0 + Duration::from_millis(100);
        l.request("u", t1).unwrap();
        assert!(l.request("u", t1).is_err());
        // Another user has a bucket of their own.
        l.request("v", t1).unwrap();
    }

    #[tokio::test]
    async fn a_shared_value_is_computed_once_per_ttl_and_failures_are_not_kept() {
        let shared = Shared::<Result<u32, u32>>::new(Duration::from_secs(60));
        let calls = std::sync::atomic::AtomicU32::new(0);
        let run = |ok: bool| {
            let calls = &calls;
            let shared = &shared;
            async move {
                shared
                    .get_or(
                        || async move {
                            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if ok {
                                Ok(n)
                            } else {
                                Err(n)
                            }
                        },
                        Result::is_ok,
                    )
                    .await
            }
        };
        // A failure is not kept: the next caller computes again.
        assert_eq!(run(false).await, Err(0));
        assert_eq!(run(true).await, Ok(1));
        // A success is kept for the ttl.
        assert_eq!(run(false).await, Ok(1));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn idle_buckets_are_swept_so_memory_follows_active_users() {
        let l = limits(0, 100, 1);
        let t0 = Instant::now();
        for i in 0..(SWEEP_AT * 3) {
            // Each user is idle long enough to have refilled before the next sweep.
            let t = t0 + Duration::from_millis(10 * i as u64);
            l.request(&format!("user{i}"), t).unwrap();
        }
        assert!(l.bucket_count() <= SWEEP_AT * 2, "{}", l.bucket_count());
    }
}
