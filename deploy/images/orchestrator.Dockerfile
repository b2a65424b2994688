# Code-location / run-worker image: loads the Definitions, runs CPU steps (seed sets, pricing, cost
# tables, routing, the report, API-bound evals) and launches GPU steps as their own pods.
# torch comes from PyTorch's CPU index first (~200 MB instead of ~2.5 GB of CUDA wheels); the
# Definitions never import it, CPU steps that tokenise do.
#   docker build -f deploy/images/orchestrator.Dockerfile -t ghcr.io/your-org/distil-platform-orchestrator:0.1.0 .
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 LITELLM_LOCAL_MODEL_COST_MAP=True
WORKDIR /opt/distil
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml constraints.txt README.md ./
COPY distil_platform ./distil_platform
COPY assets ./assets
COPY resources ./resources
COPY sensors ./sensors
COPY workspace.yaml ./
RUN pip install -c constraints.txt '.[cluster]'
