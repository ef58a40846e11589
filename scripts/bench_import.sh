#!/usr/bin/env bash
# Benchmark of `notify-api import-python`: builds a Python platform database
# of N accounts and M message records (tests/python/legacy_platform.py bulk:
# Fernet passwords, hashed keys), imports it into a fresh database with the
# release binary, then imports again (nothing to change); prints the figures.
#   scripts/bench_import.sh [--accounts 10000] [--messages 100000]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
accounts=10000
messages=100000
while [ $# -gt 0 ]; do
  case "$1" in
    --accounts) accounts=$2; shift 2 ;;
    --messages) messages=$2; shift 2 ;;
    *) echo "usage: $0 [--accounts N] [--messages M]" >&2; exit 2 ;;
  esac
done
bash scripts/services.sh
python=$(bash scripts/python-venv.sh)
cargo build --release -p notify-api --bins --quiet

stamp=$(date +%s)
python_db="notify_test_${stamp}_bench_python"
ours_db="notify_test_${stamp}_bench_ours"
psql_admin() { psql -h 127.0.0.1 -U postgres -d postgres -qAtc "$1"; }
cleanup() {
  psql_admin "DROP DATABASE IF EXISTS $python_db WITH (FORCE)" || true
  psql_admin "DROP DATABASE IF EXISTS $ours_db WITH (FORCE)" || true
}
report=$(mktemp)
trap 'cleanup; rm -f "$report"' EXIT
psql_admin "CREATE DATABASE $python_db"
psql_admin "CREATE DATABASE $ours_db"

fernet_key=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=
base="postgres://postgres@127.0.0.1:5432"
echo "building the Python platform's database: $accounts accounts, $messages messages"
"$python" tests/python/legacy_platform.py bulk --database-url "$base/$python_db?sslmode=disable" \
  --fernet-key "$fernet_key" --accounts "$accounts" --messages "$messages"

run_import() {
  env -i PATH="$PATH" ENV=development DATABASE_URL="$base/$ours_db?sslmode=disable" \
    DB_POOL_SIZE=4 REDIS_URL=redis://127.0.0.1:6379/0 \
    CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
    JWT_SECRET_KEY=bench-jwt-secret-0123456789abcdef0123456789 \
    ENCRYPTION_KEY=dGhpcyBpcyBhIDMyIGJ5dGUga2V5IGZvciB0ZXN0cyE= \
    PYTHON_ENCRYPTION_KEY="$fernet_key" \
    target/release/notify-api import-python --from "$base/$python_db?sslmode=disable" \
    --messages-since-days 30 --json
}
summary() {
  "$python" - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s, a, m = r["seconds"], r["accounts"], r["messages"]
rows = a["imported"] + a["updated"] + a["unchanged"]
done = m["imported"] + m["unchanged"]
print("  accounts: %s in %.2f s (%.0f rows/s)" % (a, s["accounts"], rows / max(s["accounts"], 1e-9)))
print("  keys:     %s in %.2f s" % (r["keys"], s["keys"]))
print("  quota:    carried for %d accounts" % r["quota_carried"])
print("  messages: %s in %.2f s (%.0f rows/s)" % (m, s["messages"], done / max(s["messages"], 1e-9)))
PY
}
for pass in "first import" "second import (nothing to change)"; do
  echo "$pass:"
  start=$(date +%s%N)
  run_import >"$report"
  summary "$report"
  echo "  wall: $(( ($(date +%s%N) - start) / 1000000 )) ms"
done
