//! The schema migrations, applied in order and recorded in `PRAGMA user_version`.

use super::StoreError;
use rusqlite::Connection;

/// Every migration: its version and SQL. Versions are contiguous from 1.
pub(crate) const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        include_str!("../../../sql/sqlite/migrations/0001_init.sql"),
    ),
    (
        2,
        include_str!("../../../sql/sqlite/migrations/0002_task_tokens.sql"),
    ),
    (
        3,
        include_str!("../../../sql/sqlite/migrations/0003_health.sql"),
    ),
    (
        4,
        include_str!("../../../sql/sqlite/migrations/0004_queue_status_index.sql"),
    ),
    (
        5,
        include_str!("../../../sql/sqlite/migrations/0005_prune_index.sql"),
    ),
    (
        6,
        include_str!("../../../sql/sqlite/migrations/0006_lean_tasks.sql"),
    ),
    (
        7,
        include_str!("../../../sql/sqlite/migrations/0007_portable_views.sql"),
    ),
    (
        8,
        include_str!("../../../sql/sqlite/migrations/0008_users_by_id.sql"),
    ),
    (
        9,
        include_str!("../../../sql/sqlite/migrations/0009_quotas.sql"),
    ),
    (
        10,
        include_str!("../../../sql/sqlite/migrations/0010_task_changes.sql"),
    ),
    (
        11,
        include_str!("../../../sql/sqlite/migrations/0011_interactive.sql"),
    ),
    (
        12,
        include_str!("../../../sql/sqlite/migrations/0012_admission.sql"),
    ),
    (
        13,
        include_str!("../../../sql/sqlite/migrations/0013_stream_tokens_task.sql"),
    ),
    (
        14,
        include_str!("../../../sql/sqlite/migrations/0014_insert_bookkeeping.sql"),
    ),
    (
        15,
        include_str!("../../../sql/sqlite/migrations/0015_parked.sql"),
    ),
    (
        16,
        include_str!("../../../sql/sqlite/migrations/0016_inbox_claimed.sql"),
    ),
];

/// The schema version this build of spool writes.
pub const LATEST_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The schema version recorded in the database.
pub(crate) fn current_version(conn: &Connection) -> Result<u32, StoreError> {
    let v: i64 = conn
        .prepare_cached("PRAGMA user_version")?
        .query_row([], |r| r.get(0))?;
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
                return Err(StoreError::Migration(format!(
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

    /// The restore drill reads a file an older spool wrote (before 0015 added `tasks.parked`,
    /// which its queries read now) and the same file migrated, a task parked, alike.
    #[test]
    fn the_drill_reads_a_file_from_before_parked_tasks_and_after() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("m.db")).unwrap();
        for (v, sql) in &MIGRATIONS[..14] {
            conn.execute_batch(sql).unwrap();
            conn.execute_batch(&format!("PRAGMA user_version = {v}"))
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO tasks (id, user_id, queue, kind, status, run_at, max_attempts,
                                timeout_ms, created_at, updated_at)
             VALUES ('a', 'u', 'q', 'k', 'pending', 1, 1, 1000, 10, 700),
                    ('b', 'u', 'q', 'k', 'pending', 1, 1, 1000, 10, 20);",
        )
        .unwrap();
        let before = crate::drill::snapshot(&conn).unwrap();
        assert_eq!(before.schema_version, 14);
        assert_eq!(before.tasks_by_status.get("pending"), Some(&2));
        assert_eq!(before.newest_change_at, Some(700));
        migrate(&conn).unwrap();
        conn.execute("UPDATE tasks SET parked = 1 WHERE id = 'a'", [])
            .unwrap();
        let after = crate::drill::snapshot(&conn).unwrap();
        assert_eq!(after.schema_version, i64::from(LATEST_VERSION));
        assert_eq!(after.tasks_by_status, before.tasks_by_status);
        assert_eq!(after.newest_change_at, Some(700), "from the parked task");
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
        // The users migration replaces the task tokens (they now name their claim); none survive it.
        assert_eq!(count("SELECT count(*) FROM task_tokens"), 0);
        // The quotas migration counted what was there, by owner id: one pending task of `u`,
        // both payloads, one message.
        assert_eq!(
            count(
                "SELECT unfinished * 1000 + payload_bytes FROM user_usage
                 WHERE user_id = (SELECT CAST(id AS TEXT) FROM users WHERE name = 'u')"
            ),
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
             VALUES ('c', (SELECT user_id FROM tasks WHERE id = 'a'), 'q', 'k', 'pending', 1, 1, 1,
                     'key', 1, 1)",
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
    fn users_by_id_gives_each_name_one_user_and_splits_a_non_admin_token_off_the_admin() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("m.db")).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        for (v, sql) in &MIGRATIONS[..7] {
            conn.execute_batch(sql).unwrap();
            conn.execute_batch(&format!("PRAGMA user_version = {v}"))
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO users (name, token_hash, is_admin, created_at) VALUES
                ('admin', 'h-admin', 1, 1), ('alice', 'h-a1', 0, 2), ('alice', 'h-a2', 0, 3),
                ('admin', 'h-fake-admin', 0, 4);
             INSERT INTO tasks (id, user_id, queue, kind, status, run_at, max_attempts,
                                timeout_ms, created_at, updated_at)
             VALUES ('t-admin', 'admin', 'q', 'k', 'pending', 1, 1, 1, 1, 1),
                    ('t-alice', 'alice', 'q', 'k', 'pending', 1, 1, 1, 1, 1),
                    ('t-bob', 'bob', 'q', 'k', 'pending', 1, 1, 1, 1, 1);",
        )
        .unwrap();
        assert_eq!(
            migrate(&conn).unwrap(),
            (8..=LATEST_VERSION).collect::<Vec<_>>()
        );
        let owner = |hash: &str| -> (String, bool) {
            conn.query_row(
                "SELECT u.name, u.is_admin FROM tokens t JOIN users u ON u.id = t.user_id
                 WHERE t.token_hash = ?",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        assert_eq!(owner("h-admin"), ("admin".into(), true));
        assert_eq!(owner("h-a1"), ("alice".into(), false));
        assert_eq!(owner("h-a1"), owner("h-a2"));
        assert_eq!(owner("h-fake-admin"), ("admin (non-admin)".into(), false));
        let task_owner = |id: &str| -> String {
            conn.query_row(
                "SELECT u.name FROM tasks t JOIN users u ON u.id = t.user_id WHERE t.id = ?",
                [id],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(task_owner("t-admin"), "admin");
        assert_eq!(task_owner("t-alice"), "alice");
        assert_eq!(
            task_owner("t-bob"),
            "bob",
            "an owner without a token got a user"
        );
        let view: String = conn
            .query_row(
                "SELECT user FROM task_overview WHERE id = 't-alice'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(view, "alice");
        // One token user per name from now on.
        let again = conn.execute(
            "INSERT INTO users (name, issuer, is_admin, created_at) VALUES ('alice', NULL, 0, 9)",
            [],
        );
        assert!(again.is_err(), "a second user named alice was accepted");
        // A JWT user of the same name is another user.
        conn.execute(
            "INSERT INTO users (name, issuer, is_admin, created_at) VALUES ('alice', 'https://idp', 0, 9)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn task_tokens_go_when_their_attempt_ends() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("m.db")).unwrap();
        migrate(&conn).unwrap();
        conn.execute_batch(
            "INSERT INTO tasks (id, user_id, queue, kind, status, run_at, attempts, max_attempts,
                                timeout_ms, lease_owner, lease_expires_at, started_at,
                                created_at, updated_at)
             VALUES ('t', '1', 'q', 'k', 'running', 1, 1, 3, 1, 'w', 99, 5, 1, 1);
             INSERT INTO task_tokens VALUES ('h', 't', 1, 'w', 5, 5);",
        )
        .unwrap();
        let count = || -> i64 {
            conn.query_row("SELECT count(*) FROM task_tokens", [], |r| r.get(0))
                .unwrap()
        };
        conn.execute("UPDATE tasks SET lease_expires_at = 200 WHERE id = 't'", [])
            .unwrap();
        assert_eq!(count(), 1, "a heartbeat ended the attempt's token");
        conn.execute(
            "UPDATE tasks SET status = 'pending', lease_owner = NULL WHERE id = 't'",
            [],
        )
        .unwrap();
        assert_eq!(count(), 0, "the token outlived its attempt");
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
