"""How well reference clips name speakers: cosine similarities of the diarizer's speaker embeddings on real meetings.

    python -m benchmarks.bench_known_speakers [--reference-seconds 6]

On the AMI clips of /work/shared/data/ami-debug-train (reference turns from its RTTM, overlap removed), each
speaker's reference is its first seconds of solo speech, taken from another clip of the same speaker when there is
one; the rest of its solo speech in each clip is the "diarized" speaker. Prints the similarity of same-speaker and
different-speaker pairs, and how many speakers known_speakers.name_speakers names right, wrong or not at all at
each threshold (oracle turns: diarization errors excluded), with the clip's own speakers' references among up to
four, and how many pairs fall on the wrong side of it.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data/ami-debug-train")


def solo_speech(rttm: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """clip -> speaker -> turns with the overlapped parts cut out."""
    turns: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for line in rttm.read_text().splitlines():
        fields = line.split()
        turns[fields[1]].append((float(fields[3]), float(fields[3]) + float(fields[4]), fields[7]))
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for clip, items in turns.items():
        points = sorted({t for s, e, _ in items for t in (s, e)})
        solo: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for a, b in zip(points, points[1:]):
            talking = {spk for s, e, spk in items if s <= a and e >= b}
            if len(talking) == 1:
                solo[talking.pop()].append((a, b))
        out[clip] = dict(solo)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-seconds", type=float, default=6.0)
    args = parser.parse_args()
    import torch

    import known_speakers
    from audio import SAMPLE_RATE, decode_audio
    from diarization_utils import load_diarizer

    diarizer = load_diarizer("models/diarization", None, torch.device("cpu"))
    solo = solo_speech(DATA / "debug.train.rttm")
    audio = {clip: decode_audio((DATA / f"{clip}.wav").read_bytes()) for clip in solo}

    def cut(clip: str, spans: list[tuple[float, float]], skip: float = 0.0, take: float = 1e9) -> np.ndarray:
        """The solo speech of `spans` after its first `skip` seconds, at most `take` seconds of it."""
        joined = np.concatenate([audio[clip][int(s * SAMPLE_RATE):int(e * SAMPLE_RATE)] for s, e in spans])
        return joined[int(skip * SAMPLE_RATE):][:int(take * SAMPLE_RATE)]

    # one reference per speaker: the start of its solo speech in the first clip where it has enough
    reference_of: dict[str, tuple[str, known_speakers.Reference]] = {}
    for clip, speakers in solo.items():
        for speaker, spans in speakers.items():
            speech = cut(clip, spans, take=args.reference_seconds)
            if speaker not in reference_of and len(speech) >= args.reference_seconds * SAMPLE_RATE:
                reference_of[speaker] = (clip, known_speakers.Reference(speaker, speech))
    names = sorted(reference_of)
    refs = np.stack([known_speakers.embed(diarizer, reference_of[n][1].audio) for n in names])
    same, different, outcomes = [], [], defaultdict(lambda: [0, 0, 0])
    from scipy.optimize import linear_sum_assignment

    for clip, speakers in solo.items():
        tested, voices = [], []
        for speaker, spans in speakers.items():
            skip = args.reference_seconds if reference_of.get(speaker, ("",))[0] == clip else 0.0
            speech = cut(clip, spans, skip=skip)
            if len(speech) >= 2 * SAMPLE_RATE and speaker in reference_of:
                tested.append(speaker)
                voices.append(known_speakers.embed(diarizer, speech))
        if not tested:
            continue
        sim = np.stack(voices) @ refs.T
        for i, speaker in enumerate(tested):
            for j, name in enumerate(names):
                (same if speaker == name else different).append(sim[i, j])
        # the clip's speakers' references plus others up to OpenAI's 4, as distractors
        chosen = [names.index(s) for s in tested] + [j for j in range(len(names)) if names[j] not in tested]
        chosen = chosen[:max(4, len(tested))]
        rows, cols = linear_sum_assignment(-sim[:, chosen])
        for threshold in (0.5, 0.6, 0.65, 0.7, 0.75, 0.8):
            for r, c in zip(rows, cols):
                ok = sim[r, chosen[c]] >= threshold
                outcomes[threshold][0 if ok and tested[r] == names[chosen[c]] else 1 if ok else 2] += 1
    print(f"same speaker:      n={len(same)}  min {min(same):.3f}  median {np.median(same):.3f}  max {max(same):.3f}")
    print(f"different speaker: n={len(different)}  min {min(different):.3f}  median {np.median(different):.3f}  "
          f"max {max(different):.3f}")
    for threshold, (right, wrong, unnamed) in sorted(outcomes.items()):
        print(f"threshold {threshold:.2f}: named right {right}, wrong {wrong}, left anonymous {unnamed}; "
              f"same pairs below {sum(x < threshold for x in same)}/{len(same)}, different pairs at or above "
              f"(a wrong name when the reference's owner is absent) {sum(x >= threshold for x in different)}/"
              f"{len(different)}")


if __name__ == "__main__":
    main()
