#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside (never touching) the
# main RabbitMQ on 5672: how the platform is run and tested against quorum
# queues replicated across nodes.
#
#   scripts/rabbitmq-cluster.sh start         # start whatever is not running, join, wait (idempotent)
#   scripts/rabbitmq-cluster.sh stop          # stop the three nodes
#   scripts/rabbitmq-cluster.sh status        # which nodes run, and the cluster they see
#   scripts/rabbitmq-cluster.sh urls          # the broker URL list for RABBITMQ_URL
#   scripts/rabbitmq-cluster.sh stop-node N   # stop node N (1-3) gracefully; `start` brings it back
#   scripts/rabbitmq-cluster.sh kill-node N   # kill -9 node N's VM
#   scripts/rabbitmq-cluster.sh freeze-node N # SIGSTOP node N's VM (a hung host); `start` resumes it
#   scripts/rabbitmq-cluster.sh ctl N ARGS... # rabbitmqctl against node N (its cookie and ports)
#
# Node N is notify-rmqN@localhost: AMQP on 127.0.0.1:568N, Erlang distribution
# on 2568N, no management plugin. State (data, logs, config, the cluster's own
# Erlang cookie) lives in $NOTIFY_RMQ_CLUSTER_DIR (default
# /tmp/notify-rabbitmq-cluster): node names and ports belong to the machine,
# not to a checkout, so every checkout shares one cluster. Concurrent callers
# (parallel test processes) are serialised by a lock file.
set -euo pipefail

base=${NOTIFY_RMQ_CLUSTER_DIR:-/tmp/notify-rabbitmq-cluster}
sbin=${RABBITMQ_SBIN:-/usr/lib/rabbitmq/bin}
nodes=(1 2 3)
seed=1

log() { echo "rabbitmq-cluster: $*" >&2; }

node_name() { echo "notify-rmq$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }

check_index() {
  case "${1:-}" in
    1 | 2 | 3) ;;
    *) log "node must be 1, 2 or 3, got '${1:-}'"; exit 2 ;;
  esac
}

# The environment of node $1's server and of the CLI tools aimed at it. HOME
# points at the cluster's own cookie; RABBITMQ_CONF_ENV_FILE replaces the
# system rabbitmq-env.conf, whose NODENAME belongs to the main node.
node_env() {
  local i=$1 dir="$base/node$1"
  export HOME="$base"
  export RABBITMQ_CONF_ENV_FILE="$base/rabbitmq-env.conf"
  export RABBITMQ_NODENAME
  RABBITMQ_NODENAME=$(node_name "$i")
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT
  RABBITMQ_NODE_PORT=$(amqp_port "$i")
  export RABBITMQ_DIST_PORT
  RABBITMQ_DIST_PORT=$(dist_port "$i")
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
  # A VM that fails to boot writes its crash dump here, not into the
  # caller's working directory (the repository).
  export ERL_CRASH_DUMP="$dir/log/erl_crash.dump"
}

ctl() { # index args...
  local i=$1; shift
  (node_env "$i" && "$sbin/rabbitmqctl" -n "$(node_name "$i")" "$@")
}

running() { # index: the node answers (rabbit application up)
  local i=$1
  (node_env "$i" && "$sbin/rabbitmq-diagnostics" -q -n "$(node_name "$i")" check_running -t 10) >/dev/null 2>&1
}

vm_pid() { # index: the pid of node's Erlang VM, when it runs
  local pid
  # A node that answers says which process it is.
  if pid=$(ctl "$1" -q eval 'os:getpid().' 2>/dev/null | tr -d '"') && [ -n "$pid" ]; then
    echo "$pid"
    return 0
  fi
  # One that does not (still booting, or hung) is found by its pid file,
  # which is trusted only for a VM started with this node's name (3.10
  # sets the name at run time, so it is in the environment, not the
  # command line): a stale pid file never names another process.
  local pidfile="$base/node$1/rabbitmq.pid"
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -r "/proc/$pid/environ" ] || return 1
  tr '\0' '\n' <"/proc/$pid/environ" | grep -qx -- "RABBITMQ_NODENAME=$(node_name "$1")" || return 1
  echo "$pid"
}

wait_gone() { # pid seconds
  local deadline=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      return 1
    fi
    sleep 0.2
  done
}

prepare() {
  mkdir -p "$base"
  if [ ! -s "$base/.erlang.cookie" ]; then
    # The cluster's own cookie: the CLI tools and the nodes read it from HOME.
    od -An -N20 -tx1 /dev/urandom | tr -d ' \n' >"$base/.erlang.cookie"
    chmod 400 "$base/.erlang.cookie"
  fi
  cat >"$base/rabbitmq-env.conf" <<'EOF'
# The cluster's nodes: distribution on loopback only, like the main node.
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
  # No plugins: no management listeners to collide with the main node's.
  echo '[].' >"$base/enabled_plugins"
  local i
  for i in "${nodes[@]}"; do
    mkdir -p "$base/node$i/mnesia" "$base/node$i/log"
    cat >"$base/node$i/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$i")
cluster_name = notify-cluster
# A node cut off from the others (a hung host, a network split) stops
# serving clients until it sees a majority again, and then rejoins by itself:
# clients move to the majority side, and the split heals without an operator.
cluster_partition_handling = pause_minority
# Three nodes and the main RabbitMQ share one machine.
vm_memory_high_watermark.relative = 0.1
disk_free_limit.absolute = 100MB
EOF
  done
}

launch() { # index
  local i=$1
  log "starting $(node_name "$i") (AMQP 127.0.0.1:$(amqp_port "$i"))"
  # fd 9 is the lock: the node must not inherit (and so hold) it.
  (node_env "$i" && "$sbin/rabbitmq-server" -detached) >>"$base/node$i/log/start.out" 2>&1 9>&-
}

member_of_seed() { # index: the node's cluster includes the seed node
  local out
  out=$(ctl "$1" -q eval "lists:member('$(node_name "$seed")', rabbit_nodes:all()).") || return 1
  [ "$out" = "true" ]
}

await_node() { # index deadline (in $SECONDS)
  # await_startup fails at once while the VM has not registered its name
  # yet: ask again until the deadline.
  until ctl "$1" -q await_startup --timeout 30 >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$2" ]; then
      log "$(node_name "$1") did not start in time; see $base/node$1/log"
      exit 1
    fi
    sleep 1
  done
}

# Restarts the nodes outside the largest group of nodes that see each other:
# the minority side of a partition that has not healed by itself (a node
# frozen for longer than net_ticktime, say).
heal() {
  local i view count best="" best_count=0
  for i in "${nodes[@]}"; do
    view=$(ctl "$i" -q -t 10 eval 'rabbit_nodes:all_running().' 2>/dev/null) || continue
    count=$(grep -o "notify-rmq" <<<"$view" | wc -l)
    if [ "$count" -gt "$best_count" ]; then
      best=$view
      best_count=$count
    fi
  done
  for i in "${nodes[@]}"; do
    if ! grep -q "'$(node_name "$i")'" <<<"$best"; then
      log "$(node_name "$i") is cut off from the other nodes; restarting it"
      stop_node "$i"
      launch "$i"
      await_node "$i" $((SECONDS + 180))
    fi
  done
}

start() {
  prepare
  thaw_nodes
  local i started=()
  # Launch every missing node before waiting for any: a node that was
  # clustered waits at boot for its peers' tables, so nodes that were all
  # stopped must come back together.
  for i in "${nodes[@]}"; do
    if ! running "$i"; then
      if pid=$(vm_pid "$i"); then
        # A VM that is up but not answering is still booting: just wait for it.
        log "$(node_name "$i") (pid $pid) is booting"
      else
        launch "$i"
      fi
      started+=("$i")
    fi
  done
  local deadline=$((SECONDS + 180))
  for i in "${started[@]}"; do
    await_node "$i" "$deadline"
  done
  for i in "${nodes[@]}"; do
    [ "$i" = "$seed" ] && continue
    if ! member_of_seed "$i"; then
      log "joining $(node_name "$i") to $(node_name "$seed")"
      {
        ctl "$i" -q stop_app
        ctl "$i" -q reset
        ctl "$i" -q join_cluster "$(node_name "$seed")"
        ctl "$i" -q start_app
      } >>"$base/node$i/log/join.out" 2>&1
    fi
  done
  if ! ctl "$seed" -q await_online_nodes "${#nodes[@]}" --timeout 60 >/dev/null 2>&1; then
    heal
    ctl "$seed" -q await_online_nodes "${#nodes[@]}" --timeout 180 >/dev/null
  fi
  log "up: $(urls)"
}

stop_node() { # index
  local i=$1 pid
  pid=$(vm_pid "$i") || return 0
  log "stopping $(node_name "$i") (pid $pid)"
  # Clients get connection.close and the cluster sees the node leave; the
  # VM then exits.
  ctl "$i" -q stop >/dev/null 2>&1 || true
  if ! wait_gone "$pid" 60; then
    log "$(node_name "$i") did not exit within 60 s; killing pid $pid"
    kill -9 "$pid" 2>/dev/null || true
    wait_gone "$pid" 10
  fi
}

kill_node() { # index
  local pid
  if pid=$(vm_pid "$1"); then
    log "killing $(node_name "$1") (pid $pid)"
    kill -9 "$pid"
    wait_gone "$pid" 10
  fi
}

freeze_node() { # index
  local pid
  if pid=$(vm_pid "$1"); then
    log "freezing $(node_name "$1") (pid $pid)"
    kill -STOP "$pid"
  fi
}

thaw_nodes() {
  local i pidfile pid
  for i in "${nodes[@]}"; do
    pidfile="$base/node$i/rabbitmq.pid"
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    # A frozen node answers nothing, so it is found by its pid file alone.
    if [ -r "/proc/$pid/environ" ] &&
      tr '\0' '\n' <"/proc/$pid/environ" | grep -qx -- "RABBITMQ_NODENAME=$(node_name "$i")" &&
      grep -q '^State:.*stopped' "/proc/$pid/status"; then
      log "resuming frozen $(node_name "$i") (pid $pid)"
      kill -CONT "$pid"
    fi
  done
}

urls() {
  local i out=()
  for i in "${nodes[@]}"; do
    out+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$i")/%2f")
  done
  (IFS=,; echo "${out[*]}")
}

status() {
  local i any=""
  for i in "${nodes[@]}"; do
    if running "$i"; then
      echo "$(node_name "$i"): running, AMQP 127.0.0.1:$(amqp_port "$i")"
      any=$i
    else
      echo "$(node_name "$i"): stopped"
    fi
  done
  if [ -n "$any" ]; then
    ctl "$any" -q cluster_status
  fi
}

locked() { # command...: one caller at a time
  mkdir -p "$base"
  exec 9>"$base/.lock"
  if ! flock -w 300 9; then
    log "another caller held $base/.lock for 5 minutes"
    exit 1
  fi
  "$@"
}

case "${1:-}" in
  start) locked start ;;
  stop)
    for i in 3 2 1; do locked stop_node "$i"; done
    ;;
  status) status ;;
  urls) urls ;;
  stop-node) check_index "${2:-}"; locked stop_node "$2" ;;
  kill-node) check_index "${2:-}"; locked kill_node "$2" ;;
  freeze-node) check_index "${2:-}"; locked freeze_node "$2" ;;
  ctl) check_index "${2:-}"; i=$2; shift 2; ctl "$i" "$@" ;;
  *)
    echo "usage: $0 start|stop|status|urls|stop-node N|kill-node N|freeze-node N|ctl N ARGS..." >&2
    exit 2
    ;;
esac
