//! A text/event-stream client for tests: events parsed by hand from a reqwest response.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use reqwest::{Client, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// How long a test waits for the next event by default.
pub const EVENT_LIMIT: Duration = Duration::from_secs(15);

/// One event of a text/event-stream, parsed by hand.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ev {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
    pub comments: Vec<String>,
}

impl Ev {
    pub fn name(&self) -> &str {
        // A block without `event:` is a "message" event by the SSE spec.
        self.event.as_deref().unwrap_or("message")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap_or("null"))
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }

    pub fn is_dispatched(&self) -> bool {
        self.data.is_some()
    }
}

/// A text/event-stream read frame by frame from a reqwest response.
pub struct Stream {
    pub resp: reqwest::Response,
    pub buf: Vec<u8>,
    pub eof: bool,
}

impl Stream {
    pub async fn open(c: &Client, url: &str, token: &str, last_event_id: Option<&str>) -> Stream {
        let mut rb = c.get(url).bearer_auth(token);
        if let Some(id) = last_event_id {
            rb = rb.header("Last-Event-ID", id);
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), rb.send())
            .await
            .expect("no response headers within 10 s")
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "content type {ct}");
        Stream {
            resp,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// The next block (up to a blank line), comment-only blocks included; None at the end.
    pub async fn next_block(&mut self) -> Option<Ev> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                let mut ev = Ev::default();
                for line in text.lines() {
                    if line.is_empty() {
                        continue;
                    }
                    if let Some(c) = line.strip_prefix(':') {
                        ev.comments.push(c.trim_start().to_string());
                        continue;
                    }
                    let (field, value) = match line.split_once(':') {
                        Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                        None => (line, ""),
                    };
                    match field {
                        "event" => ev.event = Some(value.to_string()),
                        "id" => ev.id = Some(value.to_string()),
                        "retry" => ev.retry = Some(value.to_string()),
                        "data" => {
                            ev.data = Some(match ev.data.take() {
                                Some(d) => format!("{d}\n{value}"),
                                None => value.to_string(),
                            })
                        }
                        other => panic!("unknown SSE field {other:?} in {text:?}"),
                    }
                }
                return Some(ev);
            }
            if self.eof {
                assert!(
                    self.buf.iter().all(u8::is_ascii_whitespace),
                    "stream ended inside an event: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
            match self.resp.chunk().await.unwrap() {
                // Line ends may be \r\n; no raw \r appears inside JSON data.
                Some(bytes) => self.buf.extend(bytes.iter().filter(|b| **b != b'\r')),
                None => self.eof = true,
            }
        }
    }

    /// The next dispatched event (skipping keep-alive comments), within `limit`; None at the end.
    pub async fn next(&mut self, limit: Duration) -> Option<Ev> {
        let fut = async {
            loop {
                match self.next_block().await {
                    Some(ev) if ev.is_dispatched() => return Some(ev),
                    Some(_) => continue,
                    None => return None,
                }
            }
        };
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or_else(|_| panic!("no SSE event within {limit:?}"))
    }

    /// The next event, which must be named `name` (within [`EVENT_LIMIT`]).
    pub async fn expect(&mut self, name: &str) -> Ev {
        let ev = self.next(EVENT_LIMIT).await.expect("the stream ended");
        assert_eq!(ev.name(), name, "{ev:?}");
        ev
    }

    /// Every event up to and including `end` (the stream must end with it).
    pub async fn until_end(&mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        loop {
            let ev = self
                .next(EVENT_LIMIT)
                .await
                .expect("the stream ended before `end`");
            let end = ev.name() == "end";
            out.push(ev);
            if end {
                return out;
            }
        }
    }
}
