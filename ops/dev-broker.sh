#!/usr/bin/env bash
# A Tansu broker (Kafka-compatible, in-memory storage) in the background on loopback, for local runs.
#
#   ops/dev-broker.sh start [port]    start it (default port 9092); waits until it accepts connections
#   ops/dev-broker.sh stop [port]     SIGTERM, then SIGKILL after 2 s
#   ops/dev-broker.sh status [port]   running or not (exit status 0 or 3)
#
# PID and log: $MESA_HOME/run/tansu-<port>.pid and .log. Memory storage: a restart loses all topics,
# records and committed offsets. Tansu creates a missing topic when a producer asks for its metadata;
# create topics explicitly (mesa or any Kafka admin client) to choose their partition counts.
# Clients need librdkafka >= 2.1 (ops/install.sh puts one in $MESA_HOME/lib; see README).
set -euo pipefail

MESA_HOME="${MESA_HOME:-$HOME/.local/share/mesa}"
cmd="${1:-status}"
port="${2:-9092}"
tansu="$MESA_HOME/bin/tansu"
run="$MESA_HOME/run"
pidfile="$run/tansu-$port.pid"
logfile="$run/tansu-$port.log"

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  printf '%s' "$pid"
}

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

case "$cmd" in
  start)
    [ -x "$tansu" ] || { echo "no Tansu at $tansu: run ops/install.sh" >&2; exit 1; }
    if pid=$(running_pid); then echo "tansu already running on 127.0.0.1:$port (pid $pid)"; exit 0; fi
    if accepts; then echo "port $port is in use by another process" >&2; exit 1; fi
    mkdir -p "$run"
    nohup "$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
      >>"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 100); do
      if accepts; then echo "tansu running on 127.0.0.1:$port (pid $(cat "$pidfile"), log $logfile)"; exit 0; fi
      kill -0 "$(cat "$pidfile")" 2>/dev/null || break
      sleep 0.1
    done
    echo "tansu did not start; see $logfile" >&2
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
    exit 1
    ;;
  stop)
    if ! pid=$(running_pid); then echo "tansu is not running on port $port"; rm -f "$pidfile"; exit 0; fi
    kill -TERM "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$pidfile"
    echo "tansu stopped (pid $pid)"
    ;;
  status)
    if pid=$(running_pid); then echo "tansu running on 127.0.0.1:$port (pid $pid)"; else echo "tansu is not running on port $port"; exit 3; fi
    ;;
  *)
    echo "usage: $0 {start|stop|status} [port]" >&2
    exit 2
    ;;
esac
