//! Webhook kinds against a real receiver on 127.0.0.1: signatures, the retry / backoff / give-up
//! paths, Retry-After, a hanging receiver, and progress posted with the per-attempt task token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};
use spool::app::{EnqueueOptions, Spool};
use spool::executor::webhook::verify;
use spool::task::TaskStatus;
use spool::Config;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "s3cret-for-tests";

#[derive(Clone, Debug)]
struct Seen {
    task_id: String,
    attempt: String,
    signature_ok: bool,
    token: String,
    wake: String,
    at: Instant,
    body: Value,
    /// spool's end of the connection the request came on.
    peer: SocketAddr,
}

#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// What to answer, by the number of the request (the last entry repeats).
    script: Arc<Vec<(u16, Option<&'static str>, &'static str)>>,
    hang: Duration,
    /// spool's base URL: the receiver posts progress there with its task token.
    spool_base: Arc<Mutex<String>>,
}

async fn hook(
    State(r): State<Receiver>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let seen = Seen {
        task_id: h("spool-task-id"),
        attempt: h("spool-attempt"),
        signature_ok: verify(
            SECRET,
            &h("spool-timestamp"),
            &h("spool-signature"),
            &body,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            60,
        )
        .is_ok()
            && h("content-type") == "application/json",
        token: h("spool-task-token"),
        wake: h("spool-wake"),
        at: Instant::now(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        peer,
    };
    let n = {
        let mut s = r.seen.lock().unwrap();
        s.push(seen.clone());
        s.len()
    };
    if !r.hang.is_zero() {
        tokio::time::sleep(r.hang).await;
    }
    let (code, retry_after, reply) = r.script[(n - 1).min(r.script.len() - 1)];
    if reply == "progress" {
        // Post progress while the attempt runs, with the task token.
        let base = r.spool_base.lock().unwrap().clone();
        let c = reqwest::Client::new();
        for i in 0..3 {
            let resp = c
                .post(format!("{base}/v1/tasks/{}/messages", seen.task_id))
                .bearer_auth(&seen.token)
                .json(&json!({"kind": "progress", "content": {"step": i}}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201);
        }
    }
    let mut resp = (StatusCode::from_u16(code).unwrap(), reply.to_string()).into_response();
    if let Some(ra) = retry_after {
        resp.headers_mut()
            .insert("retry-after", ra.parse().unwrap());
    }
    resp
}

async fn start_receiver(
    script: Vec<(u16, Option<&'static str>, &'static str)>,
    hang: Duration,
) -> (Receiver, String) {
    let r = Receiver {
        seen: Arc::new(Mutex::new(vec![])),
        script: Arc::new(script),
        hang,
        spool_base: Arc::new(Mutex::new(String::new())),
    };
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    (r, format!("http://{addr}/hook"))
}

struct Harness {
    spool: Arc<Spool>,
    base: String,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start_spool(url: &str, kind_extra: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[worker]\npoll_interval_ms = 50\n[kinds.hook]\nwebhook = {url:?}\nsecret_env = \"HOOK_SECRET\"\nretry_base_ms = 50\nretry_max_ms = 2000\n{kind_extra}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let cfg = Config::load_with_env(Some(&path), &|k| {
        (k == "HOOK_SECRET").then(|| SECRET.to_string())
    })
    .unwrap();
    let spool = Arc::new(Spool::builder().config(cfg).build().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let handle = {
        let s = spool.clone();
        let stop = stop.clone();
        tokio::spawn(async move { s.serve(listener, stop).await.unwrap() })
    };
    Harness {
        spool,
        base,
        stop,
        handle,
        _dir: dir,
    }
}

impl Harness {
    async fn wait_terminal(&self, id: spool::TaskId) -> spool::Task {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.spool.store().task_get(id, None).await.unwrap();
            if t.status.is_terminal() {
                return t;
            }
            assert!(Instant::now() < end, "task not finished: {t:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.handle.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_post_retries_500_honours_retry_after_on_429_then_completes() {
    let (r, url) = start_receiver(
        vec![
            (500, None, "oops"),
            (429, Some("1"), "slow down"),
            (200, None, "{\"ok\": true}"),
        ],
        Duration::ZERO,
    )
    .await;
    let h = start_spool(&url, "max_attempts = 5").await;
    let t = h
        .spool
        .enqueue("hook", json!({"to": "+1555"}))
        .await
        .unwrap();
    let done = h.wait_terminal(t.id).await;
    assert_eq!((done.status, done.attempts), (TaskStatus::Completed, 3));
    assert_eq!(done.result, Some(json!({"ok": true})));
    let seen = r.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (i, s) in seen.iter().enumerate() {
        assert!(s.signature_ok, "request {i} signature");
        assert_eq!(s.task_id, t.id.to_string());
        assert_eq!(s.attempt, (i + 1).to_string());
        assert_eq!(s.body["payload"], json!({"to": "+1555"}));
        assert!(s.token.starts_with("spool_task_"));
    }
    assert_ne!(seen[0].token, seen[1].token, "a token per attempt");
    // Retry-After: 1 replaced the 25..100 ms backoff (it is capped at retry_max_ms = 2000).
    assert!(
        seen[2].at - seen[1].at >= Duration::from_millis(900),
        "{:?}",
        seen[2].at - seen[1].at
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_fails_at_once_and_repeated_500s_give_up() {
    let (r404, url404) = start_receiver(vec![(404, None, "no such hook")], Duration::ZERO).await;
    let h = start_spool(&url404, "max_attempts = 5").await;
    let t = h.spool.enqueue("hook", json!(null)).await.unwrap();
    let done = h.wait_terminal(t.id).await;
    assert_eq!((done.status, done.attempts), (TaskStatus::Failed, 1));
    assert!(done.last_error.unwrap().contains("404"));
    assert_eq!(r404.seen.lock().unwrap().len(), 1);
    h.stop().await;

    let (r500, url500) = start_receiver(vec![(503, None, "down")], Duration::ZERO).await;
    let h = start_spool(&url500, "max_attempts = 3").await;
    let t = h.spool.enqueue("hook", json!(null)).await.unwrap();
    let done = h.wait_terminal(t.id).await;
    assert_eq!((done.status, done.attempts), (TaskStatus::Failed, 3));
    let e = done.last_error.unwrap();
    assert!(e.contains("503") && e.contains("giving up"), "{e}");
    assert_eq!(r500.seen.lock().unwrap().len(), 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_hangs_past_the_timeout_fails_the_attempt() {
    let (_r, url) = start_receiver(vec![(200, None, "late")], Duration::from_secs(5)).await;
    let h = start_spool(&url, "max_attempts = 1\ntimeout_ms = 300").await;
    let started = Instant::now();
    let t = h.spool.enqueue("hook", json!(null)).await.unwrap();
    let done = h.wait_terminal(t.id).await;
    assert_eq!(done.status, TaskStatus::Failed);
    assert!(done.last_error.unwrap().contains("timed out"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not wait for the hanging receiver"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_posts_progress_with_its_task_token_which_dies_with_the_attempt() {
    let (r, url) = start_receiver(vec![(200, None, "progress")], Duration::ZERO).await;
    let h = start_spool(&url, "max_attempts = 1").await;
    *r.spool_base.lock().unwrap() = h.base.clone();
    let t = h.spool.enqueue("hook", json!(null)).await.unwrap();
    let other = h
        .spool
        .enqueue_with(
            "x",
            json!(null),
            EnqueueOptions {
                queue: Some("idle".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let done = h.wait_terminal(t.id).await;
    assert_eq!(done.status, TaskStatus::Completed);
    // The 200 body "progress" is not JSON: stored as a string.
    assert_eq!(done.result, Some(json!("progress")));
    let msgs = h
        .spool
        .store()
        .message_list(t.id, 0, 10, None)
        .await
        .unwrap();
    let steps: Vec<Value> = msgs.iter().map(|m| m.content["step"].clone()).collect();
    assert_eq!(steps, vec![json!(0), json!(1), json!(2)]);

    let token = r.seen.lock().unwrap()[0].token.clone();
    let c = reqwest::Client::new();
    // After the attempt ended: 401.
    let late = c
        .post(format!("{}/v1/tasks/{}/messages", h.base, t.id))
        .bearer_auth(&token)
        .json(&json!({"kind": "progress", "content": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 401);
    // Never another task's: 401.
    let wrong = c
        .post(format!("{}/v1/tasks/{}/messages", h.base, other.id))
        .bearer_auth(&token)
        .json(&json!({"kind": "progress", "content": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // And no other route.
    let get = c
        .get(format!("{}/v1/tasks/{}", h.base, t.id))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 401);
    assert_eq!(
        h.spool
            .store()
            .message_list(t.id, 0, 10, None)
            .await
            .unwrap()
            .len(),
        3
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_tasks_one_after_another_reuse_one_connection() {
    // One HTTP client is shared by every webhook attempt, so a receiver sees keep-alive
    // connections reused rather than a TCP (and, over HTTPS, TLS) handshake per task.
    let (r, url) = start_receiver(vec![(200, None, "{}")], Duration::ZERO).await;
    let h = start_spool(&url, "").await;
    for i in 0..20 {
        let t = h.spool.enqueue("hook", json!({ "i": i })).await.unwrap();
        assert_eq!(h.wait_terminal(t.id).await.status, TaskStatus::Completed);
    }
    let seen = r.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20);
    let mut peers: Vec<SocketAddr> = seen.iter().map(|s| s.peer).collect();
    peers.sort();
    peers.dedup();
    assert!(
        peers.len() <= 2,
        "20 sequential webhook tasks opened {} connections: {peers:?}",
        peers.len()
    );
    h.stop().await;
}

/// A server that counts its requests and answers 200 `{"internal": "secret"}`: what a
/// redirect must never reach.
async fn start_internal() -> (Arc<std::sync::atomic::AtomicUsize>, String) {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (StatusCode::OK, "{\"internal\": \"secret\"}")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (hits, format!("http://{addr}/internal"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_a_failed_attempt_and_never_followed() {
    let (hits, internal) = start_internal().await;
    let location: &'static str = Box::leak(internal.clone().into_boxed_str());
    // The receiver answers 307 with Location: the internal service, every time.
    let app = Router::new().route(
        "/hook",
        post(move || async move {
            let mut r = (StatusCode::TEMPORARY_REDIRECT, "").into_response();
            r.headers_mut()
                .insert("location", location.parse().unwrap());
            r
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let h = start_spool(&url, "max_attempts = 2").await;
    let t = h.spool.enqueue("hook", json!(null)).await.unwrap();
    let done = h.wait_terminal(t.id).await;
    assert_eq!((done.status, done.attempts), (TaskStatus::Failed, 2));
    assert_eq!(
        done.result, None,
        "the internal answer must not become the result"
    );
    let err = done.last_error.unwrap();
    assert!(err.contains("307"), "{err}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "redirect followed"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_url_never_reaches_last_error() {
    // A Slack-style URL whose path is the secret, on a port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/services/T000/B000/XXXXsecretpath");
    let h = start_spool(&url, "max_attempts = 1").await;
    let t = h.spool.enqueue("hook", json!(null)).await.unwrap();
    let done = h.wait_terminal(t.id).await;
    assert_eq!(done.status, TaskStatus::Failed);
    let err = done.last_error.unwrap();
    assert!(err.contains("webhook request failed"), "{err}");
    assert!(
        !err.contains("secretpath") && !err.contains("127.0.0.1"),
        "URL leaked: {err}"
    );
    let msgs = h
        .spool
        .store()
        .message_list(t.id, 0, 100, None)
        .await
        .unwrap();
    for m in msgs {
        assert!(
            !m.content.to_string().contains("secretpath"),
            "URL leaked in {m:?}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_names_the_owner_and_is_signed_with_its_timestamp() {
    let (r, url) = start_receiver(vec![(200, None, "{}")], Duration::ZERO).await;
    let h = start_spool(&url, "").await;
    let t = h
        .spool
        .enqueue_with(
            "hook",
            json!({"n": 1}),
            EnqueueOptions {
                user: Some("alice".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let done = h.wait_terminal(t.id).await;
    assert_eq!(done.status, TaskStatus::Completed);
    let seen = r.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].signature_ok);
    assert_eq!(seen[0].body["user"], json!("alice"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_with_a_wait_parks_the_task_until_its_owner_answers() {
    let (r, url) = start_receiver(
        vec![
            (
                202,
                None,
                "{\"wait\": {\"for\": \"message\", \"timeout_ms\": 3600000}}",
            ),
            (200, None, "{\"answered\": true}"),
        ],
        Duration::ZERO,
    )
    .await;
    let h = start_spool(&url, "max_attempts = 1").await;
    let t = h.spool.enqueue("hook", json!({"q": "?"})).await.unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let t = h.spool.store().task_get(t.id, None).await.unwrap();
        if t.status == TaskStatus::Waiting {
            break t;
        }
        assert!(Instant::now() < end, "the task never waited: {t:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(waiting.attempts, 0, "a wait spends no attempt");
    h.spool
        .store()
        .message_insert(
            t.id,
            "answer".into(),
            json!("yes"),
            spool::store::MessageCheck::User(None),
            spool::clock::Clock::now(&spool::SystemClock),
        )
        .await
        .unwrap();
    let done = h.wait_terminal(t.id).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    assert_eq!(done.result, Some(json!({"answered": true})));
    let seen = r.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].wake.as_str(), seen[1].wake.as_str()),
        ("", "message")
    );
    assert_eq!(seen[1].attempt, "1", "max_attempts 1 still had its attempt");
    h.stop().await;
}
