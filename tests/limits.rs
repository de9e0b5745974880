//! Bounded memory and fair use over HTTP, against the real `spool serve` binary: `/metrics`
//! labels and where it is served, per-user stream slots and request rates, messages paged by
//! bytes, connection timeouts and the connection cap, `/readyz` shared for a second, and the
//! dashboard's security headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

// ---- helpers ------------------------------------------------------------------------------

fn start(extra: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), extra);
    let s = serve(&cfg, &[]);
    (s, dir)
}

fn addr(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_string()
}

async fn create(c: &reqwest::Client, s: &Server, token: &str, body: Value) -> String {
    let r = c
        .post(s.url("/v1/tasks"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let t: Value = r.json().await.unwrap();
    t["id"].as_str().unwrap().to_string()
}

async fn post_message(c: &reqwest::Client, s: &Server, id: &str, content: Value) {
    let r = c
        .post(s.url(&format!("/v1/tasks/{id}/messages")))
        .bearer_auth(&s.token)
        .json(&json!({"kind": "progress", "content": content}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
}

/// The resident memory of a process, in bytes.
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Open sockets of a process.
fn socket_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Reads from `tcp` until EOF or an error (the server closed it) or `limit`; returns what was
/// read and whether the connection ended.
fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (String, bool) {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        tcp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match tcp.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

// ---- /metrics -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_label_only_configured_kinds_and_queues_however_many_names_users_send() {
    // Nobody works these queues: tasks stay pending and show in the depth gauges.
    let (s, _dir) = start(
        "[worker]\nconcurrency = 0\n[limits]\nrequests_per_second = 0\n[kinds.known]\ncommand = [\"true\"]\n[queues.work]\nconcurrency = 1\n",
    );
    let c = client();
    for b in 0..20 {
        let tasks: Vec<Value> = (0..100)
            .map(|i| json!({"kind": format!("k-{b}-{i}-unique"), "queue": format!("q-{b}-{i}-unique")}))
            .collect();
        let r = c
            .post(s.url("/v1/tasks/batch"))
            .bearer_auth(&s.token)
            .json(&json!({ "tasks": tasks }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    create(&c, &s, &s.token, json!({"kind": "known", "queue": "work"})).await;
    let text = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("-unique"),
        "a user-chosen name became a label"
    );
    // 2,000 names would be ~2,000 series of each metric; bounded, the scrape stays small.
    assert!(text.len() < 64 * 1024, "scrape is {} bytes", text.len());
    assert!(
        text.contains(r#"spool_tasks_enqueued_total{queue="other",kind="other"} 2000"#),
        "{text}"
    );
    assert!(
        text.contains(r#"spool_tasks_enqueued_total{queue="work",kind="known"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"spool_queue_depth{queue="other",status="pending"} 2000"#),
        "{text}"
    );
    assert!(
        text.contains(r#"spool_queue_depth{queue="work",status="pending"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depths_are_read_at_most_once_a_second_however_often_metrics_is_scraped() {
    let (s, _dir) = start("[worker]\nconcurrency = 0\n[queues.work]\nconcurrency = 1\n");
    let c = client();
    let depth = |text: &str| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(r#"spool_queue_depth{queue="work",status="pending"}"#))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    let scrape = || async {
        c.get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let t0 = Instant::now();
    let first = scrape().await;
    create(&c, &s, &s.token, json!({"kind": "x", "queue": "work"})).await;
    let second = scrape().await;
    if t0.elapsed() < Duration::from_millis(900) {
        // Within the second the depth read at the first scrape is reused.
        assert_eq!(depth(&first), depth(&second));
    }
    // A second later the new task shows.
    eventually(
        Duration::from_secs(10),
        "the depth to be re-read",
        || async { (depth(&scrape().await).as_deref() == Some("1")).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_metrics_on_its_own_address_and_the_main_listener_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[http]\nmetrics_listen = \"127.0.0.1:0\"\n");
    let proc = spawn(&["serve"], &cfg, &[]);
    let (mut base, mut metrics) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while base.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = proc
            .lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("spool did not start: {}", proc.stderr()));
        if let Some(a) = l.strip_prefix("metrics listening on ") {
            metrics = Some(a.to_string());
        } else if let Some(a) = l.strip_prefix("listening on ") {
            base = Some(a.to_string());
        }
    }
    let (base, metrics) = (base.unwrap(), metrics.expect("no metrics address printed"));
    let c = client();
    let r = c.get(format!("{metrics}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("spool_"));
    // Only /metrics there; not /metrics on the main address.
    let r = c.get(format!("{metrics}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_auth_admin_refuses_a_scrape_without_the_admin_token() {
    let (s, _dir) = start("[http]\nmetrics_auth = \"admin\"\n");
    let user = s.user_token("alice", false);
    let c = client();
    let r = c.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get(s.url("/metrics"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c
        .get(s.url("/metrics"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("spool_"));
}

// ---- streams and message pages --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_stalled_streams_on_big_messages_keep_the_server_under_300_mb() {
    // Streams stay open (no stall cut) while we measure; enough stream slots for 40.
    let (s, _dir) = start(
        "[http]\nstall_timeout_ms = 600000\n[limits]\nstreams_per_user = 64\nrequests_per_second = 0\n",
    );
    let c = client();
    let id = create(
        &c,
        &s,
        &s.token,
        json!({"kind": "spool.noop", "queue": "idle"}),
    )
    .await;
    // 500 messages of ~64 KiB (the default message limit): 32 MB of content.
    let pad = "x".repeat(65_000);
    for i in 0..500 {
        post_message(&c, &s, &id, json!({"i": i, "pad": pad})).await;
    }
    let before = rss_bytes(s.proc.pid());

    // 40 clients that send the request, read the status line and then never read again.
    let a = addr(&s);
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&a.parse::<std::net::SocketAddr>().unwrap().into())
            .unwrap();
        let mut tcp: TcpStream = sock.into();
        write!(
            tcp,
            "GET /v1/tasks/{id}/events HTTP/1.1\r\nHost: {a}\r\nAuthorization: Bearer {}\r\n\r\n",
            s.token
        )
        .unwrap();
        let mut first = [0u8; 64];
        let n = tcp.read(&mut first).unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        stalled.push(tcp);
    }
    // Every stream has read as far as its socket lets it; watch the server's memory settle.
    let mut peak = 0;
    let mut last_growth = Instant::now();
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end && last_growth.elapsed() < Duration::from_secs(3) {
        let now = rss_bytes(s.proc.pid());
        if now > peak + (1 << 20) {
            last_growth = Instant::now();
        }
        peak = peak.max(now);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "RSS {} MB before the streams, peak {} MB with 40 stalled",
        before >> 20,
        peak >> 20
    );
    let bound = 300 << 20;
    assert!(
        peak < bound,
        "RSS peaked at {} MB with 40 stalled streams (was {} MB before them); the bound is 300 MB",
        peak >> 20,
        before >> 20
    );
    // The server still answers, and a reader that does read gets all 500, in order.
    let r = c
        .get(s.url(&format!("/v1/tasks/{id}/events")))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r;
    let mut text = String::new();
    let mut seen = 0;
    let end = Instant::now() + Duration::from_secs(60);
    while seen < 500 && Instant::now() < end {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = text.find("\n\n") {
            let ev: String = text.drain(..i + 2).collect();
            if ev.contains("event: message") {
                let data = ev.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(v["content"]["i"], json!(seen), "out of order or skipped");
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 500);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_33rd_stream_gets_429_with_retry_after_until_one_closes() {
    let (s, _dir) = start("[limits]\nrequests_per_second = 0\n");
    let alice = s.user_token("alice", false);
    let c = client();
    let id = create(
        &c,
        &s,
        &alice,
        json!({"kind": "spool.noop", "queue": "idle"}),
    )
    .await;
    let open = |token: String| {
        let c = c.clone();
        let url = s.url(&format!("/v1/tasks/{id}/events"));
        async move { c.get(url).bearer_auth(token).send().await.unwrap() }
    };
    let mut streams = Vec::new();
    for _ in 0..32 {
        let r = open(alice.clone()).await;
        assert_eq!(r.status(), StatusCode::OK);
        streams.push(r);
    }
    let r = open(alice.clone()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_requests");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.streams_per_user"),
        "{v}"
    );
    // A long poll counts too; a plain read does not.
    let poll = c
        .get(s.url(&format!("/v1/tasks/{id}/messages?wait_ms=1000")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), StatusCode::TOO_MANY_REQUESTS);
    let read = c
        .get(s.url(&format!("/v1/tasks/{id}/messages")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    // Another user has slots of their own.
    let r = open(s.token.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    // The client closes one stream: its slot comes back.
    drop(streams.pop());
    let again = eventually(Duration::from_secs(10), "a freed stream slot", || {
        let o = open(alice.clone());
        async move {
            let r = o.await;
            (r.status() == StatusCode::OK).then_some(r)
        }
    })
    .await;
    streams.push(again);
    let r = open(alice.clone()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messages_page_over_a_mebibyte_is_cut_and_next_after_continues_with_nothing_skipped() {
    let (s, _dir) = start("[limits]\nrequests_per_second = 0\n");
    let c = client();
    let id = create(
        &c,
        &s,
        &s.token,
        json!({"kind": "spool.noop", "queue": "idle"}),
    )
    .await;
    let pad = "y".repeat(60_000);
    for i in 0..40 {
        post_message(&c, &s, &id, json!({"i": i, "pad": pad})).await;
    }
    let mut after = 0i64;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let v: Value = c
            .get(s.url(&format!("/v1/tasks/{id}/messages?after={after}&limit=1000")))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let msgs = v["messages"].as_array().unwrap();
        if msgs.is_empty() {
            assert_eq!(v["next_after"], json!(after));
            break;
        }
        pages += 1;
        let bytes: usize = msgs.iter().map(|m| m["content"].to_string().len()).sum();
        assert!(bytes <= 1 << 20, "a page of {bytes} bytes");
        for m in msgs {
            seen.push(m["content"]["i"].as_i64().unwrap());
        }
        after = v["next_after"].as_i64().unwrap();
        assert_eq!(after, msgs.last().unwrap()["id"].as_i64().unwrap());
        assert!(pages < 100);
    }
    assert!(pages >= 3, "2.4 MB came in {pages} page(s)");
    assert_eq!(seen, (0..40).collect::<Vec<_>>());
}

// ---- requests per second --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_users_rate_get_429_naming_the_limit_with_retry_after() {
    let (s, _dir) = start("[limits]\nrequests_per_second = 1\nrequests_burst = 3\n");
    let alice = s.user_token("alice", false);
    let c = client();
    let mut codes = Vec::new();
    let mut refused = None;
    for _ in 0..6 {
        let r = c
            .get(s.url("/v1/tasks"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
        if r.status() == StatusCode::TOO_MANY_REQUESTS && refused.is_none() {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let v: Value = r.json().await.unwrap();
            refused = Some((retry, v));
        }
    }
    // The burst passes; at 1/s, at most one more token came back meanwhile.
    assert_eq!(&codes[..3], &[200, 200, 200], "{codes:?}");
    assert!(
        codes.iter().filter(|&&c| c == 429).count() >= 2,
        "{codes:?}"
    );
    let (retry, v) = refused.unwrap();
    assert!(retry >= 1);
    assert_eq!(v["error"]["code"], "too_many_requests");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.requests_per_second"),
        "{v}"
    );
    // Another user is not held up by alice's bucket.
    let r = c
        .get(s.url("/v1/tasks"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // After Retry-After, alice may go on.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = c
        .get(s.url("/v1/tasks"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

// ---- connections --------------------------------------------------------------------------

#[test]
fn a_client_trickling_header_lines_is_cut_after_the_header_timeout() {
    let (s, _dir) = start("[http]\nheader_timeout_ms = 1500\nidle_timeout_ms = 30000\n");
    let mut tcp = TcpStream::connect(addr(&s)).unwrap();
    let started = Instant::now();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut closed_after = None;
    // One header line every 500 ms, for up to 15 s: without a header timeout this never ends.
    for i in 0..30 {
        let (_, closed) = read_until_closed(&mut tcp, Duration::from_millis(500));
        if closed
            || tcp
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .is_err()
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let t = closed_after.expect("the trickling client was never disconnected");
    assert!(t >= Duration::from_millis(1400), "cut too early: {t:?}");
    assert!(t < Duration::from_secs(8), "cut only after {t:?}");
    // Others are served.
    let mut ok = TcpStream::connect(addr(&s)).unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (text, closed) = read_until_closed(&mut ok, Duration::from_secs(10));
    assert!(closed && text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn a_partial_body_is_answered_408_and_cut_after_the_body_timeout() {
    let (s, _dir) = start("[http]\nbody_timeout_ms = 1500\n");
    let mut tcp = TcpStream::connect(addr(&s)).unwrap();
    let started = Instant::now();
    write!(
        tcp,
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"kind\": ",
        s.token
    )
    .unwrap();
    let (text, closed) = read_until_closed(&mut tcp, Duration::from_secs(15));
    let t = started.elapsed();
    assert!(
        closed,
        "the connection with a partial body stayed open: {text}"
    );
    assert!(t < Duration::from_secs(8), "cut only after {t:?}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    // Nothing was written.
    assert!(status_counts(&s.dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_but_a_quiet_stream_is_not() {
    let (s, _dir) = start("[http]\nidle_timeout_ms = 1500\n");
    // Keep-alive: one request, then silence.
    let mut tcp = TcpStream::connect(addr(&s)).unwrap();
    let started = Instant::now();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (text, closed) = read_until_closed(&mut tcp, Duration::from_secs(15));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed, "the idle connection was kept");
    let t = started.elapsed();
    assert!(
        t >= Duration::from_millis(1400) && t < Duration::from_secs(8),
        "{t:?}"
    );

    // An SSE stream with nothing to say for longer than the idle timeout stays open.
    let c = client();
    let id = create(
        &c,
        &s,
        &s.token,
        json!({"kind": "spool.noop", "queue": "idle"}),
    )
    .await;
    let mut r = c
        .get(s.url(&format!("/v1/tasks/{id}/events")))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: status"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    post_message(&c, &s, &id, json!({"late": true})).await;
    let mut text = String::new();
    let end = Instant::now() + Duration::from_secs(10);
    while !text.contains("\"late\":true") && Instant::now() < end {
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("the stream was closed");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("\"late\":true"), "{text}");
}

#[test]
fn past_max_connections_new_clients_wait_in_the_backlog_and_are_served_once_others_close() {
    let (s, _dir) =
        start("[http]\nmax_connections = 16\nheader_timeout_ms = 60000\nidle_timeout_ms = 60000\n");
    let pid = s.proc.pid();
    let base = socket_count(pid);
    // 40 clients, each with half a request head: each holds its connection.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut tcp = TcpStream::connect(addr(&s)).unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        held.push(tcp);
    }
    let end = Instant::now() + Duration::from_secs(10);
    while socket_count(pid) < base + 16 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(socket_count(pid), base + 16, "the server did not take 16");
    // It takes no more, however long they wait.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        socket_count(pid),
        base + 16,
        "the server accepted past the cap"
    );
    // A new client waits: its request is not answered while the cap is full.
    let mut waiting = TcpStream::connect(addr(&s)).unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (text, _) = read_until_closed(&mut waiting, Duration::from_millis(500));
    assert!(text.is_empty(), "answered past the cap: {text}");
    // The others go away: the waiting client is served, and so is a new one.
    drop(held);
    let (text, closed) = read_until_closed(&mut waiting, Duration::from_secs(30));
    assert!(closed && text.starts_with("HTTP/1.1 200"), "{text:?}");
    let mut fresh = TcpStream::connect(addr(&s)).unwrap();
    fresh
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (text, closed) = read_until_closed(&mut fresh, Duration::from_secs(30));
    assert!(closed && text.starts_with("HTTP/1.1 200"), "{text:?}");
}

// ---- /readyz --------------------------------------------------------------------------------

/// Write transactions the server's writer has committed (its batch-size histogram's count).
async fn writer_batches(c: &reqwest::Client, s: &Server) -> u64 {
    let text = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("spool_writer_batch_size_count "))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_readyz_calls_share_one_write_a_second() {
    // No workers: nothing else writes.
    let (s, _dir) = start("[worker]\nconcurrency = 0\n");
    let c = client();
    let before = writer_batches(&c, &s).await;
    let started = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..4 {
        let c = c.clone();
        let url = s.url("/readyz");
        calls.push(tokio::spawn(async move {
            for _ in 0..50 {
                let r = c.get(&url).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK);
            }
        }));
    }
    for h in calls {
        h.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64().ceil() as u64;
    let writes = writer_batches(&c, &s).await - before;
    assert!(writes >= 1, "no readiness write at all");
    assert!(
        writes <= secs + 1,
        "200 /readyz calls in {secs} s made {writes} writes"
    );
}

// ---- the dashboard --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_with_a_strict_csp_no_framing_and_no_sniffing() {
    let (s, _dir) = start("");
    let r = client().get(s.url("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers();
    let csp = h["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("script-src 'unsafe-inline'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
}
