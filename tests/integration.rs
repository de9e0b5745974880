//! Every integration test of spool, in one test binary: one link instead of one per file, and
//! what the files share is started once per run (PostgreSQL in [`pg`], the container engine in
//! `containers`). Each file below is one module, named for the part it proves; run one of them
//! with `cargo test --profile ci --test integration <module>::`.
//!
//! The tests drive the release `spool` binary (real processes, real HTTP on 127.0.0.1) or the
//! library's stores in process.

mod common;
mod conformance;
mod pg;

mod admission;
mod agent;
mod auth;
mod browser_stream;
mod cli;
mod command;
mod containers;
mod dashboard;
mod hosts_postgres;
mod http_api;
mod http_postgres;
mod interactive;
mod isolation;
mod limits;
mod litestream;
mod migrate_postgres;
mod processes;
mod quotas;
mod schedules;
mod schemathesis;
mod slow_client;
mod sse;
mod store_postgres;
mod store_sqlite;
mod views;
mod webhook;
mod worker_pool;
