#!/usr/bin/env bash
# The test command: starts (installing if absent) the services the tests
# need, builds the workspace once, and runs every test against the real
# PostgreSQL, RabbitMQ, Redis and loopback SMTP servers.
#
#   scripts/test.sh            # everything
#   scripts/test.sh quota      # only tests whose name matches
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/services.sh
# nginx, promtool, shellcheck, docker-compose and RabbitMQ's management and
# Prometheus plugins, which the deployment tests run for real.
bash scripts/tools.sh

# Test databases of interrupted runs (each test drops its own when it ends;
# the name carries its creation time, and only those older than two hours go).
cutoff=$(( $(date +%s) - 7200 ))
psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
  "SELECT datname FROM pg_database WHERE CASE WHEN datname ~ '^notify_test_[0-9]+_'
     THEN split_part(datname, '_', 3)::bigint < $cutoff ELSE false END" |
  while read -r db; do psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"; done

# The Python interoperability tests' virtualenv (pinned celery).
bash scripts/python-venv.sh >/dev/null

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --all-targets --quiet

export E2E_QUIET=1
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast -- "$@"
fi
