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
            conn.execute_batch(sql)?;
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
        assert_eq!(migrate(&conn).unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(current_version(&conn).unwrap(), LATEST_VERSION);
        assert!(migrate(&conn).unwrap().is_empty());
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
