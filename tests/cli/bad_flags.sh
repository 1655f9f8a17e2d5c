#!/usr/bin/env bash
# Bad flags and masks through the train driver: each is one "error: " line naming the
# flag or the mask and what was expected, exit code 2, and no checkpoint touched.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

data="$WORK/data"
"${MAKE_IDX[@]}" "$data"
ckdir="$WORK/ck"
mkdir -p "$ckdir"
ck=(--checkpoint "$ckdir/run.safetensors")

check "happy path: a valid small set trains and writes a checkpoint" -- \
  "$TRAIN" --data "$data" "${SMALL[@]}" "${ck[@]}"
check "happy path: --mask 0xff --dtype double" -- \
  "$TRAIN" --data "$data" "${SMALL[@]}" --mask 0xff --dtype double

expect_input_error "mask with bits beyond n = 8" "'0x1ff'" "bits beyond" "8 gates" -- \
  "$TRAIN" --data "$data" "${SMALL[@]}" --mask 0x1ff "${ck[@]}"
expect_input_error "mask that is not a number" "'abc'" "not a number" -- \
  "$TRAIN" --data "$data" "${SMALL[@]}" --mask abc "${ck[@]}"

expect_input_error "unknown flag --bogus" "--bogus" -- \
  "$TRAIN" --data "$data" "${SMALL[@]}" --bogus "${ck[@]}"
# SMALL already has --epochs 1; a repeated flag would be a different error.
expect_input_error "--epochs 0" "--epochs" "0" -- \
  "$TRAIN" --data "$data" --epochs 0 --limit 64 --val 16 --d 16 --h 32 --threads 1 --quiet "${ck[@]}"
expect_input_error "--batch -3" "--batch" "-3" -- \
  "$TRAIN" --data "$data" "${SMALL[@]}" --batch -3 "${ck[@]}"
expect_input_error "--epochs x" "--epochs" "x" -- \
  "$TRAIN" --data "$data" --epochs x --limit 64 --val 16 --d 16 --h 32 --threads 1 --quiet "${ck[@]}"
expect_input_error "--threads 0" "--threads" "0" "[1, 1024]" -- \
  "$TRAIN" --data "$data" --threads 0 --epochs 1 --limit 64 --val 16 --d 16 --h 32 --quiet "${ck[@]}"
expect_input_error "--optimizer adam" "--optimizer" "adam" "adamw" "sgd" -- \
  "$TRAIN" --data "$data" "${SMALL[@]}" --optimizer adam "${ck[@]}"
expect_input_error "--val 100 of a 64-sample training set" "--val 100" "[0, 64)" -- \
  "$TRAIN" --data "$data" --val 100 --epochs 1 --limit 64 --d 16 --h 32 --threads 1 --quiet "${ck[@]}"
expect_input_error "--dtype half" "--dtype" "half" "float" "double" -- \
  "$TRAIN" --data "$data" "${SMALL[@]}" --dtype half "${ck[@]}"

finish
