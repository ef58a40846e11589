#!/usr/bin/env bash
# The soak run: steady sends through the real API for M minutes while
# faults are injected (kill -9 and SIGTERM of workers, kill -9 of the
# scheduler leader, RabbitMQ/PostgreSQL/Redis connection loss through
# proxies the run owns, SMTP 4xx bursts and dropped connections, an
# operator purge). Prints the fault schedule as it goes and, at the end,
# accepted / delivered / lost / duplicated, the final states and the API
# and worker memory at start and end. The test suite runs a 2-minute
# version of the same test.
#
#   scripts/soak.sh                      # 30 minutes at 40 sends/s
#   scripts/soak.sh --minutes 5 --rate 100
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

minutes=30
rate=40
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "soak: unknown argument $1" >&2; exit 2 ;;
  esac
done

bash scripts/services.sh
cargo build --workspace --all-targets --quiet
SOAK_MINUTES="$minutes" SOAK_RATE="$rate" E2E_QUIET=1 \
  cargo nextest run -p tests-e2e --no-capture --test-threads 1 \
  'soak::soak_with_faults' 2>&1 | grep --line-buffered -E '^soak|PASS|FAIL|panicked|assert'
