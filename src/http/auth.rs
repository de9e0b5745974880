//! Who a bearer token names: spool's own tokens (looked up by hash) and, with `[auth.jwt]`, an
//! identity provider's JWTs (checked, then mapped to a user row by issuer and subject).
//!
//! # The cache
//! A hit is kept for [`CACHE_TTL`] only, so a token revoked by `spool token revoke` in any
//! process on the database is refused here within that time; each token costs at most one
//! read per [`CACHE_TTL`]. Only tokens that named a user are cached, and the map holds at most
//! [`CACHE_MAX`] entries (expired ones are dropped to make room; past that nothing is added),
//! so random bad tokens cannot grow it.

use super::{ApiError, AppState};
use crate::jwt::JwtVerifier;
use crate::store::User;
use crate::token::hash_token;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a token's user is trusted without reading the database again.
pub(super) const CACHE_TTL: Duration = Duration::from_secs(1);
/// Most entries the cache holds.
pub(super) const CACHE_MAX: usize = 10_000;

/// Users by token hash, each for [`CACHE_TTL`].
#[derive(Debug, Default)]
pub(super) struct UserCache {
    map: Mutex<HashMap<String, (User, Instant)>>,
}

impl UserCache {
    fn get(&self, key: &str) -> Option<User> {
        let map = self.map.lock().ok()?;
        map.get(key)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(u, _)| u.clone())
    }

    fn put(&self, key: String, user: User) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= CACHE_MAX && !map.contains_key(&key) {
            map.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if map.len() >= CACHE_MAX {
                return;
            }
        }
        map.insert(key, (user, Instant::now()));
    }
}

/// JWT checking, as configured.
#[derive(Debug, Clone)]
pub(super) enum JwtState {
    /// No `[auth.jwt]`.
    Off,
    /// Checking JWTs.
    On(Arc<JwtVerifier>),
    /// Configured but the verifier could not be built (logged at start): JWTs are refused.
    Broken,
}

impl JwtState {
    pub(super) fn from_config(cfg: &crate::config::Config) -> Self {
        match &cfg.auth.jwt {
            None => Self::Off,
            Some(j) => match JwtVerifier::new(j) {
                Ok(v) => Self::On(Arc::new(v)),
                Err(e) => {
                    tracing::error!(error = %e, "JWT bearer tokens are refused");
                    Self::Broken
                }
            },
        }
    }
}

/// Whether `token` has the shape of a JWT (three dot-separated parts) rather than a spool token.
fn looks_like_jwt(token: &str) -> bool {
    !token.starts_with("spool_") && token.bytes().filter(|b| *b == b'.').count() == 2
}

/// The user `token` names.
///
/// # Errors
/// `401` with the reason, or a database error.
pub(super) async fn authenticate(st: &AppState, token: &str) -> Result<User, ApiError> {
    let key = hash_token(token);
    if let Some(u) = st.users.get(&key) {
        return Ok(u);
    }
    let user = match (&st.jwt, looks_like_jwt(token)) {
        (JwtState::On(v), true) => {
            let id = v
                .verify(token)
                .await
                .map_err(|r| ApiError::Unauthorized(format!("JWT refused: {r}")))?;
            let row = st
                .store
                .user_jwt(id.issuer, id.subject, st.clock.now())
                .await?;
            // A JWT user's admin right is what this token's claim says, not what it said once.
            User {
                is_admin: id.admin,
                jwt: true,
                ..row
            }
        }
        (JwtState::Broken, true) => {
            return Err(ApiError::Unauthorized(
                "JWT sign-in is unavailable on this server (see its log)".into(),
            ))
        }
        _ => st
            .store
            .user_by_token(key.clone())
            .await?
            .ok_or_else(|| ApiError::Unauthorized("unknown or revoked token".into()))?,
    };
    st.users.put(key, user.clone());
    Ok(user)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn user(id: i64) -> User {
        User {
            id,
            name: format!("u{id}"),
            is_admin: false,
            jwt: false,
        }
    }

    #[test]
    fn the_cache_forgets_after_its_ttl_and_stays_bounded() {
        let c = UserCache::default();
        c.put("a".into(), user(1));
        assert_eq!(c.get("a"), Some(user(1)));
        // Age the entry past the TTL by hand.
        if let Some(e) = c.map.lock().unwrap().get_mut("a") {
            e.1 = Instant::now() - CACHE_TTL - Duration::from_millis(1);
        }
        assert_eq!(c.get("a"), None, "a stale entry was trusted");
        for i in 0..(CACHE_MAX as i64 + 50) {
            c.put(format!("k{i}"), user(i));
        }
        assert!(c.map.lock().unwrap().len() <= CACHE_MAX);
    }

    #[test]
    fn jwts_are_told_from_spool_tokens_by_shape() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt("spool_abc"));
        assert!(!looks_like_jwt("spool_a.b.c"));
        assert!(!looks_like_jwt("a.b"));
    }
}
