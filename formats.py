"""Render a `Transcript` as plain text, SRT, WebVTT, TSV, RTTM or OpenAI-style JSON: the one subtitle writer of
the server, the CLI and the client."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from transcript import Segment, Transcript, Word

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json", "rttm"]
DIARIZED_FORMATS = ("diarized_json", "rttm")  # formats that need a diarizer
FORMATS: tuple[str, ...] = get_args(ResponseFormat)
MIN_CUE_MS = 100  # a zero-length cue is invisible and some players drop it


class SubtitleOptions(BaseModel):
    """How SRT/WebVTT cues are shaped (whisperX's option names); the defaults give one single-line cue per segment."""

    model_config = ConfigDict(extra="ignore")

    max_line_width: int | None = Field(None, ge=1, le=1000, description="characters per subtitle line")
    max_line_count: int | None = Field(None, ge=1, le=100, description="lines per cue (with max_line_width)")
    max_cue_seconds: float | None = Field(None, gt=0, le=3600, description="longest cue, seconds")
    highlight_words: bool = Field(False, description="underline each word while it is spoken (word timestamps)")

    @property
    def shaped(self) -> bool:
        """Whether cues may split a segment: then word timestamps place the splits."""
        return bool(self.max_line_width or self.max_cue_seconds or self.highlight_words)


@dataclass
class Cue:
    """One subtitle: times in milliseconds, lines of tokens (words with their leading space), and the index of the
    word token to underline."""

    start: int
    end: int
    lines: list[list[str]]
    highlight: int | None = None

    def text(self, escape: Callable[[str], str] = str) -> str:
        rows, index = [], 0
        for line in self.lines:
            parts = []
            for token in line:
                body = escape(token.strip())
                lead, trail = token[:len(token) - len(token.lstrip())], token[len(token.rstrip()):]
                parts.append(lead + (f"<u>{body}</u>" if index == self.highlight else body) + trail)
                index += 1
            rows.append(_joined(parts))
        return "\n".join(rows)


def render(transcript: Transcript, response_format: str, task: str = "transcribe", words: bool = False,
           subtitles: SubtitleOptions | None = None, uri: str = "audio") -> str | dict[str, Any]:
    """The OpenAI `response_format` of a transcript: a dict for the JSON formats, text for the others."""
    if response_format == "json":
        return {"text": transcript.text}
    if response_format == "text":
        return to_text(transcript)
    if response_format == "srt":
        return to_srt(transcript, subtitles)
    if response_format == "vtt":
        return to_vtt(transcript, subtitles)
    if response_format == "verbose_json":
        return to_verbose_json(transcript, task, words)
    if response_format == "diarized_json":
        return to_diarized_json(transcript, task)
    if response_format == "rttm":
        return to_rttm(transcript, uri)
    raise ValueError(f"unknown response format {response_format!r}: use one of {', '.join(FORMATS)}")


def to_text(transcript: Transcript) -> str:
    return transcript.text + "\n"


def to_srt(transcript: Transcript, options: SubtitleOptions | None = None) -> str:
    blocks = [f"{i}\n{_clock(cue.start, ',')} --> {_clock(cue.end, ',')}\n{cue.text()}\n"
              for i, cue in enumerate(cues(transcript, options), 1)]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript, options: SubtitleOptions | None = None) -> str:
    blocks = [f"{_clock(cue.start, '.')} --> {_clock(cue.end, '.')}\n{cue.text(_vtt_escape)}\n"
              for cue in cues(transcript, options)]
    return "\n".join(["WEBVTT\n", *blocks])


def to_tsv(transcript: Transcript) -> str:
    """whisperX's tsv: start and end in integer milliseconds and the text, one segment a row."""
    rows = [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{' '.join(s.text.split())}"
            for s in transcript.segments if s.text.strip()]
    return "\n".join(["start\tend\ttext", *rows]) + "\n"


def speaker_count(transcript: Transcript) -> int:
    """How many distinct speakers diarization found (0 without diarization)."""
    labels = {s.speaker for s in transcript.speakers} | {s.speaker for s in transcript.segments} | {
        w.speaker for s in transcript.segments for w in s.words}
    return len(labels - {None})


def cues(transcript: Transcript, options: SubtitleOptions | None = None) -> list[Cue]:
    """Subtitle cues in milliseconds, each starting at or after the previous one's end.

    Unshaped: one single-line cue per segment (per speaker run when words carry speakers). Shaped: words wrapped
    at `max_line_width`, a new cue after `max_line_count` lines or `max_cue_seconds`, and with `highlight_words`
    one cue per word (underlined) and per gap between words. `[SPEAKER_00] ` leads a cue only when there is more
    than one speaker."""
    options = options or SubtitleOptions()
    labelled = speaker_count(transcript) > 1
    out: list[Cue] = []
    previous_end = 0
    for speaker, words, timed in _runs(transcript, options.shaped):
        label = [f"[{speaker}] "] if labelled and speaker else []
        for group in _groups(words, options, label):
            lines = _wrap([_token(w.text) for w in group], options, label)
            shown = [(round(group[0].start * 1000), round(group[-1].end * 1000), None)]
            if options.highlight_words and timed:
                shown = _highlights(group, len(label))
            for start, end, highlight in shown:
                start = max(start, previous_end)
                end = max(end, start + MIN_CUE_MS)
                out.append(Cue(start, end, lines, highlight))
                previous_end = end
    return out


def _token(text: str) -> str:
    """A word as one line's token: its leading space kept (scripts without spaces have none), no line breaks."""
    body = " ".join(text.replace("-->", "->").split())  # one line: a blank line would end the cue
    return (" " if text[:1].isspace() else "") + body


def _joined(tokens: list[str]) -> str:
    return re.sub(" +", " ", "".join(tokens)).strip()


def _runs(transcript: Transcript, split_words: bool) -> Iterator[tuple[str | None, list[Word], bool]]:
    """(speaker, words, whether the words carry real times) per segment, split where the words' speaker changes.
    Unless cues may split a segment, a one-speaker segment is one pseudo-word; without word times, cues that may
    split it get words timed by their length."""
    for segment in transcript.segments:
        if not segment.text.strip():
            continue
        words = [w for w in segment.words if w.text.strip()]
        timed = bool(words)
        one_speaker = len({w.speaker or segment.speaker for w in words}) <= 1
        if not split_words and one_speaker:  # the segment's own text and times, as one cue
            words, timed = [Word(segment.start, segment.end, segment.text, segment.speaker)], False
        elif not timed:
            words = _spread(segment)
        run: list[Word] = []
        for word in words:
            if run and (word.speaker or segment.speaker) != (run[-1].speaker or segment.speaker):
                yield run[-1].speaker or segment.speaker, run, timed
                run = []
            run.append(word)
        yield run[-1].speaker or segment.speaker, run, timed


def _spread(segment: Segment) -> list[Word]:
    """A segment without word times as words whose times share its span by their length."""
    tokens = segment.text.split()
    total = sum(len(t) + 1 for t in tokens)
    out, at = [], 0
    span = max(0.0, segment.end - segment.start)
    for token in tokens:
        start = segment.start + span * at / total
        at += len(token) + 1
        out.append(Word(start, segment.start + span * at / total, " " + token, segment.speaker))
    return out


def _groups(words: list[Word], options: SubtitleOptions, label: list[str]) -> Iterator[list[Word]]:
    """Words split into cues: at most `max_line_count` wrapped lines and `max_cue_seconds` each."""
    group: list[Word] = []
    for word in words:
        if group and ((options.max_cue_seconds and word.end - group[0].start > options.max_cue_seconds)
                      or (options.max_line_count and options.max_line_width and len(
                          _wrap([_token(w.text) for w in [*group, word]], options, label)) > options.max_line_count)):
            yield group
            group = []
        group.append(word)
    if group:
        yield group


def _wrap(tokens: list[str], options: SubtitleOptions, label: list[str]) -> list[list[str]]:
    """Tokens (a speaker label first) into lines of at most `max_line_width` characters; a longer word stands alone."""
    lines: list[list[str]] = [list(label)]
    width = options.max_line_width
    for token in tokens:
        line = lines[-1]
        if width and line and len(_joined([*line, token])) > width:
            lines.append([token])
        else:
            line.append(token)
    return lines


def _highlights(words: list[Word], offset: int) -> list[tuple[int, int, int | None]]:
    """whisperX's highlighting: each word's span with that word underlined, pauses between words without."""
    shown: list[tuple[int, int, int | None]] = []
    cursor = round(words[0].start * 1000)
    for i, word in enumerate(words):
        start, end = round(word.start * 1000), round(word.end * 1000)
        if shown and start - cursor < MIN_CUE_MS:  # a short gap: the previous word stays underlined through it
            shown[-1] = (shown[-1][0], max(start, shown[-1][1]), shown[-1][2])
        elif start > cursor:
            shown.append((cursor, start, None))
        shown.append((max(start, cursor), max(end, start), offset + i))
        cursor = max(end, cursor)
    return shown


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
