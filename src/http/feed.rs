//! The change feed behind `GET /v1/events`: one reader per process follows the store's change
//! log (changes committed by any process on the database, in commit order) and fans each change
//! out to the open streams. It runs only while a stream is open; a change made here wakes it at
//! once, one made elsewhere is found within the poll interval.

use crate::store::{Change, ChangeParams, Store};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Changes read per page.
const PAGE: u32 = 1000;
/// Changes a slow stream may fall behind before it re-reads from the database.
const CAPACITY: usize = 4096;
/// Reads of the log that fail in a row before the open streams are ended (their clients
/// reconnect, and get `503` while the database stays unavailable).
const FAILURES_BEFORE_CLOSE: u32 = 5;

/// What the reader sends to the streams.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// A change, in commit order.
    Change(Arc<Change>),
    /// The log could not be read for a while: streams end so their clients reconnect.
    Failed,
}

/// One process's reader of the change log.
#[derive(Debug)]
pub struct ChangeFeed {
    store: Arc<dyn Store>,
    poll: Duration,
    shutdown: CancellationToken,
    tx: broadcast::Sender<FeedItem>,
    /// The position up to which every change was sent on `tx`; `None` while no reader runs.
    head: Mutex<Option<i64>>,
}

/// A stream's place in the feed.
#[derive(Debug)]
pub struct Subscription {
    /// Every change after `head`, as the feed reads it.
    pub rx: broadcast::Receiver<FeedItem>,
    /// Changes up to here were read before the subscription: a stream resuming from an older
    /// position reads them from the store.
    pub head: i64,
    /// The log's newest position when the subscription was made (a resume position past it
    /// is not one of this database's).
    pub newest: i64,
}

impl ChangeFeed {
    /// A feed on `store`, polling every `poll` for other processes' changes.
    pub fn new(store: Arc<dyn Store>, poll: Duration, shutdown: CancellationToken) -> Arc<Self> {
        let (tx, _) = broadcast::channel(CAPACITY);
        Arc::new(Self {
            store,
            poll,
            shutdown,
            tx,
            head: Mutex::new(None),
        })
    }

    /// Subscribes, starting the reader if none runs.
    ///
    /// # Errors
    /// The store could not tell where its change log ends.
    pub async fn subscribe(self: &Arc<Self>) -> crate::store::Result<Subscription> {
        // Other processes' changes wake the reader from now on (on PostgreSQL the store listens
        // from its next use, the read just below).
        self.store.hub().want_wakeups();
        // The log's end before taking the lock: a reader that starts from it may find changes
        // past it at once, which the subscriber (already subscribed) receives.
        let newest = self.newest().await?;
        let mut head = self
            .head
            .lock()
            .map_err(|_| crate::store::StoreError::Unavailable("change feed poisoned".into()))?;
        let rx = self.tx.subscribe();
        let at = match *head {
            Some(h) => h,
            None => {
                *head = Some(newest);
                let me = self.clone();
                tokio::spawn(async move { me.run(newest).await });
                newest
            }
        };
        Ok(Subscription {
            rx,
            head: at,
            newest: newest.max(at),
        })
    }

    /// The position up to which every change was sent, while the reader runs.
    pub fn head(&self) -> Option<i64> {
        self.head.lock().ok().and_then(|h| *h)
    }

    async fn newest(&self) -> crate::store::Result<i64> {
        let p = self
            .store
            .changes(ChangeParams {
                after: i64::MAX,
                limit: 0,
                ..Default::default()
            })
            .await?;
        Ok(p.newest)
    }

    /// Reads the log after `cursor` and sends each change, until no stream is left or the
    /// server stops. A page is sent and the head moved under the lock `subscribe` takes, so a
    /// subscriber's `head` is exactly where its receiver starts.
    async fn run(self: Arc<Self>, mut cursor: i64) {
        let mut failures = 0u32;
        loop {
            if self.tx.receiver_count() == 0 || self.shutdown.is_cancelled() {
                // Decided under the lock: a subscriber that came in meanwhile keeps it running.
                if let Ok(mut head) = self.head.lock() {
                    if self.tx.receiver_count() == 0 || self.shutdown.is_cancelled() {
                        *head = None;
                        return;
                    }
                }
            }
            let page = self
                .store
                .changes(ChangeParams {
                    after: cursor,
                    limit: PAGE,
                    ..Default::default()
                })
                .await;
            let full = match page {
                Ok(page) => {
                    failures = 0;
                    // More behind it: the page was cut by count or by bytes.
                    let full = page.more;
                    if let Ok(mut head) = self.head.lock() {
                        for c in page.changes {
                            let _ = self.tx.send(FeedItem::Change(Arc::new(c)));
                        }
                        cursor = page.next;
                        *head = Some(cursor);
                    }
                    full
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "cannot read the change log; trying again");
                    }
                    if failures == FAILURES_BEFORE_CLOSE {
                        tracing::error!(error = %e, "the change log stays unreadable; ending /v1/events streams");
                        let _ = self.tx.send(FeedItem::Failed);
                    }
                    false
                }
            };
            if full {
                continue;
            }
            tokio::select! {
                _ = self.store.hub().task_changed() => {}
                _ = tokio::time::sleep(self.poll) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }
}
