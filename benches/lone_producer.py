#!/usr/bin/env python3
"""A lone producer's sequential HTTP enqueues against any spool binary, old or new.

Starts BINARY serve on 127.0.0.1 with a fresh data dir (no worker slots), sends 200 unmeasured
POST /v1/tasks on one keep-alive connection, then N measured ones, and prints the rate with
each request's p50 and p99. Used to compare builds that predate `spool bench`'s own figure.

    python3 benches/lone_producer.py BINARY {full|normal} N [DIR]
"""
import os
import select
import socket
import subprocess
import sys
import tempfile
import time


def main():
    binary, sync, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    where = sys.argv[4] if len(sys.argv) > 4 else None
    with tempfile.TemporaryDirectory(dir=where) as d:
        cfg = os.path.join(d, "spool.toml")
        with open(cfg, "w") as f:
            f.write(
                f'listen = "127.0.0.1:0"\ndata_dir = "{d}/data"\n[database]\n'
                f'synchronous = "{sync}"\n[worker]\nconcurrency = 0\n[limits]\n'
                "requests_per_second = 0\npending_tasks_per_user = 1000000000\n"
            )
        p = subprocess.Popen([binary, "serve", "--config", cfg], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
        try:
            run(p, d, n, sync, binary)
        finally:
            p.terminate()
            p.wait(timeout=30)


def run(p, d, n, sync, binary):
    base = None
    # The server prints where it listens on its first lines; give it 30 s.
    ready, _, _ = select.select([p.stdout], [], [], 30)
    while ready:
        line = p.stdout.readline().decode()
        if not line:
            break
        if line.startswith("listening on "):
            base = line.strip()[len("listening on "):]
            break
        ready, _, _ = select.select([p.stdout], [], [], 30)
    if base is None:
        sys.exit("spool serve did not start")
    host, port = base.replace("http://", "").split(":")
    with open(f"{d}/data/admin.token") as f:
        tok = f.read().strip()
    body = b'{"kind": "spool.noop", "queue": "bench-one", "payload": {"n": 1}}'
    req = (f"POST /v1/tasks HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {tok}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    s = socket.create_connection((host, int(port)), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read():
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("the server closed the connection")
        return chunk

    def one():
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += read()
        head, rest = buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 201"):
            sys.exit(f"unexpected answer: {head[:100]!r}")
        length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n")
                      if l.lower().startswith(b"content-length"))
        while len(rest) < length:
            rest += read()

    for _ in range(200):
        one()
    took = []
    t = time.perf_counter()
    for _ in range(n):
        a = time.perf_counter()
        one()
        took.append(time.perf_counter() - a)
    el = time.perf_counter() - t
    took.sort()
    print(f"{os.path.basename(binary)} synchronous={sync}: {n / el:.0f}/s, "
          f"p50 {took[len(took) // 2] * 1e3:.2f} ms, p99 {took[int(len(took) * 0.99)] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
