//! The HTTP API v1 (API.md): routes, auth, errors, SSE and long poll. Holds no task state of its
//! own: every answer comes from the store, every change goes through it.

mod auth;
pub mod error;
mod extract;
pub mod feed;
pub mod limits;
pub mod openapi;
mod queues;
pub mod serve;
mod sse;
mod tasks;

pub use crate::token::{hash_token, new_token};
pub use error::{ApiError, ApiResult};

use crate::clock::Clock;
use crate::config::{Config, MetricsAuth};
use crate::store::Store;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use limits::{Shared, UserLimits};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `/readyz` and the queue depths of `/metrics` are read at most once per this long, however
/// many callers: each is a database round trip (`/readyz` a durable write) that any client may
/// ask for without a token.
const SHARED_RESULT_TTL: Duration = Duration::from_secs(1);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
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
    /// Per-user stream and request-rate limits.
    pub limits: Arc<UserLimits>,
    /// The last `/readyz` answer, shared for a second.
    ready: Arc<Shared<Result<(), ApiError>>>,
    /// When queue depths were last read for `/metrics`.
    depths: Arc<Shared<()>>,
    /// Task changes of every process, for `/v1/events`.
    pub feed: Arc<feed::ChangeFeed>,
}

impl AppState {
    /// State for a router.
    pub fn new(
        store: Arc<dyn Store>,
        cfg: Arc<Config>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Self {
        Self {
            jwt: auth::JwtState::from_config(&cfg),
            feed: feed::ChangeFeed::new(
                store.clone(),
                Duration::from_millis(cfg.worker.poll_interval_ms),
                shutdown.clone(),
            ),
            store,
            clock,
            shutdown,
            limits: Arc::new(UserLimits::new(cfg.limits.clone())),
            metrics,
            cfg,
            users: Arc::new(auth::UserCache::default()),
            ready: Arc::new(Shared::new(SHARED_RESULT_TTL)),
            depths: Arc::new(Shared::new(SHARED_RESULT_TTL)),
        }
    }
}

/// The whole API as a router (with `/metrics` unless `http.metrics_listen` moves it to its own
/// listener, see [`metrics_router`]).
pub fn router(state: AppState) -> Router {
    let r = Router::new();
    let r = if state.cfg.http.metrics_listen.is_none() {
        r.route("/metrics", get(metrics_text))
    } else {
        r
    };
    r.route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/batch", post(tasks::create_batch))
        .route("/v1/tasks/{id}", get(tasks::get_one))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/tasks/{id}/retry", post(tasks::retry))
        .route(
            "/v1/tasks/{id}/messages",
            get(tasks::messages).post(tasks::append_message),
        )
        .route("/v1/tasks/{id}/events", get(sse::task_events))
        .route("/v1/tasks/{id}/checkpoint", put(tasks::put_checkpoint))
        .route("/v1/tasks/{id}/stream_token", post(tasks::stream_token))
        .route("/v1/events", get(sse::all_events))
        .route("/v1/queues", get(queues::list))
        .route("/v1/queues/{name}/pause", post(queues::pause))
        .route("/v1/queues/{name}/resume", post(queues::resume))
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Only `/metrics`, for the listener of `http.metrics_listen`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
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

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "service", security(()),
    responses((status = 200, description = "the OpenAPI 3.1 document of the API", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
        .into_response()
}

/// The dashboard: one HTML page (CSS and JavaScript inline, no build step, no CDN). It asks for
/// a token and then uses the API like any client, so it shows only what that token may see.
///
/// It holds a token, so it is served with a strict policy: only its own inline script runs
/// (allowed by hash, not `'unsafe-inline'`), it talks only to this origin, and no other site may
/// frame it or have its responses sniffed into another type.
#[utoipa::path(get, path = "/", tag = "service", security(()),
    responses((status = 200, description = "the dashboard page", content_type = "text/html", body = String)))]
async fn dashboard() -> Response {
    use axum::http::header;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, dashboard_csp()),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        DASHBOARD,
    )
        .into_response()
}

const DASHBOARD: &str = include_str!("dashboard.html");

/// The dashboard's Content-Security-Policy, with the hash of its one inline script.
fn dashboard_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let script = DASHBOARD
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map(|(body, _)| body)
            .unwrap_or("");
        let hash = base64_std(&Sha256::digest(script.as_bytes()));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'"
        )
    })
}

/// Standard base64 with padding (for a CSP hash source).
fn base64_std(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Liveness: `ok` while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "service", security(()),
    responses((status = 200, description = "the process runs", content_type = "text/plain", body = String, example = "ok")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database takes a write.
///
/// One durable write per second at most, however many callers: concurrent callers share the
/// check in flight, later ones its success until it is a second old. A failure is answered to
/// the callers that waited for it and not kept, so readiness comes back with the database.
#[utoipa::path(get, path = "/readyz", tag = "service", security(()),
    responses((status = 200, description = "the database takes a write", content_type = "text/plain", body = String, example = "ok"),
        (status = 503, description = "the database does not take a write", body = openapi::ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait")))))]
async fn readyz(State(st): State<AppState>) -> Response {
    let store = st.store.clone();
    let now = st.clock.now();
    let r = st
        .ready
        .get_or(
            || async move { store.ping_write(now).await.map_err(ApiError::from) },
            // A failure is not kept: readiness returns with the first write that succeeds.
            Result::is_ok,
        )
        .await;
    match r {
        Ok(()) => "ok".into_response(),
        Err(e) => e.into_response(),
    }
}

/// Prometheus text. Kind and queue labels are only names the operator set up (see
/// [`crate::labels`]); queue depths and the drill status are read at most once a second.
#[utoipa::path(get, path = "/metrics", tag = "service", security(()),
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
        (status = 404, description = "metrics are turned off (http.metrics = false)", body = openapi::ErrorBody)))]
async fn metrics_text(State(st): State<AppState>, parts: axum::http::request::Parts) -> Response {
    let Some(handle) = st.metrics.as_ref().filter(|_| st.cfg.http.metrics) else {
        return ApiError::NotFound("metrics are turned off".into()).into_response();
    };
    if st.cfg.http.metrics_auth == MetricsAuth::Admin {
        let mut parts = parts;
        if let Err(e) =
            <extract::Admin as axum::extract::FromRequestParts<AppState>>::from_request_parts(
                &mut parts, &st,
            )
            .await
        {
            return e.into_response();
        }
    }
    st.depths.get_or(|| refresh_gauges(&st), |_| true).await;
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

/// Reads queue depths and the last drill into their gauges.
async fn refresh_gauges(st: &AppState) {
    if let Ok(qs) = st
        .store
        .queue_stats(configured_queues(&st.cfg), st.clock.now())
        .await
    {
        // Queues nobody set up are summed under `other`: one series each, however many.
        let mut by: std::collections::BTreeMap<(String, &'static str), u64> = Default::default();
        for q in qs {
            let label = crate::labels::queue(&q.name);
            for (status, n) in [
                ("pending", q.pending),
                ("scheduled", q.scheduled),
                ("running", q.running),
                ("completed", q.completed),
                ("failed", q.failed),
                ("canceled", q.canceled),
            ] {
                *by.entry((label.clone(), status)).or_default() += n;
            }
        }
        for ((queue, status), n) in by {
            metrics::gauge!("spool_queue_depth", "queue" => queue, "status" => status)
                .set(n as f64);
        }
    }
    // Restore drills are of SQLite replicas; a PostgreSQL store has none.
    let db = st.cfg.sqlite_path().map(Path::to_path_buf);
    if let Ok(Some(d)) =
        tokio::task::spawn_blocking(move || db.and_then(|db| crate::drill::last_at(&db))).await
    {
        metrics::gauge!("spool_last_drill_passed").set(if d.passed { 1.0 } else { 0.0 });
        if let Some(t) = d.last_pass_at_ms {
            metrics::gauge!("spool_last_good_drill_timestamp_seconds").set(t as f64 / 1000.0);
        }
    }
}

/// Queues named by the config (worked here or configured).
pub fn configured_queues(cfg: &Config) -> Vec<String> {
    let mut v: Vec<String> = cfg.queues.keys().cloned().collect();
    v.extend(cfg.worker.queues.iter().cloned());
    v.sort();
    v.dedup();
    v
}
