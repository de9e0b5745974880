//! Admission control in the claim: a queue with `global_concurrency`, `per_key_concurrency` or
//! a `rate` is claimed from here, inside the claim's write transaction. SQLite has one writer
//! for all processes (`BEGIN IMMEDIATE`), so what this counts (running tasks, the bucket) cannot
//! change before the claim commits: two processes can never over-admit.
//!
//! Without a per-key limit the claim is the ordinary one with a smaller limit. With one, a short
//! walk of the queue's tasks in claim order decides it (`walk`: it reads a few rows more than
//! the claim takes), and the admitted tasks are claimed in one statement. When a flood of full
//! keys' tasks fills the walk, the claim parks the tasks it passed (0015_parked.sql): they leave
//! `tasks_claim` for `tasks_key_parked`, which is ordered by key, and the walk goes on past them.
//! Each claim lists the keys with parked tasks by a skip scan (one seek per key), and each key
//! with room offers its best parked tasks beside the walk's; [`rules::admit`] picks among them.
//! A key with thousands of waiting tasks is parked once and then costs a claim one seek, and
//! never delays another key's task (no head-of-line blocking). Only parked tasks are in a
//! key-ordered index, so a claim that parks nothing writes no scattered index pages.
//!
//! A parked task can go before a task of its key that is better in claim order but lies beyond
//! where the walk stopped (a later enqueue with a higher priority): the key's limit still holds,
//! and that task is offered by a later claim.

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
const PARK: &str = include_str!("../../../sql/sqlite/queries/admission_park.sql");
pub(super) const UNPARK: &str = include_str!("../../../sql/sqlite/queries/admission_unpark.sql");
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
    let mut offers = parked_offers(conn, p, queue, room, per_key, &running)?;
    // A walk that passes its bound of tasks without deciding is clogged: the tasks it passed
    // are parked and it walks again, and from then on this claim parks every task it passes.
    // Each round that does not decide parks `bound` tasks, so a flood is parked once, that many
    // a round. A claim walks at most PARK_ROUNDS times, so it holds the writer for a bounded
    // time whatever the flood: the last walk's offers are then taken as they are (within every
    // key's limit), and the next claim parks on.
    let mut clogged = false;
    for round in 1.. {
        let w = walk(conn, p, queue, room, per_key, &running)?;
        let done = w.decided || w.passed.is_empty() || round >= PARK_ROUNDS;
        if (clogged || !done) && !w.passed.is_empty() {
            conn.prepare_cached(PARK)?
                .execute(named_params! {":rowids": json_ids(&w.passed)})?;
        }
        if done {
            offers.extend(w.offers);
            break;
        }
        clogged = true;
    }
    let rowids = rules::admit(rank_offers(offers, room, per_key, &running), room);
    if rowids.is_empty() {
        return Ok(Vec::new());
    }
    let rowids = json_ids(&rowids);
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

/// A runnable task a per-key claim may take, with its key (`None`: it has none).
#[derive(Debug)]
struct Offer {
    key: Option<String>,
    task: Candidate<i64>,
}

/// The offers as [`rules::admit`] takes them: each key's best offers in claim order, as many as
/// it has room for (and at most `room`), ranked 1, 2, …; a task without a key is always 1.
/// A key can offer tasks from both places (parked, and reached by the walk): this is where its
/// limit is applied to them together.
fn rank_offers(
    mut offers: Vec<Offer>,
    room: u32,
    per_key: u32,
    running: &HashMap<String, u32>,
) -> Vec<Candidate<i64>> {
    offers.sort_by(|a, b| {
        a.key
            .cmp(&b.key)
            .then(b.task.priority.cmp(&a.task.priority))
            .then(a.task.run_at.cmp(&b.task.run_at))
            .then(a.task.id.cmp(&b.task.id))
    });
    let mut out = Vec::with_capacity(offers.len());
    let mut prev: Option<String> = None;
    let (mut rank, mut most) = (0u32, 0u32);
    for o in offers {
        let Some(key) = o.key else {
            out.push(Candidate { rank: 1, ..o.task });
            continue;
        };
        if prev.as_ref() != Some(&key) {
            rank = 0;
            most = per_key
                .saturating_sub(running.get(&key).copied().unwrap_or(0))
                .min(room);
            prev = Some(key);
        }
        if rank < most {
            rank += 1;
            out.push(Candidate { rank, ..o.task });
        }
    }
    out
}

/// `ids` as a JSON array, for the statements that take a set of rows through `json_each`.
fn json_ids(ids: &[i64]) -> String {
    let items: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("[{}]", items.join(","))
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

/// Rows the walk passes at most, beyond four times the claim's room, before it parks them.
const WALK_SLACK: u32 = 256;

/// Walks one claim takes at most (see `claim_per_key`): with a room of 32, up to 6,144 tasks
/// parked per claim.
const PARK_ROUNDS: u32 = 16;

/// What one walk found.
struct Walk {
    /// The tasks it may take.
    offers: Vec<Offer>,
    /// The rows it passed because their key had no room left (running, or taken earlier in
    /// the walk).
    passed: Vec<i64>,
    /// Whether `offers` decides the claim (see [`walk`]); if not, it passed its bound of rows.
    decided: bool,
}

/// The queue's runnable unparked tasks in claim order (tasks_claim), each offered while its
/// key has room (a task without a key always has). The walk decides the claim once it holds
/// `room` offers that are first of their key in the walk or have none, or once it has read
/// every runnable task. No task further on can beat those: it comes later in claim order, and
/// is at best first of its key too. (A key's parked task that goes before the walk's first one
/// is as good a candidate: better in claim order, and first of the key.) It stops undecided
/// once it has passed its bound of rows whose key had no room: a flood of full keys' tasks is
/// ahead, and the claim parks them. The offers it reads are bounded too, by `room` keys with
/// `room` each at most.
fn walk(
    conn: &Connection,
    p: &ClaimParams,
    queue: &str,
    room: u32,
    per_key: u32,
    running: &HashMap<String, u32>,
) -> Result<Walk> {
    let bound = room.saturating_mul(4).saturating_add(WALK_SLACK) as usize;
    let mut st = conn.prepare_cached(WALK)?;
    let mut rows = st.query(named_params! {":queue": queue, ":now": p.now})?;
    let mut taken: HashMap<String, u32> = HashMap::new();
    let mut w = Walk {
        offers: Vec::new(),
        passed: Vec::new(),
        decided: false,
    };
    let mut firsts = 0u32;
    while let Some(r) = rows.next()? {
        let key = r.get::<_, Option<String>>(3)?;
        let first = match &key {
            None => true,
            Some(k) => {
                let mine = taken.get(k).copied().unwrap_or(0);
                let busy = running.get(k).copied().unwrap_or(0);
                if busy.saturating_add(mine) >= per_key || mine >= room {
                    w.passed.push(r.get(0)?);
                    if w.passed.len() >= bound {
                        return Ok(w);
                    }
                    continue;
                }
                taken.insert(k.clone(), mine + 1);
                mine == 0
            }
        };
        w.offers.push(Offer {
            key,
            task: candidate(r, 0, 1)?,
        });
        if first {
            firsts += 1;
            if firsts >= room {
                w.decided = true;
                return Ok(w);
            }
        }
    }
    w.decided = true;
    Ok(w)
}

/// The parked tasks the claim may take: every key with parked tasks is listed with one seek
/// (see `admission_key_next.sql`), and each that has room offers its best runnable ones.
fn parked_offers(
    conn: &Connection,
    p: &ClaimParams,
    queue: &str,
    room: u32,
    per_key: u32,
    running: &HashMap<String, u32>,
) -> Result<Vec<Offer>> {
    let mut offers = Vec::new();
    let mut next = conn.prepare_cached(KEY_NEXT)?;
    let mut tasks = conn.prepare_cached(KEY_TASKS)?;
    let mut after = String::new();
    // Bounded by the number of distinct keys with parked tasks (each step moves past a key).
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
            offers.push(Offer {
                key: Some(key.clone()),
                task: best,
            });
        } else if n > 0 {
            let rows = tasks.query_map(
                named_params! {":queue": queue, ":key": key, ":now": p.now, ":n": n},
                |r| candidate(r, 0, 1),
            )?;
            for row in rows {
                offers.push(Offer {
                    key: Some(key.clone()),
                    task: row?,
                });
            }
        }
        after = key;
    }
    Ok(offers)
}
