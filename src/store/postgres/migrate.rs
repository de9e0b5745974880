//! The PostgreSQL schema versions, recorded in `spool_schema_versions` and applied in one
//! transaction under an advisory lock, so several processes starting at once apply each step
//! once; a database made by a newer spool is refused untouched.

use super::pg_err;
use crate::store::{Result, StoreError};

/// Every migration: its version and SQL. Versions are contiguous from 1.
pub(crate) const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        include_str!("../../../sql/postgres/migrations/0001_init.sql"),
    ),
    (
        2,
        include_str!("../../../sql/postgres/migrations/0002_views.sql"),
    ),
    (
        3,
        include_str!("../../../sql/postgres/migrations/0003_interactive.sql"),
    ),
    (
        4,
        include_str!("../../../sql/postgres/migrations/0004_admission.sql"),
    ),
    (
        5,
        include_str!("../../../sql/postgres/migrations/0005_change_log_unlocked.sql"),
    ),
    (
        6,
        include_str!("../../../sql/postgres/migrations/0006_usage_add_plpgsql.sql"),
    ),
    (
        7,
        include_str!("../../../sql/postgres/migrations/0007_inbox_last.sql"),
    ),
];

/// The PostgreSQL schema version this build of spool writes.
pub const LATEST_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The advisory lock key migrations run under ("spool-migrate").
const MIGRATE_LOCK: i64 = 7_306_996_425_318_424_320;

/// The version recorded in the database (0: none yet).
pub(crate) async fn current_version(c: &tokio_postgres::Client) -> Result<u32> {
    let row = c
        .query_one(
            "SELECT to_regclass('spool_schema_versions') IS NOT NULL",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let exists: bool = row.try_get(0).map_err(pg_err)?;
    if !exists {
        return Ok(0);
    }
    let row = c
        .query_one(
            "SELECT coalesce(max(version), 0)::int8 FROM spool_schema_versions",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let v: i64 = row.try_get(0).map_err(pg_err)?;
    Ok(u32::try_from(v.max(0)).unwrap_or(u32::MAX))
}

/// Applies every pending migration. Returns the versions applied.
///
/// # Errors
/// [`StoreError::SchemaTooNew`] when the database was made by a newer spool (nothing is
/// touched); a database error otherwise (nothing of the failed run is kept).
pub(crate) async fn migrate(c: &mut tokio_postgres::Client) -> Result<Vec<u32>> {
    let found = current_version(c).await?;
    if found > LATEST_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: LATEST_VERSION,
        });
    }
    if found == LATEST_VERSION {
        return Ok(Vec::new());
    }
    let tx = c.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS spool_schema_versions (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(pg_err)?;
    // Read again under the lock: another process may have migrated meanwhile.
    let now = {
        let row = tx
            .query_one(
                "SELECT coalesce(max(version), 0)::int8 FROM spool_schema_versions",
                &[],
            )
            .await
            .map_err(pg_err)?;
        let v: i64 = row.try_get(0).map_err(pg_err)?;
        u32::try_from(v.max(0)).unwrap_or(u32::MAX)
    };
    if now > LATEST_VERSION {
        // Dropping the transaction rolls it back: nothing was changed.
        return Err(StoreError::SchemaTooNew {
            found: now,
            known: LATEST_VERSION,
        });
    }
    let mut applied = Vec::new();
    for &(version, sql) in MIGRATIONS {
        if version <= now {
            continue;
        }
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Migration(format!(
                "PostgreSQL schema step {version} failed: {}",
                super::describe_err(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO spool_schema_versions (version) VALUES ($1)",
            &[&(version as i32)],
        )
        .await
        .map_err(pg_err)?;
        applied.push(version);
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(applied)
}
