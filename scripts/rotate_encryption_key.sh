#!/usr/bin/env bash
# Rotates the key that encrypts stored SMTP passwords, without downtime.
#
#   scripts/rotate_encryption_key.sh new-key      # prints a fresh key to paste into .env
#   scripts/rotate_encryption_key.sh [--compose]  # re-encrypts every password under the current key
#
# Procedure:
#   1. In .env: move the current key into ENCRYPTION_PREVIOUS_KEYS as
#      "<old id>:<old key>", and set ENCRYPTION_KEY to a new key and
#      ENCRYPTION_KEY_ID to a new id (e.g. k1 -> k2).
#   2. Restart api, worker and scheduler (docker compose up -d): they now
#      write with the new key and still read values under the old one.
#   3. Run this script: it re-encrypts, row by row, every password not yet
#      under the new key (safe to re-run; it fails if a password cannot be opened).
#   4. Remove the old key from ENCRYPTION_PREVIOUS_KEYS and restart again.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/ops-common.sh"

use_compose=0
case "${1:-}" in
  new-key)
    echo "ENCRYPTION_KEY=$(openssl rand -base64 32)"
    exit 0
    ;;
  --compose) use_compose=1 ;;
  -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
  '') ;;
  *) die "unknown argument $1 (see --help)" ;;
esac

if [ "$use_compose" -eq 1 ]; then
  compose exec -T api notify-api rotate-encryption-key
else
  load_env
  [ -n "${ENCRYPTION_PREVIOUS_KEYS:-}" ] ||
    log "note: ENCRYPTION_PREVIOUS_KEYS is empty; only passwords already under ${ENCRYPTION_KEY_ID:-k1} can be read"
  "$(notify_api_bin)" rotate-encryption-key
fi
log "done. Once every api, worker and scheduler runs with the new key, remove the old key from ENCRYPTION_PREVIOUS_KEYS and restart them."
