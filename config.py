"""Settings read from the environment at start-up, and the parameters of one request."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from errors import RequestError, empty_is_none, invalid_parameter

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_ASR_MODEL = "models/whisper-base"
DEFAULT_ASSISTANT_MODEL = "models/whisper-tiny.en"
DEFAULT_DIARIZATION_MODEL = "models/diarization"


class ModelSettings(BaseSettings):
    """Which models to load and where; read once from env vars (ASR_MODEL, HF_TOKEN, ...)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    asr_model: str = Field(DEFAULT_ASR_MODEL, description="Whisper checkpoint: hub id or local directory")
    assistant_model: str | None = Field(
        DEFAULT_ASSISTANT_MODEL, description="draft model for speculative decoding; empty string disables it"
    )
    diarization_model: str | None = Field(
        DEFAULT_DIARIZATION_MODEL, description="pyannote pipeline: hub id or local directory; empty string disables it"
    )
    hf_token: SecretStr | None = Field(None, description="token for gated/private hub models")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16", "int8"] = Field(
        "auto", description="auto: fp16 on GPU; on CPU bf16 where it has bf16 instructions (AVX512-BF16, AMX), "
                            "else fp32; int8: the ASR model's Linear layers dynamically quantized (CPU only)")
    decode_threads: int = Field(
        1, ge=0, le=256, description="torch threads for Whisper's decoding steps on CPU (the encoder uses all); "
                                     "0: as many as the encoder")
    max_audio_seconds: float = Field(4 * 3600, gt=0, description="longer audio is refused with 413")
    batch_wait_ms: float = Field(20, ge=0, le=1000, description="how long concurrent requests wait to share a batch")

    batch_arrival_wait_ms: float = Field(
        300, ge=0, le=5000, description="how long a batch about to start waits for requests still decoding or in VAD "
                                        "(only while BATCH_WAIT_MS is not 0)")

    _empty_is_none = field_validator("assistant_model", "diarization_model", mode="before")(empty_is_none)

    def resolve(self, name: str | None, base: Path) -> str | None:
        """A relative path that exists under `base` (the handler repo), the working directory or the checkout whose
        venv runs this (setup.sh's .venv, after a non-editable `pip install .`) wins over a hub id of that name."""
        if name is None:
            return None
        for candidate in (base / name, Path(name).expanduser(), Path(sys.prefix).parent / name):
            if candidate.is_dir():
                return str(candidate.resolve())
        return name

    def token(self) -> str | None:
        return self.hf_token.get_secret_value() if self.hf_token else None


class InferenceConfig(BaseModel):
    """Parameters of one request; unknown keys are ignored and logged (as in the reference handler)."""

    model_config = ConfigDict(extra="ignore")

    task: Literal["transcribe", "translate"] = "transcribe"
    batch_size: int | None = Field(None, ge=1, le=256, description="windows per forward pass; default 24, 1 when assisted")
    assisted: bool | Literal["auto"] = Field(
        False, description="speculative decoding with the assistant model; auto: only where it is measured to win"
    )
    chunk_length_s: float = Field(30.0, ge=1.0, le=30.0, description=(
        "longest window fed to Whisper, seconds; every window is encoded as 30 s, so shorter ones multiply the work"))
    sampling_rate: int = Field(16000, ge=1000, le=384000, description="rate of headerless raw PCM input only")
    audio_format: Literal["auto", "pcm_s16le", "pcm_f32le"] = Field(
        "auto", description="auto: a container (wav, flac, mp3, ogg, m4a, ...); pcm_*: headerless mono samples"
    )
    language: str | None = Field(None, max_length=32, description="e.g. 'en' or 'english'; None detects it")
    prompt: str | None = Field(None, max_length=4000, description=(
        "text that comes before the audio (names, terms, spelling, style): every window is decoded as its "
        "continuation; as in OpenAI's API only the last 223 tokens count"))
    return_timestamps: Literal["segment", "word"] = Field("segment", description="word adds per-word times")
    word_timing: Literal["auto", "whisper", "energy", "vad", "energy+vad"] = Field("auto", description=(
        "how word boundaries are placed: whisper (cross-attention DTW alone), energy, vad or energy+vad (moved "
        "into the pauses and onto the speech edges they find); auto: the measured best, energy+vad"))
    vad: bool = Field(True, description="cut non-speech out with a voice-activity detector before Whisper")
    diarization: bool = Field(True, description="attribute speakers when a diarization model is loaded")
    return_turns: bool = Field(False, description="add the diarizer's own speaker turns (`turns`) to the response")
    num_beams: int = Field(1, ge=1, le=10, description="1 is greedy decoding")
    temperature: Annotated[float, Field(ge=0, le=1)] | Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(
        min_length=1, max_length=10)] = Field(0.0, description="the first decoding temperature (0: greedy), as in OpenAI's API; a list is the "
                                     "whole fallback schedule, e.g. [0, 0.2, 0.4, 0.6, 0.8, 1]")
    temperature_increment_on_fallback: float = Field(
        0.2, ge=0, le=1, description="the next temperatures after a number `temperature`, up to 1; 0: no fallback")
    compression_ratio_threshold: float | None = Field(
        2.4, gt=1, le=100, description="a window whose text compresses (zlib) by more is decoded again, hotter")
    logprob_threshold: float | None = Field(
        -1.0, ge=-100, le=0, description="a window whose average token log-probability is lower is decoded again")
    no_speech_threshold: float | None = Field(
        0.6, ge=0, le=1, description="a window whose no-speech probability is higher, with its log-probability "
                                     "under logprob_threshold, gives no text")
    num_speakers: int | None = Field(None, ge=1, le=100)
    min_speakers: int | None = Field(None, ge=1, le=100)
    max_speakers: int | None = Field(None, ge=1, le=100)
    known_speaker_names: list[str] | None = Field(None, description=(
        "names of up to 4 speakers, each with a reference clip in known_speaker_references: a diarized speaker "
        "whose voice matches one gets its name"))
    known_speaker_references: list[str] | None = Field(None, description=(
        "reference clips (1-30 s of one voice), base64 or data: URLs, one per known_speaker_names entry"))

    @field_validator("return_timestamps", mode="before")
    @classmethod
    def _true_is_segment(cls, value: Any) -> Any:
        return "segment" if value is True else value

    @field_validator("language", mode="before")
    @classmethod
    def _normalise_language(cls, value: Any) -> Any:
        return value.strip().lower() or None if isinstance(value, str) else value

    @field_validator("prompt", mode="before")
    @classmethod
    def _blank_prompt_is_none(cls, value: Any) -> Any:
        return value if not isinstance(value, str) or value.strip() else None

    @model_validator(mode="after")
    def _check_combinations(self) -> "InferenceConfig":
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise ValueError(f"min_speakers ({self.min_speakers}) is greater than max_speakers ({self.max_speakers})")
        if self.num_speakers and (
            (self.min_speakers and self.num_speakers < self.min_speakers)
            or (self.max_speakers and self.num_speakers > self.max_speakers)
        ):
            raise ValueError("num_speakers is outside [min_speakers, max_speakers]")
        if self.assisted is True and self.batch_size not in (None, 1):
            raise ValueError("assisted decoding works on one window at a time: use batch_size 1 or leave it unset")
        if self.assisted is True and self.num_beams != 1:
            raise ValueError("assisted decoding is greedy: num_beams must be 1")
        return self

    @property
    def temperatures(self) -> tuple[float, ...]:
        """The fallback schedule: the first temperature, then hotter ones while a window fails the guard."""
        if isinstance(self.temperature, list):
            return tuple(self.temperature)
        step = self.temperature_increment_on_fallback
        if not step:
            return (self.temperature,)
        return tuple(round(self.temperature + i * step, 6) for i in range(int((1.0 - self.temperature) / step + 1e-6) + 1))

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or (1 if self.assisted is True else 24)

    @classmethod
    def parse(cls, parameters: Any) -> "InferenceConfig":
        """Validate request parameters; raises RequestError naming the offending field."""
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict):
            raise RequestError("parameters must be a JSON object", field="parameters")
        unknown = sorted(str(key) for key in parameters if key not in cls.model_fields)
        if unknown:
            logger.warning("ignoring unknown parameters: %s", ", ".join(unknown)[:500])
        try:
            return cls.model_validate(parameters)
        except ValidationError as error:
            raise invalid_parameter(error.errors()) from None
