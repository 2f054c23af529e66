"""The deployment's configuration, offline: models named by hub id (ASR_MODEL=openai/whisper-large-v3, ...) load
from a Hugging Face cache snapshot with HF_HUB_OFFLINE=1, exactly as `from_pretrained` finds a downloaded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODELS, ROOT

HUB_IDS = {"asr": "openai/whisper-large-v3", "assistant": "distil-whisper/distil-large-v3",
           "diarization": "pyannote/speaker-diarization-3.1"}
REVISION = "0123456789abcdef0123456789abcdef01234567"


def snapshot(cache: Path, repo_id: str, source: Path) -> None:
    """huggingface_hub's cache layout: models--org--name/refs/main names the snapshot holding the repo's files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    for file in source.rglob("*"):
        if file.is_file():
            target = repo / "snapshots" / REVISION / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(file.resolve())  # the cache links snapshots to blobs the same way


@pytest.fixture(scope="module")
def hub_cache(tiny_models, tmp_path_factory) -> Path:
    if not (MODELS / "diarization" / "config.yaml").is_file():
        pytest.skip("models/diarization is missing: run `bash setup.sh`")
    cache = tmp_path_factory.mktemp("hf") / "hub"
    snapshot(cache, HUB_IDS["asr"], tiny_models["main_deep"])
    snapshot(cache, HUB_IDS["assistant"], tiny_models["draft"])
    snapshot(cache, HUB_IDS["diarization"], MODELS / "diarization")
    return cache


# The speakers the diarizer found are read from its own turns (a spy on the pipeline's diarize call): the response's
# labels depend on where a random-weight ASR model puts its chunks (one 22 s chunk and empty ones at the clip's end).
SERVE = """
import json, sys
import speech_pipeline
from handler import EndpointHandler
handler = EndpointHandler()
pipe = handler.pipeline
found = []
real_diarize = speech_pipeline.diarize
speech_pipeline.diarize = lambda *args, **kwargs: found.append(real_diarize(*args, **kwargs)) or found[-1]
out = handler({"inputs": open(sys.argv[1], "rb").read(), "parameters": {"assisted": True, "num_speakers": 2}})
print(json.dumps({"asr": pipe.asr.model.name_or_path, "decoder_layers": pipe.asr.model.config.decoder_layers,
                  "assistant": pipe.assistant_kwargs["assistant_model"].name_or_path,
                  "shared_vocab": "tokenizer" not in pipe.assistant_kwargs, "diarizer": type(pipe.diarizer).__name__,
                  "turn_speakers": sorted({t[2] for d in found for t in d.turns}),
                  "speakers": sorted({s["speaker"] for s in out["speakers"]}), "text": out["text"]}))
"""


def test_the_deployment_hub_ids_load_from_the_cache_offline(hub_cache, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1",
           "ASR_MODEL": HUB_IDS["asr"], "ASSISTANT_MODEL": HUB_IDS["assistant"],
           "DIARIZATION_MODEL": HUB_IDS["diarization"], "HF_TOKEN": "hf_notarealtoken0123456789", "DTYPE": "float32"}
    run = subprocess.run([sys.executable, "-c", SERVE, str(ROOT / "samples" / "two_speakers.ogg")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded["asr"] == HUB_IDS["asr"] and loaded["decoder_layers"] == 8  # main_deep's, from the snapshot
    assert loaded["assistant"] == HUB_IDS["assistant"] and loaded["shared_vocab"]
    assert loaded["diarizer"].endswith("SpeakerDiarization")
    assert loaded["turn_speakers"] == ["SPEAKER_00", "SPEAKER_01"]  # the snapshot's pipeline heard both speakers
    assert loaded["speakers"] and set(loaded["speakers"]) <= set(loaded["turn_speakers"])  # and labelled the text
    assert "hf_notarealtoken" not in run.stdout + run.stderr


def test_a_hub_id_missing_from_the_offline_cache_names_the_variable(tmp_path, monkeypatch):
    from diarization_utils import load_diarizer

    with pytest.raises(RuntimeError, match="could not load DIARIZATION_MODEL 'pyannote/no-such-pipeline'"):
        load_diarizer("pyannote/no-such-pipeline", None, "cpu")


@pytest.mark.parametrize("token", [None, "hf_secret0123456789"])
def test_a_gated_pipeline_says_to_accept_its_conditions_and_set_hf_token(monkeypatch, token):
    """What the hub answers for pyannote/speaker-diarization-3.1 to a token that has not accepted its conditions."""
    import httpx
    from huggingface_hub.errors import GatedRepoError
    from pyannote.audio.utils import hf_hub

    from diarization_utils import load_diarizer

    def gated(repo_id, *args, **kwargs):
        request = httpx.Request("GET", f"https://huggingface.co/{repo_id}/resolve/main/config.yaml")
        raise GatedRepoError(f"403 Client Error. Cannot access gated repo for url {request.url}.",
                             response=httpx.Response(403, request=request))

    monkeypatch.setattr(hf_hub, "hf_hub_download", gated)
    with pytest.raises(RuntimeError) as caught:
        load_diarizer(HUB_IDS["diarization"], token, "cpu")
    message = str(caught.value)
    assert message.startswith(f"could not load DIARIZATION_MODEL {HUB_IDS['diarization']!r}")
    assert "HF_TOKEN" in message and "accept" in message and "hf_secret" not in message
