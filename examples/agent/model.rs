//! The Anthropic Messages API, the one call the agent makes: `POST {base}/v1/messages` with the
//! conversation and the tools. Overloads, rate limits, server errors and network errors are tried
//! again in the process (with backoff, up to five times); any other refusal ends the attempt,
//! naming the status and the API's own message, never the key.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::{json, Value};

/// Where and as whom the agent calls the model (from the environment).
pub(crate) struct Model {
    client: reqwest::Client,
    url: String,
    key: String,
    name: String,
    max_tokens: u64,
}

/// Why a call failed, and whether trying again may help.
#[derive(Debug)]
pub(crate) struct CallError {
    pub(crate) message: String,
    retry: bool,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Model {
    pub(crate) fn new(
        base_url: &str,
        key: String,
        name: String,
        max_tokens: u64,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            // The key goes to the configured host only.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Model {
            client,
            url: format!("{}/v1/messages", base_url.trim_end_matches('/')),
            key,
            name,
            max_tokens,
        })
    }

    /// One model turn: the response JSON (`content`, `stop_reason`, ...).
    pub(crate) async fn turn(
        &self,
        system: &str,
        tools: &Value,
        messages: &[Value],
    ) -> Result<Value, CallError> {
        let body = json!({
            "model": self.name,
            "max_tokens": self.max_tokens,
            "system": system,
            "tools": tools,
            "messages": messages,
        });
        let once = || async {
            let resp = self
                .client
                .post(&self.url)
                .header("x-api-key", &self.key)
                .header("anthropic-version", "2023-06-01")
                .json(&body)
                .send()
                .await
                .map_err(|e| CallError {
                    // Without the URL: a proxy's address may carry credentials.
                    message: format!("the model API did not answer: {}", e.without_url()),
                    retry: true,
                })?;
            let status = resp.status();
            let text = resp.text().await.map_err(|e| CallError {
                message: format!("the model API's answer was cut: {}", e.without_url()),
                retry: true,
            })?;
            if !status.is_success() {
                let said = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| crate::tools::cut(&text, 500));
                let code = status.as_u16();
                return Err(CallError {
                    message: format!("the model API answered {code}: {said}"),
                    retry: matches!(code, 408 | 429 | 500..=599),
                });
            }
            serde_json::from_str::<Value>(&text).map_err(|e| CallError {
                message: format!("the model API's answer is not JSON: {e}"),
                retry: false,
            })
        };
        once.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(30))
                .with_max_times(5),
        )
        .when(|e: &CallError| e.retry)
        .await
    }
}
