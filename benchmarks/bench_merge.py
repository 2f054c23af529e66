"""Time the speaker merge (`diarization_utils.assign_speakers`) on a long meeting: words against turns.

    .venv/bin/python -m benchmarks.bench_merge            # 200,000 words against 20,000 turns, and a tenth of it

Prints the seconds for each size and their ratio (near 10 for a near-linear sweep, near 100 for a pairwise one).
"""

from __future__ import annotations

import argparse
import time

from diarization_utils import assign_speakers


def meeting(turns: int, words: int) -> tuple[list, list]:
    """Turns of 3 s by four speakers in rotation, and words of 0.25 s every 0.3 s (16.7 hours at full size)."""
    return ([(i * 3.0, i * 3.0 + 3.0, f"S{i % 4}") for i in range(turns)],
            [(i * 0.3, i * 0.3 + 0.25) for i in range(words)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=200_000)
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)
    timings = {}
    for scale in (10, 1):
        turns, words = meeting(args.turns // scale, args.words // scale)
        best = min(_timed(turns, words) for _ in range(args.repeat))
        timings[scale] = best
        print(f"{len(words):>9,} words, {len(turns):>7,} turns: {best:.3f} s")
    print(f"ratio for 10x the input: {timings[1] / timings[10]:.1f}")


def _timed(turns: list, words: list) -> float:
    started = time.perf_counter()
    assign_speakers(turns, words)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
