#!/usr/bin/env bash
# Backs up the platform's PostgreSQL database: pg_dump in custom format,
# gzip-compressed, verified (readable archive listing table data) before it
# is kept, then backups older than the retention are deleted.
#
#   scripts/backup_database.sh [--compose] [--dir DIR] [--keep-days N]
#
#   --compose     dump from the compose "postgres" service (docker compose exec)
#   --dir         where backups go (BACKUP_DIR, default ./backups)
#   --keep-days   retention in days (KEEP_DAYS, default 7)
# Host mode dumps DATABASE_URL (environment, then .env); needs pg_dump and
# pg_restore of the server's major version. Files: notify_db_YYYYmmdd_HHMMSS.dump.gz
# Cron: 0 2 * * * /opt/notify/scripts/backup_database.sh --compose >> /var/log/notify-backup.log 2>&1
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/ops-common.sh"

use_compose=0
backup_dir=${BACKUP_DIR:-$ops_root/backups}
keep_days=${KEEP_DAYS:-7}
while [ $# -gt 0 ]; do
  case "$1" in
    --compose) use_compose=1 ;;
    --dir) backup_dir=$2; shift ;;
    --keep-days) keep_days=$2; shift ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[[ "$keep_days" =~ ^[0-9]+$ ]] || die "--keep-days must be a whole number of days"

dump() {
  if [ "$use_compose" -eq 1 ]; then
    # -Z0: the archive is compressed once, by gzip. Variables expand in the container.
    # shellcheck disable=SC2016
    compose exec -T postgres sh -c 'pg_dump --format=custom -Z0 --no-owner -U "$POSTGRES_USER" "$POSTGRES_DB"'
  else
    pg_dump --format=custom -Z0 --no-owner --dbname="$DATABASE_URL"
  fi
}

list_archive() { # reads the archive on stdin
  if [ "$use_compose" -eq 1 ]; then
    compose exec -T postgres pg_restore --list
  else
    pg_restore --list
  fi
}

[ "$use_compose" -eq 1 ] || { load_env; [ -n "${DATABASE_URL:-}" ] || die "DATABASE_URL is not set"; }
mkdir -p "$backup_dir"
name="notify_db_$(date +%Y%m%d_%H%M%S).dump.gz"
partial="$backup_dir/.$name.partial"
trap 'rm -f "$partial"' EXIT

log "dumping to $backup_dir/$name"
dump | gzip -6 >"$partial"

# Verify: the gzip stream is intact and pg_restore can read the archive's
# table of contents, which lists the data of our tables.
gzip -t "$partial" || die "backup failed verification: corrupt gzip"
toc=$(gunzip -c "$partial" | list_archive) || die "backup failed verification: pg_restore cannot read it"
grep -q "TABLE DATA public email_accounts" <<<"$toc" ||
  die "backup failed verification: no email_accounts data in the archive"
mv "$partial" "$backup_dir/$name"
trap - EXIT
log "backup verified: $backup_dir/$name ($(du -h "$backup_dir/$name" | cut -f1))"

# Retention: whole days by modification time.
find "$backup_dir" -maxdepth 1 -type f -name 'notify_db_*.dump.gz' -mmin +$((keep_days * 1440)) -print -delete |
  while read -r old; do log "deleted old backup $old"; done
echo "$backup_dir/$name"
