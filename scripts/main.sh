#!/usr/bin/env bash
# The main job (the README's first command): installs what it needs, builds the drivers
# with the cpu-release preset, then runs the structure search on Fashion-MNIST with the
# default family, writing its leaderboard and reports to search-out/. Extra arguments go
# to the driver (see `build/cpu-release/bin/search --help`); if search-out/ holds an
# earlier search, pass --resume to continue it or --out DIR for a new one.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

printf '==== system packages ====\n'
bash scripts/setup-deps.sh
printf '==== configure and build (cpu-release) ====\n'
cmake --preset cpu-release >/dev/null
cmake --build --preset cpu-release --target search -j2
printf '==== structure search ====\n'
exec build/cpu-release/bin/search "$@"
