# syntax=docker/dockerfile:1
#
# Three images from one file:
#   docker build --target controller -t ghcr.io/tunefleet/tunefleet:0.1.0 .
#   docker build --target worker -t ghcr.io/tunefleet/tunefleet-worker:0.1.0 .
#   docker build --target examples -t ghcr.io/tunefleet/tunefleet-examples:0.1.0 .
# A GPU worker image starts from a CUDA runtime base instead of python:3.11-slim:
#   docker build --target worker \
#     --build-arg WORKER_BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#     -t ghcr.io/tunefleet/tunefleet-worker:0.1.0-cuda12.4 .
# (The CUDA base has no Python 3.11 of its own; the worker stage installs one with apt when missing.)

ARG PYTHON_IMAGE=python:3.11-slim
ARG WORKER_BASE=python:3.11-slim
ARG VERSION=0.1.0

# ---- builder: compilers live here only ----------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY trial_worker ./trial_worker
RUN pip install --upgrade pip \
    && pip install .

# ---- controller: the operator and the CLI, no compilers ------------------------------------------
FROM ${PYTHON_IMAGE} AS controller
ARG VERSION
LABEL org.opencontainers.image.source="https://github.com/tunefleet/tunefleet" \
      org.opencontainers.image.title="tunefleet" \
      org.opencontainers.image.description="tunefleet controller and CLI: hyperparameter studies on Kubernetes GPU fleets" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/venv /opt/venv
# Numeric user so Kubernetes can verify runAsNonRoot without an /etc/passwd entry.
USER 65532:65532
ENTRYPOINT ["tunefleet"]
CMD ["controller"]

# ---- worker: what runs inside a trial pod ----------------------------------------------------------
# Teams usually add `pip install "tunefleet[worker]"` to their own training image instead; this image
# is a ready-made base for trials that need nothing else.
FROM ${WORKER_BASE} AS worker
ARG VERSION
LABEL org.opencontainers.image.source="https://github.com/tunefleet/tunefleet" \
      org.opencontainers.image.title="tunefleet-worker" \
      org.opencontainers.image.description="tunefleet trial worker: runs one Optuna trial in a Kubernetes pod" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# CUDA bases ship no Python 3.11; install it (and only it) when the base lacks it.
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
        && add-apt-repository -y ppa:deadsnakes/ppa \
        && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
        && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3.11 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY trial_worker ./trial_worker
RUN pip install --upgrade pip \
    && pip install ".[worker]" \
    && rm -rf /src \
    && mkdir -p /workspace && chmod 1777 /workspace
WORKDIR /workspace
USER 65532:65532
ENTRYPOINT ["tunefleet-worker"]

# ---- examples: the worker plus the examples package and what its objectives import ----------------
# The image the Studies in examples/ name. PyPI's torch wheel carries its CUDA libraries, so the same
# image trains on a GPU node (the node provides the driver) and on CPU.
FROM worker AS examples-builder
USER 0:0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY trial_worker ./trial_worker
RUN pip install ".[worker,examples]"

FROM worker AS examples
ARG VERSION
LABEL org.opencontainers.image.source="https://github.com/tunefleet/tunefleet" \
      org.opencontainers.image.title="tunefleet-examples" \
      org.opencontainers.image.description="tunefleet trial worker with the examples package, torch and scikit-learn" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=examples-builder /opt/venv /opt/venv
COPY examples /opt/tunefleet-examples/examples
ENV PYTHONPATH=/opt/tunefleet-examples
USER 65532:65532
