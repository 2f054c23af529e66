"""Dynamic batching, measured: N concurrent short requests against the same N one after another, in-process.

    python -m benchmarks.bench_concurrency [--requests 8] [--seconds 8] [--arrival-wait 0,0.3 --repeats 3]
        [--out benchmarks/results/bench_concurrency.json]

Prints both wall times, their ratio (sequential / concurrent: the aggregate speed-up) and whether every
transcript is identical (with both texts of each clip that is not). Uses the offline default ASR model (or
ASR_MODEL); diarization is off. With `--arrival-wait`, the concurrent run is repeated for each of the batcher's
arrival waits (seconds), interleaved.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


from audio import SAMPLE_RATE, decode_audio
from config import ModelSettings
from speech_pipeline import SpeechPipeline

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "sample.flac"


def clips(count: int, seconds: float) -> list[np.ndarray]:
    """`count` different clips of `seconds` each, cut from the sample at different offsets (looped)."""
    speech = decode_audio(SAMPLE.read_bytes())
    looped = np.tile(speech, int(np.ceil((seconds + count) * SAMPLE_RATE / len(speech))) + 1)
    size = int(seconds * SAMPLE_RATE)
    return [looped[i * SAMPLE_RATE // 2:i * SAMPLE_RATE // 2 + size] for i in range(count)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--arrival-wait", help="comma-separated arrival waits (s) to compare; default: the setting")
    parser.add_argument("--repeats", type=int, default=1, help="concurrent runs per arrival wait")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from config import InferenceConfig

    waits = [float(x) for x in args.arrival_wait.split(",")] if args.arrival_wait else [None]
    # the arrival wait is a setting (BATCH_ARRIVAL_WAIT_MS): one pipeline per value compared
    pipelines = {wait: SpeechPipeline(ModelSettings(
        assistant_model="", diarization_model="",
        **({} if wait is None else {"batch_arrival_wait_ms": wait * 1000}))) for wait in waits}
    pipeline = pipelines[waits[0]]

    config = InferenceConfig.parse({"language": "en", "diarization": False})
    audio = clips(args.requests, args.seconds)
    pipeline.transcribe(audio[0], config)  # warm-up
    started = time.perf_counter()
    sequential = [pipeline.transcribe(clip, config).text for clip in audio]
    sequential_s = time.perf_counter() - started
    runs: dict[str, list[float]] = {str(wait): [] for wait in waits}
    differing: dict[int, dict[str, str]] = {}  # clip -> both texts, so a changed transcript can be read
    for _ in range(args.repeats):
        for wait in waits:
            started = time.perf_counter()
            with ThreadPoolExecutor(args.requests) as pool:
                concurrent = [t.text for t in pool.map(lambda clip: pipelines[wait].transcribe(clip, config), audio)]
            runs[str(wait)].append(round(time.perf_counter() - started, 2))
            differing.update({i: {"sequential": ours, "concurrent": theirs}
                              for i, (ours, theirs) in enumerate(zip(sequential, concurrent)) if ours != theirs})
    concurrent_s = min(runs[str(waits[-1])])
    report = {"requests": args.requests, "seconds_each": args.seconds, "sequential_s": round(sequential_s, 2),
              "concurrent_s": concurrent_s, "speedup": round(sequential_s / concurrent_s, 2),
              "identical_transcripts": not differing, "differing": differing}
    if args.arrival_wait:
        report["concurrent_s_by_arrival_wait"] = runs
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
