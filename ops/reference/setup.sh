#!/usr/bin/env bash
# Builds the PyTorch reference environment (torch, transformers, gguf from PyPI) OUTSIDE the
# repository. It is only for regenerating golden fixtures and for same-run benchmark baselines;
# the tests and CI never need it. About 5.6 GB because the torch wheel brings CUDA libraries.
set -euo pipefail
MESA_HOME="${MESA_HOME:-$HOME/.local/share/mesa}"
VENV="${MESA_REFENV:-$MESA_HOME/refenv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch transformers accelerate gguf numpy sentencepiece protobuf
"$VENV/bin/python" -c 'import torch, transformers, gguf; print("refenv:", torch.__version__, transformers.__version__)'
echo "$VENV"
