"""Synthetic inputs and tiny random Whisper checkpoints, shared by the tests and the load tools (reliability)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def tiny_whisper(source: Path, out: Path, seed: int, decoder_layers: int = 2, large_v3: bool = False) -> Path:
    """A small random Whisper (2 encoder layers) with `source`'s vocabulary, tokenizer and generation config.

    `large_v3`: whisper-large-v3's input and vocabulary shapes (128 mel bins, 51866 tokens: Cantonese `<|yue|>`
    added to `source`'s multilingual vocabulary), the configuration the reference deploys."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

    torch.manual_seed(seed)
    config = WhisperConfig.from_pretrained(source)
    config.update(dict(d_model=64, encoder_layers=2, decoder_layers=decoder_layers, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128))
    processor = WhisperProcessor.from_pretrained(source)
    generation = GenerationConfig.from_pretrained(source)
    if large_v3:
        processor.tokenizer.add_special_tokens({"additional_special_tokens": ["<|yue|>"]})
        processor.feature_extractor = type(processor.feature_extractor)(feature_size=128)
        generation.lang_to_id = {**generation.lang_to_id, "<|yue|>": processor.tokenizer.convert_tokens_to_ids("<|yue|>")}
        config.update(dict(num_mel_bins=128, vocab_size=len(processor.tokenizer)))
    model = WhisperForConditionalGeneration(config)
    generation.max_length = 24  # random weights rarely stop by themselves
    generation.alignment_heads = [[1, 0], [1, 1]]
    model.generation_config = generation
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def tiny_whisper_decoder(source: Path, out: Path) -> Path:
    """The decoder of tiny checkpoint `source` as a `WhisperForCausalLM` (distil-whisper's decoder-only draft kind)."""
    from transformers import WhisperForCausalLM, WhisperProcessor

    model = WhisperForCausalLM.from_pretrained(source)  # the encoder's weights are left behind
    model.config.architectures = ["WhisperForCausalLM"]
    model.generation_config = model.generation_config.from_pretrained(source)
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(source).save_pretrained(out)
    return out


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


def stop(process: subprocess.Popen, grace_s: float = 20) -> None:
    """Terminate a server subprocess; kill it if it has not exited within `grace_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
