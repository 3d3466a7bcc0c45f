# syntax=docker/dockerfile:1
#
# text2image_hub container image, in two flavours from one file:
#
#   FLAVOUR=cpu   CPU-only PyTorch (no CUDA libraries): the remote backend, or slow local generation
#   FLAVOUR=cuda  PyTorch with CUDA 12.8 (the driver comes from the host through the NVIDIA container runtime)
#
# Reproducible: the Python packages come from requirements/image-<flavour>.txt, hash-pinned locks that `make lock`
# regenerates from pyproject.toml and requirements/image-<flavour>.in; frpc is pinned to a version and its sha256.
#
# Tags: AppAPI pulls "<image>:<image-tag>-<compute device>" first (…-cpu, …-cuda, …-rocm), then "<image>:<image-tag>".
# The Makefile builds and tags them from appinfo/info.xml's version, e.g. for 1.0.0:
#
#   docker build --build-arg FLAVOUR=cpu  -t ghcr.io/text2image-hub/text2image_hub:1.0.0-cpu .
#   docker build --build-arg FLAVOUR=cuda -t ghcr.io/text2image-hub/text2image_hub:1.0.0-cuda .
#
# and tags the CPU image as plain "1.0.0" too, the fallback for any other compute device.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ARG FLAVOUR=cpu
# Where pip finds the CPU flavour's torch (torch==…+cpu in requirements/image-cpu.txt): PyTorch's CPU index, the only
# place that publishes the CPU build. Everything else, and the CUDA flavour's torch, comes from PyPI.
ARG CPU_TORCH_LINKS=https://download.pytorch.org/whl/cpu/torch/
# frpc, pinned and always checked: the sha256 of frp_0.68.1_linux_{amd64,arm64}.tar.gz from that release's
# frp_sha256_checksums.txt, as several public projects pinning 0.68.1 quote it (none could be found for 0.61.1, the
# version Nextcloud's examples use; frpc 0.68 still speaks frp's default v1 wire protocol to an older HaRP frps).
# Another version needs FRP_VERSION and both of its checksums; the build fails on any mismatch.
ARG FRP_VERSION=0.68.1
ARG FRP_SHA256_AMD64=4a4e88987d39561e1b3b3b23d0ede48a457eebf76a87231999957e870f5f02b6
ARG FRP_SHA256_ARM64=e7ad15b0cfe4cf0125df4217778b66cb4426179270967b59900ecb2362d8cd01
# Set by BuildKit (docker buildx); a plain build falls back to the build machine's architecture.
ARG TARGETARCH

# Unpinned: the base image's Debian release pins them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# frpc: the tunnel client HaRP (AppAPI's reverse proxy) needs inside the container.
RUN set -eu; \
    arch="${TARGETARCH:-$(dpkg --print-architecture)}"; \
    case "${arch}" in \
        amd64) sha256="${FRP_SHA256_AMD64}" ;; \
        arm64) sha256="${FRP_SHA256_ARM64}" ;; \
        *) echo "no frpc checksum for architecture '${arch}'" >&2; exit 1 ;; \
    esac; \
    name="frp_${FRP_VERSION}_linux_${arch}"; \
    curl -fsSL -o /tmp/frp.tar.gz "https://github.com/fatedier/frp/releases/download/v${FRP_VERSION}/${name}.tar.gz"; \
    printf '%s  /tmp/frp.tar.gz\n' "${sha256}" | sha256sum -c -; \
    tar -xzf /tmp/frp.tar.gz -C /tmp; \
    install -m 0755 "/tmp/${name}/frpc" /usr/local/bin/frpc; \
    rm -rf /tmp/frp.tar.gz "/tmp/${name}"

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every Python package comes from the flavour's lock (requirements/image-<flavour>.txt, made by `make lock`): exact
# versions, each file checked against its sha256, wheels only, nothing resolved at build time. The locks are for
# CPython 3.11 on linux/amd64; arm64 is not covered (its CPU torch is another wheel, and PyPI's arm64 torch is a CUDA
# build), so an arm64 build stops here.
COPY requirements/image-cpu.txt requirements/image-cuda.txt /src/requirements/
RUN set -eu; \
    arch="${TARGETARCH:-$(dpkg --print-architecture)}"; \
    if [ "${arch}" != amd64 ]; then echo "requirements/image-*.txt lock linux/amd64 only, not '${arch}'" >&2; exit 1; fi; \
    case "${FLAVOUR}" in \
        cpu) set -- --find-links "${CPU_TORCH_LINKS}" ;; \
        cuda) set -- ;; \
        *) echo "FLAVOUR must be cpu or cuda, not '${FLAVOUR}'" >&2; exit 1 ;; \
    esac; \
    pip install --require-hashes --no-deps --only-binary :all: "$@" \
        -r "/src/requirements/image-${FLAVOUR}.txt"

# The app itself, from this source tree: no dependencies (the lock brought them), built with the locked setuptools.
COPY pyproject.toml README.md /src/
COPY lib /src/lib
RUN pip install --no-deps --no-build-isolation --no-index /src \
    && pip check \
    && python -c "import text2image_hub, torch, diffusers"

# ---------------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG FLAVOUR=cpu
ARG VERSION=1.0.0
LABEL org.opencontainers.image.title="text2image_hub" \
      org.opencontainers.image.description="Nextcloud ExApp: core:text2image provider (local diffusers or OpenAI-compatible remote)" \
      org.opencontainers.image.source="https://github.com/text2image-hub/text2image_hub" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later" \
      org.opencontainers.image.version="${VERSION}-${FLAVOUR}"

# A non-root user. AppAPI mounts the app's volume at /nc_app_<appid>_data; a new named volume takes the owner of the
# folder it is mounted over, so the folder is created here and owned by that user. /certs/frp is where HaRP puts the
# tunnel's TLS certificates.
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
    && mkdir -p /nc_app_text2image_hub_data /certs/frp \
    && chown app:app /nc_app_text2image_hub_data /certs /certs/frp

COPY --from=builder /usr/local/bin/frpc /usr/local/bin/frpc
COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 ex_app/start.sh ex_app/healthcheck.sh /app/ex_app/
COPY ex_app/img /app/ex_app/img

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_PERSISTENT_STORAGE=/nc_app_text2image_hub_data \
    HF_HOME=/nc_app_text2image_hub_data/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_DISABLE_PROGRESS_BARS=1

USER 1000:1000
WORKDIR /app

HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 CMD ["/app/ex_app/healthcheck.sh"]
ENTRYPOINT ["/app/ex_app/start.sh"]
