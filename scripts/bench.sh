#!/usr/bin/env bash
# Benchmark: builds the release binaries and pushes messages through the
# real API, worker and a loopback SMTP sink; prints the figures.
#   scripts/bench.sh [--messages N] [--concurrency C] [--workers W] [--rate R] ...
#   scripts/bench.sh latency [flags]   # the latency scenario: 20 accounts × 10
#                                      # connections, 200 ms per message
#                                      # (bound 1,000 emails/s), 50,000 messages
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
preset=()
if [ "${1:-}" = latency ]; then
  shift
  preset=(--accounts 20 --account-connections 10 --smtp-latency 200 --messages 50000)
fi
bash scripts/services.sh
cargo build --release --workspace --bins --quiet
exec target/release/notify-bench "${preset[@]}" "$@"
