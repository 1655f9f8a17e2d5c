#!/usr/bin/env bash
# ADDITIVE_TEST_TIMEOUT: 120
# The co-training driver: bad flags and bad topk files are one clear line; a tiny run on
# threads writes the report with every structure and the accuracies alone taken from the
# search's files; local SGD communicates 1/H of the synchronous payload; and, when mpirun
# exists and the driver was built with MPI, 2 MPI ranks give the same report as 2 threads
# (2 ranks: one addition per element, so the all-reduces agree bit for bit); a run stopped
# after 4 steps (--stop-after, --checkpoint) and resumed (--resume) writes the same report
# as an uninterrupted one, and a checkpoint of other settings is refused in one line.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

COTRAIN="$ADDITIVE_BINARY_DIR/bin/cotrain"
if [[ ! -x "$COTRAIN" ]]; then
  echo "FAIL: driver not found: $COTRAIN (build the 'cotrain' target)" >&2
  exit 1
fi
data="$WORK/data"
"${MAKE_IDX[@]}" "$data" --train 400 --test 16
C=(--data "$data" --limit 300 --val 60 --d 16 --h 32 --epochs 1 --batch 30 --quiet)

# A search's files, written by hand: topk.json and results.json (one entry with an equivalent).
mkdir -p "$WORK/search"
# The family string is the one the driver writes into cotrain.json: ask it once.
check "a one-structure run" -- "$COTRAIN" "${C[@]}" --masks 0x1 --out "$WORK/one"
family=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["family"])' "$WORK/one/cotrain.json")
python3 - "$WORK/search" "$family" <<'EOF'
import json, sys
out, family = sys.argv[1], sys.argv[2]
json.dump({"family": family, "k": 2, "structures": [
    {"rank": 1, "mask": 63, "mask_hex": "0x3f", "structure": "", "val_accuracy": 0.8, "comm_bytes": 0},
    {"rank": 2, "mask": 21, "mask_hex": "0x15", "structure": "", "val_accuracy": 0.7, "comm_bytes": 0}]},
    open(out + "/topk.json", "w"))
json.dump({"format": "additive-search-1", "runs": [], "complete": True, "report": {"entries": [
    {"mask": 63, "acc_mean": 0.81, "equivalent": []},
    {"mask": 21, "acc_mean": 0.71, "equivalent": [5]}]}}, open(out + "/results.json", "w"))
json.dump({"family": "other", "structures": [{"mask": 1}]}, open(out + "/other.json", "w"))
open(out + "/broken.json", "w").write("{not json")
EOF

expect_input_error "no structures given" "--topk" "--masks" -- "$COTRAIN" "${C[@]}" --out "$WORK/x"
expect_input_error "missing topk file" "--topk" "does not exist" -- "$COTRAIN" "${C[@]}" --topk "$WORK/none.json"
expect_input_error "--topk and --masks together" "excludes" -- \
  "$COTRAIN" "${C[@]}" --topk "$WORK/search/topk.json" --masks 0x3f
expect_input_error "a mask that is not a number" "--masks" "'0xzz' is not a mask" -- "$COTRAIN" "${C[@]}" --masks 0x3f,0xzz
expect_input_error "a mask beyond the family" "--masks" "0x40" "6 gates" -- "$COTRAIN" "${C[@]}" --masks 0x40
expect_input_error "workers not a multiple of K" "--workers 3" "multiple of 2" -- \
  "$COTRAIN" "${C[@]}" --masks 0x3f,0x15 --workers 3
expect_input_error "negative H" "--local-sgd" -- "$COTRAIN" "${C[@]}" --masks 0x3f --local-sgd -1
expect_input_error "topk of another family" "family other" -- "$COTRAIN" "${C[@]}" --topk "$WORK/search/other.json"
expect_input_error "topk not JSON" "not valid JSON" -- "$COTRAIN" "${C[@]}" --topk "$WORK/search/broken.json"

check "co-train the topk on 2 threads" -- "$COTRAIN" "${C[@]}" --topk "$WORK/search/topk.json" --out "$WORK/thr"
if python3 - "$WORK/thr" <<'EOF'
import json, sys, csv
d = sys.argv[1]
j = json.load(open(d + "/cotrain.json"))
s = j["structures"]
assert [e["mask"] for e in s] == [63, 21], s
assert [e["solo_accuracy"] for e in s] == [0.81, 0.71], s          # results.json wins over topk
# Tensor-parallel traffic (nn/cost.hpp): dense, one 4-way segment per block, forward and
# backward: 4 all-reduces of 1.5 activations; 0x15 = [12|34] . [1|23|4]: 6 of 1.0. Same bytes.
assert [e["tp_allreduces_per_step"] for e in s] == [4, 6], s
assert [e["tp_fraction_of_dense"] for e in s] == [1.0, 1.0], s
assert s[0]["tp_bytes_per_step"] == j["communication"]["tensor_parallel_dense_bytes_per_step"] > 0, s
a = {e["mask"]: e for e in j["all_structures"]}
assert len(a) == 64 and a[5]["solo_accuracy"] == 0.71 and a[1]["solo_accuracy"] is None
assert a[63]["cotrained"] and not a[1]["cotrained"]
assert a[63]["accuracy"] == s[0]["cotrained_accuracy"]
assert all(0 <= e["accuracy"] <= 1 for e in a.values())
c = j["communication"]
assert c["mode"] == "synchronous" and c["payload_bytes"] == c["synchronous_payload_bytes"] > 0
# one all-reduce per gradient bucket (head, block 1, block 0, embedding) per step
assert c["all_reduces"] == 4 * j["steps"] == 40, c
assert len(list(csv.reader(open(d + "/all_structures.csv")))) == 65
assert len(list(csv.reader(open(d + "/structures.csv")))) == 3
import xml.etree.ElementTree as E
r = E.parse(d + "/cotrain.svg").getroot()
n = "{http://www.w3.org/2000/svg}"
assert r.tag == n + "svg", r.tag
assert [g.get("id") for g in r.findall(n + "g")] == ["bars", "histogram", "cotrained"]
assert len(r.find(n + "g[@id='bars']").findall(n + "rect")) == 4     # 2 structures x (co-trained, alone)
assert len(r.find(n + "g[@id='cotrained']").findall(n + "line")) == 2
EOF
then pass "report: 2 structures with their accuracies alone, all 64 on the shared weights, cotrain.svg"
else fail "the report of the topk run is wrong"; fi

mkdir -p "$WORK/ck"  # its own directory: expect_input_error checks that a refused --resume changes nothing there
check "stop the topk run after 4 of 10 steps" -- "$COTRAIN" "${C[@]}" --topk "$WORK/search/topk.json" \
  --checkpoint "$WORK/ck/ck.safetensors" --stop-after 4 --out "$WORK/stopped"
if [[ -s "$WORK/ck/ck.safetensors" && ! -e "$WORK/stopped/cotrain.json" ]]; then pass "stopped: a checkpoint, no report"
else fail "the stopped run left no checkpoint, or wrote a report"; fi
check "resume it" -- "$COTRAIN" "${C[@]}" --topk "$WORK/search/topk.json" --resume "$WORK/ck/ck.safetensors" \
  --out "$WORK/resumed"
for f in structures.csv all_structures.csv; do
  if cmp -s "$WORK/thr/$f" "$WORK/resumed/$f"; then pass "$f of the resumed run equals the uninterrupted one"
  else fail "$f of the resumed run differs from the uninterrupted one"; fi
done
expect_input_error "resume with another --lr" "other co-training settings" "train.lr" -- \
  "$COTRAIN" "${C[@]}" --topk "$WORK/search/topk.json" --lr 0.01 --resume "$WORK/ck/ck.safetensors" --out "$WORK/x"

check "local SGD, H = 5, same batch" -- \
  "$COTRAIN" "${C[@]}" --masks 0x3f,0x15 --local-sgd 5 --same-batch --out "$WORK/local"
if python3 -c '
import json, sys
c = json.load(open(sys.argv[1] + "/cotrain.json"))["communication"]
assert c["mode"] == "local-sgd" and c["all_reduces"] == 2 and c["fraction_of_synchronous"] == 0.2, c
' "$WORK/local"; then pass "local SGD with H = 5 sends a fifth of the synchronous payload"
else fail "local SGD communication counts are wrong"; fi

if command -v "${MPIEXEC:-mpiexec}" >/dev/null && [[ "$(ldd "$COTRAIN" 2>/dev/null)" == *libmpi* ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  # MPI_Init's one-time allocations are not leaks of ours (as for the tests labelled mpi).
  export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
  check "co-train the topk on 2 MPI ranks" -- \
    "${MPIEXEC:-mpiexec}" -n 2 --oversubscribe "$COTRAIN" "${C[@]}" --topk "$WORK/search/topk.json" --out "$WORK/mpi"
  for f in structures.csv all_structures.csv; do
    if cmp -s "$WORK/thr/$f" "$WORK/mpi/$f"; then pass "$f identical for 2 threads and 2 MPI ranks"
    else fail "$f differs between 2 threads and 2 MPI ranks"; fi
  done
  check "stop on 2 MPI ranks after 4 steps" -- "${MPIEXEC:-mpiexec}" -n 2 --oversubscribe "$COTRAIN" "${C[@]}" \
    --topk "$WORK/search/topk.json" --checkpoint "$WORK/ck/mpi.safetensors" --stop-after 4 --out "$WORK/mpi-stopped"
  check "resume on 2 MPI ranks" -- "${MPIEXEC:-mpiexec}" -n 2 --oversubscribe "$COTRAIN" "${C[@]}" \
    --topk "$WORK/search/topk.json" --resume "$WORK/ck/mpi.safetensors" --out "$WORK/mpi-resumed"
  for f in structures.csv all_structures.csv; do
    if cmp -s "$WORK/thr/$f" "$WORK/mpi-resumed/$f"; then pass "$f of the MPI run resumed equals the uninterrupted one"
    else fail "$f of the MPI run resumed differs"; fi
  done
  rc=0
  timeout 60 "${MPIEXEC:-mpiexec}" -n 3 --oversubscribe "$COTRAIN" "${C[@]}" --masks 0x3f,0x15 \
    --out "$WORK/mpi3" >"$WORK/mpi3.log" 2>&1 || rc=$?
  if [[ $rc -ne 0 && $rc -ne 124 ]] && grep -qF "MPI ranks 3 for 2 structures" "$WORK/mpi3.log"; then
    pass "3 MPI ranks for 2 structures: error, exit $rc"
  else fail "3 MPI ranks for 2 structures: exit $rc" "$(head -3 "$WORK/mpi3.log")"; fi
else
  echo "SKIP: no mpiexec or the driver was built without MPI"
fi

finish
