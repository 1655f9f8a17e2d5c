#!/usr/bin/env bash
# JSON nested 200,000 levels deep (issue 18) where every driver reads JSON: a safetensors
# header (train --resume, cotrain --resume), a search results file (search --resume,
# stochastic --search-results) and a topk.json (cotrain --topk). Each is one "error: "
# line naming the file, exit code 2, never a stack overflow; and a settings value nested
# deep but within the limit is echoed short in the error line.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

require_drivers search stochastic cotrain
data="$WORK/data"
"${MAKE_IDX[@]}" "$data" --train 200 --test 16
T=(--data "$data" --epochs 1 --limit 64 --val 16 --d 16 --h 32 --threads 1 --quiet)
S=(--data "$data" --no-race --epochs 1 --limit 64 --val 16 --d 16 --h 32 --batch 32 --workers 1 --quiet)
C=(--data "$data" --epochs 1 --limit 64 --val 16 --d 16 --h 32 --batch 32 --quiet)
deep=200000

# A safetensors file whose tensor shape is an array nested $deep levels deep.
mkdir -p "$WORK/ck"
python3 - "$WORK/ck/deep.safetensors" "$deep" <<'PY'
import struct, sys
path, n = sys.argv[1], int(sys.argv[2])
h = '{"a":{"dtype":"F32","shape":' + "[" * n + "]" * n + ',"data_offsets":[0,0]}}'
h += " " * ((8 - len(h) % 8) % 8)
open(path, "wb").write(struct.pack("<Q", len(h)) + h.encode())
PY
expect_input_error "train --resume: a tensor shape nested $deep deep" "$WORK/ck/deep.safetensors" \
  "more than 64 levels deep" -- "$TRAIN" "${T[@]}" --resume "$WORK/ck/deep.safetensors"
expect_input_error "cotrain --resume: a tensor shape nested $deep deep" "$WORK/ck/deep.safetensors" \
  "more than 64 levels deep" -- "$COTRAIN" "${C[@]}" --masks 0x3f --resume "$WORK/ck/deep.safetensors" \
  --out "$WORK/co"

# A shape nested 3 deep (within the limit, but not integers): echoed, not dumped.
python3 - "$WORK/ck/nested.safetensors" <<'PY'
import struct, sys
h = '{"a":{"dtype":"F32","shape":[[[1, "\\n"]]],"data_offsets":[0,4]}}'
h += " " * ((8 - len(h) % 8) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h.encode() + bytes(4))
PY
expect_input_error "train --resume: a shape of arrays, with a newline in it" "$WORK/ck/nested.safetensors" \
  "shape [[[1, " "\\x0a" "not a non-negative integer" -- "$TRAIN" "${T[@]}" --resume "$WORK/ck/nested.safetensors"

# Search results: written by a real (tiny) search, then broken.
check "a tiny search writes its results" -- "$SEARCH" "${S[@]}" --sample 3 --out "$WORK/search"
results="$WORK/search/results.json"
nest() {  # nest <dir> <levels> <key.path>: results.json with that value nested <levels> deep
  mkdir -p "$1"
  python3 - "$results" "$1/results.json" "$2" "$3" <<'PY'
import json, sys
src, dst, n, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(".")
j = json.load(open(src))
o = j
for key in path[:-1]:
    o = o[key]
o[path[-1]] = "@@"
open(dst, "w").write(json.dumps(j).replace('"@@"', "[" * n + "]" * n))
PY
  cp "$WORK/search/topk.json" "$1/topk.json"
}
nest "$WORK/deep-runs" "$deep" runs
sum_before=$(sha256sum "$WORK/deep-runs/results.json")
expect_input_error "search --resume: runs nested $deep deep" "$WORK/deep-runs/results.json" \
  "more than 64 levels deep" -- "$SEARCH" "${S[@]}" --sample 3 --resume --out "$WORK/deep-runs"
if [[ "$(sha256sum "$WORK/deep-runs/results.json")" == "$sum_before" ]]; then pass "the refused results file is unchanged"
else fail "the refused results file was changed"; fi
expect_input_error "stochastic --search-results: runs nested $deep deep" "$WORK/deep-runs/results.json" \
  "more than 64 levels deep" -- "$STOCH" "${C[@]}" --threads 1 --no-dense-baseline \
  --search-results "$WORK/deep-runs/results.json" --out "$WORK/st"

# A setting nested 60 deep (accepted by the parser): the difference is echoed short.
nest "$WORK/deep-train" 60 train.lr
expect_input_error "search --resume: setting 'lr' nested 60 deep" "$WORK/deep-train/results.json" \
  "other train settings" "lr [[[[" "... there, 0.002 now" -- \
  "$SEARCH" "${S[@]}" --sample 3 --resume --out "$WORK/deep-train"
nest "$WORK/deep-model" 60 model
expect_input_error "search --resume: 'model' settings nested 60 deep" "$WORK/deep-model/results.json" \
  "other model settings" "[[[[" -- "$SEARCH" "${S[@]}" --sample 3 --resume --out "$WORK/deep-model"

# topk.json: structures nested deep, for cotrain --topk and (next to it) results.json.
mkdir -p "$WORK/topk"
python3 - "$WORK/topk/topk.json" "$deep" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
open(path, "w").write('{"family": "x", "structures": ' + "[" * n + "]" * n + "}")
PY
expect_input_error "cotrain --topk: structures nested $deep deep" "$WORK/topk/topk.json" \
  "more than 64 levels deep" -- "$COTRAIN" "${C[@]}" --topk "$WORK/topk/topk.json" --out "$WORK/co"
cp "$WORK/search/topk.json" "$WORK/deep-runs/topk.json"
python3 - "$WORK/deep-runs/results.json" "$deep" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
open(path, "w").write('{"report": {"entries": ' + "[" * n + "]" * n + "}}")
PY
expect_input_error "cotrain --topk: the results.json next to it nested $deep deep" "$WORK/deep-runs/results.json" \
  "more than 64 levels deep" -- "$COTRAIN" "${C[@]}" --topk "$WORK/deep-runs/topk.json" --out "$WORK/co"
if [[ -e "$WORK/co" || -e "$WORK/st" ]]; then fail "a refused run created its --out directory"
else pass "refused runs wrote nothing"; fi

finish
