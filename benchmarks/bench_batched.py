"""Ours against faster-whisper's batched pipeline (and its sequential one) on real recordings.

    python -m benchmarks.bench_batched [--engines ours,ours-fp32,fw-seq,fw-batch8,fw-batch16]
        [--clips call,meeting,mix] [--repeats 3] [--threads 2] [--out benchmarks/results/bench_batched.json]

Clips (16 kHz, quantised once to 16-bit so every engine gets the same samples): `call`, pyannote.audio's 30 s
phone call (`sample.wav`, with a reference transcript); `meeting`, two AMI tuning clips joined (60 s); `mix`, nine
AMI clips and the call joined (300 s); `mixN`, the mix repeated to N seconds (`mix3600`: an hour); `trn00` ...
`trn09`, one AMI clip each. Engines, each in a process of its own, take turns clip by clip (the order rotates),
after one warm-up each: `ours` is our pipeline with the default request parameters (DTYPE=auto, VAD, language
detected, the loop guard's temperature fallback on, no diarization), `ours-fp32` / `ours-bf16` / `ours-int8` the
same with that DTYPE (not run unless named), any of them `+dtN` with DECODE_THREADS=N; `fw-seq` is faster-whisper's
`WhisperModel.transcribe` and `fw-batch8` / `fw-batch16` its `BatchedInferencePipeline` at batch 8 / 16, all int8 on the same whisper-base
weights, greedy (beam 1, temperature 0), VAD filter on, no conditioning on earlier text. Per engine and clip: the
median wall time, the median CPU time of its process (less sensitive to other load than wall time), its peak RSS
during the clip and its RSS when idle after loading; per clip: each ours-engine / fw-engine ratio, and the word
error rate between the transcripts (and, for the call, against its reference).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from audio import SAMPLE_RATE, decode_audio
from benchmarks.accuracy import phone_call
from benchmarks.benchmark import SETTLE_SECONDS, _load_average, faster_whisper_model_dir, machine_info, wav_bytes, \
    word_error_rate
from benchmarks.real_recordings import AMI, _ours

ENGINES = ("ours", "ours-fp32", "fw-seq", "fw-batch8", "fw-batch16")
OURS_DTYPES = {"ours": "auto", "ours-fp32": "float32", "ours-bf16": "bfloat16", "ours-int8": "int8"}
CLIPS = ("call", "meeting", "mix")
MEETING = ("trn02", "trn03")  # two clips with speech throughout (trn01 has none the VAD finds)


def build_clips(names: list[str], ami: Path = AMI) -> tuple[dict[str, np.ndarray], str]:
    """The named clips (see the module's docstring) as 16 kHz float32, each through 16-bit WAV once, and the
    call's reference transcript."""
    call, reference = phone_call()
    parts = {path.stem: decode_audio(path.read_bytes()) for path in sorted(ami.glob("trn*.wav"))}
    made = {"call": lambda: call}
    if parts:
        made["meeting"] = lambda: np.concatenate([parts[name] for name in MEETING])
        made["mix"] = lambda: np.concatenate([*(parts[name] for name in sorted(parts)[:9]), call])
        made.update({name: (lambda name=name: parts[name]) for name in parts})
    for name in names:  # `mixN`: the mix repeated and cut to N seconds (the memory of long files)
        if name.startswith("mix") and name[3:].isdigit() and "mix" in made:
            made[name] = lambda seconds=int(name[3:]): np.resize(made["mix"](), seconds * SAMPLE_RATE)
    missing = [name for name in names if name not in made]
    if missing:
        raise SystemExit(f"unknown or unavailable clip(s) {', '.join(missing)} (AMI clips read from {ami})")
    return {name: decode_audio(wav_bytes(made[name]())) for name in names}, reference


def memory_mib() -> dict[str, float]:
    """This process's resident memory now and its peak (VmRSS, VmHWM), MiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mib": values.get("VmRSS", 0.0), "peak_mib": values.get("VmHWM", 0.0)}


def reset_peak() -> None:
    """Start a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM to the current RSS)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the peak then covers the whole process so far
        pass


def faster_whisper_engine(engine: str, model_dir: Path, threads: int) -> Callable[[np.ndarray], dict[str, Any]]:
    """`fw-seq`, or `fw-batchN`: faster-whisper int8, greedy, VAD filter on."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads,
                         local_files_only=True)
    options: dict[str, Any] = {"beam_size": 1, "temperature": 0.0, "condition_on_previous_text": False,
                               "vad_filter": True}
    if engine == "fw-seq":
        transcribe: Callable[..., Any] = model.transcribe
    else:  # the batched pipeline decodes its VAD segments in batches; it has no temperature fallback
        transcribe = BatchedInferencePipeline(model).transcribe
        options["batch_size"] = int(engine.removeprefix("fw-batch"))

    def run(audio: np.ndarray) -> dict[str, Any]:
        segments, info = transcribe(audio, **options)
        return {"text": "".join(segment.text for segment in segments).strip(), "language": info.language}

    return run


def _worker(engine: str, threads: int, connection: Any) -> None:
    """One engine in a process of its own: two engines' thread pools in one process slow each other down."""
    with tempfile.TemporaryDirectory(prefix="ct2-whisper-base-") as tmp:
        if engine.startswith("ours"):
            name, _, decode_threads = engine.partition("+dt")
            if decode_threads:  # `ours+dt0`: the same engine with DECODE_THREADS=0 (this process only)
                os.environ["DECODE_THREADS"] = decode_threads
            run = _ours(OURS_DTYPES[name], threads)
        else:
            run = faster_whisper_engine(engine, faster_whisper_model_dir(Path(tmp)), threads)
        connection.send("ready")
        while (audio := connection.recv()) is not None:
            idle = memory_mib()["rss_mib"]
            reset_peak()
            started, started_cpu = time.perf_counter(), time.process_time()
            result = run(audio)
            result.update(seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - started_cpu,
                          idle_rss_mib=idle, peak_rss_mib=memory_mib()["peak_mib"])
            connection.send(result)


def measure(engines: list[str], audio: dict[str, np.ndarray], repeats: int, threads: int,
            warmup: np.ndarray) -> dict[str, Any]:
    """Every engine on every clip `repeats` times; engines take turns run by run, the order rotating."""
    context = multiprocessing.get_context("spawn")
    pipes = {}
    for engine in engines:
        ours, theirs = context.Pipe()
        context.Process(target=_worker, args=(engine, threads, theirs), daemon=True).start()
        pipes[engine] = ours
    rows: dict[str, Any] = {}
    try:
        for engine, pipe in pipes.items():
            if pipe.recv() != "ready":
                raise RuntimeError(f"the {engine} worker did not start")
            pipe.send(warmup)  # the first call of a process pays one-off costs
            pipe.recv()
        turn = 0
        for name, clip in audio.items():
            runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in engines}
            for _ in range(repeats):
                order = engines[turn % len(engines):] + engines[:turn % len(engines)]
                turn += 1
                for engine in order:
                    time.sleep(SETTLE_SECONDS)  # the other engine's idle threads spin for a while before they sleep
                    pipes[engine].send(clip)
                    runs[engine].append(pipes[engine].recv())
            rows[name] = {"audio_seconds": round(len(clip) / SAMPLE_RATE, 2),
                          **{engine: summarise_runs(results) for engine, results in runs.items()}}
            print(f"{name} ({rows[name]['audio_seconds']:.0f} s): " + ", ".join(
                f"{engine} {rows[name][engine]['seconds']:.2f} s cpu {rows[name][engine]['cpu_seconds']:.2f} s "
                f"peak {rows[name][engine]['peak_rss_mib']:.0f} MiB" for engine in engines), flush=True)
    finally:
        for pipe in pipes.values():
            pipe.send(None)
    return rows


def summarise_runs(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's runs of one clip: medians of the times, the range, the highest peak, the first run's text."""
    seconds = [r["seconds"] for r in results]
    cpu = [r["cpu_seconds"] for r in results]
    return {"seconds": statistics.median(seconds), "seconds_range": [min(seconds), max(seconds)],
            "cpu_seconds": statistics.median(cpu), "cpu_seconds_range": [min(cpu), max(cpu)],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results), "idle_rss_mib": results[0]["idle_rss_mib"],
            "text": results[0]["text"], "language": results[0]["language"],
            "fallbacks": results[0].get("fallbacks"),  # ours: windows decoded again by the loop guard
            "texts_differ_between_runs": len({r["text"] for r in results}) > 1}


def compare(rows: dict[str, Any], engines: list[str], reference: str) -> dict[str, Any]:
    """Per clip: each ours-engine's time and CPU-time ratio to each faster-whisper engine, and the WER between their
    texts (faster-whisper's as the reference); for the call, every engine's WER against the real transcript."""
    ours = [engine for engine in engines if engine.startswith("ours")]
    peers = [engine for engine in engines if engine.startswith("fw-")]
    out: dict[str, Any] = {}
    for name, row in rows.items():
        ratios = {}
        for mine in ours:
            for peer in peers:
                ratios[f"{mine}/{peer}"] = {
                    "time": round(row[mine]["seconds"] / row[peer]["seconds"], 3),
                    "cpu_time": round(row[mine]["cpu_seconds"] / row[peer]["cpu_seconds"], 3),
                    "time_range": [round(row[mine]["seconds_range"][0] / row[peer]["seconds_range"][1], 3),
                                   round(row[mine]["seconds_range"][1] / row[peer]["seconds_range"][0], 3)],
                    "wer": round(word_error_rate(row[peer]["text"], row[mine]["text"]), 3)}
        entry: dict[str, Any] = {"ratios": ratios}
        if name == "call":
            entry["wer_vs_reference"] = {engine: round(word_error_rate(reference, row[engine]["text"]), 3)
                                         for engine in engines}
        out[name] = entry
    return out


def table(report: dict[str, Any]) -> str:
    """The ratios as a Markdown table: one line per clip and ours-engine / faster-whisper engine."""
    lines = ["| clip | engines | time ratio (range) | CPU-time ratio | ours s / peer s | peak RSS MiB ours / peer "
             "| WER between texts |", "|---|---|---|---|---|---|---|"]
    for name, entry in report["comparison"].items():
        row = report["clips"][name]
        for pair, ratio in entry["ratios"].items():
            mine, peer = pair.split("/")
            lines.append(
                f"| {name} ({row['audio_seconds']:.0f} s) | {pair} | {ratio['time']:.2f} ({ratio['time_range'][0]:.2f}-"
                f"{ratio['time_range'][1]:.2f}) | {ratio['cpu_time']:.2f} | {row[mine]['seconds']:.2f} / "
                f"{row[peer]['seconds']:.2f} | {row[mine]['peak_rss_mib']:.0f} / {row[peer]['peak_rss_mib']:.0f} | "
                f"{ratio['wer']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_batched", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--clips", default=",".join(CLIPS),
                        help="comma-separated: call, meeting, mix, mixN (N seconds), trn00 ... trn09")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine and clip (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads per engine")
    parser.add_argument("--ami", type=Path, default=AMI, help="folder of the AMI clips (trn*.wav)")
    parser.add_argument("--out", type=Path, help="write the report as JSON")
    args = parser.parse_args(argv)
    engines = [engine for engine in args.engines.split(",") if engine]
    unknown = [engine for engine in engines
               if engine not in ENGINES and not engine.startswith("fw-batch")
               and not (engine.partition("+dt")[0] in OURS_DTYPES and engine.partition("+dt")[2] in ("", *"012345678"))]
    if unknown or not engines or args.repeats < 1 or args.threads < 1:
        parser.error(f"engines from {', '.join([*ENGINES, *OURS_DTYPES])} (or fw-batchN, ours...+dtN); "
                     "--repeats and --threads >= 1")
    audio, reference = build_clips([name for name in args.clips.split(",") if name], args.ami)
    report: dict[str, Any] = {"machine": machine_info(), "threads": args.threads, "repeats": args.repeats,
                              "engines": engines, "load_average_start": _load_average()}
    started = time.perf_counter()
    warmup = next(iter(audio.values()))[: 10 * SAMPLE_RATE]
    report["clips"] = measure(engines, audio, args.repeats, args.threads, warmup)
    report["comparison"] = compare(report["clips"], engines, reference)
    report["load_average_end"] = _load_average()
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(table(report))
    print(f"load average: start {report['load_average_start']}, end {report['load_average_end']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return report


if __name__ == "__main__":
    main()
