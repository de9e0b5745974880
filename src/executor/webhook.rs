//! The `webhook` executor: one signed POST per attempt.
//!
//! The body is the task JSON (with its owner, `user`). Headers: `Content-Type:
//! application/json`, `Spool-Task-Id`, `Spool-Attempt`, `Spool-Timestamp` (unix seconds),
//! `Spool-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>">` keyed with the
//! kind's secret (so a receiver can refuse old requests replayed), and `Spool-Task-Token`: a
//! token valid only while this attempt runs, with which the receiver may
//! `POST /v1/tasks/{id}/messages` as a Bearer token.
//!
//! Outcome: 2xx completes with the response JSON as result (a non-JSON body is stored as a
//! string, an empty one as null); 408, 429, 5xx and network errors retry with backoff, honouring
//! `Retry-After` (seconds or an HTTP date); a 3xx is a failed attempt (no redirect is followed:
//! the token and signature go to the configured host only); any other 4xx fails at once.
//! The URL (often a secret itself) is never put in `last_error` or a message: it is logged on
//! the server only. Connections are reused across tasks: every webhook kind shares one client.

use super::{Handler, Outcome, TaskContext, TaskError};
use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::time::{Duration, SystemTime};

/// Largest webhook response body kept as a result (1 MiB, the payload limit).
pub const MAX_RESPONSE: usize = 1 << 20;

/// POSTs each attempt to a URL.
#[derive(Clone)]
pub struct WebhookHandler {
    url: String,
    secret: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for WebhookHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookHandler")
            .field("url", &self.url)
            .finish()
    }
}

impl WebhookHandler {
    /// A handler posting to `url`, signing with `secret`, on the shared `client`.
    pub fn new(url: String, secret: String, client: reqwest::Client) -> Self {
        Self {
            url,
            secret,
            client,
        }
    }
}

/// The value of `Spool-Signature` for `body` sent at `timestamp` (unix seconds): the HMAC of
/// `"<timestamp>.<body>"`.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::new(),
    }
}

/// Why a receiver refuses a request in [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `Spool-Timestamp` is missing or not a number.
    #[error("missing or malformed Spool-Timestamp")]
    BadTimestamp,
    /// The timestamp is further from now than the tolerance: an old request replayed.
    #[error("Spool-Timestamp is {0} s away from now")]
    Stale(u64),
    /// The signature does not match.
    #[error("bad signature")]
    BadSignature,
}

/// Checks a request as a receiver should: `Spool-Timestamp` within `tolerance_s` of `now_s`,
/// and `Spool-Signature` equal to the HMAC of `"<timestamp>.<body>"`, compared in constant
/// time (`Mac::verify_slice`, not `==`).
///
/// # Errors
/// The [`VerifyError`] that refuses the request.
pub fn verify(
    secret: &str,
    timestamp: &str,
    sig: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), VerifyError> {
    let ts: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now_s.abs_diff(ts);
    if skew > tolerance_s {
        return Err(VerifyError::Stale(skew));
    }
    let given = sig
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(VerifyError::BadSignature)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| VerifyError::BadSignature)?;
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| VerifyError::BadSignature)
}

/// Parses `Retry-After`: delta seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

impl Handler for WebhookHandler {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
        let me = self.clone();
        Box::pin(async move { me.post(ctx).await })
    }
}

impl WebhookHandler {
    async fn post(&self, ctx: TaskContext) -> Result<Outcome, TaskError> {
        let token = ctx
            .task_token()
            .await
            .map_err(|e| TaskError::retry(format!("cannot create the task token: {e}")))?;
        // The task JSON with its owner's name, so a receiver knows on whose behalf it runs.
        let mut task_json = ctx.task().to_json();
        if let Some(obj) = task_json.as_object_mut() {
            obj.insert(
                "user".into(),
                serde_json::Value::String(ctx.owner_name().await?),
            );
        }
        let body = serde_json::to_vec(&task_json)
            .map_err(|e| TaskError::permanent(format!("cannot encode the task: {e}")))?;
        let now_ms = ctx.clock().now();
        let timestamp = u64::try_from(now_ms / 1000).unwrap_or(0);
        let sig = signature(&self.secret, timestamp, &body);
        let timeout = Duration::from_millis(ctx.task().timeout_ms.max(1));
        // Why this attempt follows a wait (`message`, `timeout`), or empty.
        let wake = ctx.wake_reason().map(|w| w.as_str()).unwrap_or("");
        let send = || async {
            self.client
                .post(&self.url)
                .timeout(timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Spool-Task-Id", ctx.id().to_string())
                .header("Spool-Attempt", ctx.attempt().to_string())
                .header("Spool-Timestamp", timestamp.to_string())
                .header("Spool-Signature", &sig)
                .header("Spool-Task-Token", &token)
                .header("Spool-Wake", wake)
                .body(body.clone())
                .send()
                .await
        };
        // A refused or reset connection is retried at once a few times before the attempt
        // fails; a timeout is not (the receiver may be working).
        let resp = send
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_times(3),
            )
            .when(|e: &reqwest::Error| e.is_connect())
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Err(TaskError::retry(format!(
                    "webhook timed out after {} ms",
                    timeout.as_millis()
                )))
            }
            Err(e) => {
                // reqwest's errors name the URL; it stays in the server's log.
                tracing::warn!(url = %self.url, error = %e, "webhook request failed");
                return Err(TaskError::retry(format!(
                    "webhook request failed: {}",
                    e.without_url()
                )));
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let now = SystemTime::UNIX_EPOCH
                    + Duration::from_millis(u64::try_from(now_ms).unwrap_or(0));
                parse_retry_after(v, now)
            });
        if status.is_redirection() {
            tracing::warn!(url = %self.url, %status, "webhook answered a redirect; not followed");
            return Err(TaskError::retry(format!(
                "webhook answered {status}: redirects are not followed"
            )));
        }
        // The body becomes the task's result: read at most MAX_RESPONSE bytes of it.
        let mut resp = resp;
        let mut text: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            TaskError::retry(format!("reading the webhook response: {}", e.without_url()))
        })? {
            if text.len() + chunk.len() > MAX_RESPONSE {
                return Err(TaskError::permanent(format!(
                    "webhook response is larger than {MAX_RESPONSE} bytes"
                )));
            }
            text.extend_from_slice(&chunk);
        }
        if status == reqwest::StatusCode::ACCEPTED {
            // 202 {"wait": {"for": "message", "timeout_ms": N}}: park the task.
            let body: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
            if let Some(w) = body.get("wait") {
                return Outcome::wait_from_json(w);
            }
        }
        if status.is_success() {
            if text.iter().all(u8::is_ascii_whitespace) {
                return Ok(Outcome::Completed(Value::Null));
            }
            return Ok(Outcome::Completed(
                serde_json::from_slice(&text)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&text).into_owned())),
            ));
        }
        let snippet: String = String::from_utf8_lossy(&text).chars().take(300).collect();
        let msg = format!("webhook answered {status}: {snippet}");
        let code = status.as_u16();
        if code == 408 || code == 429 || status.is_server_error() {
            Err(match retry_after {
                Some(d) => TaskError::retry_after(msg, d),
                None => TaskError::retry(msg),
            })
        } else {
            Err(TaskError::permanent(msg))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // The HMAC of "<timestamp>.<body>": RFC 4231 test case 2's message split at a dot.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"17.what do ya want for nothing?");
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(signature("Jefe", 17, b"what do ya want for nothing?"), want);
        assert_ne!(signature("Jefe", 18, b"what do ya want for nothing?"), want);
    }

    #[test]
    fn verify_refuses_stale_forged_and_malformed_requests() {
        let body = b"{\"id\":1}";
        let sig = signature("k", 1000, body);
        assert_eq!(verify("k", "1000", &sig, body, 1010, 300), Ok(()));
        assert_eq!(
            verify("k", "1000", &sig, body, 2000, 300),
            Err(VerifyError::Stale(1000))
        );
        // The same signature under another timestamp (a replay with a fresh header) fails.
        assert_eq!(
            verify("k", "1900", &sig, body, 2000, 300),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify("other", "1000", &sig, body, 1000, 300),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify("k", "soon", &sig, body, 1000, 300),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            verify("k", "1000", "sha256=zz", body, 1000, 300),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
