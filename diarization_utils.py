"""Speaker diarization: prepare the decoded audio for pyannote, diarize, merge turns with the transcript."""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch

from audio import SAMPLE_RATE
from errors import Cancelled, redact
from transcript import Segment, Turn, Word
from vad import one_thread

if TYPE_CHECKING:
    from config import InferenceConfig

logger = logging.getLogger(__name__)


@dataclass
class Diarization:
    """What the diarizer found: its turns (overlapping where speakers overlap) and an exclusive version (one speaker
    per instant, pyannote 4's `exclusive_speaker_diarization`, the same turns where the pipeline gives none)."""

    turns: list[Turn]
    exclusive: list[Turn]


def load_diarizer(name: str, token: str | None, device: torch.device) -> Any:
    """Load a pyannote pipeline from a hub id or a local directory / config.yaml; fail fast with advice."""
    import offline_diarizer  # noqa: F401  (turns pyannote telemetry off; offline checkpoints name its classes)
    from huggingface_hub.errors import GatedRepoError
    from pyannote.audio import Pipeline

    gated = (f"could not load DIARIZATION_MODEL {name!r}: accept its conditions on the hub and set HF_TOKEN to a "
             "token that can read it, or point it at a local pipeline directory")
    # pyannote 4 names it `token`; 3.x (the endpoint's, which keeps the image's torch) `use_auth_token`
    token_3x = "token" not in inspect.signature(Pipeline.from_pretrained).parameters
    try:
        if token_3x and Path(name).is_dir():
            pipeline = _local_pipeline_3x(Path(name) / "config.yaml")
        else:
            pipeline = Pipeline.from_pretrained(name, **{"use_auth_token" if token_3x else "token": token})
    except GatedRepoError as error:  # pyannote 4 raises it for a gated model without (or with a refused) token
        raise RuntimeError(f"{gated} ({redact(str(error), token)})") from None
    except Exception as error:
        raise RuntimeError(f"could not load DIARIZATION_MODEL {name!r}: {redact(str(error), token)}") from None
    if pipeline is None:  # older pyannote returns None for gated or missing models instead of raising
        raise RuntimeError(gated)
    return pipeline.to(device)


def _local_pipeline_3x(config_yaml: Path) -> Any:
    """pyannote 3.x reads a local pipeline only as a config.yaml of file paths: 4.x's `$model/DIR` references
    become DIR/pytorch_model.bin, and parameters 3.x's class does not take (4.x's `plda`) are left out."""
    import yaml
    from pyannote.audio.core.pipeline import get_class_by_name

    config = yaml.safe_load(config_yaml.read_text())
    klass = get_class_by_name(config["pipeline"]["name"], default_module_name="pyannote.pipeline.blocks")
    accepted = _init_parameters(klass)
    params = {}
    for key, value in config["pipeline"].get("params", {}).items():
        if isinstance(value, str) and value.startswith("$model/"):
            value = config_yaml.parent / value.removeprefix("$model/")
            value = str(value / "pytorch_model.bin" if value.is_dir() else value)
        if key in accepted:
            params[key] = value
    pipeline = klass(**params)
    pipeline.instantiate(config.get("params", {}))
    return pipeline


def _init_parameters(klass: type) -> set[str]:
    """The keyword arguments a class's constructor takes, through subclasses that pass `**kwargs` on."""
    names: set[str] = set()
    for cls in klass.__mro__:
        parameters = inspect.signature(cls.__init__).parameters
        names |= {name for name, p in parameters.items() if p.kind is not p.VAR_KEYWORD}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            break
    return names


def diarize(pipeline: Any, audio: np.ndarray, config: InferenceConfig,
            cancel: threading.Event | None = None) -> Diarization:
    """Speaker turns (seconds of the original audio) for 16 kHz mono audio the handler already decoded;
    raises `Cancelled` at pyannote's next progress step once `cancel` is set."""

    def hook(*args: Any, **kwargs: Any) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled()

    hints = {k: v for k, v in (("num_speakers", config.num_speakers), ("min_speakers", config.min_speakers),
                               ("max_speakers", config.max_speakers)) if v is not None}
    with one_thread():  # many small ops: on 2 threads beside the ASR thread's, 2.9 s became 8-10 s for 24 s of audio
        output = pipeline({"waveform": torch.from_numpy(audio)[None, :], "sample_rate": SAMPLE_RATE}, hook=hook,
                          **hints)
    turns = _turns(getattr(output, "speaker_diarization", output))  # pyannote 4 wraps the Annotation
    exclusive = getattr(output, "exclusive_speaker_diarization", None)  # pyannote 3 has none
    return Diarization(turns, turns if exclusive is None else _turns(exclusive))


def _turns(annotation: Any) -> list[Turn]:
    return sorted((round(seg.start, 3), round(seg.end, 3), str(label))
                  for seg, _, label in annotation.itertracks(yield_label=True))


def assign_speakers(turns: list[Turn], spans: Iterable[tuple[float, float]]) -> list[str | None]:
    """For each (start, end) span, the speaker whose turns overlap it most, else the nearest turn's speaker.

    A sweep over spans and turns sorted by start: O((n + m) log(n + m) + n * k) with k the number of turns
    active at once, instead of whisperX's n * m comparison. None only when there are no turns at all.
    """
    spans = list(spans)
    if not turns:
        return [None] * len(spans)
    turns = sorted(turns)
    order = sorted(range(len(spans)), key=lambda i: spans[i][0])
    result: list[str | None] = [None] * len(spans)
    active: list[Turn] = []
    nxt = 0
    last_ended: Turn | None = None  # the turn that ended latest before the current span
    for i in order:
        start, end = spans[i]
        while nxt < len(turns) and turns[nxt][0] < max(end, start + 1e-9):
            active.append(turns[nxt])
            nxt += 1
        still = []
        for turn in active:
            if turn[1] <= start:
                if last_ended is None or turn[1] > last_ended[1]:
                    last_ended = turn
            else:
                still.append(turn)
        active = still
        overlap: dict[str, float] = {}
        for t_start, t_end, speaker in active:
            overlap[speaker] = overlap.get(speaker, 0.0) + max(0.0, min(end, t_end) - max(start, t_start))
        if overlap and max(overlap.values()) > 0:
            result[i] = max(overlap, key=overlap.get)
            continue
        candidates = [(start - last_ended[1], last_ended[2])] if last_ended else []
        candidates += [(t_start - end, speaker) for t_start, _, speaker in active]  # zero-length overlaps
        if nxt < len(turns):
            candidates.append((turns[nxt][0] - end, turns[nxt][2]))
        result[i] = min(candidates)[1]
    return result


def merge_speakers(turns: list[Turn], segments: list[Segment], by_word: bool = False) -> list[Segment]:
    """Speaker-attributed segments: consecutive ASR segments (or words) of one speaker joined into one.

    At word level each word gets its own speaker, so an ASR segment is split where the speaker changes.
    The concatenated texts always equal the concatenated ASR segment texts.
    """
    units: list[tuple[float, float, str, list[Word]]]
    if by_word and all(s.words for s in segments):
        units = [(w.start, w.end, w.text, [w]) for s in segments for w in s.words]
    else:
        units = [(s.start, s.end, s.text, s.words) for s in segments]
    speakers = assign_speakers(turns, [(u[0], u[1]) for u in units])
    if not by_word or len(units) == len(segments):
        for segment, speaker in zip(segments, speakers):
            segment.speaker = speaker
    merged: list[Segment] = []
    for (start, end, text, words), speaker in zip(units, speakers):
        for word in words:
            word.speaker = speaker
        if merged and merged[-1].speaker == speaker:
            last = merged[-1]
            last.end, last.text = max(last.end, end), last.text + text
            last.words.extend(words)
        else:
            merged.append(Segment(start, end, text, list(words), speaker))
    if by_word and len(units) != len(segments):
        for segment in segments:  # a sentence spoken by two people is labelled with the one who said most of it
            talk: dict[str | None, float] = {}
            for word in segment.words:
                talk[word.speaker] = talk.get(word.speaker, 0.0) + word.end - word.start
            segment.speaker = max(talk, key=talk.get) if talk else None
    return merged
