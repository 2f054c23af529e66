"""Hugging Face Inference Endpoints custom handler: Whisper ASR, optional speculative decoding and diarization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from config import ModelSettings
from speech_pipeline import SpeechPipeline


class EndpointHandler:
    """Loads the models once from env settings; each call serves one request.

    `data` is {"inputs": <base64 audio> | <bytes>, "parameters": {...}}. Client mistakes raise
    `errors.RequestError` (a ValueError) whose message names the field; the toolkit answers 400 with it.
    """

    def __init__(self, path: str = "") -> None:
        self.pipeline = SpeechPipeline(ModelSettings(), base_dir=Path(path) if path else None)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        return self.pipeline.handle(data)
