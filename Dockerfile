# syntax=docker/dockerfile:1
# batchyard: one binary (`batchyard`) for every face: run, submit, worker, status, results.
#
#   docker build -t batchyard .
#   docker run --rm batchyard --help
#   docker build --target debug-symbols --output type=local,dest=out .   # out/batchyard.debug
#
# The image's binary is stripped: the release profile keeps line tables (debug = 1) for
# backtraces, which made a 179 MB binary. They are split into batchyard.debug (the
# `debug-symbols` stage, linked by .gnu_debuglink) for anyone who needs them with a core dump.
# Linted by scripts/lint-deploy (hadolint).

# ---- build -------------------------------------------------------------------
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY . .
# Cache mounts keep the registry and target dir between builds (BuildKit);
# the binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin batchyard \
 && install -D -m 0755 target/release/batchyard /out/batchyard \
 && objcopy --only-keep-debug /out/batchyard /out/batchyard.debug \
 && strip --strip-all /out/batchyard \
 && objcopy --add-gnu-debuglink=/out/batchyard.debug /out/batchyard \
 && ls -l /out

# ---- the line tables, for `docker build --target debug-symbols --output ...` --------------
FROM scratch AS debug-symbols
COPY --from=builder /out/batchyard.debug /batchyard.debug

# ---- runtime -----------------------------------------------------------------
FROM debian:12.10-slim AS runtime
# ca-certificates is left unpinned on purpose: it must follow Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 batchyard \
 && useradd --system --uid 10001 --gid batchyard --home-dir /var/lib/batchyard --create-home --shell /usr/sbin/nologin batchyard
COPY --from=builder /out/batchyard /usr/local/bin/batchyard
COPY --chmod=0755 deploy/healthcheck.sh /usr/local/bin/batchyard-healthcheck
USER 10001:10001
WORKDIR /var/lib/batchyard
ENV RUST_LOG=info
# Healthy when the HTTP endpoint named by BATCHYARD_HEALTHCHECK answers 200 (compose sets it:
# a worker's /metrics, the API's /healthz); without it (one-shot commands) always healthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/batchyard-healthcheck"]
# Run with an init (docker run --init, compose `init: true`) so SIGTERM reaches
# batchyard as a normal signal and a stopping worker drains its in-flight jobs.
ENTRYPOINT ["batchyard"]
CMD ["--help"]
