//! Built-in kinds, so load tests measure the queue rather than a child process:
//! `spool.noop` completes at once; `spool.sleep` waits `{"ms": N}` (at most an hour).

use super::{Handler, Outcome, Registry, TaskContext, TaskError};
use futures::future::BoxFuture;
use serde_json::Value;
use std::time::Duration;

/// Completes at once with a `null` result.
#[derive(Debug, Clone, Copy)]
pub struct Noop;

impl Handler for Noop {
    fn run(&self, _ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
        Box::pin(async { Ok(Outcome::Completed(Value::Null)) })
    }
}

/// Sleeps `payload.ms` milliseconds, then completes; a cancel ends it at once.
#[derive(Debug, Clone, Copy)]
pub struct Sleep;

impl Handler for Sleep {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, Result<Outcome, TaskError>> {
        Box::pin(async move {
            let ms = ctx
                .payload()
                .get("ms")
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    TaskError::permanent("spool.sleep needs a payload like {\"ms\": 250}")
                })?;
            if ms > 3_600_000 {
                return Err(TaskError::permanent(
                    "spool.sleep sleeps at most 3600000 ms",
                ));
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Outcome::Completed(Value::Null))
        })
    }
}

/// Adds the built-in kinds.
pub fn register(r: &mut Registry) {
    r.insert("spool.noop", Noop);
    r.insert("spool.sleep", Sleep);
}
