#!/usr/bin/env bash
# The stochastic-gating driver: a tiny end-to-end run writes stochastic.json, .csv and
# .svg (every structure evaluated, the dense baseline present); it compares with a search's
# results file; bad flags and missing, corrupt or foreign results files are one clear line.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

STOCH="$ADDITIVE_BINARY_DIR/bin/stochastic"
data="$WORK/data"
"${MAKE_IDX[@]}" "$data" --train 400 --test 16
S=(--data "$data" --limit 300 --val 64 --d 16 --h 32 --epochs 1 --batch 32 --threads 1 --quiet)

check "per-batch run, p 0.5" -- "$STOCH" "${S[@]}" --p 0.5 --out "$WORK/batch"
for f in stochastic.json stochastic.csv stochastic.svg; do
  if [[ -s "$WORK/batch/$f" ]]; then pass "$f written"; else fail "$f missing"; fi
done
if python3 -c 'import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])' "$WORK/batch/stochastic.svg"; then
  pass "stochastic.svg is well-formed XML"; else fail "stochastic.svg is not well-formed XML"; fi
rows=$(($(wc -l <"$WORK/batch/stochastic.csv") - 1))
if [[ "$rows" -eq 64 ]]; then pass "64 structures in stochastic.csv"; else fail "stochastic.csv has $rows rows, expected 64"; fi
if python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["dense_alone"] is not None and j["accuracy"]["count"]==64' \
  "$WORK/batch/stochastic.json"; then pass "stochastic.json has the distribution and the dense baseline"
else fail "stochastic.json lacks the distribution or the dense baseline"; fi

check "per-sample run with a schedule, branch family, sampled structures" -- \
  "$STOCH" "${S[@]}" --family branch --p 0.6 --p-end 1 --per-sample --sample 20 --no-dense-baseline --out "$WORK/sample"
rows=$(($(wc -l <"$WORK/sample/stochastic.csv") - 1))
if [[ "$rows" -eq 20 ]]; then pass "20 sampled structures"; else fail "$rows rows, expected 20"; fi

# A search results file of the default family, as the search writes it (mask 63 dense).
python3 - "$WORK/results.json" <<'PY'
import json, sys
entries = [{"mask": m, "acc_mean": 0.5 + m / 200, "equivalent": []} for m in range(64)]
json.dump({"format": "additive-search-1", "family": "mlp S=4 L=2 merge_only", "complete": True,
           "report": {"entries": entries}}, open(sys.argv[1], "w"))
PY
check "with --search-results" -- "$STOCH" "${S[@]}" --no-dense-baseline --search-results "$WORK/results.json" --out "$WORK/cmp"
if grep -q "Kendall" "$WORK/out" && grep -q 'id="scatter"' "$WORK/cmp/stochastic.svg" &&
  python3 -c 'import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])' "$WORK/cmp/stochastic.svg"; then
  pass "tau reported, scatter drawn"
else fail "no Kendall's tau in the summary or no scatter in the SVG"; fi

expect_input_error "--p 0" "--p" "(0, 1]" -- "$STOCH" "${S[@]}" --p 0 --out "$WORK/x"
expect_input_error "--p 1.5" "--p" -- "$STOCH" "${S[@]}" --p 1.5 --out "$WORK/x"
expect_input_error "--p-end 0" "--p-end" -- "$STOCH" "${S[@]}" --p-end 0 --out "$WORK/x"
expect_input_error "--p not a number" "--p" "not a number" -- "$STOCH" "${S[@]}" --p half --out "$WORK/x"
expect_input_error "--sample beyond the family" "sample of 65 structures" -- "$STOCH" "${S[@]}" --sample 65 --out "$WORK/x"
expect_input_error "--family unknown" "--family" -- "$STOCH" "${S[@]}" --family wide --out "$WORK/x"
expect_input_error "missing search results" "cannot be read" -- \
  "$STOCH" "${S[@]}" --search-results "$WORK/none.json" --out "$WORK/x"
echo "{ not json" >"$WORK/garbage.json"
expect_input_error "corrupt search results" "not a search results file" -- \
  "$STOCH" "${S[@]}" --search-results "$WORK/garbage.json" --out "$WORK/x"
expect_input_error "search results of another family" "family" "merge_and_branch" -- \
  "$STOCH" "${S[@]}" --family branch --search-results "$WORK/results.json" --out "$WORK/x"
echo '{"format": "additive-search-1", "family": "mlp S=4 L=2 merge_only", "complete": false}' >"$WORK/partial.json"
expect_input_error "unfinished search results" "incomplete" -- \
  "$STOCH" "${S[@]}" --search-results "$WORK/partial.json" --out "$WORK/x"
if [[ -e "$WORK/x" ]]; then fail "a failed run created its --out directory"; else pass "failed runs wrote nothing"; fi
finish
