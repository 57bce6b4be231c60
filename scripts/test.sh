#!/usr/bin/env bash
# Runs every test of claude-code-server on a fresh machine.
#
# It provisions what the tests need and fails loudly when something cannot be had — it never
# skips a test silently:
#   * the pinned real Claude CLI (npm package @anthropic-ai/claude-code), into a cache
#     directory, for the end-to-end tests (Node.js and npm come from apt when missing);
#   * the pinned Redocly CLI (npm package @redocly/cli, which needs Node.js 20.19+ or 22.12+),
#     into the cache, which lints the served OpenAPI document with Redocly's recommended rules
#     (tests/api/openapi.rs);
#   * a Python virtualenv with the pinned tools of tests/python-requirements.txt: the official
#     `openai` and `anthropic` packages (SDK tests of the OpenAI- and Anthropic-compatible
#     APIs), schemathesis and
#     openapi-spec-validator (the OpenAPI document and the fuzz run), hadolint (the
#     Dockerfile); python3-venv comes from apt when `python3 -m venv` cannot work;
#   * curl and jq (the documentation's examples are run as shell scripts) and systemd-analyze (the
#     systemd unit is verified), from apt when missing;
#   * redis-server (apt package redis-server) for the Redis storage tests, which start their
#     own server on a free loopback port; a system Redis service is never used;
# then checks formatting and lints, and runs the whole test suite.
#
# Environment: CCS_CACHE_DIR (default ./.cache) holds the provisioned tools.
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_CLI_VERSION="2.1.197"
REDOCLY_CLI_VERSION="2.77.0"
CACHE_DIR="${CCS_CACHE_DIR:-$PWD/.cache}"

say() { printf '==> %s\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

apt_install() {
  command -v apt-get >/dev/null || die "$1 is missing and apt-get is not available to install it"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  say "installing $* with apt"
  $sudo apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

command -v cargo >/dev/null || die "cargo is missing: install Rust with rustup"

# ---- command-line tools the documentation tests run
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
command -v systemd-analyze >/dev/null || missing+=(systemd)
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"

# npm_tool WHAT PACKAGE VERSION DIR BIN: install PACKAGE@VERSION into DIR unless BIN (under
# DIR) is there already, then check that BIN answers VERSION to --version.
npm_tool() {
  local what="$1" package="$2" version="$3" dir="$4" bin="$5" got
  if [ ! -x "$bin" ]; then
    command -v npm >/dev/null || apt_install nodejs npm
    say "installing $package@$version into $dir"
    mkdir -p "$dir"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error "$package@$version") \
      || die "npm could not install the $what"
  fi
  got="$("$bin" --version 2>/dev/null | tail -n 1 || true)"
  case "$got" in
    "$version"*) say "$what: $got" ;;
    *) die "the cached $what answers '$got', expected $version (remove $dir)" ;;
  esac
}

# ---- the real Claude CLI, pinned, in the cache
CLAUDE_DIR="$CACHE_DIR/claude-cli-$CLAUDE_CLI_VERSION"
CLAUDE_BIN="$CLAUDE_DIR/node_modules/.bin/claude"
npm_tool "real Claude CLI" @anthropic-ai/claude-code "$CLAUDE_CLI_VERSION" "$CLAUDE_DIR" "$CLAUDE_BIN"
export CCS_REAL_CLAUDE="$CLAUDE_BIN"

# ---- the Redocly CLI (the OpenAPI linter), pinned, in the cache
REDOCLY_DIR="$CACHE_DIR/redocly-$REDOCLY_CLI_VERSION"
REDOCLY_BIN="$REDOCLY_DIR/node_modules/.bin/redocly"
npm_tool "Redocly CLI" @redocly/cli "$REDOCLY_CLI_VERSION" "$REDOCLY_DIR" "$REDOCLY_BIN"
export CCS_REDOCLY="$REDOCLY_BIN"

# ---- the Python test tools, pinned, in a virtualenv in the cache (rebuilt when the pins change)
PY_VENV="$CACHE_DIR/py-venv"
PY_REQS="tests/python-requirements.txt"
PY_STAMP="$PY_VENV/.requirements.sha256"
want="$(sha256sum "$PY_REQS" | cut -d' ' -f1)"
if [ "$(cat "$PY_STAMP" 2>/dev/null || true)" != "$want" ]; then
  command -v python3 >/dev/null || apt_install python3 python3-venv
  rm -rf "$PY_VENV"
  say "creating $PY_VENV from $PY_REQS"
  # On Debian, venv works only with python3-venv (ensurepip); install it and retry once.
  if ! python3 -m venv "$PY_VENV" >/dev/null 2>&1; then
    rm -rf "$PY_VENV"
    apt_install python3-venv
    python3 -m venv "$PY_VENV" || die "python3 -m venv failed"
  fi
  "$PY_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$PY_REQS" \
    || die "pip could not install $PY_REQS"
  echo "$want" > "$PY_STAMP"
fi
say "Python tools: $("$PY_VENV/bin/python" -c 'import anthropic, openai, schemathesis; print("openai", openai.__version__, "· anthropic", anthropic.__version__, "· schemathesis", schemathesis.__version__)') · $("$PY_VENV/bin/hadolint" --version)"
export CCS_PY_VENV="$PY_VENV"

# ---- redis-server for the Redis storage tests. Each test binary starts its own private server
# on a free 127.0.0.1 port and kills it when it exits (actors/src/store/redis/test_server.rs),
# so only the binary is needed: if the Debian package starts its system service, nothing uses
# it, and where it cannot start (no init system) nothing is missed.
if ! command -v redis-server >/dev/null; then
  apt_install redis-server
  command -v redis-server >/dev/null || die "redis-server is still missing after installing it"
fi
say "redis-server: $(redis-server --version)"

# ---- checks and tests
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
say "cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee "$CACHE_DIR/last-test.log"
status=${PIPESTATUS[0]}
passed=$(grep -Eo '^test result: [a-z]+\. [0-9]+ passed' "$CACHE_DIR/last-test.log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$CACHE_DIR/last-test.log" | awk '{s+=$1} END {print s+0}')
echo "$passed passed, $failed failed"
exit "$status"
