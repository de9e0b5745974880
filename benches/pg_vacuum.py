#!/usr/bin/env python3
"""The tasks table of a PostgreSQL spool under steady churn: autovacuum's defaults against the
settings the README recommends (README, "Retention and autovacuum").

Starts its own PostgreSQL 15 (initdb into a temporary directory, a free loopback port, fsync and
synchronous_commit on, autovacuum at its defaults) and, for each setting in turn, a fresh
database holding RETAINED completed tasks (history that retention keeps, as a week of tasks
would), then `spool serve` (no worker slots) and two `spool work` (64 slots each) while one client
enqueues RATE spool.noop tasks a second, in batches of RATE/2 every half second, for MINUTES.
Every 30 s it prints what a claim pays for the table's dead rows: the buffers one claim-shaped
probe reads (the claim index walked to the first pending task), with the table's dead tuples,
the heap and claim index sizes, autovacuum's runs so far, and the tasks completed a second.

    python3 benches/pg_vacuum.py BINARY [MINUTES] [RATE] [RETAINED]

Run it as root (the server runs as the `postgres` user) on a quiet machine; it removes what it
made when it ends.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PG_BIN = "/usr/lib/postgresql/15/bin"

# The settings compared: (name, per-table settings of tasks, cluster settings).
SETTINGS = [
    ("defaults", None, None),
    (
        "tasks table",
        "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20000, "
        "autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000, "
        "autovacuum_vacuum_cost_delay = 0",
        None,
    ),
    (
        "tasks table + naptime 10s",
        "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20000, "
        "autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000, "
        "autovacuum_vacuum_cost_delay = 0",
        "autovacuum_naptime = '10s'",
    ),
]

PROBE = (
    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id FROM tasks WHERE queue = 'default' "
    "AND status = 'pending' ORDER BY priority DESC, run_at, id LIMIT 1"
)

STATS = (
    "SELECT n_dead_tup, autovacuum_count, pg_relation_size('tasks'), "
    "pg_relation_size('tasks_claim'), "
    "(SELECT count(*) FROM tasks WHERE status = 'pending'), "
    "(SELECT count(*) FROM tasks WHERE status = 'completed') "
    "FROM pg_stat_user_tables WHERE relname = 'tasks'"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(args, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--"] + args, check=True, **kw)


class Pg:
    def __init__(self, root):
        self.dir = os.path.join(root, "pg")
        os.mkdir(self.dir)
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        as_postgres([f"{PG_BIN}/initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U",
                     "postgres", "--no-sync"], stdout=subprocess.DEVNULL)
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on "
                "-c synchronous_commit=on -c max_connections=300 -c shared_buffers=256MB")
        as_postgres([f"{PG_BIN}/pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/log",
                     "-o", opts, "-w", "start"], stdout=subprocess.DEVNULL)

    def url(self, db):
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def sql(self, db, text):
        out = subprocess.run([f"{PG_BIN}/psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
                              "-d", self.url(db), "-c", text],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self):
        as_postgres([f"{PG_BIN}/pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "stop"],
                    stdout=subprocess.DEVNULL)


def spool(binary, args, cfg, env=None):
    e = dict(os.environ)
    e.update(env or {})
    e["RUST_LOG"] = "warn"
    return subprocess.Popen([binary] + args + ["--config", cfg], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=e, text=True)


def preload(pg, db, retained):
    # Completed tasks of the last six days, written without the triggers (no change log or
    # usage for history that is only kept), then vacuumed and analysed like a settled table.
    now_ms = int(time.time() * 1000)
    pg.sql(db, f"""
        SET session_replication_role = replica;
        INSERT INTO tasks (id, user_id, queue, kind, payload, status, priority, run_at,
                           attempts, max_attempts, timeout_ms, created_at, started_at,
                           completed_at, updated_at)
        SELECT gen_random_uuid(), 'history', 'default', 'spool.noop', '{{}}', 'completed', 0,
               t, 1, 1, 60000, t, t, t, t
        FROM (SELECT {now_ms} - (g::bigint * 518400000 / {retained}) AS t
              FROM generate_series(1, {retained}) g) s""")
    pg.sql(db, "VACUUM ANALYZE tasks")
    pg.sql(db, "CHECKPOINT")


def run(binary, pg, root, n, name, table, cluster, minutes, rate, retained):
    db = f"churn_{n}"
    pg.sql("postgres", f"CREATE DATABASE {db}")
    d = os.path.join(root, db)
    os.mkdir(d)
    cfg = os.path.join(d, "spool.toml")
    with open(cfg, "w") as f:
        f.write(f'listen = "127.0.0.1:0"\ndata_dir = "{d}/data"\n[database]\n'
                f'url = "{pg.url(db)}"\n[worker]\nconcurrency = 0\n[limits]\n'
                "requests_per_second = 0\npending_tasks_per_user = 1000000000\n"
                "payload_bytes_per_user = 1000000000000\n[retention]\ninterval_ms = 10000\n")
    subprocess.run([binary, "migrate", "--config", cfg], check=True, stdout=subprocess.DEVNULL)
    reset = []
    preload(pg, db, retained)
    if table:
        pg.sql(db, f"ALTER TABLE tasks SET ({table})")
    if cluster:
        pg.sql(db, f"ALTER SYSTEM SET {cluster}")
        pg.sql(db, "SELECT pg_reload_conf()")
        reset.append(cluster.split("=")[0].strip())
    serve = spool(binary, ["serve"], cfg)
    workers = []
    try:
        measure(binary, pg, db, d, cfg, serve, workers, name, minutes, rate, retained)
    finally:
        for p in [serve] + workers:
            p.send_signal(signal.SIGTERM)
        for p in [serve] + workers:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for s in reset:
            pg.sql(db, f"ALTER SYSTEM RESET {s}")
            pg.sql(db, "SELECT pg_reload_conf()")
    pg.sql("postgres", f"DROP DATABASE {db}")


def measure(binary, pg, db, d, cfg, serve, workers, name, minutes, rate, retained):
    base = None
    for line in serve.stdout:
        if line.startswith("listening on http://"):
            base = line.strip()[len("listening on http://"):]
            break
    if base is None:
        sys.exit("spool serve did not start")
    token = open(f"{d}/data/admin.token").read().strip()
    workers.extend(spool(binary, ["work"], cfg, {"SPOOL_WORKER_CONCURRENCY": "64"})
                   for _ in range(2))
    host, port = base.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    batch = json.dumps({"tasks": [{"kind": "spool.noop"}] * (rate // 2)})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    print(f"\n## {name}  ({retained:,} completed tasks kept, {rate:,} tasks/s for {minutes} min)")
    print(f"{'t s':>5} {'done/s':>7} {'pending':>8} {'dead tuples':>12} {'heap MB':>8} "
          f"{'claim idx kB':>12} {'autovacuums':>11} {'probe buffers':>13}")
    start = time.monotonic()
    next_batch, next_sample = start, start + 30
    done_before, t_before = int(pg.sql(db, STATS).split("|")[5]), start
    probes = []
    while time.monotonic() < start + minutes * 60:
        now = time.monotonic()
        if now >= next_batch:
            conn.request("POST", "/v1/tasks/batch", batch, headers)
            r = conn.getresponse()
            r.read()
            if r.status != 201:
                sys.exit(f"enqueue answered {r.status}")
            next_batch += 0.5
        if now >= next_sample:
            dead, vacs, heap, idx, pending, done = map(int, pg.sql(db, STATS).split("|"))
            plan = json.loads(pg.sql(db, PROBE))[0]["Plan"]
            buffers = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
            probes.append(buffers)
            rate_done = (done - done_before) / (now - t_before)
            done_before, t_before = done, now
            print(f"{now - start:5.0f} {rate_done:7.0f} {pending:8d} {dead:12d} "
                  f"{heap / 2**20:8.0f} {idx / 1024:12.0f} {vacs:11d} {buffers:13d}",
                  flush=True)
            next_sample += 30
        time.sleep(max(0.0, min(next_batch, next_sample) - time.monotonic()))
    later = probes[len(probes) // 2:]
    if later:
        print(f"probe buffers in the second half: median {sorted(later)[len(later) // 2]}, "
              f"max {max(later)}")


if __name__ == "__main__":
    binary = os.path.abspath(sys.argv[1])
    minutes = float(sys.argv[2]) if len(sys.argv) > 2 else 5
    rate = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    retained = int(sys.argv[4]) if len(sys.argv) > 4 else 2_000_000
    if not 2 <= rate <= 2000:
        sys.exit("RATE must be 2..2000: a batch a half second, of at most 1,000 tasks")
    root = tempfile.mkdtemp(prefix="spool-vacuum-")
    os.chmod(root, 0o711)  # the server's user goes through it to its own directory
    pg = Pg(root)
    try:
        for n, (name, table, cluster) in enumerate(SETTINGS):
            run(binary, pg, root, n, name, table, cluster, minutes, rate, retained)
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
