"""Admission to the pipeline: settings and limits of the server, the request queue, and the worker threads that run
transcriptions off the event loop (speaches' dependencies, kept apart from the routes in server.py)."""

from __future__ import annotations

import asyncio
import ctypes
import hmac
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

import metrics
from config import ModelSettings
from errors import Cancelled, RequestError, empty_is_none, redact
from speech_pipeline import SpeechPipeline

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ServerSettings(BaseSettings):
    """Access and limits of the HTTP server, read from env vars (API_KEY, MAX_UPLOAD_BYTES, ...)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    api_key: SecretStr | None = Field(None, description="when set, inference routes need `Authorization: Bearer <key>`")
    max_upload_bytes: int = Field(200 * 2**20, ge=1, description="a larger request body is refused with 413")
    max_concurrent_requests: int = Field(
        8, ge=1, le=64, description="requests in the pipeline at once; their windows share forward passes")
    max_queued_requests: int = Field(8, ge=0, description="requests waiting for a worker; more get 503")
    request_timeout_s: float = Field(
        900.0, gt=0, description="queue wait + transcription, from when the body has arrived; then 504")
    retry_after_s: int = Field(5, ge=1, description="Retry-After header of 503 answers")
    upload_min_bytes_per_s: float = Field(
        16384, gt=0, description="after UPLOAD_GRACE_S an upload must average at least this rate, else 408")
    upload_grace_s: float = Field(10.0, gt=0, description="seconds an upload may take before the rate counts")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection's request head must arrive whole within this; else it is closed")
    keep_alive_s: int = Field(5, ge=1, description="an idle keep-alive connection is closed after this")

    _empty_is_none = field_validator("api_key", mode="before")(empty_is_none)


class ServiceError(RequestError):
    """An answer in the RequestError shape that carries HTTP headers or is not the client's fault (500/503/504)."""

    def __init__(self, message: str, status: int, headers: dict[str, str] | None = None, field: str | None = None):
        super().__init__(message, status, field)
        self.headers = headers or {}


class Ticket:
    """A request's place in the queue; freed when its transcription thread ends (or the request does without one)."""

    def __init__(self, queue: InferenceQueue):
        self._queue, self._freed, self.handed_off, self.started = queue, False, False, False
        self.admitted = time.perf_counter()
        metrics.QUEUED.inc()

    def start(self) -> None:
        """On the worker thread, as the transcription begins."""
        self.started = True
        metrics.QUEUED.dec()
        metrics.QUEUE_WAIT.observe(time.perf_counter() - self.admitted)

    def free(self) -> None:
        with self._queue.lock:
            if not self._freed:
                self._freed = True
                self._queue.held -= 1
                if not self.started:
                    metrics.QUEUED.dec()


class InferenceQueue:
    """FIFO worker threads off the event loop, and admission of at most workers + waiting requests at once.

    A place is taken once the request's body has arrived (a slow upload holds none) and held until the
    transcription thread ends: a timed-out or disconnected request's transcription stops at its next check
    (between batches and decoding steps, stages and diarization batches) and holds its place until then.
    """

    def __init__(self, workers: int, waiting: int):
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="transcribe")
        self.capacity, self.held, self.lock = workers + waiting, 0, threading.Lock()

    def admit(self, retry_after_s: int) -> Ticket:
        with self.lock:
            self.check_room(retry_after_s)
            self.held += 1
        return Ticket(self)

    def check_room(self, retry_after_s: int) -> None:
        """503 when every place is held: said before an upload, and again when the body has arrived."""
        if self.held >= self.capacity:
            raise ServiceError(f"the server is busy ({self.held} requests running or queued): retry later", 503,
                               {"Retry-After": str(retry_after_s)})

    async def submit(self, ticket: Ticket, job: Callable[[], T]) -> T:
        future = self._executor.submit(job)
        ticket.handed_off = True
        future.add_done_callback(lambda _: ticket.free())  # runs on completion and on cancel before start
        return await asyncio.wrap_future(future)  # cancelling this (timeout) cancels a job not yet started

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Service:
    """What the routes share: the pipeline (None while loading), settings and the queue."""

    def __init__(self, settings: ServerSettings, pipeline: SpeechPipeline | None):
        self.settings, self.pipeline, self.failed = settings, pipeline, False
        self.started = int(time.time())  # the `created` of the models /v1/models lists
        self.queue = InferenceQueue(settings.max_concurrent_requests, settings.max_queued_requests)
        self._loading = False

    def start_loading(self) -> None:
        if self.pipeline is None and not self._loading:
            self._loading = True
            threading.Thread(target=self._load, name="model-loader", daemon=True).start()

    def _load(self) -> None:
        settings = ModelSettings()
        try:
            self.pipeline = SpeechPipeline(settings)
        except Exception as error:  # keep serving /health with the failure; the log says why
            self.failed = True
            logger.error("could not load the models: %s", redact(str(error), settings.token()))

    def model_info(self) -> dict[str, Any]:
        pipeline = self.pipeline
        settings = pipeline.settings
        return {"asr_model": settings.asr_model,
                "assistant_model": settings.assistant_model if pipeline.assistant_kwargs else None,
                "diarization_model": settings.diarization_model if pipeline.diarizer is not None else None,
                "multilingual": pipeline.multilingual, "device": str(pipeline.device),
                "dtype": "int8" if getattr(getattr(pipeline, "whisper", None), "quantized", False)  # fp32 loaded, then int8
                else str(pipeline.dtype).removeprefix("torch."), "max_audio_seconds": settings.max_audio_seconds}

    def authorize(self, header: str | None) -> None:
        if self.settings.api_key is None:
            return
        scheme, _, given = (header or "").partition(" ")
        expected = self.settings.api_key.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise ServiceError("missing or wrong API key: send the header Authorization: Bearer <API_KEY>", 401,
                               {"WWW-Authenticate": "Bearer"})

    def ready(self) -> SpeechPipeline:
        if self.pipeline is None:
            state = "could not be loaded (see the server log)" if self.failed else "are loading"
            raise ServiceError(f"the models {state}: retry later", 503,
                               {} if self.failed else {"Retry-After": str(self.settings.retry_after_s)})
        return self.pipeline

    async def execute(self, request: Request, job: Callable[[threading.Event], T]) -> T:
        """Take a queue place and run `job(cancel)` on a worker thread; a model failure becomes a 500. Call it once
        the body has arrived. When the request ends first (REQUEST_TIMEOUT_S, the client disconnects), `cancel` is
        set and the transcription stops at its next check."""
        cancel = threading.Event()
        ticket = self.queue.admit(self.settings.retry_after_s)

        def guarded() -> T:
            started = time.perf_counter()
            ticket.start()
            try:
                with metrics.IN_FLIGHT.track_inprogress():
                    result = job(cancel)
            except Cancelled:
                logger.info("%s %s given up after %.2f s: transcription stopped", request.method, request.url.path,
                            time.perf_counter() - started)
                raise
            except RequestError:
                raise
            except Exception as error:  # the trace goes to the log only; the server keeps serving
                logger.exception("transcription failed")
                raise ServiceError(f"transcription failed ({type(error).__name__}): see the server log", 500) from None
            finally:
                _release_freed_memory()
            logger.info("%s %s served in %.2f s", request.method, request.url.path, time.perf_counter() - started)
            return result

        work = asyncio.ensure_future(self.queue.submit(ticket, guarded))
        watcher = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({work, watcher}, timeout=self.settings.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                return work.result()
            if watcher in done:
                raise ClientGone()
            raise ServiceError(f"the request took longer than {self.settings.request_timeout_s:g} s "
                               "(REQUEST_TIMEOUT_S)", 504)
        finally:
            cancel.set()  # a no-op once the job is done
            for task in (work, watcher):
                task.cancel()  # a job not yet started never starts
            if not ticket.handed_off:
                ticket.free()


class ClientGone(Exception):
    """The client disconnected before its answer: nobody reads a response, the log gets one line."""


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects: with the body read, the next ASGI message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc (macOS, musl): nothing to trim
    _LIBC = None


def _release_freed_memory() -> None:
    """glibc keeps what a request freed in per-thread arenas; trimming hands it back, so RSS tracks live memory."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def service_of(request: Request) -> Service:
    return request.app.state.service


class InferenceRoute(APIRoute):
    """Checks the API key, then the declared body size, the model state and that the queue has room, before the body
    is read; the queue place itself is taken once the body has arrived (`Service.execute`)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            service = service_of(request)
            service.authorize(request.headers.get("authorization"))  # first: strangers learn no limits
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > service.settings.max_upload_bytes:
                raise ServiceError(_too_large(service.settings.max_upload_bytes), 413, {"Connection": "close"})
            service.ready()
            service.queue.check_room(service.settings.retry_after_s)  # no upload only to hear "busy"
            return await handler(request)

        return guarded


def _too_large(max_bytes: int) -> str:
    return f"the request body is larger than {max_bytes} bytes (MAX_UPLOAD_BYTES)"


class BodyLimit:
    """Bounds every request body as it streams in: 413 past `max_bytes`, and 408 for an upload that, after
    `grace_s`, averages under `min_rate` bytes a second (a slow client holds a connection, never a queue place)."""

    def __init__(self, app: ASGIApp, max_bytes: int, min_rate: float = 16384, grace_s: float = 10.0):
        self.app, self.max_bytes, self.min_rate, self.grace_s = app, max_bytes, min_rate, grace_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, received, complete = time.monotonic(), 0, False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: what comes next is the disconnect, whenever it comes
                return await receive()
            deadline = started + self.grace_s + received / self.min_rate
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                event = await receive()
                if event["type"] == "http.request":
                    received += len(event.get("body", b""))
                    complete = not event.get("more_body", False)
                if received > self.max_bytes:
                    raise HTTPException(413, _too_large(self.max_bytes), {"Connection": "close"})
                return event  # FastAPI's body parsing re-raises HTTPExceptions as they are
            raise HTTPException(408, f"the upload was too slow: {received} bytes in {time.monotonic() - started:.0f} "
                                     f"s, under {self.min_rate:g} bytes/s after {self.grace_s:g} s "
                                     "(UPLOAD_MIN_BYTES_PER_S, UPLOAD_GRACE_S)", {"Connection": "close"})

        await self.app(scope, limited_receive, send)
