#!/usr/bin/env bash
# Makes sure PostgreSQL, Redis and RabbitMQ are installed and running on
# this machine (Debian), installing them from Debian's packages when absent.
# Idempotent: services already up are left alone.
set -euo pipefail

log() { echo "services: $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
ensure_package() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "installing $2"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

wait_for() { # description seconds command...
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$what did not come up within ${seconds}s"
      return 1
    fi
    sleep 0.5
  done
}

port_open() { (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# PostgreSQL (trust auth on loopback for the postgres user, as on CI machines).
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  ensure_package pg_ctlcluster postgresql
  # A fresh install: let local clients in as postgres without a password,
  # as the project's scripts and tests expect (loopback only).
  for hba in /etc/postgresql/*/main/pg_hba.conf; do
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
  done
fi
ensure_package pg_isready postgresql-client
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for PostgreSQL 60 pg_isready -h 127.0.0.1 -p 5432 -q
fi

# Redis, without persistence (results and caches only).
ensure_package redis-server redis-server
if ! port_open 6379; then
  log "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis 30 port_open 6379
fi

# RabbitMQ.
ensure_package rabbitmq-server rabbitmq-server
if ! port_open 5672; then
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached
  wait_for RabbitMQ 120 port_open 5672
fi
log "PostgreSQL, Redis and RabbitMQ are up"
