#!/usr/bin/env bash
# Sequential-editing experiments of the MEMIT family (alphaedit, encore, memit): resumable runs
# (journals under $MESA_HOME/runs/<method>-<split>-<name>), one BLAS thread each at nice 10
# so that two run side by side on two cores. Tune on counterfact-train (SPLIT=train, the default);
# SPLIT=val runs a setting chosen on train once, for the report.
# Usage: [MESA_BIN=.build/release/mesa] [METHOD=alphaedit] [SPLIT=val] [START=3000] [LIMIT=1000] [CHECKPOINTS="100 500 1000"] [BATCH=100] \
#          bash ops/experiments/run.sh NAME...
# START: the first record (default 0); runs from another start are journalled and reported as
# NAME-from<START>.
# NAME: "baseline" for deploy/hparams/<method>/SmolLM2-135M-Instruct.json, or a file name under
# ops/experiments/<method>/ without .json. Reports go to ops/experiments/<method>/results/NAME
# (train) or results/<split>/NAME.
# MESA_BIN: a copy of the binary, so that a rebuild does not pull it from under a long run.
# A journal is the stream, not its length: the same command with a larger LIMIT continues it (the
# 10,000-edit protocol in steps of LIMIT=1000, 2000, 5000, 10000 across sessions), and a smaller one is
# refused. A journal of an older run.sh (named with -<LIMIT>) is continued under that LIMIT.
set -euo pipefail
cd "$(dirname "$0")/../.."
MESA_HOME="${MESA_HOME:-$HOME/.local/share/mesa}"
export MESA_HOME LD_LIBRARY_PATH="$MESA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MESA_CORPUS="${MESA_CORPUS:-$PWD/../shared/data/corpus/enwiki-2015-sample.txt}"
METHOD="${METHOD:-alphaedit}"
MESA_BIN="${MESA_BIN:-.build/release/mesa}"
LIMIT="${LIMIT:-200}"
SPLIT="${SPLIT:-train}"
BATCH="${BATCH:-1}"
START="${START:-0}"
results="ops/experiments/$METHOD/results"
[ "$SPLIT" = train ] || results="$results/$SPLIT"
suffix=""
[ "$BATCH" = 1 ] || suffix="-b$BATCH"
[ "$START" = 0 ] || suffix="$suffix-from$START"
for name in "$@"; do
  hp="deploy/hparams/$METHOD/SmolLM2-135M-Instruct.json"
  [ "$name" = baseline ] || hp="ops/experiments/$METHOD/$name.json"
  journal="$MESA_HOME/runs/$METHOD-$SPLIT-$name$suffix"
  [ -d "$journal" ] || [ ! -d "$journal-$LIMIT" ] || journal="$journal-$LIMIT"
  nice -n 10 "$MESA_BIN" eval --method "$METHOD" --hparams "$hp" --threads 1 --batch "$BATCH" \
    --data "../shared/data/counterfact/counterfact-$SPLIT.json" --start "$START" --limit "$LIMIT" \
    --sequential --checkpoints ${CHECKPOINTS:-50 100 "$LIMIT"} \
    --resume "$journal" --out "$results/$name$suffix"
done
