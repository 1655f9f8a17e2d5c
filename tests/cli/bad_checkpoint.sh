#!/usr/bin/env bash
# Bad resume files through the train driver: a checkpoint of other widths, one holding a
# NaN, a file that is not safetensors, a missing file. Each is one "error: " line naming
# the file, exit code 2, and the checkpoint written before is left byte-identical.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

data="$WORK/data"
"${MAKE_IDX[@]}" "$data"
ckdir="$WORK/ck"
mkdir -p "$ckdir"
good="$ckdir/d32.safetensors"
base=(--data "$data" --epochs 1 --limit 64 --val 16 --h 32 --threads 1 --quiet)

check "happy path: write a checkpoint with --d 32" -- "$TRAIN" "${base[@]}" --d 32 --checkpoint "$good"
[[ -s "$good" ]] && pass "happy path: checkpoint exists" || fail "happy path: no checkpoint written"
check "happy path: resume it with the same options" -- \
  "$TRAIN" "${base[@]}" --d 32 --resume "$good" --checkpoint "$ckdir/resumed.safetensors"
rm -f "$ckdir/resumed.safetensors"

expect_input_error "resume a --d 32 checkpoint with --d 64" "$good" "shape" "expected" -- \
  "$TRAIN" "${base[@]}" --d 64 --resume "$good" --checkpoint "$good"

# One float of a parameter tensor (not an optimizer buffer) overwritten with NaN bytes.
nan="$ckdir/nan.safetensors"
tensor="$(python3 - "$good" "$nan" <<'PY'
import json, struct, sys
src, dst = sys.argv[1], sys.argv[2]
blob = bytearray(open(src, "rb").read())
(n,) = struct.unpack_from("<Q", blob, 0)
header = json.loads(blob[8:8 + n])
name = next(k for k in sorted(header) if k != "__metadata__" and not k.startswith("optim.")
            and header[k]["dtype"] == "F32" and header[k]["data_offsets"][1] > header[k]["data_offsets"][0])
begin = 8 + n + header[name]["data_offsets"][0]
struct.pack_into("<f", blob, begin + 4, float("nan"))  # element 1
open(dst, "wb").write(blob)
print(name)
PY
)"
if [[ -n "$tensor" ]]; then
  expect_input_error "resume a checkpoint with a NaN in '$tensor'" "$nan" "'$tensor'" "NaN at index 1" -- \
    "$TRAIN" "${base[@]}" --d 32 --resume "$nan" --checkpoint "$nan"
else
  fail "could not make the NaN checkpoint (no F32 parameter tensor in $good)"
fi

corrupt="$ckdir/corrupt.safetensors"
printf 'this is not a safetensors file\n' >"$corrupt"
expect_input_error "resume a file that is not safetensors" "$corrupt" -- \
  "$TRAIN" "${base[@]}" --d 32 --resume "$corrupt" --checkpoint "$corrupt"

expect_input_error "resume a missing file" "$ckdir/absent.safetensors" "no such file" -- \
  "$TRAIN" "${base[@]}" --d 32 --resume "$ckdir/absent.safetensors" --checkpoint "$good"

finish
