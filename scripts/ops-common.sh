# Shared by the operations scripts (sourced, not run): .env loading,
# compose detection and the notify-api binary.
# shellcheck shell=bash

ops_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { echo "$(basename "$0"): $*" >&2; }
die() { log "$*"; exit 1; }

# Exports the variables of .env (or $NOTIFY_ENV_FILE) that the environment
# does not already set: explicit settings win, as in the binaries.
load_env() {
  local file=${NOTIFY_ENV_FILE:-$ops_root/.env} line key value
  [ -f "$file" ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in '' | '#'*) continue ;; esac
    key=${line%%=*}
    value=${line#*=}
    [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    # Strip one pair of surrounding quotes.
    if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then value=${BASH_REMATCH[1]}; fi
    if [ -z "${!key+x}" ]; then export "$key=$value"; fi
  done <"$file"
}

# `docker compose` (plugin) or `docker-compose` (standalone), run from the
# project directory so it finds docker-compose.yml and .env.
compose() {
  if docker compose version >/dev/null 2>&1; then
    (cd "$ops_root" && docker compose "$@")
  elif command -v docker-compose >/dev/null 2>&1; then
    (cd "$ops_root" && docker-compose "$@")
  else
    die "neither 'docker compose' nor 'docker-compose' is installed"
  fi
}

# The notify-api binary for host (non-compose) use.
notify_api_bin() {
  if [ -n "${NOTIFY_API_BIN:-}" ]; then echo "$NOTIFY_API_BIN"
  elif command -v notify-api >/dev/null 2>&1; then command -v notify-api
  elif [ -x "$ops_root/target/release/notify-api" ]; then echo "$ops_root/target/release/notify-api"
  elif [ -x "$ops_root/target/debug/notify-api" ]; then echo "$ops_root/target/debug/notify-api"
  else die "notify-api not found: build it (cargo build --release) or set NOTIFY_API_BIN"
  fi
}

# Splits the arguments of a script that passes them on to a notify-api
# command, on the host or (with --compose) in the api container: sets
# `use_compose` and `args`. -h/--help prints the script's lines 2 to
# $1 (its usage comment).
# shellcheck disable=SC2034 # use_compose and args are the sourcing script's
split_compose_args() {
  local help_end=$1 arg
  shift
  use_compose=0
  args=()
  for arg in "$@"; do
    case "$arg" in
      --compose) use_compose=1 ;;
      -h | --help) sed -n "2,${help_end}p" "$0"; exit 0 ;;
      *) args+=("$arg") ;;
    esac
  done
}
