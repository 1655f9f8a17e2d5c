#!/usr/bin/env bash
# Training-step throughput of additive next to PyTorch on this machine (benchmarks/RESULTS.md).
#
#   scripts/bench.sh [pytorch_peer.py options]     e.g. --rounds 5 --threads 1 --no-compile
#
# 1. a Python virtualenv with torch and numpy from PyPI: .venv if it already has them,
#    else .venv-bench (created here on first use);
# 2. our benchmark, Release with -march=native (the cpu-release preset's flags), built in
#    build/bench: benchmarks/bench_train_step.cpp;
# 3. benchmarks/pytorch_peer.py, which runs our benchmark and the same model in PyTorch
#    (eager and torch.compile) alternately, structure by structure, and prints the table.
#
# Environment: ADDITIVE_BENCH_BUILD (build directory, default build/bench),
#              ADDITIVE_BENCH_PYTHON (interpreter to use instead of a virtualenv).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
build=${ADDITIVE_BENCH_BUILD:-$root/build/bench}

stage() { printf '\n==== %s ====\n' "$*"; }

stage "python (torch, numpy)"
has_torch() { [ -x "$1" ] && "$1" -c 'import torch, numpy' 2>/dev/null; }
if [ -n "${ADDITIVE_BENCH_PYTHON:-}" ]; then
  python=$ADDITIVE_BENCH_PYTHON
  has_torch "$python" || { echo "ADDITIVE_BENCH_PYTHON=$python cannot import torch and numpy" >&2; exit 2; }
elif has_torch "$root/.venv/bin/python"; then
  python=$root/.venv/bin/python
elif has_torch "$root/.venv-bench/bin/python"; then
  python=$root/.venv-bench/bin/python
else
  base_python=/usr/bin/python3
  [ -x "$base_python" ] || base_python=$(command -v python3)
  "$base_python" -m venv --clear "$root/.venv-bench"
  python=$root/.venv-bench/bin/python
  "$python" -m pip install --quiet --disable-pip-version-check torch numpy
fi
"$python" -c 'import sys, torch, numpy; print(sys.executable, "torch", torch.__version__, "numpy", numpy.__version__)'

stage "build bench_train_step ($build)"
cmake -S "$root" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DADDITIVE_NATIVE=ON \
  -DADDITIVE_BUILD_BENCHMARKS=ON \
  -DADDITIVE_BUILD_TESTS=OFF \
  -DADDITIVE_BUILD_EXAMPLES=OFF \
  -DADDITIVE_INSTALL=OFF >/dev/null
cmake --build "$build" --target bench_train_step -j2

stage "machine"
lscpu | grep -E '^(Model name|CPU family|Model|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|L2 cache):'
echo "SIMD: $(grep -m1 -o -w -E 'avx512f|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "compiler: $(c++ --version | head -1)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

stage "additive vs PyTorch"
exec "$python" "$root/benchmarks/pytorch_peer.py" --additive-bench "$build/bin/bench_train_step" "$@"
