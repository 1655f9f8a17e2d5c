#!/usr/bin/env bash
# ADDITIVE_TEST_LABELS: mpi
# ADDITIVE_TEST_TIMEOUT: 120
# The search driver under mpirun: 2 ranks write the same results.json (timings aside),
# results.csv, topk.json and report.svg as one process; a search cut short and resumed
# under mpirun ends with the same files, training only what was missing; an input error
# is one "error:" line from rank 0 and a non-zero exit, never a hang. Skips when there is
# no mpiexec or the driver was built without MPI.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

SEARCH="$ADDITIVE_BINARY_DIR/bin/search"
MPIEXEC="${MPIEXEC:-mpiexec}"
if [[ ! -x "$SEARCH" ]]; then
  echo "FAIL: driver not found: $SEARCH (build the 'search' target)" >&2
  exit 1
fi
if ! command -v "$MPIEXEC" >/dev/null || [[ "$(ldd "$SEARCH" 2>/dev/null)" != *libmpi* ]]; then
  echo "SKIP: no $MPIEXEC, or the search driver was built without MPI"
  exit 0
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# MPI_Init's one-time allocations are not leaks of ours (as for the tests labelled mpi).
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
MPI=("$MPIEXEC" -n 2 --oversubscribe)

data="$WORK/data"
"${MAKE_IDX[@]}" "$data" --train 700 --test 16
S=(--data "$data" --limit 600 --val 100 --d 16 --h 32 --epochs 1 --batch 32 --sample 16 --no-race --seeds 2
  --long-epochs 2 --long-top 4 --workers 1 --quiet)

# results.json without the wall times of the runs: the identity of a search's results.
same_results() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
def load(p):
    j = json.load(open(p))
    for r in j["runs"]:
        r.pop("seconds")
    return j
a, b = load(sys.argv[1]), load(sys.argv[2])
assert a["complete"] and len(a["runs"]) == 16 * 2 + 4, (a["complete"], len(a["runs"]))
assert a == b, "results differ"
EOF
}
compare_dirs() {  # <dir> <what>
  if same_results "$WORK/one/results.json" "$1/results.json"; then pass "results.json of $2 equals one process's"
  else fail "results.json of $2 differs from one process's"; fi
  for f in results.csv topk.json report.svg; do
    if cmp -s "$WORK/one/$f" "$1/$f"; then pass "$f of $2 identical"
    else fail "$f of $2 differs from one process's"; fi
  done
}

check "one process" -- "$SEARCH" "${S[@]}" --out "$WORK/one"
check "2 MPI ranks" -- "${MPI[@]}" "$SEARCH" "${S[@]}" --out "$WORK/mpi"
compare_dirs "$WORK/mpi" "2 MPI ranks"
if grep -q "on each of 2 MPI ranks" "$WORK/out" && [[ $(grep -c "^family " "$WORK/out") -eq 1 ]]; then
  pass "rank 0 alone prints, and names the 2 ranks"
else fail "the output of 2 ranks is not rank 0's alone" "$(head -5 "$WORK/out")"; fi

# A search cut short: its file keeps the first 7 runs, as after a kill.
cp -r "$WORK/mpi" "$WORK/cut"
python3 - "$WORK/cut/results.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
j["runs"], j["complete"] = j["runs"][:7], False
j.pop("report")
json.dump(j, open(sys.argv[1], "w"))
EOF
rm "$WORK/cut/results.csv" "$WORK/cut/topk.json" "$WORK/cut/report.svg"
check "resume under 2 MPI ranks" -- "${MPI[@]}" "$SEARCH" "${S[@]}" --out "$WORK/cut" --resume
compare_dirs "$WORK/cut" "the resumed search"
if grep -q "trained 29 runs" "$WORK/out"; then pass "the resume trained only the 36 - 7 missing runs"
else fail "the resume did not train exactly the missing runs" "$(grep trained "$WORK/out")"; fi

# Input errors under mpirun: non-zero exit, rank 0's one "error:" line, within the timeout.
mpi_input_error() {  # <description> <text> -- <search flags...>
  local desc="$1" text="$2"
  shift 3
  run_captured "${MPI[@]}" "$SEARCH" "$@"
  local n
  n=$(grep -c '^error: ' "$WORK/err")
  if [[ $RC -ne 0 && $RC -ne 124 && $n -eq 1 ]] && grep -qF "$text" "$WORK/err"; then
    pass "$desc: exit $RC, one line from rank 0"
  else
    fail "$desc" "exit $RC, $n error line(s), expected '$text'" "stderr: $(head -c 1500 "$WORK/err")"
  fi
}
mpi_input_error "existing results without --resume" "results.json exists" -- "${S[@]}" --out "$WORK/one"
mpi_input_error "--resume with other settings" "other train settings" -- \
  "${S[@]}" --lr 0.01 --resume --out "$WORK/one"
mpi_input_error "--resume without a results file" "cannot be read" -- "${S[@]}" --resume --out "$WORK/none"
check "a failed resume creates no --out directory" -- test ! -e "$WORK/none"
finish
