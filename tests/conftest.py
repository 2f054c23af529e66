"""Shared fixtures: tiny random Whisper checkpoints saved to disk, loaded by path like a hub id."""

from __future__ import annotations

import base64
import contextlib
import os
from pathlib import Path

import pytest

# tests import these from here
from benchmarks.fixtures import MODELS, ROOT, encode, stop, tiny_whisper, tiny_whisper_decoder, tone  # noqa: F401

SAMPLE = ROOT / "samples" / "sample.flac"
SAMPLE_TEXT = (ROOT / "samples" / "sample.txt").read_text().strip()

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
# tests that compare two paths token for token need one precision on every CPU: fp32 (bf16, the default where the
# CPU has bf16 instructions, is tested by name)
os.environ.setdefault("DTYPE", "float32")

from hypothesis import settings as hypothesis_settings  # noqa: E402

# Every run, CI's and a laptop's, replays the same examples (a red run must be reproducible, a green one must not be
# luck); HYPOTHESIS_EXPLORE=1 opts in to fresh random examples for exploratory runs (hypothesis and schemathesis).
hypothesis_settings.register_profile("replay", derandomize=True, deadline=None, database=None)
hypothesis_settings.register_profile("explore", derandomize=False, deadline=None)
hypothesis_settings.load_profile("explore" if os.environ.get("HYPOTHESIS_EXPLORE") == "1" else "replay")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """main (multilingual vocab), draft (same vocab), draft_decoder (draft as a decoder-only WhisperForCausalLM),
    draft_en (tiny.en vocab), main_en (English-only), all with 2 decoder layers, and main_deep (8 decoder layers, for which a 2-layer draft is cheap)."""
    root = tmp_path_factory.mktemp("tiny")
    draft = tiny_whisper(MODELS / "whisper-base", root / "draft", 1)
    return {
        "main": tiny_whisper(MODELS / "whisper-base", root / "main", 0),
        "draft": draft,
        "draft_decoder": tiny_whisper_decoder(draft, root / "draft_decoder"),  # draft's decoder, WhisperForCausalLM
        "draft_en": tiny_whisper(MODELS / "whisper-tiny.en", root / "draft_en", 2),
        "main_en": tiny_whisper(MODELS / "whisper-tiny.en", root / "main_en", 3),
        "main_deep": tiny_whisper(MODELS / "whisper-base", root / "main_deep", 4, decoder_layers=8),
    }


def make_pipeline(asr: Path | str, assistant: Path | str | None = None, diarization: Path | str | None = None,
                  **settings):
    from config import ModelSettings
    from speech_pipeline import SpeechPipeline

    return SpeechPipeline(ModelSettings(asr_model=str(asr), assistant_model=str(assistant or ""),
                                        diarization_model=str(diarization or ""), **settings))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="session")
def sample_bytes() -> bytes:
    return SAMPLE.read_bytes()


@pytest.fixture(scope="module")
def speechlike() -> bytes:
    """Three seconds of a gliding tone (VAD is off in these tests: random models need no real speech)."""
    import numpy as np

    t = np.arange(3 * 16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * (200 + 100 * t) * t)).astype(np.float32)
    return encode(audio, 16000, "wav", "pcm_s16le")


@contextlib.contextmanager
def serving(app, settings=None, timeout: float = 30):
    """`app` on Uvicorn in a thread of this process on 127.0.0.1 (a free port), started with the options the
    server's own start uses (`http_protocol.uvicorn_options`: the guarded protocol and its deadlines): a real socket
    for clients that stream (SSE, WebSocket) or misbehave, without loading the models again in a subprocess.
    Yields the base URL."""
    import socket
    import threading
    import time

    import uvicorn

    from admission import ServerSettings
    from http_protocol import uvicorn_options

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="info",
                                           **uvicorn_options(settings or ServerSettings())))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    host, port = sock.getsockname()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
