#!/usr/bin/env bash
# --device cuda of the train and search drivers. Without the CUDA backend in the build,
# or without a GPU, it is one clear error line and exit code 2. With a GPU: the GPU run
# follows the CPU run of the same seed (same batches and schedule: losses agree to fp32
# rounding), graph replay and plain launches give the same results, and checkpoints
# move both ways between the CPU and the GPU. stochastic and cotrain refuse --device cuda.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

SEARCH="$ADDITIVE_BINARY_DIR/bin/search"
data="$WORK/data"
"${MAKE_IDX[@]}" "$data" --train 300 --test 32
T=(--data "$data" --limit 64 --val 16 --d 16 --h 32 --threads 1 --quiet --epochs 2 --batch 16)
S=(--data "$data" --limit 64 --val 16 --d 16 --h 32 --epochs 1 --batch 16 --quiet --sample 4 --no-race)

# The drivers without a GPU path say so, GPU or not.
for driver in stochastic cotrain; do
  expect_input_error "$driver --device cuda" "--device cuda:" "not supported by this driver yet" -- \
    "$ADDITIVE_BINARY_DIR/bin/$driver" --device cuda
done

gpu=0
if timeout "$CLI_TIMEOUT" "$TRAIN" "${T[@]}" --device cuda >/dev/null 2>&1; then gpu=1; fi

if [[ $gpu -eq 0 ]]; then
  # Whichever applies: a build without the backend, or a machine without a device.
  expect_input_error "train --device cuda without a usable GPU" "--device cuda:" -- \
    "$TRAIN" "${T[@]}" --device cuda
  if grep -q "this build has no CUDA backend (configure with ADDITIVE_CUDA=ON)\|no CUDA device found" "$WORK/err"; then
    pass "the error says why: $(head -c 120 "$WORK/err")"
  else
    fail "the error does not say why" "stderr: $(cat "$WORK/err")"
  fi
  expect_input_error "search --device cuda without a usable GPU" "--device cuda:" -- \
    "$SEARCH" "${S[@]}" --device cuda --out "$WORK/s"
  [[ ! -e "$WORK/s" ]] && pass "no search directory created" || fail "search --device cuda created $WORK/s"
  finish
  exit
fi

# ---- a GPU is there ----
# close.py <a.json> <b.json> <rtol>: every epoch's train and validation losses agree to rtol.
cat >"$WORK/close.py" <<'PY'
import json, sys
a, b, rtol = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), float(sys.argv[3])
ea, eb = a["epochs"], b["epochs"]
assert len(ea) == len(eb), (len(ea), len(eb))
for x, y in zip(ea, eb):
    for k in ("train_loss", "val_loss"):
        assert abs(x[k] - y[k]) <= rtol * abs(y[k]), (k, x[k], y[k])
PY
close=(python3 "$WORK/close.py")
check "train --device cpu" -- "$TRAIN" "${T[@]}" --json "$WORK/cpu.json"
check "train --device cuda" -- "$TRAIN" "${T[@]}" --device cuda --json "$WORK/gpu.json"
check "train --device cuda --no-graphs" -- "$TRAIN" "${T[@]}" --device cuda --no-graphs --json "$WORK/plain.json"
check "GPU losses follow the CPU run (rtol 1e-4)" -- "${close[@]}" "$WORK/gpu.json" "$WORK/cpu.json" 1e-4
check "graphs and plain launches: identical losses" -- "${close[@]}" "$WORK/gpu.json" "$WORK/plain.json" 0

check "CPU run stopped at step 5 with a checkpoint" -- \
  "$TRAIN" "${T[@]}" --stop-after 5 --checkpoint "$WORK/cpu.safetensors"
check "resumed on the GPU" -- \
  "$TRAIN" "${T[@]}" --device cuda --resume "$WORK/cpu.safetensors" --json "$WORK/cpu2gpu.json"
check "GPU run stopped at step 5 with a checkpoint" -- \
  "$TRAIN" "${T[@]}" --device cuda --stop-after 5 --checkpoint "$WORK/gpu.safetensors"
check "resumed on the CPU" -- \
  "$TRAIN" "${T[@]}" --resume "$WORK/gpu.safetensors" --json "$WORK/gpu2cpu.json"
check "CPU -> GPU resume ends where the CPU run ends (rtol 1e-4)" -- \
  "${close[@]}" "$WORK/cpu2gpu.json" "$WORK/cpu.json" 1e-4
check "GPU -> CPU resume ends where the GPU run ends (rtol 1e-4)" -- \
  "${close[@]}" "$WORK/gpu2cpu.json" "$WORK/gpu.json" 1e-4

expect_input_error "--device cuda --dtype double" "--device cuda" "double" -- \
  "$TRAIN" "${T[@]}" --device cuda --dtype double
check "search --device cuda" -- "$SEARCH" "${S[@]}" --device cuda --out "$WORK/sg"
check "search --device cuda --concurrent 2" -- "$SEARCH" "${S[@]}" --device cuda --concurrent 2 --out "$WORK/sg2"
if cmp -s "$WORK/sg/results.csv" "$WORK/sg2/results.csv"; then pass "results do not depend on --concurrent"
else fail "results.csv differs between --concurrent 0 and 2"; fi
finish
