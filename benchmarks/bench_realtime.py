"""Live transcription latency: N simulated realtime sessions at real-time pace, and SSE's time to first delta.

    python -m benchmarks.bench_realtime [--sessions 1,4] [--utterances 3] [--stagger 0] [--sse-minutes 5]
        [--url http://127.0.0.1:8000] [--out benchmarks/results/bench_realtime.json]

Without `--url` it starts `uvicorn server:app` on 127.0.0.1 (a free port) with the offline whisper-base, no
assistant and no diarization, and stops it at the end. Each session is a `websockets` client that sends 100 ms of
PCM16 at 24 kHz every 100 ms: 1 s of silence, then utterances of speech cut from samples/sample.flac (10.5 s, then
15 s, alternating) with 2 s of silence after each. Per utterance it reports, from the wall-clock moment the client
had sent the audio in question:

- completed after speech end: the `completed` event after the last speech sample (it includes the 500 ms of silence
  server VAD waits for);
- completed after VAD end: the same after `audio_end_ms` of `speech_stopped` (the end of the audio the server
  commits);
- first delta after speech start.

SSE: a `--sse-minutes` file (the sample, repeated) posted with `stream=true`; time to the first
`transcript.text.delta`, to `transcript.text.done`, the same file without streaming, and one 30 s window alone
(`vad=false`: one window, a batch of one). Every number is printed and `--out` writes them as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import av
import httpx
import numpy as np

from audio import SAMPLE_RATE, decode_audio
from benchmarks.fixtures import MODELS, ROOT, encode
from benchmarks.reliability import Server

SAMPLE = ROOT / "samples" / "sample.flac"
STEP_S = 0.1  # seconds of audio per append, sent every STEP_S


def session_audio(utterances: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Silence and utterances of speech (10.5 s and 15 s in turn); returns the audio and each utterance's speech
    (start, end) in seconds."""
    speech = decode_audio(SAMPLE.read_bytes())
    regions_speech = {10: speech, 15: np.concatenate([speech, speech[:int(4.5 * SAMPLE_RATE)]])}
    pieces, spans, at = [np.zeros(SAMPLE_RATE, np.float32)], [], 1.0
    for number in range(utterances):
        clip = regions_speech[10 if number % 2 == 0 else 15]
        pieces += [clip, np.zeros(2 * SAMPLE_RATE, np.float32)]
        spans.append((at, at + len(clip) / SAMPLE_RATE))
        at += len(clip) / SAMPLE_RATE + 2.0
    return np.concatenate(pieces), spans


def pcm24(audio: np.ndarray) -> bytes:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=24000)
    frame = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="flt", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    return b"".join(out.to_ndarray()[0].astype("<i2").tobytes()
                    for out in resampler.resample(frame) + resampler.resample(None))


async def live_session(url: str, audio: np.ndarray, spans: list[tuple[float, float]], delay: float = 0.0
                       ) -> list[dict]:
    import websockets

    await asyncio.sleep(delay)
    data, step = pcm24(audio), int(24000 * STEP_S) * 2
    sent_at: list[float] = []  # wall time at which the audio up to (i + 1) * STEP_S had been sent
    events: list[tuple[float, dict]] = []
    async with websockets.connect(url.replace("http", "ws", 1) + "/v1/realtime?intent=transcription",
                                  max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"transcription": {"model": "whisper-1", "language": "en"}}}}}))
        await ws.recv()

        async def send() -> None:
            started = time.monotonic()
            for index, start in enumerate(range(0, len(data), step)):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(data[start:start + step]).decode()}))
                sent_at.append(time.monotonic())
                await asyncio.sleep(max(0.0, started + (index + 1) * STEP_S - time.monotonic()))

        async def receive() -> None:
            async for message in ws:
                events.append((time.monotonic(), json.loads(message)))
                committed = {e["item_id"] for _, e in events if e["type"] == "input_audio_buffer.committed"}
                completed = {e["item_id"] for _, e in events if e["type"].endswith("transcription.completed")}
                if sending.done() and committed and committed <= completed:
                    return

        sending = asyncio.ensure_future(send())
        await asyncio.wait_for(asyncio.gather(sending, receive()), len(audio) / SAMPLE_RATE + 300)

    def sent(seconds: float) -> float:
        return sent_at[min(len(sent_at) - 1, max(0, int(np.ceil(seconds / STEP_S)) - 1))]

    starts = {e["item_id"]: e["audio_start_ms"] / 1000 for _, e in events
              if e["type"] == "input_audio_buffer.speech_started"}
    ends = {e["item_id"]: e["audio_end_ms"] / 1000 for _, e in events
            if e["type"] == "input_audio_buffer.speech_stopped"}
    out = []
    for start, end in spans:
        # the items server VAD cut this utterance into (one, unless it heard a pause of 500 ms in it)
        items = [item for item, at in starts.items() if start - 1.0 <= at < end]
        if not items:
            out.append({"utterance": [start, end], "missed": True})
            continue
        done = [t for t, e in events if e["type"].endswith("transcription.completed") and e["item_id"] == items[-1]]
        deltas = [t for t, e in events if e["type"].endswith("transcription.delta") and e["item_id"] == items[0]]
        texts = [e["transcript"] for _, e in events if e["type"].endswith("transcription.completed")
                 and e["item_id"] in items]
        out.append({"utterance": [round(start, 2), round(end, 2)], "items": len(items), "text": " ".join(texts),
                    "completed_after_speech_end_s": round(done[0] - sent(end), 3) if done else None,
                    "completed_after_vad_end_s": round(done[0] - sent(ends[items[-1]]), 3)
                    if done and items[-1] in ends else None,
                    "first_delta_after_start_s": round(deltas[0] - sent(start), 3) if deltas else None})
    return out


def realtime(url: str, sessions: int, utterances: int, stagger: float = 0.0) -> dict:
    audio, spans = session_audio(utterances)

    async def all_sessions() -> list[list[dict]]:
        return await asyncio.gather(*(live_session(url, audio, spans, index * stagger) for index in range(sessions)))

    results = [u for session in asyncio.run(all_sessions()) for u in session]

    def median(key: str, long_only: bool = False) -> float | None:
        values = [u[key] for u in results if u.get(key) is not None
                  and (not long_only or u["utterance"][1] - u["utterance"][0] > 12)]
        return round(statistics.median(values), 3) if values else None

    def spread(key: str) -> list[float] | None:
        values = [u[key] for u in results if u.get(key) is not None]
        return [round(min(values), 3), round(max(values), 3)] if values else None

    return {"sessions": sessions, "stagger_s": stagger, "utterances": results,
            "median_completed_after_speech_end_s": median("completed_after_speech_end_s"),
            "range_completed_after_speech_end_s": spread("completed_after_speech_end_s"),
            "median_completed_after_vad_end_s": median("completed_after_vad_end_s"),
            "range_completed_after_vad_end_s": spread("completed_after_vad_end_s"),
            "median_first_delta_15s_utterance_s": median("first_delta_after_start_s", long_only=True),
            "range_first_delta_s": spread("first_delta_after_start_s")}


def sse(url: str, minutes: float) -> dict:
    speech = decode_audio(SAMPLE.read_bytes())
    pause = np.zeros(SAMPLE_RATE, np.float32)
    unit = np.concatenate([speech, pause])
    audio = np.tile(unit, int(np.ceil(minutes * 60 * SAMPLE_RATE / len(unit))))[:int(minutes * 60 * SAMPLE_RATE)]
    wav = encode(audio, SAMPLE_RATE, "wav", "pcm_s16le")
    window = encode(audio[:30 * SAMPLE_RATE], SAMPLE_RATE, "wav", "pcm_s16le")
    fields = {"model": "whisper-1", "language": "en"}
    with httpx.Client(base_url=url, timeout=1800) as http:
        started = time.perf_counter()
        one_window = http.post("/v1/audio/transcriptions", files={"file": ("w.wav", window)},
                               data={**fields, "vad": "false"})
        one_window.raise_for_status()
        one_window_s = time.perf_counter() - started
        started, first, deltas = time.perf_counter(), None, 0
        with http.stream("POST", "/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                         data={**fields, "stream": "true"}) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line.removeprefix("data: "))
                if event["type"] == "transcript.text.delta":
                    deltas += 1
                    first = first or time.perf_counter() - started
                elif event["type"] == "transcript.text.done":
                    done_text = event["text"]
        streamed_s = time.perf_counter() - started
        started = time.perf_counter()
        plain = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data=fields)
        plain.raise_for_status()
        plain_s = time.perf_counter() - started
    return {"audio_s": round(len(audio) / SAMPLE_RATE, 1), "deltas": deltas,
            "first_delta_s": round(first, 3) if first else None, "stream_done_s": round(streamed_s, 3),
            "plain_s": round(plain_s, 3), "one_30s_window_s": round(one_window_s, 3),
            "first_delta_over_one_window": round(first / one_window_s, 2) if first else None,
            "done_text_equals_plain": done_text == plain.json()["text"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server; default: start one on 127.0.0.1")
    parser.add_argument("--sessions", default="1,4", help="comma-separated concurrent session counts, run in turn")
    parser.add_argument("--utterances", type=int, default=3, help="utterances per session")
    parser.add_argument("--stagger", type=float, default=0.0,
                        help="seconds between the sessions' starts (0: all speak and stop at once, the worst case)")
    parser.add_argument("--sse-minutes", type=float, default=5.0, help="0 skips the SSE measure")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    server = None
    if args.url is None:
        log = Path(tempfile.mkdtemp()) / "server.log"
        server = Server(MODELS / "whisper-base", log)
        server.wait_ready()
    url = args.url or server.url
    try:
        report: dict = {"load_average_before": os.getloadavg()[0], "realtime": [], "sse": None}
        for count in [int(x) for x in args.sessions.split(",")]:
            result = realtime(url, count, args.utterances, args.stagger)
            report["realtime"].append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "utterances"}))
        if args.sse_minutes > 0:
            report["sse"] = sse(url, args.sse_minutes)
            print(json.dumps(report["sse"]))
        report["load_average_after"] = os.getloadavg()[0]
    finally:
        if server is not None:
            server.stop()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
