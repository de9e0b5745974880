//! Criterion benches of the store's hot paths against a real temp file: insert, claim a batch,
//! complete, append a message. Each measured call goes through the writer thread and commits.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::json;
use spool::store::MessageCheck;
use spool::store::{
    ClaimParams, FinishParams, QueueClaim, SqliteStore, Store, StoreOptions, Synchronous,
};
use spool::task::{NewTask, TaskId, TaskStatus};

fn task() -> NewTask {
    NewTask {
        id: TaskId::new(),
        user_id: "bench".into(),
        queue: "default".into(),
        kind: "spool.noop".into(),
        payload: json!({"repo_url": "https://github.com/o/r", "prompt": "fix the tests"}),
        priority: 0,
        run_at: 0,
        max_attempts: 5,
        timeout_ms: 60_000,
        idempotency_key: None,
        request_hash: None,
        concurrency_key: None,
    }
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    let mut o = StoreOptions::new(dir.path().join("bench.db"));
    // NORMAL so the bench measures spool's work, not the disk's fsync; `spool bench` measures FULL.
    o.synchronous = Synchronous::Normal;
    SqliteStore::open(o).unwrap()
}

fn claim(
    store: &SqliteStore,
    rt: &tokio::runtime::Runtime,
    n: u32,
) -> Vec<std::sync::Arc<spool::Task>> {
    rt.block_on(store.task_claim(ClaimParams {
        owner: "w".into(),
        queues: vec![QueueClaim {
            queue: "default".into(),
            limit: n,
            admission: None,
        }],
        total: n,
        lease_ms: 60_000,
        rescue: true,
        now: 1,
    }))
    .unwrap()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);

    c.bench_function("task_insert (1 task, 1 commit)", |b| {
        b.iter(|| rt.block_on(store.task_insert(vec![task()], 1)).unwrap())
    });
    c.bench_function("task_insert (batch of 1000, 1 commit)", |b| {
        b.iter_batched(
            || (0..1000).map(|_| task()).collect::<Vec<_>>(),
            |batch| rt.block_on(store.task_insert(batch, 1)).unwrap(),
            BatchSize::LargeInput,
        )
    });
    c.bench_function("task_claim (batch of 32)", |b| {
        b.iter_batched(
            || {
                rt.block_on(store.task_insert((0..32).map(|_| task()).collect(), 1))
                    .unwrap()
            },
            |_| claim(&store, &rt, 32),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("task_finish (complete, fenced)", |b| {
        b.iter_batched(
            || {
                rt.block_on(store.task_insert(vec![task()], 1)).unwrap();
                claim(&store, &rt, 1).pop().unwrap()
            },
            |t| {
                rt.block_on(store.task_finish_wait(FinishParams {
                    task: t,
                    owner: "w".into(),
                    status: TaskStatus::Completed,
                    result: Some(json!({"ok": true})),
                    error: None,
                    run_at: None,
                    uncount: false,
                    wait_until: None,
                    now: 2,
                }))
                .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    let target = rt
        .block_on(store.task_insert(vec![task()], 1))
        .unwrap()
        .remove(0)
        .task
        .id;
    c.bench_function("message_insert (progress line)", |b| {
        b.iter(|| {
            rt.block_on(store.message_insert(
                target,
                "progress".into(),
                json!({"pct": 42}),
                MessageCheck::Worker,
                3,
            ))
            .unwrap()
        })
    });
    c.bench_function("task_get (reader pool)", |b| {
        b.iter(|| rt.block_on(store.task_get(target, None)).unwrap())
    });
}

criterion_group!(store_benches, benches);
criterion_main!(store_benches);
