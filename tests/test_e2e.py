"""End to end on the real converted whisper-base (and tiny.en as assistant), offline."""

import collections
import re
import shutil
import subprocess

import jiwer
import numpy as np
import pytest
from conftest import MODELS, ROOT, SAMPLE_TEXT, b64, encode, make_pipeline

from audio import decode_audio

pytestmark = pytest.mark.e2e


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(words(reference), words(hypothesis))


@pytest.fixture(scope="module")
def real():
    return make_pipeline(MODELS / "whisper-base", MODELS / "whisper-tiny.en")


def test_sample_transcribes_to_the_expected_words(real, sample_bytes):
    out = real.handle({"inputs": b64(sample_bytes)})
    assert wer(SAMPLE_TEXT, out["text"]) <= 0.1, out["text"]
    assert out["chunks"][0]["timestamp"][0] < 0.5 and 9.5 < out["chunks"][-1]["timestamp"][1] <= out["duration"]


def test_stereo_44k_mp3_gives_the_same_words_as_the_16k_flac(real, sample_bytes):
    audio = decode_audio(sample_bytes)
    upsampled = np.interp(np.arange(0, len(audio), 16000 / 44100), np.arange(len(audio)), audio).astype(np.float32)
    mp3 = encode(upsampled, 44100, "mp3", "libmp3lame", channels=2)
    from_flac = real.handle({"inputs": sample_bytes})
    from_mp3 = real.handle({"inputs": b64(mp3), "parameters": {"sampling_rate": 8000}})  # ignored for containers
    # bf16 (the default on CPUs with bf16 instructions) may flip the sample's one near-tie ("the weather" /
    # "but whether") between encodings; anything more is a decoding fault
    assert wer(from_flac["text"], from_mp3["text"]) <= 0.1 and wer(SAMPLE_TEXT, from_mp3["text"]) <= 0.1
    assert abs(from_mp3["duration"] - from_flac["duration"]) < 0.1


def test_assisted_with_tiny_en_equals_plain_greedy(real, sample_bytes):
    assert "assistant_tokenizer" in real.assistant_kwargs  # base and tiny.en do not share a vocabulary
    drafted = []
    hook = real.assistant_kwargs["assistant_model"].register_forward_hook(lambda *args: drafted.append(1))
    try:
        plain = real.handle({"inputs": sample_bytes, "parameters": {"batch_size": 1}})
        assert drafted == []
        assisted = real.handle({"inputs": sample_bytes, "parameters": {"assisted": True}})
    finally:
        hook.remove()
    assert len(drafted) > 1  # tiny.en drafted
    assert assisted == plain


def test_word_timestamps_follow_the_speech(real, sample_bytes):
    out = real.handle({"inputs": sample_bytes, "parameters": {"return_timestamps": "word"}})
    hello = out["words"][0]
    assert words(hello["text"]) == "hello" and hello["start"] < 0.5 and hello["end"] < 1.0
    starts = [w["start"] for w in out["words"]]
    assert starts == sorted(starts) and out["words"][-1]["end"] > 9.0


@pytest.fixture(scope="module")
def three_clips() -> dict[str, tuple[bytes, str]]:
    """The sample, the two-speaker clip and the real phone call (pyannote's sample.wav): audio and reference text."""
    import json

    from benchmarks.accuracy import phone_call

    samples = ROOT / "samples"
    turns = json.loads((samples / "two_speakers.json").read_text())["turns"]
    call, call_text = phone_call()
    return {"sample": ((samples / "sample.flac").read_bytes(), SAMPLE_TEXT),
            "two speakers": ((samples / "two_speakers.ogg").read_bytes(), " ".join(t["text"] for t in turns)),
            "phone call": (encode(call, 16000, "wav", "pcm_s16le"), call_text)}


@pytest.fixture(scope="module")
def fp32_texts(real, three_clips) -> dict[str, str]:
    """fp32 transcripts of the three clips, English asked for (shared: the phone call's loop test reads one too)."""
    return {name: real.handle({"inputs": audio, "parameters": {"language": "en"}})["text"]
            for name, (audio, _) in three_clips.items()}


def pooled_wer(references: list[str], hypotheses: list[str]) -> float:
    return jiwer.wer([words(r) for r in references], [words(h) for h in hypotheses])


def test_bf16_is_no_less_accurate_than_fp32_over_three_clips(real, three_clips, fp32_texts, sample_bytes):
    """The CPU default where bf16 instructions exist. Measured on 2026-11-29 (whisper-base, language en):
    fp32 WER sample 0.074, two speakers 0.094, phone call 0.173, pooled 0.130; bf16 0.000, 0.094, 0.210, pooled
    0.137 (bf16 wins the sample's "the weather" and loses words on the call). Tolerance: pooled bf16 within
    +0.02 of fp32 and no clip more than +0.1 worse (`benchmarks/accuracy.py` compares the two over 24 clips)."""
    import torch

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        pytest.skip("this CPU has no bf16 instructions: bf16 is not the default here and would be emulated")
    fast = make_pipeline(MODELS / "whisper-base", dtype="bfloat16")
    assert fast.asr.model.dtype == torch.bfloat16
    bf16_texts = {name: fast.handle({"inputs": audio, "parameters": {"language": "en"}})["text"]
                  for name, (audio, _) in three_clips.items()}
    references = [text for _, text in three_clips.values()]
    fp32 = pooled_wer(references, list(fp32_texts.values()))
    bf16 = pooled_wer(references, list(bf16_texts.values()))
    assert bf16 <= fp32 + 0.02, (fp32, bf16, bf16_texts)
    for name, (_, reference) in three_clips.items():
        assert wer(reference, bf16_texts[name]) <= wer(reference, fp32_texts[name]) + 0.1, (name, bf16_texts[name])
    # and its word timestamps follow fp32's on the sample
    reference = real.handle({"inputs": sample_bytes, "parameters": {"return_timestamps": "word"}})
    out = fast.handle({"inputs": sample_bytes, "parameters": {"return_timestamps": "word"}})
    assert len(out["words"]) == len(reference["words"])
    assert max(abs(ours["start"] - theirs["start"]) for ours, theirs in zip(out["words"], reference["words"])) < 0.2


def test_silence_and_noise_give_an_empty_transcript(real):
    rng = np.random.default_rng(0)
    for audio in (np.zeros(16000 * 20, np.float32), (0.01 * rng.standard_normal(16000 * 20)).astype(np.float32)):
        out = real.handle({"inputs": encode(audio, 16000, "wav", "pcm_s16le")})
        assert out["text"] == "" and out["chunks"] == []


def test_no_hallucinated_repetition_on_a_real_phone_call(three_clips, fp32_texts):
    """pyannote's sample.wav: 30 s of a real two-speaker call, 6.7 s of silence before the first word.
    Plain greedy whisper-base repeats its last 15 s of text here (WER 0.53); the VAD windows must not."""
    text = fp32_texts["phone call"]  # the real pipeline's, English asked for
    assert wer(three_clips["phone call"][1], text) < 0.2, text
    assert text.count("originally from Chicago") <= 2  # said twice in the call, no more


def test_fast_whisper_gives_the_stock_models_outputs(real, sample_bytes):
    """whisper_model.FastWhisper (one encoder pass, LogitsHead) against transformers' own class, same weights:
    a batch of two windows with the language detected, and word timestamps."""
    import torch
    from transformers import WhisperForConditionalGeneration, pipeline

    stock_model = WhisperForConditionalGeneration.from_pretrained(MODELS / "whisper-base", dtype=torch.float32,
                                                                  attn_implementation="sdpa")
    stock = pipeline("automatic-speech-recognition", model=stock_model.eval(), tokenizer=real.asr.tokenizer,
                     feature_extractor=real.asr.feature_extractor, device="cpu")
    from benchmarks.bench_diarization import long_recording

    audio = decode_audio(sample_bytes)
    # a VAD window of the 10-minute benchmark whose text ends at an opening timestamp before the window does:
    # generate() decodes a second pass over features from there on, which the encoder cache must not answer
    recording, _ = long_recording(5.7)
    seek_again = recording[int(312.024 * 16000):int(339.976 * 16000)]
    encoded = []
    hook = real.asr.model.get_encoder().conv1.register_forward_hook(lambda *args: encoded.append(1))
    options = {"batch_size": 8, "return_timestamps": True, "generate_kwargs": {"task": "transcribe"}}

    def both(clips, **changed):  # ours, then the stock class's (the pipeline consumes its input dicts)
        with torch.inference_mode():
            return [asr([{"raw": clip, "sampling_rate": 16000} for clip in clips], **{**options, **changed})
                    for asr in (real.asr, stock)]

    try:
        for clips, timestamps in (((audio, audio[:16000 * 6]), True), ((audio,), "word")):
            ours, theirs = both(clips, return_timestamps=timestamps)
            assert ours == theirs and ours[0]["text"]
        assert len(encoded) == 2
        ours, theirs = both([seek_again])  # not known to end at a pause: transformers' rule, the tail again
        assert ours == theirs and len(encoded) == 4  # once for the window and once for its tail
        real.whisper.pause_ends = collections.deque([True])  # it does (the pipeline asks the VAD): one pass
        ours, theirs = both([seek_again])
        assert len(encoded) == 5 and ours[0]["chunks"][:-1] == theirs[0]["chunks"][:-1]
        assert wer(theirs[0]["text"], ours[0]["text"]) <= 0.1 and not real.whisper.pause_ends
    finally:
        hook.remove()
        real.whisper.pause_ends = None


def test_a_prompt_steers_the_style_and_keeps_the_words(real, sample_bytes):
    plain = real.handle({"inputs": sample_bytes, "parameters": {"language": "en"}})["text"]
    styled = real.handle({"inputs": sample_bytes, "parameters": {
        "language": "en", "prompt": "um so uh we recorded this like at noon"}})["text"]
    assert re.search(r"[A-Z.]", plain) and not re.search(r"[A-Z.,]", styled), styled  # lower case, unpunctuated
    assert words(styled) == words(plain) and "noon" not in styled  # the prompt is context, not output


GERMAN = "Guten Morgen. Das Wetter ist heute schön. Ich trinke gern Kaffee mit Milch."


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng is not installed")
def test_translate_turns_german_speech_into_english_and_transcribe_keeps_it_german(real, tmp_path):
    """espeak-ng German (5 s). whisper-base, fp32, translates it to "Good morning, this is the weather today. I'll
    drink coffee with milk." and transcribes it to "Guten Morgen, das metert heute schön. Ich bin Kagingcafé mit
    Milch." The checked words are the ones it gets right."""
    path = tmp_path / "de.wav"
    subprocess.run(["espeak-ng", "-v", "de", "-w", str(path), GERMAN], check=True)
    # one pass a window: the hotter fallback re-decodes (tested apart) cost up to a minute here on a loaded CPU
    parameters = {"temperature_increment_on_fallback": 0}
    english = real.handle({"inputs": path.read_bytes(), "parameters": {**parameters, "task": "translate"}})
    german = real.handle({"inputs": path.read_bytes(), "parameters": parameters})
    assert english["language"] == german["language"] == "de"  # the spoken language, whatever the task
    assert {"morning", "weather", "coffee", "milk"} <= set(words(english["text"]).split()), english["text"]
    assert not {"guten", "morgen", "heute", "milch"} & set(words(english["text"]).split()), english["text"]
    assert {"guten", "morgen", "heute", "milch"} <= set(words(german["text"]).split()), german["text"]
    assert not {"morning", "weather", "coffee", "milk"} & set(words(german["text"]).split()), german["text"]


def test_int8_transcribes_the_sample_and_the_call_within_bounded_wer(real, sample_bytes):
    """DTYPE=int8 (dynamically quantized Linear layers, the fast CPU option) costs words: bounds a little above what
    it measured (sample 0.148 against fp32's 0.074, call about 0.22 against 0.21; corpus: docs/benchmarks.md)."""
    from benchmarks.accuracy import phone_call

    int8 = make_pipeline(MODELS / "whisper-base", dtype="int8")
    assert int8.whisper.quantized
    out = int8.handle({"inputs": sample_bytes})
    assert wer(SAMPLE_TEXT, out["text"]) <= 0.2, out["text"]
    audio, reference = phone_call()
    out = int8.handle({"inputs": encode(audio, 16000, "wav", "pcm_s16le"), "parameters": {"language": "en"}})
    assert wer(reference, out["text"]) < 0.3, out["text"]
    assert out["text"].count("originally from Chicago") <= 2  # no loop
