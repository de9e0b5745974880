//! The wrapper skips pcache1's truncates that could drop nothing, and forwards the ones that
//! must drop pages (a reader's cache after another connection wrote; a rolled-back transaction
//! that grew the file). One test in this binary:
//! the page cache can be chosen only before the process first uses SQLite.
#![allow(clippy::unwrap_used)]

use rusqlite::Connection;

fn open(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -32768;",
    )
    .unwrap();
    conn
}

/// Rows whose index keys land all over the index, so inserting them rebalances pages.
fn insert_scattered(conn: &Connection, from: u64, n: u64, tag: &str) {
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut st = conn
            .prepare_cached("INSERT INTO t (k, v) VALUES (?1, ?2)")
            .unwrap();
        for i in from..from + n {
            let k = format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            st.execute((k, format!("{tag}-{i}-{}", "x".repeat(64))))
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

#[test]
fn commits_after_a_rebalance_skip_the_scan_and_stale_pages_are_still_dropped() {
    spool_pcache::install().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let conn = open(&path);
    conn.execute_batch(
        "CREATE TABLE t (k TEXT NOT NULL, v TEXT NOT NULL); CREATE INDEX t_k ON t (k);",
    )
    .unwrap();

    // Commits that rebalance (and park pages on the lock page) end in skipped truncates.
    let before = spool_pcache::truncates_skipped();
    for batch in 0..20 {
        insert_scattered(&conn, batch * 1_000, 1_000, "kept");
    }
    assert!(
        spool_pcache::truncates_skipped() >= before + 20,
        "every commit's truncate found nothing above the end and was skipped: {} -> {}",
        before,
        spool_pcache::truncates_skipped()
    );

    // A transaction that grows the file and rolls back: its pages beyond the old end must go,
    // or a later transaction would read the rolled-back content when it allocates them again.
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    for i in 0..20_000u64 {
        conn.execute(
            "INSERT INTO t (k, v) VALUES (?1, ?2)",
            (format!("rolled-back-{i:08}"), "y".repeat(200)),
        )
        .unwrap();
    }
    let grown: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    assert!(
        grown > pages + 100,
        "the transaction grew the file: {pages} -> {grown}"
    );
    conn.execute_batch("ROLLBACK").unwrap();
    insert_scattered(&conn, 100_000, 20_000, "after");

    // Another connection that read the pages keeps them cached; when this one commits, the
    // reader's next transaction empties its cache (a truncate to 0), or it would read the old rows.
    let reader = open(&path);
    let sum = |c: &Connection| -> i64 {
        c.query_row("SELECT sum(length(v)) FROM t", [], |r| r.get(0))
            .unwrap()
    };
    let read_before = sum(&reader);
    conn.execute("UPDATE t SET v = v || 'zz' WHERE v LIKE 'after-%'", [])
        .unwrap();
    assert_eq!(sum(&reader), read_before + 2 * 20_000);

    for c in [&conn, &reader, &open(&path)] {
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let (n, rolled_back, after): (i64, i64, i64) = c
            .query_row(
                "SELECT count(*), sum(k LIKE 'rolled-back-%'), sum(v LIKE 'after-%zz') FROM t",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((n, rolled_back, after), (40_000, 0, 20_000));
    }
}
