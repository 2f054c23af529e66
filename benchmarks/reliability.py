"""Reliability run against a real Uvicorn server on 127.0.0.1 with tiny random Whisper models built in a temp dir.

    .venv/bin/python -m benchmarks.reliability --fuzz 2000 --load 200 --concurrency 16 --out reliability.json

(a) fuzz: seeded junk requests (JSON, bodies, content types, corrupt audio) plus valid ones: counts connection
    errors (crashes), 5xx and 4xx without an "error" message; (b) load: valid short requests at a concurrency,
    p50/p95 latency and the server's RSS growth; (c) overload: a burst beyond MAX_QUEUED_REQUESTS gets 503 with
    Retry-After; (d) SIGTERM during an in-flight request: does it still complete. Hostile clients (issue 15), on a
    server with an API key and MAX_AUDIO_SECONDS=120: (e) slow uploaders, idle sockets and half-sent request heads
    while a valid request must be served; (f) a long request whose client disconnects, and one that times out: how
    soon the worker is free; (g) the window bomb and the raw PCM bomb: statuses, time and RSS. Every loop is bounded.
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
    """`python -m server` (uvicorn with the connection deadlines) in a subprocess, with the tiny model and env vars."""

    def __init__(self, model: Path, log: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "ASR_MODEL": str(model), "ASSISTANT_MODEL": "", "DIARIZATION_MODEL": "",
                       "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **env}
        self.log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT, env=environment, stdout=self.log, stderr=subprocess.STDOUT)

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
        from benchmarks.fixtures import stop  # fixtures loads torch, which this client side needs nowhere else

        stop(self.process, 30)
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
        kind = r.choice(["json_junk", "json_audio", "raw", "content_type", "multipart", "openai", "attack", "valid",
                         "valid"])
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
        if kind == "attack":  # what the outside attack of issue 15 sent
            deep = "[" * r.randint(900, 50_000)
            body = r.choice([f'{{"inputs": "AAAA", "parameters": {deep}}}',
                             f'{{"inputs": "AAAA", "parameters": {{"batch_size": {"9" * r.randint(4301, 9000)}}}}}',
                             json.dumps({"inputs": base64.encodebytes(self.valid).decode(), "parameters": {
                                 "vad": False, "prompt": r.choice(["<|endoftext|>", "<|0.00|> hi", "a <|b|> c"])}}),
                             json.dumps({"inputs": "data:audio/wav;codecs=1;base64," + base64.encodebytes(
                                 self.valid).decode(), "parameters": {"vad": False}}),
                             json.dumps({"inputs": "AAAA", "parameters": {"chunk_length_s": r.choice(
                                 [1e-300, 1e-5, 0.01, 5e-324])}})])
            return path, {"content": body.encode(), "headers": {"Content-Type": "application/json"}}
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
                if isinstance(message, dict):  # OpenAI's shape on /v1 routes
                    message = message.get("message")
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


# --- (e)-(i) hostile clients (issue 15) --------------------------------------------------------------------------

def _held(server: Server) -> int:
    return httpx.get(server.url + "/health", timeout=10).json()["queue"]["held"]


def _post(server: Server, body: bytes, query: str, headers: dict, timeout: float = 600) -> tuple[int, float]:
    started = time.perf_counter()
    try:
        status = httpx.post(server.url + "/" + query, content=body, headers=headers, timeout=timeout).status_code
    except httpx.TransportError:
        status = -1
    return status, round(time.perf_counter() - started, 3)


def _state(conn: socket.socket) -> str:
    """'closed' (the server closed it), 'answered' (it sent something), or 'open'."""
    conn.setblocking(False)
    try:
        data = conn.recv(65536)
    except BlockingIOError:
        return "open"
    except OSError:
        return "closed"
    return "answered" if data else "closed"


def _wait_free(server: Server, limit_s: float) -> float | None:
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        if _held(server) == 0:
            return round(time.perf_counter() - started, 2)
        time.sleep(0.05)
    return None


def slow_clients(server: Server, auth: dict, body: bytes, uploads: int, idle: int, seconds: float) -> dict:
    """`uploads` connections send a request head and then a byte every 2 s, `idle` send nothing and `idle` send
    half a request head; meanwhile a valid request must be served. After `seconds`, how many did the server close."""
    headers = {"Content-Type": "audio/wav", **auth}
    baseline = _post(server, body, "?vad=false", headers)
    head = ("POST /?vad=false HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in auth.items()) + f"Content-Length: {len(body)}\r\n\r\n").encode()
    host, port = "127.0.0.1", server.port
    slow, quiet, half = [], [], []
    for _ in range(uploads):
        slow.append(socket.create_connection((host, port)))
        slow[-1].sendall(head + body[:10])
    for _ in range(idle):
        quiet.append(socket.create_connection((host, port)))
        half.append(socket.create_connection((host, port)))
        half[-1].sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
    time.sleep(1.0)
    held = _held(server)
    during = _post(server, body, "?vad=false", headers)
    deadline, sent = time.monotonic() + seconds, 10
    while time.monotonic() < deadline:
        time.sleep(2.0)
        sent += 1
        for conn in slow:
            try:
                conn.sendall(body[sent:sent + 1])
            except OSError:
                pass
    states = {name: [_state(conn) for conn in conns] for name, conns in
              (("uploads", slow), ("idle", quiet), ("half_head", half))}
    for conn in slow + quiet + half:
        conn.close()
    return {"uploads": uploads, "idle": idle, "seconds": seconds, "queue_held_meanwhile": held,
            "valid_before": {"status": baseline[0], "s": baseline[1]},
            "valid_meanwhile": {"status": during[0], "s": during[1]},
            "still_open": {name: sum(state == "open" for state in found) for name, found in states.items()},
            "ok": during[0] == 200 and held == 0
            and all(state != "open" for found in states.values() for state in found)}


def dropped_and_timed_out(server: Server, auth: dict, long: bytes, short: bytes, query: str, full_s: float) -> dict:
    """A long request whose client disconnects after 1 s, then one that passes REQUEST_TIMEOUT_S: how soon is the
    worker free again (the long one alone takes `full_s`), and how long does the next short request take."""
    headers = {"Content-Type": "audio/wav", **auth}
    conn = socket.create_connection(("127.0.0.1", server.port))
    conn.sendall(f"POST /{query} HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n".encode()
                 + "".join(f"{k}: {v}\r\n" for k, v in auth.items()).encode()
                 + f"Content-Length: {len(long)}\r\n\r\n".encode() + long)
    time.sleep(1.0)
    conn.close()
    dropped = {"freed_after_s": _wait_free(server, 4 * full_s + 30)}
    dropped["next_request"] = dict(zip(("status", "s"), _post(server, short, "?vad=false", headers)))
    timed_out = dict(zip(("status", "s"), _post(server, long, query, headers)))
    timed_out["freed_after_s"] = _wait_free(server, 4 * full_s + 30)
    timed_out["next_request"] = dict(zip(("status", "s"), _post(server, short, "?vad=false", headers)))
    return {"long_request_alone_s": full_s, "disconnect": dropped, "timeout": timed_out,
            "ok": dropped["freed_after_s"] is not None and timed_out["status"] == 504
            and timed_out["freed_after_s"] is not None and dropped["next_request"]["status"] == 200}


def bombs(server: Server, auth: dict, wav: bytes) -> dict:
    """The window bomb (chunk_length_s=1e-300 on each front door) and the raw PCM bomb (4.9 MB at 1 kHz, 2450 s
    against MAX_AUDIO_SECONDS): statuses, seconds to answer, the server's RSS and peak RSS before and after."""
    def memory() -> dict:
        status = Path(f"/proc/{server.process.pid}/status").read_text().splitlines()
        values = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmRSS", "VmHWM"))}
        return {"rss_mib": round(values["VmRSS"] / 1024, 1), "peak_mib": round(values["VmHWM"] / 1024, 1)}

    out: dict = {"memory_before": memory()}
    window = [_post(server, wav, "?chunk_length_s=1e-300&diarization=false", {"Content-Type": "audio/wav", **auth}),
              _post(server, json.dumps({"inputs": base64.b64encode(wav).decode(),
                                        "parameters": {"chunk_length_s": 1e-300}}).encode(), "",
                    {"Content-Type": "application/json", **auth})]
    started = time.perf_counter()
    form = httpx.post(server.url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                      data={"chunk_length_s": "1e-300"}, headers=auth, timeout=120)
    window.append((form.status_code, round(time.perf_counter() - started, 3)))
    out["window_bomb"] = [{"status": status, "s": seconds} for status, seconds in window]
    out["memory_after_window_bomb"] = memory()
    pcm = [_post(server, bytes(4_900_000), "?audio_format=pcm_s16le&sampling_rate=1000&vad=false",
                 {"Content-Type": "application/octet-stream", **auth}) for _ in range(3)]
    out["pcm_bomb"] = [{"status": status, "s": seconds} for status, seconds in pcm]
    out["memory_after_pcm_bomb"] = memory()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:  # declares 1 TB, sends nothing
        conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: 1000000000000\r\n\r\n")
        anonymous = int(conn.recv(65536).split(b" ", 2)[1])
    out["oversized_without_key"] = anonymous
    growth = out["memory_after_pcm_bomb"]["rss_mib"] - out["memory_before"]["rss_mib"]
    out["rss_growth_mib"] = round(growth, 1)
    out["ok"] = all(r["status"] == 422 for r in out["window_bomb"]) and all(
        r["status"] == 413 for r in out["pcm_bomb"]) and growth < 100 and anonymous == 401
    return out


# --- main -------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fuzz", type=int, default=2000, help="junk + valid requests to send (a)")
    parser.add_argument("--load", type=int, default=200, help="valid requests of the load test (b)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent requests of the load test")
    parser.add_argument("--burst", type=int, default=12, help="concurrent requests of the overload test (c)")
    parser.add_argument("--slow-uploads", type=int, default=16, help="slow uploaders of the slow-client test (e)")
    parser.add_argument("--idle", type=int, default=50, help="idle and half-head sockets each, test (e)")
    parser.add_argument("--slow-seconds", type=float, default=8.0, help="how long the slow uploaders keep trickling")
    parser.add_argument("--long-windows", type=int, default=16,
                        help="one-second windows of the long request that disconnects / times out (f), at most 64")
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
        window_audio = encode(tone(args.long_windows), 16000, "wav", "pcm_s16le")  # one-second windows, one a batch
        window_query = "?vad=false&chunk_length_s=1&batch_size=1"

        server = Server(model, tmp_path / "server.log")
        try:
            server.wait_ready()
            report["fuzz"] = fuzz(server.url, args.fuzz, args.seed, encoded, short)
            report["load"] = load(server, args.load, args.concurrency, short)

            started = time.perf_counter()
            long_request = httpx.post(server.url + "/" + window_query, content=window_audio,
                                      headers={"Content-Type": "audio/wav"}, timeout=900)
            full_s = round(time.perf_counter() - started, 2)
            assert long_request.status_code == 200, long_request.text[:300]
        finally:
            server.stop()
            report["server_log_tail"] = (tmp_path / "server.log").read_text(errors="replace")[-2000:]

        # the attack's settings: a key, 120 s of audio at most, and short deadlines so every wait stays short
        key = "sk-reliability-0123456789"
        hostile = Server(model, tmp_path / "hostile.log", API_KEY=key, MAX_AUDIO_SECONDS="120",
                         REQUEST_TIMEOUT_S=str(max(1.0, full_s / 3)), HEADER_TIMEOUT_S="3", UPLOAD_GRACE_S="3",
                         MAX_CONCURRENT_REQUESTS="8", MAX_QUEUED_REQUESTS="8")
        auth = {"Authorization": f"Bearer {key}"}
        try:
            hostile.wait_ready()
            report["slow_clients"] = slow_clients(hostile, auth, short, args.slow_uploads, args.idle,
                                                  args.slow_seconds)
            report["cancellation"] = dropped_and_timed_out(hostile, auth, window_audio, short, window_query, full_s)
            report["bombs"] = bombs(hostile, auth, short)
            hostile_log = (tmp_path / "hostile.log").read_text(errors="replace")
            report["hostile_log"] = {"lines": len(hostile_log.splitlines()), "tracebacks": hostile_log.count(
                "Traceback"), "errors": hostile_log.count("ERROR"), "key_logged": key in hostile_log}
        finally:
            hostile.stop()

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
    slow, cancel, bomb = report["slow_clients"], report["cancellation"], report["bombs"]
    rows += [(f"slow clients: {slow['uploads']} uploads, {slow['idle']} idle + {slow['idle']} half heads, queue held",
              slow["queue_held_meanwhile"]),
             ("valid request before / meanwhile (status, s)",
              f"{slow['valid_before']['status']} {slow['valid_before']['s']} / "
              f"{slow['valid_meanwhile']['status']} {slow['valid_meanwhile']['s']}"),
             (f"still open after {slow['seconds']:g} s (uploads, idle, half heads)",
              " / ".join(str(v) for v in slow["still_open"].values())),
             ("long request alone (s)", cancel["long_request_alone_s"]),
             ("disconnect after 1 s: worker free after (s), next request (s)",
              f"{cancel['disconnect']['freed_after_s']}, {cancel['disconnect']['next_request']['s']}"),
             ("timeout: status, worker free after (s), next request (s)",
              f"{cancel['timeout']['status']}, {cancel['timeout']['freed_after_s']}, "
              f"{cancel['timeout']['next_request']['s']}"),
             ("window bomb statuses (s)", ", ".join(f"{r['status']} ({r['s']})" for r in bomb["window_bomb"])),
             ("PCM bomb statuses (s)", ", ".join(f"{r['status']} ({r['s']})" for r in bomb["pcm_bomb"])),
             ("RSS / peak before -> after bombs (MiB)",
              f"{bomb['memory_before']['rss_mib']} / {bomb['memory_before']['peak_mib']} -> "
              f"{bomb['memory_after_pcm_bomb']['rss_mib']} / {bomb['memory_after_pcm_bomb']['peak_mib']}"),
             ("oversized Content-Length without key", bomb["oversized_without_key"]),
             ("hostile log: tracebacks, ERROR lines, key logged",
              f"{report['hostile_log']['tracebacks']}, {report['hostile_log']['errors']}, "
              f"{report['hostile_log']['key_logged']}"),
             ("hostile scenarios ok", all(report[name]["ok"] for name in ("slow_clients", "cancellation", "bombs")))]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
