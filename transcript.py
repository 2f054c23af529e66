"""The transcript data model (whisperX's types module, faster-whisper's Segment/Word): no torch, no pipeline.

Everything that produces or renders transcripts (the pipeline, diarization, formats, the client) shares these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

_SENTENCE_END = (".", "?", "!", "。", "？", "！")
Turn = tuple[float, float, str]  # a diarizer's speaker turn: start, end, speaker label


@dataclass
class Word:
    start: float
    end: float
    text: str
    speaker: str | None = None


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    speaker: str | None = None
    # how its window was decoded (openai-whisper's segment fields): the loop guard's measures
    language: str | None = None
    temperature: float = 0.0
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None


@dataclass
class Transcript:
    text: str
    segments: list[Segment]
    duration: float
    language: str | None = None  # the language of most of the speech (per segment in `Segment.language`)
    speakers: list[Segment] = field(default_factory=list)  # speaker-attributed segments; empty without diarization
    turns: list[Turn] = field(default_factory=list)  # the diarizer's own turns (may overlap); empty without it
    word_timing: str | None = None  # how word boundaries were placed (word_timing.METHODS), with word timestamps

    def to_response(self, words: bool = False, turns: bool = False) -> dict[str, Any]:
        """The Inference Endpoints contract: text, timestamped chunks, speakers (and words, turns when asked)."""
        mixed = len({s.language for s in self.segments if s.language}) > 1
        response: dict[str, Any] = {
            "text": self.text,
            "chunks": [_chunk_dict(s, mixed) for s in self.segments],
            "speakers": [_speaker_dict(s, words) for s in self.speakers],
            "language": self.language,
            "duration": round(self.duration, 3),
        }
        if words:
            response["words"] = [asdict(w) for s in self.segments for w in s.words]
            response["word_timing"] = self.word_timing
        if turns:
            response["turns"] = [{"start": start, "end": end, "speaker": speaker} for start, end, speaker in self.turns]
        return response

    @classmethod
    def from_response(cls, response: dict[str, Any]) -> "Transcript":
        """A transcript rebuilt from the contract's JSON (what a client has), for the one subtitle writer."""
        duration = float(response.get("duration") or 0.0)
        chunks = response.get("chunks") or []
        segments = []
        for index, chunk in enumerate(chunks):
            start, end = (list(chunk.get("timestamp") or []) + [None, None])[:2]
            start = float(start or 0.0)
            if end is None:  # an open last chunk runs to the next one, or to the end of the audio
                end = chunks[index + 1]["timestamp"][0] if index + 1 < len(chunks) else duration
            segments.append(Segment(start, float(end if end is not None else start), str(chunk.get("text") or ""),
                                    speaker=chunk.get("speaker"), language=chunk.get("language")))
        return cls(text=str(response.get("text") or ""), segments=segments, duration=duration,
                   language=response.get("language"))


def _chunk_dict(segment: Segment, language: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"timestamp": [segment.start, segment.end], "text": segment.text}
    if segment.speaker is not None:  # set by diarization: subtitles label each cue with it
        out["speaker"] = segment.speaker
    if language:  # windows of the request were detected in different languages
        out["language"] = segment.language
    return out


def _speaker_dict(segment: Segment, words: bool) -> dict[str, Any]:
    out = {"speaker": segment.speaker, "timestamp": [segment.start, segment.end], "text": segment.text}
    if words:
        out["words"] = [asdict(w) for w in segment.words]
    return out


def sentences(words: list[Word]) -> list[Segment]:
    """Group word chunks (one window's) into sentence segments."""
    segments: list[Segment] = []
    current: list[Word] = []
    for word in words:
        current.append(word)
        if word.text.rstrip().endswith(_SENTENCE_END):
            segments.append(segment_of(current))
            current = []
    if current:
        segments.append(segment_of(current))
    return segments


def segment_of(words: list[Word]) -> Segment:
    """One segment spanning `words`, its text their concatenation."""
    return Segment(words[0].start, words[-1].end, "".join(w.text for w in words), list(words))
