#!/usr/bin/env bash
# Installs the Debian packages that building and testing additive needs. Idempotent: it
# runs apt-get (update first) only when some package is missing. Uses sudo only when not
# root.
set -euo pipefail

packages=(
  cmake g++ make
  libeigen3-dev
  doctest-dev
  libopenmpi-dev openmpi-bin
  libcli11-dev
  nlohmann-json3-dev
  libfmt-dev
  zlib1g-dev
  libbenchmark-dev
  libopenblas-pthread-dev libopenblas0-pthread
  dataset-fashion-mnist
  python3-venv python3-pip
  clang libclang-rt-dev
)

say() { printf '[setup-deps] %s\n' "$*"; }

missing=()
for p in "${packages[@]}"; do
  if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed$'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  say "all ${#packages[@]} packages are installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi

say "missing: ${missing[*]}"
say "apt-get update"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
say "apt-get install ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
say "installed ${#missing[@]} package(s)"
