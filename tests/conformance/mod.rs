//! The store conformance suite: every behaviour of [`spool::store::Store`], checked through an
//! `Arc<dyn Store>` only, so every backend runs the same tests (River's `riverdrivertest` is the
//! model). A backend's test file implements [`Backend`] (a fresh, empty database; another store
//! on the same database, as another process would open it) and calls [`suite!`], which expands
//! to one `#[tokio::test]` per behaviour, named for it:
//!
//! ```ignore
//! use crate::conformance;
//! struct MyBackend;
//! #[async_trait::async_trait]
//! impl conformance::Backend for MyBackend { /* ... */ }
//! conformance::suite!(MyBackend);
//! ```
//!
//! Time is always an explicit `now`: a lease expires because a later `now` is passed, never by
//! sleeping. Nothing here names a driver, a file, SQL or a row id.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

use serde_json::{json, Value};
use spool::backoff::{retry_delay, RetryPolicy};
use spool::events::Event;
use spool::queue::{decide, Outcome, Transition};
use spool::store::{
    ChangeParams, ClaimParams, ExistingUser, FinishParams, HeldLease, Limits, ListParams,
    MessageCheck, QueueClaim, Store, StoreError, TaskTokenCheck, TokenAttempt, TokenCreate,
    TokenRevoke, WorkerInfo, ADMIN_NAME, CHANGE_PAGE_BYTES, LIST_PAGE_BYTES, MESSAGE_PAGE_BYTES,
};
use spool::task::{Message, NewTask, Task, TaskId, TaskStatus};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

mod admission;
pub use admission::*;

/// A fixed "now" every test starts from.
pub const T0: i64 = 1_800_000_000_000;
/// The lease length the tests claim with.
pub const LEASE: u64 = 1000;
/// The longest any wait of the suite may take before it fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// A store on a database of its own, with whatever keeps that database alive (a temporary
/// directory, a scratch database to drop). `store` is dropped before `db`.
pub struct Fresh<D> {
    /// The store under test.
    pub store: Arc<dyn Store>,
    /// The backend's handle on the database.
    pub db: D,
}

/// What a backend gives the suite.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The backend's handle on one database.
    type Db: Send + Sync + 'static;

    /// A store on a fresh, empty database, enforcing `limits`.
    async fn fresh(&self, limits: Limits) -> Fresh<Self::Db>;

    /// Another store instance on the same database as `of` (with the same limits), as another
    /// process would open it: its own connections, its own writer, its own hub.
    async fn another(&self, of: &Fresh<Self::Db>) -> Arc<dyn Store>;

    /// The schema version a fresh database of this backend reports.
    fn schema_version(&self) -> u32;
}

/// Expands to one test per behaviour of the suite, run against `$backend` (an expression of a
/// type implementing [`Backend`]). Each test is named for its behaviour.
macro_rules! suite {
    ($backend:expr) => {
        $crate::conformance::suite!(@tests $backend;
            pending_to_running_to_completed,
            claim_skips_future_tasks_until_run_at,
            claim_orders_by_priority_then_run_at_and_respects_the_limit,
            per_queue_claims_share_one_total,
            paused_queue_is_never_claimed_until_resumed,
            expired_lease_is_reclaimed_and_the_stale_finish_is_fenced,
            expired_lease_on_the_last_attempt_fails_the_task,
            a_cancel_requested_task_whose_worker_died_ends_canceled,
            a_claim_without_rescue_leaves_expired_leases_alone,
            a_finish_with_another_owner_or_attempt_changes_nothing,
            heartbeat_extends_the_leases_held_and_reports_cancel_requests,
            a_lease_the_heartbeat_leaves_out_runs_out_and_is_rescued,
            failure_retries_on_the_backoff_schedule_then_fails,
            backoff_caps_and_retry_after_replaces_it_through_finish,
            permanent_failure_fails_at_once,
            cancel_and_retry_transitions_and_refusals,
            retry_of_a_failed_task_starts_a_fresh_count,
            a_failed_attempt_of_a_cancel_requested_task_ends_canceled_not_pending,
            released_lease_gives_the_attempt_back,
            the_task_a_finish_returns_is_the_row_as_stored,
            tasks_are_read_only_by_their_owner_and_listed_newest_first,
            idempotency_key_replays_and_refuses_a_different_request,
            sixteen_concurrent_inserts_of_one_key_create_one_task,
            a_batch_is_all_or_nothing_and_a_mismatch_names_its_index,
            idempotency_keys_belong_to_their_user_and_repeat_within_a_batch,
            pending_tasks_quota_refuses_and_writes_nothing,
            tasks_ended_by_a_lost_lease_free_their_quota,
            payload_bytes_quota_refuses_and_writes_nothing,
            messages_quota_refuses_a_user_and_truncates_the_task_once,
            task_prune_removes_only_that_status_before_the_time_up_to_the_limit,
            pruner_deletes_finished_tasks_past_retention_with_their_messages,
            changes_prune_keeps_the_newest,
            two_stores_on_one_database_never_claim_the_same_task,
            concurrent_messages_are_read_page_by_page_once_in_order,
            a_message_page_is_bounded_by_bytes_but_holds_at_least_one,
            changes_from_another_store_are_read_with_filters_and_a_cursor,
            a_change_page_is_bounded_by_bytes_and_the_next_resumes_at_its_cut,
            a_task_list_page_is_bounded_by_bytes_and_says_it_was_cut,
            a_cursor_behind_pruned_changes_reports_a_gap,
            own_commits_are_published_on_the_hub,
            token_create_new_existing_and_admin_rules,
            bootstrap_admin_happens_once_across_two_stores,
            user_resolve_and_jwt_users_are_separate_namespaces,
            token_revoke_by_hash_user_and_id,
            task_tokens_live_only_while_their_attempt_runs,
            message_insert_checks_scope_attempt_and_lease,
            queue_stats_count_every_status_and_pause,
            inspect_lists_running_oldest_first_and_latest_failures,
            workers_are_listed_with_the_tasks_they_hold_until_removed_or_silent,
            schema_version_and_ping_write,
            a_closed_store_refuses_writes,
            a_wait_frees_the_lease_spends_no_attempt_and_an_owner_message_wakes_it,
            a_wait_times_out_at_the_rescue_and_the_next_attempt_knows_why,
            a_waiting_task_is_canceled_at_once_and_counted_in_queue_stats,
            a_checkpoint_is_fenced_by_attempt_and_kept_until_a_reset_retry,
            the_inbox_cursor_moves_only_with_a_checkpoint_or_a_wait,
            a_wait_with_an_owner_message_it_has_not_read_does_not_park,
            a_task_token_acts_for_its_own_attempt_not_the_next_with_its_number,
            timed_out_waits_come_back_a_bounded_number_per_claim_oldest_first,
            messages_record_their_author_and_are_read_by_author,
            stream_tokens_name_one_task_until_they_expire,
            a_task_keeps_only_its_newest_stream_tokens,
            per_key_limit_skips_a_full_key_without_blocking_others,
            per_key_claims_go_round_robin_by_key_within_a_priority,
            global_concurrency_counts_every_stores_running_tasks,
            rate_limit_is_one_bucket_shared_by_every_store,
            racing_claims_never_over_admit,
            a_flood_of_a_full_key_longer_than_a_short_look_does_not_hide_another_key,
            a_floods_waiting_tasks_stay_pending_and_in_order_with_or_without_the_limit,
            an_admitted_claim_starts_the_inbox_at_the_tasks_cursor,
            schedules_keep_config_rows_and_their_firing_never_moves_back,
            one_firing_from_two_stores_makes_one_task,
        );
    };
    (@tests $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::$name(&$backend).await;
            }
        )*
    };
}
pub(crate) use suite;

// ---- helpers ------------------------------------------------------------------------------

/// A new task of user `u` and kind `k`.
pub fn task(queue: &str, max_attempts: u32, priority: i32, run_at: i64) -> NewTask {
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
        concurrency_key: None,
    }
}

fn keyed(key: &str, hash: &str) -> NewTask {
    NewTask {
        idempotency_key: Some(key.into()),
        request_hash: Some(hash.into()),
        ..task("default", 3, 0, T0)
    }
}

pub async fn add(s: &dyn Store, t: NewTask, now: i64) -> Task {
    let mut got = s.task_insert(vec![t], now).await.unwrap();
    assert_eq!(got.len(), 1);
    got.remove(0).task.as_ref().clone()
}

async fn claim_in(s: &dyn Store, owner: &str, queue: &str, n: u32, now: i64) -> Vec<Task> {
    s.task_claim(ClaimParams {
        owner: owner.into(),
        queues: vec![QueueClaim {
            queue: queue.into(),
            limit: n,
            admission: None,
        }],
        total: n,
        lease_ms: LEASE,
        rescue: true,
        now,
    })
    .await
    .unwrap()
    .into_iter()
    .map(Arc::unwrap_or_clone)
    .collect()
}

pub async fn claim(s: &dyn Store, owner: &str, n: u32, now: i64) -> Vec<Task> {
    claim_in(s, owner, "default", n, now).await
}

pub async fn claim_one(s: &dyn Store, owner: &str, now: i64) -> Task {
    let mut c = claim(s, owner, 1, now).await;
    assert_eq!(c.len(), 1, "one task should be claimable at {now}");
    c.remove(0)
}

async fn finish(
    s: &dyn Store,
    t: &Task,
    owner: &str,
    status: TaskStatus,
    run_at: Option<i64>,
    now: i64,
) -> Option<Task> {
    s.task_finish_wait(FinishParams {
        task: Arc::new(t.clone()),
        owner: owner.into(),
        status,
        result: (status == TaskStatus::Completed).then(|| json!("ok")),
        error: (status != TaskStatus::Completed).then(|| "boom".to_string()),
        run_at,
        uncount: false,
        wait_until: None,
        now,
    })
    .await
    .unwrap()
    .map(Arc::unwrap_or_clone)
}

/// Ends an attempt as the worker does: with what [`decide`] made of its outcome.
async fn finish_tr(s: &dyn Store, t: &Task, owner: &str, tr: Transition, now: i64) -> Task {
    s.task_finish_wait(FinishParams {
        task: Arc::new(t.clone()),
        owner: owner.into(),
        status: tr.status,
        result: tr.result,
        error: tr.error,
        run_at: tr.run_at,
        uncount: false,
        wait_until: None,
        now,
    })
    .await
    .unwrap()
    .map(Arc::unwrap_or_clone)
    .expect("the holder's finish matches")
}

async fn get(s: &dyn Store, id: TaskId) -> Task {
    s.task_get(id, None).await.unwrap()
}

async fn gone(s: &dyn Store, id: TaskId) -> bool {
    matches!(s.task_get(id, None).await, Err(StoreError::NotFound(x)) if x == id)
}

/// A task of the queue `ended`, claimed and ended as `status` (completed or failed), at `now`.
async fn ended(s: &dyn Store, status: TaskStatus, now: i64) -> Task {
    let t = add(s, task("ended", 1, 0, now), now).await;
    let c = claim_in(s, "A", "ended", 1, now).await.remove(0);
    assert_eq!(c.id, t.id);
    finish(s, &c, "A", status, None, now).await.unwrap()
}

fn hash(n: u32) -> String {
    format!("{n:064x}")
}

/// The check of a request made with task token `hash(token)`, issued for attempt `attempt`.
fn by_token(attempt: u32, token: u32) -> MessageCheck {
    MessageCheck::Attempt(TokenAttempt {
        attempt,
        // The stores fence by the token; this is for a stream's own check only.
        started_at: 0,
        token_hash: hash(token),
    })
}

async fn new_token_user(s: &dyn Store, name: &str, admin: bool, h: &str) -> spool::store::User {
    s.token_create(TokenCreate {
        name: name.into(),
        admin,
        existing: ExistingUser::Refuse,
        token_hash: h.into(),
        now: T0,
    })
    .await
    .unwrap()
}

async fn msg(
    s: &dyn Store,
    id: TaskId,
    content: Value,
    check: MessageCheck,
) -> Result<Option<Message>, StoreError> {
    s.message_insert(id, "log".into(), content, check, T0).await
}

fn is_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict(_)))
}

// ---- claims and leases --------------------------------------------------------------------

pub async fn pending_to_running_to_completed<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = add(s, task("default", 3, 0, T0), T0).await;
    assert_eq!((t.status, t.attempts), (TaskStatus::Pending, 0));
    assert_eq!((t.created_at, t.updated_at), (T0, T0));
    let c = claim(s, "A", 10, T0).await;
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].status, c[0].attempts), (TaskStatus::Running, 1));
    assert_eq!(c[0].lease_owner.as_deref(), Some("A"));
    assert_eq!(c[0].lease_expires_at, Some(T0 + LEASE as i64));
    assert_eq!(c[0].started_at, Some(T0));
    let done = finish(s, &c[0], "A", TaskStatus::Completed, None, T0 + 5)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result, Some(json!("ok")));
    assert_eq!((done.lease_owner, done.lease_expires_at), (None, None));
    assert_eq!(done.completed_at, Some(T0 + 5));
    // A terminal task is never claimed again.
    assert!(claim(s, "B", 10, T0 + 10 * LEASE as i64).await.is_empty());
}

pub async fn claim_skips_future_tasks_until_run_at<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    add(s, task("default", 3, 0, T0 + 5000), T0).await;
    assert!(claim(s, "A", 10, T0).await.is_empty());
    assert!(claim(s, "A", 10, T0 + 4999).await.is_empty());
    assert_eq!(claim(s, "A", 10, T0 + 5000).await.len(), 1);
}

pub async fn claim_orders_by_priority_then_run_at_and_respects_the_limit<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let low = add(s, task("default", 3, -5, T0 - 10), T0).await;
    let high = add(s, task("default", 3, 50, T0), T0).await;
    let mid_old = add(s, task("default", 3, 0, T0 - 100), T0).await;
    let mid_new = add(s, task("default", 3, 0, T0 - 50), T0).await;
    let other_queue = add(s, task("other", 3, 100, T0 - 500), T0).await;
    let got: Vec<TaskId> = claim(s, "A", 3, T0).await.iter().map(|t| t.id).collect();
    assert_eq!(got, vec![high.id, mid_old.id, mid_new.id]);
    let rest: Vec<TaskId> = claim(s, "A", 3, T0).await.iter().map(|t| t.id).collect();
    assert_eq!(rest, vec![low.id]);
    assert_eq!(get(s, other_queue.id).await.status, TaskStatus::Pending);
}

pub async fn per_queue_claims_share_one_total<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    for q in ["a", "a", "a", "b", "b", "b"] {
        add(s, task(q, 3, 0, T0), T0).await;
    }
    let got = s
        .task_claim(ClaimParams {
            owner: "A".into(),
            queues: vec![
                QueueClaim {
                    queue: "a".into(),
                    limit: 2,
                    admission: None,
                },
                QueueClaim {
                    queue: "b".into(),
                    limit: 5,
                    admission: None,
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

pub async fn paused_queue_is_never_claimed_until_resumed<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    add(s, task("default", 3, 0, T0), T0).await;
    add(s, task("other", 3, 0, T0), T0).await;
    assert!(s.queue_paused().await.unwrap().is_empty());
    s.queue_set_paused("default".into(), true, T0)
        .await
        .unwrap();
    assert_eq!(s.queue_paused().await.unwrap(), vec!["default".to_string()]);
    assert!(claim(s, "A", 10, T0).await.is_empty());
    // Another queue is not held up.
    assert_eq!(claim_in(s, "A", "other", 10, T0).await.len(), 1);
    s.queue_set_paused("default".into(), false, T0)
        .await
        .unwrap();
    assert!(s.queue_paused().await.unwrap().is_empty());
    assert_eq!(claim(s, "A", 10, T0).await.len(), 1);
}

pub async fn expired_lease_is_reclaimed_and_the_stale_finish_is_fenced<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = add(s, task("default", 3, 0, T0), T0).await;
    let a = claim_one(s, "A", T0).await;
    // Still leased: nobody else gets it.
    assert!(claim(s, "B", 1, T0 + LEASE as i64 - 1).await.is_empty());
    // Past the lease: B takes it over as attempt 2.
    let later = T0 + LEASE as i64 + 1;
    let bt = claim_one(s, "B", later).await;
    assert_eq!(
        (bt.id, bt.attempts, bt.lease_owner.as_deref()),
        (t.id, 2, Some("B"))
    );
    assert_eq!(bt.last_error.as_deref(), Some("lease expired: worker lost"));
    // A wakes up and reports: nothing changes.
    assert!(finish(s, &a, "A", TaskStatus::Completed, None, later)
        .await
        .is_none());
    let now = get(s, t.id).await;
    assert_eq!(
        (now.status, now.lease_owner.as_deref()),
        (TaskStatus::Running, Some("B"))
    );
    // B's result stands.
    let done = finish(s, &bt, "B", TaskStatus::Completed, None, later)
        .await
        .unwrap();
    assert_eq!((done.status, done.attempts), (TaskStatus::Completed, 2));
}

pub async fn expired_lease_on_the_last_attempt_fails_the_task<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = add(s, task("default", 1, 0, T0), T0).await;
    claim_one(s, "A", T0).await;
    let later = T0 + LEASE as i64 + 1;
    assert!(claim(s, "B", 1, later).await.is_empty());
    let t = get(s, t.id).await;
    assert_eq!(t.status, TaskStatus::Failed);
    assert_eq!(t.last_error.as_deref(), Some("lease expired: worker lost"));
    assert_eq!(t.completed_at, Some(later));
    assert_eq!(t.lease_owner, None);
}

pub async fn a_cancel_requested_task_whose_worker_died_ends_canceled<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = add(s, task("default", 3, 0, T0), T0).await;
    claim_one(s, "A", T0).await;
    s.task_cancel(t.id, None, T0).await.unwrap();
    assert!(claim(s, "B", 1, T0 + LEASE as i64 + 1).await.is_empty());
    let t = get(s, t.id).await;
    assert_eq!(t.status, TaskStatus::Canceled);
    assert!(t.completed_at.is_some());
}

pub async fn a_claim_without_rescue_leaves_expired_leases_alone<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = add(s, task("default", 3, 0, T0), T0).await;
    claim_one(s, "A", T0).await;
    let later = T0 + 10 * LEASE as i64;
    let got = s
        .task_claim(ClaimParams {
            owner: "B".into(),
            queues: vec![QueueClaim {
                queue: "default".into(),
                limit: 1,
                admission: None,
            }],
            total: 1,
            lease_ms: LEASE,
            rescue: false,
            now: later,
        })
        .await
        .unwrap();
    assert!(got.is_empty());
    let still = get(s, t.id).await;
    assert_eq!(
        (still.status, still.lease_owner.as_deref()),
        (TaskStatus::Running, Some("A"))
    );
    // With rescue it is taken over.
    assert_eq!(claim_one(s, "B", later).await.attempts, 2);
}

pub async fn a_finish_with_another_owner_or_attempt_changes_nothing<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = add(s, task("default", 3, 0, T0), T0).await;
    let c = claim_one(s, "A", T0).await;
    // The right attempt under another owner.
    assert!(finish(s, &c, "B", TaskStatus::Completed, None, T0)
        .await
        .is_none());
    // The right owner with another attempt number.
    let mut other_attempt = c.clone();
    other_attempt.attempts = 2;
    assert!(finish(s, &other_attempt, "A", TaskStatus::Failed, None, T0)
        .await
        .is_none());
    let still = get(s, t.id).await;
    assert_eq!(
        (still.status, still.attempts, still.lease_owner.as_deref()),
        (TaskStatus::Running, 1, Some("A"))
    );
    assert_eq!(still.result, None);
    // The holder's finish works, once.
    assert!(finish(s, &c, "A", TaskStatus::Completed, None, T0)
        .await
        .is_some());
    assert!(finish(s, &c, "A", TaskStatus::Failed, None, T0)
        .await
        .is_none());
    assert_eq!(get(s, t.id).await.status, TaskStatus::Completed);
}

pub async fn heartbeat_extends_the_leases_held_and_reports_cancel_requests<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t1 = add(s, task("default", 3, 0, T0), T0).await;
    let t2 = add(s, task("default", 3, 0, T0), T0).await;
    let t3 = add(s, task("default", 3, 0, T0), T0).await;
    let a = claim(s, "A", 2, T0).await;
    assert_eq!(a.len(), 2);
    let bt = claim_one(s, "B", T0).await;
    assert_eq!(bt.id, t3.id);
    let now = T0 + LEASE as i64 - 100;
    let mut held = s
        .lease_extend("A".into(), vec![t1.id, t2.id], LEASE, now)
        .await
        .unwrap();
    held.sort_by_key(|h| h.id);
    let mut want = vec![
        HeldLease {
            id: t1.id,
            attempt: 1,
            cancel_requested: false,
        },
        HeldLease {
            id: t2.id,
            attempt: 1,
            cancel_requested: false,
        },
    ];
    want.sort_by_key(|h| h.id);
    assert_eq!(held, want);
    assert_eq!(
        get(s, t1.id).await.lease_expires_at,
        Some(now + LEASE as i64)
    );
    // Past the first lease, within the extended one: nobody takes A's tasks; B's lapsed.
    let now = now + 500;
    let c = claim(s, "C", 3, now).await;
    assert_eq!(c.iter().map(|t| t.id).collect::<Vec<_>>(), vec![t3.id]);
    // B's heartbeat now holds nothing: its lease was taken over.
    assert!(s
        .lease_extend("B".into(), vec![t3.id], LEASE, now)
        .await
        .unwrap()
        .is_empty());
    // A cancel request reaches the holder through its heartbeat.
    let canceled = s.task_cancel(t1.id, None, now).await.unwrap();
    assert_eq!(
        (canceled.status, canceled.cancel_requested),
        (TaskStatus::Running, true)
    );
    let held = s
        .lease_extend("A".into(), vec![t1.id, t2.id], LEASE, now)
        .await
        .unwrap();
    let by_id: HashMap<TaskId, bool> = held.iter().map(|h| (h.id, h.cancel_requested)).collect();
    assert_eq!(by_id.get(&t1.id), Some(&true));
    assert_eq!(by_id.get(&t2.id), Some(&false));
    // A finished attempt is no longer held.
    let a2 = a.iter().find(|t| t.id == t2.id).unwrap();
    finish(s, a2, "A", TaskStatus::Completed, None, now)
        .await
        .unwrap();
    let held = s
        .lease_extend("A".into(), vec![t1.id, t2.id], LEASE, now)
        .await
        .unwrap();
    assert_eq!(held.iter().map(|h| h.id).collect::<Vec<_>>(), vec![t1.id]);
}

/// A worker that dropped an attempt (its lease guard stopped it, or a claim's answer never
/// reached it) leaves that task out of its heartbeat: the lease runs out and another worker
/// takes the task, rather than it staying held, extended and never run.
pub async fn a_lease_the_heartbeat_leaves_out_runs_out_and_is_rescued<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t1 = add(s, task("default", 3, 0, T0), T0).await;
    let t2 = add(s, task("default", 3, 0, T0), T0).await;
    let a = claim(s, "A", 2, T0).await;
    assert_eq!(a.len(), 2);
    let now = T0 + LEASE as i64 - 100;
    let held = s
        .lease_extend("A".into(), vec![t1.id], LEASE, now)
        .await
        .unwrap();
    assert_eq!(held.iter().map(|h| h.id).collect::<Vec<_>>(), vec![t1.id]);
    assert_eq!(
        get(s, t1.id).await.lease_expires_at,
        Some(now + LEASE as i64)
    );
    assert_eq!(
        get(s, t2.id).await.lease_expires_at,
        Some(T0 + LEASE as i64)
    );
    // Naming nothing extends nothing.
    assert!(s
        .lease_extend("A".into(), vec![], LEASE, now)
        .await
        .unwrap()
        .is_empty());
    // Past t2's lease, within t1's: B rescues and takes t2 only.
    let later = T0 + LEASE as i64 + 1;
    let taken = claim(s, "B", 2, later).await;
    assert_eq!(taken.iter().map(|t| t.id).collect::<Vec<_>>(), vec![t2.id]);
    assert_eq!(taken[0].attempts, 2);
}

// ---- the end of an attempt ----------------------------------------------------------------

pub async fn failure_retries_on_the_backoff_schedule_then_fails<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let policy = RetryPolicy {
        base_ms: 1000,
        max_ms: 60_000,
        max_attempts: 3,
    };
    let t = add(s, task("default", 3, 0, T0), T0).await;
    let mut now = T0;
    let mut delays = vec![];
    for attempt in 1..=3u32 {
        let c = claim_one(s, "A", now).await;
        assert_eq!(c.attempts, attempt);
        let outcome = Outcome::Failed {
            error: format!("e{attempt}"),
            permanent: false,
            retry_after: None,
        };
        let tr = decide(outcome, c.attempts, c.max_attempts, &policy, 0.0, now);
        let f = finish_tr(s, &c, "A", tr, now).await;
        if attempt < 3 {
            assert_eq!(f.status, TaskStatus::Pending);
            assert_eq!(f.completed_at, None);
            let delay = f.run_at - now;
            delays.push(delay);
            // Not claimable before the delay has passed.
            assert!(claim(s, "A", 1, now + delay - 1).await.is_empty());
            now += delay;
        } else {
            assert_eq!(f.status, TaskStatus::Failed);
            assert_eq!(f.completed_at, Some(now));
        }
    }
    // base * 2^(attempt-1) * 0.5 (jitter 0): 500, 1000.
    assert_eq!(delays, vec![500, 1000]);
    assert_eq!(get(s, t.id).await.attempts, 3);
}

pub async fn backoff_caps_and_retry_after_replaces_it_through_finish<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let policy = RetryPolicy {
        base_ms: 1000,
        max_ms: 4000,
        max_attempts: 7,
    };
    let t = add(s, task("default", 7, 0, T0), T0).await;
    let mut now = T0;
    let mut delays = vec![];
    for attempt in 1..=7u32 {
        let c = claim_one(s, "A", now).await;
        assert_eq!(c.attempts, attempt);
        let outcome = match attempt {
            // A timeout is a retryable failure; a Retry-After replaces the backoff, capped.
            3 => Outcome::TimedOut(Duration::from_millis(50)),
            4 => Outcome::Failed {
                error: "429".into(),
                permanent: false,
                retry_after: Some(Duration::from_millis(1234)),
            },
            5 => Outcome::Failed {
                error: "429".into(),
                permanent: false,
                retry_after: Some(Duration::from_secs(3600)),
            },
            _ => Outcome::Failed {
                error: "boom".into(),
                permanent: false,
                retry_after: None,
            },
        };
        let tr = decide(outcome, c.attempts, c.max_attempts, &policy, 0.5, now);
        let error = tr.error.clone();
        let done = finish_tr(s, &c, "A", tr, now).await;
        assert_eq!(done.last_error, error);
        if attempt == 7 {
            assert_eq!(done.status, TaskStatus::Failed);
            assert!(done.last_error.unwrap().contains("giving up"));
            break;
        }
        assert_eq!(done.status, TaskStatus::Pending);
        assert_eq!(get(s, t.id).await.run_at, done.run_at);
        let delay = done.run_at - now;
        delays.push(delay);
        assert!(claim(s, "A", 1, done.run_at - 1).await.is_empty());
        now = done.run_at;
    }
    let full = |a| retry_delay(&policy, a, 0.5).as_millis() as i64;
    assert_eq!(
        delays,
        vec![full(1), full(2), full(3), 1234, 4000, full(6)],
        "750, 1500, 3000 (timeout), Retry-After, Retry-After capped, 3000 (capped)"
    );
    assert_eq!(delays, vec![750, 1500, 3000, 1234, 4000, 3000]);
}

pub async fn permanent_failure_fails_at_once<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    add(s, task("default", 5, 0, T0), T0).await;
    let c = claim_one(s, "A", T0).await;
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
    let f = finish_tr(s, &c, "A", tr, T0).await;
    assert_eq!((f.status, f.attempts), (TaskStatus::Failed, 1));
    assert_eq!(f.last_error.as_deref(), Some("bad"));
    assert!(claim(s, "A", 1, T0 + 1_000_000).await.is_empty());
}

pub async fn cancel_and_retry_transitions_and_refusals<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    // pending → canceled at once
    let p = add(s, task("default", 3, 0, T0), T0).await;
    let c = s.task_cancel(p.id, None, T0 + 1).await.unwrap();
    assert_eq!(c.status, TaskStatus::Canceled);
    assert_eq!(c.completed_at, Some(T0 + 1));
    // canceled → cancel again is refused
    assert!(is_conflict(s.task_cancel(p.id, None, T0).await));
    // canceled → retry → pending with attempts 0
    let r = s.task_retry(p.id, None, false, T0 + 2).await.unwrap();
    assert_eq!(
        (r.status, r.attempts, r.completed_at),
        (TaskStatus::Pending, 0, None)
    );
    assert!(r.run_at <= T0 + 2, "a retried task is runnable at once");
    // pending → retry is refused
    assert!(is_conflict(s.task_retry(p.id, None, false, T0).await));
    // running → retry refused; cancel requested; the worker's canceled finish ends it
    let run = claim_one(s, "A", T0 + 2).await;
    assert!(is_conflict(s.task_retry(run.id, None, false, T0).await));
    let req = s.task_cancel(run.id, None, T0).await.unwrap();
    assert_eq!(
        (req.status, req.cancel_requested),
        (TaskStatus::Running, true)
    );
    let ended = finish(s, &run, "A", TaskStatus::Canceled, None, T0)
        .await
        .unwrap();
    assert_eq!(ended.status, TaskStatus::Canceled);
    // completed → cancel refused, retry refused
    let q = ended_completed(s).await;
    assert!(is_conflict(s.task_cancel(q.id, None, T0).await));
    assert!(is_conflict(s.task_retry(q.id, None, false, T0).await));
    // another user's task is not found, for cancel and retry alike
    let mine = add(s, task("default", 3, 0, T0), T0).await;
    assert!(matches!(
        s.task_cancel(mine.id, Some("v".into()), T0).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.task_retry(p.id, Some("v".into()), false, T0).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.task_cancel(TaskId::new(), None, T0).await,
        Err(StoreError::NotFound(_))
    ));
    // ... and its owner may.
    let c = s.task_cancel(mine.id, Some("u".into()), T0).await.unwrap();
    assert_eq!(c.status, TaskStatus::Canceled);
}

async fn ended_completed(s: &dyn Store) -> Task {
    ended(s, TaskStatus::Completed, T0).await
}

pub async fn retry_of_a_failed_task_starts_a_fresh_count<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let failed = ended(s, TaskStatus::Failed, T0).await;
    assert_eq!((failed.status, failed.attempts), (TaskStatus::Failed, 1));
    let r = s
        .task_retry(failed.id, Some("u".into()), false, T0 + 10)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.attempts, r.completed_at, r.result.clone()),
        (TaskStatus::Pending, 0, None, None)
    );
    assert!(!r.cancel_requested);
    assert_eq!(r, get(s, failed.id).await);
    let again = claim_in(s, "A", "ended", 1, T0 + 10).await.remove(0);
    assert_eq!((again.id, again.attempts), (failed.id, 1));
}

pub async fn a_failed_attempt_of_a_cancel_requested_task_ends_canceled_not_pending<B: Backend>(
    b: &B,
) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = add(s, task("default", 5, 0, T0), T0).await;
    let c = claim_one(s, "A", T0).await;
    s.task_cancel(t.id, None, T0).await.unwrap();
    // The worker had not seen the cancel yet and reports a retryable failure.
    let f = finish(s, &c, "A", TaskStatus::Pending, Some(T0 + 1000), T0)
        .await
        .unwrap();
    assert_eq!(f.status, TaskStatus::Canceled);
    assert!(f.completed_at.is_some());
    assert!(
        claim(s, "B", 1, T0 + 10_000).await.is_empty(),
        "a canceled task never runs again"
    );
}

pub async fn released_lease_gives_the_attempt_back<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = add(s, task("default", 3, 0, T0), T0).await;
    let c = claim_one(s, "A", T0).await;
    assert_eq!(c.id, t.id);
    let r = s
        .task_finish_wait(FinishParams {
            task: Arc::new(c.clone()),
            owner: "A".into(),
            status: TaskStatus::Pending,
            result: None,
            error: None,
            run_at: Some(T0),
            uncount: true,
            wait_until: None,
            now: T0,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.status, r.attempts, r.lease_owner.as_deref()),
        (TaskStatus::Pending, 0, None)
    );
    assert_eq!(r.completed_at, None);
    // Picked up again at once, as attempt 1.
    assert_eq!(claim_one(s, "B", T0).await.attempts, 1);
}

pub async fn the_task_a_finish_returns_is_the_row_as_stored<B: Backend>(b: &B) {
    // The answer of a finish must equal what a later read finds, for every way an attempt ends.
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    for status in [
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Pending,
        TaskStatus::Canceled,
    ] {
        let t = add(s, task("default", 3, 0, T0), T0).await;
        let c = claim_one(s, "A", T0).await;
        assert_eq!(c.id, t.id);
        assert_eq!(c, get(s, t.id).await, "the claimed task is the row");
        let retry_at = (status == TaskStatus::Pending).then_some(T0 + 5_000);
        let returned = finish(s, &c, "A", status, retry_at, T0 + 1).await.unwrap();
        assert_eq!(returned, get(s, t.id).await, "after {status}");
        if status == TaskStatus::Pending {
            let again = claim_one(s, "A", T0 + 10_000).await;
            let done = finish(s, &again, "A", TaskStatus::Completed, None, T0 + 10_001).await;
            assert_eq!(done.unwrap(), get(s, t.id).await);
        }
    }
    // A cancel asked for while running turns a retry into canceled, and the answer says so.
    let t = add(s, task("default", 3, 0, T0), T0).await;
    let c = claim_one(s, "A", T0).await;
    s.task_cancel(t.id, None, T0).await.unwrap();
    let returned = finish(s, &c, "A", TaskStatus::Pending, Some(T0), T0)
        .await
        .unwrap();
    assert_eq!(returned.status, TaskStatus::Canceled);
    assert_eq!(returned, get(s, t.id).await);
}

// ---- reads --------------------------------------------------------------------------------

/// A task made by a test: its id, user, queue and kind.
type Made = (TaskId, &'static str, &'static str, &'static str);

pub async fn tasks_are_read_only_by_their_owner_and_listed_newest_first<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let mut ids = vec![];
    for (user, queue, kind) in [
        ("u", "a", "x"),
        ("u", "b", "x"),
        ("v", "a", "y"),
        ("u", "a", "y"),
        ("v", "b", "x"),
    ] {
        let t = NewTask {
            user_id: user.into(),
            kind: kind.into(),
            payload: json!({"user": user, "queue": queue, "kind": kind}),
            ..task(queue, 3, 0, T0)
        };
        let stored = add(s, t.clone(), T0).await;
        assert_eq!(stored, get(s, t.id).await, "the insert answers the row");
        assert_eq!(stored.payload, t.payload);
        ids.push((t.id, user, queue, kind));
    }
    // Owner scope.
    let (vid, ..) = ids[2];
    assert_eq!(s.task_get(vid, Some("v".into())).await.unwrap().id, vid);
    assert!(matches!(
        s.task_get(vid, Some("u".into())).await,
        Err(StoreError::NotFound(x)) if x == vid
    ));
    assert!(matches!(
        s.task_with_messages(vid, Some("u".into()), 0, 10, None)
            .await,
        Err(StoreError::NotFound(_))
    ));
    // Newest first (ids sort by creation), with a cursor, and every filter.
    let list = |user: Option<&str>, queue: Option<&str>, kind: Option<&str>| ListParams {
        user_id: user.map(Into::into),
        queue: queue.map(Into::into),
        kind: kind.map(Into::into),
        limit: 100,
        ..ListParams::default()
    };
    let want = |pred: &dyn Fn(&Made) -> bool| {
        let mut w: Vec<TaskId> = ids.iter().filter(|x| pred(x)).map(|x| x.0).collect();
        w.sort();
        w.reverse();
        w
    };
    let got = |v: Vec<Task>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        got(s.task_list(list(None, None, None)).await.unwrap().tasks),
        want(&|_| true)
    );
    assert_eq!(
        got(s
            .task_list(list(Some("u"), None, None))
            .await
            .unwrap()
            .tasks),
        want(&|x| x.1 == "u")
    );
    assert_eq!(
        got(s
            .task_list(list(None, Some("a"), None))
            .await
            .unwrap()
            .tasks),
        want(&|x| x.2 == "a")
    );
    assert_eq!(
        got(s
            .task_list(list(Some("u"), Some("a"), Some("y")))
            .await
            .unwrap()
            .tasks),
        want(&|x| x.1 == "u" && x.2 == "a" && x.3 == "y")
    );
    // Pages of two, after the last id of the previous page.
    let mut paged = vec![];
    let mut cursor = None;
    loop {
        let page = s
            .task_list(ListParams {
                cursor,
                limit: 2,
                ..ListParams::default()
            })
            .await
            .unwrap()
            .tasks;
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        cursor = Some(last.id);
        paged.extend(page.into_iter().map(|t| t.id));
    }
    assert_eq!(paged, want(&|_| true));
    // A status filter.
    claim_in(s, "A", "b", 10, T0).await;
    let running = s
        .task_list(ListParams {
            status: Some(TaskStatus::Running),
            limit: 100,
            ..ListParams::default()
        })
        .await
        .unwrap()
        .tasks;
    assert_eq!(got(running), want(&|x| x.2 == "b"));
}

// ---- idempotency --------------------------------------------------------------------------

pub async fn idempotency_key_replays_and_refuses_a_different_request<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = keyed("k1", "h1");
    let first = s.task_insert(vec![t.clone()], T0).await.unwrap().remove(0);
    assert!(first.created);
    assert_eq!(first.task.idempotency_key.as_deref(), Some("k1"));
    let again = NewTask {
        id: TaskId::new(),
        ..t.clone()
    };
    let replay = s
        .task_insert(vec![again.clone()], T0 + 5)
        .await
        .unwrap()
        .remove(0);
    assert!(!replay.created);
    assert_eq!(*replay.task, get(s, first.task.id).await);
    assert!(gone(s, again.id).await);
    let different = NewTask {
        request_hash: Some("h2".into()),
        ..again
    };
    match s.task_insert(vec![different], T0).await {
        Err(StoreError::IdempotencyMismatch { index: 0, key }) => assert_eq!(key, "k1"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // The replay still answers after the task finished.
    let c = claim_one(s, "A", T0).await;
    finish(s, &c, "A", TaskStatus::Completed, None, T0).await;
    let replay = s
        .task_insert(
            vec![NewTask {
                id: TaskId::new(),
                ..t
            }],
            T0,
        )
        .await
        .unwrap()
        .remove(0);
    assert!(!replay.created);
    assert_eq!(replay.task.status, TaskStatus::Completed);
}

pub async fn sixteen_concurrent_inserts_of_one_key_create_one_task<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let mut joins = vec![];
    for _ in 0..16 {
        let s = f.store.clone();
        joins.push(tokio::spawn(async move {
            let t = keyed("same", "h");
            let id = t.id;
            let got = s.task_insert(vec![t], T0).await.unwrap().remove(0);
            (id, got)
        }));
    }
    let mut answers = vec![];
    for j in joins {
        answers.push(j.await.unwrap());
    }
    let created: Vec<_> = answers.iter().filter(|(_, i)| i.created).collect();
    assert_eq!(created.len(), 1, "exactly one insert creates the task");
    let winner = created[0].1.task.id;
    assert_eq!(created[0].0, winner, "the created task is the creator's");
    assert!(answers.iter().all(|(_, i)| i.task.id == winner));
    let all = f
        .store
        .task_list(ListParams {
            limit: 100,
            ..ListParams::default()
        })
        .await
        .unwrap()
        .tasks;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, winner);
}

pub async fn a_batch_is_all_or_nothing_and_a_mismatch_names_its_index<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let original = add(s, keyed("k1", "h1"), T0).await;
    let batch = vec![
        task("default", 3, 0, T0),
        keyed("k2", "h2"),
        NewTask {
            payload: json!("third"),
            ..task("default", 3, 0, T0)
        },
        keyed("k1", "other"),
        task("default", 3, 0, T0),
    ];
    let ids: Vec<TaskId> = batch.iter().map(|t| t.id).collect();
    match s.task_insert(batch, T0).await {
        Err(StoreError::IdempotencyMismatch { index, key }) => {
            assert_eq!((index, key.as_str()), (3, "k1"))
        }
        other => panic!("expected a mismatch at index 3, got {other:?}"),
    }
    for id in ids {
        assert!(gone(s, id).await, "nothing of a refused batch is written");
    }
    // The key k2 was not taken by the refused batch: a new request under it creates a task.
    let k2 = s
        .task_insert(vec![keyed("k2", "different")], T0)
        .await
        .unwrap();
    assert!(k2[0].created);
    // A batch that fits is written whole, in order, a replayed key answering the original.
    let batch = vec![
        task("default", 3, 0, T0),
        keyed("k1", "h1"),
        task("default", 3, 0, T0),
    ];
    let ids: Vec<TaskId> = batch.iter().map(|t| t.id).collect();
    let got = s.task_insert(batch, T0).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|i| (i.task.id, i.created))
            .collect::<Vec<_>>(),
        vec![(ids[0], true), (original.id, false), (ids[2], true)]
    );
    // An empty batch writes nothing and answers nothing.
    assert!(s.task_insert(vec![], T0).await.unwrap().is_empty());
    // A large batch (more than any chunking a backend might do) is written whole too.
    let many: Vec<NewTask> = (0..100).map(|_| task("bulk", 3, 0, T0)).collect();
    let many_ids: Vec<TaskId> = many.iter().map(|t| t.id).collect();
    let got = s.task_insert(many, T0).await.unwrap();
    assert_eq!(got.iter().map(|i| i.task.id).collect::<Vec<_>>(), many_ids);
    assert_eq!(claim_in(s, "A", "bulk", 1000, T0).await.len(), 100);
}

pub async fn idempotency_keys_belong_to_their_user_and_repeat_within_a_batch<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let u = add(s, keyed("k", "h"), T0).await;
    // Another user's key of the same name is another task, even with another request.
    let v = s
        .task_insert(
            vec![NewTask {
                user_id: "v".into(),
                ..keyed("k", "other")
            }],
            T0,
        )
        .await
        .unwrap()
        .remove(0);
    assert!(v.created);
    assert_ne!(v.task.id, u.id);
    // The same key twice in one batch: the second is the first.
    let first = keyed("twice", "h");
    let second = keyed("twice", "h");
    let got = s
        .task_insert(vec![first.clone(), second.clone()], T0)
        .await
        .unwrap();
    assert_eq!(
        got.iter()
            .map(|i| (i.task.id, i.created))
            .collect::<Vec<_>>(),
        vec![(first.id, true), (first.id, false)]
    );
    assert!(gone(s, second.id).await);
    // ... and with another request hash, the batch is refused at the second.
    let a = keyed("thrice", "h");
    let c = keyed("thrice", "not h");
    assert!(matches!(
        s.task_insert(vec![a.clone(), c], T0).await,
        Err(StoreError::IdempotencyMismatch { index: 1, .. })
    ));
    assert!(gone(s, a.id).await);
}

// ---- quotas -------------------------------------------------------------------------------

fn is_limit<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str, limit: u64) -> bool {
    match r {
        Err(StoreError::LimitReached { what: w, limit: l }) => w == what && l == limit,
        other => panic!("expected the {what} limit of {limit}, got {other:?}"),
    }
}

pub async fn pending_tasks_quota_refuses_and_writes_nothing<B: Backend>(b: &B) {
    let f = b
        .fresh(Limits {
            pending_tasks_per_user: 3,
            ..Limits::default()
        })
        .await;
    let s = &*f.store;
    let mut mine = vec![];
    for _ in 0..2 {
        mine.push(add(s, task("default", 3, 0, T0), T0).await);
    }
    // A batch that does not fit is refused whole.
    let batch = vec![task("default", 3, 0, T0), task("default", 3, 0, T0)];
    let ids: Vec<TaskId> = batch.iter().map(|t| t.id).collect();
    assert!(is_limit(
        s.task_insert(batch, T0).await,
        "pending tasks per user",
        3
    ));
    for id in ids {
        assert!(gone(s, id).await);
    }
    mine.push(add(s, task("default", 3, 0, T0), T0).await);
    let refused = task("default", 3, 0, T0);
    let refused_id = refused.id;
    assert!(is_limit(
        s.task_insert(vec![refused], T0).await,
        "pending tasks per user",
        3
    ));
    assert!(gone(s, refused_id).await);
    // Another user has a quota of their own.
    add(
        s,
        NewTask {
            user_id: "v".into(),
            ..task("default", 3, 0, T0)
        },
        T0,
    )
    .await;
    // Running tasks still count; a finished one frees its place.
    let c = claim_one(s, "A", T0).await;
    assert!(is_limit(
        s.task_insert(vec![task("default", 3, 0, T0)], T0).await,
        "pending tasks per user",
        3
    ));
    let done = finish(s, &c, "A", TaskStatus::Completed, None, T0)
        .await
        .unwrap();
    let keyed_task = add(s, keyed("key", "h"), T0).await;
    // At the limit again: the replay of that key still answers.
    let replay = s.task_insert(vec![keyed("key", "h")], T0).await.unwrap();
    assert_eq!(
        (replay[0].task.id, replay[0].created),
        (keyed_task.id, false)
    );
    // A new key at the limit is refused, and writes nothing.
    let refused_key = keyed("other-key", "h");
    let refused_key_id = refused_key.id;
    assert!(is_limit(
        s.task_insert(vec![refused_key], T0).await,
        "pending tasks per user",
        3
    ));
    assert!(gone(s, refused_key_id).await);
    // A failed retry (back to pending) keeps its place.
    let keyed_claimed = claim_one(s, "A", T0).await;
    assert_eq!(keyed_claimed.id, mine[1].id);
    finish(s, &keyed_claimed, "A", TaskStatus::Pending, Some(T0), T0)
        .await
        .unwrap();
    assert!(is_limit(
        s.task_insert(vec![task("default", 3, 0, T0)], T0).await,
        "pending tasks per user",
        3
    ));
    // A canceled task frees its place; retrying it takes one again and is refused at the limit.
    let pending = mine.iter().find(|t| t.id != done.id).unwrap();
    s.task_cancel(pending.id, None, T0).await.unwrap();
    add(s, task("default", 3, 0, T0), T0).await;
    assert!(is_limit(
        s.task_retry(pending.id, None, false, T0).await,
        "pending tasks per user",
        3
    ));
    assert_eq!(get(s, pending.id).await.status, TaskStatus::Canceled);
}

pub async fn tasks_ended_by_a_lost_lease_free_their_quota<B: Backend>(b: &B) {
    let f = b
        .fresh(Limits {
            pending_tasks_per_user: 2,
            ..Limits::default()
        })
        .await;
    let s = &*f.store;
    let last_attempt = add(s, task("default", 1, 0, T0), T0).await;
    let canceled = add(s, task("default", 3, 0, T0), T0).await;
    assert_eq!(claim(s, "A", 2, T0).await.len(), 2);
    s.task_cancel(canceled.id, None, T0).await.unwrap();
    let full = || s.task_insert(vec![task("later", 3, 0, T0)], T0);
    assert!(is_limit(full().await, "pending tasks per user", 2));
    // The worker dies: one task fails (no attempts left), the other ends canceled.
    assert!(claim(s, "B", 2, T0 + LEASE as i64 + 1).await.is_empty());
    assert_eq!(get(s, last_attempt.id).await.status, TaskStatus::Failed);
    assert_eq!(get(s, canceled.id).await.status, TaskStatus::Canceled);
    full().await.unwrap();
    full().await.unwrap();
    assert!(is_limit(full().await, "pending tasks per user", 2));
    // A task rescued back to pending still counts.
    let t = claim_in(s, "A", "later", 1, T0 + 2 * LEASE as i64)
        .await
        .remove(0);
    let later = T0 + 4 * LEASE as i64;
    assert!(claim_in(s, "B", "none", 1, later).await.is_empty());
    assert_eq!(get(s, t.id).await.status, TaskStatus::Pending);
    assert!(is_limit(full().await, "pending tasks per user", 2));
}

pub async fn payload_bytes_quota_refuses_and_writes_nothing<B: Backend>(b: &B) {
    let f = b
        .fresh(Limits {
            payload_bytes_per_user: 100,
            ..Limits::default()
        })
        .await;
    let s = &*f.store;
    // A JSON string of 40 characters is 42 bytes of JSON.
    let forty = || NewTask {
        payload: json!("x".repeat(40)),
        ..task("default", 3, 0, T0)
    };
    add(s, forty(), T0).await;
    add(s, forty(), T0).await;
    let third = forty();
    let id = third.id;
    assert!(is_limit(
        s.task_insert(vec![third], T0).await,
        "payload bytes per user",
        100
    ));
    assert!(gone(s, id).await);
    // Another user has their own bytes.
    add(
        s,
        NewTask {
            user_id: "v".into(),
            ..forty()
        },
        T0,
    )
    .await;
    // A small one still fits.
    add(
        s,
        NewTask {
            payload: json!(1),
            ..task("default", 3, 0, T0)
        },
        T0,
    )
    .await;
    // A finished task's payload is still stored, and counts; pruned, it frees its bytes.
    let c = claim_one(s, "A", T0).await;
    finish(s, &c, "A", TaskStatus::Completed, None, T0)
        .await
        .unwrap();
    assert!(is_limit(
        s.task_insert(vec![forty()], T0).await,
        "payload bytes per user",
        100
    ));
    assert_eq!(
        s.task_prune(TaskStatus::Completed, T0 + 1, 10)
            .await
            .unwrap(),
        1
    );
    add(s, forty(), T0).await;
}

pub async fn messages_quota_refuses_a_user_and_truncates_the_task_once<B: Backend>(b: &B) {
    let f = b
        .fresh(Limits {
            messages_per_task: 3,
            ..Limits::default()
        })
        .await;
    let s = &*f.store;
    // A user's messages past the cap are refused, and not written.
    let t = add(s, task("default", 3, 0, T0), T0).await;
    for i in 0..3 {
        msg(s, t.id, json!(i), MessageCheck::User(Some("u".into())))
            .await
            .unwrap()
            .unwrap();
    }
    assert!(is_limit(
        msg(s, t.id, json!(3), MessageCheck::User(Some("u".into()))).await,
        "messages per task",
        3
    ));
    assert_eq!(s.message_list(t.id, 0, 100, None).await.unwrap().len(), 3);
    // The task's own: the first past the cap becomes one `truncated`, later ones are dropped.
    let t2 = add(s, task("m2", 3, 0, T0), T0).await;
    let c = claim_in(s, "A", "m2", 1, T0).await.remove(0);
    assert_eq!(c.id, t2.id);
    let lease = || MessageCheck::Lease {
        owner: "A".into(),
        attempt: 1,
    };
    for i in 0..3 {
        let m = msg(s, t2.id, json!(i), lease()).await.unwrap().unwrap();
        assert_eq!((m.kind.as_str(), m.content.clone()), ("log", json!(i)));
    }
    let cut = msg(s, t2.id, json!(3), lease()).await.unwrap().unwrap();
    assert_eq!(cut.kind, "truncated");
    assert!(msg(s, t2.id, json!(4), lease()).await.unwrap().is_none());
    assert!(msg(s, t2.id, json!(5), MessageCheck::Worker)
        .await
        .unwrap()
        .is_none());
    let all = s.message_list(t2.id, 0, 100, None).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.kind.as_str()).collect::<Vec<_>>(),
        vec!["log", "log", "log", "truncated"]
    );
    assert_eq!(all[3], cut);
}

// ---- pruning ------------------------------------------------------------------------------

pub async fn task_prune_removes_only_that_status_before_the_time_up_to_the_limit<B: Backend>(
    b: &B,
) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let mut old_completed = vec![];
    for _ in 0..3 {
        let t = ended(s, TaskStatus::Completed, T0).await;
        msg(s, t.id, json!("kept with its task"), MessageCheck::Worker)
            .await
            .unwrap();
        old_completed.push(t.id);
    }
    let new_completed = ended(s, TaskStatus::Completed, T0 + 10_000).await;
    let old_failed = ended(s, TaskStatus::Failed, T0).await;
    let old_canceled = {
        let t = add(s, task("default", 3, 0, T0), T0).await;
        s.task_cancel(t.id, None, T0).await.unwrap()
    };
    let pending = add(s, task("default", 3, 0, T0 - 100_000), T0).await;
    // `before` is exclusive.
    assert_eq!(
        s.task_prune(TaskStatus::Completed, T0, 10).await.unwrap(),
        0
    );
    // Up to the limit.
    assert_eq!(
        s.task_prune(TaskStatus::Completed, T0 + 5000, 2)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.task_prune(TaskStatus::Completed, T0 + 5000, 2)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.task_prune(TaskStatus::Completed, T0 + 5000, 2)
            .await
            .unwrap(),
        0
    );
    for id in &old_completed {
        assert!(gone(s, *id).await);
        assert!(s.message_list(*id, 0, 10, None).await.unwrap().is_empty());
    }
    for id in [new_completed.id, old_failed.id, old_canceled.id, pending.id] {
        assert!(!gone(s, id).await, "only old completed tasks go");
    }
    assert_eq!(
        s.task_prune(TaskStatus::Failed, T0 + 5000, 10)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.task_prune(TaskStatus::Canceled, T0 + 5000, 10)
            .await
            .unwrap(),
        1
    );
    // Pending and running tasks are never pruned, however old.
    assert_eq!(
        s.task_prune(TaskStatus::Pending, T0 + 1_000_000, 10)
            .await
            .unwrap(),
        0
    );
    claim_one(s, "A", T0).await;
    assert_eq!(
        s.task_prune(TaskStatus::Running, T0 + 1_000_000, 10)
            .await
            .unwrap(),
        0
    );
    assert!(gone(s, old_failed.id).await && gone(s, old_canceled.id).await);
    assert!(!gone(s, new_completed.id).await && !gone(s, pending.id).await);
}

pub async fn pruner_deletes_finished_tasks_past_retention_with_their_messages<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let old = add(s, task("default", 3, 0, T0), T0).await;
    let c = claim_one(s, "A", T0).await;
    msg(s, old.id, json!("hi"), MessageCheck::Worker)
        .await
        .unwrap();
    finish(s, &c, "A", TaskStatus::Completed, None, T0)
        .await
        .unwrap();
    let keep = add(s, task("default", 3, 0, T0), T0).await;
    let r = spool::config::RetentionConfig {
        completed: Some(Duration::from_secs(3600)),
        failed: None,
        interval: Duration::from_secs(60),
        changes: Duration::from_secs(3600),
        changes_kept: 1_000_000,
    };
    assert_eq!(
        spool::worker::prune_once(s, &r, T0 + 3_599_000)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        spool::worker::prune_once(s, &r, T0 + 3_601_000)
            .await
            .unwrap(),
        1
    );
    assert!(gone(s, old.id).await);
    assert!(s
        .message_list(old.id, 0, 10, None)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(get(s, keep.id).await.status, TaskStatus::Pending);
}

pub async fn changes_prune_keeps_the_newest<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    for _ in 0..10 {
        add(s, task("default", 3, 0, T0), T0).await;
    }
    let all = || {
        s.changes(ChangeParams {
            limit: 1000,
            ..ChangeParams::default()
        })
    };
    assert_eq!(all().await.unwrap().changes.len(), 10);
    // None is older than T0.
    assert_eq!(s.changes_prune(T0, 0).await.unwrap(), 0);
    // Older than T0 + 1, but the newest 3 stay.
    assert_eq!(s.changes_prune(T0 + 1, 3).await.unwrap(), 7);
    let kept = all().await.unwrap();
    assert_eq!(kept.changes.len(), 3);
    assert!(!kept.gap, "reading from the start is no gap");
    // Newer changes are kept whatever `keep` says.
    for _ in 0..2 {
        add(s, task("default", 3, 0, T0), T0 + 100).await;
    }
    assert_eq!(s.changes_prune(T0 + 1, 0).await.unwrap(), 3);
    let kept = all().await.unwrap();
    assert_eq!(kept.changes.len(), 2);
    assert!(kept.changes.iter().all(|c| c.task.created_at == T0 + 100));
}

// ---- two stores ---------------------------------------------------------------------------

pub async fn two_stores_on_one_database_never_claim_the_same_task<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let other = b.another(&f).await;
    let tasks: Vec<NewTask> = (0..200).map(|_| task("default", 3, 0, T0)).collect();
    f.store.task_insert(tasks, T0).await.unwrap();
    let claimer = |s: Arc<dyn Store>, owner: &'static str| async move {
        let mut mine = vec![];
        loop {
            let got = s
                .task_claim(ClaimParams {
                    owner: owner.into(),
                    queues: vec![QueueClaim {
                        queue: "default".into(),
                        limit: 7,
                        admission: None,
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
            assert!(got.iter().all(|t| t.lease_owner.as_deref() == Some(owner)));
            mine.extend(got.into_iter().map(|t| t.id));
        }
    };
    let (a, c) = tokio::time::timeout(
        DEADLINE,
        futures::future::join(
            tokio::spawn(claimer(f.store.clone(), "A")),
            tokio::spawn(claimer(other.clone(), "B")),
        ),
    )
    .await
    .expect("claimers finish");
    let (a, c) = (a.unwrap(), c.unwrap());
    let all: HashSet<TaskId> = a.iter().chain(c.iter()).copied().collect();
    assert_eq!(all.len(), 200, "every task claimed");
    assert_eq!(a.len() + c.len(), 200, "no task claimed twice");
    // Each store reads what the other wrote (one of them may have claimed everything).
    for (ids, owner) in [(&a, "A"), (&c, "B")] {
        if let Some(id) = ids.first() {
            for s in [&f.store, &other] {
                let t = s.task_get(*id, None).await.unwrap();
                assert_eq!(t.lease_owner.as_deref(), Some(owner));
            }
        }
    }
}

// ---- messages -----------------------------------------------------------------------------

pub async fn concurrent_messages_are_read_page_by_page_once_in_order<B: Backend>(b: &B) {
    const WRITERS: u64 = 4;
    const EACH: u64 = 50;
    let f = b.fresh(Limits::default()).await;
    let other = b.another(&f).await;
    let t = add(&*f.store, task("default", 3, 0, T0), T0).await;
    let mut writers = vec![];
    for w in 0..WRITERS {
        // Writers on both stores: commits interleave from two writers of the database.
        let s = if w % 2 == 0 {
            f.store.clone()
        } else {
            other.clone()
        };
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                s.message_insert(
                    t.id,
                    "log".into(),
                    json!({"w": w, "i": i}),
                    MessageCheck::Worker,
                    T0,
                )
                .await
                .unwrap()
                .unwrap();
            }
        }));
    }
    // The reader reads while they write, always after the last id it saw.
    let reader = f.store.clone();
    let read = tokio::spawn(async move {
        let mut seen: Vec<Message> = vec![];
        let mut after = 0;
        let end = tokio::time::Instant::now() + DEADLINE;
        while (seen.len() as u64) < WRITERS * EACH {
            assert!(tokio::time::Instant::now() < end, "reader timed out");
            let page = reader.message_list(t.id, after, 7, None).await.unwrap();
            assert!(page.len() <= 7);
            if let Some(last) = page.last() {
                after = last.id;
            } else {
                tokio::task::yield_now().await;
            }
            seen.extend(page);
        }
        seen
    });
    for w in writers {
        w.await.unwrap();
    }
    let seen = read.await.unwrap();
    assert_eq!(seen.len() as u64, WRITERS * EACH);
    assert!(
        seen.windows(2).all(|p| p[0].id < p[1].id),
        "ids strictly increase"
    );
    let mut next = vec![0u64; WRITERS as usize];
    for m in &seen {
        let w = m.content["w"].as_u64().unwrap() as usize;
        let i = m.content["i"].as_u64().unwrap();
        assert_eq!(i, next[w], "writer {w}'s messages once each, in order");
        next[w] += 1;
    }
    // Nothing more after the last one; a read from the start is the same sequence.
    let last = seen.last().unwrap().id;
    assert!(f
        .store
        .message_list(t.id, last, 10, None)
        .await
        .unwrap()
        .is_empty());
    let mut again = vec![];
    let mut after = 0;
    loop {
        let page = other.message_list(t.id, after, 64, None).await.unwrap();
        let Some(l) = page.last() else { break };
        after = l.id;
        again.extend(page);
    }
    assert_eq!(again, seen);
    // task_with_messages reads the task and the same pages.
    let (task_now, first) = f
        .store
        .task_with_messages(t.id, Some("u".into()), 0, 5, None)
        .await
        .unwrap();
    assert_eq!(task_now.id, t.id);
    assert_eq!(first, seen[..5].to_vec());
    let (_, rest) = f
        .store
        .task_with_messages(t.id, None, seen[194].id, 100, None)
        .await
        .unwrap();
    assert_eq!(rest, seen[195..].to_vec());
}

pub async fn a_message_page_is_bounded_by_bytes_but_holds_at_least_one<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = add(s, task("default", 3, 0, T0), T0).await;
    let big = MESSAGE_PAGE_BYTES * 2 / 5; // 6 of them are 2.4 pages
    for i in 0..6 {
        msg(
            s,
            t.id,
            json!(format!("{i}{}", "x".repeat(big))),
            MessageCheck::Worker,
        )
        .await
        .unwrap();
    }
    let page = s.message_list(t.id, 0, 100, None).await.unwrap();
    assert!(
        !page.is_empty() && page.len() <= 3,
        "a page of about {MESSAGE_PAGE_BYTES} bytes, got {} messages of {big}",
        page.len()
    );
    // Page by page, every message once.
    let mut n = 0;
    let mut after = 0;
    for _ in 0..10 {
        let page = s.message_list(t.id, after, 100, None).await.unwrap();
        let Some(last) = page.last() else { break };
        for m in &page {
            assert!(m.content.as_str().unwrap().starts_with(&n.to_string()));
            n += 1;
        }
        after = last.id;
    }
    assert_eq!(n, 6);
    // One message larger than a page still comes back, alone.
    let t2 = add(s, task("default", 3, 0, T0), T0).await;
    let huge = json!("y".repeat(MESSAGE_PAGE_BYTES + 1000));
    msg(s, t2.id, huge.clone(), MessageCheck::Worker)
        .await
        .unwrap();
    msg(s, t2.id, json!("small"), MessageCheck::Worker)
        .await
        .unwrap();
    let page = s.message_list(t2.id, 0, 100, None).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].content, huge);
    let page = s.message_list(t2.id, page[0].id, 100, None).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].content, json!("small"));
}

pub async fn a_task_list_page_is_bounded_by_bytes_and_says_it_was_cut<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    // Oldest first: two small tasks, one larger than a page, six of 2/5 of a page (listed
    // newest first, so they come first).
    let mut sizes = vec![10, 10, LIST_PAGE_BYTES + 1000];
    sizes.extend([LIST_PAGE_BYTES * 2 / 5; 6]);
    let mut ids = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let t = NewTask {
            payload: json!(format!("{i}{}", "x".repeat(*n))),
            ..task("default", 3, 0, T0)
        };
        ids.push(add(s, t, T0).await.id);
    }
    ids.reverse();
    let (mut seen, mut cursor, mut pages) = (Vec::new(), None, Vec::new());
    for _ in 0..20 {
        let page = s
            .task_list(ListParams {
                cursor,
                limit: 100,
                ..ListParams::default()
            })
            .await
            .unwrap();
        let bytes: usize = page
            .tasks
            .iter()
            .map(|t| t.payload.as_str().unwrap().len() + 2)
            .sum();
        assert!(
            page.tasks.len() == 1 || bytes <= LIST_PAGE_BYTES,
            "a page holds about {LIST_PAGE_BYTES} bytes or one task: {} tasks of {bytes}",
            page.tasks.len()
        );
        pages.push((page.tasks.len(), page.cut));
        seen.extend(page.tasks.iter().map(|t| t.id));
        let Some(last) = page.tasks.last() else { break };
        cursor = Some(last.id);
        if !page.cut {
            break;
        }
    }
    // Two of 2/5 a page fit, three do not; the large one alone; the rest is the end.
    assert_eq!(
        pages,
        vec![(2, true), (2, true), (2, true), (1, true), (2, false)]
    );
    assert_eq!(seen, ids);
}

// ---- events -------------------------------------------------------------------------------

pub async fn a_change_page_is_bounded_by_bytes_and_the_next_resumes_at_its_cut<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    // Six payloads of 2/5 of a page (2.4 pages), one larger than a page, then two small ones.
    let big = CHANGE_PAGE_BYTES * 2 / 5;
    let mut sizes = vec![big; 6];
    sizes.push(CHANGE_PAGE_BYTES + 1000);
    sizes.extend([10, 10]);
    let mut ids = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let t = NewTask {
            payload: json!(format!("{i}{}", "x".repeat(*n))),
            ..task("default", 3, 0, T0)
        };
        ids.push(add(s, t, T0).await.id);
    }
    let mut seen = Vec::new();
    let mut after = 0;
    for _ in 0..20 {
        let page = s
            .changes(ChangeParams {
                after,
                limit: 100,
                ..ChangeParams::default()
            })
            .await
            .unwrap();
        let bytes: usize = page
            .changes
            .iter()
            .map(|c| c.task.payload.as_str().unwrap().len() + 2)
            .sum();
        assert!(
            page.changes.len() == 1 || bytes <= CHANGE_PAGE_BYTES,
            "a page holds about {CHANGE_PAGE_BYTES} bytes or one change, got {} changes of {bytes}",
            page.changes.len()
        );
        assert!(page.changes.len() <= 2, "2/5 of a page fits twice at most");
        seen.extend(page.changes.iter().map(|c| c.task.id));
        assert!(page.next >= after);
        after = page.next;
        if !page.more {
            break;
        }
    }
    // Page by page, every change once, in order: the cursor of a cut page is its last change.
    assert_eq!(seen, ids);
}

pub async fn changes_from_another_store_are_read_with_filters_and_a_cursor<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let a = &*f.store;
    let other = b.another(&f).await;
    let start = a
        .changes(ChangeParams {
            limit: 100,
            ..ChangeParams::default()
        })
        .await
        .unwrap();
    assert!(start.changes.is_empty() && !start.gap);
    // Written through the other store.
    let t1 = add(&*other, task("q1", 3, 0, T0), T0).await;
    let t2 = add(
        &*other,
        NewTask {
            user_id: "v".into(),
            ..task("q2", 3, 0, T0)
        },
        T0,
    )
    .await;
    let page = |after: i64, limit: u32, user: Option<&str>, queue: Option<&str>| {
        a.changes(ChangeParams {
            after,
            user_id: user.map(Into::into),
            queue: queue.map(Into::into),
            limit,
        })
    };
    let p = page(start.next, 100, None, None).await.unwrap();
    assert_eq!(
        p.changes.iter().map(|c| c.task.id).collect::<Vec<_>>(),
        vec![t1.id, t2.id]
    );
    assert!(p.changes[0].seq < p.changes[1].seq);
    assert_eq!(p.next, p.changes[1].seq);
    assert!(!p.gap);
    // One at a time, the cursor advancing.
    let one = page(start.next, 1, None, None).await.unwrap();
    assert_eq!(one.changes.len(), 1);
    assert_eq!(one.next, one.changes[0].seq);
    let two = page(one.next, 1, None, None).await.unwrap();
    assert_eq!(two.changes[0].task.id, t2.id);
    assert!(page(two.next, 10, None, None)
        .await
        .unwrap()
        .changes
        .is_empty());
    // Filters.
    let by_user = page(start.next, 100, Some("v"), None).await.unwrap();
    assert_eq!(
        by_user
            .changes
            .iter()
            .map(|c| c.task.id)
            .collect::<Vec<_>>(),
        vec![t2.id]
    );
    let by_queue = page(start.next, 100, None, Some("q1")).await.unwrap();
    assert_eq!(
        by_queue
            .changes
            .iter()
            .map(|c| c.task.id)
            .collect::<Vec<_>>(),
        vec![t1.id]
    );
    // A page whose changes are all filtered out still moves the cursor past them.
    let none = page(start.next, 100, Some("nobody"), None).await.unwrap();
    assert!(none.changes.is_empty());
    assert_eq!(none.next, p.next);
    // The limit counts changes before the filters: one change read, not the caller's.
    let limited = page(start.next, 1, Some("v"), None).await.unwrap();
    assert!(limited.changes.is_empty());
    assert_eq!(limited.next, one.next);
    // A claim and a finish through the other store are changes too, each showing the task now.
    let c = claim_in(&*other, "W", "q1", 1, T0).await.remove(0);
    let after_claim = page(p.next, 100, None, None).await.unwrap();
    assert_eq!(after_claim.changes.len(), 1);
    assert_eq!(after_claim.changes[0].task.status, TaskStatus::Running);
    finish(&*other, &c, "W", TaskStatus::Completed, None, T0 + 1)
        .await
        .unwrap();
    let after_finish = page(after_claim.next, 100, None, None).await.unwrap();
    assert_eq!(after_finish.changes.len(), 1);
    assert_eq!(*after_finish.changes[0].task, get(a, t1.id).await);
    // A cancel request is a change; a heartbeat is not.
    let c2 = claim_in(&*other, "W", "q2", 1, T0).await.remove(0);
    let mark = page(after_finish.next, 100, None, None).await.unwrap().next;
    other
        .lease_extend("W".into(), vec![c2.id], LEASE, T0 + 2)
        .await
        .unwrap();
    assert!(page(mark, 100, None, None)
        .await
        .unwrap()
        .changes
        .is_empty());
    other.task_cancel(c2.id, None, T0 + 3).await.unwrap();
    let cancel = page(mark, 100, None, None).await.unwrap();
    assert_eq!(cancel.changes.len(), 1);
    assert!(cancel.changes[0].task.cancel_requested);
    // From the start, every change is there in order.
    let everything = page(0, 1000, None, None).await.unwrap();
    assert!(everything.changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(everything.changes.len(), 6);
}

pub async fn a_cursor_behind_pruned_changes_reports_a_gap<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let other = b.another(&f).await;
    for _ in 0..10 {
        add(s, task("ten", 3, 0, T0), T0).await;
    }
    let all = s
        .changes(ChangeParams {
            limit: 100,
            ..ChangeParams::default()
        })
        .await
        .unwrap();
    let seqs: Vec<i64> = all.changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs.len(), 10);
    assert_eq!(other.changes_prune(T0 + 1, 3).await.unwrap(), 7);
    // A reader at the first change missed the pruned ones.
    let behind = s
        .changes(ChangeParams {
            after: seqs[0],
            limit: 100,
            ..ChangeParams::default()
        })
        .await
        .unwrap();
    assert!(behind.gap);
    assert_eq!(
        behind.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        seqs[7..].to_vec()
    );
    // A reader at the last pruned change missed nothing.
    let caught_up = s
        .changes(ChangeParams {
            after: seqs[6],
            limit: 100,
            ..ChangeParams::default()
        })
        .await
        .unwrap();
    assert!(!caught_up.gap);
    assert_eq!(caught_up.changes.len(), 3);
    // A change of a task pruned since is left out.
    let done = ended(s, TaskStatus::Completed, T0).await;
    let mark = caught_up.next;
    s.task_prune(TaskStatus::Completed, T0 + 1, 10)
        .await
        .unwrap();
    assert!(gone(s, done.id).await);
    let after = s
        .changes(ChangeParams {
            after: mark,
            limit: 100,
            ..ChangeParams::default()
        })
        .await
        .unwrap();
    assert!(after.changes.iter().all(|c| c.task.id != done.id));
    // Every change pruned (keep 0): a reader behind them still learns it missed some, and a
    // reader that had read them all missed nothing.
    add(s, task("ten", 3, 0, T0), T0).await;
    let newest = s
        .changes(ChangeParams {
            after: mark,
            limit: 100,
            ..ChangeParams::default()
        })
        .await
        .unwrap()
        .next;
    assert!(newest > mark);
    assert!(s.changes_prune(T0 + 1_000_000, 0).await.unwrap() > 0);
    let at = |after: i64| {
        s.changes(ChangeParams {
            after,
            limit: 100,
            ..ChangeParams::default()
        })
    };
    for after in [seqs[0], mark] {
        assert!(
            at(after).await.unwrap().gap,
            "a cursor at {after} missed changes"
        );
    }
    let read_all = at(newest).await.unwrap();
    assert!(read_all.changes.is_empty() && !read_all.gap);
}

async fn recv(rx: &mut tokio::sync::broadcast::Receiver<Event>) -> Event {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("an event in time")
        .unwrap()
}

pub async fn own_commits_are_published_on_the_hub<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let mut rx = s.hub().subscribe();
    let t = add(s, task("default", 3, 0, T0), T0).await;
    match recv(&mut rx).await {
        Event::Task(e) => assert_eq!((e.id, e.status), (t.id, TaskStatus::Pending)),
        e => panic!("expected the insert, got {e:?}"),
    }
    let c = claim_one(s, "A", T0).await;
    match recv(&mut rx).await {
        Event::Task(e) => assert_eq!((e.id, e.status), (t.id, TaskStatus::Running)),
        e => panic!("expected the claim, got {e:?}"),
    }
    let m = msg(s, t.id, json!("hi"), MessageCheck::Worker)
        .await
        .unwrap()
        .unwrap();
    match recv(&mut rx).await {
        Event::Message(e) => assert_eq!(*e, m),
        e => panic!("expected the message, got {e:?}"),
    }
    finish(s, &c, "A", TaskStatus::Completed, None, T0).await;
    match recv(&mut rx).await {
        Event::Task(e) => assert_eq!((e.id, e.status), (t.id, TaskStatus::Completed)),
        e => panic!("expected the finish, got {e:?}"),
    }
    // A refused write publishes nothing.
    assert!(is_conflict(s.task_cancel(t.id, None, T0).await));
    assert!(matches!(
        rx.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    ));
}

// ---- users and tokens ---------------------------------------------------------------------

pub async fn token_create_new_existing_and_admin_rules<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    assert!(!s.token_any().await.unwrap());
    let create = |name: &str, admin: bool, existing: ExistingUser, h: u32| {
        s.token_create(TokenCreate {
            name: name.into(),
            admin,
            existing,
            token_hash: hash(h),
            now: T0,
        })
    };
    let alice = create("alice", false, ExistingUser::Refuse, 1)
        .await
        .unwrap();
    assert_eq!((alice.name.as_str(), alice.is_admin), ("alice", false));
    assert!(s.token_any().await.unwrap());
    // An existing name is refused without --existing; a missing one with it.
    assert!(is_conflict(
        create("alice", false, ExistingUser::Refuse, 2).await
    ));
    assert!(is_conflict(
        create("bob", false, ExistingUser::AddToken, 3).await
    ));
    // The admin flag must match an existing user's.
    assert!(is_conflict(
        create("alice", true, ExistingUser::AddToken, 4).await
    ));
    let again = create("alice", false, ExistingUser::AddToken, 5)
        .await
        .unwrap();
    assert_eq!(again.id, alice.id);
    // The name admin belongs to an admin.
    assert!(is_conflict(
        create(ADMIN_NAME, false, ExistingUser::Refuse, 6).await
    ));
    let root = create("root", true, ExistingUser::Refuse, 7).await.unwrap();
    assert!(root.is_admin);
    assert!(is_conflict(
        create("root", false, ExistingUser::AddToken, 8).await
    ));
    // Refused creations wrote nothing.
    for h in [2, 3, 4, 6, 8] {
        assert_eq!(s.user_by_token(hash(h)).await.unwrap(), None);
    }
    // Tokens name their users.
    assert_eq!(
        s.user_by_token(hash(1)).await.unwrap().unwrap().id,
        alice.id
    );
    assert_eq!(
        s.user_by_token(hash(5)).await.unwrap().unwrap().id,
        alice.id
    );
    let r = s.user_by_token(hash(7)).await.unwrap().unwrap();
    assert_eq!((r.id, r.is_admin, r.jwt), (root.id, true, false));
    assert_eq!(s.user_by_id(alice.id).await.unwrap().unwrap().name, "alice");
    assert_eq!(s.user_by_id(-42).await.unwrap(), None);
    // The list: oldest first, never the hash, only its start.
    let list = s.token_list().await.unwrap();
    assert_eq!(
        list.iter()
            .map(|t| (t.user.as_str(), t.admin, t.hash_prefix.clone()))
            .collect::<Vec<_>>(),
        vec![
            ("alice", false, hash(1)[..12].to_string()),
            ("alice", false, hash(5)[..12].to_string()),
            ("root", true, hash(7)[..12].to_string()),
        ]
    );
    assert!(list.iter().all(|t| t.created_at == T0));
}

pub async fn bootstrap_admin_happens_once_across_two_stores<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let other = b.another(&f).await;
    let mut joins = vec![];
    for i in 0..8u32 {
        let s = if i % 2 == 0 {
            f.store.clone()
        } else {
            other.clone()
        };
        joins.push(tokio::spawn(async move {
            (i, s.token_bootstrap_admin(hash(100 + i), T0).await.unwrap())
        }));
    }
    let mut winners = vec![];
    for j in joins {
        let (i, stored) = j.await.unwrap();
        if stored {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one bootstrap token is stored");
    let admin = f
        .store
        .user_by_token(hash(100 + winners[0]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((admin.name.as_str(), admin.is_admin), (ADMIN_NAME, true));
    assert_eq!(f.store.token_list().await.unwrap().len(), 1);
    // Never again, once any token exists.
    assert!(!other.token_bootstrap_admin(hash(200), T0).await.unwrap());
    // On a database whose only tokens were revoked, it is stored again, for the same user.
    f.store
        .token_revoke(TokenRevoke::User(ADMIN_NAME.into()))
        .await
        .unwrap();
    assert!(other.token_bootstrap_admin(hash(201), T0).await.unwrap());
    let again = f.store.user_by_token(hash(201)).await.unwrap().unwrap();
    assert_eq!((again.id, again.is_admin), (admin.id, true));
}

pub async fn user_resolve_and_jwt_users_are_separate_namespaces<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let carol = s.user_resolve("carol".into(), T0).await.unwrap();
    assert_eq!((carol.name.as_str(), carol.is_admin), ("carol", false));
    assert_eq!(s.user_resolve("carol".into(), T0).await.unwrap(), carol);
    let admin = s.user_resolve(ADMIN_NAME.into(), T0).await.unwrap();
    assert!(admin.is_admin);
    assert_ne!(admin.id, carol.id);
    assert_eq!(carol.owner_key(), carol.id.to_string());
    // A token user made by token_create is the one user_resolve finds.
    let dave = new_token_user(s, "dave", false, &hash(1)).await;
    assert_eq!(s.user_resolve("dave".into(), T0).await.unwrap().id, dave.id);
    // JWT users: another namespace per issuer, never admin, stable.
    let j = s
        .user_jwt("https://idp".into(), "carol".into(), T0)
        .await
        .unwrap();
    assert_ne!(j.id, carol.id);
    assert!(!j.is_admin);
    assert_eq!(
        s.user_jwt("https://idp".into(), "carol".into(), T0)
            .await
            .unwrap()
            .id,
        j.id
    );
    let j2 = s
        .user_jwt("https://other".into(), "carol".into(), T0)
        .await
        .unwrap();
    assert_ne!(j2.id, j.id);
    let jadmin = s
        .user_jwt("https://idp".into(), ADMIN_NAME.into(), T0)
        .await
        .unwrap();
    assert!(!jadmin.is_admin);
    assert_ne!(jadmin.id, admin.id);
    // The token user of that name is still the one user_resolve finds.
    assert_eq!(
        s.user_resolve("carol".into(), T0).await.unwrap().id,
        carol.id
    );
    let by_id = s.user_by_id(j.id).await.unwrap().unwrap();
    assert_eq!((by_id.name.as_str(), by_id.is_admin), ("carol", false));
    // A JWT user seen first does not become the token user of its name, nor the admin.
    let jf = s
        .user_jwt("https://idp".into(), "frank".into(), T0)
        .await
        .unwrap();
    let frank = s.user_resolve("frank".into(), T0).await.unwrap();
    assert_ne!(frank.id, jf.id);
    let f2 = b.fresh(Limits::default()).await;
    let jwt_first = f2
        .store
        .user_jwt("https://idp".into(), ADMIN_NAME.into(), T0)
        .await
        .unwrap();
    assert!(f2.store.token_bootstrap_admin(hash(9), T0).await.unwrap());
    let boot = f2.store.user_by_token(hash(9)).await.unwrap().unwrap();
    assert_ne!(boot.id, jwt_first.id);
    assert!(boot.is_admin);
    assert!(
        !f2.store
            .user_by_id(jwt_first.id)
            .await
            .unwrap()
            .unwrap()
            .is_admin
    );
    // Two stores resolving one new name at once make one user.
    let other = b.another(&f).await;
    let (x, y) = tokio::join!(
        s.user_resolve("erin".into(), T0),
        other.user_resolve("erin".into(), T0)
    );
    assert_eq!(x.unwrap().id, y.unwrap().id);
}

pub async fn token_revoke_by_hash_user_and_id<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    new_token_user(s, "alice", false, &hash(1)).await;
    for h in [2, 3] {
        s.token_create(TokenCreate {
            name: "alice".into(),
            admin: false,
            existing: ExistingUser::AddToken,
            token_hash: hash(h),
            now: T0,
        })
        .await
        .unwrap();
    }
    new_token_user(s, "bob", false, &hash(4)).await;
    new_token_user(s, "carl", false, &hash(5)).await;
    assert_eq!(s.token_revoke(TokenRevoke::Hash(hash(1))).await.unwrap(), 1);
    assert_eq!(s.user_by_token(hash(1)).await.unwrap(), None);
    assert!(s.user_by_token(hash(2)).await.unwrap().is_some());
    assert_eq!(s.token_revoke(TokenRevoke::Hash(hash(1))).await.unwrap(), 0);
    assert_eq!(
        s.token_revoke(TokenRevoke::User("alice".into()))
            .await
            .unwrap(),
        2
    );
    assert_eq!(s.user_by_token(hash(3)).await.unwrap(), None);
    assert_eq!(
        s.token_revoke(TokenRevoke::User("nobody".into()))
            .await
            .unwrap(),
        0
    );
    let bob_id = s
        .token_list()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.user == "bob")
        .unwrap()
        .id;
    assert_eq!(s.token_revoke(TokenRevoke::Id(bob_id)).await.unwrap(), 1);
    assert_eq!(s.user_by_token(hash(4)).await.unwrap(), None);
    assert!(s.user_by_token(hash(5)).await.unwrap().is_some());
    assert_eq!(
        s.token_list()
            .await
            .unwrap()
            .iter()
            .map(|t| t.user.as_str())
            .collect::<Vec<_>>(),
        vec!["carl"]
    );
}

pub async fn task_tokens_live_only_while_their_attempt_runs<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = add(s, task("default", 3, 0, T0), T0).await;
    // Not for a task that is not running.
    assert!(is_conflict(s.task_token_create(&t, hash(9), T0).await));
    let c = claim_one(s, "A", T0).await;
    s.task_token_create(&c, hash(1), T0).await.unwrap();
    assert_eq!(
        s.task_token_lookup(hash(1), T0 + 1).await.unwrap(),
        TaskTokenCheck::Valid(t.id, 1, c.started_at.unwrap())
    );
    assert_eq!(
        s.task_token_lookup(hash(2), T0).await.unwrap(),
        TaskTokenCheck::Unknown
    );
    // Its lease ran out (not yet rescued): expired.
    let late = T0 + LEASE as i64 + 1;
    assert_eq!(
        s.task_token_lookup(hash(1), late).await.unwrap(),
        TaskTokenCheck::Expired
    );
    // A heartbeat brings it back.
    s.lease_extend("A".into(), vec![t.id], LEASE, late)
        .await
        .unwrap();
    assert_eq!(
        s.task_token_lookup(hash(1), late).await.unwrap(),
        TaskTokenCheck::Valid(t.id, 1, c.started_at.unwrap())
    );
    // The attempt ends: the token is gone, and no new one is stored for it.
    finish(s, &c, "A", TaskStatus::Pending, Some(T0), late)
        .await
        .unwrap();
    assert_eq!(
        s.task_token_lookup(hash(1), late).await.unwrap(),
        TaskTokenCheck::Unknown
    );
    assert!(is_conflict(s.task_token_create(&c, hash(3), late).await));
    assert_eq!(
        s.task_token_lookup(hash(3), late).await.unwrap(),
        TaskTokenCheck::Unknown
    );
    // The next attempt's claim, once its lease is lost to another worker, takes no token either;
    // the new holder's does, for attempt 3.
    let c2 = claim_one(s, "A", late).await;
    assert_eq!(c2.attempts, 2);
    let later = late + LEASE as i64 + 1;
    let c3 = claim_one(s, "B", later).await;
    assert_eq!(c3.attempts, 3);
    assert!(is_conflict(s.task_token_create(&c2, hash(4), later).await));
    s.task_token_create(&c3, hash(5), later).await.unwrap();
    assert_eq!(
        s.task_token_lookup(hash(5), later).await.unwrap(),
        TaskTokenCheck::Valid(t.id, 3, c3.started_at.unwrap())
    );
}

// ---- messages' checks, queues, workers, operations ---------------------------------------

pub async fn message_insert_checks_scope_attempt_and_lease<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = add(s, task("default", 3, 0, T0), T0).await;
    let user = |u: &str| MessageCheck::User(Some(u.into()));
    let lease = |o: &str, a: u32| MessageCheck::Lease {
        owner: o.into(),
        attempt: a,
    };
    // Pending: its user and an admin may write; another user finds no task; no attempt runs.
    let m = msg(s, t.id, json!("by u"), user("u"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.task_id, m.kind.as_str(), m.created_at),
        (t.id, "log", T0)
    );
    msg(s, t.id, json!("by admin"), MessageCheck::User(None))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        msg(s, t.id, json!("x"), user("v")).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(is_conflict(msg(s, t.id, json!("x"), by_token(1, 1)).await));
    assert!(is_conflict(msg(s, t.id, json!("x"), lease("A", 1)).await));
    // Running: the attempt's token and the lease holder may write; another attempt, a token
    // not issued for it, or another owner may not.
    let c = claim_one(s, "A", T0).await;
    s.task_token_create(&c, hash(1), T0).await.unwrap();
    msg(s, t.id, json!("attempt"), by_token(1, 1))
        .await
        .unwrap()
        .unwrap();
    msg(s, t.id, json!("lease"), lease("A", 1))
        .await
        .unwrap()
        .unwrap();
    assert!(is_conflict(msg(s, t.id, json!("x"), by_token(2, 1)).await));
    assert!(is_conflict(msg(s, t.id, json!("x"), by_token(1, 2)).await));
    assert!(is_conflict(msg(s, t.id, json!("x"), lease("B", 1)).await));
    assert!(is_conflict(msg(s, t.id, json!("x"), lease("A", 2)).await));
    msg(s, t.id, json!("running"), user("u"))
        .await
        .unwrap()
        .unwrap();
    // Terminal: a user, the attempt and the lease are refused; the worker is not checked.
    finish(s, &c, "A", TaskStatus::Completed, None, T0)
        .await
        .unwrap();
    assert!(is_conflict(msg(s, t.id, json!("x"), user("u")).await));
    assert!(is_conflict(
        msg(s, t.id, json!("x"), MessageCheck::User(None)).await
    ));
    assert!(is_conflict(msg(s, t.id, json!("x"), by_token(1, 1)).await));
    assert!(is_conflict(msg(s, t.id, json!("x"), lease("A", 1)).await));
    msg(s, t.id, json!("worker"), MessageCheck::Worker)
        .await
        .unwrap()
        .unwrap();
    // No such task.
    for check in [MessageCheck::User(None), MessageCheck::Worker] {
        assert!(matches!(
            msg(s, TaskId::new(), json!("x"), check).await,
            Err(StoreError::NotFound(_))
        ));
    }
    let kept: Vec<Value> = s
        .message_list(t.id, 0, 100, None)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(
        kept,
        vec![
            json!("by u"),
            json!("by admin"),
            json!("attempt"),
            json!("lease"),
            json!("running"),
            json!("worker")
        ]
    );
}

pub async fn queue_stats_count_every_status_and_pause<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    for _ in 0..3 {
        add(s, task("q", 3, 10, T0 - 1000), T0).await;
    }
    let c = claim_in(s, "A", "q", 3, T0).await;
    assert_eq!(c.len(), 3);
    finish(s, &c[1], "A", TaskStatus::Completed, None, T0).await;
    finish(s, &c[2], "A", TaskStatus::Failed, None, T0).await;
    add(s, task("q", 3, 0, T0 - 100), T0).await;
    add(s, task("q", 3, 0, T0), T0).await;
    add(s, task("q", 3, 0, T0 + 5000), T0).await;
    let x = add(s, task("q", 3, 0, T0), T0).await;
    s.task_cancel(x.id, None, T0).await.unwrap();
    s.queue_set_paused("idle".into(), true, T0).await.unwrap();
    let stats = s
        .queue_stats(vec!["configured".into(), "q".into()], T0)
        .await
        .unwrap();
    let by: HashMap<&str, &spool::store::QueueStats> =
        stats.iter().map(|q| (q.name.as_str(), q)).collect();
    assert_eq!(by.len(), 3, "{stats:?}");
    let q = by["q"];
    assert_eq!(
        (
            q.pending,
            q.scheduled,
            q.running,
            q.completed,
            q.failed,
            q.canceled
        ),
        (2, 1, 1, 1, 1, 1)
    );
    assert_eq!(q.oldest_pending_age_ms, Some(100));
    assert!(!q.paused);
    assert_eq!(
        *by["configured"],
        spool::store::QueueStats {
            name: "configured".into(),
            ..Default::default()
        }
    );
    assert!(by["idle"].paused);
    // Later, the scheduled one is due.
    let later = s.queue_stats(vec![], T0 + 5000).await.unwrap();
    let q = later.iter().find(|q| q.name == "q").unwrap();
    assert_eq!((q.pending, q.scheduled), (3, 0));
    assert_eq!(q.oldest_pending_age_ms, Some(5100));
}

pub async fn inspect_lists_running_oldest_first_and_latest_failures<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let f1 = ended(s, TaskStatus::Failed, T0).await;
    let f2 = ended(s, TaskStatus::Failed, T0 + 10).await;
    ended(s, TaskStatus::Completed, T0 + 20).await;
    add(s, task("default", 3, 0, T0), T0).await;
    add(s, task("default", 3, 0, T0), T0).await;
    add(s, task("default", 3, 0, T0), T0).await;
    let r1 = claim_one(s, "A", T0 + 30).await;
    let r2 = claim_one(s, "A", T0 + 40).await;
    let (running, failed) = s.inspect_lists(10).await.unwrap();
    assert_eq!(
        running.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![r1.id, r2.id]
    );
    assert_eq!(
        failed.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![f2.id, f1.id]
    );
    let (running, failed) = s.inspect_lists(1).await.unwrap();
    assert_eq!((running.len(), failed.len()), (1, 1));
    assert_eq!((running[0].id, failed[0].id), (r1.id, f2.id));
}

pub async fn workers_are_listed_with_the_tasks_they_hold_until_removed_or_silent<B: Backend>(
    b: &B,
) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    s.worker_heartbeat("w1".into(), "host-b".into(), 1, T0 - 60_000, T0)
        .await
        .unwrap();
    s.worker_heartbeat("w2".into(), "host-a".into(), 2, T0 - 60_000, T0)
        .await
        .unwrap();
    // w1 holds two running tasks; a third is pending.
    for _ in 0..3 {
        add(s, task("default", 3, 0, T0), T0).await;
    }
    claim_one(s, "w1", T0 + 10).await;
    claim_one(s, "w1", T0 + 20).await;
    // Again: its row follows its latest heartbeat (its start stays).
    s.worker_heartbeat("w1".into(), "host-b".into(), 11, T0 - 60_000, T0 + 1000)
        .await
        .unwrap();
    let worker = |id: &str, host: &str, pid: i64, heartbeat_at: i64, running: i64| WorkerInfo {
        id: id.into(),
        host: host.into(),
        pid,
        started_at: T0,
        heartbeat_at,
        running,
    };
    assert_eq!(
        s.worker_list().await.unwrap(),
        vec![
            worker("w2", "host-a", 2, T0, 0),
            worker("w1", "host-b", 11, T0 + 1000, 2)
        ],
        "by host, each with what it holds"
    );
    // A heartbeat forgets the workers silent since its `stale_before`: w2 (last seen at T0).
    s.worker_heartbeat("w3".into(), "host-a".into(), 3, T0 + 500, T0 + 2000)
        .await
        .unwrap();
    let ids = |l: Vec<WorkerInfo>| l.into_iter().map(|w| w.id).collect::<Vec<_>>();
    assert_eq!(ids(s.worker_list().await.unwrap()), ["w3", "w1"]);
    s.worker_remove("w3".into()).await.unwrap();
    s.worker_remove("w3".into()).await.unwrap();
    s.worker_remove("never".into()).await.unwrap();
    assert_eq!(ids(s.worker_list().await.unwrap()), ["w1"]);
    // Another process reads the same.
    let other = b.another(&f).await;
    assert_eq!(ids(other.worker_list().await.unwrap()), ["w1"]);
}

pub async fn schema_version_and_ping_write<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    assert_eq!(f.store.schema_version().await.unwrap(), b.schema_version());
    f.store.ping_write(T0).await.unwrap();
    let other = b.another(&f).await;
    assert_eq!(other.schema_version().await.unwrap(), b.schema_version());
    other.ping_write(T0 + 1).await.unwrap();
    assert!(!f.store.describe().is_empty());
}

pub async fn a_closed_store_refuses_writes<B: Backend>(b: &B) {
    let f = b.fresh(Limits::default()).await;
    let s = &*f.store;
    let t = add(s, task("default", 3, 0, T0), T0).await;
    s.close();
    assert!(matches!(
        s.task_insert(vec![task("default", 3, 0, T0)], T0).await,
        Err(StoreError::Unavailable(_))
    ));
    // What was committed before is there for another store.
    let other = b.another(&f).await;
    assert_eq!(other.task_get(t.id, None).await.unwrap().id, t.id);
}

// ---- interactive tasks ---------------------------------------------------------------------

/// Ends `t`'s attempt as a wait until `until` (as the worker does: the attempt is given back).
pub async fn park(s: &dyn Store, t: &Task, owner: &str, until: i64, now: i64) -> Option<Task> {
    s.task_finish_wait(FinishParams {
        task: Arc::new(t.clone()),
        owner: owner.into(),
        status: TaskStatus::Waiting,
        result: None,
        error: None,
        run_at: Some(until),
        uncount: true,
        wait_until: Some(until),
        now,
    })
    .await
    .unwrap()
    .map(Arc::unwrap_or_clone)
}

/// The owner, `u`, writes `text` to task `id` as an `answer` message.
pub async fn owner_says(s: &dyn Store, id: TaskId, text: &str, now: i64) -> Message {
    s.message_insert(
        id,
        "answer".into(),
        json!(text),
        MessageCheck::User(Some("u".into())),
        now,
    )
    .await
    .unwrap()
    .unwrap()
}

pub async fn a_wait_frees_the_lease_spends_no_attempt_and_an_owner_message_wakes_it(
    b: &impl Backend,
) {
    let f = b.fresh(Limits::default()).await;
    let s = f.store.as_ref();
    let t = add(s, task("default", 2, 0, T0), T0).await;
    let c = claim_one(s, "A", T0).await;
    assert_eq!(c.attempts, 1);
    let w = park(s, &c, "A", T0 + 3_600_000, T0 + 1).await.unwrap();
    assert_eq!(w.status, TaskStatus::Waiting);
    assert_eq!(w.attempts, 0, "a wait spends no attempt");
    assert_eq!(w.wait_until, Some(T0 + 3_600_000));
    let stored = get(s, t.id).await;
    assert_eq!(stored, w, "the finish returns the row as stored");
    assert_eq!(stored.lease_owner, None);
    assert!(stored.to_json()["wait"]["until"].is_string());
    assert!(
        claim(s, "B", 1, T0 + 2).await.is_empty(),
        "a waiting task is not claimable"
    );
    // A worker's own progress does not wake it; the owner's message does, at once.
    s.message_insert(t.id, "log".into(), json!("x"), MessageCheck::Worker, T0 + 3)
        .await
        .unwrap();
    assert_eq!(get(s, t.id).await.status, TaskStatus::Waiting);
    owner_says(s, t.id, "yes", T0 + 4).await;
    let woken = get(s, t.id).await;
    assert_eq!(woken.status, TaskStatus::Pending);
    assert_eq!(woken.wake_reason, Some(spool::task::WakeReason::Message));
    assert_eq!(woken.wait_until, None);
    assert!(woken.to_json()["wait"].is_null());
    let again = claim_one(s, "B", T0 + 5).await;
    assert_eq!(again.id, t.id);
    assert_eq!(
        again.attempts, 1,
        "the wake-up's attempt is the first failure-counting one"
    );
    assert_eq!(again.wake_reason, Some(spool::task::WakeReason::Message));
    // Its end spends the wake reason.
    let done = finish(s, &again, "B", TaskStatus::Completed, None, T0 + 6)
        .await
        .unwrap();
    assert_eq!(done.wake_reason, None);
    // The change log has every status, in order.
    let page = s
        .changes(ChangeParams {
            after: 0,
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let statuses: Vec<TaskStatus> = page
        .changes
        .iter()
        .filter(|c| c.task.id == t.id)
        .map(|c| c.task.status)
        .collect();
    assert_eq!(
        statuses,
        vec![
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Waiting,
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Completed
        ]
    );
}

pub async fn a_wait_times_out_at_the_rescue_and_the_next_attempt_knows_why(b: &impl Backend) {
    let f = b.fresh(Limits::default()).await;
    let s = f.store.as_ref();
    let t = add(s, task("default", 1, 0, T0), T0).await;
    let c = claim_one(s, "A", T0).await;
    park(s, &c, "A", T0 + 100, T0 + 1).await.unwrap();
    assert!(
        claim(s, "A", 1, T0 + 99).await.is_empty(),
        "not before its timeout"
    );
    let again = claim_one(s, "A", T0 + 100).await;
    assert_eq!(again.id, t.id);
    assert_eq!(again.wake_reason, Some(spool::task::WakeReason::Timeout));
    assert_eq!(
        again.attempts, 1,
        "max_attempts 1 still has its one attempt after a wait"
    );
}

pub async fn a_waiting_task_is_canceled_at_once_and_counted_in_queue_stats(b: &impl Backend) {
    let f = b.fresh(Limits::default()).await;
    let s = f.store.as_ref();
    let t = add(s, task("default", 3, 0, T0), T0).await;
    let c = claim_one(s, "A", T0).await;
    park(s, &c, "A", T0 + 3_600_000, T0 + 1).await.unwrap();
    let q = s.queue_stats(vec![], T0 + 2).await.unwrap();
    let d = q.iter().find(|q| q.name == "default").unwrap();
    assert_eq!((d.waiting, d.pending, d.running), (1, 0, 0));
    let canceled = s.task_cancel(t.id, None, T0 + 3).await.unwrap();
    assert_eq!(canceled.status, TaskStatus::Canceled);
    assert_eq!(canceled.wait_until, None);
    assert!(is_conflict(
        s.message_insert(
            t.id,
            "answer".into(),
            json!("late"),
            MessageCheck::User(Some("u".into())),
            T0 + 4
        )
        .await
    ));
    // A cancel asked for while it ran ends a wait as canceled, not waiting.
    let t2 = add(s, task("default", 3, 0, T0), T0).await;
    let c2 = claim_one(s, "A", T0 + 5).await;
    assert_eq!(c2.id, t2.id);
    s.task_cancel(t2.id, None, T0 + 6).await.unwrap();
    let ended = park(s, &c2, "A", T0 + 3_600_000, T0 + 7).await.unwrap();
    assert_eq!(ended.status, TaskStatus::Canceled);
}

pub async fn a_checkpoint_is_fenced_by_attempt_and_kept_until_a_reset_retry(b: &impl Backend) {
    let f = b.fresh(Limits::default()).await;
    let s = f.store.as_ref();
    let t = add(s, task("default", 2, 0, T0), T0).await;
    let c = claim_one(s, "A", T0).await;
    let fence = MessageCheck::Lease {
        owner: "A".into(),
        attempt: 1,
    };
    let saved = s
        .task_checkpoint(t.id, json!({"step": 1}), fence.clone(), T0 + 1)
        .await
        .unwrap();
    assert_eq!(saved.checkpoint, Some(json!({"step": 1})));
    assert_eq!(get(s, t.id).await.checkpoint, Some(json!({"step": 1})));
    // Another worker, or another attempt, cannot write it.
    let wrong = MessageCheck::Lease {
        owner: "B".into(),
        attempt: 1,
    };
    assert!(is_conflict(
        s.task_checkpoint(t.id, json!(0), wrong, T0 + 2).await
    ));
    s.task_token_create(&c, hash(1), T0).await.unwrap();
    assert!(is_conflict(
        s.task_checkpoint(t.id, json!(0), by_token(2, 1), T0 + 2)
            .await
    ));
    assert!(matches!(
        s.task_checkpoint(TaskId::new(), json!(0), by_token(1, 1), T0)
            .await,
        Err(StoreError::NotFound(_))
    ));
    // The next attempt (after a failure) starts with it; the last attempt's token is no good.
    finish(s, &c, "A", TaskStatus::Pending, Some(T0 + 10), T0 + 3).await;
    let c2 = claim_one(s, "A", T0 + 10).await;
    assert_eq!(c2.checkpoint, Some(json!({"step": 1})));
    s.task_token_create(&c2, hash(2), T0 + 10).await.unwrap();
    assert!(is_conflict(
        s.task_checkpoint(t.id, json!(0), by_token(2, 1), T0 + 11)
            .await
    ));
    s.task_checkpoint(t.id, json!({"step": 2}), by_token(2, 2), T0 + 11)
        .await
        .unwrap();
    let failed = finish(s, &c2, "A", TaskStatus::Failed, None, T0 + 12)
        .await
        .unwrap();
    assert_eq!(failed.checkpoint, Some(json!({"step": 2})));
    // A retry keeps it; a reset retry forgets it.
    let kept = s.task_retry(t.id, None, false, T0 + 13).await.unwrap();
    assert_eq!(kept.checkpoint, Some(json!({"step": 2})));
    s.task_cancel(t.id, None, T0 + 14).await.unwrap();
    let reset = s.task_retry(t.id, None, true, T0 + 15).await.unwrap();
    assert_eq!(reset.checkpoint, None);
    assert_eq!(get(s, t.id).await.checkpoint, None);
}

pub async fn the_inbox_cursor_moves_only_with_a_checkpoint_or_a_wait(b: &impl Backend) {
    let f = b.fresh(Limits::default()).await;
    let s = f.store.as_ref();
    let t = add(s, task("default", 5, 0, T0), T0).await;
    let m1 = owner_says(s, t.id, "one", T0 + 1).await;
    let m2 = owner_says(s, t.id, "two", T0 + 2).await;
    let c = claim_one(s, "A", T0 + 3).await;
    assert_eq!(c.inbox_cursor, 0, "nothing is behind a new task");
    let fence = MessageCheck::Lease {
        owner: "A".into(),
        attempt: c.attempts,
    };
    // Read m1, then checkpoint: m1 is behind the task. Read m2, then crash: m2 is not.
    s.inbox_read(t.id, fence.clone(), m1.id, T0 + 4)
        .await
        .unwrap();
    s.task_checkpoint(t.id, json!("after one"), fence.clone(), T0 + 5)
        .await
        .unwrap();
    s.inbox_read(t.id, fence.clone(), m2.id, T0 + 6)
        .await
        .unwrap();
    finish(s, &c, "A", TaskStatus::Pending, Some(T0 + 7), T0 + 7).await;
    let c2 = claim_one(s, "A", T0 + 7).await;
    assert_eq!(c2.inbox_cursor, m1.id);
    let ahead = s
        .message_list(t.id, c2.inbox_cursor, 10, Some(spool::task::Author::User))
        .await
        .unwrap();
    assert_eq!(
        ahead.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![m2.id],
        "the next attempt is handed what the checkpoint did not take in"
    );
    // A stale attempt's read changes nothing.
    s.inbox_read(t.id, fence, m2.id, T0 + 8).await.unwrap();
    // Reading m2 and then waiting takes m2 in.
    let fence2 = MessageCheck::Lease {
        owner: "A".into(),
        attempt: c2.attempts,
    };
    s.inbox_read(t.id, fence2, m2.id, T0 + 9).await.unwrap();
    let w = park(s, &c2, "A", T0 + 1000, T0 + 10).await.unwrap();
    assert_eq!(w.inbox_cursor, m2.id);
    let m3 = owner_says(s, t.id, "three", T0 + 11).await;
    let c3 = claim_one(s, "A", T0 + 12).await;
    assert_eq!(c3.inbox_cursor, m2.id);
    let ahead = s
        .message_list(t.id, c3.inbox_cursor, 10, Some(spool::task::Author::User))
        .await
        .unwrap();
    assert_eq!(ahead.iter().map(|m| m.id).collect::<Vec<_>>(), vec![m3.id]);
}

/// The owner writes while the attempt runs, after its last look at the inbox; the attempt then
/// ends in a wait. Parking would leave the task waiting for a message that has already come
/// (until the timeout): it is pending again at once instead, woken by that message, and the
/// next attempt is handed it. Messages of the task's own (progress) do not count, nor do
/// messages that were there before the attempt began (a task that ignores its inbox would be
/// started again and again), and a cancel asked for still wins.
pub async fn a_wait_with_an_owner_message_it_has_not_read_does_not_park(b: &impl Backend) {
    let f = b.fresh(Limits::default()).await;
    let s = f.store.as_ref();
    // A message older than the attempt, left unread, does not end its wait.
    let ignored = add(s, task("default", 3, 0, T0), T0).await;
    owner_says(s, ignored.id, "before", T0).await;
    let ci = claim_one(s, "A", T0).await;
    assert_eq!(ci.id, ignored.id);
    let parked = park(s, &ci, "A", T0 + 3_600_000, T0).await.unwrap();
    assert_eq!(
        (parked.status, parked.wake_reason),
        (TaskStatus::Waiting, None),
        "an unread message from before the attempt woke its wait"
    );
    let t = add(s, task("default", 3, 0, T0), T0).await;
    let c = claim_one(s, "A", T0).await;
    assert_eq!(c.id, t.id);
    let fence = MessageCheck::Lease {
        owner: "A".into(),
        attempt: c.attempts,
    };
    let m1 = owner_says(s, t.id, "one", T0 + 1).await;
    s.inbox_read(t.id, fence.clone(), m1.id, T0 + 2)
        .await
        .unwrap();
    let m2 = owner_says(s, t.id, "two", T0 + 3).await;
    let ended = park(s, &c, "A", T0 + 3_600_000, T0 + 4).await.unwrap();
    assert_eq!(
        (
            ended.status,
            ended.wake_reason,
            ended.wait_until,
            ended.run_at
        ),
        (
            TaskStatus::Pending,
            Some(spool::task::WakeReason::Message),
            None,
            T0 + 4
        ),
        "a wait with an unread owner's message is woken by it at once"
    );
    assert_eq!(ended.attempts, 0, "the wait spent no attempt");
    assert_eq!(ended.inbox_cursor, m1.id, "what it read is behind the task");
    assert_eq!(
        get(s, t.id).await,
        ended,
        "the finish returns the row as stored"
    );
    let c2 = claim_one(s, "B", T0 + 5).await;
    assert_eq!(c2.id, t.id);
    assert_eq!(c2.wake_reason, Some(spool::task::WakeReason::Message));
    let ahead = s
        .message_list(t.id, c2.inbox_cursor, 10, Some(spool::task::Author::User))
        .await
        .unwrap();
    assert_eq!(
        ahead.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![m2.id],
        "the next attempt is handed the message the wait would have missed"
    );
    // Everything read, then progress of its own: the wait parks.
    let fence2 = MessageCheck::Lease {
        owner: "B".into(),
        attempt: c2.attempts,
    };
    s.inbox_read(t.id, fence2.clone(), m2.id, T0 + 6)
        .await
        .unwrap();
    s.message_insert(t.id, "log".into(), json!("asking"), fence2, T0 + 7)
        .await
        .unwrap();
    let parked = park(s, &c2, "B", T0 + 3_600_000, T0 + 8).await.unwrap();
    assert_eq!(parked.status, TaskStatus::Waiting);
    assert_eq!(parked.wait_until, Some(T0 + 3_600_000));
    // A cancel asked for while it ran ends the task even with a message unread.
    owner_says(s, t.id, "three", T0 + 9).await;
    let c3 = claim_one(s, "A", T0 + 10).await;
    owner_says(s, t.id, "four", T0 + 11).await;
    s.task_cancel(t.id, None, T0 + 12).await.unwrap();
    let canceled = park(s, &c3, "A", T0 + 3_600_000, T0 + 13).await.unwrap();
    assert_eq!(
        (canceled.status, canceled.wake_reason, canceled.wait_until),
        (TaskStatus::Canceled, None, None)
    );
    assert_eq!(canceled.completed_at, Some(T0 + 13));
    assert_ne!(
        canceled.run_at,
        T0 + 13,
        "a canceled task is not made runnable"
    );
}

/// After an outage, many waits time out at once: one claim makes at most
/// `EXPIRED_WAITS_PER_CLAIM` of them runnable (those that timed out first), the next claim the
/// rest, so no claim's transaction rewrites them all.
pub async fn timed_out_waits_come_back_a_bounded_number_per_claim_oldest_first(b: &impl Backend) {
    let f = b.fresh(Limits::default()).await;
    let s = f.store.as_ref();
    let per = spool::store::EXPIRED_WAITS_PER_CLAIM as usize;
    let n = per + 2;
    let added = s
        .task_insert((0..n).map(|_| task("default", 3, 0, T0)).collect(), T0)
        .await
        .unwrap();
    assert_eq!(added.len(), n);
    let claimed = claim(s, "A", n as u32, T0).await;
    assert_eq!(claimed.len(), n);
    // Each waits until its own time: the one claimed first times out first.
    let mut order: Vec<Task> = claimed;
    order.sort_by_key(|t| t.id);
    let parks = order
        .iter()
        .enumerate()
        .map(|(i, t)| park(s, t, "A", T0 + 100 + i as i64, T0 + 1));
    for w in futures::future::join_all(parks).await {
        assert_eq!(w.unwrap().status, TaskStatus::Waiting);
    }
    let waiting = |now| async move {
        let q = s.queue_stats(vec![], now).await.unwrap();
        q.iter()
            .find(|q| q.name == "default")
            .map_or(0, |q| q.waiting)
    };
    assert_eq!(waiting(T0 + 2).await, n as u64);
    // Long after every timeout: one claim wakes `per` of them and runs one.
    let first = claim(s, "B", 1, T0 + 1_000_000).await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        waiting(T0 + 1_000_001).await,
        2,
        "one claim woke more than {per}"
    );
    for t in &order[per..] {
        assert_eq!(
            get(s, t.id).await.status,
            TaskStatus::Waiting,
            "the waits that timed out last are left for the next claim"
        );
    }
    assert_eq!(claim(s, "B", 1, T0 + 1_000_002).await.len(), 1);
    assert_eq!(waiting(T0 + 1_000_003).await, 0);
}

/// A wait gives its attempt number back, so the next claim runs with the same number. A request
/// or a stream made with the earlier attempt's task token (a stream it left open, a long poll
/// still waiting) must not act for the later attempt: not write its messages or checkpoint, and
/// not take the owner's messages as read by it, which would park its wait on an answer it never
/// saw.
pub async fn a_task_token_acts_for_its_own_attempt_not_the_next_with_its_number(b: &impl Backend) {
    let f = b.fresh(Limits::default()).await;
    let s = f.store.as_ref();
    let t = add(s, task("default", 3, 0, T0), T0).await;
    let c1 = claim_one(s, "A", T0).await;
    s.task_token_create(&c1, hash(1), T0).await.unwrap();
    let parked = park(s, &c1, "A", T0 + 3_600_000, T0 + 1).await.unwrap();
    assert_eq!(parked.status, TaskStatus::Waiting);
    owner_says(s, t.id, "the answer", T0 + 2).await;
    let c2 = claim_one(s, "A", T0 + 3).await;
    assert_eq!(
        (c2.id, c2.attempts),
        (t.id, c1.attempts),
        "the wait gave the attempt number back"
    );
    s.task_token_create(&c2, hash(2), T0 + 3).await.unwrap();
    let m = owner_says(s, t.id, "one more thing", T0 + 4).await;
    // The first attempt's token: nothing it does counts for the second.
    let old = by_token(c1.attempts, 1);
    assert!(
        !s.inbox_read(t.id, old.clone(), m.id, T0 + 5).await.unwrap(),
        "the ended attempt's token recorded a read"
    );
    assert!(is_conflict(
        s.task_checkpoint(t.id, json!("stale"), old.clone(), T0 + 5)
            .await
    ));
    assert!(is_conflict(msg(s, t.id, json!("stale"), old).await));
    let ended = park(s, &c2, "A", T0 + 3_600_000, T0 + 6).await.unwrap();
    assert_eq!(
        (ended.status, ended.wake_reason),
        (TaskStatus::Pending, Some(spool::task::WakeReason::Message)),
        "the second attempt's wait parked on a message only the first attempt's token read"
    );
    assert_eq!(ended.checkpoint, None);
    // Its own token does count.
    let c3 = claim_one(s, "A", T0 + 7).await;
    s.task_token_create(&c3, hash(3), T0 + 7).await.unwrap();
    let own = by_token(c3.attempts, 3);
    assert!(s.inbox_read(t.id, own.clone(), m.id, T0 + 8).await.unwrap());
    s.task_checkpoint(t.id, json!("mine"), own.clone(), T0 + 8)
        .await
        .unwrap();
    msg(s, t.id, json!("mine"), own).await.unwrap().unwrap();
    let parked = park(s, &c3, "A", T0 + 3_600_000, T0 + 9).await.unwrap();
    assert_eq!(parked.status, TaskStatus::Waiting);
}

pub async fn messages_record_their_author_and_are_read_by_author(b: &impl Backend) {
    let f = b.fresh(Limits::default()).await;
    let s = f.store.as_ref();
    let t = add(s, task("default", 3, 0, T0), T0).await;
    let c = claim_one(s, "A", T0).await;
    let lease = MessageCheck::Lease {
        owner: "A".into(),
        attempt: c.attempts,
    };
    let a = s
        .message_insert(t.id, "log".into(), json!(1), lease, T0 + 1)
        .await
        .unwrap()
        .unwrap();
    let u = owner_says(s, t.id, "hi", T0 + 2).await;
    let admin = s
        .message_insert(
            t.id,
            "note".into(),
            json!(3),
            MessageCheck::User(None),
            T0 + 3,
        )
        .await
        .unwrap()
        .unwrap();
    s.task_token_create(&c, hash(1), T0).await.unwrap();
    let tok = s
        .message_insert(t.id, "log".into(), json!(4), by_token(1, 1), T0 + 4)
        .await
        .unwrap()
        .unwrap();
    use spool::task::Author;
    assert_eq!(
        (a.author, u.author, admin.author, tok.author),
        (Author::Task, Author::User, Author::User, Author::Task)
    );
    let all = s.message_list(t.id, 0, 10, None).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.author).collect::<Vec<_>>(),
        vec![Author::Task, Author::User, Author::User, Author::Task]
    );
    let users = s
        .message_list(t.id, 0, 10, Some(Author::User))
        .await
        .unwrap();
    assert_eq!(
        users.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![u.id, admin.id]
    );
    let tasks = s
        .task_with_messages(t.id, None, 0, 10, Some(Author::Task))
        .await
        .unwrap()
        .1;
    assert_eq!(
        tasks.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![a.id, tok.id]
    );
    assert_eq!(all[1].to_json()["author"], "user");
}

pub async fn a_task_keeps_only_its_newest_stream_tokens(b: &impl Backend) {
    let f = b.fresh(Limits::default()).await;
    let s = f.store.as_ref();
    let t = add(s, task("default", 3, 0, T0), T0).await;
    let other = add(s, task("default", 3, 0, T0), T0).await;
    s.stream_token_create(hash(999), other.id, T0 + 10_000, T0)
        .await
        .unwrap();
    let keep = spool::store::STREAM_TOKENS_PER_TASK as u32;
    let minted = keep + 4;
    for i in 0..minted {
        s.stream_token_create(hash(100 + i), t.id, T0 + 10_000 + i64::from(i), T0)
            .await
            .unwrap();
    }
    for i in 0..minted {
        let want = (i >= minted - keep).then_some(t.id);
        assert_eq!(
            s.stream_token_task(hash(100 + i), T0).await.unwrap(),
            want,
            "token {i} of {minted}: the newest {keep} are kept"
        );
    }
    assert_eq!(
        s.stream_token_task(hash(999), T0).await.unwrap(),
        Some(other.id),
        "another task's token is not touched"
    );
}

pub async fn stream_tokens_name_one_task_until_they_expire(b: &impl Backend) {
    let f = b.fresh(Limits::default()).await;
    let s = f.store.as_ref();
    let t = add(s, task("default", 3, 0, T0), T0).await;
    s.stream_token_create(hash(1), t.id, T0 + 100, T0)
        .await
        .unwrap();
    assert_eq!(
        s.stream_token_task(hash(1), T0 + 99).await.unwrap(),
        Some(t.id)
    );
    assert_eq!(s.stream_token_task(hash(1), T0 + 100).await.unwrap(), None);
    assert_eq!(s.stream_token_task(hash(2), T0).await.unwrap(), None);
    assert!(matches!(
        s.stream_token_create(hash(3), TaskId::new(), T0 + 100, T0)
            .await,
        Err(StoreError::NotFound(_))
    ));
    // A new token clears expired ones.
    s.stream_token_create(hash(4), t.id, T0 + 1000, T0 + 200)
        .await
        .unwrap();
    assert_eq!(
        s.stream_token_task(hash(1), T0).await.unwrap(),
        None,
        "pruned"
    );
    assert_eq!(
        s.stream_token_task(hash(4), T0 + 200).await.unwrap(),
        Some(t.id)
    );
}
