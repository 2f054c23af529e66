"""Inference Endpoints as it runs: the unmodified huggingface-inference-toolkit serves handler.py from this
checkout, in an environment built as the endpoint builds one (scripts/endpoint_env.py), and the contract is
driven through it over HTTP; plus what pip would do to the image's real torch, and the two requirement sets."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE, SAMPLE_TEXT, stop
from test_e2e import wer

from scripts import endpoint_env

pytestmark = pytest.mark.endpoint
TWO_SPEAKERS = ROOT / "samples" / "two_speakers.ogg"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return pins


def test_requirements_hold_no_server_test_or_toolkit_packages():
    pins = _pins(ROOT / "requirements.txt")
    left_to_the_image = {"torch", "torchaudio", "numpy", "starlette", "huggingface-hub"}
    assert not (left_to_the_image | {"fastapi", "uvicorn", "python-multipart", "pytest"}) & set(pins)
    assert pins["transformers"].startswith("4.") and pins["pyannote-audio"].startswith("3.")
    local = _pins(ROOT / "requirements-local.txt")
    shared = set(pins) & set(local) - {"transformers", "pyannote-audio"}  # the two lines that differ on purpose
    assert shared and all(pins[name] == local[name] for name in shared)


@pytest.fixture(scope="module")
def toolkit() -> Path:
    if not (endpoint_env.TOOLKIT_DIR / "setup.py").exists():
        pytest.skip(f"no huggingface-inference-toolkit source at {endpoint_env.TOOLKIT_DIR}")
    return endpoint_env.TOOLKIT_DIR


@pytest.fixture(scope="module")
def venv(toolkit) -> Path:
    """The endpoint-like venv (built on first use: about 3 minutes, then cached by its requirements)."""
    return endpoint_env.build(toolkit=toolkit)


def test_the_toolkit_requirements_are_read_from_its_setup_py(toolkit):
    wanted = endpoint_env.toolkit_requirements(toolkit / "setup.py")
    assert "transformers[sklearn,sentencepiece,audio,vision]==4.51.3" in wanted
    assert "huggingface_hub[hf_transfer]==0.30.2" in wanted and "starlette" in wanted and "peft==0.15.1" in wanted
    assert not [r for r in wanted if r.startswith(("torch==", "torchvision", "kenlm"))]


def test_nothing_installed_for_the_endpoint_refuses_the_images_torch_torchaudio_or_starlette(venv):
    """Every package in the endpoint-like venv accepts torch 2.5.1, torchaudio 2.5.1 and Starlette 0.47.3, the
    image's: the entrypoint's pip (no --upgrade) then leaves all three as they are."""
    assert endpoint_env.image_conflicts(venv / "bin" / "python") == []


def test_image_conflicts_finds_what_would_replace_the_images_torch():
    """The local stack (pyannote.audio 4) is what requirements.txt must not be: it needs a newer torch."""
    conflicts = endpoint_env.image_conflicts(Path(sys.executable))
    assert any(c.startswith("pyannote-audio needs torch") for c in conflicts), conflicts


def test_the_endpoint_environment_keeps_what_the_toolkit_runs_on(venv):
    script = ("import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
              "('torch', 'transformers', 'huggingface_hub', 'starlette', 'torchaudio', 'pyannote.audio')}))")
    versions = json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True,
                                         text=True, check=True).stdout)
    assert versions["torch"].startswith(endpoint_env.STAND_IN_TORCH.split("==")[1])  # nothing re-resolved torch
    assert versions["starlette"].startswith("0.47.") and versions["huggingface_hub"].startswith("0.")
    assert versions["transformers"] == _pins(ROOT / "requirements.txt")["transformers"]


FAST_EQUALS_STOCK = """
import json, sys, torch
from transformers import AutoProcessor, WhisperForConditionalGeneration
from audio import decode_audio
from whisper_model import ATTENTION, FastWhisper
processor = AutoProcessor.from_pretrained(sys.argv[1])
audio = decode_audio(open(sys.argv[2], "rb").read())
features = processor(audio[:16000 * 15], sampling_rate=16000, return_tensors="pt").input_features
tokens = []
for cls, kwargs in ((FastWhisper, {"attn_implementation": ATTENTION}), (WhisperForConditionalGeneration, {})):
    model = cls.from_pretrained(sys.argv[1], dtype=torch.float32, **kwargs).eval()
    with torch.inference_mode():  # no language: both detect it first
        tokens.append(model.generate(features, return_timestamps=True, num_beams=1, task="transcribe").tolist())
text = processor.batch_decode(tokens[0], skip_special_tokens=True)
print(json.dumps({"equal": tokens[0] == tokens[1], "text": text}))
"""


def test_fast_whisper_equals_transformers_whisper_on_the_endpoints_transformers(venv):
    """FastWhisper overrides generate()'s internals: on the endpoint's transformers 4.x it must still give the
    stock class's greedy tokens (the local suite checks the same on 5.x)."""
    result = subprocess.run([str(venv / "bin" / "python"), "-c", FAST_EQUALS_STOCK,
                             str(ROOT / "models" / "whisper-base"), str(SAMPLE)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["equal"] and wer(SAMPLE_TEXT, out["text"][0]) <= 0.1, out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint(venv, toolkit, tmp_path_factory):
    """The toolkit's app under Uvicorn on 127.0.0.1, HF_MODEL_DIR at this checkout (offline default models)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("toolkit") / "toolkit.log"
    env = {key: value for key, value in os.environ.items()
           if key not in ("ASR_MODEL", "ASSISTANT_MODEL", "DIARIZATION_MODEL", "DTYPE", "PYTHONPATH", "HF_TASK")}
    env.update(HF_MODEL_DIR=str(ROOT), PYTHONPATH=str(toolkit / "src"), HF_HUB_OFFLINE="1",
               # torch 2.5.1, the image's, loads checkpoints with weights_only=False: the 2.13 stand-in must too
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(venv / "bin" / "python"), "-m", "uvicorn", "huggingface_inference_toolkit.webservice_starlette:app",
             "--host", "127.0.0.1", "--port", str(port)], cwd=log_path.parent, env=env, stdout=log,
            stderr=subprocess.STDOUT)  # not cwd=ROOT: as on an endpoint, only the toolkit puts the repo on sys.path
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:  # the toolkit loads the handler at start-up, before it answers anything
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=5).status == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the toolkit did not start:\n{log_path.read_text(errors='replace')[-6000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop(process)


def _post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _json(inputs: bytes, parameters: dict) -> bytes:
    return json.dumps({"inputs": base64.b64encode(inputs).decode(), "parameters": parameters}).encode()


def test_json_base64_with_word_timestamps_and_speakers(endpoint):
    status, out = _post(endpoint, _json(TWO_SPEAKERS.read_bytes(), {"return_timestamps": "word"}),
                        "application/json")
    assert status == 200, out
    reference = json.loads((ROOT / "samples" / "two_speakers.json").read_text())["turns"]
    assert wer(" ".join(turn["text"] for turn in reference), out["text"]) < 0.2, out["text"]
    assert out["words"] and all(w["start"] <= w["end"] for w in out["words"])
    assert {entry["speaker"] for entry in out["speakers"]} == {"SPEAKER_00", "SPEAKER_01"}
    assert len(out["speakers"]) == len(reference)  # one entry per turn: the two voices alternate
    assert "".join(entry["text"] for entry in out["speakers"]).strip() == out["text"]


def test_raw_audio_body(endpoint):
    status, out = _post(f"{endpoint}/predict", SAMPLE.read_bytes(), "audio/flac")
    assert status == 200, out
    assert wer(SAMPLE_TEXT, out["text"]) <= 0.1 and out["chunks"]


@pytest.mark.parametrize("body, content_type, message", [
    (_json(SAMPLE.read_bytes(), {"batch_size": 0}), "application/json", "batch_size"),
    (_json(SAMPLE.read_bytes(), {"return_timestamps": "char"}), "application/json", "return_timestamps"),
    (_json(b"this is not audio at all" * 20, {}), "application/json", "could not decode audio"),
    (b"this is not audio at all" * 20, "audio/wav", "could not decode audio"),
])
def test_bad_parameters_and_non_audio_get_400(endpoint, body, content_type, message):
    status, out = _post(endpoint, body, content_type)
    assert status == 400 and message in out["error"], out


def test_huggingface_hub_inference_client(endpoint, monkeypatch):
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.errors import BadRequestError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # offline mode blocks every request, a local one too
    client = InferenceClient(model=endpoint, timeout=300)
    raw = client.automatic_speech_recognition(SAMPLE)  # raw bytes, Content-Type from the file name: audio/flac
    assert wer(SAMPLE_TEXT, raw.text) <= 0.1, raw.text
    with pytest.raises(BadRequestError, match='Content type "None" not supported'):
        client.automatic_speech_recognition(SAMPLE.read_bytes())  # bare bytes have none: the toolkit refuses them
    with_parameters = client.automatic_speech_recognition(SAMPLE, extra_body={"return_timestamps": "word"})
    # JSON {"inputs": base64, "parameters": {...}}; word timing decodes with eager attention: a word may differ
    assert wer(SAMPLE_TEXT, with_parameters.text) <= 0.1 and wer(raw.text, with_parameters.text) <= 0.1
    assert with_parameters.chunks and with_parameters.chunks[0].timestamp[0] < 0.5
