"""Word boundaries moved onto the speech: Whisper's cross-attention alignment (DTW) only approximates them.

DTW makes every word start where the previous one ended, so a word swallows the pause before it and its end
comes early. Here each boundary between two words is moved into the pause of the audio that lies nearest to
where Whisper put it (one pause per boundary, in order), so the word before ends at the pause's start and the
next begins at its end; a boundary with no pause near it (words run together) stays where Whisper put it. The
window's first start and last end move to the speech onset and offset around them. Pauses come from the signal
energy (`energy`: 10 ms frames, a threshold relative to the window's own floor and peak), from Silero VAD's speech
probability (`vad`: 32 ms frames, which smooth over short pauses), or from both (`energy+vad`, the default:
energy's precise edges, and no speech where the VAD hears none, so noise is no word). The VAD's probabilities are
those of the pipeline's own pass, which cut the audio into windows: no second pass. Figures: docs/word_timestamps.md.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from audio import SAMPLE_RATE
from transcript import Word

METHODS = ("whisper", "energy", "vad", "energy+vad")
DEFAULT_METHOD = "energy+vad"  # the best measured on generated and real speech (docs/word_timestamps.md)
VAD_FRAME_S = 512 / SAMPLE_RATE  # Silero's frame at 16 kHz
ENERGY_FRAME_S = 0.01
MIN_PAUSE_S = 0.06  # shorter silences are stop closures inside words, not pauses between them
MAX_SHIFT_S = 0.4  # a pause further than this from Whisper's boundary belongs to another boundary
MISS_COST_S = 0.5  # a boundary left without a pause costs more than any pause in reach: use them all
EDGE_S = 0.3  # the window's first start and last end move at most this far


def resolve(method: str) -> str:
    """The method a request's `word_timing` names; `auto` is the measured best."""
    return DEFAULT_METHOD if method == "auto" else method


def uses_vad(method: str) -> bool:
    """Whether `method` (or `auto`) needs the VAD's speech probabilities."""
    return resolve(method) in ("vad", "energy+vad")


def refine_words(words: list[Word], audio: np.ndarray, window: tuple[float, float], method: str,
                 probabilities: np.ndarray | None = None) -> list[Word]:
    """One window's words (seconds of `audio`, 16 kHz mono) with their boundaries on the speech; `method` as in
    `METHODS` (or `auto`). `probabilities`: Silero's per 32 ms frame of the whole `audio`
    (`SpeechDetector.probabilities`), which the `vad` methods need. Words come back in order, never overlapping."""
    method = resolve(method)
    if method == "whisper" or not words:
        return words
    if uses_vad(method) and probabilities is None:
        raise ValueError(f"word timing {method!r} needs the VAD's speech probabilities")
    start, end = window
    piece = audio[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]
    if len(piece) < 512:  # under one VAD frame: nothing to measure
        return words
    if method == "vad":  # the frames that start inside the window, the last one running past it as before
        first, last = (int(np.ceil(t * SAMPLE_RATE / 512 - 1e-6)) for t in window)
        return _within(snap(words, probabilities[first:last] >= 0.5, VAD_FRAME_S, first * VAD_FRAME_S), end)
    speech = energy_speech(piece)
    if method == "energy+vad":  # energy's edges, and no speech where the VAD hears none
        frames = ((start + np.arange(len(speech)) * ENERGY_FRAME_S) / VAD_FRAME_S).astype(int)
        heard = lambda k: probabilities[np.clip(k, 0, len(probabilities) - 1)] >= 0.5  # noqa: E731
        speech &= heard(frames - 1) | heard(frames) | heard(frames + 1)  # Silero lags a frame: widened by one
    return snap(words, speech, ENERGY_FRAME_S, start)


def energy_speech(audio: np.ndarray, frame_s: float = ENERGY_FRAME_S) -> np.ndarray:
    """Speech (True) per frame by energy: above the floor by a third of the floor-to-peak range (in dB), and no
    further than 45 dB under the peak (digital silence has no floor worth measuring)."""
    hop = int(frame_s * SAMPLE_RATE)
    count = len(audio) // hop
    if count == 0:
        return np.zeros(0, bool)
    frames = audio[:count * hop].reshape(count, hop)
    level = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    floor, peak = np.percentile(level, 5), np.percentile(level, 99)
    return level > max(floor + (peak - floor) / 3, peak - 45)


def pauses(speech: np.ndarray, frame_s: float, min_pause_s: float = MIN_PAUSE_S) -> list[tuple[float, float]]:
    """Non-speech runs of at least `min_pause_s` between speech frames, as (start, end) seconds."""
    edges = np.flatnonzero(np.diff(np.concatenate([[1], speech.astype(np.int8), [1]])))
    runs = edges.reshape(-1, 2)  # [first silent frame, first speech frame after it)
    return [(float(a * frame_s), float(b * frame_s)) for a, b in runs
            if 0 < a and b < len(speech) and (b - a) * frame_s >= min_pause_s]


def snap(words: list[Word], speech: np.ndarray, frame_s: float, offset: float = 0.0) -> list[Word]:
    """Move boundaries into the pauses of `speech` (a mask per frame of `frame_s`, starting at `offset` seconds)."""
    if not speech.any():  # no pause to move into: Whisper's times, made ordered
        return _ordered([replace(word) for word in words])
    gaps = [(a + offset, b + offset) for a, b in pauses(speech, frame_s)]
    chosen = _assign(words, gaps)
    out = [replace(word) for word in words]
    for j, gap in enumerate(chosen):
        if gap is not None:
            out[j].end, out[j + 1].start = gap
    onset, offset_end = _speech_edges(speech, frame_s, offset)
    first, last = out[0], out[-1]
    first.start = _edge(first.start, onset(first.start), first.end)
    last.end = _edge(last.end, offset_end(last.end), None, last.start)
    return _ordered(out)


def _assign(words: list[Word], gaps: list[tuple[float, float]]) -> list[tuple[float, float] | None]:
    """For each boundary between consecutive words, a pause (each used once, in time order) or None, at the least
    total distance from Whisper's boundaries (dynamic programming over boundaries x pauses)."""
    boundaries = [(a.end + b.start) / 2 for a, b in zip(words, words[1:])]
    if not boundaries or not gaps:
        return [None] * len(boundaries)

    def distance(t: float, gap: tuple[float, float]) -> float:
        return max(gap[0] - t, t - gap[1], 0.0)

    def fits(j: int, t: float, gap: tuple[float, float]) -> bool:
        # near the boundary, and not over a whole word: that silence is the mask's error, not the words'
        return distance(t, gap) <= MAX_SHIFT_S and gap[0] > words[j].start and gap[1] < words[j + 1].end + MAX_SHIFT_S

    n, k = len(boundaries), len(gaps)
    # cost[j, g]: least cost of the first j boundaries using only pauses with index < g
    cost, choice = np.zeros((n + 1, k + 1)), np.full((n + 1, k + 1), -1, dtype=int)
    for j, t in enumerate(boundaries):
        best, pick = np.inf, -1  # the best pause h < g for boundary j, carried along g
        for g in range(k + 1):
            cost[j + 1, g], choice[j + 1, g] = cost[j, g] + MISS_COST_S, -1
            if best < cost[j + 1, g]:
                cost[j + 1, g], choice[j + 1, g] = best, pick
            if g < k and fits(j, t, gaps[g]) and cost[j, g] + distance(t, gaps[g]) < best:
                best, pick = cost[j, g] + distance(t, gaps[g]), g
    chosen: list[tuple[float, float] | None] = [None] * n
    g = k
    for j in range(n, 0, -1):
        pick = choice[j, g]
        if pick >= 0:
            chosen[j - 1], g = gaps[pick], pick
    return chosen


def _speech_edges(speech: np.ndarray, frame_s: float,
                  offset: float) -> tuple[Callable[[float], float | None], Callable[[float], float | None]]:
    """Functions giving the speech onset nearest before/after a time, and the offset nearest to it."""
    padded = np.concatenate([[0], speech.astype(np.int8), [0]])
    edges = np.diff(padded)
    onsets = np.flatnonzero(edges == 1) * frame_s + offset
    offsets = np.flatnonzero(edges == -1) * frame_s + offset

    def nearest(times: np.ndarray) -> Callable[[float], float | None]:
        def find(t: float) -> float | None:
            if not len(times):
                return None
            best = times[np.argmin(np.abs(times - t))]
            return float(best) if abs(best - t) <= EDGE_S else None
        return find

    return nearest(onsets), nearest(offsets)


def _edge(current: float, found: float | None, before: float | None = None, after: float | None = None) -> float:
    if found is None or (before is not None and found >= before) or (after is not None and found <= after):
        return current
    return found


def _ordered(words: list[Word]) -> list[Word]:
    """Times rounded to the millisecond, every word inside [previous end, next start] and never reversed."""
    previous = 0.0
    for index, word in enumerate(words):
        word.start = round(max(word.start, previous), 3)
        limit = words[index + 1].start if index + 1 < len(words) else None
        word.end = round(max(word.start, word.end if limit is None else min(word.end, max(limit, word.start))), 3)
        previous = word.end
    return words


def _within(words: list[Word], end: float) -> list[Word]:
    """Words no later than `end`: a VAD frame that runs past the window holds the next window's audio."""
    for word in words:
        word.start, word.end = min(word.start, end), min(word.end, end)
    return words


def dynamic_time_warping(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """transformers' `_dynamic_time_warping` (token x frame costs to the alignment path: text and time indices),
    the same result, computed an anti-diagonal at a time: its cells depend only on the two diagonals before, so
    each is one vector operation instead of a Python loop over every cell (90 tokens x 1500 frames: 0.20 s -> 0.05 s)."""
    rows, cols = matrix.shape
    diagonals = rows + cols + 1
    # cell (i, j) of transformers' cost and trace matrices lies at [i + j, i]: a diagonal is one slice
    cost = np.full((diagonals, rows + 1), np.inf, dtype=np.float32)
    trace = np.full((diagonals, rows + 1), -1, dtype=np.int8)
    values = np.zeros((diagonals, rows + 1))
    i, j = np.meshgrid(np.arange(1, rows + 1), np.arange(1, cols + 1), indexing="ij")
    values[i + j, i] = matrix
    cost[0, 0] = 0
    for k in range(2, diagonals):
        lo, hi = max(1, k - cols), min(rows, k - 1)
        c0, c1, c2 = cost[k - 2, lo - 1:hi], cost[k - 1, lo - 1:hi], cost[k - 1, lo:hi + 1]
        # transformers' tie rule: the diagonal step only when strictly least, then the vertical one, else horizontal
        step = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        cost[k, lo:hi + 1] = values[k, lo:hi + 1] + np.choose(step, (c0, c1, c2))
        trace[k, lo:hi + 1] = step
    moves, text, time = trace.tolist(), [], []
    i, j = rows, cols
    while i > 0 or j > 0:
        text.append(i - 1)
        time.append(j - 1)
        move = 2 if i == 0 else 1 if j == 0 else moves[i + j][i]
        i, j = i - (move < 2), j - (move != 1)
    return np.array(text)[::-1], np.array(time)[::-1]


def _use_vectorized_dtw() -> None:
    """Word timestamps in transformers run `dynamic_time_warping` (the module's own runs a Python loop per cell)."""
    from transformers.models.whisper import generation_whisper

    generation_whisper._dynamic_time_warping = dynamic_time_warping


_use_vectorized_dtw()
