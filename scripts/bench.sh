#!/usr/bin/env bash
# Benchmarks claude-code-server on this machine and prints a markdown table (see
# docs/benchmarks.md). Installs wrk and redis-server when missing (apt), builds the release
# server and fake CLI, and runs the driver (bench/, package ccs-bench). Every option is passed
# to the driver:
#   ./scripts/bench.sh --repeats 5 --storage sqlite --tasks 2000
#   ./scripts/bench.sh --help
# All load goes to 127.0.0.1, bounded in count and time (a full run takes a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench.sh: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo is missing: install Rust with rustup"

# wrk (control plane load) and redis-server (the Redis storage measurements).
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null || die "${missing[*]} missing and apt-get is not available to install them"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  say "installing ${missing[*]} with apt"
  $sudo apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi

say "cargo build --release --bins (server and fake CLI)"
cargo build --release --bins --quiet
say "running the benchmark"
exec cargo run --release --quiet -p ccs-bench -- --bin-dir "${CARGO_TARGET_DIR:-target}/release" "$@"
