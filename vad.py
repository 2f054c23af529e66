"""Voice-activity segmentation: where the speech is, grouped into windows Whisper can take in one pass.

Whisper hallucinates on long silences (it repeats earlier text); feeding it only speech, in windows of
at most 30 s, is the guard faster-whisper's batched mode and whisperX use too.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from audio import SAMPLE_RATE
from errors import RequestError

Window = tuple[float, float]
FRAME = 512  # Silero's frame at 16 kHz: 32 ms
CONTEXT = 64  # samples of the previous frame Silero sees with each frame at 16 kHz
PAUSE_S = 0.15  # a cut whose last this many seconds hold no speech ends at a pause (regions are padded 0.2 s)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread in the calling thread (OpenMP's count is per thread), for models of many tiny ops.

    Once the ASR thread has its own OpenMP team, there are more OpenMP threads than cores and libgomp stops
    spinning between parallel regions: every tiny op then waits for a woken thread (Silero: 1 s -> 4 s a minute).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_vad_model() -> Any:
    """Silero VAD through ONNX Runtime (one thread): 0.65 s a minute of audio here against 1.2 s for its TorchScript
    twin. Importing silero_vad sets torch to one thread, which would halve Whisper's speed: `one_thread` restores it."""
    with one_thread():
        from silero_vad import load_silero_vad

        return load_silero_vad(onnx=True)


def load_sequence_vad() -> Any:
    """Silero VAD's sequence model (`silero_vad.SileroVADSequence`, ONNX, one thread): one ONNX call per block of
    frames instead of one per 32 ms frame, the same probabilities to the bit, about 3x faster."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # the model's unused-initializer notices: a log line each, no action
    with one_thread():
        from silero_vad import load_silero_vad

        return load_silero_vad(onnx=True, sequence=True)


class SpeechDetector:
    """Silero VAD (MIT, shipped inside the `silero-vad` wheel): speech regions in seconds."""

    def __init__(self) -> None:
        self._model = load_sequence_vad()  # its calls keep no state: threads may share it

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Silero's speech probability for each 32 ms frame of `audio` (frame k: samples 512k to 512k + 512, the
        last one padded with zeros), from one pass: what `regions` cuts at and word timing snaps to."""
        if not len(audio):
            return np.zeros(0, np.float32)
        return self._model.audio_forward(np.ascontiguousarray(audio, np.float32), SAMPLE_RATE)

    def regions(self, audio: np.ndarray, max_region_s: float,
                probabilities: np.ndarray | None = None) -> list[Window]:
        """Speech regions of `audio` in seconds; `probabilities` are its `probabilities(audio)` where the caller has
        them already (no second pass)."""
        from silero_vad.utils_vad import get_speech_timestamps_from_probs

        if probabilities is None:
            probabilities = self.probabilities(audio)
        found = get_speech_timestamps_from_probs(
            probabilities.tolist(), sampling_rate=SAMPLE_RATE, max_speech_duration_s=max_region_s,
            speech_pad_ms=200, min_silence_duration_ms=300, audio_length_samples=len(audio),
        )
        return [(r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE) for r in found]

    def stream(self) -> "StreamingVad":
        """Speech probabilities of a live stream, frame by frame, with a recurrent state of its own."""
        return StreamingVad(self._model)


class StreamingVad:
    """Silero's speech probability for each 32 ms frame of a stream fed in pieces of any length: the sequence
    model's ONNX session is shared with the detector (its runs are thread-safe); the recurrent state, the previous
    frame's context samples and the leftover samples are this stream's."""

    def __init__(self, model: Any):
        self._session = model.session
        self._hidden = np.zeros((1, 1, 128), np.float32)
        self._cell = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)  # each frame is fed with the previous one's last samples
        self._pending = np.zeros(0, np.float32)

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """One probability per whole frame completed by `audio` (samples short of a frame wait for the next call)."""
        samples = np.concatenate([self._pending, audio]) if len(self._pending) else audio
        whole = len(samples) // FRAME * FRAME
        self._pending = samples[whole:].astype(np.float32, copy=True)
        if not whole:
            return np.zeros(0, np.float32)
        frames = np.ascontiguousarray(samples[:whole], dtype=np.float32).reshape(-1, FRAME)
        contexts = np.concatenate([self._context[None], frames[:-1, -CONTEXT:]])
        self._context = frames[-1, -CONTEXT:].copy()
        values, self._hidden, self._cell = self._session.run(
            ["speech_probs", "hn", "cn"],
            {"input": np.concatenate([contexts, frames], axis=1), "h": self._hidden, "c": self._cell})
        return np.asarray(values, np.float32).reshape(-1)


def ends_at_pause(probabilities: np.ndarray | None, end: float) -> bool:
    """Whether Silero's `probabilities` (per frame of the audio) hear no speech in the last PAUSE_S before `end`
    seconds: audio cut there ends at a pause, not mid-speech. False without probabilities."""
    if probabilities is None:
        return False
    frames = probabilities[max(0, int((end - PAUSE_S) * SAMPLE_RATE / FRAME)):int(end * SAMPLE_RATE / FRAME)]
    return bool(len(frames)) and float(frames.mean()) < 0.5


def max_windows(max_audio_seconds: float) -> int:
    """Windows one request may have: twice what the longest allowed audio makes at Whisper's 30 s, so no
    request costs more encoder passes than the operator's MAX_AUDIO_SECONDS already allows (at least 64)."""
    return max(64, 2 * math.ceil(max_audio_seconds / 30))


def group_windows(regions: list[Window], max_window_s: float, duration: float,
                  max_windows: int | None = None) -> list[Window]:
    """Merge consecutive speech regions into windows no longer than `max_window_s`, splitting longer ones.

    Each split is counted before it is made and the loops run by index: a tiny `max_window_s` is refused (422)
    with more than `max_windows` windows instead of adding windows that never advance."""
    windows: list[list[float]] = []
    for start, end in regions:
        start, end = max(0.0, start, windows[-1][1] if windows else 0.0), min(duration, end)  # no audio twice
        if windows and end - windows[-1][0] <= max_window_s:
            windows[-1][1] = max(windows[-1][1], end)
            continue
        ratio = (end - start) / max_window_s if end > start else 0.0
        if max_windows is not None and len(windows) + ratio - 1e-9 > max_windows:  # inf too
            raise RequestError(f"chunk_length_s {max_window_s:g} cuts this audio into more than {max_windows} "
                               "windows: use longer windows", 422, "chunk_length_s")
        pieces = max(1, math.ceil(ratio - 1e-9)) if end > start else 0
        for i in range(pieces - 1):  # a region the VAD could not cut at a pause
            windows.append([start + i * max_window_s, start + (i + 1) * max_window_s])
        if pieces:
            windows.append([start + (pieces - 1) * max_window_s, end])
    rounded = [(round(s, 3), round(e, 3)) for s, e in windows]
    return [(s, e) for s, e in rounded if e > s]  # a split's leftover under a millisecond is no window
