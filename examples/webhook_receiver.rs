//! A small webhook receiver for a spool `webhook` kind: it checks the timestamp (refusing
//! requests older than five minutes, so a captured request cannot be replayed) and the
//! signature (in constant time), posts two progress messages back with the attempt's task
//! token, and answers 200 with a JSON result.
//!
//! ```sh
//! NOTIFY_SECRET=change-me cargo run --release --example webhook_receiver   # listens on 127.0.0.1:9000
//! ```
//! with, in config/spool.toml:
//! ```toml
//! [kinds.notify]
//! webhook = "http://127.0.0.1:9000/hook"
//! secret_env = "NOTIFY_SECRET"
//! ```
//! and spool started with the same `NOTIFY_SECRET` in its environment.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use spool::executor::webhook::verify;

#[derive(Clone)]
struct Cfg {
    secret: String,
    spool_url: String,
    client: reqwest::Client,
}

async fn hook(
    State(cfg): State<Cfg>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, (StatusCode, String)> {
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    // The timestamp is signed with the body: a replay needs a fresh timestamp, and that
    // breaks the signature. verify compares in constant time (Mac::verify_slice).
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    verify(
        &cfg.secret,
        &header("spool-timestamp"),
        &header("spool-signature"),
        &body,
        now_s,
        300,
    )
    .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
    let task: Value =
        serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let id = header("spool-task-id");
    let token = header("spool-task-token");
    println!(
        "task {id} attempt {}: {}",
        header("spool-attempt"),
        task["payload"]
    );
    for step in ["looked up the phone", "sent the text"] {
        let r = cfg
            .client
            .post(format!("{}/v1/tasks/{id}/messages", cfg.spool_url))
            .bearer_auth(&token)
            .json(&json!({ "kind": "progress", "content": { "step": step } }))
            .send()
            .await;
        if let Err(e) = r {
            eprintln!("progress not posted: {e}");
        }
    }
    Ok(Json(json!({ "delivered": true })))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = Cfg {
        secret: std::env::var("NOTIFY_SECRET")
            .map_err(|_| "set NOTIFY_SECRET (the same as spool's)")?,
        spool_url: std::env::var("SPOOL_URL").unwrap_or_else(|_| "http://127.0.0.1:8787".into()),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
    };
    let app = Router::new().route("/hook", post(hook)).with_state(cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
    println!("webhook receiver on http://127.0.0.1:9000/hook");
    axum::serve(listener, app).await?;
    Ok(())
}
