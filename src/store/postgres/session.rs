//! What every pooled connection is told at connect, so that neither a link cut without a word
//! nor a process stopped in the middle of a transaction can hold the queue up for long:
//!
//! - `tcp_user_timeout` (and keepalives): data the server does not acknowledge within the
//!   timeout closes the connection, so a statement sent over a cut link fails (the store says
//!   `Unavailable`, the caller retries on a new connection) rather than hang for the kernel's
//!   quarter of an hour of retransmissions.
//! - `idle_in_transaction_session_timeout`: PostgreSQL ends a session that sits inside an open
//!   transaction this long. A frozen or cut-off process holding an open transaction holds its
//!   row locks (its tasks, its users' usage rows, a limited queue's claim lock), and other
//!   writers that need them would otherwise wait until its connection is found dead; now they
//!   wait for the timeout at most, and its transaction is rolled back (its commit, if it ever
//!   comes, fails).
//!
//! Both are the pool's connect timeout (`database.busy_timeout_ms`), at least one second.

use std::time::Duration;

/// Sets the timeouts above on a connection's configuration.
pub(super) fn harden(cfg: &mut tokio_postgres::Config, timeout: Duration) {
    let timeout = timeout.max(Duration::from_secs(1));
    cfg.keepalives(true);
    cfg.keepalives_idle(timeout.max(Duration::from_secs(10)));
    cfg.tcp_user_timeout(timeout);
    let setting = format!(
        "-c idle_in_transaction_session_timeout={}",
        timeout.as_millis()
    );
    let options = match cfg.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} {setting}"),
        _ => setting,
    };
    cfg.options(options);
}
