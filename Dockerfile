# The self-hosted server (server.py) as a container: Inference Endpoints' "custom container" deployment
# (scripts/deploy_endpoint.py --custom-image), or any Docker host. It does not use Hugging Face's toolkit, so it
# runs the local stack (requirements-local.txt), the same one the test suite runs.
#   docker build -t REGISTRY/whisper-endpoint:TAG . && docker push REGISTRY/whisper-endpoint:TAG
# Models come from ASR_MODEL / ASSISTANT_MODEL / DIARIZATION_MODEL (hub ids with HF_TOKEN on an endpoint); the
# offline defaults are built into the image, so it also runs with no hub at all.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HOME=/tmp/hf
WORKDIR /app
COPY . .
# setup.sh: torch first (from PyPI: the CUDA build), the local requirements, the offline models; torchaudio's
# extension is removed only if it cannot load beside that torch (scripts/torchaudio_cpu.py)
RUN bash setup.sh
EXPOSE 8000
# /health: 503 while the models load, 200 once the server can answer (deploy_endpoint's --health-route)
CMD [".venv/bin/python", "-m", "uvicorn", "server:app", "--host", "0.0.0.0", "--port", "8000"]
