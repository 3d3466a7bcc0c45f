# syntax=docker/dockerfile:1
#
# text2image_hub container image, in two flavours from one file:
#
#   FLAVOUR=cpu   CPU-only PyTorch (no CUDA libraries): the remote backend, or slow local generation
#   FLAVOUR=cuda  PyTorch with CUDA (the driver comes from the host through the NVIDIA container runtime)
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
# cu128 wheels cover Volta to Blackwell; override for an older driver (e.g. https://download.pytorch.org/whl/cu124).
ARG CUDA_TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG FRP_VERSION=0.61.1
# Optional: the sha256 of frp_<version>_linux_<arch>.tar.gz, checked when given.
ARG FRP_SHA256=
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
    name="frp_${FRP_VERSION}_linux_${arch}"; \
    curl -fsSL -o /tmp/frp.tar.gz "https://github.com/fatedier/frp/releases/download/v${FRP_VERSION}/${name}.tar.gz"; \
    if [ -n "${FRP_SHA256}" ]; then printf '%s  /tmp/frp.tar.gz\n' "${FRP_SHA256}" > /tmp/frp.sha256 && sha256sum -c /tmp/frp.sha256; fi; \
    tar -xzf /tmp/frp.tar.gz -C /tmp; \
    install -m 0755 "/tmp/${name}/frpc" /usr/local/bin/frpc; \
    rm -rf /tmp/frp.tar.gz "/tmp/${name}"

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch first, from the flavour's index: the app's "local" extra then finds it installed and keeps it.
# The newest torch on that index unless pinned (--build-arg TORCH=torch==2.9.1); pyproject.toml's "torch>=…" must accept it.
ARG TORCH=torch
# hadolint ignore=DL3013
RUN set -eu; \
    case "${FLAVOUR}" in \
        cpu) index="${CPU_TORCH_INDEX}" ;; \
        cuda) index="${CUDA_TORCH_INDEX}" ;; \
        *) echo "FLAVOUR must be cpu or cuda, not '${FLAVOUR}'" >&2; exit 1 ;; \
    esac; \
    pip install --index-url "${index}" "${TORCH}"

COPY pyproject.toml README.md /src/
COPY lib /src/lib
RUN pip install "/src[local]" && python -c "import text2image_hub, torch, diffusers"

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
    HF_HUB_DISABLE_TELEMETRY=1

USER 1000:1000
WORKDIR /app

HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 CMD ["/app/ex_app/healthcheck.sh"]
ENTRYPOINT ["/app/ex_app/start.sh"]
