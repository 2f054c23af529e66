import numpy as np
import pytest
from conftest import SAMPLE
from hypothesis import given
from hypothesis import strategies as st

from audio import decode_audio
from vad import SpeechDetector, group_windows


def test_speech_is_found_and_silence_is_not():
    detector = SpeechDetector()
    speech = decode_audio(SAMPLE.read_bytes())
    padded = np.concatenate([np.zeros(16000 * 3, np.float32), speech])
    regions = detector.regions(padded, 30)
    # the sample's first word starts within 0.5 s and it ends at 10.5 s; Silero pads speech by 0.2 s
    assert regions and 2.5 < regions[0][0] < 3.5 and 12.5 < regions[-1][1] <= len(padded) / 16000
    assert detector.regions(np.zeros(16000 * 5, np.float32), 30) == []


def test_the_sequence_model_scores_every_frame_as_silero_does_whole_and_streamed():
    """One ONNX call per block of frames (whole files) and per piece of a stream (any length, a frame split between
    pieces) give the probabilities of Silero's own frame-by-frame model, to float rounding."""
    import torch

    from vad import load_vad_model

    speech = decode_audio(SAMPLE.read_bytes())
    audio = np.concatenate([np.zeros(7000, np.float32), speech, speech[:20000]])  # 17 s: more than one block
    stock = load_vad_model()
    expected = stock.audio_forward(torch.from_numpy(np.pad(audio, (0, -len(audio) % 512))), 16000)[0].numpy()
    detector = SpeechDetector()
    whole = detector.probabilities(audio)
    assert whole.shape == expected.shape and np.abs(whole - expected).max() < 1e-5
    assert whole.max() > 0.9 and whole.min() < 0.1
    stream, pieces, at = detector.stream(), [], 0
    for size in np.random.default_rng(0).integers(1, 6000, size=400):
        pieces.append(stream.probabilities(audio[at:at + size]))
        at += size
        if at >= len(audio):
            break
    streamed = np.concatenate(pieces)
    assert len(streamed) == len(audio) // 512 and np.abs(streamed - expected[:len(streamed)]).max() < 1e-5


def test_a_leftover_under_a_millisecond_is_dropped():
    assert group_windows([(0.0, 1.00001)], 1.0, 600.0) == [(0.0, 1.0)]


regions_strategy = st.lists(st.tuples(st.floats(0, 500), st.floats(0.05, 70)), max_size=40).map(
    lambda pairs: sorted((s, s + d) for s, d in pairs))


@given(regions_strategy, st.floats(1, 30))
def test_windows_cover_speech_without_overlap_and_respect_the_limit(regions, limit):
    duration = 600.0
    windows = group_windows(regions, limit, duration)
    for start, end in windows:
        assert 0 <= start < end <= duration and end - start <= limit + 1e-3
    for (_, end), (start, _) in zip(windows, windows[1:]):
        assert end <= start + 1e-3
    for start, end in regions:  # every bit of speech lands in some window: the whole region is covered
        end = min(end, duration)
        if start < end:
            covered = sum(max(0.0, min(end, we) - max(start, ws)) for ws, we in windows)
            assert covered >= end - start - 1e-3 * (1 + len(windows)), (start, end, windows)


def test_one_thread_runs_on_one_thread_and_restores_the_count_even_on_error():
    import torch

    from vad import one_thread

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with one_thread():
            assert torch.get_num_threads() == 1
            raise RuntimeError("model failed")
    assert torch.get_num_threads() == before
