#!/usr/bin/env bash
# Runs mesa's test suite: the fast suite by default (tiny models built on the fly, the JSON Schema
# test suite, and a real-model smoke test against golden fixtures). MESA_SLOW_TESTS=1 adds the slow
# tests. Needs ops/install.sh to have run once (C libraries and the default model).
set -euo pipefail
cd "$(dirname "$0")/.."

MESA_HOME="${MESA_HOME:-$HOME/.local/share/mesa}"
export MESA_HOME
# The librdkafka 2.x runtime that can talk to Tansu (see README); harmless for everything else.
export LD_LIBRARY_PATH="$MESA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
swift build --build-tests 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]' 
build=${PIPESTATUS[0]}
[ "$build" -eq 0 ] || { echo "build failed"; exit "$build"; }
swift test --skip-build --disable-xctest 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# A plain closing line, counted from Swift Testing's own summary.
summary=$(grep -E 'Test run with [0-9]+ tests?' "$log" | tail -1)
total=$(sed -nE 's/.*Test run with ([0-9]+) tests?.*/\1/p' <<<"$summary")
failed=$(grep -cE '^✘ Test .* failed' "$log" || true)
echo "tests: $(( ${total:-0} - failed )) passed, ${failed} failed"
exit "$status"
