"""Shared fixtures: tiny random Whisper checkpoints saved to disk, loaded by path like a hub id."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SAMPLE = ROOT / "samples" / "sample.flac"
SAMPLE_TEXT = (ROOT / "samples" / "sample.txt").read_text().strip()

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
# tests that compare two paths token for token need one precision on every CPU: fp32 (bf16, the default where the
# CPU has bf16 instructions, is tested by name)
os.environ.setdefault("DTYPE", "float32")

from hypothesis import settings as hypothesis_settings  # noqa: E402

# CI replays the same examples every run (a red CI must be reproducible); locally hypothesis keeps exploring.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


def _tiny_whisper(source: Path, out: Path, seed: int, decoder_layers: int = 2) -> Path:
    """A small random Whisper (2 encoder layers) with `source`'s vocabulary, tokenizer and generation config."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    torch.manual_seed(seed)
    config = WhisperConfig.from_pretrained(source)
    config.update(dict(d_model=64, encoder_layers=2, decoder_layers=decoder_layers, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128))
    model = WhisperForConditionalGeneration(config)
    generation = GenerationConfig.from_pretrained(source)
    generation.max_length = 24  # random weights rarely stop by themselves
    generation.alignment_heads = [[1, 0], [1, 1]]
    model.generation_config = generation
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(source).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """main (multilingual vocab), draft (same vocab), draft_en (tiny.en vocab), main_en (English-only), all with 2
    decoder layers, and main_deep (8 decoder layers, for which a 2-layer draft is cheap)."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "main": _tiny_whisper(MODELS / "whisper-base", root / "main", 0),
        "draft": _tiny_whisper(MODELS / "whisper-base", root / "draft", 1),
        "draft_en": _tiny_whisper(MODELS / "whisper-tiny.en", root / "draft_en", 2),
        "main_en": _tiny_whisper(MODELS / "whisper-tiny.en", root / "main_en", 3),
        "main_deep": _tiny_whisper(MODELS / "whisper-base", root / "main_deep", 4, decoder_layers=8),
    }


def make_pipeline(asr: Path | str, assistant: Path | str | None = None, diarization: Path | str | None = None,
                  **settings):
    from config import ModelSettings
    from speech_pipeline import SpeechPipeline

    return SpeechPipeline(ModelSettings(asr_model=str(asr), assistant_model=str(assistant or ""),
                                        diarization_model=str(diarization or ""), **settings))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encode(audio: np.ndarray, rate: int, container: str, codec: str, channels: int = 1) -> bytes:
    """Encode float32 mono audio with FFmpeg (PyAV) into `container`, optionally duplicated to stereo."""
    buffer = io.BytesIO()
    layout = "stereo" if channels == 2 else "mono"
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        samples = np.repeat(audio[None, :], channels, axis=0) if channels == 2 else audio[None, :]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.astype(np.float32)), format="fltp",
                                           layout=layout)
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate)
        for resampled in resampler.resample(frame):
            for packet in stream.encode(resampled):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def tone(seconds: float, rate: int = 16000, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="session")
def sample_bytes() -> bytes:
    return SAMPLE.read_bytes()
