# syntax=docker/dockerfile:1
# batchyard: one binary (`batchyard`) for every face: run, submit, worker, status, results.
#
#   docker build -t batchyard .
#   docker run --rm batchyard --help

# ---- build -------------------------------------------------------------------
FROM rust:1-bookworm AS builder
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
 && install -D -m 0755 target/release/batchyard /out/batchyard

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 batchyard \
 && useradd --system --uid 10001 --gid batchyard --home-dir /var/lib/batchyard --create-home --shell /usr/sbin/nologin batchyard
COPY --from=builder /out/batchyard /usr/local/bin/batchyard
USER batchyard:batchyard
WORKDIR /var/lib/batchyard
ENV RUST_LOG=info
# Run with an init (docker run --init, compose `init: true`) so SIGTERM reaches
# batchyard as a normal signal and a stopping worker drains its in-flight jobs.
ENTRYPOINT ["batchyard"]
CMD ["--help"]
