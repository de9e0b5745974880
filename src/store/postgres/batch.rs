//! Group commit of small enqueues: requests of one to [`SMALL`] tasks that arrive together are
//! written in one transaction (their unkeyed rows in one multi-row INSERT) with one commit, so
//! 64 clients enqueueing one task each cost a handful of commits, not 64.
//!
//! One batcher task per store takes the requests in arrival order. It writes whatever waited
//! while earlier transactions committed, up to [`MAX_TASKS`] tasks, through the same
//! [`insert_committed`] a single request uses: rows keep their order, a repeated idempotency key
//! sees its twin, and the quota check of the batch's rows per user passes only if each
//! request's own check would have passed in turn. When the batch as a whole is refused for a
//! reason that belongs to one request (a quota, an idempotency key used with another body), it
//! is rolled back; the requests the refusal names (the one with the key, or those of users the
//! group would take past a quota) are written alone, each with its own answer, and the others
//! once more as one group: what the requests would have got one by one, and a client that
//! keeps sending past its quota costs the others of its group one more commit, not one each.
//!
//! Clients that each wait for their answer before sending again (a phone's app, a script's
//! loop) come back together once a commit answers them. Without a pause, the next commit
//! would start with only the requests that arrived while the last one ran, and those clients
//! would split into two halves that take turns, each half paying for a commit of its own. So
//! a commit waits for the requests it can expect: as many as the last commit answered plus
//! those already waiting when it finished, for at most half the last commit's time and never
//! more than [`MAX_GATHER`]. A lone client (the last commit answered one request, none
//! waited) is never delayed.
//!
//! Up to [`IN_FLIGHT`] group commits run at once, each on a connection of its own: while one
//! waits for the database, the requests of the next are read and gathered, and the two cores'
//! idle time between a commit's answers and the next requests is used. Clients that wait for
//! their answers then settle into that many cohorts (64 clients: two groups of about 36).
//! Requests in flight together have no order between them (each client's own requests stay in
//! its order, as it waits for each answer), and two of them with one idempotency key meet the
//! unique index, as two hosts' would.

use super::{
    checkout as conn, insert_committed, pg_err, query, quota_caps, sql, Limits, Result, StoreError,
};
use crate::clock::UnixMillis;
use crate::events::{Event, EventHub};
use crate::store::Inserted;
use crate::task::NewTask;
use deadpool_postgres::Pool;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Requests of at most this many tasks go through the batcher; larger ones are one
/// transaction of their own already.
pub(super) const SMALL: usize = 16;

/// The most tasks one group commit writes.
const MAX_TASKS: usize = 1000;

/// Requests waiting for the batcher, at most.
const QUEUE: usize = 4096;

/// The longest a group commit waits for the clients the last one answered.
const MAX_GATHER: Duration = Duration::from_millis(2);
/// Group commits running at once, at most. Two against one, 64 single-task clients on the
/// 2-core machine with PostgreSQL on it, in alternated runs on a quiet machine: about a tenth
/// more tasks/s (pair by pair 0.98–1.19, median 1.12, nine pairs), for a median of 5% more
/// CPU per task (smaller groups). Three were no better than two. This pays only since the
/// wake-up's NOTIFY left the commit (see `notify_work`): before, concurrent notifying commits
/// took turns.
const IN_FLIGHT: usize = 2;

/// One request: its tasks (with their payloads as JSON text), its time, and where its answer
/// goes.
struct Job {
    tasks: Vec<(NewTask, String)>,
    now: UnixMillis,
    reply: oneshot::Sender<Result<Vec<Inserted>>>,
}

/// The handle of a store's batcher task (started on first use, on the caller's runtime; it
/// ends when the store, holding the only sender, is dropped).
pub(super) struct Batcher {
    tx: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
}

impl Batcher {
    pub(super) fn new() -> Self {
        Self {
            tx: std::sync::Mutex::new(None),
        }
    }

    /// Enqueues `tasks` (one small request) in the next group commit.
    pub(super) async fn insert(
        &self,
        pool: &Pool,
        hub: &Arc<EventHub>,
        limits: &Limits,
        tasks: Vec<NewTask>,
        now: UnixMillis,
    ) -> Result<Vec<Inserted>> {
        let tasks = tasks
            .into_iter()
            .map(|mut t| super::rows::jsonb_text(&mut t.payload).map(|p| (t, p)))
            .collect::<Result<Vec<_>>>()?;
        let sender = {
            let mut guard = self
                .tx
                .lock()
                .map_err(|_| StoreError::Unavailable("the enqueue batcher failed".into()))?;
            match guard.as_ref() {
                Some(s) if !s.is_closed() => s.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(run(rx, pool.clone(), hub.clone(), *limits));
                    *guard = Some(tx.clone());
                    tx
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        sender
            .send(Job { tasks, now, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the enqueue batcher has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the enqueue batcher has stopped".into()))?
    }
}

/// The batcher task: group commits, [`IN_FLIGHT`] at most at once, until the store is gone.
async fn run(mut rx: mpsc::Receiver<Job>, pool: Pool, hub: Arc<EventHub>, limits: Limits) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    // The requests the commit that ended last answered, and how long it took: the next commit
    // waits for that many requests plus those already waiting, for at most half that time.
    let ended = Arc::new(std::sync::Mutex::new((0usize, Duration::ZERO)));
    while let Some(first) = rx.recv().await {
        // The semaphore is never closed: `Err` cannot happen, and would end the batcher (its
        // callers then get `Unavailable`, not a hang).
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (answered, last) = ended.lock().map(|g| *g).unwrap_or_default();
        let expected = answered + rx.len();
        let jobs = gather(&mut rx, first, expected, last).await;
        metrics::histogram!("spool_enqueue_group_commit_requests").record(jobs.len() as f64);
        let (pool, hub, ended) = (pool.clone(), hub.clone(), ended.clone());
        tokio::spawn(async move {
            let answered = jobs.len();
            let started = Instant::now();
            write(&pool, &hub, &limits, jobs).await;
            if let Ok(mut e) = ended.lock() {
                *e = (answered, started.elapsed());
            }
            drop(slot);
        });
    }
}

/// The requests of one group commit, at most [`MAX_TASKS`] tasks: `first` and what else is
/// queued (after one yield, so requests whose handlers are running right now can join); then,
/// while it holds fewer than `expected`, what arrives within [`gather_time`].
async fn gather(
    rx: &mut mpsc::Receiver<Job>,
    first: Job,
    expected: usize,
    last: Duration,
) -> Vec<Job> {
    let mut size = first.tasks.len();
    let mut jobs = vec![first];
    let mut yielded = false;
    let mut until = None;
    while size < MAX_TASKS {
        let next = match rx.try_recv() {
            Ok(j) => j,
            Err(mpsc::error::TryRecvError::Empty) if !yielded => {
                yielded = true;
                tokio::task::yield_now().await;
                continue;
            }
            Err(mpsc::error::TryRecvError::Empty) => {
                let Some(wait) = gather_time(jobs.len(), expected, last) else {
                    break;
                };
                let until = *until.get_or_insert_with(|| Instant::now() + wait);
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(j)) => j,
                    // The time is up, or the store is gone (the batcher then ends).
                    Ok(None) | Err(_) => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        size += next.tasks.len();
        jobs.push(next);
    }
    jobs
}

/// How long a commit that holds `have` requests waits for more, when the last commit took
/// `last` and `expected` requests were about when it ended: none when it holds them all
/// already (so a lone client's request goes at once), else half of `last`, at most
/// [`MAX_GATHER`].
fn gather_time(have: usize, expected: usize, last: Duration) -> Option<Duration> {
    (have < expected).then(|| (last / 2).min(MAX_GATHER))
}

/// Writes `jobs` in one transaction, or each alone when one of them refuses the batch.
async fn write(pool: &Pool, hub: &Arc<EventHub>, limits: &Limits, jobs: Vec<Job>) {
    if jobs.len() == 1 {
        for j in jobs {
            let out = alone(pool, hub, limits, j.tasks, j.now).await;
            let _ = j.reply.send(out);
        }
        return;
    }
    let sizes: Vec<usize> = jobs.iter().map(|j| j.tasks.len()).collect();
    let all: Vec<(NewTask, String, UnixMillis)> = jobs
        .iter()
        .flat_map(|j| j.tasks.iter().map(|(t, p)| (t.clone(), p.clone(), j.now)))
        .collect();
    match together(pool, limits, all).await {
        Ok(out) => {
            publish(hub, &out);
            let mut out = out.into_iter();
            for (j, n) in jobs.into_iter().zip(sizes) {
                let _ = j.reply.send(Ok(out.by_ref().take(n).collect()));
            }
        }
        // The database is out of reach: every request gets that answer.
        Err(StoreError::Unavailable(e)) => {
            for j in jobs {
                let _ = j.reply.send(Err(StoreError::Unavailable(e.clone())));
            }
        }
        // One request's own refusal (or an error of one of them). The requests it names are
        // written alone, each with its own answer; the others once more as one group. So a
        // client past its quota, or one reusing a key, costs the others of its group one more
        // commit, not one each. When it names none (or all), each is written alone.
        Err(e) => {
            let named = named_by(pool, limits, &jobs, &e).await;
            let (mut apart, mut rest) = (Vec::new(), Vec::new());
            for (j, named) in jobs.into_iter().zip(named) {
                if named {
                    apart.push(j);
                } else {
                    rest.push(j);
                }
            }
            if apart.is_empty() {
                std::mem::swap(&mut apart, &mut rest);
            }
            if rest.len() > 1 {
                Box::pin(write(pool, hub, limits, rest)).await;
            } else {
                apart.append(&mut rest);
            }
            for j in apart {
                let out = alone(pool, hub, limits, j.tasks, j.now).await;
                let _ = j.reply.send(out);
            }
        }
    }
}

/// Which of `jobs` the refusal `e` of their group commit names: the request whose idempotency
/// key was used with another body, or the requests of users whose quota the group's tasks
/// would pass (by their usage read now, without a lock: a guess, which the writes that follow
/// check). None when it names no request (or their usage cannot be read).
async fn named_by(pool: &Pool, limits: &Limits, jobs: &[Job], e: &StoreError) -> Vec<bool> {
    match e {
        StoreError::IdempotencyMismatch { index, .. } => {
            let mut start = 0;
            jobs.iter()
                .map(|j| {
                    let of_it = (start..start + j.tasks.len()).contains(index);
                    start += j.tasks.len();
                    of_it
                })
                .collect()
        }
        StoreError::LimitReached { .. } => {
            let over = over_quota(pool, limits, jobs).await.unwrap_or_default();
            jobs.iter()
                .map(|j| j.tasks.iter().any(|(t, _)| over.contains(&t.user_id)))
                .collect()
        }
        _ => vec![false; jobs.len()],
    }
}

/// The users whose usage now plus what `jobs` add passes a quota.
async fn over_quota(pool: &Pool, limits: &Limits, jobs: &[Job]) -> Result<BTreeSet<String>> {
    let mut adds: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (t, payload) in jobs.iter().flat_map(|j| j.tasks.iter()) {
        let add = adds.entry(t.user_id.as_str()).or_default();
        add.0 = add.0.saturating_add(1);
        add.1 = add
            .1
            .saturating_add(i64::try_from(payload.len()).unwrap_or(i64::MAX));
    }
    let users: Vec<&str> = adds.keys().copied().collect();
    let c = conn(pool).await?;
    let rows = query(&c, sql::USAGE_READ, &[&users]).await?;
    let (max_tasks, max_bytes) = quota_caps(limits);
    let mut over = BTreeSet::new();
    for r in rows {
        let user: String = r.try_get("user_id").map_err(pg_err)?;
        let tasks: i64 = r.try_get("unfinished").map_err(pg_err)?;
        let bytes: i64 = r.try_get("payload_bytes").map_err(pg_err)?;
        let (more_tasks, more_bytes) = adds.get(user.as_str()).copied().unwrap_or_default();
        if tasks.saturating_add(more_tasks) > max_tasks
            || bytes.saturating_add(more_bytes) > max_bytes
        {
            over.insert(user);
        }
    }
    Ok(over)
}

/// The batch's rows (each with its request's `now`) in one transaction.
async fn together(
    pool: &Pool,
    limits: &Limits,
    tasks: Vec<(NewTask, String, UnixMillis)>,
) -> Result<Vec<Inserted>> {
    let mut c = conn(pool).await?;
    insert_committed(&mut c, tasks, limits).await
}

/// One request in a transaction of its own (as [`super::PostgresStore`] writes a large one).
async fn alone(
    pool: &Pool,
    hub: &Arc<EventHub>,
    limits: &Limits,
    tasks: Vec<(NewTask, String)>,
    now: UnixMillis,
) -> Result<Vec<Inserted>> {
    let mut c = conn(pool).await?;
    let tasks = tasks.into_iter().map(|(t, p)| (t, p, now)).collect();
    let out = insert_committed(&mut c, tasks, limits).await?;
    publish(hub, &out);
    Ok(out)
}

fn publish(hub: &Arc<EventHub>, out: &[Inserted]) {
    for i in out.iter().filter(|i| i.created) {
        hub.publish(Event::Task(i.task.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_clients_request_goes_at_once() {
        // The last commit answered one request and nothing waited: expected = 1.
        assert_eq!(gather_time(1, 1, Duration::from_millis(8)), None);
        assert_eq!(gather_time(1, 0, Duration::ZERO), None);
    }

    #[test]
    fn a_commit_waits_for_the_clients_the_last_one_answered_for_half_its_time() {
        assert_eq!(
            gather_time(29, 64, Duration::from_millis(3)),
            Some(Duration::from_micros(1500))
        );
        // Never more than MAX_GATHER, however slow the last commit was.
        assert_eq!(
            gather_time(29, 64, Duration::from_millis(40)),
            Some(MAX_GATHER)
        );
        // All of them are back: no wait.
        assert_eq!(gather_time(64, 64, Duration::from_millis(3)), None);
    }
}
