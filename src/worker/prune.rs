//! The retention pruner: deletes finished tasks (and their messages) past their retention, in
//! small batches so the writer is never held for long.

use crate::clock::UnixMillis;
use crate::config::RetentionConfig;
use crate::store::{SqliteStore, StoreError};
use crate::task::TaskStatus;

/// Tasks deleted per transaction.
pub(crate) const PRUNE_BATCH: u32 = 500;

/// Deletes every task past retention, batch by batch, yielding between batches. Returns how
/// many were deleted.
///
/// # Errors
/// A database error from a batch; batches before it stay deleted.
pub async fn prune_once(
    store: &SqliteStore,
    r: &RetentionConfig,
    now: UnixMillis,
) -> Result<usize, StoreError> {
    let mut total = 0;
    let plan = [
        (TaskStatus::Completed, r.completed),
        (TaskStatus::Canceled, r.completed),
        (TaskStatus::Failed, r.failed),
    ];
    for (status, keep) in plan {
        let Some(keep) = keep else { continue };
        let before = now.saturating_sub(keep.as_millis() as i64);
        loop {
            let n = store.task_prune(status, before, PRUNE_BATCH).await?;
            total += n;
            if n < PRUNE_BATCH as usize {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    if total > 0 {
        tracing::info!(deleted = total, "pruned finished tasks past retention");
    }
    Ok(total)
}
