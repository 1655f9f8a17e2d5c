#!/usr/bin/env bash
# ADDITIVE_TEST_LABELS: slow
# The search driver, racing (its default): the same results for 1 and 2 workers; a search
# killed (SIGKILL) after some runs and resumed writes the same results as an uninterrupted
# one, without training the finished runs again; bad flags and bad results files are one
# clear line.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

SEARCH="$ADDITIVE_BINARY_DIR/bin/search"
data="$WORK/data"
"${MAKE_IDX[@]}" "$data" --train 2400 --test 32
R=(--data "$data" --limit 2000 --val 300 --d 64 --h 256 --batch 32 --quiet)
S=("${R[@]}" --race 1x1,2x1,2x2)

check "uninterrupted search, 1 worker" -- "$SEARCH" "${S[@]}" --workers 1 --out "$WORK/one"
check "the same search, 2 workers" -- "$SEARCH" "${S[@]}" --workers 2 --out "$WORK/two"
for f in results.csv topk.json; do
  if cmp -s "$WORK/one/$f" "$WORK/two/$f"; then pass "$f identical for 1 and 2 workers"
  else fail "$f differs between 1 and 2 workers"; fi
done

# Kill a running search as soon as its results file holds a finished run.
"$SEARCH" "${S[@]}" --workers 1 --out "$WORK/killed" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  [[ -s "$WORK/killed/results.json" ]] && break
  sleep 0.05
done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
done_before=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(len(j["runs"]) if not j["complete"] else -1)' \
  "$WORK/killed/results.json" 2>/dev/null || echo invalid)
if [[ "$done_before" =~ ^[0-9]+$ && "$done_before" -ge 1 && "$done_before" -lt 64 ]]; then
  pass "killed mid-way with a valid results file ($done_before of 64 runs)"
else
  fail "the kill did not land mid-way (results file: $done_before)"
fi
if ls "$WORK/killed" | grep -q '\.tmp\.'; then fail "temp files left after the kill"; else pass "no temp files after the kill"; fi
resume_log="$WORK/resume.log"
check "resume the killed search" -- bash -c "\"$SEARCH\" ${S[*]} --workers 2 --out \"$WORK/killed\" --resume 2>\"$resume_log\""
for f in results.csv topk.json; do
  if cmp -s "$WORK/one/$f" "$WORK/killed/$f"; then pass "$f of the resumed search equals the uninterrupted one"
  else fail "$f of the resumed search differs"; fi
done

expect_input_error "existing results without --resume" "results.json exists" "--resume" -- \
  "$SEARCH" "${S[@]}" --out "$WORK/one"
expect_input_error "--sample 0" "sample" "empty" -- "$SEARCH" "${S[@]}" --sample 0 --out "$WORK/s0"
expect_input_error "--sample beyond the family" "sample of 65 structures" -- "$SEARCH" "${S[@]}" --sample 65 --out "$WORK/s65"
expect_input_error "--resume without a results file" "cannot be read" -- "$SEARCH" "${S[@]}" --resume --out "$WORK/none"
check "a failed resume creates no --out directory" -- test ! -e "$WORK/none"
mkdir -p "$WORK/garbage" && echo "{ not json" >"$WORK/garbage/results.json"
expect_input_error "--resume from a corrupt results file" "not a search results file" -- \
  "$SEARCH" "${S[@]}" --resume --out "$WORK/garbage"
expect_input_error "--resume with other settings" "other train settings" -- \
  "$SEARCH" "${S[@]}" --lr 0.01 --resume --out "$WORK/one"
if python3 - "$WORK/one/results.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
rungs = j["report"]["rungs"]
assert len(rungs) >= 2 and rungs[0]["structures"] == 64, rungs
assert all("epochs" in run for run in j["runs"])
EOF
then pass "the race ran past its first rung, and its report says so"
else fail "the race stopped at its first rung"; fi
expect_input_error "--seeds while racing" "--seeds and --epochs" "--no-race" -- \
  "$SEARCH" "${S[@]}" --seeds 3 --out "$WORK/r1"
expect_input_error "--race 1x1,1x1" "rung 2 (1x1) must add seeds or epochs" -- \
  "$SEARCH" "${R[@]}" --race 1x1,1x1 --out "$WORK/r2"
expect_input_error "--race 3x" "race '3x'" "SEEDSxEPOCHS" -- "$SEARCH" "${R[@]}" --race 3x --out "$WORK/r3"
expect_input_error "--family unknown" "--family" -- "$SEARCH" "${S[@]}" --family wide --out "$WORK/f"
finish
