# syntax=docker/dockerfile:1
# Multi-stage build of the funkrec service.
#   docker build -t funkrec .
#   docker run -p 8080:8080 -v funkrec-data:/var/lib/funkrec \
#     -e FUNKREC__AUTH__KEYS_FILE=/run/secrets/funkrec-keys -v ./keys:/run/secrets/funkrec-keys:ro funkrec
# The image listens on 0.0.0.0, so it refuses to start without API keys
# (FUNKREC__AUTH__KEYS="admin:KEY,read:KEY2" or FUNKREC__AUTH__KEYS_FILE, one role:key
# per line) unless FUNKREC__AUTH__ALLOW_OPEN=true. See docs/api.md, "Access control".
# Where no registry is reachable, build the two base images locally
# (scripts/container-base.sh) and pass them as build args.
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependencies first, in their own layer: only the manifests and Cargo.lock rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY crates/funkrec-engine/Cargo.toml ./crates/funkrec-engine/
RUN mkdir -p src crates/funkrec-engine/src crates/funkrec-engine/benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs crates/funkrec-engine/src/lib.rs \
    && echo 'fn main() {}' > crates/funkrec-engine/benches/kernels.rs \
    && echo 'fn main() {}' > crates/funkrec-engine/benches/foldin.rs \
    && cargo build --release --locked --bin funkrec \
    && rm -rf src crates
COPY config ./config
COPY migrations ./migrations
COPY assets ./assets
COPY crates ./crates
COPY src ./src
# Make sure cargo sees the real sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs crates/funkrec-engine/src/lib.rs \
    && cargo build --release --locked --bin funkrec \
    && cp target/release/funkrec /usr/local/bin/funkrec

FROM ${RUNTIME_IMAGE}
RUN groupadd --system --gid 10001 funkrec \
    && useradd --system --uid 10001 --gid funkrec --home-dir /var/lib/funkrec \
       --shell /usr/sbin/nologin funkrec \
    && mkdir -p /var/lib/funkrec /etc/funkrec \
    && chown funkrec:funkrec /var/lib/funkrec
COPY --from=build /usr/local/bin/funkrec /usr/local/bin/funkrec
COPY config/ /etc/funkrec/
# Inside the container: listen on all interfaces, keep data in the volume.
# Secure by default: no keys are baked in and allow_open stays false, so a run
# must bring its keys (or bind loopback, or opt in to open access explicitly).
ENV FUNKREC__SERVER__BIND=0.0.0.0:8080 \
    FUNKREC__STORAGE__DATA_DIR=/var/lib/funkrec \
    RUST_LOG=info
VOLUME /var/lib/funkrec
WORKDIR /var/lib/funkrec
USER funkrec:funkrec
EXPOSE 8080
# The runtime image has no curl: the binary probes its own /healthz over plain
# HTTP/1.0, at the configured bind address (so FUNKREC__SERVER__BIND moves it too).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/funkrec", "healthcheck", "--config", "/etc/funkrec/production.toml"]
ENTRYPOINT ["/usr/local/bin/funkrec"]
CMD ["serve", "--config", "/etc/funkrec/production.toml"]
