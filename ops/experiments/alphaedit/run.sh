#!/usr/bin/env bash
# AlphaEdit α/cut experiments: sequential runs, resumable (journals under $MESA_HOME/runs/), one BLAS
# thread each so that two run side by side on two cores. Tune on counterfact-train (SPLIT=train, the
# default); SPLIT=val runs a setting chosen on train once, for the report.
# Usage: [SPLIT=val] [LIMIT=1000] [CHECKPOINTS="100 500 1000"] bash ops/experiments/alphaedit/run.sh NAME... (NAME: "baseline" for
# the deployed file, or a file name here without .json). Reports go to ops/experiments/alphaedit/results/
# (train) or results/val/ (val).
set -euo pipefail
cd "$(dirname "$0")/../../.."
MESA_HOME="${MESA_HOME:-$HOME/.local/share/mesa}"
export MESA_HOME LD_LIBRARY_PATH="$MESA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MESA_CORPUS="${MESA_CORPUS:-$PWD/../shared/data/corpus/enwiki-2015-sample.txt}"
LIMIT="${LIMIT:-200}"
SPLIT="${SPLIT:-train}"
results=ops/experiments/alphaedit/results
[ "$SPLIT" = train ] || results="$results/$SPLIT"
for name in "$@"; do
  hp=deploy/hparams/alphaedit/SmolLM2-135M-Instruct.json
  [ "$name" = baseline ] || hp="ops/experiments/alphaedit/$name.json"
  nice -n 10 .build/release/mesa eval --method alphaedit --hparams "$hp" --threads 1 \
    --data ../shared/data/counterfact/counterfact-$SPLIT.json --start 0 --limit "$LIMIT" \
    --sequential --checkpoints ${CHECKPOINTS:-50 100 "$LIMIT"} --resume "$MESA_HOME/runs/alphaedit-$SPLIT-$name-$LIMIT" \
    --out "$results/$name"
done
