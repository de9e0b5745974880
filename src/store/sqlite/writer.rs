//! The writer: one write connection for the life of the process (Litestream needs the WAL to
//! stay put), used by one thread at a time. A lone job commits at once on its caller's thread;
//! jobs that arrive while another commits wait in a bounded line, and the writer thread runs all
//! that wait inside one `BEGIN IMMEDIATE`, each job in its own savepoint, commits once, and only
//! then answers each caller and publishes events. Under load thousands of small commits become a
//! few large ones.

use super::{SqliteStore, MAX_BATCH};
use crate::events::{Event, EventHub};
use crate::store::{Queued, Result, StoreError};
use rusqlite::Connection;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// A unit of work for the writer thread.
pub(super) trait WriteJob: Send {
    /// Runs inside the open transaction; true when it succeeded (its savepoint is kept).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Called once the transaction committed (`Ok`) or failed as a whole (`Err`).
    fn finish(self: Box<Self>, commit: Result<()>, hub: &EventHub);
    /// Whether the job needs a savepoint of its own: false for a job that writes with a single
    /// statement, which SQLite already undoes as a whole when it fails.
    fn needs_savepoint(&self) -> bool;
}

pub(super) type JobOutput<T> = Result<(T, Vec<Event>)>;

pub(super) struct FnJob<T, F> {
    f: Option<F>,
    out: Option<JobOutput<T>>,
    reply: oneshot::Sender<Result<T>>,
    single_statement: bool,
}

impl<T, F> WriteJob for FnJob<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> JobOutput<T> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let out = match self.f.take() {
            Some(f) => f(conn),
            None => Err(StoreError::Backend("write job ran twice".into())),
        };
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn needs_savepoint(&self) -> bool {
        !self.single_statement
    }

    fn finish(self: Box<Self>, commit: Result<()>, hub: &EventHub) {
        let answer = match (commit, self.out) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(Ok((value, events)))) => {
                for e in events {
                    hub.publish(e);
                }
                Ok(value)
            }
            (Ok(()), Some(Err(e))) => Err(e),
            (Ok(()), None) => Err(StoreError::Unavailable("write job never ran".into())),
        };
        // The caller may have gone away (client disconnected); the write stands regardless.
        let _ = self.reply.send(answer);
    }
}

/// A job waiting for the writer thread, holding its place in the bounded line.
struct Waiting {
    job: Box<dyn WriteJob>,
    _place: OwnedSemaphorePermit,
}

/// Who writes next. At most one thread runs a transaction at a time: the one that set `busy`.
#[derive(Default)]
struct Line {
    waiting: VecDeque<Waiting>,
    busy: bool,
    closed: bool,
}

/// The write connection and the line of jobs waiting for it.
///
/// A job that finds the line empty and nobody writing runs at once on its caller's thread (the
/// caller becomes the leader, inside `block_in_place`): a lone request commits without waking
/// another thread and being woken back, which on a virtual machine cost more than a commit at
/// `synchronous=NORMAL`. Jobs that arrive while somebody writes wait in the line; the writer
/// thread takes all of them (up to [`MAX_BATCH`]) into its next transaction, so under load
/// thousands of small commits still become a few large ones. The connection stays open for the
/// life of the process (Litestream needs the WAL to stay put), whichever thread uses it.
pub(super) struct Writer {
    conn: Mutex<Option<Connection>>,
    line: Mutex<Line>,
    work: Condvar,
    places: Arc<Semaphore>,
    hub: Arc<EventHub>,
}

impl Writer {
    /// Starts the writer thread on `conn`; at most `capacity` jobs wait in the line.
    pub(super) fn start(
        conn: Connection,
        capacity: usize,
        hub: Arc<EventHub>,
    ) -> std::io::Result<(Arc<Self>, std::thread::JoinHandle<()>)> {
        let writer = Arc::new(Self {
            conn: Mutex::new(Some(conn)),
            line: Mutex::new(Line::default()),
            work: Condvar::new(),
            places: Arc::new(Semaphore::new(capacity.clamp(1, Semaphore::MAX_PERMITS))),
            hub,
        });
        let thread = {
            let writer = writer.clone();
            std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || writer.thread_loop())?
        };
        Ok((writer, thread))
    }

    /// A panic in a job (a bug) poisons the locks; what they guard stays consistent, because
    /// every change to it is a single assignment.
    fn line(&self) -> MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops taking jobs; the thread finishes those waiting, closes the connection and ends.
    pub(super) fn close(&self) {
        self.line().closed = true;
        self.places.close();
        self.work.notify_all();
    }

    fn is_closed(&self) -> bool {
        self.line().closed
    }

    fn thread_loop(&self) {
        let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_BATCH);
        let mut line = self.line();
        loop {
            if line.busy || line.waiting.is_empty() {
                if line.closed && !line.busy && line.waiting.is_empty() {
                    break;
                }
                line = self.work.wait(line).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            line.busy = true;
            let n = line.waiting.len().min(MAX_BATCH);
            batch.extend(line.waiting.drain(..n).map(|w| w.job));
            drop(line);
            self.run(&mut batch);
            line = self.line();
            line.busy = false;
        }
        drop(line);
        // The process is stopping and nothing waits: the connection closes here, last.
        drop(self.conn.lock().unwrap_or_else(PoisonError::into_inner).take());
    }

    /// Runs one transaction; the caller has set `busy`.
    fn run(&self, batch: &mut Vec<Box<dyn WriteJob>>) {
        metrics::histogram!("spool_writer_batch_size").record(batch.len() as f64);
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        match conn.as_ref() {
            Some(conn) => {
                if !conn.is_autocommit() {
                    // A job panicked mid-transaction (a bug): what it left is not ours to commit.
                    let _ = conn.execute_batch("ROLLBACK");
                }
                run_batch(conn, batch, &self.hub);
            }
            None => {
                for job in batch.drain(..) {
                    job.finish(
                        Err(StoreError::Unavailable("the store is closed".into())),
                        &self.hub,
                    );
                }
            }
        }
    }

    /// Runs `job` here and now when nobody is writing and nothing waits, and gives it back
    /// otherwise (or where this thread may not block: a current-thread runtime).
    fn lead(&self, job: Box<dyn WriteJob>) -> std::result::Result<(), Box<dyn WriteJob>> {
        let may_block = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !may_block {
            return Err(job);
        }
        {
            let mut line = self.line();
            if line.closed || line.busy || !line.waiting.is_empty() {
                return Err(job);
            }
            line.busy = true;
        }
        // Hands the writing on, also when a job panics.
        struct Leading<'a>(&'a Writer);
        impl Drop for Leading<'_> {
            fn drop(&mut self) {
                let mut line = self.0.line();
                line.busy = false;
                if !line.waiting.is_empty() || line.closed {
                    self.0.work.notify_one();
                }
            }
        }
        let _leading = Leading(self);
        tokio::task::block_in_place(|| self.run(&mut vec![job]));
        Ok(())
    }

    /// Puts `job` in the line, waiting for a place when `wait` and the line is full.
    async fn push(&self, job: Box<dyn WriteJob>, wait: bool) -> Result<()> {
        let place = if wait {
            self.places.clone().acquire_owned().await.map_err(|_| stopped())?
        } else {
            self.places
                .clone()
                .try_acquire_owned()
                .map_err(|e| match e {
                    TryAcquireError::NoPermits => {
                        StoreError::Unavailable("too many writes waiting".into())
                    }
                    TryAcquireError::Closed => stopped(),
                })?
        };
        let mut line = self.line();
        if line.closed {
            return Err(stopped());
        }
        line.waiting.push_back(Waiting { job, _place: place });
        // The thread wakes for the first job of an idle line; a leader wakes it when it is done.
        if !line.busy && line.waiting.len() == 1 {
            self.work.notify_one();
        }
        Ok(())
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the writer has stopped".into())
}

pub(super) fn run_batch(conn: &Connection, batch: &mut Vec<Box<dyn WriteJob>>, hub: &EventHub) {
    if let Err(e) = conn
        .prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut st| st.execute([]))
    {
        let err = StoreError::from(e);
        for job in batch.drain(..) {
            job.finish(Err(clone_err(&err)), hub);
        }
        return;
    }
    let single = batch.len() == 1;
    let mut single_failed = false;
    for job in batch.iter_mut() {
        if conn.is_autocommit() {
            // The database rolled the transaction back (disk full, I/O error). Running the rest
            // now would commit each statement on its own: stop; all of them fail below.
            break;
        }
        if !single && !job.needs_savepoint() {
            // One statement: if it fails, SQLite undoes it and the transaction stays open.
            job.run(conn);
            continue;
        }
        if single {
            // Alone in the transaction: on failure the whole is rolled back, no savepoint needed.
            single_failed = !job.run(conn);
            continue;
        }
        if conn
            .prepare_cached("SAVEPOINT job")
            .and_then(|mut st| st.execute([]))
            .is_err()
        {
            // Cannot isolate it; a failure of the connection itself shows at COMMIT below.
            job.run(conn);
            continue;
        }
        if job.run(conn) {
            let _ = conn
                .prepare_cached("RELEASE job")
                .and_then(|mut st| st.execute([]));
        } else {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
        }
    }
    // A full disk or an I/O error may have rolled the transaction back under us: then nothing of
    // the batch stands and every caller must hear so.
    let commit = if conn.is_autocommit() {
        Err(StoreError::Unavailable(
            "the transaction was rolled back by the database (disk full or I/O error)".into(),
        ))
    } else if single_failed {
        // The job's own error reaches its caller; nothing of it may stay.
        let _ = conn.execute_batch("ROLLBACK");
        Ok(())
    } else {
        conn.prepare_cached("COMMIT")
            .and_then(|mut st| st.execute([]))
            .map(|_| ())
            .map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                StoreError::from(e)
            })
    };
    for job in batch.drain(..) {
        let c = match &commit {
            Ok(()) => Ok(()),
            Err(e) => Err(clone_err(e)),
        };
        job.finish(c, hub);
    }
}

pub(super) fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl SqliteStore {
    /// Runs `f` on the writer inside the next group commit and answers after the commit.
    /// When the writer's queue is full this fails at once with `Unavailable` (backpressure);
    /// with `wait` it waits for room instead (for workers, whose writes must not be dropped).
    pub(super) async fn write<T, F>(&self, wait: bool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> JobOutput<T> + Send + 'static,
    {
        self.submit(wait, false, f).await
    }

    /// As `write`, for a job whose only write is one statement: no savepoint needed.
    pub(super) async fn write_one<T, F>(&self, wait: bool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> JobOutput<T> + Send + 'static,
    {
        self.submit(wait, true, f).await
    }

    pub(super) async fn submit<T, F>(&self, wait: bool, single_statement: bool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> JobOutput<T> + Send + 'static,
    {
        self.enqueue(wait, single_statement, f)
            .await?
            .answer()
            .await
    }

    /// Runs `f` at once when nobody writes, or puts it in the writer's line, and returns once
    /// it committed or is in the line: anything queued later commits in the same transaction or
    /// a later one, never before it.
    pub(super) async fn enqueue<T, F>(
        &self,
        wait: bool,
        single_statement: bool,
        f: F,
    ) -> Result<Queued<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> JobOutput<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(FnJob {
            f: Some(f),
            out: None,
            reply,
            single_statement,
        });
        if self.writer.is_closed() {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        if let Err(job) = self.writer.lead(job) {
            self.writer.push(job, wait).await?;
        }
        Ok(Queued::new(rx))
    }

    /// Runs `f` with a read-only connection on a blocking thread.
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get()?;
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::{SqliteStore, StoreOptions};
    use std::time::{Duration, Instant};

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(StoreOptions::new(dir.path().join("w.db"))).unwrap();
        (dir, store)
    }

    /// The name of the thread that ran a write, as the write itself saw it.
    async fn thread_of_write(store: &SqliteStore) -> String {
        store
            .write(false, |_| {
                let name = std::thread::current().name().unwrap_or("").to_string();
                Ok((name, Vec::new()))
            })
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_write_commits_on_its_callers_thread() {
        let (_dir, store) = open();
        let name = thread_of_write(&store).await;
        assert_ne!(name, "spool-writer", "a lone write was handed to the writer thread");
    }

    #[tokio::test]
    async fn on_a_current_thread_runtime_the_writer_thread_commits() {
        let (_dir, store) = open();
        // Blocking here would stall the only thread the runtime has.
        assert_eq!(thread_of_write(&store).await, "spool-writer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_that_arrive_while_one_commits_wait_for_the_writer_thread() {
        let (_dir, store) = open();
        let store = std::sync::Arc::new(store);
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let leader = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(false, move |conn| {
                        conn.execute_batch("CREATE TABLE t (x INTEGER)")?;
                        let _ = started_tx.send(());
                        let _ = release_rx.recv_timeout(Duration::from_secs(10));
                        Ok((std::thread::current().name().map(str::to_string), Vec::new()))
                    })
                    .await
            })
        };
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let followers: Vec<_> = (0..10)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .write(false, move |conn| {
                            conn.execute("INSERT INTO t (x) VALUES (?1)", [i])?;
                            Ok((std::thread::current().name().map(str::to_string), Vec::new()))
                        })
                        .await
                })
            })
            .collect();
        let give_up = Instant::now() + Duration::from_secs(10);
        while store.writer.line().waiting.len() < 10 {
            assert!(Instant::now() < give_up, "the writes never reached the line");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release_tx.send(()).unwrap();
        let led = leader.await.unwrap().unwrap();
        assert_ne!(led.as_deref(), Some("spool-writer"));
        for f in followers {
            let ran_on = f.await.unwrap().unwrap();
            assert_eq!(ran_on.as_deref(), Some("spool-writer"));
        }
        let n: i64 = rusqlite::Connection::open(store.path())
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 10, "every queued write committed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_after_close_is_refused() {
        let (_dir, store) = open();
        store.stop();
        let err = store.write(false, |_| Ok(((), Vec::new()))).await;
        assert!(err.is_err(), "a closed store took a write");
    }
}
