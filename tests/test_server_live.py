"""Uvicorn in a subprocess with the real offline default models, called with the real openai and huggingface_hub
clients the way users call it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import srt
import webvtt
from conftest import ROOT, SAMPLE, SAMPLE_TEXT, stop
from test_e2e import wer

pytestmark = pytest.mark.e2e
KEY = "sk-live-test-key"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The server's base URL; it runs the README's command with port 0 and reports the port it bound."""
    log_path = tmp_path_factory.mktemp("uvicorn") / "server.log"
    env = {**os.environ, "API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    for name in ("ASR_MODEL", "ASSISTANT_MODEL", "DIARIZATION_MODEL"):
        env.pop(name, None)  # the offline defaults
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", "server:app", "--host", "127.0.0.1",
                                    "--port", "0"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = _wait_for_url(log_path, process)
        _wait_until_healthy(url, process)
        yield url
    finally:
        stop(process)
        log_text = log_path.read_text(errors="replace")
        assert KEY not in log_text  # the key is never logged


def _wait_for_url(log_path, process, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        if process.poll() is not None:
            pytest.fail(f"uvicorn exited: {log_path.read_text(errors='replace')}")
        time.sleep(0.1)
    pytest.fail("uvicorn did not start")


def _wait_until_healthy(url: str, process, timeout: float = 180) -> None:
    saw_loading = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as error:
            saw_loading |= error.code == 503
        if process.poll() is not None:
            pytest.fail("uvicorn exited while loading")
        time.sleep(0.2)
    pytest.fail(f"the server was not healthy after {timeout} s (saw 503 loading: {saw_loading})")


@pytest.fixture(scope="module")
def diarized(live) -> bool:
    with urllib.request.urlopen(f"{live}/health", timeout=10) as response:
        return json.load(response)["model"]["diarization_model"] is not None


@pytest.fixture(scope="module")
def openai_client(live):
    from openai import OpenAI

    return OpenAI(base_url=f"{live}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_openai_sdk_json_and_text_while_health_answers(live, openai_client):
    with open(SAMPLE, "rb") as audio:
        result = openai_client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert wer(SAMPLE_TEXT, result.text) <= 0.1, result.text
    text = {}

    def transcribe() -> None:
        with open(SAMPLE, "rb") as audio:
            text["out"] = openai_client.audio.transcriptions.create(model="whisper-1", file=audio,
                                                                    response_format="text")

    thread = threading.Thread(target=transcribe)
    thread.start()
    answered_in_flight = 0
    while thread.is_alive():  # inference runs off the event loop: /health answers while the request holds its place
        with urllib.request.urlopen(f"{live}/health", timeout=60) as response:
            assert response.status == 200
            answered_in_flight += json.load(response)["queue"]["held"] >= 1
    thread.join()
    assert isinstance(text["out"], str) and text["out"].strip() == result.text
    # a blocked event loop would answer at most the one /health call that waited for the transcription
    assert answered_in_flight >= 3, answered_in_flight


def _unlabelled(cue_text: str) -> str:
    return re.sub(r"^\[SPEAKER_\d+\] ", "", cue_text)  # the label cues carry when diarization is configured


def test_openai_sdk_srt_and_vtt(openai_client, diarized):
    with open(SAMPLE, "rb") as audio:
        as_srt = openai_client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="srt")
    subtitles = list(srt.parse(as_srt))
    assert wer(SAMPLE_TEXT, " ".join(_unlabelled(s.content) for s in subtitles)) <= 0.1, as_srt
    assert all(a.start < a.end <= b.start for a, b in zip(subtitles, subtitles[1:]))
    labelled = {s.content.startswith("[SPEAKER_") for s in subtitles}  # labels only when 2+ speakers were found
    assert len(labelled) == 1 and (diarized or not labelled.pop())
    with open(SAMPLE, "rb") as audio:
        as_vtt = openai_client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="vtt")
    captions = webvtt.from_string(as_vtt).captions
    assert wer(SAMPLE_TEXT, " ".join(_unlabelled(c.text) for c in captions)) <= 0.1, as_vtt
    times = [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds()) for c in captions]
    assert times == [(round(s.start.total_seconds() * 1000), round(s.end.total_seconds() * 1000)) for s in subtitles]


def test_openai_sdk_verbose_json_with_words(openai_client, diarized):
    with open(SAMPLE, "rb") as audio:
        result = openai_client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="verbose_json", language="en",
            timestamp_granularities=["word", "segment"])
    assert wer(SAMPLE_TEXT, result.text) <= 0.1 and result.language == "english"
    assert 10 < result.duration < 11 and result.segments and result.segments[0].start < 0.5
    assert result.words[0].word.lower().startswith("hello") and result.words[0].start < 0.5
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    if diarized:  # the offline default DIARIZATION_MODEL, when set-up built it
        assert all(str(getattr(segment, "speaker", "")).startswith("SPEAKER_") for segment in result.segments)


def test_openai_sdk_wrong_key_is_refused(live):
    from openai import AuthenticationError, OpenAI

    client = OpenAI(base_url=f"{live}/v1", api_key="wrong", max_retries=0)
    with open(SAMPLE, "rb") as audio, pytest.raises(AuthenticationError):
        client.audio.transcriptions.create(model="whisper-1", file=audio)


def test_huggingface_hub_inference_client(live, monkeypatch):
    from huggingface_hub import InferenceClient, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # offline mode blocks every request, a local one too

    client = InferenceClient(model=live, token=KEY, timeout=120)
    raw = client.automatic_speech_recognition(SAMPLE.read_bytes())  # raw bytes, no Content-Type, POST /
    assert wer(SAMPLE_TEXT, raw.text) <= 0.1, raw.text
    with_parameters = client.automatic_speech_recognition(SAMPLE, extra_body={"return_timestamps": "word"})
    assert with_parameters.text == raw.text  # JSON {"inputs": base64, "parameters": {...}}
    assert with_parameters.chunks and with_parameters.chunks[0].timestamp[0] < 0.5
