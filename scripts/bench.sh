#!/usr/bin/env bash
# Benchmark: builds the release binaries and pushes messages through the
# real API, worker and a loopback SMTP sink; prints the figures.
#   scripts/bench.sh [--messages N] [--concurrency C] [--workers W] [--rate R]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/services.sh
cargo build --release --workspace --bins --quiet
exec target/release/notify-bench "$@"
