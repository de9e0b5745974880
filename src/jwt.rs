//! JWTs of an identity provider as bearer tokens (`[auth.jwt]`): signature, issuer, audience,
//! `exp` and `nbf` checked, the user named by a claim. Knows nothing of HTTP routes or SQL; the
//! HTTP layer maps an identity to a user row.
//!
//! # Keys
//! With `hs256_secret_env` one HMAC secret checks HS256 tokens. With `jwks_url` the public keys
//! are fetched from the provider's JWKS and cached by `kid`. A token whose `kid` is not cached
//! (the provider rotated its keys) triggers a fetch, as does a cache older than
//! `jwks_max_age_s`; fetches run one at a time and at most once per `jwks_min_refresh_ms`, so a
//! stream of tokens with made-up `kid`s costs the provider one request per interval, not one
//! each. A fetch is async (no tokio worker blocks on it), has a time limit, reads at most
//! [`MAX_JWKS_BYTES`], and follows no redirect. When a fetch fails the keys already held stay
//! in use.

use crate::config::{AdminClaim, JwtConfig, JwtKeys};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{decode, decode_header, Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Instant;

/// Largest JWKS document read.
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// Longest user claim value accepted.
pub const MAX_SUBJECT_CHARS: usize = 255;

/// Who a valid JWT names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    /// The token's issuer (the configured one).
    pub issuer: String,
    /// The value of the user claim.
    pub subject: String,
    /// Whether the admin claim made the user an admin.
    pub admin: bool,
}

#[derive(Clone)]
struct CachedKey {
    key: DecodingKey,
    /// The `alg` the JWKS pins the key to, if it does.
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, CachedKey>,
    fetched_at: Option<Instant>,
    tried_at: Option<Instant>,
}

/// Checks JWTs as `[auth.jwt]` says.
pub struct JwtVerifier {
    cfg: JwtConfig,
    hs256: Option<DecodingKey>,
    client: reqwest::Client,
    cache: Mutex<KeyCache>,
    /// Held across a fetch (tokio's lock: it is held over an await), so fetches never overlap.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.cfg.keys)
            .field("issuer", &self.cfg.issuer)
            .finish()
    }
}

impl JwtVerifier {
    /// A verifier for `cfg`.
    ///
    /// # Errors
    /// The HMAC secret is not usable, or the HTTP client for the JWKS cannot be built.
    pub fn new(cfg: &JwtConfig) -> Result<Self, String> {
        let hs256 = match &cfg.keys {
            JwtKeys::Hs256 { secret } => Some(
                DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| format!("auth.jwt: the HS256 secret is not usable: {e}"))?,
            ),
            JwtKeys::Jwks { .. } => None,
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.jwks_timeout)
            .timeout(cfg.jwks_timeout)
            .build()
            .map_err(|e| format!("auth.jwt: cannot build the JWKS client: {e}"))?;
        Ok(Self {
            cfg: cfg.clone(),
            hs256,
            client,
            cache: Mutex::new(KeyCache::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Checks `token`; the identity it names, or why it is refused (for a `401` message).
    ///
    /// # Errors
    /// The reason: malformed, bad signature, unknown key, wrong issuer or audience, expired, not
    /// yet valid, or no user claim.
    pub async fn verify(&self, token: &str) -> Result<JwtIdentity, String> {
        let header = decode_header(token).map_err(|e| format!("not a valid JWT: {e}"))?;
        let key = match &self.cfg.keys {
            JwtKeys::Hs256 { .. } => {
                if header.alg != Algorithm::HS256 {
                    return Err(format!(
                        "the JWT is signed with {:?}; this server takes HS256 only",
                        header.alg
                    ));
                }
                self.hs256
                    .clone()
                    .ok_or_else(|| "no HS256 secret is configured".to_string())?
            }
            JwtKeys::Jwks { url } => {
                if header.alg.family() == AlgorithmFamily::Hmac {
                    return Err(format!(
                        "the JWT is signed with {:?}; with a JWKS only public-key algorithms are taken",
                        header.alg
                    ));
                }
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| "the JWT has no kid (key id) header".to_string())?;
                let k = self.key_for(url, kid).await?;
                if k.alg.is_some_and(|a| a != header.alg) || k.key.family() != header.alg.family() {
                    return Err(format!(
                        "the JWT's alg {:?} does not match its key {kid:?}",
                        header.alg
                    ));
                }
                k.key
            }
        };
        let mut v = Validation::new(header.alg);
        v.leeway = self.cfg.leeway_s;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = decode::<Map<String, Value>>(token, &key, &v).map_err(|e| reason(&e))?;
        let claims = data.claims;
        let subject = match claims.get(&self.cfg.user_claim) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(format!(
                    "the JWT has no {:?} claim naming the user",
                    self.cfg.user_claim
                ))
            }
        };
        if subject.is_empty()
            || subject.chars().count() > MAX_SUBJECT_CHARS
            || subject.chars().any(char::is_control)
        {
            return Err(format!(
                "the JWT's {:?} claim must be 1 to {MAX_SUBJECT_CHARS} characters with no control characters",
                self.cfg.user_claim
            ));
        }
        let admin = match &self.cfg.admin_claim {
            None => false,
            Some(AdminClaim::True(name)) => claims.get(name) == Some(&Value::Bool(true)),
            Some(AdminClaim::Equals(name, want)) => match claims.get(name) {
                Some(Value::String(s)) => s == want,
                Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(want)),
                _ => false,
            },
        };
        Ok(JwtIdentity {
            issuer: self.cfg.issuer.clone(),
            subject,
            admin,
        })
    }

    /// The key for `kid`: cached, or after a fetch of the JWKS (one at a time, at most once per
    /// `jwks_min_refresh`).
    async fn key_for(&self, url: &str, kid: &str) -> Result<CachedKey, String> {
        if let Some(k) = self.cached(kid, true) {
            return Ok(k);
        }
        let _one_fetch = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(k) = self.cached(kid, true) {
            return Ok(k);
        }
        let too_soon = self
            .lock_cache()
            .tried_at
            .is_some_and(|t| t.elapsed() < self.cfg.jwks_min_refresh);
        if too_soon {
            return self
                .cached(kid, false)
                .ok_or_else(|| format!("unknown key id {kid:?}"));
        }
        self.lock_cache().tried_at = Some(Instant::now());
        match self.fetch(url).await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "fetched the JWKS");
                let mut c = self.lock_cache();
                c.keys = keys;
                c.fetched_at = Some(Instant::now());
            }
            Err(e) => {
                // The detail (and the URL) goes to the log, not to the client.
                tracing::warn!(error = %e, %url, "cannot fetch the JWKS; keeping the keys held");
                return self.cached(kid, false).ok_or_else(|| {
                    format!("unknown key id {kid:?} (the key set could not be fetched)")
                });
            }
        }
        self.cached(kid, false)
            .ok_or_else(|| format!("unknown key id {kid:?}"))
    }

    /// The cached key for `kid`; with `fresh_only`, only while the cache is younger than
    /// `jwks_max_age`.
    fn cached(&self, kid: &str, fresh_only: bool) -> Option<CachedKey> {
        let c = self.lock_cache();
        let fresh = c
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.cfg.jwks_max_age);
        if fresh_only && !fresh {
            return None;
        }
        c.keys.get(kid).cloned()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        // A panic while holding this lock leaves a consistent map: take it over.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn fetch(&self, url: &str) -> Result<HashMap<String, CachedKey>, String> {
        let mut resp = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS is over {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }
}

/// The signing keys of a JWKS document by `kid`. Keys without a `kid`, marked for encryption,
/// or of a type this build cannot use are skipped, so one odd key does not hide the others.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, CachedKey>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let items = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| "no \"keys\" array".to_string())?;
    let mut keys = HashMap::new();
    for item in items {
        let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else {
            continue;
        };
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        if key.family() == AlgorithmFamily::Hmac {
            continue; // a shared secret has no place in a public key set
        }
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
        keys.insert(kid, CachedKey { key, alg });
    }
    Ok(keys)
}

/// The `401` reason for a refused token.
fn reason(e: &jsonwebtoken::errors::Error) -> String {
    match e.kind() {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::ExpiredSignature => "the JWT has expired".into(),
        ErrorKind::ImmatureSignature => "the JWT is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("the JWT has no {c:?} claim"),
        ErrorKind::InvalidAlgorithm => "algorithm not allowed for this key".into(),
        ErrorKind::InvalidClaimFormat(c) => format!("the JWT's {c:?} claim is malformed"),
        _ => format!("not a valid JWT: {e}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse_jwks_kids(body: &[u8]) -> Result<Vec<String>, String> {
        let mut kids: Vec<String> = parse_jwks(body)?.into_keys().collect();
        kids.sort();
        Ok(kids)
    }

    #[test]
    fn a_jwks_keeps_the_keys_it_can_use_and_skips_the_rest() {
        let doc = br#"{"keys": [
            {"kty": "RSA", "kid": "a", "alg": "RS256", "use": "sig", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXch", "e": "AQAB"},
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "weird", "kid": "w"}
        ]}"#;
        assert_eq!(parse_jwks_kids(doc).unwrap(), vec!["a".to_string()]);
        assert!(parse_jwks_kids(b"{}").is_err());
        assert!(parse_jwks_kids(b"nope").is_err());
    }
}
