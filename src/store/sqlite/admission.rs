//! Admission control in the claim: a queue with `global_concurrency`, `per_key_concurrency` or
//! a `rate` is claimed from here, inside the claim's write transaction. SQLite has one writer
//! for all processes (`BEGIN IMMEDIATE`), so what this counts (running tasks, the bucket) cannot
//! change before the claim commits: two processes can never over-admit.
//!
//! Without a per-key limit the claim is the ordinary one with a smaller limit. With one, the
//! keys that have pending tasks are listed by a skip scan of `tasks_key_pending` (one seek per
//! key), each key that has room offers its best tasks, and [`rules::admit`] picks among them:
//! a key with thousands of waiting tasks costs the claim one seek while it is at its limit, and
//! never delays another key's task (no head-of-line blocking).

use super::rows::TaskColumns;
use super::sql;
use crate::store::rules::{self, Candidate};
use crate::store::{Admission, Bucket, ClaimParams, Result};
use crate::task::Task;
use rusqlite::{named_params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::sync::Arc;

const PAUSED: &str = include_str!("../../../sql/sqlite/queries/admission_paused.sql");
const RUNNING: &str = include_str!("../../../sql/sqlite/queries/admission_running.sql");
const KEY_RUNNING: &str = include_str!("../../../sql/sqlite/queries/admission_key_running.sql");
const KEY_NEXT: &str = include_str!("../../../sql/sqlite/queries/admission_key_next.sql");
const KEY_TASKS: &str = include_str!("../../../sql/sqlite/queries/admission_key_tasks.sql");
const UNKEYED: &str = include_str!("../../../sql/sqlite/queries/admission_unkeyed.sql");
const CLAIM_ROW: &str = include_str!("../../../sql/sqlite/queries/task_claim_row.sql");
const TOKENS_GET: &str = include_str!("../../../sql/sqlite/queries/queue_tokens_get.sql");
const TOKENS_PUT: &str = include_str!("../../../sql/sqlite/queries/queue_tokens_put.sql");
pub(super) const TOKENS_LIST: &str =
    include_str!("../../../sql/sqlite/queries/queue_tokens_list.sql");

/// Claims up to `limit` tasks of `queue` that its admission limits let start now.
pub(super) fn claim_admitted(
    conn: &Connection,
    p: &ClaimParams,
    queue: &str,
    limit: u32,
    adm: &Admission,
) -> Result<Vec<Arc<Task>>> {
    let paused: i64 = conn
        .prepare_cached(PAUSED)?
        .query_row(named_params! {":queue": queue}, |r| r.get(0))?;
    if paused > 0 || limit == 0 {
        return Ok(Vec::new());
    }
    let running: u64 = match adm.global_concurrency {
        Some(_) => conn
            .prepare_cached(RUNNING)?
            .query_row(named_params! {":queue": queue}, |r| r.get::<_, i64>(0))?
            .max(0) as u64,
        None => 0,
    };
    let bucket = match &adm.rate {
        Some(rate) => {
            let stored = conn
                .prepare_cached(TOKENS_GET)?
                .query_row(named_params! {":queue": queue}, |r| {
                    Ok(Bucket {
                        tokens: r.get(0)?,
                        updated_at: r.get(1)?,
                    })
                })
                .optional()?;
            Some(rules::bucket_at(stored, rate, p.now))
        }
        None => None,
    };
    let room = rules::admission_room(limit, adm, running, bucket.as_ref());
    let claimed = if room == 0 {
        Vec::new()
    } else if let Some(per_key) = adm.per_key_concurrency {
        claim_per_key(conn, p, queue, room, per_key)?
    } else {
        let mut st = conn.prepare_cached(sql::TASK_CLAIM)?;
        let cols = TaskColumns::of(&st)?;
        let rows = st.query_map(
            named_params! {":owner": p.owner, ":now": p.now, ":lease_ms": p.lease_ms as i64,
            ":queue": queue, ":limit": room},
            |r| cols.task(r),
        )?;
        rows.map(|t| t.map(Arc::new))
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    if let Some(mut b) = bucket {
        b.tokens -= claimed.len() as f64;
        conn.prepare_cached(TOKENS_PUT)?.execute(
            named_params! {":queue": queue, ":tokens": b.tokens, ":updated_at": b.updated_at},
        )?;
    }
    Ok(claimed)
}

fn claim_per_key(
    conn: &Connection,
    p: &ClaimParams,
    queue: &str,
    room: u32,
    per_key: u32,
) -> Result<Vec<Arc<Task>>> {
    let mut running: HashMap<String, u32> = HashMap::new();
    {
        let mut st = conn.prepare_cached(KEY_RUNNING)?;
        let rows = st.query_map(named_params! {":queue": queue}, |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (k, n) = row?;
            running.insert(k, u32::try_from(n.max(0)).unwrap_or(u32::MAX));
        }
    }
    let mut candidates: Vec<Candidate<i64>> = Vec::new();
    let mut next = conn.prepare_cached(KEY_NEXT)?;
    let mut tasks = conn.prepare_cached(KEY_TASKS)?;
    let mut after = String::new();
    // Bounded by the number of distinct keys with pending tasks (each step moves past a key).
    while let Some(key) = next
        .query_row(named_params! {":queue": queue, ":after": after}, |r| {
            r.get::<_, String>(0)
        })
        .optional()?
    {
        let free = per_key.saturating_sub(running.get(&key).copied().unwrap_or(0));
        let n = free.min(room);
        if n > 0 {
            let rows = tasks.query_map(
                named_params! {":queue": queue, ":key": key, ":now": p.now, ":n": n},
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i32>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )?;
            for (i, row) in rows.enumerate() {
                let (id, priority, run_at) = row?;
                candidates.push(Candidate {
                    id,
                    priority,
                    rank: i as u32 + 1,
                    run_at,
                });
            }
        }
        after = key;
    }
    let mut unkeyed = conn.prepare_cached(UNKEYED)?;
    let rows = unkeyed.query_map(
        named_params! {":queue": queue, ":now": p.now, ":n": room},
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i32>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
    )?;
    for row in rows {
        let (id, priority, run_at) = row?;
        candidates.push(Candidate {
            id,
            priority,
            rank: 1,
            run_at,
        });
    }
    let mut claim = conn.prepare_cached(CLAIM_ROW)?;
    let cols = TaskColumns::of(&claim)?;
    let mut out = Vec::new();
    for rowid in rules::admit(candidates, room) {
        let mut rows = claim.query(named_params! {":owner": p.owner, ":now": p.now,
        ":lease_ms": p.lease_ms as i64, ":rowid": rowid})?;
        if let Some(r) = rows.next()? {
            out.push(Arc::new(cols.task(r)?));
        }
    }
    Ok(out)
}
