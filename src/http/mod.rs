//! The HTTP API v1 (API.md): routes, auth, errors, SSE and long poll. Holds no task state of its
//! own: every answer comes from the store, every change goes through it.

mod auth;
pub mod error;
mod extract;
pub mod openapi;
mod queues;
mod sse;
mod tasks;

pub use crate::token::{hash_token, new_token};
pub use error::{ApiError, ApiResult};

use crate::clock::Clock;
use crate::config::Config;
use crate::store::SqliteStore;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<SqliteStore>,
    /// The configuration.
    pub cfg: Arc<Config>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Cancelled when the server stops: long polls and streams end.
    pub shutdown: CancellationToken,
    /// Prometheus text renderer, when metrics are on.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Users by token hash, each trusted for a second (a revoked token stops within that).
    users: Arc<auth::UserCache>,
    /// JWT checking (`[auth.jwt]`).
    jwt: auth::JwtState,
}

impl AppState {
    /// State for a router.
    pub fn new(
        store: Arc<SqliteStore>,
        cfg: Arc<Config>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Self {
        Self {
            jwt: auth::JwtState::from_config(&cfg),
            store,
            cfg,
            clock,
            shutdown,
            metrics,
            users: Arc::new(auth::UserCache::default()),
        }
    }
}

/// The whole API as a router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/batch", post(tasks::create_batch))
        .route("/v1/tasks/{id}", get(tasks::get_one))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/tasks/{id}/retry", post(tasks::retry))
        .route(
            "/v1/tasks/{id}/messages",
            get(tasks::messages).post(tasks::append_message),
        )
        .route("/v1/tasks/{id}/events", get(sse::task_events))
        .route("/v1/events", get(sse::all_events))
        .route("/v1/queues", get(queues::list))
        .route("/v1/queues/{name}/pause", post(queues::pause))
        .route("/v1/queues/{name}/resume", post(queues::resume))
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
        .into_response()
}

/// The dashboard: one HTML page (CSS and JavaScript inline, no build step, no CDN). It asks for
/// a token and then uses the API like any client, so it shows only what that token may see.
async fn dashboard() -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(st): State<AppState>) -> Response {
    match st.store.ping_write(st.clock.now()).await {
        Ok(()) => "ok".into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    let Some(handle) = st.metrics.as_ref().filter(|_| st.cfg.http.metrics) else {
        return ApiError::NotFound("metrics are turned off".into()).into_response();
    };
    if let Ok(qs) = st
        .store
        .queue_stats(configured_queues(&st.cfg), st.clock.now())
        .await
    {
        for q in qs {
            for (status, n) in [
                ("pending", q.pending),
                ("scheduled", q.scheduled),
                ("running", q.running),
                ("completed", q.completed),
                ("failed", q.failed),
                ("canceled", q.canceled),
            ] {
                metrics::gauge!("spool_queue_depth", "queue" => q.name.clone(), "status" => status)
                    .set(n as f64);
            }
        }
    }
    if let Ok(Some(d)) = st.store.read_raw(|c| Ok(crate::drill::last(c)?)).await {
        metrics::gauge!("spool_last_drill_passed").set(if d.passed { 1.0 } else { 0.0 });
        if let Some(t) = d.last_pass_at_ms {
            metrics::gauge!("spool_last_good_drill_timestamp_seconds").set(t as f64 / 1000.0);
        }
    }
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        handle.render(),
    )
        .into_response()
}

/// Queues named by the config (worked here or configured).
pub fn configured_queues(cfg: &Config) -> Vec<String> {
    let mut v: Vec<String> = cfg.queues.keys().cloned().collect();
    v.extend(cfg.worker.queues.iter().cloned());
    v.sort();
    v.dedup();
    v
}
