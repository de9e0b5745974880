//! The retention pruner: deletes finished tasks (and their messages) past their retention, in
//! small batches so the writer is never held for long.

use crate::clock::UnixMillis;
use crate::config::RetentionConfig;
use crate::store::{Store, StoreError, CHANGES_PRUNE_BATCH};
use crate::task::TaskStatus;

/// Tasks deleted per transaction.
pub(crate) const PRUNE_BATCH: u32 = 500;

/// Deletes every task past retention, batch by batch, yielding between batches. Returns how
/// many were deleted.
///
/// # Errors
/// A database error from a batch; batches before it stay deleted.
pub async fn prune_once(
    store: &dyn Store,
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
    // The change log behind /v1/events: older than its retention, and past its newest
    // `changes_kept` whatever their age (a busy queue records three changes a task).
    let mut changes = 0;
    for (before, keep) in [
        (now.saturating_sub(r.changes.as_millis() as i64), 1),
        (now, r.changes_kept),
    ] {
        loop {
            let n = store.changes_prune(before, keep).await?;
            changes += n;
            if n < CHANGES_PRUNE_BATCH {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    if changes > 0 {
        tracing::debug!(deleted = changes, "pruned recorded task changes");
    }
    Ok(total)
}

/// Removes the working directories of command tasks that are terminal or gone (unless their
/// kind keeps them): the attempt that ended a task removes its own, this catches the rest (a
/// task canceled or pruned while pending between attempts, a crash). Removes at most `limit`
/// directories per run (every directory is looked at, so kept ones never hide others).
/// Returns how many were removed.
///
/// # Errors
/// A database error; directories already removed stay removed.
pub async fn prune_workdirs(
    store: &dyn Store,
    cfg: &crate::config::Config,
    limit: usize,
) -> Result<usize, StoreError> {
    let dirs = crate::executor::command::Workdirs::new(cfg.worker.workdir.clone());
    let ids = {
        let d = dirs.clone();
        tokio::task::spawn_blocking(move || d.list())
            .await
            .unwrap_or_default()
    };
    let mut removed = 0;
    for id in ids {
        if removed >= limit {
            break;
        }
        let remove = match store.task_get(id, None).await {
            Ok(t) => {
                let keep = matches!(
                    cfg.kinds.get(&t.kind).map(|k| &k.handler),
                    Some(crate::config::KindHandler::Command(spec)) if spec.keep_workdir
                );
                t.status.is_terminal() && !keep
            }
            Err(StoreError::NotFound(_)) => true,
            Err(e) => return Err(e),
        };
        if remove {
            let d = dirs.clone();
            let res = tokio::task::spawn_blocking(move || d.remove(id)).await;
            match res {
                Ok(Ok(())) => removed += 1,
                Ok(Err(e)) => {
                    tracing::warn!(task.id = %id, error = %e, "cannot remove a task's working directory")
                }
                Err(_) => {}
            }
        }
    }
    Ok(removed)
}
