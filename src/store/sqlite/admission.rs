//! Admission control in the claim: a queue with `global_concurrency`, `per_key_concurrency` or
//! a `rate` is claimed from here, inside the claim's write transaction. SQLite has one writer
//! for all processes (`BEGIN IMMEDIATE`), so what this counts (running tasks, the bucket) cannot
//! change before the claim commits: two processes can never over-admit.
//!
//! Without a per-key limit the claim is the ordinary one with a smaller limit. With one, a short
//! walk of the queue's tasks in claim order usually decides it (`walk`: it reads a few rows more
//! than the claim takes), and the admitted tasks are claimed in one statement. When a flood of full keys' tasks fills the walk, the keys that
//! have pending tasks are listed by a skip scan of `tasks_key_pending` (one seek per key), each
//! key that has room offers its best tasks, and [`rules::admit`] picks among them: a key with
//! thousands of waiting tasks costs the claim one seek while it is at its limit, and never
//! delays another key's task (no head-of-line blocking). Both ways pick the same tasks.

use super::rows::TaskColumns;
use crate::store::rules::{self, Candidate};
use crate::store::{Admission, Bucket, ClaimParams, Result};
use crate::task::Task;
use rusqlite::{named_params, Connection, OptionalExtension, Row};
use std::collections::HashMap;
use std::sync::Arc;

const PAUSED: &str = include_str!("../../../sql/sqlite/queries/admission_paused.sql");
const RUNNING: &str = include_str!("../../../sql/sqlite/queries/admission_running.sql");
const KEY_RUNNING: &str = include_str!("../../../sql/sqlite/queries/admission_key_running.sql");
const KEY_NEXT: &str = include_str!("../../../sql/sqlite/queries/admission_key_next.sql");
const KEY_TASKS: &str = include_str!("../../../sql/sqlite/queries/admission_key_tasks.sql");
const WALK: &str = include_str!("../../../sql/sqlite/queries/admission_walk.sql");
const UNKEYED: &str = include_str!("../../../sql/sqlite/queries/admission_unkeyed.sql");
const CLAIM_ROWS: &str = include_str!("../../../sql/sqlite/queries/task_claim_rows.sql");
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
        super::claim::claim_plain(conn, p, queue, room)?
    };
    // A claim that started nothing leaves the bucket as stored: refilled later from there, it
    // holds what it would have held (the refill is linear up to the burst).
    if let Some(mut b) = bucket.filter(|_| !claimed.is_empty()) {
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
    let candidates = match walk(conn, p, queue, room, per_key, &running)? {
        Some(c) => c,
        None => {
            let mut c = scan_keys(conn, p, queue, room, per_key, &running)?;
            let mut unkeyed = conn.prepare_cached(UNKEYED)?;
            let rows = unkeyed.query_map(
                named_params! {":queue": queue, ":now": p.now, ":n": room},
                |r| candidate(r, 0, 1),
            )?;
            for row in rows {
                c.push(row?);
            }
            c
        }
    };
    let rowids = rules::admit(candidates, room);
    if rowids.is_empty() {
        return Ok(Vec::new());
    }
    let rowids = serde_json::to_string(&rowids).unwrap_or_else(|_| "[]".into());
    let mut claim = conn.prepare_cached(CLAIM_ROWS)?;
    let cols = TaskColumns::of(&claim)?;
    let rows = claim.query_map(
        named_params! {":owner": p.owner, ":now": p.now, ":lease_ms": p.lease_ms as i64,
        ":rowids": rowids},
        |r| cols.task(r),
    )?;
    Ok(rows
        .map(|t| t.map(Arc::new))
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// A candidate from a row whose columns `at..at+3` are rowid, priority and run_at.
fn candidate(r: &Row<'_>, at: usize, rank: u32) -> rusqlite::Result<Candidate<i64>> {
    Ok(Candidate {
        id: r.get(at)?,
        priority: r.get(at + 1)?,
        rank,
        run_at: r.get(at + 2)?,
    })
}

/// Rows the walk reads at most, beyond the claim's room, before it gives way to the scan.
const WALK_SLACK: u32 = 256;

/// The short way to a per-key claim's candidates: the queue's runnable tasks in claim order,
/// each taken while its key has room (a task without a key always has). It decides the claim
/// once it holds `room` tasks that are first of their key or have none (no task further on can
/// beat them: it comes later and is at best first of its key too) or has read every runnable
/// task; `None` when it read its bound first (a flood of full keys' tasks ahead), and the claim
/// scans key by key instead.
fn walk(
    conn: &Connection,
    p: &ClaimParams,
    queue: &str,
    room: u32,
    per_key: u32,
    running: &HashMap<String, u32>,
) -> Result<Option<Vec<Candidate<i64>>>> {
    let bound = room.saturating_mul(4).saturating_add(WALK_SLACK);
    let mut st = conn.prepare_cached(WALK)?;
    let mut rows = st.query(named_params! {":queue": queue, ":now": p.now, ":n": bound})?;
    let mut taken: HashMap<String, u32> = HashMap::new();
    let mut candidates = Vec::new();
    let (mut read, mut firsts) = (0u32, 0u32);
    while let Some(r) = rows.next()? {
        read += 1;
        let mine = match r.get::<_, Option<String>>(3)? {
            None => 0,
            Some(key) => {
                let mine = taken.get(&key).copied().unwrap_or(0);
                let busy = running.get(&key).copied().unwrap_or(0);
                if busy.saturating_add(mine) >= per_key || mine >= room {
                    continue;
                }
                taken.insert(key, mine + 1);
                mine
            }
        };
        candidates.push(candidate(r, 0, mine + 1)?);
        if mine == 0 {
            firsts += 1;
            if firsts >= room {
                return Ok(Some(candidates));
            }
        }
    }
    Ok((read < bound).then_some(candidates))
}

/// Every key with pending tasks, one seek each (see the module comment): each key with room
/// offers its best tasks.
fn scan_keys(
    conn: &Connection,
    p: &ClaimParams,
    queue: &str,
    room: u32,
    per_key: u32,
    running: &HashMap<String, u32>,
) -> Result<Vec<Candidate<i64>>> {
    let mut candidates: Vec<Candidate<i64>> = Vec::new();
    let mut next = conn.prepare_cached(KEY_NEXT)?;
    let mut tasks = conn.prepare_cached(KEY_TASKS)?;
    let mut after = String::new();
    // Bounded by the number of distinct keys with pending tasks (each step moves past a key).
    while let Some((key, best)) = next
        .query_row(named_params! {":queue": queue, ":after": after}, |r| {
            Ok((r.get::<_, String>(0)?, candidate(r, 1, 1)?))
        })
        .optional()?
    {
        let free = per_key.saturating_sub(running.get(&key).copied().unwrap_or(0));
        let n = free.min(room);
        if n == 1 && best.run_at <= p.now {
            // The key's best task is runnable and the only one it may start: read already.
            candidates.push(best);
        } else if n > 0 {
            let rows = tasks.query_map(
                named_params! {":queue": queue, ":key": key, ":now": p.now, ":n": n},
                |r| candidate(r, 0, 1),
            )?;
            for (i, row) in rows.enumerate() {
                candidates.push(Candidate {
                    rank: i as u32 + 1,
                    ..row?
                });
            }
        }
        after = key;
    }
    Ok(candidates)
}
