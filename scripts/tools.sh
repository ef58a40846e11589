#!/usr/bin/env bash
# Installs the operations tools the deployment tests run for real (nginx,
# Chromium and chromedriver for the console's browser tests,
# promtool, shellcheck, docker-compose, and curl, redis-cli, pg_dump for the
# operations scripts) and Dovecot (the bounce tests' IMAP server) from
# Debian's packages when absent,
# and enables RabbitMQ's management and Prometheus plugins. Idempotent and
# quick when everything is already there. Services are not started by the
# packages (the tests run nginx on their own loopback ports).
set -euo pipefail

log() { echo "tools: $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
need() { # command package
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
need nginx nginx
need promtool prometheus
need shellcheck shellcheck
need openssl openssl
need curl curl
need redis-cli redis-tools
need pg_dump postgresql-client
# The console's browser tests: headless Chromium driven over WebDriver.
need chromium chromium
need chromedriver chromium-driver
# The bounce tests' IMAP server: each test starts a Dovecot of its own.
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  missing+=(docker-compose)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get update"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  log "installing ${missing[*]}"
  # --no-install-recommends: only the tools, not their recommended daemons.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# RabbitMQ plugins (on the running node): the management API on 15672 the
# tests read queues from, and the Prometheus endpoint on 15692.
port_open() { (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_open 15672 || ! port_open 15692; then
  log "enabling rabbitmq_management and rabbitmq_prometheus"
  as_root rabbitmq-plugins enable --quiet rabbitmq_management rabbitmq_prometheus >/dev/null
  deadline=$((SECONDS + 60))
  until port_open 15672 && port_open 15692; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "RabbitMQ management/prometheus ports did not open within 60s"
      exit 1
    fi
    sleep 0.5
  done
fi
log "nginx, promtool, shellcheck, docker-compose, dovecot, chromium and RabbitMQ plugins ready"
