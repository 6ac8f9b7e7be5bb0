# One image holding both binaries; a deployment picks its role with the command
# (`kv-writer` or `kv-reader`). Build: docker build -t kafka-kv .
FROM rust:1.90-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
# Embedded in the binaries, served at /openapi.yaml.
COPY docs/openapi-writer.yaml docs/openapi-reader.yaml docs/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/kv-writer target/release/kv-reader /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/kv --create-home kv
COPY --from=build /out/kv-writer /out/kv-reader /usr/local/bin/
USER 10001
WORKDIR /var/lib/kv
# Containers log JSON lines for collectors; override with KV_API_LOG_FORMAT=text.
ENV KV_API_LOG_FORMAT=json \
    KV_API_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD curl -fsS http://127.0.0.1:8080/healthz/live || exit 1
CMD ["kv-reader"]
