#!/usr/bin/env bash
# Checks every service of the platform; prints one line per check and exits
# non-zero when any fails (usable from cron or a monitoring agent).
#
#   scripts/health_check.sh             # processes on this host (scripts/dev.sh layout)
#   scripts/health_check.sh --compose   # every compose service's health status
#
# Host mode targets (environment, then .env; defaults as scripts/dev.sh):
#   API_URL                 http://127.0.0.1:$API_PORT    /health and /health/ready
#   WORKER_METRICS_URL      http://127.0.0.1:9091         worker's /health
#   SCHEDULER_METRICS_URL   http://127.0.0.1:9092         scheduler's /health
#   DATABASE_URL, REDIS_URL                               pg_isready, redis PING
#   RABBITMQ_MANAGEMENT_URL http://guest:guest@127.0.0.1:15672  alarms health check
#   NGINX_URL               (unset: skipped)              nginx's /health (TLS not verified)
set -uo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/ops-common.sh"

failures=0
report() { # name status detail
  printf '%-10s %-4s %s\n' "$1" "$2" "$3"
  [ "$2" = ok ] || failures=$((failures + 1))
}

http_ok() { # url [curl options]
  local url=$1; shift
  curl -fsS -o /dev/null --max-time 5 "$@" "$url" 2>&1
}

if [ "${1:-}" = "--compose" ]; then
  services=$(compose ps --services) || die "docker compose ps failed"
  [ -n "$services" ] || die "no compose services are running"
  for service in $services; do
    ids=$(compose ps -q "$service")
    [ -n "$ids" ] || { report "$service" FAIL "no container"; continue; }
    for id in $ids; do
      status=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck{{end}}' "$id" 2>&1)
      case "$status" in
        "running healthy" | "running no-healthcheck") report "$service" ok "${id:0:12} $status" ;;
        *) report "$service" FAIL "${id:0:12} $status" ;;
      esac
    done
  done
else
  load_env
  api=${API_URL:-http://127.0.0.1:${API_PORT:-8000}}
  if out=$(http_ok "$api/health"); then report api ok "$api/health"; else report api FAIL "$api/health: $out"; fi
  if out=$(curl -sS --max-time 10 "$api/health/ready" 2>&1) && grep -q '"status":"ready"' <<<"$out"; then
    report ready ok "$api/health/ready"
  else
    report ready FAIL "$api/health/ready: $out"
  fi
  worker=${WORKER_METRICS_URL:-http://127.0.0.1:9091}
  if out=$(http_ok "$worker/health"); then report worker ok "$worker/health"; else report worker FAIL "$worker/health: $out"; fi
  scheduler=${SCHEDULER_METRICS_URL:-http://127.0.0.1:9092}
  if out=$(http_ok "$scheduler/health"); then report scheduler ok "$scheduler/health"; else report scheduler FAIL "$scheduler/health: $out"; fi

  if out=$(pg_isready -d "${DATABASE_URL:-postgres://127.0.0.1:5432/postgres}" -t 5 2>&1); then
    report postgres ok "$out"
  else
    report postgres FAIL "$out"
  fi
  if out=$(redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379/0}" ping 2>&1) && [ "$out" = PONG ]; then
    report redis ok PONG
  else
    report redis FAIL "$out"
  fi
  mgmt=${RABBITMQ_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15672}
  if out=$(http_ok "$mgmt/api/health/checks/alarms"); then
    report rabbitmq ok "${mgmt#*@}/api/health/checks/alarms"
  else
    report rabbitmq FAIL "${mgmt#*@}: $out"
  fi
  if [ -n "${NGINX_URL:-}" ]; then
    if out=$(http_ok "$NGINX_URL/health" -k); then report nginx ok "$NGINX_URL/health"; else report nginx FAIL "$NGINX_URL/health: $out"; fi
  fi
fi

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all checks passed"
