"""Known speakers on real voices: espeak-ng reference clips name the two voices of samples/two_speakers.ogg, with
the offline default diarizer's own speaker model (Resemblyzer)."""

from __future__ import annotations

import base64
import shutil

import numpy as np
import pytest
import torch
from conftest import MODELS, make_pipeline
from fastapi.testclient import TestClient

import known_speakers
from audio import decode_audio
from config import InferenceConfig
from diarization_utils import diarize, load_diarizer
from scripts.make_two_speaker_sample import VOICES, speak
from test_diarization import REFERENCE, TWO_SPEAKERS

pytestmark = [pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
              pytest.mark.skipif(not (MODELS / "diarization").is_dir(), reason="setup.sh did not build the models")]
NAMES = {"A": "Bob", "B": "Alice"}  # samples/two_speakers.json's speakers
SENTENCE = "I am recording a short reference clip, so that the system can recognise my voice later."


def _wav(audio: np.ndarray) -> bytes:
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    """A reference clip per name (other words than the sample's), and Carol, a third voice not in the sample."""
    voices = {NAMES[label]: voice for label, voice in VOICES.items()} | {"Carol": "en-us+f5"}
    return {name: _wav(speak(SENTENCE, voice)) for name, voice in voices.items()}


@pytest.fixture(scope="module")
def diarized():
    """The offline default diarizer, the sample's audio and its anonymous turns."""
    diarizer = load_diarizer(str(MODELS / "diarization"), None, torch.device("cpu"))
    audio = decode_audio(TWO_SPEAKERS.read_bytes())
    return diarizer, audio, diarize(diarizer, audio, InferenceConfig()).turns


def _name_of_each_reference_turn(turns) -> list[str]:
    """The label of the diarized turn overlapping each reference turn most."""
    return [max(turns, key=lambda t: min(t[1], ref["end"]) - max(t[0], ref["start"]))[2] for ref in REFERENCE]


def test_references_name_both_voices_and_a_stranger_names_nobody(diarized, clips):
    diarizer, audio, turns = diarized
    known = known_speakers.references(list(clips), [base64.b64encode(c).decode() for c in clips.values()])
    named = known_speakers.name_speakers(diarizer, audio, turns, known)
    assert _name_of_each_reference_turn(named) == [NAMES[ref["speaker"]] for ref in REFERENCE]
    assert "Carol" not in {label for _, _, label in named}


def test_an_unmatched_speaker_keeps_its_anonymous_label(diarized, clips):
    diarizer, audio, turns = diarized
    known = known_speakers.references(["Alice"], [clips["Alice"]])
    named = _name_of_each_reference_turn(known_speakers.name_speakers(diarizer, audio, turns, known))
    for label, ref in zip(named, REFERENCE):
        assert (label == "Alice") == (ref["speaker"] == "B")
        assert label == "Alice" or label.startswith("SPEAKER_")


def test_the_contract_and_the_openai_route_name_the_speakers(clips):
    from formats import to_srt
    from server import ServerSettings, create_app
    from transcript import Transcript

    pipeline = make_pipeline(MODELS / "whisper-base", diarization=MODELS / "diarization")
    bob = "data:audio/wav;base64," + base64.b64encode(clips["Bob"]).decode()
    out = pipeline.handle({"inputs": TWO_SPEAKERS.read_bytes(), "parameters": {
        "language": "en", "known_speaker_names": ["Bob"], "known_speaker_references": [bob]}})
    labels = [s["speaker"] for s in out["speakers"]]
    assert [label == "Bob" for label in labels] == [ref["speaker"] == "A" for ref in REFERENCE]
    assert len({label for label in labels if label != "Bob"}) == 1 and labels[1].startswith("SPEAKER_")
    subtitles = to_srt(Transcript.from_response(out))
    assert "[Bob] Good morning" in subtitles and f"[{labels[1]}] Happy to be here" in subtitles
    with TestClient(create_app(pipeline, ServerSettings())) as client:  # references as uploaded files
        response = client.post("/v1/audio/transcriptions", data={
            "model": "whisper-1", "language": "en", "response_format": "diarized_json",
            "known_speaker_names[]": ["Alice", "Bob"]}, files=[
            ("file", ("two.ogg", TWO_SPEAKERS.read_bytes(), "audio/ogg")),
            ("known_speaker_references[]", ("alice.wav", clips["Alice"], "audio/wav")),
            ("known_speaker_references[]", ("bob.wav", clips["Bob"], "audio/wav"))])
    assert response.status_code == 200, response.text
    assert [s["speaker"] for s in response.json()["segments"]] == [NAMES[ref["speaker"]] for ref in REFERENCE]


def test_cli_names_the_speakers_in_rttm(clips, tmp_path, monkeypatch):
    from scripts.transcribe import main

    monkeypatch.setenv("ASSISTANT_MODEL", "")
    (tmp_path / "bob.wav").write_bytes(clips["Bob"])
    (tmp_path / "alice.wav").write_bytes(clips["Alice"])
    assert main([str(TWO_SPEAKERS), "--language", "en", "--known_speaker", f"Bob={tmp_path / 'bob.wav'}",
                 "--known-speaker", f"Alice={tmp_path / 'alice.wav'}", "--output_format", "rttm", "--output_dir",
                 str(tmp_path)]) == 0
    rows = [line.split() for line in (tmp_path / "two_speakers.rttm").read_text().splitlines()]
    assert [row[7] for row in rows] == [NAMES[ref["speaker"]] for ref in REFERENCE]
    assert all(row[1] == "two_speakers" for row in rows)
    # each turn starts in the pause before its reference turn or near it (the offline diarizer fills pauses under 1 s)
    for row, previous, ref in zip(rows[1:], REFERENCE, REFERENCE[1:]):
        assert previous["end"] - 0.6 < float(row[3]) < ref["start"] + 0.6, (row, previous, ref)
    assert abs(float(rows[0][3]) - REFERENCE[0]["start"]) < 0.6
