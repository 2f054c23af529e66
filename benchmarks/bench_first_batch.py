"""What a batch size costs the first time it runs against the next times: the one-off costs of a fresh server.

    python -m benchmarks.bench_first_batch [--windows 1,1,3,3,2,2,4,4,8,8,16,16] [--out first_batch.json]

Each entry is one request of that many 30 s windows (the sample looped, VAD off, so all windows go through in one
batch). A new batch size that is slow once and fast after shows a per-shape one-off cost; the first entry also pays
for the first request of all. Uses the offline default ASR model (or ASR_MODEL); no assistant, no diarization.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from config import InferenceConfig, ModelSettings
from benchmarks.bench_assisted import synchronize
from benchmarks.bench_concurrency import clips


def main(argv: list[str] | None = None) -> dict:
    from speech_pipeline import SpeechPipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", default="1,1,3,3,2,2,4,4,8,8,16,16", help="windows per request, in order")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.windows.split(",")]
    pipeline = SpeechPipeline(ModelSettings(assistant_model="", diarization_model=""))
    config = InferenceConfig.parse({"language": "en", "vad": False})
    runs = []
    for windows in sizes:
        (clip,) = clips(1, windows * 30 - 1)  # the sample looped, a second short of the last window's end
        synchronize(pipeline.device)
        started = time.perf_counter()
        text = pipeline.transcribe(clip, config).text
        synchronize(pipeline.device)
        runs.append({"windows": windows, "seconds": round(time.perf_counter() - started, 3),
                     "words": len(text.split())})
        print(f"{windows:3d} windows: {runs[-1]['seconds']:7.3f} s, {runs[-1]['words']} words", flush=True)
    report = {"device": str(pipeline.device), "dtype": str(pipeline.dtype), "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
