# syntax=docker/dockerfile:1
# metasgd: CPU image by default; `--build-arg VARIANT=cuda` for the CUDA build.
#   docker build -t metasgd .
#   docker build --build-arg VARIANT=cuda -t metasgd:cuda .
#   docker run -p 8080:8080 metasgd
#   docker run -p 8080:8080 -e METASGD_SESSIONS=redis://redis:6379/0 -e METASGD_API_KEYS_FILE=/run/secrets/keys metasgd
ARG VARIANT=cpu

FROM rust:1.95-slim-bookworm AS builder-cpu

FROM nvidia/cuda:13.0.2-devel-ubuntu24.04 AS builder-cuda
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates gcc g++ \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH CUDA_COMPUTE_CAP=90

# hadolint ignore=DL3006
FROM builder-${VARIANT} AS builder
ARG VARIANT
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY src src
COPY models models
COPY openapi.yaml ./
COPY scripts/docker-build.sh scripts/docker-build.sh
RUN bash scripts/docker-build.sh "${VARIANT}" /out

FROM debian:bookworm-slim AS runtime-cpu
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04 AS runtime-cuda

# hadolint ignore=DL3006
FROM runtime-${VARIANT}
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin metasgd
COPY --from=builder /out/bin/metasgd /usr/local/bin/metasgd
COPY --from=builder --chown=metasgd /out/app /app
WORKDIR /app
# Every `serve` flag has a METASGD_* variable; these are the image's defaults.
ENV METASGD_HOST=0.0.0.0 \
    METASGD_PORT=8080 \
    METASGD_MODELS=/app/models \
    METASGD_CACHE=/app/cache \
    METASGD_DEVICE=auto \
    METASGD_SESSIONS=memory \
    METASGD_LOG=info \
    METASGD_LOG_FORMAT=json \
    METASGD_HEALTHCHECK_URL=http://127.0.0.1:8080/health
# For --sessions redb:/app/data/sessions.redb (mount a volume there).
VOLUME ["/app/data"]
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 CMD ["metasgd", "healthcheck"]
ENTRYPOINT ["metasgd"]
CMD ["serve"]
