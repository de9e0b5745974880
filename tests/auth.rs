//! Authentication against a real `spool serve`: task tokens that live and die with their claim,
//! revoking and listing tokens, JWTs of an identity provider (a JWKS served here, on 127.0.0.1,
//! with a key rotation; and HS256), users owned by id, private data files, racing first starts
//! and the `Bearer` scheme in any case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing;
use axum::{Json, Router};
use base64::Engine;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::Client;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::PrivateKey;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HOOK_SECRET: &str = "hook-secret-for-auth-tests";

fn start(extra: &str, envs: &[(&str, &str)]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), extra);
    let srv = serve(&cfg, envs);
    (dir, srv)
}

async fn call(
    c: &Client,
    method: reqwest::Method,
    url: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = c.request(method, url);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let st = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let text = resp.text().await.unwrap();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(c: &Client, url: &str, token: &str) -> (StatusCode, Value) {
    call(
        c,
        reqwest::Method::GET,
        url,
        Some(&format!("Bearer {token}")),
        None,
    )
    .await
}

async fn post(c: &Client, url: &str, token: &str, body: Value) -> (StatusCode, Value) {
    call(
        c,
        reqwest::Method::POST,
        url,
        Some(&format!("Bearer {token}")),
        Some(body),
    )
    .await
}

fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn assert_401(what: &str, (st, body): &(StatusCode, Value), reason: &str) {
    assert_eq!(*st, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    assert!(
        message(body).contains(reason),
        "{what}: {body} should say {reason:?}"
    );
}

async fn task_status(c: &Client, srv: &Server, id: &str) -> Value {
    get(c, &srv.url(&format!("/v1/tasks/{id}")), &srv.token)
        .await
        .1
}

// ---- task tokens ------------------------------------------------------------------------------

/// A webhook receiver: records each attempt's task token; the first request fails at once, later
/// ones wait for `release`.
#[derive(Clone, Default)]
struct Hook {
    tokens: Arc<Mutex<Vec<String>>>,
    release: Arc<tokio::sync::Notify>,
    fail_first: bool,
}

async fn hook(State(h): State<Hook>, headers: HeaderMap) -> StatusCode {
    let token = headers
        .get("spool-task-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let n = {
        let mut t = h.tokens.lock().unwrap();
        t.push(token);
        t.len()
    };
    if h.fail_first && n == 1 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    h.release.notified().await;
    StatusCode::OK
}

async fn start_hook(fail_first: bool) -> (Hook, String) {
    let h = Hook {
        fail_first,
        ..Default::default()
    };
    let app = Router::new()
        .route("/hook", routing::post(hook))
        .with_state(h.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (h, format!("http://{addr}/hook"))
}

async fn nth_token(h: &Hook, n: usize) -> String {
    eventually(
        Duration::from_secs(20),
        "the receiver to get a task token",
        || async { h.tokens.lock().unwrap().get(n).cloned() },
    )
    .await
}

async fn post_progress(c: &Client, srv: &Server, id: &str, token: &str) -> (StatusCode, Value) {
    post(
        c,
        &srv.url(&format!("/v1/tasks/{id}/messages")),
        token,
        json!({"kind": "progress", "content": {"pct": 50}}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_tasks_old_task_token_is_refused_and_every_token_ends_with_its_attempt() {
    let (h, url) = start_hook(true).await;
    let (_dir, srv) = start(
        &format!(
            "[worker]\npoll_interval_ms = 50\n[kinds.hook]\nwebhook = {url:?}\n\
             secret_env = \"HOOK_SECRET\"\nmax_attempts = 1\n"
        ),
        &[("HOOK_SECRET", HOOK_SECRET)],
    );
    let c = client();
    let (st, t) = post(
        &c,
        &srv.url("/v1/tasks"),
        &srv.token,
        json!({"kind": "hook"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    let id = t["id"].as_str().unwrap().to_string();

    // Attempt 1 fails; its token dies with it.
    let old = nth_token(&h, 0).await;
    eventually(Duration::from_secs(20), "the task to fail", || async {
        (task_status(&c, &srv, &id).await["status"] == "failed").then_some(())
    })
    .await;
    assert_401(
        "the token of a failed attempt",
        &post_progress(&c, &srv, &id, &old).await,
        "ended",
    );

    // Retried: a new attempt 1 runs (held by the receiver). The old attempt 1's token is refused.
    let (st, t) = post(
        &c,
        &srv.url(&format!("/v1/tasks/{id}/retry")),
        &srv.token,
        json!({}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let new = nth_token(&h, 1).await;
    assert_ne!(old, new);
    let t = task_status(&c, &srv, &id).await;
    assert_eq!(
        (t["status"].as_str(), t["attempts"].as_u64()),
        (Some("running"), Some(1)),
        "{t}"
    );
    assert_401(
        "attempt 1's token during the retried attempt 1",
        &post_progress(&c, &srv, &id, &old).await,
        "ended",
    );
    let (st, m) = post_progress(&c, &srv, &id, &new).await;
    assert_eq!(
        st,
        StatusCode::CREATED,
        "the running attempt's own token: {m}"
    );

    // The attempt completes: its token goes with it.
    h.release.notify_one();
    eventually(Duration::from_secs(20), "the task to complete", || async {
        (task_status(&c, &srv, &id).await["status"] == "completed").then_some(())
    })
    .await;
    assert_401(
        "the token of a completed attempt",
        &post_progress(&c, &srv, &id, &new).await,
        "ended",
    );
    let left: i64 = open_db(&srv.dir)
        .query_row("SELECT count(*) FROM task_tokens", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "task tokens outlived their attempts");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_token_is_refused_once_its_lease_has_run_out() {
    let (h, url) = start_hook(false).await;
    // The server runs no workers (and so rescues no lease); a separate worker process runs the
    // attempt and is killed while it holds the lease.
    let (_dir, srv) = start(
        &format!(
            "[worker]\nconcurrency = 0\nlease_ms = 1000\npoll_interval_ms = 50\n\
             [kinds.hook]\nwebhook = {url:?}\nsecret_env = \"HOOK_SECRET\"\n"
        ),
        &[("HOOK_SECRET", HOOK_SECRET)],
    );
    let c = client();
    let (st, t) = post(
        &c,
        &srv.url("/v1/tasks"),
        &srv.token,
        json!({"kind": "hook"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    let mut worker = spawn(
        &["work"],
        &srv.config,
        &[
            ("HOOK_SECRET", HOOK_SECRET),
            ("SPOOL_WORKER_CONCURRENCY", "2"),
        ],
    );
    let token = nth_token(&h, 0).await;
    let (st, m) = post_progress(&c, &srv, &id, &token).await;
    assert_eq!(st, StatusCode::CREATED, "while the lease is held: {m}");

    worker.kill9();
    let refused = eventually(
        Duration::from_secs(15),
        "the token to be refused",
        || async {
            let r = post_progress(&c, &srv, &id, &token).await;
            (r.0 == StatusCode::UNAUTHORIZED).then_some(r)
        },
    )
    .await;
    assert_401("a token past its lease", &refused, "run out");
    // Refused by the lease, not because the attempt was ended by someone.
    assert_eq!(task_status(&c, &srv, &id).await["status"], "running");
    h.release.notify_waiters();
}

// ---- revoking and listing tokens --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_by_a_live_server_within_a_second_or_two() {
    let (_dir, srv) = start("[worker]\nconcurrency = 0\n", &[]);
    let c = client();
    let alice = srv.user_token("alice", false);
    let alice2 = srv.another_token("alice", false);
    let bob = srv.user_token("bob", false);
    let carol = srv.user_token("carol", false);
    for t in [&alice, &alice2, &bob, &carol] {
        assert_eq!(get(&c, &srv.url("/v1/tasks"), t).await.0, StatusCode::OK);
    }

    // The list shows ids, users and hash prefixes, never a token.
    let text = srv.cli_ok(&["token", "list"]);
    let listed: Value = serde_json::from_str(&srv.cli_ok(&["token", "list", "--json"])).unwrap();
    for t in [&alice, &alice2, &bob, &carol, &srv.token] {
        assert!(
            !text.contains(t.as_str()),
            "token list shows a token:\n{text}"
        );
        let prefix = &spool::http::hash_token(t)[..12];
        assert!(text.contains(prefix), "{text}");
    }
    assert!(!listed.to_string().contains("spool_"), "{listed}");
    assert_eq!(listed.as_array().unwrap().len(), 5, "{listed}");
    let bob_id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["user"] == "bob")
        .unwrap()["id"]
        .as_i64()
        .unwrap();

    // Revoked from another process, by user, by id and by token.
    let t0 = Instant::now();
    assert_eq!(
        srv.cli_ok(&["token", "revoke", "--user", "alice"]),
        "revoked 2 tokens"
    );
    srv.cli_ok(&["token", "revoke", "--id", &bob_id.to_string()]);
    srv.cli_ok(&["token", "revoke", "--token", &carol]);
    for (who, t) in [
        ("alice", &alice),
        ("alice2", &alice2),
        ("bob", &bob),
        ("carol", &carol),
    ] {
        let r = eventually(
            Duration::from_secs(3),
            "the revoked token to be refused",
            || async {
                let r = get(&c, &srv.url("/v1/tasks"), t).await;
                (r.0 == StatusCode::UNAUTHORIZED).then_some(r)
            },
        )
        .await;
        assert_401(who, &r, "revoked");
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The admin's token was left alone; a second revoke finds nothing.
    assert_eq!(
        get(&c, &srv.url("/v1/tasks"), &srv.token).await.0,
        StatusCode::OK
    );
    let out = srv.cli(&["token", "revoke", "--user", "alice"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token matched"));
    let out = srv.cli(&["token", "revoke"]);
    assert!(!out.status.success(), "revoke with nothing named must fail");
}

// ---- users by id --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_token_for_an_existing_name_needs_existing_and_the_admin_name_is_not_for_others() {
    let (_dir, srv) = start("[worker]\nconcurrency = 0\n", &[]);
    let c = client();
    let bob = srv.user_token("bob", false);
    let (st, t) = post(
        &c,
        &srv.url("/v1/tasks"),
        &bob,
        json!({"kind": "k", "queue": "idle"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");

    // A second `create` of the same name is refused, clearly, and adds nothing.
    let out = srv.cli(&["token", "create", "--user", "bob"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("--existing"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    // With --existing the new token is bob's and sees bob's task.
    let bob2 = srv.another_token("bob", false);
    let (st, list) = get(&c, &srv.url("/v1/tasks"), &bob2).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["tasks"][0]["id"], t["id"], "{list}");
    // --existing for a name nobody has is refused; admin belongs to the user, not the token.
    assert_eq!(
        srv.cli(&["token", "create", "--existing", "--user", "nobody"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        srv.cli(&["token", "create", "--existing", "--admin", "--user", "bob"])
            .status
            .code(),
        Some(2)
    );

    // Nobody else becomes `admin`: not a new user, not a non-admin token of the admin.
    let (st, _) = post(
        &c,
        &srv.url("/v1/tasks"),
        &srv.token,
        json!({"kind": "secret", "queue": "idle"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    for args in [
        &["token", "create", "--user", "admin"][..],
        &["token", "create", "--user", "admin", "--admin"],
        &["token", "create", "--user", "admin", "--existing"],
    ] {
        let out = srv.cli(args);
        assert_eq!(out.status.code(), Some(2), "spool {args:?} was accepted");
    }
    let admin2 = srv.another_token("admin", true);
    let (_, all) = get(&c, &srv.url("/v1/tasks"), &admin2).await;
    assert_eq!(all["tasks"].as_array().unwrap().len(), 2, "{all}");
    // A user named like another sees only their own tasks.
    let (_, mine) = get(&c, &srv.url("/v1/tasks"), &bob).await;
    assert_eq!(mine["tasks"].as_array().unwrap().len(), 1, "{mine}");
}

#[test]
fn the_admin_name_is_reserved_for_an_admin_even_before_the_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let out = spawn_cli(&cfg, &["token", "create", "--user", "admin"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved"));
}

fn spawn_cli(cfg: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(spool_bin())
        .args(args)
        .arg("--config")
        .arg(cfg)
        .current_dir(cfg.parent().unwrap())
        .output()
        .unwrap()
}

// ---- files --------------------------------------------------------------------------------------

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_data_dir_and_database_files_are_private_and_looser_ones_are_tightened() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[worker]\nconcurrency = 0\n");
    let mut srv = serve(&cfg, &[]);
    let data = dir.path().join("data");
    assert_eq!(mode(&data), 0o700, "data dir");
    for f in ["spool.db", "spool.db-wal", "spool.db-shm", "admin.token"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    srv.proc.terminate(Duration::from_secs(30));

    // An older install's looser modes are tightened on the next start of any command.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        data.join("spool.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = spawn_cli(&cfg, &["migrate"]);
    assert!(out.status.success());
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("spool.db")), 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_first_starts_racing_leave_a_token_the_database_knows() {
    let c = client();
    for round in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), "[worker]\nconcurrency = 0\n");
        let procs = [spawn(&["serve"], &cfg, &[]), spawn(&["serve"], &cfg, &[])];
        let mut bases = Vec::new();
        for p in &procs {
            let deadline = Instant::now() + Duration::from_secs(30);
            let base = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match p.lines.recv_timeout(left) {
                    Ok(l) if l.starts_with("listening on ") => {
                        break l["listening on ".len()..].to_string()
                    }
                    Ok(_) => continue,
                    Err(_) => panic!("round {round}: serve did not start: {}", p.stderr()),
                }
            };
            bases.push(base);
        }
        let token = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap();
        let token = token.trim();
        for b in &bases {
            let (st, body) = get(&c, &format!("{b}/v1/tasks"), token).await;
            assert_eq!(
                st,
                StatusCode::OK,
                "round {round}: admin.token is unknown: {body}"
            );
        }
        let tokens: i64 = open_db(dir.path())
            .query_row("SELECT count(*) FROM tokens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tokens, 1, "round {round}: both starts stored a token");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("data"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

// ---- the scheme ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_taken_in_any_case() {
    let (_dir, srv) = start("[worker]\nconcurrency = 0\n", &[]);
    let c = client();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (st, body) = call(
            &c,
            reqwest::Method::GET,
            &srv.url("/v1/tasks"),
            Some(&format!("{scheme} {}", srv.token)),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{scheme}: {body}");
    }
    for bad in [
        format!("Basic {}", srv.token),
        "Bearer".to_string(),
        format!("Bearer{}", srv.token),
    ] {
        let (st, _) = call(
            &c,
            reqwest::Method::GET,
            &srv.url("/v1/tasks"),
            Some(&bad),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{bad}");
    }
}

// ---- JWTs ---------------------------------------------------------------------------------------

const ISSUER: &str = "https://idp.example.test";
const AUDIENCE: &str = "spool";

struct RsaKey {
    private: EncodingKey,
    jwk: Value,
}

fn rsa_key(kid: &str) -> RsaKey {
    let mut rng = rand::rng();
    let key = PrivateKey::new(&mut rng, 2048).unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let public = key.to_public_key();
    RsaKey {
        private: EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes()),
        jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                    "n": b64(&public.n_bytes()), "e": b64(&public.e_bytes())}),
    }
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now_s() + 600, "iat": now_s()})
}

fn sign_rs(key: &RsaKey, kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.to_string());
    encode(&h, claims, &key.private).unwrap()
}

/// A JWKS endpoint whose key set the test swaps, counting fetches.
#[derive(Clone, Default)]
struct Jwks {
    doc: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks(State(j): State<Jwks>) -> Json<Value> {
    j.fetches.fetch_add(1, Ordering::SeqCst);
    Json(j.doc.lock().unwrap().clone())
}

async fn start_jwks(keys: &[&RsaKey]) -> (Jwks, String) {
    let j = Jwks::default();
    *j.doc.lock().unwrap() =
        json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    let app = Router::new()
        .route("/jwks.json", routing::get(jwks))
        .route(
            "/moved",
            routing::get(|| async {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, "/jwks.json")],
                )
            }),
        )
        .with_state(j.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (j, format!("http://{addr}/jwks.json"))
}

#[tokio::test(flavor = "multi_thread")]
async fn jwts_from_a_jwks_work_across_a_key_rotation_and_bad_ones_get_401_with_a_reason() {
    let (a, b, stranger) = (rsa_key("key-a"), rsa_key("key-b"), rsa_key("key-x"));
    let (j, url) = start_jwks(&[&a]).await;
    let (_dir, srv) = start(
        &format!(
            "[worker]\nconcurrency = 0\n[auth.jwt]\njwks_url = {url:?}\nissuer = {ISSUER:?}\n\
             audience = {AUDIENCE:?}\nadmin_claim = \"role=admin\"\njwks_min_refresh_ms = 300\n"
        ),
        &[],
    );
    let c = client();
    let tasks = srv.url("/v1/tasks");

    // Key A: the user is made on first sight and owns what it enqueues.
    let ta = sign_rs(&a, "key-a", &claims("user-1"));
    let (st, t) = post(&c, &tasks, &ta, json!({"kind": "k", "queue": "idle"})).await;
    assert_eq!(st, StatusCode::CREATED, "{t}");

    // The provider rotates to key B: a token with the unknown kid makes spool fetch again.
    *j.doc.lock().unwrap() = json!({"keys": [b.jwk.clone()]});
    let tb = sign_rs(&b, "key-b", &claims("user-1"));
    let list = eventually(
        Duration::from_secs(10),
        "key B to be fetched and accepted",
        || async {
            let (st, list) = get(&c, &tasks, &tb).await;
            (st == StatusCode::OK).then_some(list)
        },
    )
    .await;
    assert_eq!(
        list["tasks"][0]["id"], t["id"],
        "the same identity, the same user: {list}"
    );
    // Key A is gone from the set now. (A token seen in the last second is trusted from the cache
    // for that second, so this is a new one: the same claims signed again would be the same.)
    let mut again = claims("user-1");
    again["jti"] = json!("second");
    let ta2 = sign_rs(&a, "key-a", &again);
    assert_401(
        "a rotated-out key",
        &get(&c, &tasks, &ta2).await,
        "unknown key id",
    );

    // Refusals, each with its reason.
    let mut wrong_iss = claims("user-1");
    wrong_iss["iss"] = json!("https://evil.example.test");
    let mut wrong_aud = claims("user-1");
    wrong_aud["aud"] = json!("someone-else");
    let mut expired = claims("user-1");
    expired["exp"] = json!(now_s() - 120);
    let mut early = claims("user-1");
    early["nbf"] = json!(now_s() + 600);
    let mut no_sub = claims("user-1");
    no_sub.as_object_mut().unwrap().remove("sub");
    for (what, token, reason) in [
        (
            "a bad signature",
            sign_rs(&stranger, "key-b", &claims("user-1")),
            "bad signature",
        ),
        (
            "a wrong issuer",
            sign_rs(&b, "key-b", &wrong_iss),
            "wrong issuer",
        ),
        (
            "a wrong audience",
            sign_rs(&b, "key-b", &wrong_aud),
            "wrong audience",
        ),
        (
            "an expired token",
            sign_rs(&b, "key-b", &expired),
            "expired",
        ),
        (
            "a token not valid yet",
            sign_rs(&b, "key-b", &early),
            "not valid yet",
        ),
        ("no user claim", sign_rs(&b, "key-b", &no_sub), "\"sub\""),
        ("a mangled token", format!("{tb}x"), "JWT"),
    ] {
        assert_401(what, &get(&c, &tasks, &token).await, reason);
    }
    // An HS256 token signed with the public key's bytes (algorithm confusion) is refused.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims("user-1"),
        &EncodingKey::from_secret(b.jwk["n"].as_str().unwrap().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_401(
        "an HS256 token against a JWKS",
        &get(&c, &tasks, &forged).await,
        "HS256",
    );

    // The admin claim makes an admin; without it the queue routes are 403.
    let mut admin = claims("boss");
    admin["role"] = json!("admin");
    let (st, _) = get(&c, &srv.url("/v1/queues"), &sign_rs(&b, "key-b", &admin)).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = get(&c, &srv.url("/v1/queues"), &tb).await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // A JWT whose subject is `admin` is not the token user `admin`.
    let (st, _) = post(
        &c,
        &tasks,
        &srv.token,
        json!({"kind": "private", "queue": "idle"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, list) = get(&c, &tasks, &sign_rs(&b, "key-b", &claims("admin"))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["tasks"], json!([]), "{list}");

    // Made-up kids cannot make spool hammer the JWKS: at most one fetch per interval.
    let before = j.fetches.load(Ordering::SeqCst);
    let t0 = Instant::now();
    for i in 0..40 {
        let r = get(
            &c,
            &tasks,
            &sign_rs(&b, &format!("bogus-{i}"), &claims("user-1")),
        )
        .await;
        assert_401("a made-up kid", &r, "unknown key id");
    }
    let fetched = j.fetches.load(Ordering::SeqCst) - before;
    let allowed = (t0.elapsed().as_millis() / 300) as usize + 1;
    assert!(
        fetched <= allowed,
        "{fetched} JWKS fetches for 40 bogus kids (allowed {allowed})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hs256_jwts_are_checked_with_the_secret_from_the_environment() {
    let secret = "an-hs256-secret-of-at-least-32-bytes!";
    let (_dir, srv) = start(
        &format!(
            "[worker]\nconcurrency = 0\n[auth.jwt]\nhs256_secret_env = \"SPOOL_TEST_JWT_SECRET\"\n\
             issuer = {ISSUER:?}\naudience = {AUDIENCE:?}\nuser_claim = \"email\"\n\
             admin_claim = \"spool_admin\"\n"
        ),
        &[("SPOOL_TEST_JWT_SECRET", secret)],
    );
    let c = client();
    let tasks = srv.url("/v1/tasks");
    let sign = |claims: &Value, key: &[u8]| {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(key).unwrap(),
        )
        .unwrap()
    };
    let mut me = claims("ignored");
    me["email"] = json!("ann@example.test");
    let (st, body) = get(&c, &tasks, &sign(&me, secret.as_bytes())).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_401(
        "another secret",
        &get(
            &c,
            &tasks,
            &sign(&me, b"not-the-secret-but-just-as-long-!!!!"),
        )
        .await,
        "bad signature",
    );
    let no_email = claims("x");
    assert_401(
        "no user claim",
        &get(&c, &tasks, &sign(&no_email, secret.as_bytes())).await,
        "\"email\"",
    );
    let rs = rsa_key("k");
    assert_401(
        "an RS256 token",
        &get(&c, &tasks, &sign_rs(&rs, "k", &me)).await,
        "HS256",
    );
    // The admin claim, here a boolean.
    me["spool_admin"] = json!(true);
    let (st, _) = get(&c, &srv.url("/v1/queues"), &sign(&me, secret.as_bytes())).await;
    assert_eq!(st, StatusCode::OK);
    me["spool_admin"] = json!("true");
    let (st, _) = get(&c, &srv.url("/v1/queues"), &sign(&me, secret.as_bytes())).await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "only a boolean true makes an admin"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_behind_a_redirect_is_not_followed() {
    let a = rsa_key("key-a");
    let (j, url) = start_jwks(&[&a]).await;
    let moved = url.replace("/jwks.json", "/moved");
    let (_dir, srv) = start(
        &format!(
            "[worker]\nconcurrency = 0\n[auth.jwt]\njwks_url = {moved:?}\nissuer = {ISSUER:?}\n\
             audience = {AUDIENCE:?}\n"
        ),
        &[],
    );
    let c = client();
    let r = get(
        &c,
        &srv.url("/v1/tasks"),
        &sign_rs(&a, "key-a", &claims("user-1")),
    )
    .await;
    assert_401(
        "a JWKS reached only through a redirect",
        &r,
        "could not be fetched",
    );
    assert_eq!(
        j.fetches.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinds_users_tell_token_users_from_jwt_users_of_the_same_name() {
    let secret = "an-hs256-secret-of-at-least-32-bytes!";
    let (_dir, srv) = start(
        &format!(
            "[worker]\nconcurrency = 0\n[auth.jwt]\nhs256_secret_env = \"SPOOL_TEST_JWT_SECRET\"\n\
             issuer = {ISSUER:?}\naudience = {AUDIENCE:?}\n\
             [kinds.deploy]\ncommand = [\"true\"]\nusers = [\"alice\"]\n\
             [kinds.review]\ncommand = [\"true\"]\nusers = [\"jwt:alice\"]\n"
        ),
        &[("SPOOL_TEST_JWT_SECRET", secret)],
    );
    let jwt_alice = encode(
        &Header::new(Algorithm::HS256),
        &claims("alice"),
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap();
    let token_alice = srv.user_token("alice", false);
    let enqueue = |token: String, kind: &'static str| {
        let c = client();
        let url = srv.url("/v1/tasks");
        async move {
            c.post(url)
                .bearer_auth(token)
                .json(&json!({"kind": kind}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        enqueue(token_alice.clone(), "deploy").await,
        StatusCode::CREATED
    );
    assert_eq!(
        enqueue(jwt_alice.clone(), "deploy").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(enqueue(jwt_alice, "review").await, StatusCode::CREATED);
    assert_eq!(enqueue(token_alice, "review").await, StatusCode::FORBIDDEN);
}
