"""The loop guard: a window that repeats itself stops at its token bound and is decoded again hotter, batched and
one window at a time; a window the guard passes is decoded exactly as without it."""

import numpy as np
import pytest
import torch
from conftest import make_pipeline, tone
from transformers import LogitsProcessor

from config import InferenceConfig
from whisper_model import FRAMES_PER_SECOND, token_limits

# random weights give improbable text: the log-probability test is left out, the rest of the guard stays on
GUARDED = {"vad": False, "chunk_length_s": 2.0, "logprob_threshold": None, "no_speech_threshold": None}
UNGUARDED = {**GUARDED, "temperature_increment_on_fallback": 0, "compression_ratio_threshold": None}


class Scripted(LogitsProcessor):
    """Greedy decoding scripted per window: `loop` windows repeat one token forever, the others end after three
    tokens (random weights would never stop by themselves). A window decoded again from its last timestamp comes
    back in a smaller batch: the model's meter knows which row is which window."""

    def __init__(self, model, loop: list[bool], token: int, eos: int, start: int):
        self.model, self.loop, self.token, self.eos, self.start = model, loop, token, eos, start

    def __call__(self, input_ids, scores):
        for row, window in enumerate(self.model._meter.rows.tolist()):
            looping = self.loop[window]
            if looping or input_ids.shape[1] - self.start >= 3:
                forced = torch.full_like(scores[row], -float("inf"))
                forced[self.token if looping else self.eos] = 0
                scores[row] = forced
        return scores


@pytest.fixture(scope="module")
def pipe(tiny_models):
    return make_pipeline(tiny_models["main"])


def scripted(pipe, loop_features: torch.Tensor):
    """Wrap the model's generate: in greedy passes the window whose features are `loop_features` loops, the others
    end; every pass's WindowStats are kept."""
    generate, passes = pipe.whisper.generate, []
    token = pipe.asr.tokenizer.convert_tokens_to_ids("Ġyeah")

    def wrapped(input_features=None, **kwargs):
        greedy = not kwargs.get("do_sample")
        if greedy:
            loop = [bool(torch.equal(row.float(), loop_features)) for row in input_features]
            kwargs["logits_processor"] = [*(kwargs.get("logits_processor") or []),
                                          Scripted(pipe.whisper, loop, token, pipe.whisper.generation_config.eos_token_id, 4)]
        before = len(pipe.whisper.window_stats)
        out = generate(input_features, **kwargs)
        passes.append((greedy, pipe.whisper.window_stats[before:]))
        return out

    pipe.whisper.generate = wrapped
    return passes, lambda: setattr(pipe.whisper, "generate", generate)


@pytest.mark.parametrize("batch_size", [2, 1])
def test_a_loop_is_bounded_and_decoded_again_hotter_and_a_normal_window_is_unchanged(pipe, batch_size, monkeypatch):
    # a bound under the tiny model's own 24-token limit: 2 s at 4 tokens a second, plus 4
    monkeypatch.setattr("speech_pipeline.TOKENS_PER_SECOND", 4.0)
    monkeypatch.setattr("speech_pipeline.TOKEN_MARGIN", 4)
    first, second = tone(2.0, freq=330.0), tone(2.0, freq=520.0)
    audio = np.concatenate([first, second])
    loop_features = pipe.asr.feature_extractor(first, sampling_rate=16000, return_tensors="pt").input_features[0]
    passes, restore = scripted(pipe, loop_features.float())
    try:
        unguarded = pipe.transcribe(audio, InferenceConfig.parse({**UNGUARDED, "batch_size": batch_size}))
        reference_passes = len(passes)
        guarded = pipe.transcribe(audio, InferenceConfig.parse({**GUARDED, "batch_size": batch_size}))
    finally:
        restore()
    limit = int(token_limits(torch.tensor([2 * FRAMES_PER_SECOND]), 4.0, 4)[0])
    assert limit == 12
    # unguarded, the loop runs to the bound and stays in the transcript
    assert unguarded.text.startswith("yeah yeah yeah") and unguarded.segments[0].temperature == 0
    # guarded: the greedy pass stopped the loop at its bound, a sampled pass of that window alone replaced it
    guarded_passes = passes[reference_passes:]
    greedy_stats = [stat for greedy, stats in guarded_passes if greedy for stat in stats]
    looped = [stat for stat in greedy_stats if stat.bounded]
    assert len(looped) == 1 and looped[0].tokens == limit
    sampled = [stats for greedy, stats in guarded_passes if not greedy]
    assert sampled and all(len(stats) == 1 for stats in sampled)
    # segment by segment: the first window's loop replaced by sampled text, the other window, which passed the
    # guard, greedy and token for token what it is without the guard
    loop_segments = [s for s in unguarded.segments if "yeah" in s.text]
    kept = [(s.start, s.end, s.text, s.temperature) for s in unguarded.segments[len(loop_segments):]]
    assert loop_segments and kept and all(s.end <= 2.0 for s in loop_segments)
    replaced = guarded.segments[:len(guarded.segments) - len(kept)]
    assert replaced and all(s.temperature > 0 and "yeah yeah" not in s.text for s in replaced)
    assert [(s.start, s.end, s.text, s.temperature) for s in guarded.segments[len(replaced):]] == kept


def _attempt(temperature: float, ratio: float, logprob: float, bounded: bool = False, text: str = "x"):
    from speech_pipeline import Attempt

    return Attempt({"text": text}, temperature, ratio, logprob, 0.0, "en", bounded)


def test_speech_that_repeats_itself_keeps_its_likely_text_over_an_improbable_short_one():
    """The real sample said 2.5 times in one window (measured on whisper-base): every temperature up to 0.8 gives
    the whole repeated text (compression 3.0-3.1, likely), 1.0 gives one improbable sentence (1.67, -2.0)."""
    from config import InferenceConfig
    from speech_pipeline import Guard, best_attempt

    guard = Guard.of(InferenceConfig.parse({}))
    attempts = [_attempt(0.0, 3.10, -0.20), _attempt(0.2, 3.10, -0.22), _attempt(0.4, 3.10, -0.26),
                _attempt(0.6, 3.10, -0.42), _attempt(0.8, 3.02, -0.44), _attempt(1.0, 1.67, -2.02)]
    assert all(attempt.fails(guard) for attempt in attempts)
    assert best_attempt(attempts, guard).temperature == 0.8  # likely, and the least repetitive of the likely ones
    # a loop cut at its token bound still loses to any attempt that ended by itself, likely or not
    cut = [_attempt(0.0, 5.0, -0.1, bounded=True), _attempt(0.2, 1.5, -1.5)]
    assert best_attempt(cut, guard).temperature == 0.2
    # and among likely attempts one that is not repetitive wins
    mixed = [_attempt(0.0, 3.0, -0.3), _attempt(0.2, 2.0, -1.2), _attempt(0.4, 2.6, -0.5)]
    assert best_attempt(mixed, guard).temperature == 0.4


@pytest.mark.e2e
def test_real_speech_said_three_times_keeps_every_repetition(sample_bytes):
    """A window holding the same passage 2.5 times compresses like a loop; the guard must not trade it for a hot
    decode that keeps one sentence (whisper-base fp32 lost 45% of the words of the sample said five times)."""
    import jiwer
    from conftest import MODELS, SAMPLE_TEXT, encode

    from audio import SAMPLE_RATE, decode_audio

    speech = decode_audio(sample_bytes)
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    audio = np.concatenate([speech, gap] * 3)
    out = make_pipeline(MODELS / "whisper-base").handle({"inputs": encode(audio, SAMPLE_RATE, "wav", "pcm_s16le"),
                                                          "parameters": {"language": "en"}})
    normal = lambda text: " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())  # noqa: E731
    assert jiwer.wer(normal(" ".join([SAMPLE_TEXT] * 3)), normal(out["text"])) < 0.15, out["text"]


def test_a_sampled_decoding_that_says_the_same_words_settles_a_repetitive_window():
    from config import InferenceConfig
    from speech_pipeline import Guard

    guard = Guard.of(InferenceConfig.parse({}))
    said = "Hello and welcome. This is a test. " * 3
    greedy = _attempt(0.0, 3.1, -0.2, text=said)
    assert greedy.repeats_real_speech(_attempt(0.2, 3.1, -0.25, text=said.lower().replace(".", ",")), guard)
    assert not greedy.repeats_real_speech(_attempt(0.2, 1.5, -0.6, text="Hello and welcome."), guard)  # other words
    looped = _attempt(0.0, 6.0, -0.1, bounded=True, text="yeah " * 80)
    assert not looped.repeats_real_speech(_attempt(0.2, 6.0, -0.1, text="yeah " * 80), guard)  # cut at its bound
    unlikely = _attempt(0.0, 3.1, -1.4, text=said)
    assert not unlikely.repeats_real_speech(_attempt(0.2, 3.1, -1.3, text=said), guard)
