"""Prometheus metrics (prometheus-client) of the server and the pipeline, exposed on the server's /metrics.

The pipeline, the queue and the routes call these module-level metrics; the Inference Endpoints handler counts
too but exposes nothing (the toolkit has no /metrics).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

REQUESTS = Counter("whisper_http_requests", "HTTP requests by method, route and status", ["method", "route", "status"])
LATENCY = Histogram("whisper_http_request_seconds", "HTTP request latency, upload to answer", ["route"],
                    buckets=_SECONDS)
QUEUE_WAIT = Histogram("whisper_queue_wait_seconds", "time from admission to a worker starting the transcription",
                       buckets=_SECONDS)
IN_FLIGHT = Gauge("whisper_requests_in_flight", "requests being transcribed by a worker")
QUEUED = Gauge("whisper_requests_queued", "requests holding a queue place (body received) and not yet on a worker")
AUDIO_SECONDS = Counter("whisper_audio_seconds", "seconds of audio transcribed")
REAL_TIME_FACTOR = Histogram("whisper_real_time_factor", "transcription time / audio duration per transcription",
                             buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 5))
BATCH_WINDOWS = Histogram("whisper_batch_windows", "speech windows per forward pass",
                          buckets=(1, 2, 4, 8, 16, 24, 32, 64, 128, 256))
WINDOWS = Counter("whisper_windows_decoded", "speech windows decoded")
FALLBACKS = Counter("whisper_fallbacks", "windows decoded again at a higher temperature (decoding fallback)")
MODEL_LOAD_SECONDS = Gauge("whisper_model_load_seconds", "seconds each model took to load", ["model"])


def observe_transcription(audio_seconds: float, elapsed: float) -> None:
    AUDIO_SECONDS.inc(audio_seconds)
    if audio_seconds > 0:
        REAL_TIME_FACTOR.observe(elapsed / audio_seconds)


def observe_batch(windows: int, batch_size: int) -> None:
    """One `forward` call: the ASR pipeline runs its windows in passes of `batch_size`."""
    for first in range(0, windows, max(1, batch_size)):
        BATCH_WINDOWS.observe(min(batch_size, windows - first))
    WINDOWS.inc(windows)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class RequestMetrics:
    """Counts every HTTP request by its route template (not the raw path: bounded label values) and status."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500  # an exception that escapes becomes a 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route: Any = scope.get("route")  # FastAPI's matched route; none for 404s and mounted files
            path = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], path, str(status)).inc()
            LATENCY.labels(path).observe(time.perf_counter() - started)
