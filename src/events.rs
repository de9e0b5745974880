//! In-process announcements of committed changes: SSE streams and idle workers wake at once
//! instead of waiting for a poll tick. Rows written by other processes are found by polling.

use crate::task::{Message, Task};
use std::sync::Arc;
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
    work: Notify,
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
        Self {
            tx,
            work: Notify::new(),
        }
    }

    /// Announces a committed change. Called only after the commit.
    pub fn publish(&self, e: Event) {
        if let Event::Task(t) = &e {
            if t.status == crate::task::TaskStatus::Pending {
                // notify_waiters wakes every idle pool; a pool that is busy claiming will claim
                // again before it sleeps (it sleeps only after a claim came back short).
                self.work.notify_waiters();
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(e);
    }

    /// A receiver of every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Resolves when a task becomes pending in this process.
    pub fn work_available(&self) -> tokio::sync::futures::Notified<'_> {
        self.work.notified()
    }
}
