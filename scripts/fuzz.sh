#!/usr/bin/env bash
# Property-based fuzzing of every route of a running API from its own
# OpenAPI document, with schemathesis (pinned in tests/python/requirements.txt)
# and the checks and exclusions of tests/fuzz/schemathesis.toml.
#
#   scripts/fuzz.sh URL TOKEN [schemathesis run options]
#   scripts/fuzz.sh http://127.0.0.1:8000 "$TOKEN"                  # long run
#   FUZZ_MAX_EXAMPLES=5 scripts/fuzz.sh http://127.0.0.1:8000 "$TOKEN"
#
# FUZZ_MAX_EXAMPLES: test cases per operation and phase (default 200).
# The run is deterministic (the same requests every time, so CI is stable)
# unless FUZZ_SEED is set: then it draws its cases from that seed.
# FUZZ_REPORT_DIR: where to keep the event logs of the run.
# Prints schemathesis's report and the number of requests it made; exits
# non-zero on any finding. The e2e test hostile_input::* is the short run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: $0 URL TOKEN [schemathesis run options]" >&2
  exit 2
fi
url="${1%/}"
token="$2"
shift 2
python="$(bash "$root/scripts/python-venv.sh")"
# FUZZ_REPORT_DIR keeps schemathesis's event logs (every request and answer).
if [ -n "${FUZZ_REPORT_DIR:-}" ]; then
  report="$FUZZ_REPORT_DIR"
  mkdir -p "$report"
else
  report="$(mktemp -d)"
  trap 'rm -rf "$report"' EXIT
fi

export SCHEMATHESIS_HOOKS="$root/tests/fuzz/hooks.py"
if [ -n "${FUZZ_SEED:-}" ]; then
  generation=(--seed "$FUZZ_SEED")
else
  generation=(--generation-deterministic)
fi
run() {
  "$python" -m schemathesis.cli --config-file "$root/tests/fuzz/schemathesis.toml" \
    run "$url/openapi.json" --url "$url" \
    --header "Authorization: Bearer $token" \
    --max-examples "${FUZZ_MAX_EXAMPLES:-200}" "${generation[@]}" \
    "$@"
}

# Revoking keys goes last, on its own: ids read from earlier answers (the
# key list) reach it, and revoking the run's own key would leave every later
# request a 401.
revoke='/api/v1/admin/api-keys/{id}'
status=0
run --exclude-path "$revoke" --report ndjson --report-ndjson-path "$report/main.ndjson" \
  "$@" || status=$?
run --include-path "$revoke" --report ndjson --report-ndjson-path "$report/revoke.ndjson" \
  "$@" || status=$?

# Every request schemathesis sent is one interaction in its event logs.
"$python" "$root/tests/fuzz/count_requests.py" "$report/main.ndjson" "$report/revoke.ndjson"
exit "$status"
