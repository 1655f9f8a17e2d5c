#!/usr/bin/env bash
# Bad datasets through the train driver: a missing directory or file, a wrong magic,
# truncated gzip streams, image and label counts that differ, a label out of range.
# Each is one "error: " line naming the file, exit code 2, and no checkpoint touched.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

valid="$WORK/valid"
"${MAKE_IDX[@]}" "$valid"
ckdir="$WORK/ck"
mkdir -p "$ckdir"
# A checkpoint written before: every failing run below must leave it byte-identical.
check "happy path: a valid small set trains and writes a checkpoint" -- \
  "$TRAIN" --data "$valid" "${SMALL[@]}" --checkpoint "$ckdir/run.safetensors"
[[ -s "$ckdir/run.safetensors" ]] && pass "happy path: checkpoint exists" || fail "happy path: no checkpoint written"

bad() {  # bad <name> <make_idx args...>: a broken variant in $WORK/<name>
  local name="$1"
  shift
  "${MAKE_IDX[@]}" "$WORK/$name" "$@"
}
ck=(--checkpoint "$ckdir/run.safetensors")

expect_input_error "missing data directory" "$WORK/nowhere" "train images" "train-images-idx3-ubyte.gz" -- \
  "$TRAIN" --data "$WORK/nowhere" "${SMALL[@]}" "${ck[@]}"

bad missing-labels --corrupt missing-labels
expect_input_error "missing labels file" "$WORK/missing-labels" "train labels" "train-labels-idx1-ubyte" -- \
  "$TRAIN" --data "$WORK/missing-labels" "${SMALL[@]}" "${ck[@]}"

bad missing-test --corrupt missing-test-images
expect_input_error "missing test images file" "$WORK/missing-test" "test images" "t10k-images-idx3-ubyte" -- \
  "$TRAIN" --data "$WORK/missing-test" "${SMALL[@]}" "${ck[@]}"

bad wrong-magic --corrupt wrong-magic
expect_input_error "images file with the labels magic" "$WORK/wrong-magic/train-images-idx3-ubyte.gz" \
  "0x00000801" "expected 0x00000803" -- \
  "$TRAIN" --data "$WORK/wrong-magic" "${SMALL[@]}" "${ck[@]}"

bad truncate-labels --corrupt truncate-labels
expect_input_error "labels .gz cut in half" "$WORK/truncate-labels/train-labels-idx1-ubyte.gz" "truncated" -- \
  "$TRAIN" --data "$WORK/truncate-labels" "${SMALL[@]}" "${ck[@]}"

bad truncate-trailer --corrupt truncate-trailer
expect_input_error "images .gz without its gzip trailer" "$WORK/truncate-trailer/train-images-idx3-ubyte.gz" \
  "truncated" -- \
  "$TRAIN" --data "$WORK/truncate-trailer" "${SMALL[@]}" "${ck[@]}"

bad truncate-raw --corrupt truncate-raw
expect_input_error "uncompressed images file cut short" "$WORK/truncate-raw/train-images-idx3-ubyte" \
  "truncated" -- \
  "$TRAIN" --data "$WORK/truncate-raw" "${SMALL[@]}" "${ck[@]}"

# The real Fashion-MNIST test labels, cut: a large stream that ends inside its deflate data.
real=/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
if [[ -r "$real" ]]; then
  bad real-cut
  size=$(stat -c %s "$real")
  head -c $((size / 2)) "$real" >"$WORK/real-cut/t10k-labels-idx1-ubyte.gz"
  expect_input_error "real t10k labels .gz cut in half" "$WORK/real-cut/t10k-labels-idx1-ubyte.gz" "truncated" -- \
    "$TRAIN" --data "$WORK/real-cut" "${SMALL[@]}" "${ck[@]}"
else
  echo "note: $real not present; the synthetic truncation cases above stand in for it"
fi

bad count-mismatch --corrupt count-mismatch
expect_input_error "63 labels for 64 images" "$WORK/count-mismatch/train-labels-idx1-ubyte.gz" "63 labels" \
  "64 images" -- \
  "$TRAIN" --data "$WORK/count-mismatch" "${SMALL[@]}" "${ck[@]}"

bad label-range --corrupt label-range
expect_input_error "label 10 with 10 classes" "$WORK/label-range/train-labels-idx1-ubyte.gz" "label 10" \
  "index 5" "expected < 10" -- \
  "$TRAIN" --data "$WORK/label-range" "${SMALL[@]}" "${ck[@]}"

finish
