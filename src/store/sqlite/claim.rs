//! The claim: expired leases first (their outcome is [`crate::queue::rescue`], applied as one
//! statement per outcome), then each queue's share of runnable tasks, best first.

use super::writer::JobOutput;
use super::{rows, sql};
use crate::events::Event;
use crate::queue;
use crate::store::ClaimParams;
use crate::task::Task;
use rusqlite::{named_params, Connection};
use std::sync::Arc;

pub(super) fn claim(conn: &Connection, p: &ClaimParams) -> JobOutput<Vec<Arc<Task>>> {
    let mut events = Vec::new();
    // Expired leases first: canceled ones end, exhausted ones fail, the rest become runnable.
    let rescues: &[&str] = if p.rescue {
        &[
            sql::LEASE_EXPIRED_CANCEL,
            sql::LEASE_EXPIRED_FAIL,
            sql::LEASE_EXPIRED_RESCUE,
        ]
    } else {
        &[]
    };
    for q in rescues {
        let params = named_params! {":now": p.now, ":error": queue::LOST_LEASE_ERROR};
        for t in rows::tasks(&mut *conn.prepare_cached(q)?, params)? {
            tracing::warn!(task.id = %t.id, task.kind = %t.kind, task.queue = %t.queue,
                status = %t.status, "rescued task from a dead worker (lease expired)");
            events.push(Event::Task(Arc::new(t)));
        }
    }
    if p.rescue {
        // Waits that timed out are runnable again, and claimed below like any other.
        let params = named_params! {
            ":now": p.now, ":limit": crate::store::EXPIRED_WAITS_PER_CLAIM,
        };
        for t in rows::tasks(&mut *conn.prepare_cached(sql::WAIT_EXPIRED)?, params)? {
            tracing::info!(task.id = %t.id, task.queue = %t.queue, "wait timed out");
            events.push(Event::Task(Arc::new(t)));
        }
    }
    let mut claimed = Vec::new();
    let mut remaining = p.total;
    for q in &p.queues {
        let limit = q.limit.min(remaining);
        if limit == 0 {
            continue;
        }
        if let Some(adm) = q.admission.as_ref().filter(|a| a.is_limited()) {
            for t in super::admission::claim_admitted(conn, p, &q.queue, limit, adm)? {
                claimed.push(t);
                remaining -= 1;
            }
            continue;
        }
        for t in claim_plain(conn, p, &q.queue, limit)? {
            claimed.push(t);
            remaining -= 1;
        }
    }
    crate::store::rules::sort_claimed(&mut claimed);
    events.extend(claimed.iter().map(|t| Event::Task(t.clone())));
    Ok((claimed, events))
}

/// The plain claim of one queue: its best `limit` runnable tasks (task_claim.sql). Tasks that a
/// per-key claim parked go back to the claim index first: without that limit nothing else would
/// take them (one index seek when there are none).
pub(super) fn claim_plain(
    conn: &Connection,
    p: &ClaimParams,
    queue: &str,
    limit: u32,
) -> crate::store::Result<Vec<Arc<Task>>> {
    conn.prepare_cached(super::admission::UNPARK)?
        .execute(named_params! {":queue": queue})?;
    let mut st = conn.prepare_cached(sql::TASK_CLAIM)?;
    let cols = rows::TaskColumns::of(&st)?;
    let rows = st.query_map(
        named_params! {":owner": p.owner, ":now": p.now, ":lease_ms": p.lease_ms as i64,
        ":queue": queue, ":limit": limit},
        |r| cols.task(r),
    )?;
    Ok(rows
        .map(|t| t.map(Arc::new))
        .collect::<rusqlite::Result<Vec<_>>>()?)
}
