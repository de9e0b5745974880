//! spool embedded in a Rust program: three handlers, tasks enqueued from code, the pool run
//! in-process until they are done. `Ask` is an interactive task: it asks its owner a question,
//! waits without holding a slot, and goes on with the answer.
//!
//! ```sh
//! cargo run --release --example embedded
//! ```

use futures::future::BoxFuture;
use serde_json::{json, Value};
use spool::app::Spool;
use spool::executor::Outcome;
use spool::store::MessageCheck;
use spool::task::WakeReason;
use spool::{Clock, Config, Handler, SystemClock, TaskContext, TaskError, TaskStatus};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pretends to resize an image, reporting progress.
struct Resize;

impl Handler for Resize {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
        Box::pin(async move {
            let width = ctx.payload()["width"]
                .as_u64()
                .ok_or_else(|| TaskError::permanent("payload needs a numeric width"))?;
            for pct in [25, 50, 75, 100] {
                ctx.progress("progress", json!({ "pct": pct })).await?;
                tokio::select! {
                    _ = ctx.cancelled() => return Err(TaskError::permanent("canceled")),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            Ok(json!({ "width": width, "height": width * 3 / 4 }).into())
        })
    }
}

/// Greets, failing its first attempt to show the retry.
struct Greet;

impl Handler for Greet {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
        Box::pin(async move {
            if ctx.attempt() == 1 {
                return Err(TaskError::retry("first attempts always fail here"));
            }
            let name = ctx.payload()["name"]
                .as_str()
                .unwrap_or("world")
                .to_string();
            Ok(json!(format!("hello, {name} (attempt {})", ctx.attempt())).into())
        })
    }
}

/// Asks its owner a question, parks until the answer comes (or an hour passes), then goes on
/// with it: the next attempt starts with the checkpoint and reads the answer from its inbox.
struct Ask;

impl Handler for Ask {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
        Box::pin(async move {
            match ctx.wake_reason() {
                None => {
                    ctx.progress("question", json!("may I push to main?"))
                        .await?;
                    ctx.checkpoint(json!({ "asked": "may I push to main?" }))
                        .await?;
                    Ok(Outcome::Wait {
                        timeout: Duration::from_secs(3600),
                    })
                }
                Some(WakeReason::Timeout) => Err(TaskError::permanent("nobody answered")),
                Some(WakeReason::Message) => {
                    let inbox = ctx.inbox();
                    futures::pin_mut!(inbox);
                    let answer = match futures::StreamExt::next(&mut inbox).await {
                        Some(m) => m?.content,
                        None => return Err(TaskError::retry("canceled")),
                    };
                    let asked = ctx.last_checkpoint().unwrap_or(Value::Null);
                    Ok(json!({ "asked": asked["asked"], "answer": answer }).into())
                }
            }
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Before anything opens SQLite (see the README's Performance section). Without it spool
    // works the same, with slower commits.
    if let Err(e) = spool::pcache::install() {
        eprintln!("SQLite's page cache runs unwrapped: {e}");
    }
    let mut cfg = Config::defaults();
    cfg.data_dir = "data/example-embedded".into();
    cfg.retry.base_ms = 100;
    let spool = Spool::builder()
        .config(cfg)
        .handler("resize", Resize)
        .handler("greet", Greet)
        .handler("ask", Ask)
        .build()?;

    let ids = vec![
        spool.enqueue("resize", json!({ "width": 640 })).await?.id,
        spool.enqueue("resize", json!({ "oops": true })).await?.id,
        spool.enqueue("greet", json!({ "name": "spool" })).await?.id,
        spool.enqueue("ask", json!({})).await?.id,
    ];

    let stop = CancellationToken::new();
    let pool = {
        let stop = stop.clone();
        let spool = std::sync::Arc::new(spool);
        let runner = spool.clone();
        (spool, tokio::spawn(async move { runner.run(stop).await }))
    };
    let (spool, handle) = pool;
    // The owner answers the question once the task waits (over HTTP this is
    // POST /v1/tasks/{id}/messages with the owner's token).
    let ask = ids[3];
    while spool.store().task_get(ask, None).await?.status != TaskStatus::Waiting {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    spool
        .store()
        .message_insert(
            ask,
            "answer".into(),
            json!("yes, push"),
            MessageCheck::User(None),
            SystemClock.now(),
        )
        .await?;
    for id in &ids {
        let task = loop {
            let t = spool.store().task_get(*id, None).await?;
            if t.status.is_terminal() {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let messages = spool.store().message_list(*id, 0, 100, None).await?;
        println!(
            "{} {:<9} attempts={} result={} error={} messages={}",
            task.kind,
            task.status,
            task.attempts,
            task.result.unwrap_or(Value::Null),
            task.last_error.unwrap_or_default(),
            messages.len()
        );
        assert!(task.status != TaskStatus::Running);
    }
    stop.cancel();
    handle.await??;
    Ok(())
}
