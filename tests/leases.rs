//! The task state machine through the store, on a driven clock: every transition and every
//! refused one, lease expiry, the backoff schedule, fencing of a stale worker's finish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use spool::backoff::RetryPolicy;
use spool::clock::{Clock, ManualClock};
use spool::queue::{decide, Outcome};
use spool::store::{
    ClaimParams, FinishParams, QueueClaim, SqliteStore, Store, StoreError, StoreOptions,
};
use spool::task::{NewTask, Task, TaskId, TaskStatus};
use spool::worker::prune_once;
use std::sync::Arc;
use std::time::Duration;

const T0: i64 = 1_800_000_000_000;
const LEASE: u64 = 1000;

struct Bundle {
    store: SqliteStore,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn setup() -> Bundle {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(StoreOptions::new(dir.path().join("spool.db"))).unwrap();
    Bundle {
        store,
        clock: Arc::new(ManualClock::new(T0)),
        _dir: dir,
    }
}

fn new_task(queue: &str, max_attempts: u32, priority: i32, run_at: i64) -> NewTask {
    NewTask {
        id: TaskId::new(),
        user_id: "u".into(),
        queue: queue.into(),
        kind: "k".into(),
        payload: json!({"n": 1}),
        priority,
        run_at,
        max_attempts,
        timeout_ms: 1000,
        idempotency_key: None,
        request_hash: None,
    }
}

impl Bundle {
    async fn add(&self, t: NewTask) -> Task {
        self.store
            .task_insert(vec![t], self.clock.now())
            .await
            .unwrap()
            .remove(0)
            .task
            .as_ref()
            .clone()
    }

    async fn claim(&self, owner: &str, n: u32) -> Vec<Task> {
        self.store
            .task_claim(ClaimParams {
                owner: owner.into(),
                queues: vec![QueueClaim {
                    queue: "default".into(),
                    limit: n,
                }],
                total: n,
                lease_ms: LEASE,
                rescue: true,
                now: self.clock.now(),
            })
            .await
            .unwrap()
            .into_iter()
            .map(Arc::unwrap_or_clone)
            .collect()
    }

    async fn finish(
        &self,
        t: &Task,
        owner: &str,
        status: TaskStatus,
        run_at: Option<i64>,
    ) -> Option<Task> {
        self.store
            .task_finish_wait(FinishParams {
                task: Arc::new(t.clone()),
                owner: owner.into(),
                status,
                result: (status == TaskStatus::Completed).then(|| json!("ok")),
                error: (status != TaskStatus::Completed).then(|| "boom".to_string()),
                run_at,
                uncount: false,
                now: self.clock.now(),
            })
            .await
            .unwrap()
            .map(Arc::unwrap_or_clone)
    }

    async fn get(&self, id: TaskId) -> Task {
        self.store.task_get(id, None).await.unwrap()
    }
}

#[tokio::test]
async fn pending_to_running_to_completed() {
    let b = setup();
    let t = b.add(new_task("default", 3, 0, T0)).await;
    assert_eq!(t.status, TaskStatus::Pending);
    let c = b.claim("A", 10).await;
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].status, c[0].attempts), (TaskStatus::Running, 1));
    assert_eq!(c[0].lease_owner.as_deref(), Some("A"));
    assert_eq!(c[0].lease_expires_at, Some(T0 + LEASE as i64));
    let done = b
        .finish(&c[0], "A", TaskStatus::Completed, None)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result, Some(json!("ok")));
    assert_eq!(done.lease_owner, None);
    assert_eq!(done.completed_at, Some(T0));
    // A terminal task is never claimed again.
    b.clock.advance(10 * LEASE as i64);
    assert!(b.claim("B", 10).await.is_empty());
}

#[tokio::test]
async fn claim_skips_future_tasks_until_run_at() {
    let b = setup();
    b.add(new_task("default", 3, 0, T0 + 5000)).await;
    assert!(b.claim("A", 10).await.is_empty());
    b.clock.advance(5000);
    assert_eq!(b.claim("A", 10).await.len(), 1);
}

#[tokio::test]
async fn claim_orders_by_priority_then_run_at_and_respects_the_limit() {
    let b = setup();
    let low = b.add(new_task("default", 3, -5, T0 - 10)).await;
    let high = b.add(new_task("default", 3, 50, T0)).await;
    let mid_old = b.add(new_task("default", 3, 0, T0 - 100)).await;
    let mid_new = b.add(new_task("default", 3, 0, T0 - 50)).await;
    let got: Vec<TaskId> = b.claim("A", 3).await.iter().map(|t| t.id).collect();
    assert_eq!(got, vec![high.id, mid_old.id, mid_new.id]);
    let rest: Vec<TaskId> = b.claim("A", 3).await.iter().map(|t| t.id).collect();
    assert_eq!(rest, vec![low.id]);
}

#[tokio::test]
async fn paused_queue_is_never_claimed_until_resumed() {
    let b = setup();
    b.add(new_task("default", 3, 0, T0)).await;
    b.store
        .queue_set_paused("default".into(), true, T0)
        .await
        .unwrap();
    assert!(b.claim("A", 10).await.is_empty());
    b.store
        .queue_set_paused("default".into(), false, T0)
        .await
        .unwrap();
    assert_eq!(b.claim("A", 10).await.len(), 1);
}

#[tokio::test]
async fn expired_lease_is_reclaimed_and_the_stale_finish_is_fenced() {
    let b = setup();
    let t = b.add(new_task("default", 3, 0, T0)).await;
    let a = b.claim("A", 1).await.remove(0);
    // Still leased: nobody else gets it.
    b.clock.advance(LEASE as i64 - 1);
    assert!(b.claim("B", 1).await.is_empty());
    // Past the lease: B takes it over as attempt 2.
    b.clock.advance(2);
    let bt = b.claim("B", 1).await.remove(0);
    assert_eq!(
        (bt.id, bt.attempts, bt.lease_owner.as_deref()),
        (t.id, 2, Some("B"))
    );
    assert_eq!(bt.last_error.as_deref(), Some("lease expired: worker lost"));
    // A wakes up and reports: nothing changes.
    assert!(b
        .finish(&a, "A", TaskStatus::Completed, None)
        .await
        .is_none());
    assert_eq!(b.get(t.id).await.status, TaskStatus::Running);
    // B's result stands.
    let done = b
        .finish(&bt, "B", TaskStatus::Completed, None)
        .await
        .unwrap();
    assert_eq!((done.status, done.attempts), (TaskStatus::Completed, 2));
}

#[tokio::test]
async fn expired_lease_on_the_last_attempt_fails_the_task() {
    let b = setup();
    let t = b.add(new_task("default", 1, 0, T0)).await;
    b.claim("A", 1).await;
    b.clock.advance(LEASE as i64 + 1);
    assert!(b.claim("B", 1).await.is_empty());
    let t = b.get(t.id).await;
    assert_eq!(t.status, TaskStatus::Failed);
    assert_eq!(t.last_error.as_deref(), Some("lease expired: worker lost"));
}

#[tokio::test]
async fn heartbeat_extends_the_lease_and_reports_cancel_requests() {
    let b = setup();
    let t = b.add(new_task("default", 3, 0, T0)).await;
    b.claim("A", 1).await;
    b.clock.advance(LEASE as i64 - 100);
    let held = b
        .store
        .lease_extend("A".into(), LEASE, b.clock.now())
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert!(!held[0].cancel_requested);
    b.clock.advance(500); // past the first lease, within the extended one
    assert!(b.claim("B", 1).await.is_empty());
    // Another worker's heartbeat extends nothing of A's.
    assert!(b
        .store
        .lease_extend("B".into(), LEASE, b.clock.now())
        .await
        .unwrap()
        .is_empty());
    // A cancel request reaches the holder through its heartbeat.
    let c = b
        .store
        .task_cancel(t.id, None, b.clock.now())
        .await
        .unwrap();
    assert_eq!((c.status, c.cancel_requested), (TaskStatus::Running, true));
    let held = b
        .store
        .lease_extend("A".into(), LEASE, b.clock.now())
        .await
        .unwrap();
    assert!(held[0].cancel_requested);
}

#[tokio::test]
async fn failure_retries_on_the_backoff_schedule_then_fails() {
    let b = setup();
    let policy = RetryPolicy {
        base_ms: 1000,
        max_ms: 60_000,
        max_attempts: 3,
    };
    let t = b.add(new_task("default", 3, 0, T0)).await;
    let mut expected_delays = vec![];
    for attempt in 1..=3u32 {
        let c = b.claim("A", 1).await;
        assert_eq!(c.len(), 1, "attempt {attempt} should be claimable");
        let c = &c[0];
        assert_eq!(c.attempts, attempt);
        let now = b.clock.now();
        let outcome = Outcome::Failed {
            error: format!("e{attempt}"),
            permanent: false,
            retry_after: None,
        };
        let tr = decide(outcome, c.attempts, c.max_attempts, &policy, 0.0, now);
        let f = b.finish(c, "A", tr.status, tr.run_at).await.unwrap();
        if attempt < 3 {
            assert_eq!(f.status, TaskStatus::Pending);
            let delay = f.run_at - now;
            expected_delays.push(delay);
            // Not claimable before the delay has passed.
            b.clock.advance(delay - 1);
            assert!(b.claim("A", 1).await.is_empty());
            b.clock.advance(1);
        } else {
            assert_eq!(f.status, TaskStatus::Failed);
            assert!(f.completed_at.is_some());
        }
    }
    // base * 2^(attempt-1) * 0.5 (jitter 0): 500, 1000.
    assert_eq!(expected_delays, vec![500, 1000]);
    assert_eq!(b.get(t.id).await.attempts, 3);
}

#[tokio::test]
async fn permanent_failure_fails_at_once() {
    let b = setup();
    b.add(new_task("default", 5, 0, T0)).await;
    let c = b.claim("A", 1).await.remove(0);
    let tr = decide(
        Outcome::Failed {
            error: "bad".into(),
            permanent: true,
            retry_after: None,
        },
        1,
        5,
        &RetryPolicy::default(),
        0.5,
        T0,
    );
    let f = b.finish(&c, "A", tr.status, tr.run_at).await.unwrap();
    assert_eq!((f.status, f.attempts), (TaskStatus::Failed, 1));
}

#[tokio::test]
async fn cancel_and_retry_transitions_and_refusals() {
    let b = setup();
    // pending → canceled at once
    let p = b.add(new_task("default", 3, 0, T0)).await;
    let c = b.store.task_cancel(p.id, None, T0).await.unwrap();
    assert_eq!(c.status, TaskStatus::Canceled);
    // canceled → cancel again is refused
    assert!(matches!(
        b.store.task_cancel(p.id, None, T0).await,
        Err(StoreError::Conflict(_))
    ));
    // canceled → retry → pending with attempts 0
    let r = b.store.task_retry(p.id, None, T0).await.unwrap();
    assert_eq!(
        (r.status, r.attempts, r.completed_at),
        (TaskStatus::Pending, 0, None)
    );
    // pending → retry is refused
    assert!(matches!(
        b.store.task_retry(p.id, None, T0).await,
        Err(StoreError::Conflict(_))
    ));
    // running → cancel requested; the worker's canceled finish ends it
    let run = b.claim("A", 1).await.remove(0);
    assert!(matches!(
        b.store.task_retry(run.id, None, T0).await,
        Err(StoreError::Conflict(_))
    ));
    let req = b.store.task_cancel(run.id, None, T0).await.unwrap();
    assert!(req.cancel_requested);
    let ended = b
        .finish(&run, "A", TaskStatus::Canceled, None)
        .await
        .unwrap();
    assert_eq!(ended.status, TaskStatus::Canceled);
    // completed → cancel refused, retry refused
    let q = b.add(new_task("default", 3, 0, T0)).await;
    let qc = b.claim("A", 1).await.remove(0);
    assert_eq!(qc.id, q.id);
    b.finish(&qc, "A", TaskStatus::Completed, None)
        .await
        .unwrap();
    assert!(matches!(
        b.store.task_cancel(q.id, None, T0).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        b.store.task_retry(q.id, None, T0).await,
        Err(StoreError::Conflict(_))
    ));
    // another user's task is not found
    assert!(matches!(
        b.store.task_cancel(q.id, Some("v".into()), T0).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_cancel_requested_task_whose_worker_died_ends_canceled() {
    let b = setup();
    let t = b.add(new_task("default", 3, 0, T0)).await;
    b.claim("A", 1).await;
    b.store.task_cancel(t.id, None, T0).await.unwrap();
    b.clock.advance(LEASE as i64 + 1);
    assert!(b.claim("B", 1).await.is_empty());
    assert_eq!(b.get(t.id).await.status, TaskStatus::Canceled);
}

#[tokio::test]
async fn released_lease_gives_the_attempt_back() {
    let b = setup();
    let t = b.add(new_task("default", 3, 0, T0)).await;
    let c = b.claim("A", 1).await.remove(0);
    assert_eq!(c.id, t.id);
    let r = b
        .store
        .task_finish_wait(FinishParams {
            task: Arc::new(c.clone()),
            owner: "A".into(),
            status: TaskStatus::Pending,
            result: None,
            error: None,
            run_at: Some(T0),
            uncount: true,
            now: T0,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.status, r.attempts, r.lease_owner.as_deref()),
        (TaskStatus::Pending, 0, None)
    );
    // Picked up again at once, as attempt 1.
    assert_eq!(b.claim("B", 1).await[0].attempts, 1);
}

#[tokio::test]
async fn idempotency_key_replays_and_refuses_a_different_request() {
    let b = setup();
    let mut t = new_task("default", 3, 0, T0);
    t.idempotency_key = Some("k1".into());
    t.request_hash = Some("h1".into());
    let first = b
        .store
        .task_insert(vec![t.clone()], T0)
        .await
        .unwrap()
        .remove(0);
    assert!(first.created);
    let mut again = t.clone();
    again.id = TaskId::new();
    let replay = b
        .store
        .task_insert(vec![again.clone()], T0)
        .await
        .unwrap()
        .remove(0);
    assert!(!replay.created);
    assert_eq!(replay.task.id, first.task.id);
    again.request_hash = Some("h2".into());
    assert!(matches!(
        b.store.task_insert(vec![again], T0).await,
        Err(StoreError::IdempotencyMismatch { index: 0, .. })
    ));
    // A batch that fails on its second item writes nothing of its first.
    let fresh = new_task("default", 3, 0, T0);
    let mut bad = t.clone();
    bad.id = TaskId::new();
    bad.request_hash = Some("other".into());
    assert!(b
        .store
        .task_insert(vec![fresh.clone(), bad], T0)
        .await
        .is_err());
    assert!(matches!(
        b.store.task_get(fresh.id, None).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn per_queue_claims_share_one_total() {
    let b = setup();
    for q in ["a", "a", "a", "b", "b", "b"] {
        b.add(new_task(q, 3, 0, T0)).await;
    }
    let got = b
        .store
        .task_claim(ClaimParams {
            owner: "A".into(),
            queues: vec![
                QueueClaim {
                    queue: "a".into(),
                    limit: 2,
                },
                QueueClaim {
                    queue: "b".into(),
                    limit: 5,
                },
            ],
            total: 4,
            lease_ms: LEASE,
            rescue: true,
            now: T0,
        })
        .await
        .unwrap();
    let a = got.iter().filter(|t| t.queue == "a").count();
    let bq = got.iter().filter(|t| t.queue == "b").count();
    assert_eq!((a, bq), (2, 2));
}

#[tokio::test]
async fn pruner_deletes_finished_tasks_past_retention_with_their_messages() {
    let b = setup();
    let old = b.add(new_task("default", 3, 0, T0)).await;
    let c = b.claim("A", 1).await.remove(0);
    b.store
        .message_insert(
            old.id,
            "log".into(),
            json!("hi"),
            spool::store::MessageCheck::Worker,
            T0,
        )
        .await
        .unwrap();
    b.finish(&c, "A", TaskStatus::Completed, None)
        .await
        .unwrap();
    let keep = b.add(new_task("default", 3, 0, T0)).await;
    let r = spool::config::RetentionConfig {
        completed: Some(Duration::from_secs(3600)),
        failed: None,
        interval: Duration::from_secs(60),
        changes: Duration::from_secs(3600),
        changes_kept: 1_000_000,
    };
    assert_eq!(prune_once(&b.store, &r, T0 + 3_599_000).await.unwrap(), 0);
    assert_eq!(prune_once(&b.store, &r, T0 + 3_601_000).await.unwrap(), 1);
    assert!(matches!(
        b.store.task_get(old.id, None).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(b
        .store
        .message_list(old.id, 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(b.get(keep.id).await.status, TaskStatus::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_never_claim_the_same_task() {
    // Two SqliteStore instances have two writer connections: the same as two processes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.db");
    let s1 = Arc::new(SqliteStore::open(StoreOptions::new(&path)).unwrap());
    let s2 = Arc::new(SqliteStore::open(StoreOptions::new(&path)).unwrap());
    let tasks: Vec<NewTask> = (0..600).map(|_| new_task("default", 3, 0, T0)).collect();
    s1.task_insert(tasks, T0).await.unwrap();
    let claimer = |s: Arc<SqliteStore>, owner: &'static str| async move {
        let mut mine = vec![];
        loop {
            let got = s
                .task_claim(ClaimParams {
                    owner: owner.into(),
                    queues: vec![QueueClaim {
                        queue: "default".into(),
                        limit: 7,
                    }],
                    total: 7,
                    lease_ms: 60_000,
                    rescue: true,
                    now: T0,
                })
                .await
                .unwrap();
            if got.is_empty() {
                return mine;
            }
            mine.extend(got.into_iter().map(|t| t.id));
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(claimer(s1, "A")),
        tokio::spawn(claimer(s2, "B"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut all: Vec<TaskId> = a.iter().chain(b.iter()).copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 600, "every task claimed exactly once");
    assert_eq!(a.len() + b.len(), 600, "no task claimed twice");
}

#[tokio::test]
async fn a_failed_attempt_of_a_cancel_requested_task_ends_canceled_not_pending() {
    let b = setup();
    let t = b.add(new_task("default", 5, 0, T0)).await;
    let c = b.claim("A", 1).await.remove(0);
    b.store.task_cancel(t.id, None, T0).await.unwrap();
    // The worker had not seen the cancel yet and reports a retryable failure.
    let f = b
        .finish(&c, "A", TaskStatus::Pending, Some(T0 + 1000))
        .await
        .unwrap();
    assert_eq!(f.status, TaskStatus::Canceled);
    assert!(f.completed_at.is_some());
    b.clock.advance(10_000);
    assert!(
        b.claim("B", 1).await.is_empty(),
        "a canceled task never runs again"
    );
}

#[tokio::test]
async fn the_claim_reads_the_claim_index_without_sorting() {
    let b = setup();
    let plan: Vec<String> = {
        let c = rusqlite::Connection::open(b.store.path()).unwrap();
        {
            let sql = include_str!("../sql/sqlite/queries/task_claim.sql");
            // The subquery is what the planner must serve from the index.
            let select = &sql[sql.find("SELECT rowid").unwrap()..sql.rfind("LIMIT").unwrap()];
            let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {select}")).unwrap();
            let rows = st
                .query_map(
                    rusqlite::named_params! {":queue": "default", ":now": 1},
                    |r| r.get::<_, String>(3),
                )
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            rows
        }
    };
    let text = plan.join(" | ");
    assert!(text.contains("tasks_claim"), "{text}");
    assert!(!text.contains("TEMP B-TREE"), "{text}");
}

#[tokio::test]
async fn the_task_a_finish_returns_is_the_row_as_stored() {
    // The finish builds its answer (and its event) from the claimed task plus the columns the
    // statement returns; it must equal what a later read finds, for every way an attempt ends.
    let b = setup();
    for status in [
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Pending,
    ] {
        let t = b.add(new_task("default", 3, 0, T0)).await;
        let c = b.claim("A", 1).await.remove(0);
        assert_eq!(c.id, t.id);
        let retry_at = (status == TaskStatus::Pending).then_some(T0 + 5_000);
        let returned = b.finish(&c, "A", status, retry_at).await.unwrap();
        assert_eq!(returned, b.get(t.id).await, "after {status}");
        if status == TaskStatus::Pending {
            b.clock.advance(10_000);
            let again = b.claim("A", 1).await.remove(0);
            let done = b.finish(&again, "A", TaskStatus::Completed, None).await;
            assert_eq!(done.unwrap(), b.get(t.id).await);
        }
    }
    // A cancel asked for while running turns a retry into canceled, and the answer says so.
    let t = b.add(new_task("default", 3, 0, T0)).await;
    let c = b.claim("A", 1).await.remove(0);
    b.store.task_cancel(t.id, None, T0).await.unwrap();
    let returned = b
        .finish(&c, "A", TaskStatus::Pending, Some(T0))
        .await
        .unwrap();
    assert_eq!(returned.status, TaskStatus::Canceled);
    assert_eq!(returned, b.get(t.id).await);
}
