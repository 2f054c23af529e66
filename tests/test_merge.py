"""Merging speaker turns with ASR segments and words: hand-made cases and properties."""

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diarization_utils import assign_speakers, merge_speakers
from speech_pipeline import Segment, Word


def seg(start, end, text, words=None):
    return Segment(start, end, text, words or [])


def test_segments_take_the_speaker_they_overlap_most():
    turns = [(0.0, 4.0, "A"), (4.0, 9.0, "B")]
    segments = [seg(0.0, 3.0, " one"), seg(3.0, 6.0, " two"), seg(6.5, 8.0, " three")]
    merged = merge_speakers(turns, segments)
    assert [(s.speaker, s.text, s.start, s.end) for s in merged] == [("A", " one", 0.0, 3.0),
                                                                    ("B", " two three", 3.0, 8.0)]


def test_chunks_after_the_last_turn_and_in_gaps_get_the_nearest_speaker():
    turns = [(1.0, 2.0, "A"), (5.0, 6.0, "B")]
    assert assign_speakers(turns, [(0.0, 0.5), (2.2, 2.4), (4.5, 4.8), (9.0, 10.0)]) == ["A", "A", "B", "B"]


def test_no_turns_gives_null_speakers_and_no_crash():
    merged = merge_speakers([], [seg(0.0, 1.0, " hi"), seg(1.0, 2.0, " there")])
    assert [(s.speaker, s.text) for s in merged] == [(None, " hi there")]
    assert merge_speakers([(0.0, 1.0, "A")], []) == []


def test_words_split_a_segment_where_the_speaker_changes():
    words = [Word(0.0, 0.5, " hello"), Word(0.5, 1.0, " there."), Word(1.2, 1.6, " hi"), Word(1.6, 2.0, " back.")]
    segments = [seg(0.0, 2.0, "".join(w.text for w in words), words)]
    merged = merge_speakers([(0.0, 1.1, "A"), (1.1, 2.0, "B")], segments, by_word=True)
    assert [(s.speaker, s.text) for s in merged] == [("A", " hello there."), ("B", " hi back.")]
    assert [w.speaker for w in words] == ["A", "A", "B", "B"]


times = st.floats(0, 100, allow_nan=False)
turns_strategy = st.lists(st.tuples(times, st.floats(0.01, 20), st.sampled_from(["S0", "S1", "S2"])), max_size=30)
spans_strategy = st.lists(st.tuples(times, st.floats(0, 5), st.text(min_size=1, max_size=5)), max_size=40)


@given(turns_strategy, spans_strategy, st.booleans())
def test_merge_properties(raw_turns, raw_spans, by_word):
    turns = [(s, s + d, k) for s, d, k in raw_turns]
    spans = sorted((s, s + d, t) for s, d, t in raw_spans)
    if by_word:
        segments = [seg(s, e, t, [Word(s, e, t)]) for s, e, t in spans]
    else:
        segments = [seg(s, e, t) for s, e, t in spans]
    merged = merge_speakers(turns, segments, by_word=by_word)
    assert "".join(m.text for m in merged) == "".join(t for _, _, t in spans)  # order and text preserved
    labels = {k for _, _, k in turns}
    for m in merged:
        assert (m.speaker in labels) if turns else m.speaker is None  # exactly one label, or documented null
        assert m.start <= m.end
    starts = [m.start for m in merged]
    assert starts == sorted(starts)
    for a, b in zip(merged, merged[1:]):
        assert a.speaker != b.speaker  # consecutive pieces of one speaker are joined


def oracle_accepts(turns, span, label) -> bool:
    """Brute force over every turn: `label` is the speaker who overlaps `span` most (any of them on an exact tie),
    or, where no turn overlaps it, the speaker of the nearest turn."""
    start, end = span
    overlap, gap = {}, {}
    for t_start, t_end, speaker in turns:
        overlap[speaker] = overlap.get(speaker, 0.0) + max(0.0, min(end, t_end) - max(start, t_start))
        gap[speaker] = min(gap.get(speaker, math.inf), max(0.0, t_start - end, start - t_end))
    if not turns:
        return label is None
    if max(overlap.values()) > 0:
        return label in overlap and overlap[label] >= max(overlap.values()) - 1e-9
    return label in gap and gap[label] <= min(gap.values()) + 1e-9


@given(turns_strategy, st.lists(st.tuples(times, st.floats(0, 5)), min_size=1, max_size=40))
def test_assignment_equals_a_brute_force_max_overlap_oracle(raw_turns, raw_spans):
    turns = [(s, s + d, k) for s, d, k in raw_turns]
    spans = [(s, s + d) for s, d in raw_spans]
    labels = assign_speakers(turns, spans)
    assert len(labels) == len(spans)
    for span, label in zip(spans, labels):
        assert oracle_accepts(turns, span, label), (span, label, turns)


@pytest.mark.parametrize("seed", range(20))
def test_assignment_equals_the_oracle_on_random_meetings(seed):
    """Overlapping turns of 3 speakers and spans of every length: one label for everything, or the first turn
    that overlaps instead of the one that overlaps most, passes the merge properties above but not this."""
    rng = random.Random(seed)
    turns = sorted((t, t + rng.uniform(0.2, 6), f"S{rng.randrange(3)}") for t in (rng.uniform(0, 60) for _ in range(25)))
    spans = [(t, t + rng.choice([0.0, rng.uniform(0, 0.5), rng.uniform(0, 5)])) for t in
             (rng.uniform(-5, 70) for _ in range(200))]
    labels = assign_speakers(turns, spans)
    wrong = [(span, label) for span, label in zip(spans, labels) if not oracle_accepts(turns, span, label)]
    assert not wrong, wrong[:5]


class CountedTurn(tuple):
    """A turn that counts how often the sweep reads it (unpacking a tuple subclass goes through __iter__)."""

    reads = 0

    def __iter__(self):
        CountedTurn.reads += 1
        return super().__iter__()

    def __getitem__(self, index):
        CountedTurn.reads += 1
        return super().__getitem__(index)


def test_assignment_stays_near_linear_on_a_long_meeting():
    """Counted, not timed: the turns read per word stay constant as the meeting grows (a pairwise merge reads every
    turn for every word: 20,000 a word here)."""
    reads = {}
    for scale in (10, 1):
        turns = [CountedTurn((i * 3.0, i * 3.0 + 3.0, f"S{i % 4}")) for i in range(20000 // scale)]  # 16.7 h at 1
        words = [(i * 0.3, i * 0.3 + 0.25) for i in range(200000 // scale)]
        CountedTurn.reads = 0
        labels = assign_speakers(turns, words)
        reads[scale] = CountedTurn.reads / len(words)  # measured: 3.4 at both sizes
        assert labels[0] == "S0" and labels[10] == "S1" and labels[-1] == turns[-1][2]
        assert reads[scale] <= 10, reads  # before the full size: a quadratic sweep would take hours there
    assert reads[1] <= 1.1 * reads[10], reads


def test_asr_segments_get_their_speaker_too():
    words = [Word(0.0, 0.5, " a"), Word(0.5, 2.0, " b."), Word(2.0, 2.2, " c")]
    segments = [seg(0.0, 2.2, " a b. c", words)]
    merge_speakers([(0.0, 0.4, "A"), (0.4, 3.0, "B")], segments, by_word=True)
    assert segments[0].speaker == "B"  # said most of it
    plain = [seg(0.0, 1.0, " x"), seg(5.0, 6.0, " y")]
    merge_speakers([(0.0, 1.0, "A"), (5.0, 6.0, "B")], plain)
    assert [s.speaker for s in plain] == ["A", "B"]
