//! What every pooled connection is told, so that neither a link cut without a word nor a
//! process stopped in the middle of a transaction can hold the queue up for long:
//!
//! - `tcp_user_timeout` (and keepalives), socket options set at connect: data the server does
//!   not acknowledge within the timeout closes the connection, so a statement sent over a cut
//!   link fails (the store says `Unavailable`, the caller retries on a new connection) rather
//!   than hang for the kernel's quarter of an hour of retransmissions.
//! - `idle_in_transaction_session_timeout`, set by a statement once the connection is made
//!   ([`set_timeout`]): PostgreSQL ends a session that sits inside an open transaction this
//!   long. A frozen or cut-off process holding an open transaction holds its row locks (its
//!   tasks, its users' usage rows, a limited queue's claim lock), and other writers that need
//!   them would otherwise wait until its connection is found dead; now they wait for the
//!   timeout at most, and its transaction is rolled back (its commit, if it ever comes, fails).
//!   A statement, not the startup `options`: a pooler such as PgBouncer refuses startup options
//!   it does not know (or drops them when told to ignore them), but passes a `SET` through to
//!   the session it belongs to.
//!
//! Both are the pool's connect timeout (`database.busy_timeout_ms`), at least one second.

use std::time::Duration;

/// The timeout both settings get for `timeout`.
fn effective(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(1))
}

/// Sets the socket options above on a connection's configuration.
pub(super) fn harden(cfg: &mut tokio_postgres::Config, timeout: Duration) {
    let timeout = effective(timeout);
    cfg.keepalives(true);
    cfg.keepalives_idle(timeout.max(Duration::from_secs(10)));
    cfg.tcp_user_timeout(timeout);
}

/// The statement a new pooled connection runs first.
pub(super) fn set_timeout(timeout: Duration) -> String {
    format!(
        "SET idle_in_transaction_session_timeout = {}",
        effective(timeout).as_millis()
    )
}
