"""benchmarks/bench_batched.py: the clips it builds, the engines it runs in their own processes, and its ratios."""

import functools
import json

import numpy as np
import pytest
from conftest import tone

from audio import decode_audio
from benchmarks import bench_batched
from benchmarks.accuracy import phone_call
from benchmarks.benchmark import wav_bytes


@pytest.fixture
def ami(tmp_path):
    """Ten one-second stand-ins for the AMI clips, each its own pitch so the joins can be told apart."""
    for index in range(10):
        (tmp_path / f"trn{index:02d}.wav").write_bytes(wav_bytes(tone(1.0, freq=200.0 + 50 * index)))
    return tmp_path


def test_clips_are_the_call_and_joins_of_the_ami_clips_through_16_bit(ami):
    clips, reference = bench_batched.build_clips(["call", "meeting", "mix", "trn04", "mix50"], ami)
    call = phone_call()[0]
    assert reference.split()[:2] and len(clips["call"]) == len(call)
    assert np.abs(clips["call"] - call).max() <= 1 / 32767 + 1e-6  # quantised once, like a 16-bit upload
    part = {name: decode_audio((ami / f"{name}.wav").read_bytes()) for name in ("trn02", "trn03", "trn04", "trn09")}
    same = functools.partial(np.allclose, atol=2 / 32767)  # a second trip through 16-bit moves a sample by a step
    assert same(clips["meeting"], np.concatenate([part["trn02"], part["trn03"]]))
    assert len(clips["mix"]) == 9 * 16000 + len(call) and same(clips["mix"][4 * 16000:5 * 16000], part["trn04"])
    assert same(clips["mix"][9 * 16000:], call) and same(clips["trn04"], part["trn04"])
    looped = len(clips["mix50"]) - len(clips["mix"])  # the mix again from its start, cut at 50 s
    assert len(clips["mix50"]) == 50 * 16000 and same(clips["mix50"][-looped:], clips["mix"][:looped])
    with pytest.raises(SystemExit, match="nope"):
        bench_batched.build_clips(["nope"], ami)


def test_peak_memory_resets_to_the_current_resident_set():
    held = np.ones(64 * 2**20 // 8)  # 64 MiB, then freed: the peak stays up until reset
    del held
    before = bench_batched.memory_mib()
    bench_batched.reset_peak()
    after = bench_batched.memory_mib()
    assert after["peak_mib"] < before["peak_mib"] - 32 and after["peak_mib"] >= after["rss_mib"] - 1


@pytest.mark.e2e
def test_ours_on_a_tiny_model_against_faster_whisper_batched_in_their_own_processes(tiny_models, ami, monkeypatch,
                                                                                     tmp_path):
    monkeypatch.setenv("ASR_MODEL", str(tiny_models["main"]))  # the spawned worker reads it
    out = tmp_path / "report.json"
    report = bench_batched.main(["--engines", "ours,fw-batch8", "--clips", "trn00,trn01", "--repeats", "2",
                                 "--threads", "1", "--ami", str(ami), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    for clip in ("trn00", "trn01"):
        row = report["clips"][clip]
        assert row["audio_seconds"] == 1.0
        for engine in ("ours", "fw-batch8"):
            low, high = row[engine]["seconds_range"]
            assert 0 < low <= row[engine]["seconds"] <= high and row[engine]["cpu_seconds"] > 0
            assert row[engine]["peak_rss_mib"] >= row[engine]["idle_rss_mib"] * 0.5 > 0
        ratio = report["comparison"][clip]["ratios"]["ours/fw-batch8"]
        assert ratio["time"] == round(row["ours"]["seconds"] / row["fw-batch8"]["seconds"], 3)
        assert ratio["cpu_time"] == round(row["ours"]["cpu_seconds"] / row["fw-batch8"]["cpu_seconds"], 3)
    assert "| trn00 (1 s) | ours/fw-batch8 |" in bench_batched.table(report)
