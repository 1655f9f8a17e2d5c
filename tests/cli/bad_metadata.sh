#!/usr/bin/env bash
# ADDITIVE_TEST_TIMEOUT: 600
# Checkpoints whose metadata or optimizer state a run could not have written (issue 18),
# through train --resume and cotrain --resume: numbers that do not parse, a NaN or
# negative loss sum, a negative or out-of-range seed, a step beyond the end of training
# or beyond 2^53, a negative second moment, settings nested too deep, a newline in a
# value; and an empty --resume "" (an unset shell variable). Each is one "error: " line
# naming the checkpoint and the field, exit code 2, and the checkpoint directory unchanged.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

require_drivers cotrain search
data="$WORK/data"
"${MAKE_IDX[@]}" "$data" --train 200 --test 16
T=(--data "$data" --epochs 2 --limit 64 --val 16 --d 16 --h 32 --batch 32 --threads 1 --quiet)
C=(--data "$data" --epochs 2 --limit 64 --val 16 --d 16 --h 32 --batch 32 --quiet --masks 0x3f,0x15)
ck="$WORK/ck"
mkdir -p "$ck"

check "train: stop after 3 of 4 steps with a checkpoint" -- \
  "$TRAIN" "${T[@]}" --stop-after 3 --checkpoint "$ck/train.safetensors"
check "cotrain: stop after 3 of 4 steps with a checkpoint" -- \
  "$COTRAIN" "${C[@]}" --stop-after 3 --checkpoint "$ck/co.safetensors" --out "$WORK/co-stopped"

# edit <src> <dst> <python statements on meta (the metadata) and tensors (name -> list)>
edit() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, struct, sys
src, dst, code = sys.argv[1], sys.argv[2], sys.argv[3]
blob = open(src, "rb").read()
(n,) = struct.unpack_from("<Q", blob, 0)
header = json.loads(blob[8:8 + n])
data = bytearray(blob[8 + n:])
meta = header["__metadata__"]
class Tensors:
    def set(self, name, index, value):
        t = header[name]
        fmt = {"F32": "<f", "F64": "<d"}[t["dtype"]]
        struct.pack_into(fmt, data, t["data_offsets"][0] + index * struct.calcsize(fmt), value)
tensors = Tensors()
exec(code)
text = json.dumps(header).encode()
text += b" " * ((8 - len(text) % 8) % 8)
open(dst, "wb").write(struct.pack("<Q", len(text)) + text + bytes(data))
PY
}
train_bad() {  # train_bad <name> <python> <texts...>
  local name="$1" code="$2"
  shift 2
  edit "$ck/train.safetensors" "$ck/$name.safetensors" "$code"
  expect_input_error "train --resume: $name" "$ck/$name.safetensors" "$@" -- \
    "$TRAIN" "${T[@]}" --resume "$ck/$name.safetensors" --checkpoint "$ck/$name.safetensors"
}
co_bad() {  # co_bad <name> <python> <texts...>
  local name="$1" code="$2"
  shift 2
  edit "$ck/co.safetensors" "$ck/$name.safetensors" "$code"
  expect_input_error "cotrain --resume: $name" "$ck/$name.safetensors" "$@" -- \
    "$COTRAIN" "${C[@]}" --resume "$ck/$name.safetensors" --checkpoint "$ck/$name.safetensors" --out "$WORK/co"
}

edit "$ck/train.safetensors" "$ck/same.safetensors" "pass"
check "train: an edited but unchanged checkpoint still resumes" -- \
  "$TRAIN" "${T[@]}" --resume "$ck/same.safetensors"

train_bad loss-text 'meta["epoch_loss_sum"] = "abc"' "metadata 'epoch_loss_sum' is 'abc'" "expected a finite number"
train_bad loss-nan 'meta["epoch_loss_sum"] = "nan"' "metadata 'epoch_loss_sum' is 'nan'" "expected a finite number"
train_bad loss-negative 'meta["epoch_loss_sum"] = "-2.5"' "metadata 'epoch_loss_sum' is '-2.5'"
train_bad seed-negative 'meta["epoch_seed"] = "-5"' "metadata 'epoch_seed' is '-5'" "expected an unsigned integer"
train_bad seed-2-64 'meta["epoch_seed"] = str(2**64)' "metadata 'epoch_seed' is 18446744073709551616" \
  "more than 18446744073709551615"
train_bad step-beyond 'meta["step"] = "5"' "metadata 'step' is 5" "beyond the end of training (2 epochs of 2 steps)"
train_bad step-2-63 'meta["step"] = str(2**63)' "metadata 'step' is 9223372036854775808" "more than 9007199254740992"
train_bad second-moment \
  'tensors.set(next(k for k in sorted(header) if k.startswith("optim.v.")), 1, -1.0)' \
  "optimizer state 'v'" "at index" "expected >= 0"
train_bad newline-mask 'meta["mask"] = "0xff\nrest"' "was written for mask 0xff\\x0arest"
train_bad long-model 'meta["model"] = "x" * 100000' "was written for model xxxx" "..."

co_bad co-loss-null 'meta["epoch_loss_sums"] = "[null, 1.0]"' "metadata 'epoch_loss_sums' has rank 0's null"
co_bad co-loss-count 'meta["epoch_loss_sums"] = "[1.0]"' "metadata 'epoch_loss_sums' is not a list of 2 numbers"
co_bad co-seed 'meta["epoch_seed"] = "-1"' "metadata 'epoch_seed' is '-1'"
co_bad co-step 'meta["step"] = "99"' "metadata 'step' is 99" "beyond the end of training"
co_bad co-outer 'meta["outer_steps"] = "4"' "metadata 'outer_steps' is 4" "more than 3"
co_bad co-comm 'meta["comm"] = "{}"' "metadata 'comm' has no 'all_reduces'"
co_bad co-comm-negative 'c = json.loads(meta["comm"]); c["seconds"] = -1; meta["comm"] = json.dumps(c)' \
  "metadata 'comm' has 'seconds' -1"
co_bad co-settings-deep 'meta["settings"] = "[" * 100000 + "]" * 100000' "metadata 'settings'" \
  "more than 64 levels deep"
co_bad co-second-moment \
  'tensors.set(next(k for k in sorted(header) if k.startswith("optim.inner_v.")), 0, -3.0)' \
  "optimizer state 'inner_v'" "expected >= 0"

# An empty --resume: an error, never a fresh start over the checkpoint. (Run from the
# checkpoint directory: the guard of expect_input_error snapshots dirname "" = ".".)
cd "$ck"
expect_input_error "train --resume \"\"" "--resume" "empty" -- \
  "$TRAIN" "${T[@]}" --resume "" --checkpoint "$ck/train.safetensors"
expect_input_error "train --resume=" "--resume" "empty" -- \
  "$TRAIN" "${T[@]}" --resume= --checkpoint "$ck/train.safetensors"
expect_input_error "cotrain --resume \"\"" "--resume" "empty" -- \
  "$COTRAIN" "${C[@]}" --resume "" --checkpoint "$ck/co.safetensors" --out "$WORK/co"
mkdir -p "$WORK/s"
expect_input_error "search --resume \"\"" "--resume" -- \
  "$SEARCH" --data "$data" --limit 64 --val 16 --d 16 --h 32 --quiet --resume "" --out "$WORK/s"
expect_input_error "search --resume=" "--resume" -- \
  "$SEARCH" --data "$data" --limit 64 --val 16 --d 16 --h 32 --quiet --resume= --out "$WORK/s"
cd - >/dev/null
if [[ -e "$WORK/co" ]]; then fail "a refused cotrain created its --out directory"; else pass "refused runs wrote nothing"; fi
finish
