"""Word boundaries on the speech (word_timing.py): every method moves a boundary it must move, none ever makes words
overlap or run backwards, and on a generated isolated-word clip the real model's words land within 100 ms."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MODELS, ROOT, make_pipeline
from hypothesis import example, given
from hypothesis import strategies as st

from audio import SAMPLE_RATE, decode_audio
from transcript import Word
from vad import SpeechDetector
from word_timing import ENERGY_FRAME_S, energy_speech, pauses, refine_words, snap

CLIP = ROOT / "samples" / "isolated_words.flac"


def burst(seconds: float, freq: float = 180.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def test_energy_moves_a_boundary_into_the_pause_dtw_swallowed():
    # sound at 0.3-0.8 and 1.1-1.6 s; Whisper-like times put the boundary at 0.8 (the second word swallows the pause)
    audio = np.concatenate([silence(0.3), burst(0.5), silence(0.3), burst(0.5), silence(0.3)])
    words = [Word(0.25, 0.8, " one"), Word(0.8, 1.45, " two")]
    first, second = refine_words(words, audio, (0.0, len(audio) / SAMPLE_RATE), "energy")
    assert abs(first.start - 0.3) <= 0.02 and abs(first.end - 0.8) <= 0.02
    assert abs(second.start - 1.1) <= 0.02 and abs(second.end - 1.6) <= 0.02
    assert refine_words(words, audio, (0.0, 1.9), "whisper") == words  # the plain DTW times stay available


def test_energy_leaves_a_boundary_without_a_pause_where_whisper_put_it():
    audio = np.concatenate([silence(0.3), burst(0.5), burst(0.5, 300.0), silence(0.3)])
    words = [Word(0.3, 0.75, " one"), Word(0.75, 1.3, " two")]
    first, second = refine_words(words, audio, (0.0, len(audio) / SAMPLE_RATE), "energy")
    assert first.end == second.start == 0.75


@pytest.mark.parametrize("method", ["vad", "energy+vad"])
def test_the_vad_methods_move_a_boundary_into_the_pause_between_two_phrases(sample_bytes, method):
    audio = decode_audio(sample_bytes)  # "Hello and welcome." then a pause until 1.65 s
    words = [Word(0.3, 1.1, " Hello and welcome."), Word(1.1, 2.6, " This is a")]
    first, second = refine_words(words, audio, (0.0, 3.0), method, SpeechDetector().probabilities(audio))
    assert 1.18 <= first.end <= 1.26 and 1.62 <= second.start <= 1.7, (first, second)
    with pytest.raises(ValueError):  # the VAD's probabilities come from the caller's pass, never a pass of its own
        refine_words(words, audio, (0.0, 3.0), method)


def test_pauses_are_the_silent_runs_between_speech():
    speech = np.array([0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0], bool)
    assert pauses(speech, ENERGY_FRAME_S) == [(0.03, 0.1)]  # edges are no pauses, a one-frame dip is too short


@st.composite
def words_and_speech(draw):
    frames = draw(st.integers(1, 400))
    speech = np.array(draw(st.lists(st.booleans(), min_size=frames, max_size=frames)), bool)
    times = sorted(draw(st.lists(st.floats(0, frames * ENERGY_FRAME_S), min_size=2, max_size=40)))
    count = len(times) // 2
    # Whisper's times are ordered, but overlapping and zero-length words occur too
    jitter = draw(st.lists(st.floats(-0.2, 0.2), min_size=count, max_size=count))
    words = [Word(times[2 * i], max(times[2 * i], times[2 * i + 1] + jitter[i]), f" w{i}") for i in range(count)]
    return words, speech


@given(words_and_speech(), st.floats(0, 100))
@example(([Word(0.0, 0.125, " w0"), Word(0.0, 0.0, " w1")], np.array([False])), 0.0)  # no speech at all: found by CI
def test_refined_words_never_overlap_or_run_backwards(case, offset):
    words, speech = case
    words = [Word(w.start + offset, w.end + offset, w.text) for w in words]
    out = snap(words, speech, ENERGY_FRAME_S, offset)
    assert [w.text for w in out] == [w.text for w in words]
    for word in out:
        assert word.start <= word.end
    for before, after in zip(out, out[1:]):
        assert before.end <= after.start


@given(st.lists(st.floats(-1, 1), min_size=0, max_size=3000))
def test_energy_speech_takes_any_audio(samples):
    audio = np.array(samples, np.float32)
    assert len(energy_speech(audio)) == len(audio) // int(ENERGY_FRAME_S * SAMPLE_RATE)


@pytest.mark.e2e
def test_real_word_times_on_an_isolated_word_clip_are_within_100_ms():
    """samples/isolated_words.flac (espeak-ng, made by `python -m benchmarks.bench_word_timing --write-sample`):
    words spoken alone, pauses of 80-250 ms; its JSON holds each word's exact start and end."""
    from benchmarks.bench_word_timing import match

    reference = [tuple(row) for row in json.loads(CLIP.with_suffix(".json").read_text())["words"]]
    pipeline = make_pipeline(MODELS / "whisper-base")
    out = pipeline.handle({"inputs": CLIP.read_bytes(), "parameters": {"language": "en", "return_timestamps": "word"}})
    assert out["word_timing"] == "energy+vad"
    pairs = match(reference, out["words"])
    assert len(pairs) >= 0.9 * len(reference), out["text"]
    errors = [max(abs(out["words"][h]["start"] - reference[r][0]), abs(out["words"][h]["end"] - reference[r][1]))
              for r, h in pairs]
    assert np.mean(errors) <= 0.06 and np.mean(np.array(errors) <= 0.1) >= 0.85, errors


def _spy_vad_passes(monkeypatch: pytest.MonkeyPatch, pipeline) -> list[np.ndarray]:
    """Every VAD pass `pipeline` makes from now on, as the probabilities it returned."""
    passes: list[np.ndarray] = []
    real = pipeline.detector.probabilities

    def spy(audio: np.ndarray) -> np.ndarray:
        passes.append(real(audio))
        return passes[-1]

    monkeypatch.setattr(pipeline.detector, "probabilities", spy)
    return passes


def test_a_request_makes_one_vad_pass_which_word_timing_reuses(tiny_models, monkeypatch):
    import speech_pipeline

    pipeline = make_pipeline(tiny_models["main"])
    passes = _spy_vad_passes(monkeypatch, pipeline)
    given: list[np.ndarray | None] = []
    real_refine = speech_pipeline.refine_words

    def refine(words, audio, window, method, probabilities=None):
        given.append(probabilities)
        return real_refine(words, audio, window, method, probabilities)

    monkeypatch.setattr(speech_pipeline, "refine_words", refine)
    audio = CLIP.read_bytes()
    for parameters, expected in (({"return_timestamps": "word"}, 1), ({}, 1),
                                 ({"return_timestamps": "word", "vad": False}, 1),  # word timing's own need
                                 ({"return_timestamps": "word", "vad": False, "word_timing": "energy"}, 0),
                                 ({"vad": False}, 0)):
        passes.clear(), given.clear()
        pipeline.handle({"inputs": audio, "parameters": {"language": "en", **parameters}})
        assert len(passes) == expected, parameters
        if parameters.get("return_timestamps"):  # word timing got the very array of the request's pass
            assert given and all(p is (passes[0] if passes else None) for p in given), parameters


@pytest.mark.e2e
def test_word_timing_with_the_pipelines_vad_pass_gives_the_boundaries_of_a_pass_of_its_own(monkeypatch):
    """The reused probabilities time the words exactly as a separate VAD pass over the same audio does (before the
    reuse, word timing ran such a pass; over a window from 0 s it was this one)."""
    import speech_pipeline

    pipeline = make_pipeline(MODELS / "whisper-base")
    passes = _spy_vad_passes(monkeypatch, pipeline)
    calls = []
    real_refine = speech_pipeline.refine_words

    def refine(words, audio, window, method, probabilities=None):
        calls.append(([Word(w.start, w.end, w.text) for w in words], window))
        return real_refine(words, audio, window, method, probabilities)

    monkeypatch.setattr(speech_pipeline, "refine_words", refine)
    audio = decode_audio(CLIP.read_bytes())
    for vad in (True, False):
        passes.clear(), calls.clear()
        out = pipeline.handle({"inputs": CLIP.read_bytes(),
                               "parameters": {"language": "en", "return_timestamps": "word", "vad": vad}})
        assert len(passes) == 1 and calls, vad
        own = SpeechDetector().probabilities(audio)
        expected = [w for words, window in calls for w in refine_words(words, audio, window, "energy+vad", own)]
        assert [(w["start"], w["end"]) for w in out["words"]] == [(w.start, w.end) for w in expected], vad
        assert [(w["start"], w["end"]) for w in out["words"]] != [(w.start, w.end) for words, _ in calls
                                                                   for w in words]  # the refinement moved them


def test_the_response_says_how_words_were_timed(tiny_models):
    from conftest import encode, tone

    pipeline = make_pipeline(tiny_models["main"])
    audio = encode(tone(2.0), SAMPLE_RATE, "wav", "pcm_s16le")
    for asked, said in (({}, "energy+vad"), ({"word_timing": "whisper"}, "whisper")):
        out = pipeline.handle({"inputs": audio, "parameters": {"return_timestamps": "word", "vad": False, **asked}})
        assert out["word_timing"] == said
    assert "word_timing" not in pipeline.handle({"inputs": audio, "parameters": {"vad": False}})


def _transformers_dtw():
    """transformers' own `_dynamic_time_warping`, from a fresh copy of its module (word_timing replaces it)."""
    import importlib.util

    from transformers.models.whisper import generation_whisper

    spec = importlib.util.spec_from_file_location("transformers.models.whisper._original_generation_whisper",
                                                  generation_whisper.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._dynamic_time_warping


TRANSFORMERS_DTW = _transformers_dtw()


@given(st.integers(1, 12), st.integers(1, 40), st.integers(0, 2 ** 32 - 1), st.sampled_from([0, 2, 100]))
def test_word_timestamps_run_a_vectorized_dtw_with_transformers_result(rows, cols, seed, levels):
    from transformers.models.whisper import generation_whisper

    from word_timing import dynamic_time_warping

    assert generation_whisper._dynamic_time_warping is dynamic_time_warping
    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, levels, (rows, cols)).astype(float) if levels else rng.standard_normal((rows, cols))
    expected, got = TRANSFORMERS_DTW(matrix), dynamic_time_warping(matrix)  # few levels: ties, the tie rule's cases
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))


# openai-whisper's _ALIGNMENT_HEADS (whisper/__init__.py): base85 gzip of a (decoder layers, heads) boolean mask
PUBLISHED_HEADS = {"whisper-base": (b"ABzY8KQ!870{>%RzyTQH3`Q^yNP!>##QT-<FaQ7m", 6, 8),
                   "whisper-tiny.en": (b"ABzY8J1N>@0{>%R00Bk>$p{7v037`oCl~+#00", 4, 6)}


@pytest.mark.parametrize("name", sorted(PUBLISHED_HEADS))
def test_the_converted_models_carry_the_published_alignment_heads(name):
    import base64
    import gzip

    config = MODELS / name / "generation_config.json"
    if not config.exists():
        pytest.skip(f"{config} is not built: bash setup.sh")
    encoded, layers, heads = PUBLISHED_HEADS[name]
    mask = np.frombuffer(gzip.decompress(base64.b85decode(encoded)), dtype=bool).reshape(layers, heads)
    assert json.loads(config.read_text())["alignment_heads"] == np.argwhere(mask).tolist()


def test_the_benchmark_pairs_reference_words_with_the_same_or_respelled_words():
    from benchmarks.bench_word_timing import match, score

    reference = [(0.0, 0.4, "The"), (0.5, 0.9, "old"), (1.0, 1.5, "harbour"), (1.6, 2.0, "was")]
    words = [{"start": 0.0, "end": 0.45, "text": " The"}, {"start": 0.45, "end": 0.9, "text": " old"},
             {"start": 0.9, "end": 1.5, "text": " harbor,"}, {"start": 1.6, "end": 2.0, "text": " was"},
             {"start": 2.0, "end": 2.2, "text": " uh"}]
    assert match(reference, words) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    result = score([{"reference": reference}], [words])
    assert result["matched"] == 4 and result["start_error_ms"]["mean"] == 37.5  # (0 + 50 + 100 + 0) / 4
    assert result["pauses"] == 3 and result["pauses_swallowed"] == 2 and result["within_100ms"] == 1.0
