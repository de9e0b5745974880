//! spool: a durable job queue in one binary, SQLite-backed.
//!
//! Above the store everything holds an `Arc<dyn Store>`: nothing there names a driver, a
//! connection, a rowid or a PRAGMA.
//!
//! # Layout
//!
//! | layer | module | owns | must not |
//! |---|---|---|---|
//! | nouns | [`task`], [`clock`], [`backoff`] | ids, statuses, time, retry maths | do I/O |
//! | queue | [`queue`] | every transition of a task and the validation of a new one (pure) | run anything |
//! | store | [`store`]: the [`store::Store`] trait; [`store::sqlite`] | the database: migrations, SQL, transactions, the change log | know HTTP or processes; read the clock (but [`store::Store::clock`] names the one callers read), a random source or the environment |
//! | events | [`events`] | in-process announcements of committed changes | hold state |
//! | executor | [`executor`] | handlers: command, webhook, container, built-ins, Rust [`executor::Handler`]s | touch SQL |
//! | worker | [`worker`] | the pool: claim, run under a lease, heartbeat, report, stop | parse HTTP |
//! | http | [`http`] | routes, auth, errors, SSE, long poll, the change feed of `/v1/events` | hold task state |
//! | jwt | [`jwt`] | checking an identity provider's JWTs, its cached JWKS | know users or SQL |
//! | schedule | [`schedule`] | cron schedules: firing times (pure) and the scheduler loop | touch SQL |
//! | config | [`config`] | the typed configuration | be read after start |
//! | labels | [`labels`] | which kind and queue names may be metric labels | admit user-chosen names |
//! | drill | [`drill`] | the restore drill: restore the replica, check it, compare | touch the live file but to read it |
//! | app | [`app`] | wiring and shutdown order | hold logic of its own |

pub mod app;
pub mod backoff;
pub mod bench;
pub mod clock;
pub mod config;
pub mod drill;
pub mod events;
pub mod executor;
pub mod http;
pub mod jwt;
pub mod labels;
pub mod queue;
pub mod schedule;
pub mod store;
pub mod task;
pub mod token;
pub mod worker;

pub use app::{Spool, SpoolBuilder};
pub use clock::{Clock, ManualClock, SyncedClock, SystemClock, UnixMillis};
pub use config::Config;
pub use executor::{Handler, Outcome, Registry, TaskContext, TaskError};
/// SQLite's page cache without its scan after a rebalance: call `pcache::install()` before the
/// process first opens SQLite (the `spool` binary does).
pub use spool_pcache as pcache;
pub use store::{SqliteStore, Store, StoreError};
pub use task::{Message, NewTask, Task, TaskId, TaskStatus};
