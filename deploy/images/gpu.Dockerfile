# GPU step image: training (TRL/PEFT), vLLM serving for evals and load tests (guidellm).
# The same package and Definitions as the orchestrator image, plus CUDA torch and vLLM; the k8s
# executor runs GPU steps in it (DISTIL_K8S_GPU_IMAGE), on nodes with nvidia.com/gpu.
#   docker build -f deploy/images/gpu.Dockerfile -t ghcr.io/your-org/distil-platform-gpu:0.1.0 .
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 LITELLM_LOCAL_MODEL_COST_MAP=True \
    PIP_BREAK_SYSTEM_PACKAGES=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-dev git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/distil
COPY pyproject.toml constraints.txt README.md ./
COPY distil_platform ./distil_platform
COPY assets ./assets
COPY resources ./resources
COPY sensors ./sensors
COPY workspace.yaml ./
# vLLM pins the CUDA torch it was built against; it is installed first and torch is not re-resolved.
RUN pip3 install "vllm>=0.10" && pip3 install '.[gpu,cluster]'
