//! The schema migrations, applied in order and recorded in `PRAGMA user_version`.

use super::StoreError;
use rusqlite::Connection;

/// Every migration: its version and SQL. Versions are contiguous from 1.
pub(crate) const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../sql/migrations/0001_init.sql")),
    (2, include_str!("../../sql/migrations/0002_task_tokens.sql")),
    (3, include_str!("../../sql/migrations/0003_health.sql")),
    (
        4,
        include_str!("../../sql/migrations/0004_queue_status_index.sql"),
    ),
    (5, include_str!("../../sql/migrations/0005_prune_index.sql")),
    (6, include_str!("../../sql/migrations/0006_lean_tasks.sql")),
    (
        7,
        include_str!("../../sql/migrations/0007_portable_views.sql"),
    ),
    (8, include_str!("../../sql/migrations/0008_quotas.sql")),
];

/// The schema version this build of spool writes.
pub const LATEST_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The schema version recorded in the database.
pub(crate) fn current_version(conn: &Connection) -> Result<u32, StoreError> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    Ok(v.max(0) as u32)
}

/// Applies every pending migration, each in its own `BEGIN IMMEDIATE` transaction that re-reads
/// the version first, so several processes starting at once apply each step exactly once.
/// Returns the versions applied.
///
/// # Errors
/// [`StoreError::SchemaTooNew`] when the database was made by a newer spool (it is not touched);
/// a database error otherwise.
pub(crate) fn migrate(conn: &Connection) -> Result<Vec<u32>, StoreError> {
    let found = current_version(conn)?;
    if found > LATEST_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: LATEST_VERSION,
        });
    }
    if found == LATEST_VERSION {
        return Ok(Vec::new());
    }
    // A step that rebuilds a table drops the old one, which with foreign keys on would cascade
    // into its children. Keys are off while migrating (the pragma is a no-op inside a
    // transaction, so it is set out here) and each step is checked before it commits.
    let keys_were_on: bool = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA foreign_keys = OFF")?;
    let out = apply(conn, found);
    if keys_were_on {
        conn.execute_batch("PRAGMA foreign_keys = ON")?;
    }
    out
}

fn apply(conn: &Connection, found: u32) -> Result<Vec<u32>, StoreError> {
    let mut applied = Vec::new();
    for &(version, sql) in MIGRATIONS {
        if version <= found {
            continue;
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let step = (|| -> Result<bool, StoreError> {
            let now = current_version(conn)?;
            if now > LATEST_VERSION {
                return Err(StoreError::SchemaTooNew {
                    found: now,
                    known: LATEST_VERSION,
                });
            }
            if now >= version {
                return Ok(false); // another process got here first
            }
            // Rows already orphaned (written with foreign keys off, say from the sqlite3 shell)
            // are not this step's doing: only new ones fail it.
            let orphans = || -> Result<i64, StoreError> {
                Ok(
                    conn.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                        r.get(0)
                    })?,
                )
            };
            let before = orphans()?;
            conn.execute_batch(sql)?;
            let after = orphans()?;
            if after > before {
                return Err(StoreError::Conflict(format!(
                    "migration {version} would leave {} more rows with a missing parent",
                    after - before
                )));
            }
            conn.execute_batch(&format!("PRAGMA user_version = {version}"))?;
            Ok(true)
        })();
        match step {
            Ok(did) => {
                conn.execute_batch("COMMIT")?;
                if did {
                    applied.push(version);
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(applied)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_contiguous_from_one() {
        for (i, (v, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v as usize, i + 1);
        }
    }

    #[test]
    fn migrate_from_zero_then_rerun_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("m.db")).unwrap();
        assert_eq!(
            migrate(&conn).unwrap(),
            (1..=LATEST_VERSION).collect::<Vec<_>>()
        );
        assert_eq!(current_version(&conn).unwrap(), LATEST_VERSION);
        assert!(migrate(&conn).unwrap().is_empty());
    }

    #[test]
    fn lean_tasks_rebuild_keeps_every_row_and_child_and_still_refuses_a_reused_key() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("m.db")).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        for (v, sql) in &MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
            conn.execute_batch(&format!("PRAGMA user_version = {v}"))
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO tasks (id, user_id, queue, kind, status, run_at, max_attempts, timeout_ms,
                                idempotency_key, created_at, completed_at, updated_at)
             VALUES ('a', 'u', 'q', 'k', 'completed', 1, 1, 1, 'key', 1, 2, 2),
                    ('b', 'u', 'q', 'k', 'pending', 1, 1, 1, NULL, 1, NULL, 1);
             INSERT INTO messages (task_id, kind, content, created_at) VALUES ('a', 'log', '1', 1);
             INSERT INTO task_tokens (token_hash, task_id, attempt, created_at) VALUES ('h', 'a', 1, 1);",
        )
        .unwrap();
        // An orphan written with foreign keys off (as the sqlite3 shell does by default) is
        // not the migration's doing and must not stop it.
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             INSERT INTO messages (task_id, kind, content, created_at) VALUES ('gone', 'log', '1', 1);
             PRAGMA foreign_keys = ON;",
        )
        .unwrap();
        assert_eq!(
            migrate(&conn).unwrap(),
            (6..=LATEST_VERSION).collect::<Vec<_>>()
        );
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT count(*) FROM tasks"), 2);
        assert_eq!(
            count("SELECT count(*) FROM messages"),
            2,
            "the rebuild cascaded into messages"
        );
        assert_eq!(count("SELECT count(*) FROM task_tokens"), 1);
        // The quotas migration counted what was there: one pending task of `u`, both payloads, one message.
        assert_eq!(
            count("SELECT unfinished * 1000 + payload_bytes FROM user_usage WHERE user_id = 'u'"),
            1008
        );
        assert_eq!(
            count("SELECT n FROM task_message_counts WHERE task_id = 'a'"),
            1
        );
        assert_eq!(
            count("PRAGMA foreign_keys"),
            1,
            "foreign keys were left off"
        );
        assert_eq!(
            count("SELECT completed FROM queue_depth WHERE queue = 'q'"),
            1
        );
        let reused = conn.execute(
            "INSERT INTO tasks (id, user_id, queue, kind, status, run_at, max_attempts, timeout_ms,
                                idempotency_key, created_at, updated_at)
             VALUES ('c', 'u', 'q', 'k', 'pending', 1, 1, 1, 'key', 1, 1)",
            [],
        );
        assert!(reused.is_err(), "a reused idempotency key was accepted");
        // Deleting a task still takes its messages with it.
        conn.execute("DELETE FROM tasks WHERE id = 'a'", [])
            .unwrap();
        assert_eq!(
            count("SELECT count(*) FROM messages WHERE task_id = 'a'"),
            0
        );
    }

    #[test]
    fn newer_schema_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("m.db")).unwrap();
        conn.execute_batch("PRAGMA user_version = 99; CREATE TABLE x(a);")
            .unwrap();
        let err = migrate(&conn).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { found: 99, .. }));
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 1);
    }
}
