#!/usr/bin/env bash
# The whole test run (CI's and the README's): system packages, a Python virtualenv for the
# interop tests, then configure + build + ctest with the cpu-release preset, the fuzz
# targets for a short fixed number of runs each (unless ADDITIVE_SKIP_FUZZ=1 or there is
# no clang++) and, unless ADDITIVE_SKIP_SANITIZE=1, with the cpu-debug preset (ASan +
# UBSan; its test preset skips tests labelled `slow` or `pinned` and the packaging tests).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

start_seconds=$SECONDS
# Each stage's banner says how long the run has taken so far (CI's time budget is per run).
stage() { printf '\n==== %s [%dm%02ds] ====\n' "$*" $(((SECONDS - start_seconds) / 60)) $(((SECONDS - start_seconds) % 60)); }

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

# The CUDA backend: built wherever a CUDA toolkit exists (CI has one but no GPU), so it can
# never rot unbuilt; its tests run too and skip, with a message, where no device exists.
# Only the CUDA targets are built here: the CPU ones were built and tested above.
nvcc_path=$(command -v nvcc || true)
[ -n "$nvcc_path" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc_path=/usr/local/cuda/bin/nvcc; }
if [ "${ADDITIVE_SKIP_CUDA:-0}" = "1" ]; then
  stage "cuda-release skipped: ADDITIVE_SKIP_CUDA=1"
elif [ -z "$nvcc_path" ]; then
  stage "cuda-release skipped: no CUDA toolkit (nvcc) on this machine"
else
  stage "configure (cuda-release, $nvcc_path)"
  # Without a GPU the stage only compiles: one architecture (sm_90) finds what both would,
  # in half the device-compile time. With a GPU, the preset's architectures (80;90).
  cuda_archs=()
  if ! nvidia-smi -L >/dev/null 2>&1; then cuda_archs=(-DCMAKE_CUDA_ARCHITECTURES=90); fi
  cmake --preset cuda-release -DCMAKE_CUDA_COMPILER="$nvcc_path" -DADDITIVE_PYTHON="$python" "${cuda_archs[@]}"
  stage "build (cuda-release: CUDA targets only: header check, CUDA tests, GPU benchmarks, the drivers with --device cuda)"
  cmake --build --preset cuda-release -j2 --target additive_cuda_all
  stage "test (cuda-release: label cuda; skips without a GPU)"
  ctest --preset cuda-release -L cuda
fi

# The fuzz targets of the file readers (docs/fuzzing.md): built by clang with libFuzzer,
# ASan and UBSan in their own tree (preset fuzz, build/fuzz), each run for a fixed number
# of executions from its seed corpus (the seeds also run as ordinary tests, label
# fuzz-corpus, in both presets). ADDITIVE_FUZZ_RUNS changes the count.
if [ "${ADDITIVE_SKIP_FUZZ:-0}" = "1" ]; then
  stage "fuzz skipped: ADDITIVE_SKIP_FUZZ=1"
elif ! command -v clang++ >/dev/null; then
  stage "fuzz skipped: no clang++ on this machine"
else
  stage "fuzz (preset fuzz: clang, libFuzzer + ASan + UBSan; ${ADDITIVE_FUZZ_RUNS:-20000} runs per target)"
  bash scripts/fuzz.sh --runs "${ADDITIVE_FUZZ_RUNS:-20000}"
fi

if [ "${ADDITIVE_SKIP_SANITIZE:-0}" = "1" ]; then
  stage "cpu-debug (sanitizers) skipped: ADDITIVE_SKIP_SANITIZE=1"
else
  run_preset cpu-debug
fi

stage "all stages passed"
