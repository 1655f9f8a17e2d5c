#!/usr/bin/env bash
# Results and top-K files with values the search could not have written (issue 18):
# accuracies outside [0, 1] or null, negative losses, masks beyond the family, negative
# or huge seeds, unknown phases, two different records for one run. search --resume,
# stochastic --search-results and cotrain --topk each refuse them in one "error: " line
# naming the file and the field, exit code 2, and leave the file as it was.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

require_drivers search stochastic cotrain
data="$WORK/data"
"${MAKE_IDX[@]}" "$data" --train 200 --test 16
S=(--data "$data" --epochs 1 --limit 64 --val 16 --d 16 --h 32 --batch 32 --workers 1 --quiet --sample 3 --no-race --seeds 2)
C=(--data "$data" --epochs 1 --limit 64 --val 16 --d 16 --h 32 --batch 32 --quiet)

check "a tiny search (3 structures, 2 seeds) writes its results" -- "$SEARCH" "${S[@]}" --out "$WORK/search"
good="$WORK/search/results.json"

# bad <name> <python statements on j, the results>: $WORK/<name>/results.json (and topk.json)
bad() {
  mkdir -p "$WORK/$1"
  cp "$WORK/search/topk.json" "$WORK/$1/topk.json"
  python3 - "$good" "$WORK/$1/results.json" "$2" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
exec(sys.argv[3])
open(sys.argv[2], "w").write(json.dumps(j, allow_nan=False))
PY
}
# resume <name> <texts...>: search --resume from $WORK/<name> is refused and changes nothing
resume() {
  local name="$1"
  shift
  local before
  before=$(sha256sum "$WORK/$name/results.json")
  expect_input_error "search --resume: $name" "$WORK/$name/results.json" "$@" -- \
    "$SEARCH" "${S[@]}" --resume --out "$WORK/$name"
  if [[ "$(sha256sum "$WORK/$name/results.json")" != "$before" ]]; then fail "$name: the results file was changed"; fi
}
# compare <name> <texts...>: stochastic --search-results $WORK/<name>/results.json is refused
compare() {
  local name="$1"
  shift
  expect_input_error "stochastic --search-results: $name" "$WORK/$name/results.json" "$@" -- \
    "$STOCH" "${C[@]}" --threads 1 --no-dense-baseline --search-results "$WORK/$name/results.json" --out "$WORK/st"
}

bad acc-7.5 'j["runs"][0]["val_accuracy"] = 7.5'
resume acc-7.5 "run record 1" "'val_accuracy' 7.5" "[0, 1]"
compare acc-7.5 "run record 1" "'val_accuracy' 7.5" "[0, 1]"
bad acc-null 'j["runs"][1]["val_accuracy"] = None'
resume acc-null "run record 2" "'val_accuracy' null"
compare acc-null "run record 2" "'val_accuracy' null"
bad loss-negative 'j["runs"][0]["val_loss"] = -0.5'
resume loss-negative "'val_loss' -0.5" ">= 0"
bad train-loss-null 'j["runs"][1]["train_loss"] = None'
resume train-loss-null "run record 2" "'train_loss' null"
bad mask-64 'j["runs"][0]["mask"] = 64'
resume mask-64 "'mask' 64" "beyond the 64 structures"
compare mask-64 "'mask' 64" "beyond the 64 structures"
bad mask-negative 'j["runs"][0]["mask"] = -1'
resume mask-negative "'mask' -1" "expected a mask"
bad mask-2-40 'j["runs"][0]["mask"] = 2**40'
resume mask-2-40 "'mask' 1099511627776" "beyond"
bad mask-float 'j["runs"][0]["mask"] = 1.5'
resume mask-float "'mask' 1.5" "expected a mask"
bad seed-negative 'j["runs"][0]["seed"] = -1'
resume seed-negative "'seed' -1" "[0, 2)"
compare seed-negative "'seed' -1" "[0, 2)"
bad seed-1e20 'j["runs"][0]["seed"] = 1e20'
resume seed-1e20 "'seed' 1e+20" "[0, 2)"
bad seed-2 'j["runs"][0]["seed"] = 2'
resume seed-2 "'seed' 2" "seed index in [0, 2)"
compare seed-2 "'seed' 2" "seed index in [0, 2)"
bad phase 'j["runs"][0]["phase"] = "medium"'
resume phase "'phase' \"medium\"" "\"short\" or \"long\""
compare phase "'phase' \"medium\""
bad duplicate 'j["runs"].append(dict(j["runs"][0], val_loss=j["runs"][0]["val_loss"] + 0.5))'
# Per-image bits that do not fit the validation split, or count other than val_accuracy says.
bad correct-length 'j["runs"][0]["correct"] = j["runs"][0]["correct"] + "0"'
resume correct-length "run record 1 has a 'correct' that does not fit"
bad correct-count 'j["runs"][0]["val_accuracy"] = 1 - j["runs"][0]["val_accuracy"] / 2'
resume correct-count "run record 1 has 'correct' bits for" "but val_accuracy"
resume duplicate "run records 1 and" "with different values"
compare duplicate "run records 1 and" "with different values"
bad runs-object 'j["runs"] = {"a": 1}'
resume runs-object "'runs' is not a list"
# A number beyond the range of a double (found by fuzz/fuzz_results.cpp: nlohmann throws
# out_of_range for such a literal, not parse_error).
bad acc-1e999 'j["runs"][0]["val_accuracy"] = 0.123456789'
sed -i 's/0\.123456789/1e999/' "$WORK/acc-1e999/results.json"
resume acc-1e999 "holds a number beyond the range of a double (1e999)"
compare acc-1e999 "holds a number beyond the range of a double (1e999)"

# The report's entries (stochastic and the accuracies cotrain reads next to a topk.json).
bad entry-acc 'j["report"]["entries"][0]["acc_mean"] = 7.5'
compare entry-acc "report entry 1" "'acc_mean' 7.5" "[0, 1]"
bad entry-mask 'j["report"]["entries"][0]["mask"] = 4096'
compare entry-mask "report entry 1" "'mask' 4096" "beyond the 64 structures"
bad entry-equivalent 'j["report"]["entries"][0]["equivalent"] = [-3]'
compare entry-equivalent "report entry 1" "'equivalent' -3" "expected a mask"
bad entry-twice 'e = j["report"]["entries"]; e.append(dict(e[0], acc_mean=e[0]["acc_mean"] / 2))'
compare entry-twice "an earlier entry"
expect_input_error "cotrain --topk: a bad accuracy in the results.json next to it" \
  "$WORK/entry-acc/results.json" "'acc_mean' 7.5" -- \
  "$COTRAIN" "${C[@]}" --topk "$WORK/entry-acc/topk.json" --out "$WORK/co"

# topk.json itself.
topk() {  # topk <name> <python statements on j, the topk>: $WORK/<name>/topk.json (no results.json)
  mkdir -p "$WORK/$1"
  python3 - "$WORK/search/topk.json" "$WORK/$1/topk.json" "$2" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
exec(sys.argv[3])
open(sys.argv[2], "w").write(json.dumps(j))
PY
}
topk topk-64 'j["structures"][0]["mask"] = 64'
expect_input_error "cotrain --topk: mask 64 of a 64-structure family" "$WORK/topk-64/topk.json" "0x40" \
  "not of the family" -- "$COTRAIN" "${C[@]}" --topk "$WORK/topk-64/topk.json" --out "$WORK/co"
topk topk-negative 'j["structures"][0]["mask"] = -2'
expect_input_error "cotrain --topk: mask -2" "$WORK/topk-negative/topk.json" "'mask' -2" -- \
  "$COTRAIN" "${C[@]}" --topk "$WORK/topk-negative/topk.json" --out "$WORK/co"
topk topk-float 'j["structures"][0]["mask"] = 3.7'
expect_input_error "cotrain --topk: mask 3.7" "$WORK/topk-float/topk.json" "'mask' 3.7" -- \
  "$COTRAIN" "${C[@]}" --topk "$WORK/topk-float/topk.json" --out "$WORK/co"
topk topk-acc 'j["structures"][0]["val_accuracy"] = -1'
expect_input_error "cotrain --topk: accuracy -1" "$WORK/topk-acc/topk.json" "'val_accuracy' -1" -- \
  "$COTRAIN" "${C[@]}" --topk "$WORK/topk-acc/topk.json" --out "$WORK/co"
topk topk-1e999 'j["structures"][0]["val_accuracy"] = 0.123456789'
sed -i 's/0\.123456789/1e999/' "$WORK/topk-1e999/topk.json"
expect_input_error "cotrain --topk: accuracy 1e999" "$WORK/topk-1e999/topk.json" \
  "holds a number beyond the range of a double (1e999)" -- \
  "$COTRAIN" "${C[@]}" --topk "$WORK/topk-1e999/topk.json" --out "$WORK/co"

# FIFOs in place of files: refused at once (a read would block forever).
mkdir -p "$WORK/fifo"
mkfifo "$WORK/fifo/results.json" "$WORK/fifo/topk.json"
expect_input_error "search --resume: results.json is a FIFO" "$WORK/fifo/results.json" "cannot be read" -- \
  "$SEARCH" "${S[@]}" --resume --out "$WORK/fifo"
expect_input_error "stochastic --search-results: a FIFO" "$WORK/fifo/results.json" "not a regular file" -- \
  "$STOCH" "${C[@]}" --threads 1 --no-dense-baseline --search-results "$WORK/fifo/results.json" --out "$WORK/st"
expect_input_error "cotrain --topk: a FIFO" "$WORK/fifo/topk.json" "not a regular file" -- \
  "$COTRAIN" "${C[@]}" --topk "$WORK/fifo/topk.json" --out "$WORK/co"
"${MAKE_IDX[@]}" "$WORK/fifo-data" --train 200 --test 16
rm "$WORK/fifo-data/train-labels-idx1-ubyte.gz"
mkfifo "$WORK/fifo-data/train-labels-idx1-ubyte.gz"
expect_input_error "train --data: the labels file is a FIFO" "$WORK/fifo-data/train-labels-idx1-ubyte.gz" \
  "not a regular file" -- "$TRAIN" --data "$WORK/fifo-data" --epochs 1 --limit 64 --val 16 --d 16 --h 32 --quiet

if [[ -e "$WORK/co" || -e "$WORK/st" ]]; then fail "a refused run created its --out directory"
else pass "refused runs wrote nothing"; fi
check "the untouched results still resume" -- "$SEARCH" "${S[@]}" --resume --out "$WORK/search"
finish
