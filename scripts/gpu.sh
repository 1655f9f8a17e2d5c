#!/usr/bin/env bash
# The GPU checks and benchmarks, for a machine with an NVIDIA GPU and the CUDA toolkit
# but possibly no package manager (docs/gpu-benchmarks.md).
#
#   scripts/gpu.sh vendor   # here (Debian with the dev packages): copy the header-only and
#                           # small library dependencies into third_party_headers/ (git-ignored)
#   scripts/gpu.sh [run]    # there: configure with ADDITIVE_CUDA=ON, build, ctest -L cuda,
#                           # compute-sanitizer memcheck over the CUDA tests, GPU benchmarks
#
# Results go to $OUT when it is set (else build/gpu/results): the logs, results.jsonl (one
# JSON object per measurement) and nvidia-smi's view of the machine.
# Environment: BUILD (build dir, default build/gpu), JOBS (default nproc), SKIP_SANITIZER=1,
# SKIP_BENCH=1, BENCH_QUICK=1 (shorter benchmarks), CUDA_ARCH (default: 90 when nvidia-smi
# reports compute capability 9.x, else 80;90).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENDOR="$ROOT/third_party_headers"
MODE="${1:-run}"

# The Debian packages whose files the build needs besides the toolkit: headers and CMake
# package configs (Eigen, doctest, CLI11, nlohmann-json, fmt, Google Benchmark) and the two
# shared libraries among them (fmt, benchmark).
PACKAGES=(libeigen3-dev doctest-dev libcli11-dev nlohmann-json3-dev libfmt-dev libfmt9 libbenchmark-dev
          libbenchmark1debian)

vendor() {
  command -v dpkg-query >/dev/null || { echo "vendor: needs dpkg (run it on the Debian dev machine)" >&2; exit 2; }
  rm -rf "$VENDOR"
  mkdir -p "$VENDOR"
  local pkg f
  for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      echo "vendor: package $pkg is not installed here" >&2
      exit 2
    fi
    # Same layout as under / (usr/include, usr/lib/<triplet>/cmake, usr/share/...): the
    # packages' CMake configs find their headers relative to themselves.
    dpkg-query -L "$pkg" | while read -r f; do
      [[ -f "$f" || -L "$f" ]] || continue
      case "$f" in /usr/share/doc/* | /usr/share/man/* | /usr/share/lintian/*) continue ;; esac
      mkdir -p "$VENDOR$(dirname "$f")"
      cp -a "$f" "$VENDOR$f"
    done
  done
  du -sh "$VENDOR"
  echo "vendor: copied ${PACKAGES[*]} into $VENDOR (prefix $VENDOR/usr)"
}

run() {
  local build="${BUILD:-$ROOT/build/gpu}"
  local out="${OUT:-$build/results}"
  local jobs="${JOBS:-$(nproc)}"
  mkdir -p "$out"
  local log="$out/gpu.log"
  : >"$log"
  say() { echo "== $*" | tee -a "$log"; }

  command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
  command -v nvcc >/dev/null || { echo "gpu.sh: nvcc not found (install the CUDA toolkit or add it to PATH)" >&2; exit 2; }
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
    nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv >>"$log" 2>&1 || true
  fi
  local arch="${CUDA_ARCH:-}"
  if [[ -z "$arch" ]]; then
    local cc
    cc="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')"
    arch="${cc:-80;90}"
  fi

  local prefix=()
  if [[ -d "$VENDOR/usr" ]]; then
    # Both: Debian's multiarch layout is searched only where CMake knows the triplet.
    prefix=(-DCMAKE_PREFIX_PATH="$VENDOR/usr;$VENDOR/usr/lib/x86_64-linux-gnu/cmake;$VENDOR/usr/share")
    export LD_LIBRARY_PATH="$VENDOR/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export CPATH="$VENDOR/usr/include${CPATH:+:$CPATH}"
    say "using the vendored dependencies in $VENDOR"
  fi

  say "configure ($build, CUDA architectures $arch)"
  cmake -S "$ROOT" -B "$build" -DCMAKE_BUILD_TYPE=Release -DADDITIVE_CUDA=ON -DADDITIVE_NATIVE=ON \
    -DADDITIVE_BUILD_BENCHMARKS=ON -DADDITIVE_INSTALL=OFF -DCMAKE_CUDA_ARCHITECTURES="$arch" "${prefix[@]}" \
    2>&1 | tee -a "$log"
  local targets
  targets="$(cd "$build" && ctest -N -L cuda 2>/dev/null | sed -n 's/^ *Test *#[0-9]*: cuda_\(.*\)$/test_cuda_\1/p' | tr '\n' ' ')"
  say "build: $targets train search bench_cuda_*"
  cmake --build "$build" -j "$jobs" --target $targets train search bench_cuda_train_step bench_cuda_concurrent \
    bench_cuda_gemm 2>&1 | tail -n 50 | tee -a "$log"

  local status=0
  say "ctest -L cuda"
  (cd "$build" && ctest -L cuda --output-on-failure 2>&1) | tee "$out/ctest-cuda.log" | tail -n 40 | tee -a "$log" \
    || status=1
  say "ctest -R cli_cuda_device (the drivers' --device cuda)"
  (cd "$build" && ctest -R cli_cuda_device --output-on-failure 2>&1) | tee "$out/ctest-cli.log" | tail -n 40 \
    | tee -a "$log" || status=1

  if [[ "${SKIP_SANITIZER:-0}" != 1 ]]; then
    if command -v compute-sanitizer >/dev/null; then
      local t
      for t in "$build"/tests/test_cuda_*; do
        [[ -x "$t" ]] || continue
        say "compute-sanitizer --tool memcheck $(basename "$t")"
        if ! compute-sanitizer --tool memcheck --error-exitcode 3 --leak-check full "$t" \
          >"$out/memcheck-$(basename "$t").log" 2>&1; then
          status=1
          tail -n 30 "$out/memcheck-$(basename "$t").log" | tee -a "$log"
        else
          tail -n 3 "$out/memcheck-$(basename "$t").log" | tee -a "$log"
        fi
      done
    else
      say "compute-sanitizer not found: memcheck skipped"
    fi
  fi

  if [[ "${SKIP_BENCH:-0}" != 1 ]]; then
    local json="$out/results.jsonl" bin="$build/bin"
    : >"$json"
    local steps=200 structures=64
    [[ "${BENCH_QUICK:-0}" == 1 ]] && steps=50 && structures=16
    say "bench_cuda_train_step"
    "$bin/bench_cuda_train_step" --steps "$steps" --json "$json" 2>&1 | tee -a "$log" || status=1
    say "bench_cuda_gemm"
    "$bin/bench_cuda_gemm" --json "$json" 2>&1 | tee -a "$log" || status=1
    say "bench_cuda_concurrent"
    "$bin/bench_cuda_concurrent" --structures "$structures" --json "$json" 2>&1 | tee -a "$log" || status=1
    if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
      local batch prec
      for batch in 256 4096; do
        for prec in fp32 tf32 bf16; do
          say "pytorch_peer --device cuda --batch $batch --precision $prec"
          python3 "$ROOT/benchmarks/pytorch_peer.py" --device cuda --batch "$batch" --precision "$prec" \
            --structures dense,all_split --rounds 2 --seconds 2 --json "$out/pytorch-$batch-$prec.json" 2>&1 \
            | tee -a "$log" || status=1
        done
      done
    else
      say "PyTorch with CUDA not available: pytorch_peer skipped"
    fi
  fi
  say "done (status $status); results in $out"
  return "$status"
}

case "$MODE" in
  vendor) vendor ;;
  run) run ;;
  *)
    echo "usage: scripts/gpu.sh [vendor|run]" >&2
    exit 2
    ;;
esac
