#!/usr/bin/env python3
"""An enqueue's SQL alone, against the bench's floor: no spool code, no threads.

Applies spool's SQLite migrations to a fresh file, then writes one task per commit as
Spool::enqueue does with its default quotas (BEGIN IMMEDIATE; user_usage_get.sql, the quota
check's read, then task_insert.sql, task_changes_inserted.sql and user_usage_add.sql from
sql/sqlite/queries; COMMIT), with time-ordered ids as spool's, and the floor's one-row insert into its
two-b-tree table the same way. To see what each part costs: EXTRA runs SQL after the migrations
(for example EXTRA='DROP INDEX tasks_user;'), and TASK_ONLY=1 leaves out the change-log row and
the usage row.

    python3 benches/enqueue_sql.py {spool|floor} {full|normal} N [DIR]
"""
import glob
import os
import re
import sqlite3
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def uuid7():
    """A UUID v7 (milliseconds first, then random bits), as spool and the Rust floor use."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def query(name):
    with open(os.path.join(ROOT, f"sql/sqlite/queries/{name}.sql")) as fh:
        return re.sub(r"^--.*$", "", fh.read(), flags=re.M)


def main():
    mode, sync, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    where = sys.argv[4] if len(sys.argv) > 4 else None
    with tempfile.TemporaryDirectory(dir=where) as d:
        c = sqlite3.connect(os.path.join(d, "t.db"), isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={sync}")
        if mode == "floor":
            c.execute(
                "CREATE TABLE t (id TEXT PRIMARY KEY, queue TEXT, kind TEXT, payload TEXT,"
                " status TEXT, priority INTEGER, run_at INTEGER, created_at INTEGER)"
            )
            sql = "INSERT INTO t VALUES (?, 'q', 'spool.noop', '{\"i\":1}', 'pending', 0, ?, ?)"

            def args(i):
                return (uuid7(), i, i)

        else:
            for f in sorted(glob.glob(os.path.join(ROOT, "sql/sqlite/migrations/*.sql"))):
                with open(f) as fh:
                    c.executescript(fh.read())
            c.executescript(os.environ.get("EXTRA", ""))
            names = ["task_insert"]
            if not os.environ.get("TASK_ONLY"):
                names = ["user_usage_get", "task_insert", "task_changes_inserted",
                         "user_usage_add"]
            statements = [query(n) for n in names]
            payload = '{"n":1}'

            def args(i):
                task = dict(id=uuid7(), user_id="u1", queue="default",
                            kind="spool.noop", payload=payload, priority=0, run_at=i,
                            max_attempts=3, timeout_ms=3600000, idempotency_key=None,
                            request_hash=None, now=i, concurrency_key=None)
                parts = {"user_usage_get": dict(user_id="u1"), "task_insert": task,
                         "task_changes_inserted": dict(task_id=task["id"], now=i),
                         "user_usage_add": dict(user_id="u1", tasks=1, bytes=len(payload))}
                return [parts[n] for n in names]

        t = time.perf_counter()
        for i in range(n):
            c.execute("BEGIN IMMEDIATE")
            if mode == "floor":
                c.execute(sql, args(i))
            else:
                for st, a in zip(statements, args(i)):
                    c.execute(st, a).fetchall()
            c.execute("COMMIT")
        el = time.perf_counter() - t
        c.close()
    print(f"{mode} synchronous={sync}: {n / el:.0f} rows/s, {el / n * 1e6:.1f} us a commit")


if __name__ == "__main__":
    main()
