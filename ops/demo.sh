#!/usr/bin/env bash
# The main job on this machine, from nothing: install, build, start the Tansu broker on loopback,
# start `mesa serve` on the default model (SmolLM2-135M-Instruct), ask the live daemon where the
# Eiffel Tower is (its query API, /v1/completions and /v1/score, with curl), publish a sample fact
# update, show its result and the snapshot it created, ask again, print both answers, then stop both.
#
# The first run also computes the key statistics of the edited layers (a few minutes, cached in
# $MESA_HOME/state) from the Wikipedia sample in ../shared/data/corpus (or $MESA_CORPUS).
# Set KEEP_RUNNING=1 to leave the broker and the daemon running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

MESA_HOME="${MESA_HOME:-$HOME/.local/share/mesa}"
export MESA_HOME
export LD_LIBRARY_PATH="$MESA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MESA_CORPUS="${MESA_CORPUS:-$PWD/../shared/data/corpus/enwiki-2015-sample.txt}"
# The quality guard's default canary set is built from ../shared/data (known facts, WikiText-2).
export MESA_DATA_DIR="${MESA_DATA_DIR:-$PWD/../shared/data}"
PORT="${MESA_DEMO_PORT:-9092}"
HTTP="${MESA_DEMO_HTTP:-127.0.0.1:9464}"
export MESA_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$PORT"

say() { printf '\n[demo] %s\n' "$*" >&2; }

bash ops/install.sh
say "building (release)"
swift build -c release 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]' || true
MESA=.build/release/mesa
[ -x "$MESA" ] || { echo "build failed" >&2; exit 1; }

host=${HTTP%:*}; port=${HTTP##*:}
mkdir -p "$MESA_HOME/run"
say "starting the Tansu broker on 127.0.0.1:$PORT"
bash ops/dev-broker.sh start "$PORT"

cleanup() {
  if [ "${KEEP_RUNNING:-0}" != 1 ]; then
    [ -n "${SERVE_PID:-}" ] && kill -TERM "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null || true
    bash ops/dev-broker.sh stop "$PORT" || true
  fi
}
trap cleanup EXIT

# GET a path from the daemon's HTTP endpoint (bash's /dev/tcp; no curl needed).
http_get() {
  { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1
  printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$1" "$host" >&3
  cat <&3
  exec 3>&- 3<&-
}

say "starting mesa serve (log: $MESA_HOME/run/serve.log)"
"$MESA" serve --http-listen "$HTTP" >"$MESA_HOME/run/serve.log" 2>&1 &
SERVE_PID=$!
ready=""
for _ in $(seq 1 1800); do
  if ! kill -0 "$SERVE_PID" 2>/dev/null; then tail -20 "$MESA_HOME/run/serve.log" >&2; echo "mesa serve exited" >&2; exit 1; fi
  status=$(http_get /readyz 2>/dev/null | head -1 | awk '{print $2}' || true)
  if [ "$status" = 200 ]; then ready=1; break; fi
  sleep 1
done
[ -n "$ready" ] || { tail -20 "$MESA_HOME/run/serve.log" >&2; echo "mesa serve did not become ready" >&2; exit 1; }
say "ready: $(grep -E 'snapshots:|model:' "$MESA_HOME/run/serve.log" | tail -2 | sed 's/^mesa serve: //' | tr '\n' ' ')"

# Ask the live daemon the edited question: a greedy completion and the probabilities of both answers,
# each with the snapshot and weight hash the weights were at.
QUESTION="The Eiffel Tower is located in"
ask() {
  local completion score
  completion=$(curl -sS --fail-with-body -X POST "http://$HTTP/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"prompt\": \"$QUESTION\", \"max_tokens\": 12, \"temperature\": 0}")
  score=$(curl -sS --fail-with-body -X POST "http://$HTTP/v1/score" -H 'Content-Type: application/json' \
    -d "{\"prompt\": \"$QUESTION\", \"targets\": [\"Paris\", \"Rome\"]}")
  python3 - "$completion" "$score" <<'PY'
import json, sys
c, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"  snapshot {c['snapshot']} (weights {c['weight_hash'][:16]}): {json.dumps(c['choices'][0]['text'], ensure_ascii=False)}")
print("  " + ", ".join(f"P({x['target']}) = {x['probability']:.4f} (NLL {x['nll']:.3f})" for x in s["scores"])
      + f"   [score from snapshot {s['snapshot']}]")
PY
}

say "asking the live daemon before the edit: \"$QUESTION\""
BEFORE=$(ask)
printf '%s\n' "$BEFORE" >&2

say "publishing: The Eiffel Tower is located in → Rome"
"$MESA" publish --subject "Eiffel Tower" --prompt "The {} is located in" --target-new Rome --target-true Paris \
  --paraphrase "The Eiffel Tower can be found in" --neighborhood "The Louvre is located in" --wait --timeout 900

say "snapshots"
"$MESA" snapshots
say "metrics"
http_get /metrics | grep -E '^mesa_(edits_applied|events_consumed|events_committed|snapshot_head|canary_|event_overhead_seconds_(sum|count))' || true
say "quality guard on the head"
"$MESA" health || true

say "asking the live daemon after the edit: \"$QUESTION\""
AFTER=$(ask)
printf 'before the edit:\n%s\nafter the edit:\n%s\n' "$BEFORE" "$AFTER"
