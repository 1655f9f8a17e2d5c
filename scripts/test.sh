#!/usr/bin/env bash
# The whole test run (CI's and the README's): system packages, a Python virtualenv for the
# interop tests, then configure + build + ctest with the cpu-release preset and, unless
# ADDITIVE_SKIP_SANITIZE=1, with the cpu-debug preset (ASan + UBSan; its test preset skips
# tests labelled `slow` and the packaging tests).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

stage() { printf '\n==== %s ====\n' "$*"; }

stage "system packages"
bash scripts/setup-deps.sh

stage "python virtualenv (.venv-test: numpy, safetensors)"
venv="$root/.venv-test"
python="$venv/bin/python"
if [ -x "$python" ] && "$python" -c 'import numpy, safetensors' 2>/dev/null; then
  echo "reusing $venv"
else
  # Debian's interpreter: python3-venv (from setup-deps.sh) is what makes `-m venv` work.
  base_python=/usr/bin/python3
  [ -x "$base_python" ] || base_python=$(command -v python3)
  "$base_python" -m venv --clear "$venv"
  "$python" -m pip install --quiet --disable-pip-version-check numpy safetensors
  "$python" -c 'import numpy, safetensors; print("numpy", numpy.__version__, "safetensors", safetensors.__version__)'
fi

run_preset() {
  local preset=$1
  stage "configure ($preset)"
  cmake --preset "$preset" -DADDITIVE_PYTHON="$python"
  stage "build ($preset)"
  cmake --build --preset "$preset" -j2
  stage "test ($preset)"
  ctest --preset "$preset"
}

run_preset cpu-release

if [ "${ADDITIVE_SKIP_SANITIZE:-0}" = "1" ]; then
  stage "cpu-debug (sanitizers) skipped: ADDITIVE_SKIP_SANITIZE=1"
else
  run_preset cpu-debug
fi

stage "all stages passed"
