//! The `webhook` executor: one signed POST per attempt.
//!
//! The body is the task JSON. Headers: `Content-Type: application/json`, `Spool-Task-Id`,
//! `Spool-Attempt`, `Spool-Signature: sha256=<hex HMAC-SHA256 of the raw body>` keyed with the
//! kind's secret, and `Spool-Task-Token`: a token valid only while this attempt runs, with which
//! the receiver may `POST /v1/tasks/{id}/messages` as a Bearer token.
//!
//! Outcome: 2xx completes with the response JSON as result (a non-JSON body is stored as a
//! string, an empty one as null); 408, 429, 5xx and network errors retry with backoff, honouring
//! `Retry-After` (seconds or an HTTP date); any other 4xx fails at once. Connections are reused
//! across tasks: every webhook kind shares one client.

use super::{Handler, TaskContext, TaskError};
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

/// The value of `Spool-Signature` for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::new(),
    }
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
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Value, TaskError>> {
        let me = self.clone();
        Box::pin(async move { me.post(ctx).await })
    }
}

impl WebhookHandler {
    async fn post(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        let token = ctx
            .store()
            .task_token_create(ctx.task(), ctx.clock().now())
            .await
            .map_err(|e| TaskError::retry(format!("cannot create the task token: {e}")))?;
        let body = serde_json::to_vec(&ctx.task().to_json())
            .map_err(|e| TaskError::permanent(format!("cannot encode the task: {e}")))?;
        let sig = signature(&self.secret, &body);
        let timeout = Duration::from_millis(ctx.task().timeout_ms.max(1));
        let send = || async {
            self.client
                .post(&self.url)
                .timeout(timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Spool-Task-Id", ctx.id().to_string())
                .header("Spool-Attempt", ctx.attempt().to_string())
                .header("Spool-Signature", &sig)
                .header("Spool-Task-Token", &token)
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
            Err(e) => return Err(TaskError::retry(format!("webhook request failed: {e}"))),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // The body becomes the task's result: read at most MAX_RESPONSE bytes of it.
        let mut resp = resp;
        let mut text: Vec<u8> = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| TaskError::retry(format!("reading the webhook response: {e}")))?
        {
            if text.len() + chunk.len() > MAX_RESPONSE {
                return Err(TaskError::permanent(format!(
                    "webhook response is larger than {MAX_RESPONSE} bytes"
                )));
            }
            text.extend_from_slice(&chunk);
        }
        if status.is_success() {
            if text.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return Ok(serde_json::from_slice(&text)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&text).into_owned())));
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
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
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
