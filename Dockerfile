# One image for the API server, the Ray head and the Ray workers (Ray's version must match on every node).
#   docker build -t plasticity .                                                   # CPU torch
#   docker build -t plasticity:gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=2 \
    PLASTICITY_DATA_DIR=/data \
    MPLCONFIGDIR=/tmp/matplotlib

RUN apt-get update \
 && apt-get install -y --no-install-recommends git curl ca-certificates gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# torch first (the largest layer, from the CPU or CUDA wheel index), then the project and its dependencies
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY . /app
RUN pip install -e . \
 && useradd --create-home --uid 1000 plasticity \
 && mkdir -p /data \
 && chown -R plasticity:plasticity /data /app

USER plasticity
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
  CMD curl -fsS http://127.0.0.1:8000/api/health || exit 1

# serve: migrate the database, join Ray (RAY_ADDRESS) or start a local one, print the token and the URL
CMD ["plasticity", "serve", "--host", "0.0.0.0", "--port", "8000"]
