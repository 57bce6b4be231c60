# syntax=docker/dockerfile:1
#
# claude-code-server in a container: the server built from this repository, Node.js and the
# Claude Code CLI from npm, running as an unprivileged user.
#
#   docker build -t claude-code-server .
#   docker run -d --name ccs -p 3000:3000 \
#       -e CCS_API_KEY="$(openssl rand -hex 32)" -e ANTHROPIC_API_KEY=sk-ant-... \
#       -v ccs-home:/home/ccs -v "$PWD:/workspace" \
#       --stop-timeout 45 claude-code-server
#
# Build arguments: RUST_VERSION (the toolchain; Cargo.toml's rust-version is the minimum),
# NODE_VERSION (major version of the runtime image), CLAUDE_CLI_VERSION (the npm package
# @anthropic-ai/claude-code; the default is the version the test suite pins in
# scripts/test.sh, and a test keeps the two equal).
#
# The server listens on 0.0.0.0 inside the container, and refuses to do so without an API key:
# pass one as CCS_API_KEY (an admin key that is never written to disk or shown), or mount a
# config file with auth.apiKeys. The config, the SQLite database, the logs and the CLI's own
# state (~/.claude: login, session transcripts) live in the home directory, a volume.
# See docs/operations.md, section "Docker".

ARG RUST_VERSION=1.95
ARG NODE_VERSION=22

# ---- build
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY actors ./actors
COPY config ./config
COPY src ./src
# The caches keep the registry and the compiled dependencies between builds; the binary is
# copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin claude-code-server \
    && install -m 0755 target/release/claude-code-server /usr/local/bin/claude-code-server

# ---- runtime
FROM node:${NODE_VERSION}-bookworm-slim
ARG CLAUDE_CLI_VERSION=2.1.197

# tini as PID 1 reaps orphaned grandchildren of CLI runs and forwards SIGTERM to the server;
# git is what the CLI expects in a project; curl serves the health check.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl git tini \
    && rm -rf /var/lib/apt/lists/*

RUN npm install --global --no-audit --no-fund --loglevel=error \
        "@anthropic-ai/claude-code@${CLAUDE_CLI_VERSION}" \
    && npm cache clean --force \
    && claude --version

RUN groupadd --system --gid 10001 ccs \
    && useradd --system --uid 10001 --gid ccs --home-dir /home/ccs --create-home \
        --shell /usr/sbin/nologin ccs \
    && install -d -o ccs -g ccs /workspace

COPY --from=build /usr/local/bin/claude-code-server /usr/local/bin/claude-code-server

USER 10001:10001
ENV HOME=/home/ccs \
    HOST=0.0.0.0 \
    PORT=3000
# The default project directory (defaultProjectPath falls back to the working directory):
# mount the projects Claude may work on here.
WORKDIR /workspace
VOLUME ["/home/ccs"]
EXPOSE 3000

# /health is open (no key needed) and answers 503 when storage or the CLI is unusable.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS \"http://127.0.0.1:${PORT}/health\" > /dev/null || exit 1"]

# The server stops gracefully on SIGTERM: running tasks get shutdownGraceMs (30 s), then
# killGraceMs (5 s); give `docker stop` more than that (--stop-timeout 45).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "claude-code-server"]
CMD ["serve"]
