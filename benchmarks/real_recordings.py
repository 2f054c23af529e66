"""Real recordings: repetition loops, decoding time and agreement on the tuning set, clean and made harder.

    python -m benchmarks.real_recordings [--engines ours-bf16,ours-fp32,fw-default,fw-greedy]
        [--variants clean,quiet,noisy,telephone] [--clips trn00,sample] [--out benchmarks/results/real_recordings.json]

The tuning set: the ten 30 s AMI meeting clips of ../shared/data/ami-debug-train (`--ami`) and pyannote.audio's
`sample.wav` phone call (the one with a transcript); each clean, 20 dB quieter, in white noise at 10 dB SNR and
band-limited to 4 kHz (benchmarks/accuracy.py's conditions). Engines, each in a process of its own, take turns clip
by clip: our pipeline with default parameters (16-bit WAV through `SpeechPipeline`, VAD on, language detected, no
diarization) in bf16 and in fp32, and faster-whisper int8 on the same whisper-base weights with its default
decoding (beam 5, temperature fallback) and greedy (beam 1, temperature 0), both with its VAD filter on. Per clip:
seconds, real-time factor, compression ratio of the output text (a loop: over 2.4), fallback decodes, language;
per engine: the same summarised, word error rate against fp32 and against faster-whisper's default decoding (the
proxy reference: there are no AMI transcripts), and on the phone call against its transcript.
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

from audio import decode_audio
from benchmarks.accuracy import _noisy, _telephone, phone_call
from benchmarks.benchmark import faster_whisper_model_dir, machine_info, wav_bytes, word_error_rate
from config import PROJECT_DIR

AMI = PROJECT_DIR.parent / "shared" / "data" / "ami-debug-train"
LOOP_RATIO = 2.4  # openai-whisper's compression-ratio threshold: above it the text repeats itself
ENGINES = ("ours-bf16", "ours-fp32", "fw-default", "fw-greedy")
VARIANTS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "clean": lambda audio, seed: audio,
    "quiet": lambda audio, seed: (audio * 0.1).astype(np.float32),
    "noisy": lambda audio, seed: _noisy(audio, 10, seed),
    "telephone": lambda audio, seed: _telephone(audio),
}


def clips(ami: Path) -> tuple[dict[str, np.ndarray], str]:
    """The AMI clips and the phone call (16 kHz float32), and the phone call's reference text."""
    audio = {path.stem: decode_audio(path.read_bytes()) for path in sorted(ami.glob("trn*.wav"))}
    audio["sample"], reference = phone_call()
    return audio, reference


def _ours(dtype: str, threads: int) -> Callable[[np.ndarray], dict[str, Any]]:
    import torch

    from config import ModelSettings
    from speech_pipeline import SpeechPipeline, compression_ratio

    torch.set_num_threads(threads)
    pipeline = SpeechPipeline(ModelSettings(assistant_model="", diarization_model="", dtype=dtype))
    fallbacks = [0]
    decode = pipeline._decode

    def counting(inputs: list, *args: Any) -> Any:  # windows decoded again at a higher temperature
        fallbacks[0] += len(inputs) if args[-1] > 0 else 0
        return decode(inputs, *args)

    pipeline._decode = counting

    def run(audio: np.ndarray) -> dict[str, Any]:
        fallbacks[0] = 0
        transcript, _ = pipeline.transcribe_request({"inputs": wav_bytes(audio), "parameters": {}})
        return {"text": transcript.text, "language": transcript.language, "fallbacks": fallbacks[0],
                "compression_ratio": compression_ratio(transcript.text)}

    return run


def _faster_whisper(options: dict[str, Any], model_dir: Path, threads: int) -> Callable[[np.ndarray], dict[str, Any]]:
    from faster_whisper import WhisperModel

    from speech_pipeline import compression_ratio

    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads,
                         local_files_only=True)

    def run(audio: np.ndarray) -> dict[str, Any]:
        segments, info = model.transcribe(audio, vad_filter=True, **options)
        text = "".join(segment.text for segment in segments).strip()
        return {"text": text, "language": info.language, "fallbacks": None, "compression_ratio": compression_ratio(text)}

    return run


def _worker(engine: str, threads: int, connection: Any) -> None:
    """One engine in a process of its own: two engines' thread pools in one process slow each other down."""
    with tempfile.TemporaryDirectory(prefix="ct2-whisper-base-") as tmp:
        if engine.startswith("ours-"):
            run = _ours({"ours-bf16": "bfloat16", "ours-fp32": "float32"}[engine], threads)
        else:
            options = {"fw-default": {}, "fw-greedy": {"beam_size": 1, "temperature": 0.0}}[engine]
            run = _faster_whisper(options, faster_whisper_model_dir(Path(tmp)), threads)
        connection.send("ready")
        while (audio := connection.recv()) is not None:
            started, started_cpu = time.perf_counter(), time.process_time()
            result = run(audio)
            result.update(seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - started_cpu)
            connection.send(result)


def measure(engines: list[str], variants: list[str], audio: dict[str, np.ndarray], warmup: np.ndarray,
            threads: int) -> dict[str, Any]:
    """Every engine on every clip of every variant, engines taking turns clip by clip (the order rotates)."""
    context = multiprocessing.get_context("spawn")
    pipes = {}
    for engine in engines:
        ours, theirs = context.Pipe()
        context.Process(target=_worker, args=(engine, threads, theirs), daemon=True).start()
        pipes[engine] = ours
    for engine, pipe in pipes.items():
        if pipe.recv() != "ready":
            raise RuntimeError(f"the {engine} worker did not start")
        pipe.send(warmup)  # warm-up: the first call of a process is slower
        pipe.recv()
    rows: dict[str, Any] = {}
    turn = 0
    for variant in variants:
        for seed, (name, clean) in enumerate(audio.items()):
            clip = VARIANTS[variant](clean, seed)
            row = rows.setdefault(f"{name}/{variant}", {"clip": name, "variant": variant,
                                                        "seconds_of_audio": round(len(clip) / 16000, 2)})
            order = engines[turn % len(engines):] + engines[:turn % len(engines)]
            turn += 1
            for engine in order:
                pipes[engine].send(clip)
                result = pipes[engine].recv()
                result["rtf"] = result["seconds"] / row["seconds_of_audio"]
                result["loop"] = result["compression_ratio"] > LOOP_RATIO
                row[engine] = result
            print(f"{name}/{variant}: " + ", ".join(
                f"{engine} {row[engine]['seconds']:.1f} s cr {row[engine]['compression_ratio']:.2f}"
                f" {row[engine]['language']}" + (" LOOP" if row[engine]["loop"] else "") for engine in engines),
                flush=True)
    for pipe in pipes.values():
        pipe.send(None)
    return rows


def summarise(rows: dict[str, Any], engines: list[str], reference: str) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for engine in engines:
        results = [row[engine] for row in rows.values()]
        seconds = [r["seconds"] for r in results]
        fw = [row for row in rows.values() if "fw-greedy" in row]
        entry = {
            "clips": len(results), "loops": sum(r["loop"] for r in results),
            "max_compression_ratio": round(max(r["compression_ratio"] for r in results), 2),
            "median_seconds": round(statistics.median(seconds), 2), "max_seconds": round(max(seconds), 2),
            "max_over_median": round(max(seconds) / statistics.median(seconds), 2),
            "languages": sorted({str(r["language"]) for r in results}),
            "fallbacks": sum(r["fallbacks"] or 0 for r in results),
            "phone_call_wer": {row["variant"]: round(word_error_rate(reference, row[engine]["text"]), 3)
                               for row in rows.values() if row["clip"] == "sample"},
        }
        if fw:
            entry["time_over_fw_greedy_median"] = round(statistics.median(
                row[engine]["seconds"] / row["fw-greedy"]["seconds"] for row in fw), 2)
            entry["time_over_fw_greedy_max"] = round(max(
                row[engine]["seconds"] / row["fw-greedy"]["seconds"] for row in fw), 2)
        for other in ("ours-fp32", "fw-default"):
            if other in engines and other != engine:
                entry[f"wer_vs_{other}"] = round(statistics.mean(
                    word_error_rate(row[other]["text"], row[engine]["text"]) for row in rows.values()), 3)
        summary[engine] = entry
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--clips", help="comma-separated clip names (trn00 ... trn09, sample); default all")
    parser.add_argument("--ami", type=Path, default=AMI, help="folder of the AMI clips (trn*.wav)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads per engine (default: every core; 1 on a machine shared with other jobs)")
    parser.add_argument("--out", type=Path, help="write the report as JSON")
    args = parser.parse_args(argv)
    engines, variants = args.engines.split(","), args.variants.split(",")
    audio, reference = clips(args.ami)
    warmup = audio["sample"][: 16000 * 10]
    if args.clips:
        audio = {name: audio[name] for name in args.clips.split(",")}
    started = time.perf_counter()
    rows = measure(engines, variants, audio, warmup, args.threads)
    report = {"machine": machine_info(), "threads": args.threads, "engines": engines, "variants": variants,
              "summary": summarise(rows, engines, reference), "clips": rows,
              "wall_seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(report["summary"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
