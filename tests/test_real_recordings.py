"""End to end on real meeting recordings (the tuning set): no repetition loops, bounded decoding time, and the
detected language reported; on the real converted whisper-base with default parameters, as a client sends them."""

import shutil
import statistics
import subprocess
import time

import pytest
from conftest import MODELS, ROOT, make_pipeline

from audio import decode_audio
from benchmarks.accuracy import phone_call
from benchmarks.benchmark import wav_bytes
from speech_pipeline import compression_ratio

pytestmark = pytest.mark.e2e

AMI = ROOT.parent / "shared" / "data" / "ami-debug-train"


@pytest.fixture(scope="module")
def real():
    return make_pipeline(MODELS / "whisper-base", dtype="auto")  # the CPU default precision


def test_tuning_clips_and_the_phone_call_give_no_loop_in_bounded_time_and_english(real):
    clips = sorted(AMI.glob("trn*.wav"))
    if not clips:
        pytest.skip(f"the AMI tuning clips are not at {AMI}")
    audio = {path.stem: decode_audio(path.read_bytes()) for path in clips}
    audio["sample"] = phone_call()[0]
    seconds, texts = {}, {}
    for name, clip in audio.items():
        started = time.perf_counter()
        out = real.handle({"inputs": wav_bytes(clip)})  # 16-bit WAV, VAD on, language detected
        seconds[name], texts[name] = time.perf_counter() - started, out["text"]
        assert compression_ratio(out["text"]) <= 2.4, (name, out["text"])
        assert out["language"] == ("en" if out["text"] else out["language"]), (name, out["language"])
        assert all(chunk["text"] for chunk in out["chunks"])
    spoken = [seconds[name] for name in audio if texts[name]]
    assert len(spoken) >= 9  # trn01 has no speech the VAD finds
    assert max(spoken) <= 4 * statistics.median(spoken), seconds


def test_a_german_clip_is_detected_as_german(real, tmp_path):
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed")
    path = tmp_path / "de.wav"
    subprocess.run(["espeak-ng", "-v", "de", "-w", str(path), "Guten Morgen, wir treffen uns heute um zehn Uhr im "
                    "Besprechungsraum, um den neuen Projektplan zu besprechen."], check=True)
    out = real.handle({"inputs": path.read_bytes()})
    assert out["language"] == "de" and "Morgen" in out["text"], out
    english = real.handle({"inputs": path.read_bytes(), "parameters": {"language": "en"}})
    assert english["language"] == "en"  # asked for: reported as asked


def test_noise_without_vad_gives_no_text(real):
    """Whisper's own no-speech verdict, with VAD off: noise gives an empty transcript (it gave '1.5kg 1.5kg')."""
    import numpy as np

    noise = (0.01 * np.random.default_rng(0).standard_normal(16000 * 20)).astype(np.float32)
    out = real.handle({"inputs": wav_bytes(noise), "parameters": {"vad": False}})
    assert out["text"] == "" and out["chunks"] == []
