//! Admission control in the claim (see the SQLite store's `admission.rs` for the rules). A
//! claim that reaches a limited queue holds that queue's advisory lock (`admission_lock.sql`,
//! taken by the caller before anything else), so the queue's claims take turns across every
//! process and each sees what the one before it committed: no process can over-admit. What
//! runs concurrently with it (finishes, rescues) only lowers the counts it reads.

use super::{execute, pg_err, query, rows};
use crate::store::rules::{self, Candidate};
use crate::store::{Admission, Bucket, ClaimParams, Result};
use crate::task::Task;
use std::sync::Arc;
use uuid::Uuid;

const STATE: &str = include_str!("../../../sql/postgres/queries/admission_state.sql");
const CANDIDATES: &str = include_str!("../../../sql/postgres/queries/admission_candidates.sql");
const CLAIM_IDS: &str = include_str!("../../../sql/postgres/queries/admission_claim_ids.sql");
const TOKENS_PUT: &str = include_str!("../../../sql/postgres/queries/queue_tokens_put.sql");
pub(super) const TOKENS_LIST: &str =
    include_str!("../../../sql/postgres/queries/queue_tokens_list.sql");

/// Claims up to `limit` tasks of `queue` that its admission limits let start now, inside the
/// caller's transaction.
pub(super) async fn claim_admitted<C: super::Cached>(
    c: &C,
    p: &ClaimParams,
    queue: &str,
    limit: u32,
    adm: &Admission,
) -> Result<Vec<Arc<Task>>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = query(c, STATE, &[&queue]).await?;
    let Some(state) = rows.first() else {
        return Ok(Vec::new());
    };
    let paused: bool = state.try_get("paused").map_err(pg_err)?;
    if paused {
        return Ok(Vec::new());
    }
    let running: i64 = state.try_get("running").map_err(pg_err)?;
    let stored = match (
        state.try_get::<_, Option<f64>>("tokens").map_err(pg_err)?,
        state
            .try_get::<_, Option<i64>>("updated_at")
            .map_err(pg_err)?,
    ) {
        (Some(tokens), Some(updated_at)) => Some(Bucket { tokens, updated_at }),
        _ => None,
    };
    let bucket = adm.rate.map(|r| rules::bucket_at(stored, &r, p.now));
    let room = rules::admission_room(limit, adm, running.max(0) as u64, bucket.as_ref());
    let lease = i64::try_from(p.lease_ms).unwrap_or(i64::MAX);
    let claimed = if room == 0 {
        Vec::new()
    } else if let Some(per_key) = adm.per_key_concurrency {
        let rows = query(
            c,
            CANDIDATES,
            &[&queue, &p.now, &i64::from(per_key), &i64::from(room)],
        )
        .await?;
        let mut candidates = Vec::with_capacity(rows.len());
        for r in &rows {
            let rank: i64 = r.try_get("rank").map_err(pg_err)?;
            candidates.push(Candidate {
                id: r.try_get::<_, Uuid>("id").map_err(pg_err)?,
                priority: r.try_get("priority").map_err(pg_err)?,
                rank: u32::try_from(rank.max(1)).unwrap_or(u32::MAX),
                run_at: r.try_get("run_at").map_err(pg_err)?,
            });
        }
        let ids = rules::admit(candidates, room);
        if ids.is_empty() {
            Vec::new()
        } else {
            let rows = query(c, CLAIM_IDS, &[&p.owner, &p.now, &lease, &ids]).await?;
            rows::tasks(&rows)?
        }
    } else {
        let (names, limits, total) = (vec![queue], vec![i64::from(room)], i64::from(room));
        let rows = query(
            c,
            super::sql::TASK_CLAIM,
            &[&p.owner, &p.now, &lease, &names, &limits, &total],
        )
        .await?;
        rows::tasks(&rows)?
    };
    // A claim that started nothing leaves the bucket as stored: refilled later from there, it
    // holds what it would have held (the refill is linear up to the burst).
    if let Some(mut b) = bucket.filter(|_| !claimed.is_empty()) {
        b.tokens -= claimed.len() as f64;
        execute(c, TOKENS_PUT, &[&queue, &b.tokens, &b.updated_at]).await?;
    }
    Ok(claimed.into_iter().map(Arc::new).collect())
}
