#!/usr/bin/env bash
# ADDITIVE_TEST_TIMEOUT: 600
# Careless input the drivers refuse before any work (issue 18): an --out that is a file,
# or under one, or read-only; widths whose model cannot fit in memory; a seed beyond
# 64 bits (never clamped); and the temporary file a kill left behind is removed by the
# next write of the same file (a live process's is kept). One "error: " line, exit 2.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"

require_drivers search stochastic cotrain
data="$WORK/data"
"${MAKE_IDX[@]}" "$data" --train 200 --test 16
T=(--data "$data" --epochs 1 --limit 64 --val 16 --d 16 --h 32 --batch 32 --threads 1 --quiet)
S=(--data "$data" --epochs 1 --limit 64 --val 16 --d 16 --h 32 --batch 32 --quiet)

# --out: a file, under a file, read-only (as root: the driver runs as nobody via setpriv).
echo "not a directory" >"$WORK/file"
expect_input_error "search --out is a file" "--out" "'$WORK/file' exists and is not a directory" -- \
  "$SEARCH" "${S[@]}" --no-race --out "$WORK/file"
expect_input_error "stochastic --out is a file" "--out" "is not a directory" -- \
  "$STOCH" "${S[@]}" --threads 1 --out "$WORK/file"
expect_input_error "cotrain --out is a file" "--out" "is not a directory" -- \
  "$COTRAIN" "${S[@]}" --masks 0x3f --out "$WORK/file"
expect_input_error "cotrain --out under a file" "--out" "cannot create directory" "'$WORK/file' is not a directory" -- \
  "$COTRAIN" "${S[@]}" --masks 0x3f --out "$WORK/file/sub/dir"
if [[ "$(id -u)" -ne 0 ]]; then
  mkdir -p "$WORK/ro" && chmod a-w "$WORK/ro"
  expect_input_error "cotrain --out in a read-only directory" "--out" "is not writable" -- \
    "$COTRAIN" "${S[@]}" --masks 0x3f --out "$WORK/ro/out"
  chmod u+w "$WORK/ro"
elif command -v setpriv >/dev/null && chmod a+rx "$WORK" &&
  setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$COTRAIN" -a -r "$data/t10k-labels-idx1-ubyte.gz"; then
  # Root writes anyway: run the driver as nobody (65534), for whom the directory is read-only.
  mkdir -p "$WORK/ro" && chmod 555 "$WORK/ro"
  expect_input_error "cotrain --out in a read-only directory (as nobody)" "--out" "is not writable" -- \
    setpriv --reuid=65534 --regid=65534 --clear-groups "$COTRAIN" "${S[@]}" --masks 0x3f --out "$WORK/ro/out"
else
  echo "SKIP: read-only --out (running as root, and user nobody cannot run the driver here)"
fi
check "cotrain --out creatable (two levels)" -- "$COTRAIN" "${S[@]}" --masks 0x3f --out "$WORK/new/out"

# Widths whose model cannot fit in memory: refused with the size they need, nothing allocated.
B=(--data "$data" --epochs 1 --limit 64 --val 16 --batch 32 --quiet --d 65536 --h 1048576)
expect_input_error "train --d 65536 --h 1048576" "--d 65536 --h 1048576" "parameters" "more than this machine's" -- \
  "$TRAIN" "${B[@]}"
expect_input_error "search --d 65536 --h 1048576" "--d 65536 --h 1048576" "more than this machine's" -- \
  "$SEARCH" "${B[@]}" --no-race --out "$WORK/big"
expect_input_error "cotrain --d 65536 --h 1048576" "--d 65536 --h 1048576" "more than this machine's" -- \
  "$COTRAIN" "${B[@]}" --masks 0x3f --out "$WORK/big"

# A seed beyond 64 bits: outside the range, not clamped to 2^63 - 1.
expect_input_error "train --seed 2^64" "--seed" "18446744073709551616 is outside" -- \
  "$TRAIN" "${T[@]}" --seed 18446744073709551616
expect_input_error "search --seed 2^63" "--seed" "9223372036854775808 is outside" -- \
  "$SEARCH" "${S[@]}" --no-race --seed 9223372036854775808 --out "$WORK/s"
check "train --seed 2^63 - 1 is accepted" -- "$TRAIN" "${T[@]}" --seed 9223372036854775807

# A newline in a mask or a path: escaped, the error stays one line.
expect_input_error "a mask with a newline" "0x\\x0aff" -- "$TRAIN" "${T[@]}" --mask $'0x\nff'
expect_input_error "a data path with a newline" "$WORK/no"'\x0a'"where" -- \
  "$TRAIN" --data "$WORK/no"$'\n'"where" --epochs 1 --limit 64 --val 16 --d 16 --h 32 --quiet

# Temporary files of a killed write: a dead process's are removed by the next write of the
# same file, a live process's (this shell's) are kept, other files' are not touched.
mkdir -p "$WORK/ck"
dead=999999999  # above any pid_max
echo partial >"$WORK/ck/run.safetensors.tmp.$dead.0"
echo partial >"$WORK/ck/run.safetensors.tmp.$dead.17"
echo partial >"$WORK/ck/run.safetensors.tmp.$$.0"
echo partial >"$WORK/ck/other.safetensors.tmp.$dead.0"
check "train writes its checkpoint next to stale temporary files" -- \
  "$TRAIN" "${T[@]}" --checkpoint "$WORK/ck/run.safetensors"
left=$(cd "$WORK/ck" && ls | tr '\n' ' ')
if [[ "$left" == "other.safetensors.tmp.$dead.0 run.safetensors run.safetensors.tmp.$$.0 " ]]; then
  pass "the dead process's temporary files are gone, the others kept"
else
  fail "temporary files after the write: $left"
fi

# The same through real kills: SIGKILL train while it writes a checkpoint every step.
"${MAKE_IDX[@]}" "$WORK/more" --train 2000 --test 16
mkdir -p "$WORK/kill"
for _ in 1 2 3; do
  "$TRAIN" --data "$WORK/more" --epochs 50 --val 16 --d 256 --h 1024 --batch 8 --threads 1 --quiet \
    --checkpoint "$WORK/kill/run.safetensors" --checkpoint-every 1 >/dev/null 2>&1 &
  pid=$!
  sleep 1
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
done
echo "note: the kills left $(find "$WORK/kill" -name 'run.safetensors.tmp.*' | wc -l) temporary file(s)"
check "the next run writes the same checkpoint" -- "$TRAIN" "${T[@]}" --checkpoint "$WORK/kill/run.safetensors"
if compgen -G "$WORK/kill/run.safetensors.tmp.*" >/dev/null; then
  fail "temporary files of the killed runs are left: $(cd "$WORK/kill" && echo run.safetensors.tmp.*)"
else
  pass "no temporary file of the killed runs is left"
fi

finish
