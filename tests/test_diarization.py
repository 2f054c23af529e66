"""Diarization through pyannote's real pipeline code, offline: random real-architecture models for the
plumbing, and the offline default (Silero segmentation + Resemblyzer embeddings) for real turns."""

import json

import jiwer
import numpy as np
import pytest
import torch
from conftest import MODELS, ROOT, b64, encode, make_pipeline

from audio import decode_audio
from config import InferenceConfig
from diarization_utils import diarize, load_diarizer
from benchmarks.bench_diarization import long_recording, speaker_time_accuracy

TWO_SPEAKERS = ROOT / "samples" / "two_speakers.ogg"
REFERENCE = json.loads((ROOT / "samples" / "two_speakers.json").read_text())["turns"]
WORD_TOLERANCE_S = 0.5  # Whisper's cross-attention word times against the synthesized speech's exact edges
TOLERANCE_S = 0.6  # turn boundaries: Silero frames are 32 ms, pyannote chunks step 0.5 s, plus VAD padding


def synthetic_two_speakers(seconds: float = 12.0, turn: float = 3.0) -> np.ndarray:
    """Two harmonic 'voices' (110 Hz and 220 Hz, different timbre) alternating every `turn` seconds."""
    t = np.arange(int(seconds * 16000)) / 16000
    voices = [sum(0.9 ** k * np.sin(2 * np.pi * 110 * k * t) for k in range(1, 20)),
              sum(0.6 ** k * np.sin(2 * np.pi * 220 * k * t) for k in range(1, 10))]
    speaker = (t // turn).astype(int) % 2
    audio = np.where(speaker == 0, voices[0], voices[1]) * 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
    audio[(t % turn) > turn - 0.3] = 0  # pauses between turns
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)


@pytest.fixture(scope="module")
def random_pyannote(tmp_path_factory):
    """pyannote/segmentation-3.0's architecture (PyanNet, powerset of 3 speakers, 2 per frame) and a
    WeSpeaker ResNet34, randomly initialised, saved as checkpoints with a local pipeline config.yaml."""
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34
    from pyannote.audio.models.segmentation import PyanNet

    from offline_diarizer import write_pipeline

    torch.manual_seed(0)
    segmentation = PyanNet(sincnet={"stride": 10}, lstm={"hidden_size": 128, "num_layers": 4, "bidirectional": True,
                                                         "monolithic": True, "dropout": 0.5},
                           linear={"hidden_size": 128, "num_layers": 2}, sample_rate=16000, num_channels=1)
    segmentation.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION, resolution=Resolution.FRAME, duration=10.0, min_duration=None,
        warm_up=(0.0, 0.0), classes=["speaker#1", "speaker#2", "speaker#3"], powerset_max_classes=2,
        permutation_invariant=True)
    segmentation.build()
    assert segmentation.dimension == 7  # the 3.x powerset classes
    embedding = WeSpeakerResNet34(sample_rate=16000)
    embedding.specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK,
                                              duration=10.0)
    out = write_pipeline(tmp_path_factory.mktemp("pyannote"), segmentation, embedding,
                         clustering={"method": "centroid", "min_cluster_size": 12, "threshold": 0.7045654963945799})
    return load_diarizer(str(out), None, torch.device("cpu"))  # the public loader a hub id goes through


@pytest.mark.parametrize("hints", [{}, {"num_speakers": 2}, {"min_speakers": 1, "max_speakers": 3}])
def test_random_real_architecture_pipeline_runs_with_and_without_hints(random_pyannote, hints):
    audio = synthetic_two_speakers()
    turns = diarize(random_pyannote, audio, InferenceConfig.parse(hints))
    assert turns == sorted(turns)
    for start, end, speaker in turns:
        assert 0 <= start < end <= 12.0 + 1e-3 and speaker.startswith("SPEAKER_")
    if "num_speakers" in hints:
        assert len({speaker for _, _, speaker in turns}) <= 2


def test_loading_a_missing_pipeline_fails_fast_and_redacts_the_token(tmp_path):
    with pytest.raises(RuntimeError, match="could not load DIARIZATION_MODEL") as caught:
        load_diarizer(str(tmp_path / "nowhere"), "hf_verysecret", torch.device("cpu"))
    assert "hf_verysecret" not in str(caught.value)


@pytest.fixture(scope="module")
def offline_default():
    return load_diarizer(str(MODELS / "diarization"), None, torch.device("cpu"))


def mapped_accuracy(turns, reference) -> float:
    return speaker_time_accuracy(turns, reference, 25.0)


@pytest.mark.parametrize("hints", [{}, {"num_speakers": 2}, {"min_speakers": 2, "max_speakers": 4}])
def test_offline_default_recovers_the_turns_of_two_voices(offline_default, hints):
    audio = decode_audio(TWO_SPEAKERS.read_bytes())
    turns = diarize(offline_default, audio, InferenceConfig.parse(hints))
    assert len({speaker for _, _, speaker in turns}) == 2
    assert mapped_accuracy(turns, REFERENCE) >= 0.9
    merged = []  # a pause inside one person's turn may split it; fragments under 0.3 s are ignored
    for start, end, speaker in (t for t in turns if t[1] - t[0] >= 0.3):
        if merged and merged[-1][2] == speaker:
            merged[-1][1] = end
        else:
            merged.append([start, end, speaker])
    assert len(merged) == len(REFERENCE)
    for (start, end, _), ref in zip(merged, REFERENCE):
        assert abs(start - ref["start"]) < TOLERANCE_S and abs(end - ref["end"]) < TOLERANCE_S


@pytest.mark.parametrize("hints, count", [({"num_speakers": 1}, 1), ({"num_speakers": 3}, 3),
                                          ({"min_speakers": 3}, 3), ({"max_speakers": 1}, 1)])
def test_speaker_hints_give_that_many_speakers(offline_default, hints, count):
    """The clip has two voices: hints that disagree must still be obeyed (pyannote's clustering takes them)."""
    audio = decode_audio(TWO_SPEAKERS.read_bytes())
    turns = diarize(offline_default, audio, InferenceConfig.parse(hints))
    assert len({speaker for _, _, speaker in turns}) == count, turns


@pytest.fixture(scope="module")
def diarized():
    return make_pipeline(MODELS / "whisper-base", diarization=MODELS / "diarization")


def words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c == " ").split())


def test_handler_attributes_each_turn_to_its_speaker(diarized):
    out = diarized.handle({"inputs": b64(TWO_SPEAKERS.read_bytes()), "parameters": {"language": "en"}})
    speakers = out["speakers"]
    assert len(speakers) == len(REFERENCE)
    labels = {}
    for segment, ref in zip(speakers, REFERENCE):
        assert labels.setdefault(ref["speaker"], segment["speaker"]) == segment["speaker"]
        assert jiwer.wer(words(ref["text"]), words(segment["text"])) <= 0.3, (ref["text"], segment["text"])
        assert abs(segment["timestamp"][0] - ref["start"]) < TOLERANCE_S
    assert len(set(labels.values())) == 2
    assert "".join(s["text"] for s in speakers).strip() == out["text"]


def test_word_level_speakers(diarized):
    out = diarized.handle({"inputs": TWO_SPEAKERS.read_bytes(),
                        "parameters": {"language": "en", "return_timestamps": "word", "num_speakers": 2}})
    mapping, correct = {}, 0
    for word in out["words"]:
        middle = (word["start"] + word["end"]) / 2
        ref = min(REFERENCE, key=lambda r: 0 if r["start"] <= middle <= r["end"] else
                  min(abs(middle - r["start"]), abs(middle - r["end"])))
        correct += mapping.setdefault(word["speaker"], ref["speaker"]) == ref["speaker"]
    assert correct / len(out["words"]) >= 0.9
    for ref in REFERENCE:  # every turn's first and last word where the reference says the turn starts and ends
        said = [w for w in out["words"] if ref["start"] - WORD_TOLERANCE_S <= w["start"] < ref["end"]]
        assert said and jiwer.wer(words(ref["text"]), words("".join(w["text"] for w in said))) <= 0.3, ref
        assert abs(said[0]["start"] - ref["start"]) < WORD_TOLERANCE_S, (said[0], ref)
        assert abs(said[-1]["end"] - ref["end"]) < WORD_TOLERANCE_S, (said[-1], ref)
    assert all("words" in s for s in out["speakers"])
    assert [w for s in out["speakers"] for w in s["words"]] == out["words"]


def test_diarization_can_be_skipped_and_silence_has_no_speakers(diarized):
    out = diarized.handle({"inputs": TWO_SPEAKERS.read_bytes(), "parameters": {"diarization": False}})
    assert out["speakers"] == [] and out["text"]
    silent = diarized.handle({"inputs": encode(np.zeros(16000 * 5, np.float32), 16000, "wav", "pcm_s16le")})
    assert silent["text"] == "" and silent["speakers"] == []


def test_two_minutes_of_two_voices_give_two_speakers(offline_default):
    """Clustering settings tuned on 24 s alone found 15 speakers in 10 minutes of these two voices."""
    audio, reference = long_recording(2.0)
    turns = diarize(offline_default, audio, InferenceConfig())
    assert len({speaker for _, _, speaker in turns}) == 2
    assert speaker_time_accuracy(turns, reference, len(audio) / 16000) >= 0.9


def test_bench_diarization_reports_time_shares_and_accuracy(monkeypatch):
    from benchmarks import bench_diarization

    monkeypatch.setenv("ASR_MODEL", str(MODELS / "whisper-base"))
    monkeypatch.setenv("DIARIZATION_MODEL", str(MODELS / "diarization"))
    report = bench_diarization.run(0.5)
    assert report["audio_seconds"] >= 30 and report["speakers_found"] == 2
    assert report["speaker_time_accuracy"] >= 0.9 and 0 < report["diarization_share"] < 1
    assert report["seconds"]["pipeline"] > report["seconds"]["diarization"] > 0
