"""Known speakers (OpenAI's `known_speaker_names[]` + `known_speaker_references[]`): each diarized speaker whose
voice matches a short reference clip gets that name; the others keep their anonymous labels.

Voices are compared with the diarizer's own speaker model (its `_embedding`: Resemblyzer in the offline default,
WeSpeaker in pyannote's hub pipeline): one embedding per reference and one per diarized speaker from its turns,
matched one to one by cosine similarity (the best total, none below `MIN_SIMILARITY`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from audio import SAMPLE_RATE, decode_audio, payload_bytes
from errors import RequestError

Turn = tuple[float, float, str]
MAX_KNOWN_SPEAKERS = 4  # OpenAI's limit
MIN_REFERENCE_S, MAX_REFERENCE_S = 1.0, 30.0  # OpenAI asks for 2-10 s clips
MAX_SPEAKER_SPEECH_S = 60.0  # a speaker's embedding is taken from at most this much of its speech
MIN_SIMILARITY = 0.75  # below it a speaker keeps its label (docs/operations.md: Resemblyzer on AMI)


@dataclass
class Reference:
    name: str
    audio: np.ndarray


def references(names: list[str] | None, clips: list[Any] | None) -> list[Reference]:
    """Decode and check the reference clips (base64, data URLs or bytes); a RequestError names the fault."""
    names, clips = names or [], clips or []
    if not names and not clips:
        return []
    if len(names) != len(clips):
        raise RequestError(f"known_speaker_names has {len(names)} names but known_speaker_references "
                           f"{len(clips)} clips: give one clip per name", field="known_speaker_references")
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise RequestError(f"at most {MAX_KNOWN_SPEAKERS} known speakers, got {len(names)}",
                           field="known_speaker_names")
    if len(set(names)) < len(names) or not all(name.strip() for name in names):
        raise RequestError("known_speaker_names must be distinct and non-empty", field="known_speaker_names")
    out = []
    for name, clip in zip(names, clips):
        try:
            audio = decode_audio(payload_bytes(clip), max_seconds=MAX_REFERENCE_S)
        except RequestError as error:
            raise RequestError(f"known speaker {name!r}: {error}", 413 if error.status == 413 else 400,
                               "known_speaker_references") from None
        if len(audio) < MIN_REFERENCE_S * SAMPLE_RATE:
            raise RequestError(f"known speaker {name!r}: the reference is {len(audio) / SAMPLE_RATE:.1f} s, give "
                               f"at least {MIN_REFERENCE_S:g} s of speech", field="known_speaker_references")
        out.append(Reference(name.strip(), audio))
    return out


def embed(diarizer: Any, audio: np.ndarray) -> np.ndarray:
    """One L2-normalised speaker embedding of 16 kHz mono audio, with the diarization pipeline's speaker model."""
    vector = diarizer._embedding(torch.from_numpy(np.ascontiguousarray(audio, np.float32))[None, None])[0]
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


def speaker_audio(audio: np.ndarray, turns: list[Turn]) -> dict[str, np.ndarray]:
    """Each speaker's speech: its turns, longest first, up to MAX_SPEAKER_SPEECH_S."""
    pieces: dict[str, list[np.ndarray]] = {}
    for start, end, speaker in sorted(turns, key=lambda turn: turn[0] - turn[1]):
        taken = sum(len(piece) for piece in pieces.get(speaker, []))
        room = int(MAX_SPEAKER_SPEECH_S * SAMPLE_RATE) - taken
        if room > 0:
            pieces.setdefault(speaker, []).append(audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)][:room])
    return {speaker: np.concatenate(chunks) for speaker, chunks in pieces.items()}


def similarities(diarizer: Any, audio: np.ndarray, turns: list[Turn],
                 known: list[Reference]) -> tuple[list[str], np.ndarray]:
    """The diarized speakers and their cosine similarity to each reference (speakers x references)."""
    speeches = speaker_audio(audio, turns)
    speakers = sorted(speeches)
    if not speakers:
        return [], np.zeros((0, len(known)))
    voices = np.stack([embed(diarizer, speeches[speaker]) for speaker in speakers])
    refs = np.stack([embed(diarizer, reference.audio) for reference in known])
    return speakers, np.nan_to_num(voices @ refs.T, nan=-1.0)


def name_speakers(diarizer: Any, audio: np.ndarray, turns: list[Turn], known: list[Reference]) -> list[Turn]:
    """`turns` with each speaker matched to a reference renamed after it; one name per speaker at most."""
    if not known or not turns:
        return turns
    from scipy.optimize import linear_sum_assignment

    speakers, similarity = similarities(diarizer, audio, turns, known)
    rows, cols = linear_sum_assignment(-similarity)
    names = {speakers[r]: known[c].name for r, c in zip(rows, cols) if similarity[r, c] >= MIN_SIMILARITY}
    return [(start, end, names.get(speaker, speaker)) for start, end, speaker in turns]


def named(diarizer: Any, audio: np.ndarray, found: Any, known: list[Reference]) -> Any:
    """A `diarization_utils.Diarization` with the matched speakers renamed in its turns and exclusive turns."""
    turns = name_speakers(diarizer, audio, found.turns, known)
    names = {old[2]: new[2] for old, new in zip(found.turns, turns)}
    exclusive = [(start, end, names.get(speaker, speaker)) for start, end, speaker in found.exclusive]
    return replace(found, turns=turns, exclusive=exclusive)
