#!/usr/bin/env bash
# Restores a backup made by backup_database.sh, replacing the current
# contents of the database (creating the database when it does not exist).
# Stop api, worker and scheduler first (docker compose stop api worker scheduler).
#
#   scripts/restore_database.sh [--compose] [--yes] FILE
#
#   --compose   restore into the compose "postgres" service
#   --yes       do not ask for confirmation
# Host mode restores into DATABASE_URL (environment, then .env).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/ops-common.sh"

use_compose=0
assume_yes=0
file=
while [ $# -gt 0 ]; do
  case "$1" in
    --compose) use_compose=1 ;;
    --yes | -y) assume_yes=1 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) file=$1 ;;
  esac
  shift
done
[ -n "$file" ] || die "usage: $0 [--compose] [--yes] FILE"
[ -f "$file" ] || die "$file: no such file"

psql_c() { # sql: runs against the target database
  if [ "$use_compose" -eq 1 ]; then
    # shellcheck disable=SC2016 # expanded by the container's shell
    compose exec -T postgres sh -c 'psql -v ON_ERROR_STOP=1 -Atq -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$1"' sh "$1"
  else
    psql -v ON_ERROR_STOP=1 -Atq -d "$DATABASE_URL" -c "$1"
  fi
}

# Verify the archive before touching anything.
gzip -t "$file" || die "$file is not a valid gzip file"
if [ "$use_compose" -eq 1 ]; then
  gunzip -c "$file" | compose exec -T postgres pg_restore --list >/dev/null || die "$file is not a pg_dump archive"
else
  load_env
  [ -n "${DATABASE_URL:-}" ] || die "DATABASE_URL is not set"
  gunzip -c "$file" | pg_restore --list >/dev/null || die "$file is not a pg_dump archive"
fi

if [ "$use_compose" -eq 1 ]; then
  target="compose service postgres"
else
  # Without query string and password, for display.
  target=$(sed -E 's#//[^@/]*@#//#' <<<"${DATABASE_URL%%\?*}")
fi
if [ "$assume_yes" -ne 1 ]; then
  read -r -p "Replace the contents of $target with $file? [y/N] " answer
  [[ "$answer" =~ ^[Yy] ]] || die "cancelled"
fi

if [ "$use_compose" -eq 1 ]; then
  # shellcheck disable=SC2016 # expanded by the container's shell
  gunzip -c "$file" | compose exec -T postgres sh -c \
    'pg_restore --clean --if-exists --no-owner --single-transaction --exit-on-error -U "$POSTGRES_USER" -d "$POSTGRES_DB"'
else
  # The database may be gone (restoring after a loss): create it first,
  # through the server's maintenance database.
  db_name=$(sed -E 's#^[a-z]+://[^/]*/([^?]*).*#\1#' <<<"$DATABASE_URL")
  maintenance=$(sed -E 's#^([a-z]+://[^/]*)/[^?]*#\1/postgres#' <<<"$DATABASE_URL")
  [[ "$db_name" =~ ^[A-Za-z0-9_]+$ ]] || die "cannot tell the database name from DATABASE_URL"
  if [ -z "$(psql -Atq -d "$maintenance" -c "SELECT 1 FROM pg_database WHERE datname = '$db_name'")" ]; then
    log "creating database $db_name"
    psql -v ON_ERROR_STOP=1 -q -d "$maintenance" -c "CREATE DATABASE \"$db_name\""
  fi
  gunzip -c "$file" | pg_restore --clean --if-exists --no-owner --single-transaction --exit-on-error -d "$DATABASE_URL"
fi

# Verify: the schema is there and the tables answer.
migrations=$(psql_c "SELECT count(*) FROM refinery_schema_history") || die "restore verification failed: no schema history"
accounts=$(psql_c "SELECT count(*) FROM email_accounts") || die "restore verification failed: email_accounts"
messages=$(psql_c "SELECT count(*) FROM message_records") || die "restore verification failed: message_records"
log "restored $file into $target: $migrations migrations, $accounts email accounts, $messages messages"
