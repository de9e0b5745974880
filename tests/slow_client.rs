//! A stalled SSE reader: it stops reading while its task's messages keep coming. The server
//! must not slow down or buffer without bound; the connection is dropped after
//! `http.stall_timeout_ms`, and the client can resume with Last-Event-ID.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_reader_is_disconnected_and_the_server_stays_responsive() {
    let dir = tempfile::tempdir().unwrap();
    // 300 writes from one user at full speed: not a test of limits.requests_per_second.
    let cfg = write_config(
        dir.path(),
        "[http]\nstall_timeout_ms = 1500\n[limits]\nrequests_per_second = 0\n",
    );
    let s = serve(&cfg, &[]);
    let c = client();
    // A task on a queue nobody works: it stays pending, its stream stays open.
    let t: Value = c
        .post(s.url("/v1/tasks"))
        .bearer_auth(&s.token)
        .json(&json!({"kind": "spool.noop", "queue": "idle"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = t["id"].as_str().unwrap().to_string();

    // A raw client with a small receive buffer that reads the headers and then nothing.
    let addr = s.base.trim_start_matches("http://").to_string();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    let mut tcp: std::net::TcpStream = sock.into();
    write!(
        tcp,
        "GET /v1/tasks/{id}/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        s.token
    )
    .unwrap();
    let mut first = [0u8; 256];
    let n = tcp.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));

    // 300 messages of ~32 KiB: far more than the socket buffers hold.
    let big = "x".repeat(32 * 1024);
    let started = Instant::now();
    for i in 0..300 {
        let r = c
            .post(s.url(&format!("/v1/tasks/{id}/messages")))
            .bearer_auth(&s.token)
            .json(&json!({"kind": "progress", "content": {"i": i, "pad": big}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // Writers were never held up by the stalled reader.
    assert!(started.elapsed() < Duration::from_secs(60));
    // The server answers others at once while the reader stalls.
    let h = c
        .get(s.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);

    // Wait past the stall timeout, then read: the stream must end (reset or EOF) well before
    // all ~9.6 MB arrive, because the server dropped it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = loop {
        match tcp.read(&mut buf) {
            Ok(0) => break "eof",
            Ok(k) => total += k,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break "still open"
            }
            Err(_) => break "reset",
        }
    };
    assert_ne!(
        ended, "still open",
        "the stalled stream was not dropped (read {total} bytes)"
    );
    assert!(
        total < 300 * 32 * 1024,
        "got everything ({total} bytes): nothing was dropped"
    );

    // Every message is kept: reading them back page by page (pages stop at ~1 MiB) finds 300.
    let mut after = 0;
    let mut n = 0;
    for _ in 0..100 {
        let r = c
            .get(s.url(&format!("/v1/tasks/{id}/messages?after={after}&limit=1000")))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        let page = v["messages"].as_array().unwrap().len();
        if page == 0 {
            break;
        }
        n += page;
        after = v["next_after"].as_i64().unwrap();
    }
    assert_eq!(n, 300);
}
