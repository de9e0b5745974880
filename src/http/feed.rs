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

/// One process's reader of the change log.
#[derive(Debug)]
pub struct ChangeFeed {
    store: Arc<dyn Store>,
    poll: Duration,
    shutdown: CancellationToken,
    tx: broadcast::Sender<Arc<Change>>,
    /// The position up to which every change was sent on `tx`; `None` while no reader runs.
    head: Mutex<Option<i64>>,
}

/// A stream's place in the feed.
#[derive(Debug)]
pub struct Subscription {
    /// Every change after `head`, as the feed reads it.
    pub rx: broadcast::Receiver<Arc<Change>>,
    /// Changes up to here were read before the subscription: a stream resuming from an older
    /// position reads them from the store.
    pub head: i64,
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
        Ok(Subscription { rx, head: at })
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
    /// server stops. The head moves only after the page was sent.
    async fn run(self: Arc<Self>, mut cursor: i64) {
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
                    let full = page.next > cursor && page.next - cursor >= i64::from(PAGE);
                    for c in page.changes {
                        let _ = self.tx.send(Arc::new(c));
                    }
                    cursor = page.next;
                    if let Ok(mut head) = self.head.lock() {
                        *head = Some(cursor);
                    }
                    full
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the change log; trying again");
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
