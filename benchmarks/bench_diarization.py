"""Cost of diarization on a long two-speaker recording: ASR alone, diarization alone, the whole pipeline.

    python -m benchmarks.bench_diarization --minutes 10 --out benchmarks/results/bench_diarization.json
    python -m benchmarks.bench_diarization --minutes 10 --against OTHER_PIPELINE_DIR --rounds 2

The recording is samples/two_speakers.ogg (two espeak voices taking turns, 24 s) repeated with 0.5 s pauses to
--minutes; its reference turns repeat with it. Models come from ASR_MODEL and DIARIZATION_MODEL as in the
endpoint (the offline defaults unless set). Prints the real-time factors (time / audio seconds), the
diarization share of the pipeline's time, how many speakers were found and the share of speech time labelled
with the right speaker (each found label mapped to the reference speaker it overlaps most). `--against DIR`
times only diarization, this pipeline and the one in DIR alternately in one process, and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


from audio import SAMPLE_RATE, decode_audio
from config import PROJECT_DIR, InferenceConfig, ModelSettings

SAMPLE = PROJECT_DIR / "samples" / "two_speakers.ogg"
GAP_SECONDS = 0.5


def long_recording(minutes: float) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The two-speaker sample repeated to `minutes`, and its reference turns shifted along."""
    audio = decode_audio(SAMPLE.read_bytes())
    turns = json.loads(SAMPLE.with_suffix(".json").read_text())["turns"]
    piece = np.concatenate([audio, np.zeros(int(GAP_SECONDS * SAMPLE_RATE), np.float32)])
    copies = max(1, int(np.ceil(minutes * 60 * SAMPLE_RATE / len(piece))))
    period = len(piece) / SAMPLE_RATE
    reference = [{**t, "start": t["start"] + k * period, "end": t["end"] + k * period}
                 for k in range(copies) for t in turns]
    return np.tile(piece, copies), reference


def speaker_time_accuracy(turns: list[tuple[float, float, str]], reference: list[dict[str, Any]],
                          duration: float, step: float = 0.01) -> float:
    """Share of reference speech time labelled with the reference speaker, each label mapped to its majority."""
    grid = np.arange(0, duration, step)
    ref = np.full(len(grid), "", dtype=object)
    for turn in reference:
        ref[(grid >= turn["start"]) & (grid < turn["end"])] = turn["speaker"]
    hyp = np.full(len(grid), "", dtype=object)
    for start, end, speaker in turns:
        hyp[(grid >= start) & (grid < end)] = speaker
    speech = ref != ""
    mapping = {}
    for label in set(hyp[speech]) - {""}:
        values, counts = np.unique(ref[speech & (hyp == label)], return_counts=True)
        mapping[label] = values[np.argmax(counts)]
    mapped = np.array([mapping.get(h, "") for h in hyp], dtype=object)
    return float(np.mean(mapped[speech] == ref[speech])) if speech.any() else 1.0


def run(minutes: float) -> dict[str, Any]:
    from diarization_utils import diarize
    from speech_pipeline import SpeechPipeline

    audio, reference = long_recording(minutes)
    seconds = len(audio) / SAMPLE_RATE
    started = time.perf_counter()
    pipeline = SpeechPipeline(ModelSettings(assistant_model=""))
    if pipeline.diarizer is None:
        raise SystemExit("no diarization model: run `bash setup.sh` or set DIARIZATION_MODEL")
    load_seconds = time.perf_counter() - started
    with_speakers, asr_only = InferenceConfig(), InferenceConfig(diarization=False)
    pipeline.transcribe(audio[:SAMPLE_RATE * 24], with_speakers)  # one-off costs, paid once
    timings: dict[str, float] = {}
    for label, call in (("asr", lambda: pipeline.transcribe(audio, asr_only)),
                        ("diarization", lambda: diarize(pipeline.diarizer, audio, with_speakers)),
                        ("pipeline", lambda: pipeline.transcribe(audio, with_speakers))):
        started = time.perf_counter()
        result = call()
        timings[label] = time.perf_counter() - started
        print(f"{label}: {timings[label]:.1f} s, RTF {timings[label] / seconds:.3f}", flush=True)
        if label == "diarization":
            turns = result.turns
    report = {
        "audio_seconds": round(seconds, 1), "load_seconds": round(load_seconds, 1),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "rtf": {k: round(v / seconds, 4) for k, v in timings.items()},
        "diarization_share": round(timings["diarization"] / (timings["asr"] + timings["diarization"]), 3),
        "speakers_found": len({speaker for _, _, speaker in turns}),
        "speaker_time_accuracy": round(speaker_time_accuracy(turns, reference, seconds), 4),
        "models": {"asr": pipeline.asr.model.name_or_path, "diarization": pipeline.settings.diarization_model},
    }
    print(f"{seconds / 60:.1f} min: pipeline RTF {report['rtf']['pipeline']:.3f} (target 0.15), diarization "
          f"{report['diarization_share']:.0%} of ASR + diarization, {report['speakers_found']} speakers found (2 "
          f"spoke), speaker-time accuracy {report['speaker_time_accuracy']:.3f}", flush=True)
    return report


def against(minutes: float, other: Path, rounds: int) -> dict[str, Any]:
    """Diarization seconds of DIARIZATION_MODEL and of `other`, alternated, and their ratio per round."""
    import torch

    from diarization_utils import diarize, load_diarizer

    audio, reference = long_recording(minutes)
    settings = ModelSettings()
    pipelines = {"this": load_diarizer(settings.resolve(settings.diarization_model, PROJECT_DIR), None,
                                       torch.device("cpu")),
                 "other": load_diarizer(str(other), None, torch.device("cpu"))}
    for pipeline in pipelines.values():
        diarize(pipeline, audio[:SAMPLE_RATE * 24], InferenceConfig())  # one-off costs, paid once
    seconds: dict[str, list[float]] = {"this": [], "other": []}
    found: dict[str, int] = {}
    for _ in range(rounds):
        for name, pipeline in pipelines.items():
            started = time.perf_counter()
            turns = diarize(pipeline, audio, InferenceConfig()).turns
            seconds[name].append(round(time.perf_counter() - started, 2))
            found[name] = len({speaker for _, _, speaker in turns})
        print(f"this {seconds['this'][-1]:.1f} s, other {seconds['other'][-1]:.1f} s, ratio "
              f"{seconds['this'][-1] / seconds['other'][-1]:.2f}", flush=True)
    return {"audio_seconds": round(len(audio) / SAMPLE_RATE, 1), "seconds": seconds, "speakers_found": found,
            "ratios": [round(a / b, 3) for a, b in zip(seconds["this"], seconds["other"])], "other": str(other)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the recording")
    parser.add_argument("--against", type=Path, help="time diarization against the pipeline in this directory")
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds with --against")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    report = against(args.minutes, args.against, args.rounds) if args.against else run(args.minutes)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
