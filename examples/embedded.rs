//! spool embedded in a Rust program: two handlers, tasks enqueued from code, the pool run
//! in-process until they are done.
//!
//! ```sh
//! cargo run --release --example embedded
//! ```

use futures::future::BoxFuture;
use serde_json::{json, Value};
use spool::app::Spool;
use spool::{Config, Handler, TaskContext, TaskError, TaskStatus};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pretends to resize an image, reporting progress.
struct Resize;

impl Handler for Resize {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Value, TaskError>> {
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
            Ok(json!({ "width": width, "height": width * 3 / 4 }))
        })
    }
}

/// Greets, failing its first attempt to show the retry.
struct Greet;

impl Handler for Greet {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Value, TaskError>> {
        Box::pin(async move {
            if ctx.attempt() == 1 {
                return Err(TaskError::retry("first attempts always fail here"));
            }
            let name = ctx.payload()["name"]
                .as_str()
                .unwrap_or("world")
                .to_string();
            Ok(json!(format!("hello, {name} (attempt {})", ctx.attempt())))
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = Config::defaults();
    cfg.data_dir = "data/example-embedded".into();
    cfg.retry.base_ms = 100;
    let spool = Spool::builder()
        .config(cfg)
        .handler("resize", Resize)
        .handler("greet", Greet)
        .build()?;

    let ids = vec![
        spool.enqueue("resize", json!({ "width": 640 })).await?.id,
        spool.enqueue("resize", json!({ "oops": true })).await?.id,
        spool.enqueue("greet", json!({ "name": "spool" })).await?.id,
    ];

    let stop = CancellationToken::new();
    let pool = {
        let stop = stop.clone();
        let spool = std::sync::Arc::new(spool);
        let runner = spool.clone();
        (spool, tokio::spawn(async move { runner.run(stop).await }))
    };
    let (spool, handle) = pool;
    for id in &ids {
        let task = loop {
            let t = spool.store().task_get(*id, None).await?;
            if t.status.is_terminal() {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let messages = spool.store().message_list(*id, 0, 100).await?;
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
