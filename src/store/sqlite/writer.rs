//! The writer: one thread owns the write connection for the life of the process (Litestream
//! needs the WAL to stay put). Callers send it jobs on a bounded channel. The thread blocks for
//! the first job, drains what else is waiting (up to [`MAX_BATCH`]), runs it all inside one
//! `BEGIN IMMEDIATE`, each job in its own savepoint, commits once, and only then answers each
//! caller and publishes events. Under load thousands of small commits become a few large ones;
//! alone, a job commits at once.

use super::{SqliteStore, MAX_BATCH};
use crate::events::{Event, EventHub};
use crate::store::{Queued, Result, StoreError};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

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

pub(super) fn writer_loop(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn WriteJob>>,
    hub: &EventHub,
) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("spool_writer_batch_size").record(batch.len() as f64);
        run_batch(&conn, &mut batch, hub);
    }
    // All senders are gone: the process is stopping. The connection closes here, last.
}

pub(super) fn run_batch(conn: &Connection, batch: &mut Vec<Box<dyn WriteJob>>, hub: &EventHub) {
    let begun = conn
        .prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut st| st.execute([]))
        .map_err(StoreError::from)
        .and_then(|_| schema_known(conn));
    if let Err(err) = begun {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
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

/// `SchemaMigratedSince` when a newer spool has migrated the file since this process opened
/// it: the schema is then not the one this build writes, so nothing is written (the callers get
/// 503, and [`crate::app::Spool::run`] stops the process within a second). A migration commits
/// its version with its changes, so inside `BEGIN IMMEDIATE` the version read is the schema
/// written to.
fn schema_known(conn: &Connection) -> Result<()> {
    let found = super::migrate::current_version(conn)?;
    let known = super::migrate::LATEST_VERSION;
    if found > known {
        return Err(StoreError::SchemaMigratedSince { found, known });
    }
    Ok(())
}

pub(super) fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        &StoreError::SchemaMigratedSince { found, known } => {
            StoreError::SchemaMigratedSince { found, known }
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl SqliteStore {
    pub(super) fn sender(&self) -> Result<mpsc::Sender<Box<dyn WriteJob>>> {
        self.tx
            .lock()
            .ok()
            .and_then(|t| t.clone())
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))
    }

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

    /// Puts `f` on the writer's queue and returns once it is there: anything queued later
    /// commits in the same transaction or a later one, never before it.
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
        let tx = self.sender()?;
        if wait {
            tx.send(job)
                .await
                .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        } else {
            tx.try_send(job).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    StoreError::Unavailable("too many writes waiting".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    StoreError::Unavailable("the writer has stopped".into())
                }
            })?;
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
