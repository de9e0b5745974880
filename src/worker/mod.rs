//! The worker pool: claims tasks under leases, runs each attempt with its handler, heartbeats
//! the leases, reports the outcome, and stops cleanly.
//!
//! One dispatcher loop claims for every free slot at once (a batch per claim, one commit), so
//! `concurrency` slots cost one claim transaction, not one each. It wakes at once when a task is
//! enqueued in this process, when a slot frees, and otherwise every `poll_interval` to find
//! tasks written by other processes. One heartbeat loop extends every lease this process holds
//! in one statement every lease/3 and learns of cancel requests and lost leases there.

mod prune;

pub use prune::{prune_once, prune_workdirs};

use crate::clock::Clock;
use crate::config::Config;
use crate::executor::{Registry, TaskContext, TaskError};
use crate::queue::{decide, Outcome};
use crate::store::{ClaimParams, FinishParams, QueueClaim, Store, StoreError};
use crate::task::{Task, TaskId, TaskStatus};
use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Why a running attempt was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// A user asked for a cancel: the task ends `canceled`.
    Canceled,
    /// Our lease is gone (another worker may hold the task): write nothing.
    LeaseLost,
    /// The process is stopping: give the attempt back.
    Shutdown,
}

struct Running {
    attempt: u32,
    queue: String,
    seq: u64,
    /// When the lease was taken (ms): with `last_extend_ok`, when it runs out locally.
    claimed_at: i64,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
    /// The handler has returned and only its outcome is being written: the slot is free for
    /// the next task, while the lease (still held until that write commits) is kept extended.
    handler_done: bool,
    /// It holds a slot (false while a prefetched task waits for one).
    started: bool,
}

impl Running {
    fn stop(&self, why: StopReason) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(why);
        }
        self.cancel.cancel();
    }
}

/// A pool of task slots in this process.
pub struct WorkerPool {
    store: Arc<dyn Store>,
    jitter: Jitter,
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
    cfg: Arc<Config>,
    id: String,
    running: Mutex<HashMap<TaskId, Running>>,
    seq: AtomicU64,
    slot_freed: Notify,
    /// The task slots: an attempt holds one while its handler runs.
    slots: Arc<tokio::sync::Semaphore>,
    claim_rotation: AtomicU64,
    /// When a heartbeat last extended our leases (ms).
    last_extend_ok: std::sync::atomic::AtomicI64,
    /// When expired leases were last looked for (ms): once per poll interval is enough.
    last_rescue: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool").field("id", &self.id).finish()
    }
}

/// The source of retry jitter, `[0, 1)`: an input like the clock, so a test can fix it.
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// Jitter from the thread's random source.
pub fn random_jitter() -> Jitter {
    Arc::new(rand::random::<f64>)
}

impl WorkerPool {
    /// A pool with a fresh worker id.
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        cfg: Arc<Config>,
        jitter: Jitter,
    ) -> Arc<Self> {
        let slots = Arc::new(tokio::sync::Semaphore::new(cfg.worker.concurrency as usize));
        Arc::new(Self {
            slots,
            jitter,
            store,
            registry,
            clock,
            cfg,
            id: format!("w-{}", uuid::Uuid::now_v7()),
            running: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            slot_freed: Notify::new(),

            claim_rotation: AtomicU64::new(0),
            last_rescue: std::sync::atomic::AtomicI64::new(i64::MIN),
            last_extend_ok: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    /// This pool's worker id, the `lease_owner` of its tasks.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The time one token of the fastest rate-limited queue this pool works takes to earn
    /// (at least 10 ms); a day when none is limited.
    fn token_interval(&self) -> Duration {
        self.cfg
            .worker
            .queues
            .iter()
            .filter_map(|q| self.cfg.queues.get(q).and_then(|c| c.rate))
            .map(|r| Duration::from_millis((r.period_ms / u64::from(r.count.max(1))).max(10)))
            .min()
            .unwrap_or(Duration::from_secs(86_400))
    }

    fn running_counts(&self) -> (u32, HashMap<String, u32>) {
        let mut per = HashMap::new();
        let Ok(r) = self.running.lock() else {
            return (u32::MAX, per);
        };
        let mut busy = 0;
        for e in r.values().filter(|e| !e.handler_done) {
            *per.entry(e.queue.clone()).or_insert(0) += 1;
            busy += 1;
        }
        (busy, per)
    }

    /// Claims for every free slot once and starts the attempts; returns (asked, got).
    async fn claim_once(
        self: &Arc<Self>,
        tracker: &TaskTracker,
    ) -> Result<(u32, usize), StoreError> {
        let (busy, per) = self.running_counts();
        // Free slots, and room in the prefetch buffer (tasks waiting for a slot count as busy).
        let total = (self.cfg.worker.concurrency + self.cfg.worker.prefetch).saturating_sub(busy);
        if total == 0 {
            return Ok((0, 0));
        }
        let qs = &self.cfg.worker.queues;
        let start =
            (self.claim_rotation.fetch_add(1, Ordering::Relaxed) as usize) % qs.len().max(1);
        let mut queues = Vec::with_capacity(qs.len());
        for i in 0..qs.len() {
            let q = &qs[(start + i) % qs.len()];
            let qcfg = self.cfg.queues.get(q);
            let cap = qcfg.and_then(|c| c.concurrency).unwrap_or(u32::MAX);
            let limit = cap
                .saturating_sub(per.get(q).copied().unwrap_or(0))
                .min(total);
            queues.push(QueueClaim {
                queue: q.clone(),
                limit,
                admission: qcfg.and_then(|c| c.admission()),
            });
        }
        let asked: u32 = queues.iter().map(|q| q.limit).sum::<u32>().min(total);
        if asked == 0 {
            return Ok((0, 0));
        }
        let now = self.clock.now();
        let every = self.cfg.worker.poll_interval_ms as i64;
        let last = self.last_rescue.load(Ordering::Relaxed);
        let rescue = now < last || now.saturating_sub(last) >= every;
        if rescue {
            self.last_rescue.store(now, Ordering::Relaxed);
        }
        let claimed = self
            .store
            .task_claim(ClaimParams {
                owner: self.id.clone(),
                queues,
                total,
                lease_ms: self.cfg.worker.lease_ms,
                now,
                rescue,
            })
            .await?;
        let got = claimed.len();
        for task in claimed {
            self.start(task, tracker, now);
        }
        Ok((asked, got))
    }

    fn start(self: &Arc<Self>, task: Arc<Task>, tracker: &TaskTracker, claimed_at: i64) {
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(mut r) = self.running.lock() {
            let previous = r.insert(
                task.id,
                Running {
                    attempt: task.attempts,
                    queue: task.queue.clone(),
                    seq,
                    claimed_at,
                    cancel: cancel.clone(),
                    reason: reason.clone(),
                    handler_done: false,
                    started: false,
                },
            );
            // This pool took the task again after its own earlier attempt lost the lease: that
            // attempt must stop (and its end must not remove the new entry; see `seq` below).
            if let Some(old) = previous {
                old.stop(StopReason::LeaseLost);
            }
        }
        let labels = [
            ("queue", crate::labels::queue(&task.queue)),
            ("kind", crate::labels::kind(&task.kind)),
        ];
        metrics::counter!("spool_tasks_started_total", &labels).increment(1);
        let waited = (claimed_at - task.run_at.max(task.created_at)).max(0) as f64 / 1000.0;
        metrics::histogram!("spool_task_claim_to_start_seconds", &labels).record(waited);
        let span = tracing::info_span!("task", task.id = %task.id, task.kind = %task.kind,
            task.queue = %task.queue, task.attempt = task.attempts);
        let pool = self.clone();
        tracker.spawn(
            async move {
                tracing::info!("claimed");
                let id = task.id;
                pool.run_attempt(task, seq, claimed_at, cancel, reason)
                    .await;
                if let Ok(mut r) = pool.running.lock() {
                    if r.get(&id).is_some_and(|e| e.seq == seq) {
                        r.remove(&id);
                    }
                }
                pool.slot_freed.notify_one();
            }
            .instrument(span),
        );
    }

    /// Takes a slot for attempt `seq` (at once unless it was prefetched and every slot is busy),
    /// or `None` when the attempt was stopped first (a cancel, a lost lease, shutdown): then it
    /// never ran. A prefetched task whose lease ran out by our own reckoning while it waited is
    /// not started: another worker may have taken it over.
    async fn take_slot(
        &self,
        id: TaskId,
        seq: u64,
        claimed_at: i64,
        cancel: &CancellationToken,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => return None,
            p = self.slots.clone().acquire_owned() => p.ok()?,
        };
        if self.lease_left(claimed_at) <= 0 {
            if let Ok(r) = self.running.lock() {
                if let Some(e) = r.get(&id).filter(|e| e.seq == seq) {
                    e.stop(StopReason::LeaseLost);
                }
            }
            return None;
        }
        if let Ok(mut r) = self.running.lock() {
            if let Some(e) = r.get_mut(&id).filter(|e| e.seq == seq) {
                e.started = true;
            }
        }
        Some(permit)
    }

    /// The handler of attempt `seq` returned: its slot takes the next task now rather than
    /// after the outcome's commit (an fsync away), so claims and outcomes overlap.
    fn handler_returned(&self, id: TaskId, seq: u64) {
        if let Ok(mut r) = self.running.lock() {
            if let Some(e) = r.get_mut(&id).filter(|e| e.seq == seq) {
                e.handler_done = true;
            }
        }
        self.slot_freed.notify_one();
    }

    async fn run_attempt(
        &self,
        task: Arc<Task>,
        seq: u64,
        claimed_at: i64,
        cancel: CancellationToken,
        reason: Arc<Mutex<Option<StopReason>>>,
    ) {
        // A slot first (a prefetched task may wait for one); stopped while waiting, it never ran.
        let slot = self.take_slot(task.id, seq, claimed_at, &cancel).await;
        let started = std::time::Instant::now();
        let timeout = Duration::from_millis(task.timeout_ms.max(1));
        let handler = self.registry.get(&task.kind);
        let stopped = || {
            reason
                .lock()
                .ok()
                .and_then(|r| *r)
                .unwrap_or(StopReason::Shutdown)
        };
        let outcome = match handler.clone() {
            _ if slot.is_none() => Err(stopped()),
            None => Ok(Outcome::Failed {
                error: format!("no handler for kind {:?} in this process", task.kind),
                permanent: true,
                retry_after: None,
            }),
            Some(handler) => {
                let ctx = TaskContext::new(
                    task.clone(),
                    self.store.clone(),
                    self.clock.clone(),
                    cancel.clone(),
                )
                .with_limits(
                    self.cfg.max_message_bytes,
                    Duration::from_millis(self.cfg.worker.poll_interval_ms),
                );
                let fut = AssertUnwindSafe(handler.run(ctx)).catch_unwind();
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Err(reason.lock().ok().and_then(|r| *r).unwrap_or(StopReason::Shutdown)),
                    r = fut => Ok(match r {
                        Ok(Ok(crate::executor::Outcome::Completed(v))) => Outcome::Completed(v),
                        Ok(Ok(crate::executor::Outcome::Wait { timeout })) => Outcome::Wait { timeout },
                        Ok(Err(TaskError { message, permanent, retry_after })) =>
                            Outcome::Failed { error: message, permanent, retry_after },
                        Err(panic) => Outcome::Failed {
                            error: format!("handler panicked: {}", panic_text(&panic)),
                            permanent: false,
                            retry_after: None,
                        },
                    }),
                    _ = tokio::time::sleep(timeout) => Ok(Outcome::TimedOut(timeout)),
                }
            }
        };
        // The handler's future is dropped by now: a child process group is already killed.
        let labels = [
            ("queue", crate::labels::queue(&task.queue)),
            ("kind", crate::labels::kind(&task.kind)),
        ];
        metrics::histogram!("spool_task_run_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        let now = self.clock.now();
        let params = |status, result, error, run_at: Option<i64>, uncount| FinishParams {
            task: task.clone(),
            owner: self.id.clone(),
            status,
            result,
            error,
            run_at,
            uncount,
            // A wait holds no attempt: it is given back, and run_at is when the wait ends.
            wait_until: (status == TaskStatus::Waiting).then_some(run_at).flatten(),
            now,
        };
        let finish = match outcome {
            Err(StopReason::LeaseLost) => {
                tracing::warn!(
                    "lease lost: another worker may run this task; dropping this attempt"
                );
                return;
            }
            Err(StopReason::Shutdown) => {
                tracing::info!("shutting down: lease released, attempt not counted");
                params(TaskStatus::Pending, None, None, Some(now), true)
            }
            Err(StopReason::Canceled) => params(
                TaskStatus::Canceled,
                None,
                Some("canceled while running".into()),
                None,
                false,
            ),
            Ok(outcome) => {
                let policy = self.cfg.retry_for(&task.kind);
                let jitter = (self.jitter)().clamp(0.0, 1.0 - f64::EPSILON);
                let t = decide(
                    outcome,
                    task.attempts,
                    task.max_attempts,
                    &policy,
                    jitter,
                    now,
                );
                let waits = t.status == TaskStatus::Waiting;
                params(t.status, t.result, t.error, t.run_at, waits)
            }
        };
        let status = finish.status;
        let error = finish.error.clone();
        let run_at = finish.run_at;
        // The slot takes its next task once `task_finish` returned, not after the commit: by
        // the store's ordering contract (see `Store::task_finish`) no later claim commits before
        // this outcome. A crash therefore never leaves more tasks running than there are slots.
        let first = self.store.task_finish(finish.clone()).await;
        drop(slot);
        self.handler_returned(task.id, seq);
        let first = match first {
            Ok(queued) => queued.answer().await,
            Err(e) => Err(e),
        };
        let done = match first {
            Err(StoreError::Unavailable(_)) => {
                let write = || async { self.store.task_finish_wait(finish.clone()).await };
                write
                    .retry(
                        ExponentialBuilder::default()
                            .with_max_times(8)
                            .with_max_delay(Duration::from_secs(2)),
                    )
                    .when(|e| matches!(e, StoreError::Unavailable(_)))
                    .await
            }
            other => other,
        };
        if let (Ok(Some(t)), Some(h)) = (&done, &handler) {
            h.attempt_ended(t);
        }
        match done {
            Ok(Some(t)) if status == TaskStatus::Waiting && t.status == TaskStatus::Pending => {
                // The store found a message of the owner the attempt had not read: no wait.
                metrics::counter!("spool_tasks_woken_at_once_total", &labels).increment(1);
                tracing::info!("the owner wrote while it ran; runnable again at once");
            }
            Ok(Some(t)) => {
                // A cancel asked for while it ran ends a retry or a wait canceled.
                let status = if t.status == TaskStatus::Canceled {
                    t.status
                } else {
                    status
                };
                let counter = match status {
                    TaskStatus::Completed => "spool_tasks_completed_total",
                    TaskStatus::Failed => "spool_tasks_failed_total",
                    TaskStatus::Canceled => "spool_tasks_canceled_total",
                    TaskStatus::Waiting => "spool_tasks_waiting_total",
                    _ => "spool_tasks_retried_total",
                };
                metrics::counter!(counter, &labels).increment(1);
                match status {
                    TaskStatus::Completed => tracing::info!("completed"),
                    TaskStatus::Failed => {
                        tracing::warn!(error = error.as_deref().unwrap_or(""), "failed")
                    }
                    TaskStatus::Canceled => tracing::info!("canceled"),
                    TaskStatus::Waiting => tracing::info!(
                        wait_ms = run_at.unwrap_or(now) - now,
                        "waiting for its owner; slot freed"
                    ),
                    _ if run_at == Some(now) => {}
                    _ => tracing::info!(
                        error = error.as_deref().unwrap_or(""),
                        retry_in_ms = run_at.unwrap_or(now) - now,
                        "retry scheduled"
                    ),
                }
            }
            Ok(None) => tracing::warn!("lease lost before the result was written; result dropped"),
            Err(e) => {
                tracing::error!(error = %e, "could not record the outcome; the lease will expire and the task run again")
            }
        }
    }

    /// One heartbeat: extends our leases, stops attempts whose lease is gone or that were
    /// canceled. Returns the time the leases were extended from (the `now` sent, not the time
    /// the answer came: the database counts the lease from it).
    async fn heartbeat_once(&self) -> Result<i64, StoreError> {
        let snapshot = self.seq.load(Ordering::SeqCst);
        let sent = self.clock.now();
        // Only the attempts still here: one the lease guard dropped (or whose outcome could not
        // be written) is left to run out, or it would stay ours, extended and never run.
        let ours: Vec<TaskId> = match self.running.lock() {
            Ok(r) => r.keys().copied().collect(),
            Err(_) => Vec::new(),
        };
        let held = self
            .store
            .lease_extend(self.id.clone(), ours, self.cfg.worker.lease_ms, sent)
            .await?;
        let held: HashMap<TaskId, (u32, bool)> = held
            .into_iter()
            .map(|h| (h.id, (h.attempt, h.cancel_requested)))
            .collect();
        if let Ok(r) = self.running.lock() {
            for (id, e) in r.iter() {
                if e.seq > snapshot {
                    continue; // claimed after the heartbeat was sent
                }
                match held.get(id) {
                    Some((a, _)) if *a != e.attempt => e.stop(StopReason::LeaseLost),
                    Some((_, true)) => e.stop(StopReason::Canceled),
                    Some(_) => {}
                    None => e.stop(StopReason::LeaseLost),
                }
            }
        }
        Ok(sent)
    }

    /// How often the lease guard looks, and the margin it keeps before a lease runs out.
    fn guard_period(&self) -> Duration {
        Duration::from_millis((self.cfg.worker.lease_ms / 10).max(50))
    }

    /// Milliseconds left before the lease of an attempt claimed at `claimed_at` could run out in
    /// the database, by our own reckoning, less the guard's margin (two guard periods): from the
    /// claim or the last extend that succeeded, whichever is later. At zero or below the
    /// attempt must stop, since another worker may take the task over once the lease is gone.
    fn lease_left(&self, claimed_at: i64) -> i64 {
        let last_ok = self.last_extend_ok.load(Ordering::Relaxed);
        let lease = self.cfg.worker.lease_ms as i64;
        let margin = 2 * self.guard_period().as_millis() as i64;
        claimed_at
            .max(last_ok)
            .saturating_add(lease)
            .saturating_sub(margin)
            .saturating_sub(self.clock.now())
    }

    /// The lease guard's look: every attempt whose lease may run out before the next look (the
    /// heartbeats failed, hang on a cut link, or this process was stopped) is stopped, so that
    /// it never runs on after another worker took its task over.
    fn stop_expired_leases(&self) {
        if let Ok(r) = self.running.lock() {
            for e in r.values() {
                if self.lease_left(e.claimed_at) <= 0 {
                    e.stop(StopReason::LeaseLost);
                }
            }
        }
    }

    /// A cancel request committed in this process: stop the attempt at once rather than at the
    /// next heartbeat (which still catches requests made by other processes).
    fn on_cancel(&self, t: &Task) {
        if t.lease_owner.as_deref() != Some(&self.id) {
            return;
        }
        if let Ok(r) = self.running.lock() {
            if let Some(e) = r.get(&t.id).filter(|e| e.attempt == t.attempts) {
                e.stop(StopReason::Canceled);
            }
        }
    }

    /// Runs until `shutdown`, then stops claiming, gives running attempts `shutdown.grace_ms`
    /// to finish, stops the rest and releases their leases (their attempt not counted).
    ///
    /// # Errors
    /// Never for a passing database problem (it is logged and retried); only if the worker
    /// could not be registered at all.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), StoreError> {
        let host = self.cfg.worker.host.clone();
        let lease = self.cfg.worker.lease_ms;
        self.store
            .worker_heartbeat(
                self.id.clone(),
                host.clone(),
                std::process::id(),
                self.clock.now() - 10 * lease as i64,
                self.clock.now(),
            )
            .await?;
        tracing::info!(worker = %self.id, concurrency = self.cfg.worker.concurrency,
            queues = ?self.cfg.worker.queues, "worker pool started");

        let side = CancellationToken::new();
        // The lease guard looks on its own, so a heartbeat that hangs cannot delay it.
        let guard = {
            let pool = self.clone();
            let side = side.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(pool.guard_period());
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = side.cancelled() => break,
                        _ = tick.tick() => pool.stop_expired_leases(),
                    }
                }
            })
        };
        let hb = {
            let pool = self.clone();
            let side = side.clone();
            let host = host.clone();
            tokio::spawn(async move {
                let every = Duration::from_millis((lease / 3).max(100));
                let mut cancels = pool.store.hub().subscribe_cancels();
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = side.cancelled() => break,
                        _ = tick.tick() => {
                            // Bounded: a heartbeat on a cut link must not hang the loop.
                            match tokio::time::timeout(every, pool.heartbeat_once()).await {
                                Ok(Ok(sent)) => {
                                    pool.last_extend_ok.fetch_max(sent, Ordering::Relaxed);
                                }
                                Ok(Err(e)) => {
                                    tracing::warn!(error = %e, "heartbeat failed; will retry");
                                }
                                Err(_) => {
                                    tracing::warn!(timeout_ms = every.as_millis() as u64,
                                        "heartbeat took too long; will retry");
                                }
                            }
                            // The `workers` row (what `spool inspect` lists) is best effort.
                            let now = pool.clock.now();
                            let beat = pool.store.worker_heartbeat(pool.id.clone(), host.clone(), std::process::id(), now - 10 * lease as i64, now);
                            match tokio::time::timeout(every, beat).await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => tracing::debug!(error = %e, "worker row not updated"),
                                Err(_) => tracing::debug!("worker row update took too long"),
                            }
                        }
                        ev = cancels.recv() => match ev {
                            Ok(t) => pool.on_cancel(&t),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        },
                    }
                }
            })
        };

        let tracker = TaskTracker::new();
        let poll = Duration::from_millis(self.cfg.worker.poll_interval_ms);
        let work = self.store.hub().work_notify(&self.cfg.worker.queues);
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let woken = work.notified();
            tokio::pin!(woken);
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let wait = match self.claim_once(&tracker).await {
                Ok((asked, got)) => {
                    failures = 0;
                    if asked > 0 && got as u32 == asked {
                        continue; // there may be more waiting
                    }
                    // A rate-limited queue earns its next token before the poll is up: look
                    // again then, so the rate is used, not the poll interval.
                    if asked > got as u32 {
                        poll.min(self.token_interval())
                    } else {
                        poll
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(error = %e, failures, "claim failed; retrying");
                    }
                    poll.max(Duration::from_millis(100 * u64::from(failures.min(50))))
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut woken => {}
                _ = &mut freed => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }

        // Stop: no more claims; prefetched tasks no slot can take are given back at once; let
        // running attempts finish within the grace period.
        tracker.close();
        if let Ok(r) = self.running.lock() {
            // Claimed tasks that a free slot takes now still run (a claim just made has not
            // taken its slot yet); the rest, prefetched beyond the slots, are given back.
            let mut waiting: Vec<&Running> = r.values().filter(|e| !e.started).collect();
            waiting.sort_by_key(|e| e.seq);
            for e in waiting.into_iter().skip(self.slots.available_permits()) {
                e.stop(StopReason::Shutdown);
            }
        }
        let n = self.running.lock().map(|r| r.len()).unwrap_or(0);
        if n > 0 {
            tracing::info!(
                running = n,
                grace_ms = self.cfg.shutdown_grace.as_millis() as u64,
                "waiting for running tasks"
            );
        }
        if tokio::time::timeout(self.cfg.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            if let Ok(r) = self.running.lock() {
                for e in r.values() {
                    e.stop(StopReason::Shutdown);
                }
            }
            tracker.wait().await;
        }
        side.cancel();
        let _ = hb.await;
        let _ = guard.await;
        let _ = self.store.worker_remove(self.id.clone()).await;
        tracing::info!(worker = %self.id, "worker pool stopped");
        Ok(())
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}
