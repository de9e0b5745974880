//! In-process announcements of committed changes: SSE streams and idle workers wake at once
//! instead of waiting for a poll tick. Rows written by other processes are found by polling.

use crate::task::{Message, Task, TaskId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{broadcast, Notify};

/// Capacity of the broadcast ring. A receiver that falls this far behind gets `Lagged` and
/// re-reads from the database, so nothing is lost, only re-fetched.
pub const EVENT_CAPACITY: usize = 8192;

/// A committed change.
#[derive(Debug, Clone)]
pub enum Event {
    /// A task was inserted or changed state (or had a cancel requested).
    Task(Arc<Task>),
    /// A message was appended.
    Message(Arc<Message>),
}

/// The hub every committed change is published on.
#[derive(Debug)]
pub struct EventHub {
    tx: broadcast::Sender<Event>,
    /// Cancel requests of running tasks only: worker pools listen here, so they are not woken
    /// by every enqueue, claim and message the way a subscriber of `tx` is.
    cancels: broadcast::Sender<Arc<Task>>,
    /// Idle worker pools by the queues they work: an enqueue wakes only the pools of its queue.
    work: Mutex<HashMap<String, Vec<Weak<Notify>>>>,
    /// Per-task wake-ups: a stream or long poll waits on its task only, so a message wakes one
    /// waiter, not every open stream (1,000 streams would otherwise mean 1,000 wake-ups a message).
    watchers: Mutex<HashMap<TaskId, Vec<Weak<Notify>>>>,
    /// Any task change committed here: wakes the reader of the change log at once (other
    /// processes' changes it finds by polling).
    task_changed: Notify,
    /// Something in this process waits for wake-ups from other processes: a worker pool, or
    /// the change log's reader. A store that hears of other processes' enqueues (PostgreSQL's
    /// LISTEN) listens only from then on, so a process that waits for none (a front end with
    /// no slots and no `/v1/events` stream open, a command such as `spool inspect`) keeps no
    /// listening session, which PostgreSQL would signal at every commit that enqueues.
    wakeups_wanted: AtomicBool,
}

/// A registration for one task's changes; dropping it unregisters.
#[derive(Debug)]
pub struct TaskWatch {
    hub: Arc<EventHub>,
    id: TaskId,
    notify: Arc<Notify>,
}

impl TaskWatch {
    /// Resolves after the task changed or got a message (at once if that happened since the
    /// last call: the wake-up is kept until taken).
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

impl Drop for TaskWatch {
    fn drop(&mut self) {
        if let Ok(mut w) = self.hub.watchers.lock() {
            if let Some(list) = w.get_mut(&self.id) {
                list.retain(|n| {
                    n.strong_count() > 0 && !std::ptr::eq(n.as_ptr(), Arc::as_ptr(&self.notify))
                });
                if list.is_empty() {
                    w.remove(&self.id);
                }
            }
        }
    }
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    /// A hub with no subscribers.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(EVENT_CAPACITY);
        let (cancels, _) = broadcast::channel(1024);
        Self {
            tx,
            cancels,
            work: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            task_changed: Notify::new(),
            wakeups_wanted: AtomicBool::new(false),
        }
    }

    /// Registers interest in one task's changes and messages.
    pub fn watch(self: &Arc<Self>, id: TaskId) -> TaskWatch {
        let notify = Arc::new(Notify::new());
        if let Ok(mut w) = self.watchers.lock() {
            w.entry(id).or_default().push(Arc::downgrade(&notify));
        }
        TaskWatch {
            hub: self.clone(),
            id,
            notify,
        }
    }

    fn wake(&self, id: TaskId) {
        if let Ok(w) = self.watchers.lock() {
            if let Some(list) = w.get(&id) {
                for n in list.iter().filter_map(Weak::upgrade) {
                    n.notify_one();
                }
            }
        }
    }

    /// Announces a committed change. Called only after the commit.
    pub fn publish(&self, e: Event) {
        match &e {
            Event::Task(t) => self.wake(t.id),
            Event::Message(m) => self.wake(m.task_id),
        }
        if let Event::Task(t) = &e {
            self.task_changed.notify_one();
            if t.cancel_requested && t.status == crate::task::TaskStatus::Running {
                let _ = self.cancels.send(t.clone());
            }
            if t.status == crate::task::TaskStatus::Pending {
                // notify_one keeps the wake-up for a pool that is busy claiming right now, so it
                // claims again before it sleeps: no enqueue is missed.
                if let Ok(w) = self.work.lock() {
                    if let Some(list) = w.get(&t.queue) {
                        for n in list.iter().filter_map(Weak::upgrade) {
                            n.notify_one();
                        }
                    }
                }
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(e);
    }

    /// A receiver of every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Resolves after a task change committed in this process (at once if one did since the
    /// last call: the wake-up is kept). For one waiter: the reader of the change log.
    pub async fn task_changed(&self) {
        self.task_changed.notified().await
    }

    /// A receiver of cancel requests for running tasks (committed in this process).
    pub fn subscribe_cancels(&self) -> broadcast::Receiver<Arc<Task>> {
        self.cancels.subscribe()
    }

    /// Marks that something in this process waits for wake-ups from other processes (see
    /// [`EventHub::wakeups_wanted`]); a pool is marked by [`EventHub::work_notify`]. Call it
    /// before the store call that should start the listening.
    pub fn want_wakeups(&self) {
        self.wakeups_wanted.store(true, Ordering::Release);
    }

    /// Whether something in this process waits for wake-ups from other processes.
    pub fn wakeups_wanted(&self) -> bool {
        self.wakeups_wanted.load(Ordering::Acquire)
    }

    /// Wakes the idle pools working `queue` (a task of it became pending in another process)
    /// and the change log's reader.
    pub fn wake_queue(&self, queue: &str) {
        self.task_changed.notify_one();
        if let Ok(w) = self.work.lock() {
            if let Some(list) = w.get(queue) {
                for n in list.iter().filter_map(Weak::upgrade) {
                    n.notify_one();
                }
            }
        }
    }

    /// Wakes every idle pool and the change log's reader (wake-ups from other processes may
    /// have been lost: they look in the database now).
    pub fn wake_all_work(&self) {
        self.task_changed.notify_one();
        if let Ok(w) = self.work.lock() {
            for n in w.values().flatten().filter_map(Weak::upgrade) {
                n.notify_one();
            }
        }
    }

    /// A wake-up for a pool working `queues`: notified when a task of one of them becomes
    /// pending in this process. Keep the returned `Arc` as long as the pool runs.
    pub fn work_notify(&self, queues: &[String]) -> Arc<Notify> {
        self.want_wakeups();
        let n = Arc::new(Notify::new());
        if let Ok(mut w) = self.work.lock() {
            for q in queues {
                let list = w.entry(q.clone()).or_default();
                list.retain(|x| x.strong_count() > 0);
                list.push(Arc::downgrade(&n));
            }
        }
        n
    }
}
