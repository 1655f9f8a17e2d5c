#!/usr/bin/env bash
# Builds the fuzz targets of the file readers (preset `fuzz`: clang, libFuzzer, ASan +
# UBSan; docs/fuzzing.md) and runs each for a fixed number of executions, starting from
# its seed corpus fuzz/corpus/<target>/. The seeds are only read: what the fuzzer adds
# goes to a scratch directory. A crash, sanitizer report, exception other than
# InputError, timeout or out-of-memory fails the run and keeps the input.
#
#   bash scripts/fuzz.sh [--runs N] [--build-dir DIR] [--work DIR] [--jobs N] [TARGET...]
#
#   --runs N         executions per target (default 20000, CI's short run)
#   --build-dir DIR  build tree (default: the preset's, build/fuzz)
#   --work DIR       where the new inputs, logs and findings go (default: a temporary
#                    directory, removed when every target passes)
#   --jobs N         build parallelism (default 2)
#   TARGET           idx, safetensors, ... (default: every fuzz/fuzz_<target>.cpp)
set -euo pipefail

# One function, read whole before it runs: editing this file during a long run is safe.
main() {
  runs=20000
  build=""
  work=""
  jobs=2
  targets=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --runs) runs=$2; shift 2 ;;
      --build-dir) build=$2; shift 2 ;;
      --work) work=$2; shift 2 ;;
      --jobs) jobs=$2; shift 2 ;;
      -h|--help) sed -n "2,15p" "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
      -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
      *) targets+=("$1"); shift ;;
    esac
  done
  # Paths given are relative to where the script was called from.
  [ -z "$build" ] || build=$(realpath -m "$build")
  [ -z "$work" ] || work=$(realpath -m "$work")
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  root=$PWD
  if [ "${#targets[@]}" -eq 0 ]; then
    for f in fuzz/fuzz_*.cpp; do
      t=${f#fuzz/fuzz_}
      targets+=("${t%.cpp}")
    done
  fi

  if [ -z "$build" ]; then
    cmake --preset fuzz >/dev/null
    build="$root/build/fuzz"
  else
    cmake --preset fuzz -B "$build" >/dev/null
  fi
  cmake --build "$build" -j"$jobs" --target "${targets[@]/#/fuzz_}"

  keep_work=1
  if [ -z "$work" ]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/additive-fuzz.XXXXXX")
    keep_work=0
  fi
  mkdir -p "$work"

  # Limits: 2 GiB of RSS and 512 MiB in one allocation (an allocation sized by a header a
  # reader failed to check is a finding), 10 s per input.
  flags=(-runs="$runs" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1)
  export UBSAN_OPTIONS=print_stacktrace=1

  failed=()
  printf '%-12s %10s %8s %8s %6s %7s  %s\n' target runs seconds exec/s cov ft result
  for t in "${targets[@]}"; do
    corpus="$root/fuzz/corpus/$t"
    [ -d "$corpus" ] || { echo "fuzz.sh: no seed corpus $corpus" >&2; exit 2; }
    mkdir -p "$work/$t/new" "$work/$t/findings"
    log="$work/$t/log"
    start=$(date +%s%N)
    # New inputs go to the first directory; the seeds are read, never written.
    if "$build/bin/fuzz_$t" "${flags[@]}" -artifact_prefix="$work/$t/findings/" \
         "$work/$t/new" "$corpus" >"$log" 2>&1; then
      result=ok
    else
      result=FINDING
      failed+=("$t")
    fi
    tenths=$(( ($(date +%s%N) - start) / 100000000 ))
    seconds="$((tenths / 10)).$((tenths % 10))"
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")
    printf '%-12s %10s %8s %8s %6s %7s  %s\n' "$t" "${executed:--}" "$seconds" "${rate:--}" "${cov:--}" \
      "${ft:--}" "$result"
    if [ "$result" != ok ]; then
      echo "---- $t: the end of $log"
      tail -40 "$log"
      echo "---- the input is in $work/$t/findings/ (replay it: $build/bin/fuzz_$t FILE); once"
      echo "     the reader is fixed, add it to $corpus/ as a regression seed"
    fi
  done

  if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: findings in: ${failed[*]} (logs and inputs kept in $work)"
    exit 1
  fi
  [ "$keep_work" = 1 ] || rm -rf "$work"
}

main "$@"
