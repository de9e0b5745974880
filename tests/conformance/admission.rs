//! Admission control (issue 16): per-key and global concurrency and rate limits, enforced in
//! the claim's transaction across every store on one database.

use super::{task, Backend, LEASE, T0};
use spool::store::{Admission, ClaimParams, FinishParams, QueueClaim, RateLimit, Store};
use spool::task::{NewTask, Task, TaskStatus};
use std::collections::HashMap;
use std::sync::Arc;

pub fn with_key(key: Option<&str>, run_at: i64) -> NewTask {
    NewTask {
        concurrency_key: key.map(str::to_string),
        ..task("q", 3, 0, run_at)
    }
}

/// Enqueues a flood: `n` tasks of key `key` (run_at T0, T0 + 1, …) in requests of 500, then
/// one task of key `other` at `other_at`.
pub async fn enqueue_flood(s: &dyn Store, key: &str, n: i64, other: &str, other_at: i64) {
    let flood: Vec<NewTask> = (0..n).map(|i| with_key(Some(key), T0 + i)).collect();
    for chunk in flood.chunks(500) {
        s.task_insert(chunk.to_vec(), T0).await.unwrap();
    }
    s.task_insert(vec![with_key(Some(other), other_at)], T0)
        .await
        .unwrap();
}

pub async fn claim_adm(s: &dyn Store, owner: &str, n: u32, adm: Admission, now: i64) -> Vec<Task> {
    s.task_claim(ClaimParams {
        owner: owner.into(),
        queues: vec![QueueClaim {
            queue: "q".into(),
            limit: n,
            admission: Some(adm),
        }],
        total: n,
        lease_ms: LEASE * 100,
        rescue: false,
        now,
    })
    .await
    .unwrap()
    .into_iter()
    .map(Arc::unwrap_or_clone)
    .collect()
}

pub async fn complete(s: &dyn Store, t: &Task, owner: &str, now: i64) {
    s.task_finish_wait(FinishParams {
        task: Arc::new(t.clone()),
        owner: owner.into(),
        status: TaskStatus::Completed,
        result: None,
        error: None,
        run_at: None,
        uncount: false,
        wait_until: None,
        now,
    })
    .await
    .unwrap()
    .expect("the lease is held");
}

fn keys(ts: &[Task]) -> Vec<Option<String>> {
    let mut k: Vec<_> = ts.iter().map(|t| t.concurrency_key.clone()).collect();
    k.sort();
    k
}

pub const PER_KEY_1: Admission = Admission {
    global_concurrency: None,
    per_key_concurrency: Some(1),
    rate: None,
};

/// A key at its limit is skipped, never blocks the others (a flood of one key does not delay
/// another key's task), and is admitted again once its running task ends, seen from another
/// store on the same database.
pub async fn per_key_limit_skips_a_full_key_without_blocking_others<B: Backend>(b: &B) {
    let f = b.fresh(Default::default()).await;
    let other = b.another(&f).await;
    let s = f.store.as_ref();
    let mut batch: Vec<NewTask> = (0..20).map(|i| with_key(Some("a"), T0 + i)).collect();
    batch.push(with_key(Some("b"), T0 + 100));
    batch.push(with_key(None, T0 + 101));
    let inserted = s.task_insert(batch, T0).await.unwrap();
    let read = s.task_get(inserted[0].task.id, None).await.unwrap();
    assert_eq!(
        read.concurrency_key.as_deref(),
        Some("a"),
        "the key is stored"
    );
    assert_eq!(read.to_json()["concurrency_key"], "a");

    let first = claim_adm(s, "w1", 10, PER_KEY_1, T0 + 200).await;
    assert_eq!(
        keys(&first),
        vec![None, Some("a".into()), Some("b".into())],
        "one task of each key, and the task without a key"
    );
    let a1 = first
        .iter()
        .find(|t| t.concurrency_key.as_deref() == Some("a"))
        .unwrap()
        .clone();
    assert_eq!(a1.run_at, T0, "the key's oldest task goes first");
    assert!(claim_adm(other.as_ref(), "w2", 10, PER_KEY_1, T0 + 201)
        .await
        .is_empty());
    complete(s, &a1, "w1", T0 + 300).await;
    let next = claim_adm(other.as_ref(), "w2", 10, PER_KEY_1, T0 + 301).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].concurrency_key.as_deref(), Some("a"));
    assert_eq!(next[0].run_at, T0 + 1);
    // The skipped tasks are still pending, never failed.
    let pending = s
        .task_list(spool::store::ListParams {
            status: Some(TaskStatus::Pending),
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .tasks;
    assert_eq!(pending.len(), 18);
}

/// Among runnable tasks of one priority the claim goes round robin by key (every key's first
/// before any key's second), not first in, first out; a higher priority still goes first.
pub async fn per_key_claims_go_round_robin_by_key_within_a_priority<B: Backend>(b: &B) {
    let f = b.fresh(Default::default()).await;
    let s = f.store.as_ref();
    let mut batch = Vec::new();
    for (i, k) in ["a", "a", "a", "b", "b", "c"].iter().enumerate() {
        batch.push(with_key(Some(k), T0 + i as i64));
    }
    let mut urgent = with_key(Some("a"), T0 + 50);
    urgent.priority = 10;
    batch.push(urgent);
    s.task_insert(batch, T0).await.unwrap();
    let adm = Admission {
        per_key_concurrency: Some(10),
        ..Admission::default()
    };
    let got = claim_adm(s, "w", 4, adm, T0 + 100).await;
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].priority, 10, "priority first");
    assert_eq!(
        keys(&got),
        vec![
            Some("a".into()),
            Some("a".into()),
            Some("b".into()),
            Some("c".into())
        ]
    );
}

/// `global_concurrency` counts the queue's running tasks of every store on the database.
pub async fn global_concurrency_counts_every_stores_running_tasks<B: Backend>(b: &B) {
    let f = b.fresh(Default::default()).await;
    let other = b.another(&f).await;
    let s = f.store.as_ref();
    s.task_insert((0..10).map(|i| with_key(None, T0 + i)).collect(), T0)
        .await
        .unwrap();
    let adm = Admission {
        global_concurrency: Some(3),
        ..Admission::default()
    };
    let mine = claim_adm(s, "w1", 2, adm, T0 + 20).await;
    assert_eq!(mine.len(), 2);
    let theirs = claim_adm(other.as_ref(), "w2", 8, adm, T0 + 21).await;
    assert_eq!(theirs.len(), 1);
    assert!(claim_adm(s, "w1", 8, adm, T0 + 22).await.is_empty());
    complete(s, &mine[0], "w1", T0 + 30).await;
    assert_eq!(
        claim_adm(other.as_ref(), "w2", 8, adm, T0 + 31).await.len(),
        1
    );
}

/// A rate limit is one token bucket in the database: full (`burst`) at first, refilled at the
/// rate, shared by every store.
pub async fn rate_limit_is_one_bucket_shared_by_every_store<B: Backend>(b: &B) {
    let f = b.fresh(Default::default()).await;
    let other = b.another(&f).await;
    let s = f.store.as_ref();
    s.task_insert((0..50).map(|i| with_key(None, T0 + i)).collect(), T0)
        .await
        .unwrap();
    let adm = Admission {
        rate: Some(RateLimit {
            count: 10,
            period_ms: 1000,
            burst: 3,
        }),
        ..Admission::default()
    };
    let now = T0 + 1000;
    assert_eq!(claim_adm(s, "w1", 10, adm, now).await.len(), 3, "the burst");
    assert_eq!(claim_adm(other.as_ref(), "w2", 10, adm, now).await.len(), 0);
    assert_eq!(
        claim_adm(other.as_ref(), "w2", 10, adm, now + 250)
            .await
            .len(),
        2,
        "a quarter second at 10/s"
    );
    assert_eq!(claim_adm(s, "w1", 10, adm, now + 350).await.len(), 1);
    assert_eq!(
        claim_adm(s, "w1", 10, adm, now + 60_000).await.len(),
        3,
        "never more than the burst"
    );
}

/// Claims racing from two stores never admit past a limit.
pub async fn racing_claims_never_over_admit<B: Backend>(b: &B) {
    let f = b.fresh(Default::default()).await;
    let other = b.another(&f).await;
    let s = f.store.clone();
    let mut batch = Vec::new();
    for k in 0..4 {
        for i in 0..10 {
            batch.push(with_key(Some(&format!("k{k}")), T0 + i));
        }
    }
    s.task_insert(batch, T0).await.unwrap();
    let adm = Admission {
        global_concurrency: Some(3),
        per_key_concurrency: Some(1),
        rate: None,
    };
    let mut handles = Vec::new();
    for i in 0..8 {
        let st = if i % 2 == 0 { s.clone() } else { other.clone() };
        handles.push(tokio::spawn(async move {
            claim_adm(st.as_ref(), &format!("w{i}"), 4, adm, T0 + 100).await
        }));
    }
    let mut got = Vec::new();
    for h in handles {
        got.extend(h.await.unwrap());
    }
    assert_eq!(got.len(), 3, "global_concurrency = 3");
    let mut per: HashMap<Option<String>, u32> = HashMap::new();
    for t in &got {
        *per.entry(t.concurrency_key.clone()).or_default() += 1;
    }
    assert!(per.values().all(|n| *n == 1), "one per key: {per:?}");
}

fn schedule(name: &str, cron: &str) -> spool::store::ScheduleRow {
    spool::store::ScheduleRow {
        name: name.into(),
        cron: cron.into(),
        timezone: "Europe/Berlin".into(),
        task: serde_json::json!({"kind": "k", "payload": {"n": 1}}),
        catch_up: "skip".into(),
        catch_up_max: 100,
        source: String::new(),
        last_fire_at: None,
        last_task_id: None,
        created_at: 0,
        updated_at: 0,
    }
}

/// Schedules: config rows are replaced only by config and never deleted through the API (only
/// pruned when the config drops them); a put keeps the last firing unless it changes the cron
/// expression or the time zone (then the last firing is the put's `now`); a firing never moves
/// back.
pub async fn schedules_keep_config_rows_and_their_firing_never_moves_back<B: Backend>(b: &B) {
    let f = b.fresh(spool::store::Limits::default()).await;
    let s = &*f.store;
    let a = s
        .schedule_put(schedule("a", "0 3 * * *"), true, T0)
        .await
        .unwrap();
    assert_eq!((a.source.as_str(), a.last_fire_at), ("config", None));
    let bq = s
        .schedule_put(schedule("b", "*/5 * * * *"), false, T0)
        .await
        .unwrap();
    assert_eq!(bq.source, "api");
    // The API cannot replace a config schedule; the row is untouched.
    assert!(matches!(
        s.schedule_put(schedule("a", "* * * * *"), false, T0 + 1)
            .await,
        Err(spool::store::StoreError::Conflict(_))
    ));
    s.schedule_fired("a".into(), T0 + 10, Some("t-10".into()))
        .await
        .unwrap();
    // A firing older than the last one recorded changes nothing.
    s.schedule_fired("a".into(), T0 + 5, Some("t-5".into()))
        .await
        .unwrap();
    // Config replaces its own row; a new task (same cron and zone) keeps the last firing.
    let mut new_task = schedule("a", "0 3 * * *");
    new_task.task = serde_json::json!({"kind": "k", "payload": {"n": 2}});
    new_task.catch_up = "all".into();
    s.schedule_put(new_task, true, T0 + 20).await.unwrap();
    let list = s.schedule_list().await.unwrap();
    assert_eq!(
        list.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    let a = &list[0];
    assert_eq!(
        (
            a.cron.as_str(),
            a.catch_up.as_str(),
            a.last_fire_at,
            a.last_task_id.as_deref(),
            a.created_at,
            a.updated_at
        ),
        ("0 3 * * *", "all", Some(T0 + 10), Some("t-10"), T0, T0 + 20)
    );
    assert_eq!(
        a.task,
        serde_json::json!({"kind": "k", "payload": {"n": 2}})
    );
    // A new cron expression: nothing before the change is due, the last firing is now.
    let a = s
        .schedule_put(schedule("a", "0 4 * * *"), true, T0 + 30)
        .await
        .unwrap();
    assert_eq!(
        (a.cron.as_str(), a.last_fire_at, a.last_task_id.as_deref()),
        ("0 4 * * *", Some(T0 + 30), Some("t-10"))
    );
    // So does a new time zone, for the API's own schedules too; a schedule never fired gets it.
    let mut utc = schedule("b", "*/5 * * * *");
    utc.timezone = "UTC".into();
    let b = s.schedule_put(utc, false, T0 + 40).await.unwrap();
    assert_eq!(
        (b.timezone.as_str(), b.last_fire_at),
        ("UTC", Some(T0 + 40))
    );
    let mut same = schedule("b", "*/5 * * * *");
    same.timezone = "UTC".into();
    let b = s.schedule_put(same, false, T0 + 50).await.unwrap();
    assert_eq!(b.last_fire_at, Some(T0 + 40));
    // Delete: only API rows, once.
    assert!(!s.schedule_delete("a".into()).await.unwrap());
    assert!(s.schedule_delete("b".into()).await.unwrap());
    assert!(!s.schedule_delete("b".into()).await.unwrap());
    // Pruning keeps the config rows named, removes the others.
    s.schedule_put(schedule("c", "0 5 * * *"), true, T0)
        .await
        .unwrap();
    assert_eq!(s.schedule_prune_config(vec!["c".into()]).await.unwrap(), 1);
    let left: Vec<String> = s
        .schedule_list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(left, vec!["c".to_string()]);
}

/// Two stores on one database fire one schedule time once: the task's idempotency key is the
/// schedule and the fire time, so the second insert replays the first.
pub async fn one_firing_from_two_stores_makes_one_task<B: Backend>(b: &B) {
    let f = b.fresh(spool::store::Limits::default()).await;
    let other = b.another(&f).await;
    let key = "schedule:nightly:2027-01-15T03:00:00Z".to_string();
    let mut ids = Vec::new();
    for s in [&f.store, &other] {
        let t = NewTask {
            idempotency_key: Some(key.clone()),
            request_hash: Some("h".into()),
            ..task("q", 3, 0, T0)
        };
        let got = s.task_insert(vec![t], T0).await.unwrap();
        ids.push(got[0].task.id);
    }
    assert_eq!(ids[0], ids[1]);
}

/// A flood of one full key's tasks ahead of another key's one task, longer than any short look
/// ahead a claim may take: the other key's task is still the next one claimed.
pub async fn a_flood_of_a_full_key_longer_than_a_short_look_does_not_hide_another_key<
    B: Backend,
>(
    b: &B,
) {
    let f = b.fresh(Default::default()).await;
    let s = f.store.as_ref();
    enqueue_flood(s, "a", 2000, "b", T0 + 5000).await;
    let first = claim_adm(s, "w", 1, PER_KEY_1, T0 + 6000).await;
    assert_eq!(keys(&first), vec![Some("a".into())]);
    let next = claim_adm(s, "w", 1, PER_KEY_1, T0 + 6001).await;
    assert_eq!(
        keys(&next),
        vec![Some("b".into())],
        "b's task is not hidden by a's flood"
    );
    assert!(claim_adm(s, "w", 5, PER_KEY_1, T0 + 6002).await.is_empty());
}

/// The tasks a flood of one key leaves waiting stay pending, counted in the queue's depth and in
/// claim order: once the key has room, its best task goes next, and one higher in priority
/// enqueued later does not let the key exceed its limit; a claim without the limit (removed
/// from the config) takes the rest like any other tasks.
pub async fn a_floods_waiting_tasks_stay_pending_and_in_order_with_or_without_the_limit<
    B: Backend,
>(
    b: &B,
) {
    let f = b.fresh(Default::default()).await;
    let s = f.store.as_ref();
    enqueue_flood(s, "a", 1000, "b", T0 + 5000).await;
    let first = claim_adm(s, "w", 2, PER_KEY_1, T0 + 6000).await;
    assert_eq!(keys(&first), vec![Some("a".into()), Some("b".into())]);
    let a = first
        .iter()
        .find(|t| t.concurrency_key.as_deref() == Some("a"))
        .unwrap();
    assert_eq!(a.run_at, T0, "the key's oldest task goes first");
    assert!(
        claim_adm(s, "w", 5, PER_KEY_1, T0 + 6001).await.is_empty(),
        "a is at its limit and b has nothing left"
    );
    let depth = |stats: Vec<spool::store::QueueStats>| {
        let q = stats.into_iter().find(|q| q.name == "q").unwrap();
        (q.pending, q.running)
    };
    assert_eq!(
        depth(s.queue_stats(vec![], T0 + 6001).await.unwrap()),
        (999, 2),
        "the flood's waiting tasks are pending"
    );
    let mut urgent = with_key(Some("a"), T0 + 6002);
    urgent.priority = 5;
    s.task_insert(vec![urgent], T0 + 6002).await.unwrap();
    complete(s, a, "w", T0 + 6003).await;
    let next = claim_adm(s, "w", 5, PER_KEY_1, T0 + 6004).await;
    assert_eq!(keys(&next), vec![Some("a".into())], "a's limit holds");
    assert_eq!(next[0].priority, 5, "the key's best task in claim order");
    complete(s, &next[0], "w", T0 + 6005).await;
    let plain = claim_adm(s, "w", 3, Admission::default(), T0 + 6006).await;
    assert_eq!(
        plain.iter().map(|t| t.run_at - T0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "without the limit the oldest waiting tasks go, in claim order"
    );
    assert_eq!(
        depth(s.queue_stats(vec![], T0 + 6006).await.unwrap()),
        (996, 4)
    );
}

/// A claim through admission starts the attempt's inbox where the task's state stands, as the
/// plain claim does: an attempt that read messages and ended without a checkpoint hands them to
/// the next attempt, whose checkpoint before reading anything loses none of them.
pub async fn an_admitted_claim_starts_the_inbox_at_the_tasks_cursor<B: Backend>(b: &B) {
    let global = Admission {
        global_concurrency: Some(5),
        ..Admission::default()
    };
    for (adm, what) in [(PER_KEY_1, "per-key"), (global, "global")] {
        let f = b.fresh(Default::default()).await;
        let s = f.store.as_ref();
        let t = s
            .task_insert(vec![with_key(Some("a"), T0)], T0)
            .await
            .unwrap()
            .remove(0)
            .task;
        let m1 = super::owner_says(s, t.id, "one", T0 + 1).await;
        let m2 = super::owner_says(s, t.id, "two", T0 + 2).await;
        let c = claim_adm(s, "A", 1, adm, T0 + 3).await.remove(0);
        let fence = |a: &Task| spool::store::MessageCheck::Lease {
            owner: "A".into(),
            attempt: a.attempts,
        };
        s.inbox_read(t.id, fence(&c), m2.id, T0 + 4).await.unwrap();
        // The attempt ends without a checkpoint: what it read is not behind the task.
        super::finish(s, &c, "A", TaskStatus::Pending, Some(T0 + 5), T0 + 5).await;
        let c2 = claim_adm(s, "A", 1, adm, T0 + 6).await.remove(0);
        let saved = s
            .task_checkpoint(t.id, serde_json::json!("fresh"), fence(&c2), T0 + 7)
            .await
            .unwrap();
        assert_eq!(
            saved.inbox_cursor, 0,
            "{what}: the new attempt read nothing"
        );
        let ahead = s
            .message_list(
                t.id,
                saved.inbox_cursor,
                10,
                Some(spool::task::Author::User),
            )
            .await
            .unwrap();
        assert_eq!(
            ahead.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![m1.id, m2.id],
            "{what}: both messages still reach an attempt"
        );
    }
}
