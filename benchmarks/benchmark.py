"""Load test: N virtual users send short (~8 s) and long (~60 s) audio, plain and assisted, and report latency.

    python -m benchmarks.benchmark --url http://127.0.0.1:8000/predict --users 4 --duration 60 --out report.json
    python -m benchmarks.benchmark --local --iterations 3                 # the handler in-process, no server
    python -m benchmarks.benchmark --local --scenarios short,long --compare-faster-whisper --plot latency.png

In the spirit of a k6 test: each scenario runs in turn with --users concurrent virtual users, each sending
requests back to back for --duration seconds or --iterations times (always bounded: it stops by itself), and
the report gives latency avg, min, med, max, p(90), p(95), throughput (requests/s) and the real-time factor
(latency / seconds of audio; below 1 is faster than real time). The audio is built from samples/sample.flac:
short = its first 8 s, long = copies of it joined to 60 s, sent as 16-bit wav in the JSON contract
{"inputs": <base64>, "parameters": {...}}; assisted scenarios add {"assisted": true}. A token is sent when
HF_TOKEN (or API_KEY) is set. --local runs handler.EndpointHandler in-process (models from ASR_MODEL,
ASSISTANT_MODEL and DIARIZATION_MODEL, as the endpoint) behind the same virtual users. --compare-faster-whisper times the handler's
pipeline against faster-whisper on the same audio and the same whisper-base weights (the CTranslate2 packages
models/whisper-base is converted from), greedy, and gives the ratios and the word error rate between the two.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


from audio import SAMPLE_RATE, decode_audio
from config import DEFAULT_ASR_MODEL, PROJECT_DIR, InferenceConfig
from scripts.client import DEFAULT_URL, auth_headers, request_body

SAMPLE = PROJECT_DIR / "samples" / "sample.flac"
SCENARIOS = {"short": ("short", False), "short-assisted": ("short", True),
             "long": ("long", False), "long-assisted": ("long", True)}
GAP_SECONDS = 0.5  # silence between copies of the sample in the long clip, like pauses between sentences
SETTLE_SECONDS = 1.0  # between timed runs: the other engine's idle threads spin for a while before they sleep


@dataclass
class Scenario:
    name: str
    audio_seconds: float
    assisted: bool
    payload: dict[str, Any]
    body: bytes  # the payload serialised once: sending must not time JSON encoding of megabytes
    warmup: "Scenario | None" = None  # the short clip, same parameters: one-off costs without a long request


def build_clip(sample: np.ndarray, seconds: float) -> np.ndarray:
    """`sample` trimmed to `seconds`, or repeated (with short pauses) and then trimmed, or padded with silence."""
    target = int(round(seconds * SAMPLE_RATE))
    gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), np.float32)
    pieces, total = [], 0
    while total < target:
        pieces.extend([sample, gap])
        total += len(sample) + len(gap)
    return np.concatenate(pieces)[:target].astype(np.float32, copy=False)


def wav_bytes(audio: np.ndarray) -> bytes:
    """16 kHz mono 16-bit PCM wav in memory: the most common upload, and decoded identically by every server."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def build_clips(sample_path: Path, short_seconds: float, long_seconds: float) -> dict[str, np.ndarray]:
    sample = decode_audio(sample_path.read_bytes())
    return {"short": build_clip(sample, short_seconds), "long": build_clip(sample, long_seconds)}


def build_scenarios(names: list[str], clips: dict[str, np.ndarray], parameters: dict[str, Any]) -> list[Scenario]:
    encoded = {kind: wav_bytes(audio) for kind, audio in clips.items()}

    def scenario(name: str) -> Scenario:
        kind, assisted = SCENARIOS[name]
        payload = request_body(encoded[kind], {**parameters, **({"assisted": True} if assisted else {})})
        return Scenario(name, len(clips[kind]) / SAMPLE_RATE, assisted, payload, json.dumps(payload).encode())

    scenarios = [scenario(name) for name in names]
    for item in scenarios:
        if item.name.startswith("long") and "short" in clips:
            item.warmup = scenario(item.name.replace("long", "short"))
    return scenarios


def summarize(values: list[float]) -> dict[str, float | None]:
    """k6's trend statistics: avg, min, med, max, p(90), p(95)."""
    if not values:
        return {key: None for key in ("avg", "min", "med", "max", "p90", "p95")}
    array = np.asarray(values, dtype=float)
    return {"avg": float(array.mean()), "min": float(array.min()), "med": float(np.median(array)),
            "max": float(array.max()), "p90": float(np.percentile(array, 90)), "p95": float(np.percentile(array, 95))}


class HttpTarget:
    """POSTs the JSON contract to a URL (an Inference Endpoint, the local server, ...)."""

    def __init__(self, url: str, timeout: float) -> None:
        import httpx

        self.url = url
        headers = {"Content-Type": "application/json", **auth_headers()}
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        self.client = httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits)

    async def send(self, scenario: Scenario) -> dict[str, Any]:
        response = await self.client.post(self.url, content=scenario.body)
        if response.status_code >= 400:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    async def close(self) -> None:
        await self.client.aclose()


class LocalTarget:
    """The endpoint handler in-process; requests run in threads, as concurrent requests reach a server."""

    in_process = True

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    async def send(self, scenario: Scenario) -> dict[str, Any]:
        return await asyncio.to_thread(self.handler, scenario.payload)

    async def close(self) -> None:
        return None


async def run_scenario(target: Any, scenario: Scenario, users: int, iterations: int | None,
                       duration: float | None, warmup: int = 0) -> dict[str, Any]:
    """Run one scenario: `users` virtual users, each for `iterations` requests or until `duration` seconds."""
    for _ in range(warmup):  # first requests pay one-off costs (lazy init, caches): not counted
        await target.send(scenario.warmup or scenario)
    latencies: list[float] = []
    errors: list[str] = []
    texts: list[str] = []
    started, started_cpu = time.perf_counter(), time.process_time()
    deadline = started + duration if duration is not None else None

    async def virtual_user() -> None:
        done = 0
        while (iterations is None or done < iterations) and (deadline is None or time.perf_counter() < deadline):
            sent = time.perf_counter()
            try:
                response = await target.send(scenario)
            except Exception as error:  # a failed request is counted, like k6's http_req_failed, and the VU goes on
                errors.append(f"{type(error).__name__}: {error}"[:300])
            else:
                latencies.append(time.perf_counter() - sent)
                texts.append(str(response.get("text", "")))
            done += 1

    await asyncio.gather(*(virtual_user() for _ in range(users)))
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    return {
        "name": scenario.name, "audio_seconds": round(scenario.audio_seconds, 3), "assisted": scenario.assisted,
        "users": users, "requests": len(latencies), "failures": len(errors), "errors": sorted(set(errors))[:5],
        "wall_seconds": wall, "throughput_rps": len(latencies) / wall if wall > 0 else 0.0,
        "latency_s": summarize(latencies), "rtf": summarize([t / scenario.audio_seconds for t in latencies]),
        "text": texts[0][:300] if texts else None,
        # in-process, all of this process's CPU time is the requests': a measure other load on the machine barely
        # moves (unlike latency); over HTTP it would only be the client's
        "cpu_seconds_per_request": cpu / len(latencies) if getattr(target, "in_process", False) and latencies
        else None,
    }


async def run_benchmark(target: Any, scenarios: list[Scenario], users: int, iterations: int | None,
                        duration: float | None, warmup: int = 0) -> list[dict[str, Any]]:
    """The scenarios one after another, so each one's numbers are its own."""
    results = []
    try:
        for scenario in scenarios:
            results.append(await run_scenario(target, scenario, users, iterations, duration, warmup))
            print(format_row(results[-1]), flush=True)
    finally:
        await target.close()
    return results


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s" if value < 100 else f"{value:.0f}s"


HEADER = (f"{'scenario':<15} {'reqs':>4} {'fail':>4} {'avg':>8} {'min':>8} {'med':>8} {'max':>8} {'p(90)':>8} "
          f"{'p(95)':>8} {'req/s':>6} {'RTF':>6} {'CPU/req':>8}")


def format_row(result: dict[str, Any]) -> str:
    lat, rtf = result["latency_s"], result["rtf"]["avg"]
    cells = " ".join(f"{_seconds(lat[key]):>8}" for key in ("avg", "min", "med", "max", "p90", "p95"))
    return (f"{result['name']:<15} {result['requests']:>4} {result['failures']:>4} {cells} "
            f"{result['throughput_rps']:>6.2f} {'-' if rtf is None else f'{rtf:.3f}':>6} "
            f"{_seconds(result['cpu_seconds_per_request']):>8}")


def normalise_words(text: str) -> str:
    """Lowercase words without punctuation: what a word error rate should compare."""
    return " ".join(re.sub(r"[^\w' ]", " ", text.lower()).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    reference, hypothesis = normalise_words(reference), normalise_words(hypothesis)
    if not reference:
        return 0.0 if not hypothesis else 1.0
    return float(jiwer.wer(reference, hypothesis))


def faster_whisper_model_dir(out: Path) -> Path:
    """The CTranslate2 whisper-base directory faster-whisper loads, with model.bin joined from its two packages."""
    from scripts.build_models import sources

    source = sources()["whisper-base"]
    with open(out / "model.bin", "wb") as model_bin:
        for part in source["parts"]:  # the packages split model.bin into plain byte ranges
            model_bin.write(Path(part).read_bytes())
    for path in source["ct2_dir"].iterdir():
        if path.name in ("config.json", "tokenizer.json") or path.name.startswith("vocabulary."):
            (out / path.name).symlink_to(path)
    return out


def _faster_whisper_worker(connection: Any, compute_type: str, threads: int, options: dict[str, Any]) -> None:
    """faster-whisper in a process of its own: two engines' thread pools in one process slow each other down."""
    from faster_whisper import WhisperModel

    with tempfile.TemporaryDirectory(prefix="ct2-whisper-base-") as tmp:
        model = WhisperModel(str(faster_whisper_model_dir(Path(tmp))), device="cpu", compute_type=compute_type,
                             cpu_threads=threads, local_files_only=True)
        connection.send("ready")
        while (audio := connection.recv()) is not None:
            started, started_cpu = time.perf_counter(), time.process_time()
            segments, _ = model.transcribe(audio, **options)
            text = "".join(segment.text for segment in segments).strip()
            connection.send((text, time.perf_counter() - started, time.process_time() - started_cpu))


def compare_faster_whisper(pipeline: Any, clips: dict[str, np.ndarray], parameters: dict[str, Any],
                           compute_type: str = "float32", repeats: int = 1, warmup: int = 1) -> dict[str, Any]:
    """Time our pipeline (this process) and faster-whisper (a child process) on the same audio arrays, decoding
    excluded from both, greedy, the same number of CPU threads each, interleaved."""
    import multiprocessing

    import torch

    # faster-whisper neither drafts nor diarizes: the comparison is plain ASR on both sides
    config = InferenceConfig.parse({**{k: v for k, v in parameters.items() if k != "assisted"}, "diarization": False})
    same_weights = Path(pipeline.asr.model.name_or_path).resolve() == (PROJECT_DIR / DEFAULT_ASR_MODEL).resolve()
    if not same_weights:
        print(f"warning: ASR model {pipeline.asr.model.name_or_path} is not {DEFAULT_ASR_MODEL}: faster-whisper "
              "runs whisper-base, so the two do not share weights", file=sys.stderr)
    threads = torch.get_num_threads()  # both engines get the same CPU threads
    results: dict[str, Any] = {"compute_type": compute_type, "same_weights": same_weights, "repeats": repeats,
                               "threads": threads, "clips": {}}
    # greedy, no temperature fallback and no conditioning on earlier windows: what our pipeline does
    options = {"language": config.language, "task": config.task, "beam_size": 1, "temperature": 0.0,
               "condition_on_previous_text": False, "vad_filter": config.vad}
    ours_end, theirs_end = multiprocessing.get_context("spawn").Pipe()
    worker = multiprocessing.get_context("spawn").Process(
        target=_faster_whisper_worker, args=(theirs_end, compute_type, threads, options), daemon=True)
    worker.start()
    try:
        if ours_end.recv() != "ready":
            raise RuntimeError("the faster-whisper worker did not start")

        def ours(audio: np.ndarray) -> tuple[str, float, float]:
            started, started_cpu = time.perf_counter(), time.process_time()
            text = pipeline.transcribe(audio, config).text
            return text, time.perf_counter() - started, time.process_time() - started_cpu

        def theirs(audio: np.ndarray) -> tuple[str, float, float]:
            ours_end.send(audio)
            return ours_end.recv()

        engines = {"ours": ours, "faster_whisper": theirs}
        for index, (name, audio) in enumerate(clips.items()):
            seconds = round(len(audio) / SAMPLE_RATE, 3)
            for transcribe in engines.values():
                for _ in range(warmup if index == 0 else 0):  # one-off costs are paid once per engine
                    transcribe(audio)
            wall: dict[str, list[float]] = {label: [] for label in engines}
            cpu: dict[str, list[float]] = {label: [] for label in engines}
            texts: dict[str, str] = {}
            for _ in range(repeats):  # interleaved, so load from other processes hits both engines alike
                for label, transcribe in engines.items():
                    time.sleep(SETTLE_SECONDS)
                    texts[label], elapsed, cpu_seconds = transcribe(audio)
                    wall[label].append(elapsed)
                    cpu[label].append(cpu_seconds)  # CPU time: less sensitive to contention
            row: dict[str, Any] = {"audio_seconds": seconds}
            for label in engines:
                median = statistics.median(wall[label])
                row[label] = {"seconds": median, "min_seconds": min(wall[label]), "rtf": median / seconds,
                              "cpu_seconds": statistics.median(cpu[label]), "text": texts[label]}
            row["time_ratio"] = row["ours"]["seconds"] / row["faster_whisper"]["seconds"]
            row["cpu_time_ratio"] = row["ours"]["cpu_seconds"] / row["faster_whisper"]["cpu_seconds"]
            row["wer_ours_vs_faster_whisper"] = word_error_rate(row["faster_whisper"]["text"], row["ours"]["text"])
            results["clips"][name] = row
            print(f"faster-whisper {name}: ours {row['ours']['seconds']:.2f} s, faster-whisper "
                  f"{row['faster_whisper']['seconds']:.2f} s, ratio {row['time_ratio']:.2f} (CPU time "
                  f"{row['cpu_time_ratio']:.2f}), WER between them {row['wer_ours_vs_faster_whisper']:.3f}",
                  flush=True)
    finally:
        ours_end.send(None)
        worker.join(timeout=30)
        if worker.is_alive():
            worker.kill()
    return results


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    import torch

    from speech_pipeline import cpu_has_bf16

    # the CPU default precision follows these: bf16 where the CPU has bf16 instructions
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory_gib, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_instructions": cpu_has_bf16(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency per scenario (median bar, p(95) whisker, min-max line) and, when measured, ours vs faster-whisper."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    scenarios = [s for s in report["scenarios"] if s["requests"]]
    comparison = (report.get("faster_whisper") or {}).get("clips", {})
    fig, axes = plt.subplots(1, 2 if comparison else 1, figsize=(10 if comparison else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    names = [s["name"] for s in scenarios]
    med = [s["latency_s"]["med"] for s in scenarios]
    ax.bar(names, med, color=["#4c72b0" if not s["assisted"] else "#dd8452" for s in scenarios], label="median")
    ax.errorbar(names, med, yerr=[[0] * len(med), [s["latency_s"]["p95"] - m for s, m in zip(scenarios, med)]],
                fmt="none", ecolor="black", capsize=4, label="p(95)")
    ax.scatter(names, [s["latency_s"]["min"] for s in scenarios], marker="_", color="black", s=120, label="min / max")
    ax.scatter(names, [s["latency_s"]["max"] for s in scenarios], marker="_", color="black", s=120)
    for x, s in enumerate(scenarios):
        ax.annotate(f"RTF {s['rtf']['med']:.2f}", (x, s["latency_s"]["max"]), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=8)
    ax.set_ylim(top=max([s["latency_s"]["max"] for s in scenarios] or [1.0]) * 1.15)  # room for the labels
    ax.set_ylabel("latency (s)")
    users = scenarios[0]["users"] if scenarios else 0
    ax.set_title(f"latency per request, {users} virtual user{'s' if users != 1 else ''}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    if comparison:
        ax2 = axes[0][1]
        clips = list(comparison)
        x = np.arange(len(clips))
        dtype = report.get("models", {}).get("dtype", "").removeprefix("torch.")
        ax2.bar(x - 0.2, [comparison[c]["ours"]["seconds"] for c in clips], 0.4,
                label=f"ours (transformers{', ' + dtype if dtype else ''})")
        ax2.bar(x + 0.2, [comparison[c]["faster_whisper"]["seconds"] for c in clips], 0.4,
                label=f"faster-whisper ({report['faster_whisper']['compute_type']})")
        ax2.set_xticks(x, [f"{c} ({comparison[c]['audio_seconds']:.0f} s)" for c in clips])
        for i, clip in enumerate(clips):
            row = comparison[clip]
            top = max(row["ours"]["seconds"], row["faster_whisper"]["seconds"])
            ax2.annotate(f"ratio {row['time_ratio']:.2f}, WER {row['wer_ours_vs_faster_whisper']:.2f}", (i, top),
                         textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
        ax2.set_ylim(top=max(max(r["ours"]["seconds"], r["faster_whisper"]["seconds"])
                             for r in comparison.values()) * 1.15)
        ax2.set_ylabel("seconds")
        ax2.set_title("same audio, same whisper-base weights, greedy", fontsize=10)
        ax2.legend(fontsize=8, loc="upper left")
    machine = report.get("machine", {})
    isa = f" ({machine['cpu_capability']}{', bf16' if machine.get('bf16_instructions') else ''})" \
        if machine.get("cpu_capability") else ""
    fig.suptitle(f"{machine.get('cpu', '?')}{isa}, {machine.get('cores', '?')} cores, torch threads "
                 f"{machine.get('torch_threads', '?')}, target {report.get('target', '?')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.benchmark", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default=DEFAULT_URL, help=f"endpoint to load (default: {DEFAULT_URL})")
    where.add_argument("--local", action="store_true", help="run handler.EndpointHandler in-process instead")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, from: {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--users", type=int, default=1, help="concurrent virtual users (default 1)")
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--iterations", type=int, help="requests per virtual user and scenario (default 2)")
    bound.add_argument("--duration", type=float, help="seconds per scenario; requests in flight then finish")
    parser.add_argument("--warmup", type=int, default=1,
                        help="uncounted requests before each scenario, on the short clip (default 1)")
    parser.add_argument("--parameters", default="{}", help="extra request parameters as a JSON object")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="speech the clips are built from")
    parser.add_argument("--short-seconds", type=float, default=8.0)
    parser.add_argument("--long-seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one HTTP request may take")
    parser.add_argument("--compare-faster-whisper", action="store_true",
                        help="also time faster-whisper against the in-process pipeline on the short and long clip")
    parser.add_argument("--compute-type", default="float32", choices=["float32", "int8", "int8_float32"],
                        help="faster-whisper's compute type (float32 matches our CPU precision)")
    parser.add_argument("--torch-threads", type=int,
                        help="in-process runs: torch CPU threads after loading (importing silero-vad sets 1)")
    parser.add_argument("--compare-repeats", type=int, default=1, help="timed runs per engine and clip (median)")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--plot", type=Path, help="write a PNG latency plot here (needs matplotlib)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown or not args.scenarios:
        parser.error(f"unknown scenario(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(SCENARIOS)}")
    if args.iterations is None and args.duration is None:
        args.iterations = 2
    if (args.iterations is not None and args.iterations < 1) or (args.duration is not None and args.duration <= 0):
        parser.error("--iterations and --duration must be positive")
    if args.users < 1 or args.warmup < 0 or args.compare_repeats < 1 or (args.torch_threads or 1) < 1:
        parser.error("--users, --compare-repeats and --torch-threads must be >= 1, --warmup >= 0")
    if not 0.1 <= args.short_seconds <= args.long_seconds:
        parser.error("need 0.1 <= --short-seconds <= --long-seconds")
    try:
        args.parameters = json.loads(args.parameters)
    except json.JSONDecodeError as error:
        parser.error(f"--parameters is not JSON: {error}")
    if not isinstance(args.parameters, dict):
        parser.error("--parameters must be a JSON object")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clips = build_clips(args.sample, args.short_seconds, args.long_seconds)
    scenarios = build_scenarios(args.scenarios, clips, args.parameters)
    handler = None
    report: dict[str, Any] = {
        "target": "local" if args.local else args.url, "users": args.users, "iterations": args.iterations,
        "duration": args.duration, "warmup": args.warmup, "parameters": args.parameters,
        "machine": machine_info(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_start": _load_average(),  # other work on the machine skews the numbers: record it
    }
    if args.local or args.compare_faster_whisper:
        from handler import EndpointHandler

        started = time.perf_counter()
        handler = EndpointHandler()
        report["load_seconds"] = time.perf_counter() - started
        report["models"] = {"asr": handler.pipeline.asr.model.name_or_path, "dtype": str(handler.pipeline.dtype),
                            "assistant": bool(handler.pipeline.assistant_kwargs)}
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        report["machine"]["torch_threads"] = torch.get_num_threads()
    target = LocalTarget(handler) if args.local else HttpTarget(args.url, args.timeout)
    print(HEADER)
    try:
        report["scenarios"] = asyncio.run(run_benchmark(target, scenarios, args.users, args.iterations,
                                                        args.duration, args.warmup))
    except Exception as error:  # only a warm-up request can raise (a server that is down): say so in one line
        print(f"error: warm-up request failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if args.compare_faster_whisper:
        report["faster_whisper"] = compare_faster_whisper(handler.pipeline, clips, args.parameters,
                                                          args.compute_type, args.compare_repeats, args.warmup)
    report["load_average_end"] = _load_average()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if args.plot:
        plot(report, args.plot)
    failures = sum(s["failures"] for s in report["scenarios"])
    if failures:
        print(f"{failures} request(s) failed, e.g. {next(e for s in report['scenarios'] for e in s['errors'])}",
              file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
