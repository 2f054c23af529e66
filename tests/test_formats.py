"""Formatters (text, srt, vtt, verbose_json, diarized_json, rttm) and the CLI's --format, parsed with real parsers."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
import srt
import webvtt
from conftest import encode, tone

from diarization_utils import merge_speakers
from formats import FORMATS, render, to_srt, to_verbose_json, to_vtt
from speech_pipeline import Segment, Transcript, Word


@pytest.fixture
def messy() -> Transcript:
    """Overlapping, zero-length and out-of-order times, a blank segment and text that could break subtitles."""
    segments = [
        Segment(0.0, 1.5, " Hello <there> & welcome.", [Word(0.0, 0.4, " Hello"), Word(0.5, 1.5, " welcome.")]),
        Segment(1.2, 2.0, " Line one\n\nline two --> three"),
        Segment(2.0, 2.0, " zero length"),
        Segment(1.9, 3.0, "   "),
        Segment(1.8, 3661.25, " back in time, long"),
    ]
    speakers = merge_speakers([(0.0, 1.9, "SPEAKER_00"), (1.9, 3661.25, "SPEAKER_01")], segments)  # labels segments
    return Transcript(text="Hello ...", segments=segments, duration=3661.3, language="en", speakers=speakers)


def test_srt_parses_with_increasing_times_and_speakers(messy):
    subtitles = list(srt.parse(to_srt(messy)))
    assert [s.index for s in subtitles] == [1, 2, 3, 4]  # the blank segment is dropped
    assert all(s.start < s.end for s in subtitles)
    assert all(a.end <= b.start for a, b in zip(subtitles, subtitles[1:]))
    assert subtitles[0].content == "[SPEAKER_00] Hello <there> & welcome."
    assert subtitles[1].content == "[SPEAKER_00] Line one line two -> three"
    assert subtitles[2].content.startswith("[SPEAKER_01]")  # zero-length at 2.0 s falls in the second turn
    assert subtitles[3].end.total_seconds() == 3661.25 and "01:01:01,250" in to_srt(messy)


def test_vtt_parses_with_increasing_times_and_escapes(messy):
    text = to_vtt(messy)
    assert text.startswith("WEBVTT\n\n") and "&lt;there&gt; &amp;" in text and "line two -&gt; three" in text
    captions = webvtt.from_string(text).captions
    times = [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds()) for c in captions]
    assert len(captions) == 4 and all(start < end for start, end in times)
    assert all(a[1] <= b[0] for a, b in zip(times, times[1:]))
    assert captions[3].end == "01:01:01.250"


def test_empty_transcript_gives_valid_empty_subtitles():
    empty = Transcript(text="", segments=[], duration=2.0)
    assert list(srt.parse(to_srt(empty))) == []
    assert webvtt.from_string(to_vtt(empty)).captions == []
    assert render(empty, "text") == "\n" and render(empty, "json") == {"text": ""}


def test_verbose_json_mirrors_openai(messy):
    out = to_verbose_json(messy, "transcribe", words=True)
    assert (out["task"], out["language"], out["duration"]) == ("transcribe", "english", 3661.3)
    assert out["segments"][0] == {"id": 0, "start": 0.0, "end": 1.5, "text": " Hello <there> & welcome.",
                                  "temperature": 0.0, "speaker": "SPEAKER_00"}
    assert out["words"][0] == {"word": "Hello", "start": 0.0, "end": 0.4, "speaker": "SPEAKER_00"}
    plain = Transcript(text="x", segments=[Segment(0.0, 1.0, " x")], duration=1.0)
    assert "speaker" not in to_verbose_json(plain)["segments"][0] and "words" not in to_verbose_json(plain)
    assert to_verbose_json(plain)["language"] is None


def test_diarized_json_lists_the_speaker_turns(messy):
    out = render(messy, "diarized_json")
    assert [(s["id"], s["speaker"]) for s in out["segments"]] == [("seg_0", "SPEAKER_00"), ("seg_1", "SPEAKER_01")]
    assert "".join(s["text"] for s in out["segments"]) == "".join(s.text for s in messy.segments)
    assert out["segments"][0]["type"] == "transcript.text.segment" and out["task"] == "transcribe"


def test_rttm_carries_the_diarizer_turns_as_pyannote_reads_them(messy, tmp_path):
    from pyannote.database.util import load_rttm

    messy.turns = [(0.0, 1.9, "SPEAKER_00"), (1.5, 2.25, "SPEAKER_01"), (1.9, 3661.25, "SPEAKER_01")]  # may overlap
    path = tmp_path / "out.rttm"
    path.write_text(render(messy, "rttm", uri="my talk"))
    annotation = load_rttm(path)["my_talk"]
    assert sorted((round(s.start, 3), round(s.end, 3), label) for s, _, label in annotation.itertracks(True)) == \
        messy.turns
    assert render(Transcript(text="", segments=[], duration=1.0), "rttm") == ""  # no turns, no lines


def test_unknown_format_is_refused():
    assert set(FORMATS) == {"json", "text", "srt", "vtt", "verbose_json", "diarized_json", "rttm"}
    with pytest.raises(ValueError, match="unknown response format"):
        render(Transcript(text="", segments=[], duration=1.0), "docx")


@pytest.fixture(scope="module")
def cli_env(tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tone.wav"
    path.write_bytes(encode(tone(3.0), 16000, "wav", "pcm_s16le"))
    return path


@pytest.mark.parametrize("fmt", ["json", "srt", "vtt", "verbose_json", "text"])
def test_cli_formats(fmt, cli_env, tiny_models, monkeypatch, capsys):
    from scripts.transcribe import main

    monkeypatch.setenv("ASR_MODEL", str(tiny_models["main"]))
    monkeypatch.setenv("ASSISTANT_MODEL", "")
    monkeypatch.setenv("DIARIZATION_MODEL", "")
    assert main([str(cli_env), "--format", fmt, "--parameters", '{"vad": false}']) == 0
    out = capsys.readouterr().out
    if fmt == "json":  # the default: the endpoint response, as before
        assert {"text", "chunks", "speakers", "duration"} <= set(json.loads(out))
    elif fmt == "srt":
        assert list(srt.parse(out))
    elif fmt == "vtt":
        assert webvtt.from_string(out).captions
    elif fmt == "verbose_json":
        assert json.loads(out)["segments"]
    else:
        assert out.endswith("\n")


def test_cli_rttm_needs_a_diarization_model(cli_env, tiny_models, monkeypatch, capsys):
    from scripts.transcribe import main

    monkeypatch.setenv("ASR_MODEL", str(tiny_models["main"]))
    monkeypatch.setenv("ASSISTANT_MODEL", "")
    monkeypatch.setenv("DIARIZATION_MODEL", "")
    assert main([str(cli_env), "--format", "rttm"]) == 2
    error = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("{"))  # after load logs
    assert json.loads(error) == {"error": "--format rttm needs a DIARIZATION_MODEL", "field": "format"}


def test_cli_progress_spins_on_a_terminal_only():
    from scripts.transcribe import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, pipe = Terminal(), io.StringIO()
    with progress("transcribing x.flac", terminal), progress("transcribing x.flac", pipe):
        deadline = time.monotonic() + 60  # the first frame comes after 0.25 s: wait for it, however long it takes
        while "transcribing x.flac: " not in terminal.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert re.search(r"transcribing x\.flac: \d+ s", terminal.getvalue()) and pipe.getvalue() == ""
    assert terminal.getvalue().endswith("\r\033[K")  # the spinner line is erased at the end
