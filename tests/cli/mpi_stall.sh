#!/usr/bin/env bash
# ADDITIVE_TEST_LABELS: mpi
# ADDITIVE_TEST_TIMEOUT: 240
# A rank that stops without dying (SIGSTOP from outside, as a hung node behaves) ends a
# 2-rank search and a 2-rank cotrain within --comm-timeout plus a bound, never a hang:
# the live rank prints one "error: rank 0: MPI ... did not complete: rank(s) 1 did not
# reach it" line, and the job exits with code 2. The stopped process is found by its
# OMPI_COMM_WORLD_RANK among mpiexec's children and stopped 2 s after it starts, in the
# middle of a run sized to last far longer. Skips when there is no mpiexec or the drivers
# were built without MPI.
source "$(dirname "${BASH_SOURCE[0]}")/lib.bash"
require_drivers search cotrain

MPIEXEC="${MPIEXEC:-mpiexec}"
if ! command -v "$MPIEXEC" >/dev/null || [[ "$(ldd "$SEARCH" 2>/dev/null)" != *libmpi* ]]; then
  echo "SKIP: no $MPIEXEC, or the drivers were built without MPI"
  exit 0
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# MPI_Init's one-time allocations are not leaks of ours (as for the tests labelled mpi).
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"

TIMEOUT_S=3
# The deadline, 2 s of listening for the other ranks' notices, MPI_Abort's tear-down, and
# slack for a loaded 2-core machine under the sanitizers.
BOUND_S=$((TIMEOUT_S + 2 + 15))

data="$WORK/data"
"${MAKE_IDX[@]}" "$data" --train 2000 --test 16

# The pid of rank $2 among the processes of the mpiexec whose pid is $1 (empty if none yet).
rank_pid() {
  local p
  for p in $(pgrep -P "$1"); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
      echo "$p"
      return
    fi
  done
}

# 1 while process $1 exists and is not a zombie, else 0.
alive() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  [[ -n "$state" && "$state" != Z ]] && echo 1 || echo 0
}

# stall <name> <command...>: starts the command under mpiexec -n 2, stops rank 1 two
# seconds after it appears, and checks how and when the job ends.
stall() {
  local name="$1"
  shift
  local log="$WORK/$name.log"
  "$MPIEXEC" -n 2 --oversubscribe "$@" --comm-timeout "$TIMEOUT_S" >"$log" 2>&1 &
  local job=$! victim="" i
  for ((i = 0; i < 200; ++i)); do
    sleep 0.05
    victim=$(rank_pid "$job" 1)
    [[ -z "$victim" ]] || break
  done
  if [[ -z "$victim" ]]; then
    kill -9 "$job" 2>/dev/null
    fail "$name: rank 1 never appeared among mpiexec's children" "$(head -c 2000 "$log")"
    return
  fi
  sleep 2
  if ! kill -STOP "$victim" 2>/dev/null; then
    fail "$name: rank 1 (pid $victim) ended before it could be stopped: size the run up" "$(tail -3 "$log")"
    wait "$job"
    return
  fi
  local stopped end rc=0
  stopped=$(date +%s%N)
  # Wait for the job, at most BOUND_S seconds; then it is a hang: kill everything.
  for ((i = 0; i < BOUND_S * 10; ++i)); do
    kill -0 "$job" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$job" 2>/dev/null; then
    kill -CONT "$victim" 2>/dev/null
    kill -9 "$victim" "$job" 2>/dev/null
    wait "$job" 2>/dev/null
    fail "$name: the job still ran $BOUND_S s after rank 1 stopped (a hang)" "$(tail -5 "$log")"
    return
  fi
  wait "$job" || rc=$?
  end=$(date +%s%N)
  local ms=$(((end - stopped) / 1000000))
  local -a problems=()
  [[ $rc -eq 2 ]] || problems+=("exit code $rc, expected 2")
  grep -qE "^error: rank 0: MPI (all-reduce|broadcast|barrier) #[0-9]+ did not complete: rank\(s\) 1 did not reach it \(rank 0 waited [0-9.]+ s, timeout 3 s" "$log" ||
    problems+=("no line of rank 0 naming rank 1 as late")
  grep -qE "internal error|Segmentation|terminate called|AddressSanitizer|runtime error" "$log" &&
    problems+=("a crash or sanitizer report")
  # mpiexec may return while the rank it signalled is still dying: give it 5 s.
  for ((i = 0; i < 50 && $(alive "$victim"); ++i)); do sleep 0.1; done
  if ((  $(alive "$victim") )); then
    kill -CONT "$victim" 2>/dev/null
    kill -9 "$victim" 2>/dev/null
    problems+=("the stopped rank (pid $victim) was left behind")
  fi
  if [[ ${#problems[@]} -eq 0 ]]; then
    pass "$name: rank 1 stopped; the job ended $ms ms later with exit 2 and rank 0 naming rank 1"
  else
    fail "$name" "${problems[@]}" "output: $(grep -a "error" "$log" | head -5)"
  fi
}

# Runs that would take minutes: 16 structures x 40 seeds of a search, 1000 epochs of cotrain.
stall "search on 2 MPI ranks" "$SEARCH" --data "$data" --limit 1800 --val 200 --d 32 --h 64 \
  --no-race --epochs 2 --batch 32 --sample 16 --seeds 40 --long-epochs 0 --workers 1 --quiet --out "$WORK/search"
stall "cotrain on 2 MPI ranks" "$COTRAIN" --data "$data" --limit 1800 --val 200 --d 32 --h 64 \
  --epochs 1000 --batch 32 --masks 0x3f,0x15 --quiet --out "$WORK/cotrain"

finish
