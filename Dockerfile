# One image holding both binaries; a deployment picks its role with the command
# (`kv-writer` or `kv-reader`). Build: docker build -t kafka-kv .
# Debian packages are pinned to bookworm's current versions (hadolint DL3008); when a build says
# a version is gone, take the new one from `apt-cache policy PACKAGE` in a bookworm container.
FROM rust:1.90-bookworm AS build
# The git revision `--version` prints (the build context has no .git):
#   docker build --build-arg REVISION="$(git rev-parse --short=12 HEAD)" -t kafka-kv .
ARG REVISION=""
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        cmake=3.25.1-1 \
        libcurl4-openssl-dev=7.88.1-10+deb12u15 \
        libsasl2-dev=2.1.28+dfsg-10+deb12u1 \
        libssl-dev=3.0.22-1~deb12u2 \
        pkg-config=1.8.1-1 \
        zlib1g-dev=1:1.2.13.dfsg-1+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
# Embedded in the binaries, served at /openapi.yaml.
COPY docs/openapi-writer.yaml docs/openapi-reader.yaml docs/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    KV_GIT_REVISION="${REVISION}" cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/kv-writer target/release/kv-reader /out/

# Slim rather than distroless: librdkafka links the system's OpenSSL, zlib, Cyrus SASL (GSSAPI)
# and libcurl (OAUTHBEARER's OIDC token fetch). The health
# check is the binary's own (`healthcheck`), so the image carries no curl.
FROM debian:bookworm-slim
ARG VERSION=0.1.0
ARG REVISION=""
LABEL org.opencontainers.image.title="kafka-kv" \
      org.opencontainers.image.description="A key-value service on your Kafka cluster: kv-writer and kv-reader" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates=20250419~deb12u2 \
        libcurl4=7.88.1-10+deb12u15 \
        libsasl2-2=2.1.28+dfsg-10+deb12u1 \
        libsasl2-modules-gssapi-mit=2.1.28+dfsg-10+deb12u1 \
        libssl3=3.0.22-1~deb12u2 \
        zlib1g=1:1.2.13.dfsg-1+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kv \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/kv --create-home kv
COPY --from=build /out/kv-writer /out/kv-reader /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/kv
# Containers log JSON lines for collectors; override with KV_API_LOG_FORMAT=text.
ENV KV_API_LOG_FORMAT=json \
    KV_API_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Liveness, not readiness: a writer stays healthy through a Kafka outage (it answers 503 then),
# a reader while it replays. Orchestrators probe the endpoints themselves (deploy/README.md).
# Either binary's `healthcheck` probes whichever service listens on KV_API_LISTEN.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["kv-reader", "healthcheck", "--live"]
CMD ["kv-reader"]
