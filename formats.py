"""Render a `Transcript` as plain text, SRT, WebVTT, OpenAI-style JSON or RTTM; shared by the server and the CLI."""

from __future__ import annotations

from typing import Any, Literal, get_args

from transcript import Transcript

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json", "rttm"]
DIARIZED_FORMATS = ("diarized_json", "rttm")  # formats that need a diarizer
FORMATS: tuple[str, ...] = get_args(ResponseFormat)
MIN_CUE_MS = 100  # a zero-length cue is invisible and some players drop it


def render(transcript: Transcript, response_format: str, task: str = "transcribe",
           words: bool = False, uri: str = "audio") -> str | dict[str, Any]:
    """The OpenAI `response_format` of a transcript: a dict for the JSON formats, text for the others."""
    if response_format == "json":
        return {"text": transcript.text}
    if response_format == "text":
        return to_text(transcript)
    if response_format == "srt":
        return to_srt(transcript)
    if response_format == "vtt":
        return to_vtt(transcript)
    if response_format == "verbose_json":
        return to_verbose_json(transcript, task, words)
    if response_format == "diarized_json":
        return to_diarized_json(transcript, task)
    if response_format == "rttm":
        return to_rttm(transcript, uri)
    raise ValueError(f"unknown response format {response_format!r}: use one of {', '.join(FORMATS)}")


def to_text(transcript: Transcript) -> str:
    return transcript.text + "\n"


def to_srt(transcript: Transcript) -> str:
    blocks = [f"{i}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n"
              for i, (start, end, text) in enumerate(cues(transcript), 1)]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    blocks = [f"{_clock(start, '.')} --> {_clock(end, '.')}\n{_vtt_escape(text)}\n"
              for start, end, text in cues(transcript)]
    return "\n".join(["WEBVTT\n", *blocks])


def cues(transcript: Transcript) -> list[tuple[int, int, str]]:
    """Subtitle cues in milliseconds: one per segment, each starting at or after the previous one's end."""
    out: list[tuple[int, int, str]] = []
    previous_end = 0
    for segment in transcript.segments:
        speaker = segment.speaker
        text = " ".join(segment.text.replace("-->", "->").split())  # one line: a blank line would end the cue
        if not text:
            continue
        start = max(round(segment.start * 1000), previous_end)
        end = max(round(segment.end * 1000), start + MIN_CUE_MS)
        out.append((start, end, f"[{speaker}] {text}" if speaker else text))
        previous_end = end
    return out


def to_verbose_json(transcript: Transcript, task: str = "transcribe", words: bool = False) -> dict[str, Any]:
    """OpenAI's verbose_json: segments (with `speaker` when diarized) and, when asked, words."""
    speakers = [segment.speaker for segment in transcript.segments]  # set by diarization_utils.merge_speakers
    diarized = bool(transcript.speakers) or any(speakers)
    segments = []
    for i, (segment, speaker) in enumerate(zip(transcript.segments, speakers)):
        item: dict[str, Any] = {"id": i, "start": segment.start, "end": segment.end, "text": segment.text,
                                "temperature": segment.temperature}
        for name in ("avg_logprob", "compression_ratio", "no_speech_prob"):  # of the segment's window, when measured
            if getattr(segment, name) is not None:
                item[name] = round(getattr(segment, name), 4)
        if diarized:
            item["speaker"] = speaker
        segments.append(item)
    out: dict[str, Any] = {"task": task, "language": language_name(transcript.language),
                           "duration": round(transcript.duration, 3), "text": transcript.text, "segments": segments}
    if words:
        out["words"] = []
        for segment, speaker in zip(transcript.segments, speakers):
            for word in segment.words:
                item = {"word": word.text.strip(), "start": word.start, "end": word.end}
                if diarized:
                    item["speaker"] = word.speaker or speaker  # merge_speakers labels words at word level
                out["words"].append(item)
    return out


def to_diarized_json(transcript: Transcript, task: str = "transcribe") -> dict[str, Any]:
    """OpenAI's diarized_json: the speaker turns of `Transcript.speakers`."""
    segments = [{"type": "transcript.text.segment", "id": f"seg_{i}", "start": turn.start, "end": turn.end,
                 "text": turn.text, "speaker": turn.speaker} for i, turn in enumerate(transcript.speakers)]
    return {"task": task, "duration": round(transcript.duration, 3), "text": transcript.text, "segments": segments}


def to_rttm(transcript: Transcript, uri: str = "audio") -> str:
    """The diarizer's turns as RTTM (NIST's Rich Transcription Time Marked, what diarization tools exchange):
    one `SPEAKER uri 1 start duration <NA> <NA> speaker <NA> <NA>` line per turn; `uri` loses its whitespace."""
    uri = "_".join(uri.split()) or "audio"
    return "".join(f"SPEAKER {uri} 1 {start:.3f} {end - start:.3f} <NA> <NA> {speaker} <NA> <NA>\n"
                   for start, end, speaker in transcript.turns)


def language_name(code: str | None) -> str | None:
    """OpenAI reports the language by name ("english"); None when the pipeline detected it without saying."""
    if code is None:
        return None
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(code, code)


def _clock(ms: int, separator: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
