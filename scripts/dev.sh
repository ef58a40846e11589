#!/usr/bin/env bash
# Sets up and starts the whole platform on this machine:
#   PostgreSQL, Redis and RabbitMQ (installed if absent), a local SMTP
#   capture server (smtp-sink, port 2525, mails saved under var/mail/),
#   notify-api (port 8000), notify-worker and notify-scheduler; then, in
#   development, prints an admin key and adds an SMTP account for the
#   capture server (scripts/dev-first-run.sh), ready to send.
#
#   scripts/dev.sh          start (builds first)
#   scripts/dev.sh stop     stop what this script started
#   scripts/dev.sh status   show what runs
# Logs: var/log/<name>.log. PIDs: var/run/<name>.pid.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mkdir -p var/log var/run var/mail

names=(smtp-sink notify-api notify-worker notify-scheduler)

running() { [ -f "var/run/$1.pid" ] && kill -0 "$(cat "var/run/$1.pid")" 2>/dev/null; }

stop() {
  for name in "${names[@]}"; do
    if running "$name"; then
      kill "$(cat "var/run/$name.pid")" && echo "stopped $name"
    fi
    rm -f "var/run/$name.pid"
  done
}

status() {
  for name in "${names[@]}"; do
    if running "$name"; then echo "$name: running (pid $(cat "var/run/$name.pid"))"; else echo "$name: stopped"; fi
  done
}

start_one() { # name command...
  local name=$1; shift
  if running "$name"; then echo "$name already running"; return; fi
  nohup "$@" >"var/log/$name.log" 2>&1 &
  echo $! >"var/run/$name.pid"
  echo "started $name (pid $!, log var/log/$name.log)"
}

case "${1:-start}" in
  stop) stop; exit 0 ;;
  status) status; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

bash scripts/services.sh
[ -f .env ] || { cp .env.example .env; echo "created .env from .env.example"; }
set -a
# shellcheck source=/dev/null # the operator's .env
. ./.env
set +a
db_name=$(echo "$DATABASE_URL" | sed -E 's#.*/([^/?]+)(\?.*)?$#\1#')
psql -h 127.0.0.1 -U postgres -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = '$db_name'" | grep -q 1 ||
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$db_name\""

cargo build --release --workspace --bins
bin=target/release
"$bin/notify-api" migrate
start_one smtp-sink "$bin/smtp-sink" --listen 127.0.0.1:2525 --dir var/mail
start_one notify-api "$bin/notify-api" serve
start_one notify-worker env METRICS_PORT="${WORKER_METRICS_PORT:-9091}" "$bin/notify-worker"
start_one notify-scheduler env METRICS_PORT="${SCHEDULER_METRICS_PORT:-9092}" "$bin/notify-scheduler"

deadline=$((SECONDS + 30))
until curl -fsS "http://127.0.0.1:${API_PORT:-8000}/health" >/dev/null 2>&1; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "notify-api did not answer; see var/log/notify-api.log" >&2; exit 1; }
  sleep 0.3
done
curl -fsS "http://127.0.0.1:${API_PORT:-8000}/health/ready"; echo
echo "platform is up: API http://127.0.0.1:${API_PORT:-8000} (docs at /docs), SMTP capture 127.0.0.1:2525 -> var/mail/"
# An admin key and the capture server's SMTP account (development only).
bash scripts/dev-first-run.sh
