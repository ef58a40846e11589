# One image with every binary of the platform (notify-api, notify-worker,
# notify-scheduler, smtp-sink); docker-compose.yml picks the command.
#
#   docker build -t notify-platform .

# ---- build ----------------------------------------------------------------
# The toolchain CI uses; the locked dependencies need Rust >= 1.89. Bookworm,
# like the runtime image, so the binaries link against the same glibc.
FROM rust:1.95-bookworm AS build
WORKDIR /src

# Dependency layer: only the manifests and stub sources, so editing the code
# does not rebuild the (slow) third-party crates.
COPY Cargo.toml Cargo.lock ./
COPY platform/Cargo.toml platform/Cargo.toml
COPY api/Cargo.toml api/Cargo.toml
COPY worker/Cargo.toml worker/Cargo.toml
COPY scheduler/Cargo.toml scheduler/Cargo.toml
COPY smtp-sink/Cargo.toml smtp-sink/Cargo.toml
COPY tests-e2e/Cargo.toml tests-e2e/Cargo.toml
RUN for lib in platform api worker smtp-sink tests-e2e; do \
      mkdir -p "$lib/src" && echo "" > "$lib/src/lib.rs"; \
    done && \
    for bin in api worker scheduler smtp-sink; do \
      mkdir -p "$bin/src" && echo "fn main() {}" > "$bin/src/main.rs"; \
    done && \
    cargo build --release --locked \
      -p platform -p notify-api -p notify-worker -p notify-scheduler -p smtp-sink && \
    rm -rf platform/src api/src worker/src scheduler/src smtp-sink/src tests-e2e/src

# The real sources (migrations are embedded into the binaries at compile time).
COPY migrations migrations
COPY platform platform
COPY api api
COPY worker worker
COPY scheduler scheduler
COPY smtp-sink smtp-sink
COPY tests-e2e/src tests-e2e/src
# Newer mtimes than the stubs' build, so cargo rebuilds our crates only.
RUN find platform api worker scheduler smtp-sink -name '*.rs' -exec touch {} + && \
    cargo build --release --locked \
      -p notify-api -p notify-worker -p notify-scheduler -p smtp-sink && \
    mkdir -p /out && \
    install -m 0755 -t /out/ \
      target/release/notify-api target/release/notify-worker \
      target/release/notify-scheduler target/release/smtp-sink

# ---- runtime --------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# ca-certificates: trust roots for SMTP over TLS. tzdata: zone files for
# anything reading TZ outside the binaries (which embed their own).
RUN apt-get update && \
    apt-get install -y --no-install-recommends ca-certificates tzdata && \
    rm -rf /var/lib/apt/lists/* && \
    groupadd --system --gid 10001 notify && \
    useradd --system --uid 10001 --gid notify --home-dir /app --shell /usr/sbin/nologin notify && \
    mkdir -p /app && chown notify:notify /app
# Root-owned, world-executable: the service user can run but not modify them.
COPY --from=build --chown=root:root /out/ /usr/local/bin/
WORKDIR /app
USER notify:notify
ENV API_HOST=0.0.0.0 API_PORT=8000
EXPOSE 8000
# Each service's probe is its own `health-check` subcommand (no curl here);
# compose overrides this for the worker and scheduler.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["notify-api", "health-check"]
CMD ["notify-api", "serve"]
