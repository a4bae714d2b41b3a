# The lensless code location: `dagster api grpc` serving orchestration.definitions, with the
# `scale` extra (Postgres instance, Kubernetes executor, s3fs for LENSLESS_HOME=s3://...).
#
#   docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t registry.example.com/lensless:0.1.0 .   # CPU torch
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#                --build-arg FAISS=faiss-gpu -t registry.example.com/lensless:0.1.0-cuda .
#
# The same image runs the code server, each run's pod and each step's pod on Kubernetes
# (deploy/k8s/values.yaml), and the `lensless` command line.
FROM python:3.11-slim

ARG TORCH_SPEC="torch>=2.4"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# faiss-cpu, or faiss-gpu (1.15+: CUDA 12, code for Volta to Hopper) to build the index on the GPU
ARG FAISS=faiss-cpu
# the commit the image is built from: reports name it (the image holds no git checkout)
ARG GIT_COMMIT=""

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LENSLESS_GIT_COMMIT=${GIT_COMMIT}

WORKDIR /opt/lensless
# torch first, from the index the build argument names (PyPI's default build is CUDA and GBs)
RUN pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"
COPY pyproject.toml README.md workspace.yaml ./
COPY orchestration ./orchestration
COPY assets ./assets
COPY models ./models
COPY index ./index
COPY deploy ./deploy
RUN pip install ".[scale]" \
    && if [ "${FAISS}" != "faiss-cpu" ]; then pip uninstall -y faiss-cpu && pip install "${FAISS}"; fi \
    && DAGSTER_HOME=/tmp/check LENSLESS_HOME=/tmp/check python -c "import orchestration.definitions" \
    && rm -rf /tmp/check

# Dagster's instance (the Helm chart mounts its dagster.yaml at $DAGSTER_HOME)
ENV DAGSTER_HOME=/opt/dagster/dagster_home
RUN mkdir -p "${DAGSTER_HOME}" && useradd --create-home --uid 1000 lensless \
    && chown -R lensless "${DAGSTER_HOME}"
USER lensless
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-m", "orchestration.definitions", "-h", "0.0.0.0", "-p", "3030"]
