#!/usr/bin/env bash
# The mixture-of-structures driver: a tiny end-to-end run writes moe.json, .csv and .svg
# with every strategy; candidates from --masks and from a search's topk.json; bad
# candidate lists and foreign files are one clear line (exit 2).
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

MOE="$ADDITIVE_BINARY_DIR/bin/moe"
require_drivers moe
data="$WORK/data"
"${MAKE_IDX[@]}" "$data" --train 400 --test 64
S=(--data "$data" --limit 300 --val 64 --d 16 --h 32 --epochs 1 --batch 32 --threads 1 --quiet
  --router-hidden 8 --router-epochs 3)

check "every structure of the branch family" -- "$MOE" "${S[@]}" --out "$WORK/all"
for f in moe.json moe.csv moe.svg; do
  if [[ -s "$WORK/all/$f" ]]; then pass "$f written"; else fail "$f missing"; fi
done
if python3 - "$WORK/all/moe.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
names = [s["name"] for s in j["strategies"]]
assert names == ["dense", "best_single", "random", "best_random", "router", "oracle", "cost_aware_oracle"], names
assert len(j["candidates"]) == 256, len(j["candidates"])
acc = {s["name"]: s["accuracy"] for s in j["strategies"]}
assert all(acc[n] <= acc["cost_aware_oracle"] for n in acc), acc
PY
then pass "moe.json: 256 candidates, the seven strategies, none above the cost-aware oracle"
else fail "moe.json lacks strategies or candidates"; fi
if python3 -c 'import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])' "$WORK/all/moe.svg"; then
  pass "moe.svg is well-formed XML"; else fail "moe.svg is not well-formed XML"; fi

check "three candidates by --masks, expected-loss objective" -- \
  "$MOE" "${S[@]}" --masks 0xff,0x88,0x0 --objective expected --lambda 0.1 --out "$WORK/masks"
if python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert len(j["candidates"]) == 3' "$WORK/masks/moe.json"
then pass "three candidates"; else fail "not the three candidates"; fi

python3 - "$WORK/topk.json" "$WORK/other.json" <<'PY'
import json, sys
json.dump({"family": "mlp S=4 L=2 merge_and_branch", "k": 2,
           "structures": [{"rank": 1, "mask": 255}, {"rank": 2, "mask": 136}]}, open(sys.argv[1], "w"))
json.dump({"family": "mlp S=4 L=2 merge_only", "k": 1, "structures": [{"rank": 1, "mask": 63}]}, open(sys.argv[2], "w"))
PY
check "candidates from a search's topk.json" -- "$MOE" "${S[@]}" --topk "$WORK/topk.json" --out "$WORK/topk"

expect_input_error "a mask beyond the family" "--masks" "0x100 has bits beyond the 8 gates" -- \
  "$MOE" "${S[@]}" --masks 0xff,0x100 --out "$WORK/x1"
expect_input_error "a mask that is no number" "--masks" "'0xzz' is not a mask" -- \
  "$MOE" "${S[@]}" --masks 0xzz --out "$WORK/x2"
expect_input_error "an empty candidate in the list" "--masks" "'' is not a mask" -- \
  "$MOE" "${S[@]}" --masks 0xff, --out "$WORK/x3"
expect_input_error "a mask listed twice" "listed twice" -- "$MOE" "${S[@]}" --masks 0xff,0xff --out "$WORK/x4"
expect_input_error "a topk of another family" "is for family mlp S=4 L=2 merge_only" -- \
  "$MOE" "${S[@]}" --topk "$WORK/other.json" --out "$WORK/x5"
echo "{ not json" >"$WORK/bad.json"
expect_input_error "a corrupt topk file" "topk file" "not valid JSON" -- \
  "$MOE" "${S[@]}" --topk "$WORK/bad.json" --out "$WORK/x6"
expect_input_error "--masks and --topk together" "give one candidate list" -- \
  "$MOE" "${S[@]}" --masks 0xff --topk "$WORK/topk.json" --out "$WORK/x7"
expect_input_error "--p 0" "--p 0" -- "$MOE" "${S[@]}" --p 0 --out "$WORK/x8"
finish
