# step-worker image: a Debian 13 (trixie) builder and a distroless runtime of the same release.
#
#   chef     Rust toolchain + cargo-chef
#   planner  reduces the workspace to a dependency recipe (changes only with Cargo.toml/Cargo.lock)
#   builder  compiles the dependencies from the recipe (a cached layer), then the binary
#   runtime  distroless/base-nossl: glibc, CA certificates, tzdata, no shell, no package manager,
#            plus the one library the binary needs beyond glibc (libgcc_s, for unwinding)
#
# The binary links only libc, libm and libgcc_s and uses rustls (no OpenSSL). distroless/cc would
# bring libgcc_s too, but also OpenSSL and libstdc++, which nothing here loads: base-nossl plus
# libgcc_s copied from the builder is the same runtime, about 9 MB smaller. Redis and Postgres TLS verify against roots compiled into the binary; the HTTP
# client (reqwest, rustls platform verifier) reads the OS store in /etc/ssl/certs, which
# distroless ships, for any https:// request.
# Size: the binary is 19.4 MB (stripped, thin LTO; its largest parts are std, the SQLite and
# aws-lc C libraries, sqlx, rustls, and since trace export the OTLP exporters with gRPC);
# distroless/cc-debian13 measured 26.8 MB. base-nossl is cc less OpenSSL (libssl3), libstdc++
# and libgomp (about 10.5 MB): expected about 36 MB in all (target: <= 40 MB).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-trixie AS chef
# A pinned cargo-chef: the recipe format changes between releases.
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json --bin step-worker

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml or Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin step-worker
COPY . .
RUN cargo build --release --locked --bin step-worker \
    && mkdir -p /out \
    && cp -L "$(gcc -print-file-name=libgcc_s.so.1)" /out/libgcc_s.so.1

# Same Debian release as the builder (trixie = debian13), so the glibc the binary was linked
# against is the one it runs on.
FROM gcr.io/distroless/base-nossl-debian13:nonroot AS runtime
COPY --from=builder /app/target/release/step-worker /usr/local/bin/step-worker
# A directory of its own, found through LD_LIBRARY_PATH: copying into the image's multiarch lib
# directory would tie the file to one architecture, and copying a tree over /lib could replace
# the /lib symlink of a merged-/usr image.
COPY --from=builder /out/libgcc_s.so.1 /usr/local/lib/step-worker/libgcc_s.so.1
ENV LD_LIBRARY_PATH=/usr/local/lib/step-worker
# Numeric, so platforms that enforce "run as non-root" can check it without an /etc/passwd lookup.
USER 65532:65532
# Production by default: REDIS_URL and DATABASE_URL must then be given explicitly (a forgotten
# variable stops the process instead of pointing it at 127.0.0.1), and logs are JSON.
ENV APP_ENV=production
# The default HTTP port for /health and /metrics. Platforms that inject PORT (Railway) override
# it; HEALTH_CHECK_PORT is deliberately not set here, because it would win over their PORT.
EXPOSE 3001
# No curl in distroless: the binary probes its own /health (exit 0 on HTTP 200). Docker only
# reports the status; Railway and Fly run their own checks (railway.toml, fly.toml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/step-worker", "healthcheck"]
# Exec form: the binary is PID 1 and receives SIGTERM itself. It handles SIGTERM and SIGINT and
# spawns no child processes, so no init process is needed.
ENTRYPOINT ["/usr/local/bin/step-worker"]
CMD ["run"]
