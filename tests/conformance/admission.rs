//! Admission control (issue 16): per-key and global concurrency and rate limits, enforced in
//! the claim's transaction across every store on one database.

use super::{task, Backend, LEASE, T0};
use spool::store::{Admission, ClaimParams, FinishParams, QueueClaim, RateLimit, Store};
use spool::task::{NewTask, Task, TaskStatus};
use std::collections::HashMap;
use std::sync::Arc;

fn with_key(key: Option<&str>, run_at: i64) -> NewTask {
    NewTask {
        concurrency_key: key.map(str::to_string),
        ..task("q", 3, 0, run_at)
    }
}

async fn claim_adm(s: &dyn Store, owner: &str, n: u32, adm: Admission, now: i64) -> Vec<Task> {
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

async fn complete(s: &dyn Store, t: &Task, owner: &str, now: i64) {
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

const PER_KEY_1: Admission = Admission {
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
        .unwrap();
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
