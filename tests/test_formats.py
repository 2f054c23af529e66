"""Formatters (text, srt, vtt, verbose_json, diarized_json, rttm) and the CLI's --format, parsed with real parsers."""

from __future__ import annotations

import json
import os
import re

import pytest
import srt
import webvtt
from conftest import encode, tone

from diarization_utils import merge_speakers
from formats import FORMATS, SubtitleOptions, render, to_srt, to_tsv, to_verbose_json, to_vtt
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


def test_cli_bare_boolean_flags_before_files():
    from scripts.transcribe import _explicit_bools, build_parser

    args = build_parser().parse_intermixed_args(_explicit_bools(["--highlight_words", "a.wav", "--verbose", "b.wav"]))
    assert args.highlight_words is True and args.verbose is True and [str(f) for f in args.files] == ["a.wav", "b.wav"]
    args = build_parser().parse_intermixed_args(_explicit_bools(["a.wav", "--highlight-words", "False", "--print_progress"]))
    assert args.highlight_words is False and args.print_progress is True


def test_cli_writes_every_format_for_two_files_with_progress(cli_env, tiny_models, tmp_path, monkeypatch, capsys):
    from scripts.transcribe import main

    monkeypatch.setenv("ASSISTANT_MODEL", "")
    second = tmp_path / "second.flac"
    second.write_bytes(encode(tone(2.0), 16000, "flac", "flac"))
    out = tmp_path / "out"
    code = main([str(cli_env), str(second), "--model", str(tiny_models["main"]), "--no-diarize", "--output_dir",
                 str(out), "--output-format", "all", "--max_line_width", "20", "--parameters", '{"vad": false}',
                 "--print_progress"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}.{ext}" for stem in ("tone", "second")
                                                            for ext in ("json", "txt", "srt", "vtt", "tsv"))
    for stem in ("tone", "second"):
        response = json.loads((out / f"{stem}.json").read_text())
        assert response["words"] is not None and response["speakers"] == []  # shaping asks for word times
        assert (out / f"{stem}.txt").read_text() == response["text"] + "\n"
        assert all(len(line) <= 20 or " " not in line for s in srt.parse((out / f"{stem}.srt").read_text())
                   for line in s.content.splitlines())
        assert len(webvtt.from_string((out / f"{stem}.vtt").read_text()).captions) == len(
            list(srt.parse((out / f"{stem}.srt").read_text())))
        assert (out / f"{stem}.tsv").read_text().startswith("start\tend\ttext\n")
    err = capsys.readouterr().err
    assert "2/2" in err and "window" in err and "second.flac" in err  # tqdm bars over the files and the windows
    assert "Loading weights" not in err
    code = main([str(cli_env), "--model", str(tiny_models["main"]), "--no_diarize", "--output_format", "rttm",
                 "--output_dir", str(out)])
    assert code == 2 and "rttm needs diarization" in capsys.readouterr().err


@pytest.mark.parametrize("problem", ["missing", "directory", "unreadable"])
def test_cli_refuses_a_bad_file_before_loading_models(problem, tmp_path, cli_env, monkeypatch, capsys):
    import speech_pipeline
    from scripts.transcribe import main

    monkeypatch.setattr(speech_pipeline, "SpeechPipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    path = {"missing": tmp_path / "nope.wav", "directory": tmp_path}.get(problem, tmp_path / "locked.wav")
    if problem == "unreadable":
        path.write_bytes(b"RIFF")
        path.chmod(0)
        if os.access(path, os.R_OK):
            pytest.skip("running as root: every file is readable")
    with pytest.raises(SystemExit) as exit_:
        main([str(cli_env), str(path), "--output_dir", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(path) in err
    assert not (tmp_path / "out").exists()


def _spoken(sentence_count: int = 6, speakers: tuple[str | None, ...] = (None,)) -> Transcript:
    """Sentences of 14 words, 0.3 s a word, each spoken by the next of `speakers`, words timed and labelled."""
    segments, t = [], 0.0
    for i in range(sentence_count):
        words = []
        for j in range(14):
            text = f" word{i}x{j}" + ("." if j == 13 else "")
            words.append(Word(round(t, 3), round(t + 0.25, 3), text, speakers[i % len(speakers)]))
            t += 0.3
        segments.append(Segment(words[0].start, words[-1].end, "".join(w.text for w in words), words,
                                speakers[i % len(speakers)]))
    turns = [s for s in segments if s.speaker] if speakers != (None,) else []
    return Transcript(text="".join(s.text for s in segments).strip(), segments=segments, duration=t,
                      speakers=[Segment(s.start, s.end, s.text, s.words, s.speaker) for s in turns])


def _cue_words(text: str) -> list[str]:
    return re.sub(r"\[SPEAKER_\d+\] |</?u>", "", text).split()


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_line_width_and_count_shape_every_cue_and_keep_every_word(fmt):
    transcript = _spoken()
    plain = list(srt.parse(to_srt(transcript)))
    assert len(plain) == 6 and max(len(s.content) for s in plain) > 100  # unshaped: one long line per sentence
    options = SubtitleOptions(max_line_width=42, max_line_count=2)
    text = render(transcript, fmt, subtitles=options)
    contents = ([s.content for s in srt.parse(text)] if fmt == "srt"
                else [c.raw_text for c in webvtt.from_string(text).captions])
    assert len(contents) > 6
    assert all(len(line) <= 42 for cue in contents for line in cue.split("\n"))
    assert all(len(cue.split("\n")) <= 2 for cue in contents)
    assert [w for cue in contents for w in _cue_words(cue)] == transcript.text.split()


def test_max_cue_seconds_splits_long_cues_at_word_times():
    transcript = _spoken(sentence_count=2)
    subtitles = list(srt.parse(to_srt(transcript, SubtitleOptions(max_cue_seconds=1.0))))
    assert all((s.end - s.start).total_seconds() <= 1.0 for s in subtitles)
    assert len(subtitles) == 10  # 14 words at 0.3 s: cues of 4, 4, 4 and 2 words per sentence... within 1 s
    assert subtitles[0].start.total_seconds() == 0.0 and subtitles[0].end.total_seconds() == 0.85


def test_highlight_words_underlines_each_word_while_it_is_spoken():
    transcript = _spoken(sentence_count=1)
    words = transcript.segments[0].words
    for word in words[7:]:  # a pause of 1.05 s before the eighth word
        word.start, word.end = word.start + 1.0, word.end + 1.0
    text = to_vtt(transcript, SubtitleOptions(highlight_words=True, max_line_width=42))
    captions = webvtt.from_string(text).captions
    underlined = [c for c in captions if "<u>" in c.raw_text]
    assert len(underlined) == len(words)
    for i, (caption, word) in enumerate(zip(underlined, words)):
        assert re.findall(r"<u>(.*?)</u>", caption.raw_text) == [word.text.strip()]
        assert caption.start_time.in_milliseconds() == round(word.start * 1000)
        # short gaps (50 ms) keep the word underlined up to the next one
        following = round(words[i + 1].start * 1000) if i + 1 < len(words) and i != 6 else round(word.end * 1000)
        assert caption.end_time.in_milliseconds() == following
    (pause,) = [c for c in captions if "<u>" not in c.raw_text]
    assert (pause.start_time.in_milliseconds(), pause.end_time.in_milliseconds()) == (2050, 3100)
    assert _cue_words(pause.raw_text) == transcript.text.split()


def test_speaker_labels_only_when_more_than_one_speaker():
    one = list(srt.parse(to_srt(_spoken(speakers=("SPEAKER_00",)))))
    assert one and not any("SPEAKER" in s.content for s in one)
    two = list(srt.parse(to_srt(_spoken(speakers=("SPEAKER_00", "SPEAKER_01")))))
    assert [s.content.split("]")[0] for s in two] == ["[SPEAKER_00", "[SPEAKER_01"] * 3
    shaped = list(srt.parse(to_srt(_spoken(speakers=("SPEAKER_00", "SPEAKER_01")),
                                   SubtitleOptions(max_line_width=30, max_line_count=1))))
    assert all(s.content.startswith("[SPEAKER_0") and len(s.content) <= 30 for s in shaped)


def test_a_sentence_of_two_speakers_splits_where_the_words_change_speaker():
    transcript = _spoken(sentence_count=1, speakers=("A",))
    for word in transcript.segments[0].words[7:]:
        word.speaker = "B"
    subtitles = list(srt.parse(to_srt(transcript)))
    assert [s.content.split("] ")[0] for s in subtitles] == ["[A", "[B"]
    assert subtitles[1].start.total_seconds() == transcript.segments[0].words[7].start


def test_segments_without_word_times_are_split_by_length():
    segment = Segment(10.0, 20.0, " " + " ".join(["abcd"] * 40))
    transcript = Transcript(text=segment.text.strip(), segments=[segment], duration=20.0)
    subtitles = list(srt.parse(to_srt(transcript, SubtitleOptions(max_line_width=20, max_line_count=1))))
    assert len(subtitles) == 10 and all(s.content == "abcd abcd abcd abcd" for s in subtitles)
    assert subtitles[0].start.total_seconds() == 10.0 and subtitles[-1].end.total_seconds() == 20.0
    assert all(a.end <= b.start for a, b in zip(subtitles, subtitles[1:]))


def test_tsv():
    transcript = _spoken(sentence_count=2, speakers=("SPEAKER_00", "SPEAKER_01"))
    rows = [line.split("\t") for line in to_tsv(transcript).splitlines()]
    assert rows[0] == ["start", "end", "text"] and rows[1][:2] == ["0", "4150"] and rows[2][2].endswith("word1x13.")
