//! Group commit of outcomes: the attempts that end together (a worker's slots finishing in one
//! tick, or several pools of one process) are written in one transaction, one fenced UPDATE
//! for all of them, with one commit.
//!
//! One completer task per store takes the outcomes in arrival order and writes whatever
//! waited while the previous transaction committed (never waiting when nothing else is
//! queued), at most [`MAX`] at a time. Each outcome is fenced by owner and attempt exactly as
//! alone (`task_finish_many.sql`), so a batch changes only rows each of its attempts still
//! holds; a task that appears twice waits for the next batch. `task_finish` returns after the
//! commit, as before, so the store's ordering contract holds unchanged.

use super::{pg_err, query, sql, Result, StoreError};
use crate::events::{Event, EventHub};
use crate::store::FinishParams;
use crate::task::{Task, WakeReason};
use deadpool_postgres::Pool;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The most outcomes one group commit writes.
const MAX: usize = 1000;

/// Outcomes waiting for the completer, at most.
const QUEUE: usize = 4096;

struct Job {
    p: FinishParams,
    result: Option<String>,
    reply: oneshot::Sender<Result<Option<Arc<Task>>>>,
}

/// The handle of a store's completer task (started on first use; it ends with the store).
pub(super) struct Completer {
    tx: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
}

impl Completer {
    pub(super) fn new() -> Self {
        Self {
            tx: std::sync::Mutex::new(None),
        }
    }

    /// Ends an attempt (see [`crate::store::Store::task_finish`]) in the next group commit;
    /// returns once it committed.
    pub(super) async fn finish(
        &self,
        pool: &Pool,
        hub: &Arc<EventHub>,
        mut p: FinishParams,
    ) -> Result<Option<Arc<Task>>> {
        let result = match &mut p.result {
            Some(v) => Some(super::rows::jsonb_text(v)?),
            None => None,
        };
        let sender = {
            let mut guard = self
                .tx
                .lock()
                .map_err(|_| StoreError::Unavailable("the completer failed".into()))?;
            match guard.as_ref() {
                Some(s) if !s.is_closed() => s.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(run(rx, pool.clone(), hub.clone()));
                    *guard = Some(tx.clone());
                    tx
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        sender
            .send(Job { p, result, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the completer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the completer has stopped".into()))?
    }
}

async fn run(mut rx: mpsc::Receiver<Job>, pool: Pool, hub: Arc<EventHub>) {
    let mut carried: Vec<Job> = Vec::new();
    loop {
        let mut jobs = Vec::new();
        let mut ids: HashSet<Uuid> = HashSet::new();
        // What an earlier batch held back goes first, still one outcome per task.
        for j in std::mem::take(&mut carried) {
            if ids.insert(j.p.task.id.0) {
                jobs.push(j);
            } else {
                carried.push(j);
            }
        }
        if jobs.is_empty() {
            match rx.recv().await {
                Some(j) => {
                    ids.insert(j.p.task.id.0);
                    jobs.push(j);
                }
                None => return,
            }
        }
        let mut yielded = false;
        while jobs.len() < MAX {
            match rx.try_recv() {
                Ok(j) => {
                    if ids.insert(j.p.task.id.0) {
                        jobs.push(j);
                    } else {
                        carried.push(j);
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) if !yielded => {
                    yielded = true;
                    tokio::task::yield_now().await;
                }
                Err(_) => break,
            }
        }
        metrics::histogram!("spool_finish_group_commit_outcomes").record(jobs.len() as f64);
        match write(&pool, &jobs).await {
            Err(e) if !matches!(e, StoreError::Unavailable(_)) && jobs.len() > 1 => {
                // Refused for what one outcome holds: that must not cost the others theirs.
                // Each is written alone, and only the one at fault gets the error.
                for j in jobs {
                    let out = write(&pool, std::slice::from_ref(&j)).await;
                    answer(&hub, vec![j], out);
                }
            }
            written => answer(&hub, jobs, written),
        }
    }
}

/// Gives each job of a written group its answer (and publishes the tasks it ended).
fn answer(hub: &EventHub, jobs: Vec<Job>, written: Result<HashMap<Uuid, EndedRow>>) {
    match written {
        Ok(mut done) => {
            for j in jobs {
                let out = match done.remove(&j.p.task.id.0).map(|r| ended(j.p, r)) {
                    Some(Ok(t)) => {
                        let t = Arc::new(t);
                        hub.publish(Event::Task(t.clone()));
                        Ok(Some(t))
                    }
                    Some(Err(e)) => Err(e),
                    None => Ok(None),
                };
                let _ = j.reply.send(out);
            }
        }
        Err(e) => {
            let text = e.to_string();
            let unavailable = matches!(e, StoreError::Unavailable(_));
            for j in jobs {
                let _ = j.reply.send(Err(if unavailable {
                    StoreError::Unavailable(text.clone())
                } else {
                    StoreError::Backend(text.clone().into())
                }));
            }
        }
    }
}

/// What one ended attempt's row says.
struct EndedRow {
    status: String,
    attempts: i64,
    last_error: Option<String>,
    run_at: i64,
    completed_at: Option<i64>,
    cancel_requested: bool,
    wait_until: Option<i64>,
    wake_reason: Option<String>,
    inbox_cursor: i64,
    checkpoint: Option<serde_json::Value>,
}

/// Writes the outcomes in one transaction; returns the rows it ended, by task id.
async fn write(pool: &Pool, jobs: &[Job]) -> Result<HashMap<Uuid, EndedRow>> {
    let n = jobs.len();
    let mut ids = Vec::with_capacity(n);
    let mut owners = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut results = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut run_ats = Vec::with_capacity(n);
    let mut uncounts = Vec::with_capacity(n);
    let mut nows = Vec::with_capacity(n);
    let mut wait_untils = Vec::with_capacity(n);
    // In id order, the order heartbeats lock tasks in. The statement locks its rows in that
    // order itself before it changes them, whatever order its plan reads the arrays in (see
    // task_finish_many.sql). (Rescues lock theirs in expiry order, but with SKIP LOCKED: they
    // pass over a row a finish holds rather than wait for it.)
    let mut sorted: Vec<&Job> = jobs.iter().collect();
    sorted.sort_unstable_by_key(|j| j.p.task.id.0);
    for j in sorted {
        ids.push(j.p.task.id.0);
        owners.push(j.p.owner.as_str());
        attempts.push(i64::from(j.p.task.attempts));
        statuses.push(j.p.status.as_str());
        results.push(j.result.as_deref());
        errors.push(j.p.error.as_deref().map(super::rows::pg_text));
        run_ats.push(j.p.run_at);
        uncounts.push(i64::from(j.p.uncount));
        nows.push(j.p.now);
        wait_untils.push(j.p.wait_until);
    }
    let mut c = super::checkout(pool).await?;
    // Not one pipeline (see `pipeline`): a worker killed after sending one would still have
    // its outcomes committed, maybe long after its death when rows it needs are locked, while
    // what a dead worker held is expected to be rescued after one lease. Round trips: the
    // outcomes of a worker that dies before its COMMIT left are rolled back.
    let tx = c.transaction().await.map_err(pg_err)?;
    let rows = query(
        &tx,
        sql::TASK_FINISH_MANY,
        &[
            &ids,
            &owners,
            &attempts,
            &statuses,
            &results,
            &errors,
            &run_ats,
            &uncounts,
            &nows,
            &wait_untils,
        ],
    )
    .await?;
    // Decoded before the commit: an answer that cannot be read is an outcome not written.
    let mut out = HashMap::with_capacity(rows.len());
    let mut woken = std::collections::BTreeSet::new();
    for r in &rows {
        let id: Uuid = r.try_get("id").map_err(pg_err)?;
        let status: String = r.try_get("status").map_err(pg_err)?;
        if status == "pending" {
            woken.insert(r.try_get::<_, String>("queue").map_err(pg_err)?);
        }
        out.insert(
            id,
            EndedRow {
                status,
                attempts: r.try_get("attempts").map_err(pg_err)?,
                last_error: r.try_get("last_error").map_err(pg_err)?,
                run_at: r.try_get("run_at").map_err(pg_err)?,
                completed_at: r.try_get("completed_at").map_err(pg_err)?,
                cancel_requested: r.try_get("cancel_requested").map_err(pg_err)?,
                wait_until: r.try_get("wait_until").map_err(pg_err)?,
                wake_reason: r.try_get("wake_reason").map_err(pg_err)?,
                inbox_cursor: r.try_get("inbox_cursor").map_err(pg_err)?,
                checkpoint: r.try_get("checkpoint").map_err(pg_err)?,
            },
        );
    }
    tx.commit().await.map_err(pg_err)?;
    // Tasks pending again (a retry, an attempt given back) wake the idle workers of their
    // queues, after the commit (see `notify_work`).
    super::notify_work(&c, woken.into_iter().collect()).await;
    Ok(out)
}

/// The task as the outcome left it.
fn ended(p: FinishParams, r: EndedRow) -> Result<Task> {
    Ok(Task {
        status: r
            .status
            .parse()
            .map_err(|e: String| StoreError::Backend(e.into()))?,
        attempts: r.attempts.max(0) as u32,
        last_error: r.last_error,
        run_at: r.run_at,
        completed_at: r.completed_at,
        cancel_requested: r.cancel_requested,
        result: p.result,
        lease_owner: None,
        lease_expires_at: None,
        updated_at: p.now,
        wait_until: r.wait_until,
        wake_reason: r.wake_reason.as_deref().and_then(WakeReason::parse),
        inbox_cursor: r.inbox_cursor,
        // The attempt may have saved one since its claim.
        checkpoint: r.checkpoint,
        ..Task::clone(&p.task)
    })
}
