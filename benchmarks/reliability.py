"""Reliability run against a real Uvicorn server on 127.0.0.1 with tiny random Whisper models built in a temp dir.

    .venv/bin/python -m benchmarks.reliability --fuzz 2000 --load 200 --concurrency 16 --out reliability.json

(a) fuzz: seeded junk requests (JSON, bodies, content types, corrupt audio) plus valid ones: counts connection
    errors (crashes), 5xx and 4xx without an "error" message; (b) load: valid short requests at a concurrency,
    p50/p95 latency and the server's RSS growth; (c) overload: a burst beyond MAX_QUEUED_REQUESTS gets 503 with
    Retry-After; (d) SIGTERM during an in-flight request: does it still complete. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx

FIELDS = ["task", "batch_size", "assisted", "chunk_length_s", "sampling_rate", "audio_format", "language",
          "return_timestamps", "vad", "diarization", "num_beams", "num_speakers", "min_speakers", "max_speakers"]
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "application/ld+json", "audio/wav",
                 "audio/flac", "video/mp4", "application/octet-stream", "", "text/plain", "multipart/form-data",
                 "multipart/form-data; boundary=zz", "application/x-www-form-urlencoded", "image/png", "x"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server:
    """`python -m uvicorn server:app` in a subprocess, with the tiny model and extra env vars."""

    def __init__(self, model: Path, log: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "ASR_MODEL": str(model), "ASSISTANT_MODEL": "", "DIARIZATION_MODEL": "",
                       "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **env}
        self.log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "server:app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning"], cwd=ROOT, env=environment, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the server was not ready within {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


# --- (a) fuzz ---------------------------------------------------------------------------------------------------

class Junk:
    """A seeded generator of junk and valid requests: (method kwargs, path)."""

    def __init__(self, seed: int, encoded: dict[str, bytes], valid: bytes):
        self.rng, self.encoded, self.valid = random.Random(seed), encoded, valid

    def scalar(self):
        r = self.rng
        return r.choice([None, True, False, 0, -1, 1, 2, 10**30, -(10**20), 1e308, 0.5, -0.0, "", " ", "en", "EN ",
                         "word", "segment", "auto", "pcm_s16le", "pcm_f32le", "translate", "nan", "inf",
                         "\u00e9\U0001d11e",
                         r.randint(-1000, 400000), r.random() * 100, "".join(chr(r.randint(1, 0x2FFF))
                                                                           for _ in range(r.randint(0, 12)))])

    def value(self, depth: int = 0):
        kind = self.rng.random()
        if depth < 3 and kind < 0.15:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 3))]
        if depth < 3 and kind < 0.3:
            return {self.key(): self.value(depth + 1) for _ in range(self.rng.randint(0, 3))}
        return self.scalar()

    def key(self) -> str:
        return self.rng.choice(FIELDS) if self.rng.random() < 0.7 else str(self.scalar())

    def params(self) -> dict:
        return {self.key(): self.value() for _ in range(self.rng.randint(0, 5))}

    def audio(self) -> bytes:
        r = self.rng
        data = bytearray(self.encoded[r.choice(sorted(self.encoded))])
        if r.random() < 0.5:
            data = data[: r.randint(0, len(data))]
        for _ in range(r.randint(0, 8)):
            if data:
                data[r.randrange(len(data))] = r.randrange(256)
        if r.random() < 0.25:
            data = bytearray(r.randbytes(r.randint(1, 64))) + data
        return bytes(data)

    def b64(self) -> str:
        r, text = self.rng, base64.b64encode(self.audio()).decode()
        return r.choice([text, text.rstrip("="), text + "=", "data:audio/wav;base64," + text, text[: len(text) // 2],
                         "".join(r.choice("AZaz09+/=-_ .\n") for _ in range(r.randint(0, 40)))])

    def query(self) -> dict[str, str]:
        query = {self.key(): str(self.scalar()) for _ in range(self.rng.randint(0, 3))}
        return {"vad": "false", **query} if self.rng.random() < 0.8 else query

    def request(self) -> tuple[str, dict]:
        r = self.rng
        kind = r.choice(["json_junk", "json_audio", "raw", "content_type", "multipart", "openai", "valid", "valid"])
        path = r.choice(["/", "/predict"])
        if kind == "json_junk":
            body = json.dumps(self.value()) if r.random() < 0.7 else r.choice(["{", "[1,", "nul", "\"\\ud800\"", "{}"])
            return path, {"content": body.encode(), "headers": {"Content-Type": "application/json"},
                          "params": self.query()}
        if kind == "json_audio":
            body = {"inputs": self.b64() if r.random() < 0.9 else self.value(), "parameters": self.params()}
            return path, {"json": body, "params": self.query()}
        if kind == "raw":
            return path, {"content": self.audio(), "headers": {"Content-Type": r.choice(["audio/wav", ""])},
                          "params": self.query()}
        if kind == "content_type":
            body = r.choice([self.audio(), json.dumps(self.value()).encode(), r.randbytes(r.randint(0, 100))])
            return path, {"content": body, "headers": {"Content-Type": r.choice(CONTENT_TYPES)},
                          "params": self.query()}
        if kind == "multipart":
            data = {"parameters": r.choice([json.dumps(self.params()), "{", "[]", "null"])}
            return path, {"files": {"file": ("a.wav", self.audio(), "audio/wav")} if r.random() < 0.8 else None,
                          "data": data, "params": self.query()}
        if kind == "openai":
            form = {r.choice(["model", "language", "prompt", "response_format", "temperature", "stream",
                              "timestamp_granularities[]", *FIELDS]): str(self.scalar()) for _ in range(r.randint(0, 4))}
            form["vad"] = "false"
            if r.random() < 0.5:
                form["response_format"] = r.choice(["json", "text", "srt", "vtt", "verbose_json", "diarized_json"])
            audio = self.valid if r.random() < 0.4 else self.audio()
            files = {"file": ("a.wav", audio, "audio/wav")} if r.random() < 0.9 else None
            return r.choice(["/v1/audio/transcriptions", "/v1/audio/translations"]), {"data": form, "files": files}
        return path, {"json": {"inputs": base64.b64encode(self.valid).decode(),
                               "parameters": {"vad": False, "return_timestamps": r.choice(["segment", "word"])}}}


def fuzz(url: str, count: int, seed: int, encoded: dict[str, bytes], valid: bytes) -> dict:
    junk, statuses, examples = Junk(seed, encoded, valid), {}, []
    crashes = server_errors = unexplained = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(count):
            path, kwargs = junk.request()
            try:
                response = client.post(path, **kwargs)
            except httpx.TransportError as error:
                crashes += 1
                examples.append({"path": path, "error": repr(error)})
                continue
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                server_errors += 1
                examples.append({"path": path, "status": response.status_code, "body": response.text[:300],
                                 "request": repr(kwargs)[:500]})
            elif response.status_code >= 400:
                try:
                    message = response.json().get("error")
                except (ValueError, AttributeError):
                    message = None
                if not (isinstance(message, str) and message):
                    unexplained += 1
                    examples.append({"path": path, "status": response.status_code, "body": response.text[:300]})
    return {"requests": count, "crashes": crashes, "5xx": server_errors, "4xx_without_message": unexplained,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "examples": examples[:10]}


# --- (b) load ---------------------------------------------------------------------------------------------------

async def _burst(url: str, count: int, concurrency: int, body: bytes, query: str) -> list[tuple[int, float, dict]]:
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one() -> tuple[int, float, dict]:
            async with semaphore:
                started = time.perf_counter()
                try:
                    response = await client.post("/" + query, content=body, headers={"Content-Type": "audio/wav"})
                except httpx.TransportError:
                    return -1, time.perf_counter() - started, {}
                return response.status_code, time.perf_counter() - started, dict(response.headers)

        return await asyncio.gather(*(one() for _ in range(count)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def load(server: Server, count: int, concurrency: int, body: bytes, rounds: int = 4) -> dict:
    """`count` requests in `rounds` equal rounds, RSS read after each: growth that levels off is no leak."""
    asyncio.run(_burst(server.url, max(concurrency, 8), concurrency, body, "?vad=false"))  # warm-up
    rss = [rss_kib(server.process.pid)]
    sizes = [count // rounds + (i < count % rounds) for i in range(rounds)]
    results: list[tuple[int, float, dict]] = []
    started = time.perf_counter()
    for size in (size for size in sizes if size):
        results += asyncio.run(_burst(server.url, size, concurrency, body, "?vad=false"))
        rss.append(rss_kib(server.process.pid))
    elapsed = time.perf_counter() - started
    latencies = [seconds for status, seconds, _ in results if status == 200]
    return {"requests": count, "concurrency": concurrency, "errors": sum(status != 200 for status, _, _ in results),
            "p50_s": round(percentile(latencies, 0.5), 3), "p95_s": round(percentile(latencies, 0.95), 3),
            "throughput_rps": round(count / elapsed, 2), "rss_after_warmup_mib": round(rss[0] / 1024, 1),
            "rss_after_run_mib": round(rss[-1] / 1024, 1), "rss_after_each_round_mib": [round(r / 1024, 1) for r in rss],
            "rss_growth_pct": round(100 * (rss[-1] - rss[0]) / rss[0], 1) if rss[0] else None,
            "rss_growth_second_half_pct": round(100 * (rss[-1] - rss[len(rss) // 2]) / rss[0], 1) if rss[0] else None}


# --- (c) overload and (d) graceful shutdown ---------------------------------------------------------------------

def overload(server: Server, burst: int, body: bytes, query: str) -> dict:
    results = asyncio.run(_burst(server.url, burst, burst, body, query))
    refused = [headers for status, _, headers in results if status == 503]
    statuses = sorted({status for status, _, _ in results})
    return {"burst": burst, "statuses": {str(s): sum(r[0] == s for r in results) for s in statuses},
            "503": len(refused), "503_with_retry_after": sum("retry-after" in h for h in refused),
            "ok": bool(refused) and all("retry-after" in h for h in refused)
            and all(status in (200, 503) for status, _, _ in results)}


def graceful_shutdown(server: Server, body: bytes, query: str) -> dict:
    outcome: dict = {}

    def call() -> None:
        try:
            response = httpx.post(server.url + "/" + query, content=body, headers={"Content-Type": "audio/wav"},
                                  timeout=120)
            outcome.update(status=response.status_code, has_text="text" in response.json())
        except (httpx.HTTPError, ValueError) as error:
            outcome.update(status=None, error=repr(error))

    thread = threading.Thread(target=call)
    started = time.perf_counter()
    thread.start()
    in_flight, deadline = False, time.monotonic() + 60
    while not in_flight and thread.is_alive() and time.monotonic() < deadline:  # signal once it holds a place
        try:
            in_flight = httpx.get(server.url + "/health", timeout=10).json()["queue"]["held"] >= 1
        except (httpx.HTTPError, ValueError, KeyError):
            pass
    server.process.send_signal(signal.SIGTERM)
    thread.join(150)
    try:
        exit_code = server.process.wait(60)
    except subprocess.TimeoutExpired:
        exit_code = None
    return {"completed": outcome.get("status") == 200, "in_flight_when_signalled": in_flight,
            "request": outcome, "server_exit_code": exit_code,
            "request_s": round(time.perf_counter() - started, 2)}


# --- main -------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fuzz", type=int, default=2000, help="junk + valid requests to send (a)")
    parser.add_argument("--load", type=int, default=200, help="valid requests of the load test (b)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent requests of the load test")
    parser.add_argument("--burst", type=int, default=12, help="concurrent requests of the overload test (c)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)

    from benchmarks.fixtures import MODELS, encode, tiny_whisper, tone

    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        tmp_path = Path(tmp)
        model = tiny_whisper(MODELS / "whisper-base", tmp_path / "main", 0)
        encoded = {name: encode(tone(0.6, rate), rate, container, codec) for name, rate, container, codec in
                   [("wav", 16000, "wav", "pcm_s16le"), ("flac", 22050, "flac", "flac"),
                    ("mp3", 44100, "mp3", "libmp3lame"), ("ogg", 48000, "ogg", "libopus"),
                    ("m4a", 16000, "ipod", "aac")]}
        short = encode(tone(1.0), 16000, "wav", "pcm_s16le")
        long = encode(tone(4.0), 16000, "wav", "pcm_s16le")
        slow_query = "?vad=false&chunk_length_s=2&batch_size=1"  # 2 sequential windows: a request that lasts seconds

        server = Server(model, tmp_path / "server.log")
        try:
            server.wait_ready()
            report["fuzz"] = fuzz(server.url, args.fuzz, args.seed, encoded, short)
            report["load"] = load(server, args.load, args.concurrency, short)
        finally:
            server.stop()
            report["server_log_tail"] = (tmp_path / "server.log").read_text(errors="replace")[-2000:]

        small = Server(model, tmp_path / "small.log", MAX_CONCURRENT_REQUESTS="1", MAX_QUEUED_REQUESTS="1")
        try:
            small.wait_ready()
            report["overload"] = overload(small, args.burst, long, slow_query)
            report["graceful_shutdown"] = graceful_shutdown(small, long, slow_query)
        finally:
            small.stop()

    fuzzed, loaded = report["fuzz"], report["load"]
    rows = [("fuzz requests", fuzzed["requests"]), ("crashes (connection errors)", fuzzed["crashes"]),
            ("5xx", fuzzed["5xx"]), ("4xx without message", fuzzed["4xx_without_message"]),
            ("fuzz statuses", fuzzed["statuses"]),
            (f"load: {loaded['requests']} @ {loaded['concurrency']}, errors", loaded["errors"]),
            ("p50 / p95 latency (s)", f"{loaded['p50_s']} / {loaded['p95_s']}"),
            ("RSS warm-up -> after (MiB)", f"{loaded['rss_after_warmup_mib']} -> {loaded['rss_after_run_mib']}"),
            ("RSS after each round (MiB)", " -> ".join(map(str, loaded["rss_after_each_round_mib"]))),
            ("RSS growth in the second half %", loaded["rss_growth_second_half_pct"]),
            ("RSS growth %", loaded["rss_growth_pct"]),
            ("overload 503 + Retry-After", "yes" if report["overload"]["ok"] else "no"),
            ("overload statuses", report["overload"]["statuses"]),
            ("graceful shutdown completes request", "yes" if report["graceful_shutdown"]["completed"] else "no")]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
