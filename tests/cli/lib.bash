# Shared helpers of the CLI tests (sourced, not run: the .bash suffix keeps it out of the
# tests/cli/*.sh glob that registers tests). Sourcing it sets TRAIN (the driver), MAKE_IDX,
# WORK (a scratch directory removed on exit) and the PASS/FAIL counters.
#
#   check <description> -- <command...>        the command exits 0
#   expect_input_error <description> <text>... -- <command...>
#       the command exits with code exactly 2; stderr is exactly one line, it starts with
#       "error: " and contains every <text> (fixed strings: the input's name and what was
#       expected), at most CLI_MAX_MESSAGE characters once the scratch paths are taken
#       out; no sanitizer report, "terminate" or core dump; and when the command has
#       --checkpoint P or --resume P, P's directory is unchanged afterwards (same files,
#       byte for byte: no *.tmp.* left, no partial checkpoint, nothing written before lost).
#   finish                                     prints "N passed, M failed"; exit status 1 if any failed

set -u -o pipefail

: "${ADDITIVE_SOURCE_DIR:?set ADDITIVE_SOURCE_DIR to the source tree}"
: "${ADDITIVE_BINARY_DIR:?set ADDITIVE_BINARY_DIR to the build tree}"

TRAIN="$ADDITIVE_BINARY_DIR/bin/train"
MAKE_IDX=(python3 "$ADDITIVE_SOURCE_DIR/tests/cli/make_idx.py")
# Every command gets this long at most; a hang is a failure, not a stuck ctest.
CLI_TIMEOUT="${CLI_TIMEOUT:-60}"
# Longest acceptable error line, not counting the paths of $WORK in it.
CLI_MAX_MESSAGE="${CLI_MAX_MESSAGE:-200}"
# Small and single-threaded everywhere: each script must stay well under 20 s.
SMALL=(--epochs 1 --limit 64 --val 16 --d 16 --h 32 --threads 1 --quiet)

PASSED=0
FAILED=0

if [[ ! -x "$TRAIN" ]]; then
  echo "FAIL: driver not found: $TRAIN (build the 'train' target)" >&2
  exit 1
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/additive-cli.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# Sets SEARCH, STOCH and COTRAIN to the drivers in $ADDITIVE_BINARY_DIR/bin and
# stops the script unless each driver named ("search stochastic ...") is built.
require_drivers() {
  SEARCH="$ADDITIVE_BINARY_DIR/bin/search"
  STOCH="$ADDITIVE_BINARY_DIR/bin/stochastic"
  COTRAIN="$ADDITIVE_BINARY_DIR/bin/cotrain"
  local driver
  for driver in "$@"; do
    if [[ ! -x "$ADDITIVE_BINARY_DIR/bin/$driver" ]]; then
      echo "FAIL: driver not found: $ADDITIVE_BINARY_DIR/bin/$driver (build the $* targets)" >&2
      exit 1
    fi
  done
}

pass() {
  PASSED=$((PASSED + 1))
  echo "PASS: $1"
}

fail() {
  FAILED=$((FAILED + 1))
  echo "FAIL: $1"
  shift
  local line
  for line in "$@"; do echo "      $line"; done
}

# Prints "<sha256>  <name>" for every entry of directory $1, sorted (empty if none).
snapshot_dir() {
  (cd "$1" && find . -mindepth 1 -print0 | sort -z | xargs -0 -r sha256sum 2>/dev/null; find . -mindepth 1 | sort)
}

# The directories of the --checkpoint / --resume paths among the arguments.
guarded_dirs() {
  local prev="" arg
  for arg in "$@"; do
    case "$prev" in
      # (a following flag means --resume is a switch, as in search, not a path)
      --checkpoint | --resume) [[ "$arg" == -* ]] || dirname -- "$arg" ;;
    esac
    case "$arg" in
      --checkpoint=* | --resume=*) dirname -- "${arg#*=}" ;;
    esac
    prev="$arg"
  done | sort -u
}

# Runs the command after `--` with stdout/stderr captured into $WORK/out, $WORK/err;
# sets RC.
run_captured() {
  RC=0
  timeout "$CLI_TIMEOUT" "$@" >"$WORK/out" 2>"$WORK/err" || RC=$?
}

check() {
  local desc="$1"
  shift
  [[ "${1:-}" == "--" ]] && shift
  run_captured "$@"
  if [[ $RC -eq 0 ]]; then
    pass "$desc"
  else
    fail "$desc" "command: $*" "exit code $RC, expected 0" "stderr: $(head -c 2000 "$WORK/err")"
  fi
}

expect_input_error() {
  local desc="$1"
  shift
  local -a patterns=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do
    patterns+=("$1")
    shift
  done
  if [[ $# -eq 0 ]]; then
    fail "$desc" "test bug: expect_input_error needs '-- <command...>'"
    return
  fi
  shift

  local -a dirs=() before=()
  local dir i
  mapfile -t dirs < <(guarded_dirs "$@")
  for i in "${!dirs[@]}"; do
    before[i]="$(snapshot_dir "${dirs[i]}" 2>/dev/null)"
  done

  run_captured "$@"

  local -a problems=()
  [[ $RC -eq 2 ]] || problems+=("exit code $RC, expected 2")
  local err lines
  err="$(cat "$WORK/err")"
  lines="$(wc -l <"$WORK/err")"
  if [[ $lines -ne 1 || "$(tail -c 1 "$WORK/err" | od -An -c | tr -d ' ')" != '\n' ]]; then
    problems+=("stderr has $lines newline-terminated line(s), expected exactly one line")
  fi
  local first="${err%%$'\n'*}"
  [[ "$first" == "error: "* ]] || problems+=("stderr does not start with 'error: '")
  # "One clear line": short enough to read once the scratch paths are taken out.
  local text="${first//"$WORK"/}"
  if [[ ${#text} -gt $CLI_MAX_MESSAGE ]]; then
    problems+=("the error line is ${#text} characters without its paths, more than $CLI_MAX_MESSAGE: not one clear line")
  fi
  local p
  for p in "${patterns[@]}"; do
    [[ "$first" == *"$p"* ]] || problems+=("the error line does not contain '$p'")
  done
  if grep -Eqi 'sanitizer|runtime error:|terminate called|terminating|core dumped|segmentation fault|abort' "$WORK/err"; then
    problems+=("crash report on stderr")
  fi
  for i in "${!dirs[@]}"; do
    dir="${dirs[i]}"
    if compgen -G "$dir/*.tmp.*" >/dev/null; then
      problems+=("temporary file(s) left in $dir: $(cd "$dir" && echo *.tmp.*)")
    fi
    if [[ "$(snapshot_dir "$dir" 2>/dev/null)" != "${before[i]}" ]]; then
      problems+=("$dir changed (a checkpoint was written, removed or modified)")
    fi
  done

  if [[ ${#problems[@]} -eq 0 ]]; then
    pass "$desc  [$first]"
  else
    fail "$desc" "command: $*" "${problems[@]}" "stderr: $(head -c 2000 "$WORK/err")"
  fi
}

finish() {
  echo "$PASSED passed, $FAILED failed"
  [[ $FAILED -eq 0 ]]
}
