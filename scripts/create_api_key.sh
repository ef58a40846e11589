#!/usr/bin/env bash
# Creates an API key and prints its key and secret (the secret only once).
# Replaces the Python platform's scripts/create_api_key.py.
#
#   scripts/create_api_key.sh --name NAME [--description TEXT] [--admin]
#   scripts/create_api_key.sh --compose --name NAME ...   # inside the running api container
#       (same as: docker compose exec api notify-api create-api-key --name NAME ...)
# Host mode reads DATABASE_URL (and the rest) from the environment, then .env.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/ops-common.sh"

split_compose_args 9 "$@"
[ "${#args[@]}" -gt 0 ] || die "usage: $0 [--compose] --name NAME [--description TEXT] [--admin]"

if [ "$use_compose" -eq 1 ]; then
  compose exec -T api notify-api create-api-key "${args[@]}"
else
  load_env
  "$(notify_api_bin)" create-api-key "${args[@]}"
fi
