#!/usr/bin/env bash
# Imports the Python platform's SMTP accounts, API keys, today's send counts
# and (optionally) recent message records. Safe to re-run. See README
# "Migrating from the Python platform" for the whole switch.
#
#   scripts/import_python.sh --dry-run                 # what would change; writes nothing
#   scripts/import_python.sh                           # import (accounts, keys, counts)
#   scripts/import_python.sh --messages-since-days 30  # also final message records
#   scripts/import_python.sh --quota-only              # last step: carry today's counts
#   scripts/import_python.sh --compose ...             # inside the running api container
#       (same as: docker compose exec api notify-api import-python ...)
# Reads PYTHON_DATABASE_URL (the Python platform's DATABASE_URL) and
# PYTHON_ENCRYPTION_KEY (its Fernet ENCRYPTION_KEY) from the environment,
# then .env; other options (--port-tls PORT=MODE, --json) are passed on.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/ops-common.sh"

split_compose_args 14 "$@"

if [ "$use_compose" -eq 1 ]; then
  # The container has .env; variables set only in this shell are passed on.
  pass=()
  for var in PYTHON_DATABASE_URL PYTHON_ENCRYPTION_KEY; do
    if [ -n "${!var:-}" ]; then pass+=(-e "$var"); fi
  done
  compose exec -T "${pass[@]}" api notify-api import-python "${args[@]}"
else
  load_env
  [ -n "${PYTHON_DATABASE_URL:-}" ] || die "set PYTHON_DATABASE_URL to the Python platform's DATABASE_URL"
  [ -n "${PYTHON_ENCRYPTION_KEY:-}" ] ||
    log "note: PYTHON_ENCRYPTION_KEY is not set; using ENCRYPTION_KEY as the Fernet key"
  "$(notify_api_bin)" import-python "${args[@]}"
fi
