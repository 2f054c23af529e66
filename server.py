"""Self-hosted HTTP server: the Inference Endpoints contract and OpenAI-compatible audio routes on one pipeline.

    .venv/bin/python -m uvicorn server:app --host 127.0.0.1 --port 8000

Models come from the same env vars as the handler (`ModelSettings`); limits and the API key from `ServerSettings`.
"""

from __future__ import annotations

import asyncio
import ctypes
import hmac
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, AsyncIterator, Callable, Literal, TypeVar

import anyio
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.datastructures import Headers, UploadFile as StarletteUpload
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config import Cancelled, InferenceConfig, ModelSettings, RequestError, redact
from formats import ResponseFormat, render
from speech_pipeline import SpeechPipeline

logger = logging.getLogger(__name__)
T = TypeVar("T")
MEDIA_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}
_OPENAI_FIELDS = {"task", "language", "prompt", "return_timestamps"}  # set from the OpenAI form fields and the route


class ServerSettings(BaseSettings):
    """Access and limits of the HTTP server, read from env vars (API_KEY, MAX_UPLOAD_BYTES, ...)."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    api_key: SecretStr | None = Field(None, description="when set, inference routes need `Authorization: Bearer <key>`")
    max_upload_bytes: int = Field(200 * 2**20, ge=1, description="a larger request body is refused with 413")
    max_concurrent_requests: int = Field(
        8, ge=1, le=64, description="requests in the pipeline at once; their windows share forward passes")
    max_queued_requests: int = Field(8, ge=0, description="requests waiting for a worker; more get 503")
    request_timeout_s: float = Field(900.0, gt=0, description="upload + queue wait + transcription; then 504")
    retry_after_s: int = Field(5, ge=1, description="Retry-After header of 503 answers")

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


class ServiceError(RequestError):
    """An answer in the RequestError shape that carries HTTP headers or is not the client's fault (500/503/504)."""

    def __init__(self, message: str, status: int, headers: dict[str, str] | None = None, field: str | None = None):
        super().__init__(message, status, field)
        self.headers = headers or {}


class Ticket:
    """A request's place in the queue; freed when its transcription thread ends (or the request does without one)."""

    def __init__(self, queue: InferenceQueue):
        self._queue, self._freed, self.handed_off = queue, False, False

    def free(self) -> None:
        with self._queue.lock:
            if not self._freed:
                self._freed = True
                self._queue.held -= 1


class InferenceQueue:
    """FIFO worker threads off the event loop, and admission of at most workers + waiting requests at once.

    A place is held from admission until the transcription thread ends: a timed-out transcription stops at its
    next check (between decoding steps, stages and diarization batches) and holds its place until then.
    """

    def __init__(self, workers: int, waiting: int):
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="transcribe")
        self.capacity, self.held, self.lock = workers + waiting, 0, threading.Lock()

    def admit(self, retry_after_s: int) -> Ticket:
        with self.lock:
            if self.held >= self.capacity:
                raise ServiceError(f"the server is busy ({self.held} requests running or queued): retry later",
                                   503, {"Retry-After": str(retry_after_s)})
            self.held += 1
        return Ticket(self)

    async def run(self, ticket: Ticket, job: Callable[[], T]) -> T:
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
                "dtype": str(pipeline.dtype).removeprefix("torch."), "max_audio_seconds": settings.max_audio_seconds}

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

    async def run(self, request: Request, job: Callable[[threading.Event], T]) -> T:
        """Run `job(cancel)` on a worker thread in the request's queue place; a model failure becomes a 500.
        When the request ends first (timeout, disconnect), `cancel` is set and the transcription stops early."""
        cancel = threading.Event()

        def guarded() -> T:
            started = time.perf_counter()
            try:
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

        try:
            return await self.queue.run(request.state.ticket, guarded)
        finally:
            cancel.set()  # a no-op once the job is done


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc (macOS, musl): nothing to trim
    _LIBC = None


def _release_freed_memory() -> None:
    """glibc keeps what a request freed in per-thread arenas; trimming hands it back, so RSS tracks live memory."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _service(request: Request) -> Service:
    return request.app.state.service


class InferenceRoute(APIRoute):
    """Checks the API key, the model state and a queue place before the body is read; times the whole request."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            service = _service(request)
            service.authorize(request.headers.get("authorization"))
            service.ready()
            request.state.ticket = ticket = service.queue.admit(service.settings.retry_after_s)
            try:
                with anyio.fail_after(service.settings.request_timeout_s):
                    return await handler(request)
            except TimeoutError:
                raise ServiceError(f"the request took longer than {service.settings.request_timeout_s:g} s "
                                   "(REQUEST_TIMEOUT_S)", 504) from None
            finally:
                if not ticket.handed_off:
                    ticket.free()

        return guarded


class BodyLimit:
    """413 for a body over `max_bytes`: from Content-Length before reading, else as soon as the stream passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body is larger than {self.max_bytes} bytes (MAX_UPLOAD_BYTES)"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _error_response(RequestError(message, 413))(scope, receive, send)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            event = await receive()
            received += len(event.get("body", b"")) if event["type"] == "http.request" else 0
            if received > self.max_bytes:
                raise HTTPException(413, message)  # FastAPI's body parsing re-raises HTTPExceptions as they are
            return event

        await self.app(scope, limited_receive, send)


def _error_response(error: RequestError) -> JSONResponse:
    return JSONResponse(error.to_dict(), error.status, headers=getattr(error, "headers", None))


async def _request_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestError)
    return _error_response(error)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's own validation (form fields) in the RequestError shape, naming the first bad field."""
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    field = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "header", "path") else loc) or "body"
    message = first["msg"].removeprefix("Value error, ")
    return _error_response(RequestError(f"invalid parameter {field}: {message}", 422, field))


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": str(error.detail)}, error.status_code, headers=error.headers)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.error("unexpected error on %s %s: %r", request.method, request.url.path, error)
    return JSONResponse({"error": "internal server error"}, 500)


# Documents the Bearer scheme in OpenAPI; the check itself runs in InferenceRoute, before the body is read.
_bearer = HTTPBearer(auto_error=False, description="the server's API_KEY, when one is set")
inference = APIRouter(route_class=InferenceRoute, dependencies=[Depends(_bearer)])

_PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
        "inputs": {"type": "string", "description": "base64 audio (a data: URI prefix is accepted)"},
        "parameters": InferenceConfig.model_json_schema()}}},
    "audio/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "parameters": {"type": "string", "description": "parameters as a JSON object"}}}},
}}}


@inference.post("/", summary="Transcribe (Inference Endpoints contract)", openapi_extra=_PREDICT_BODY,
                description="JSON `{inputs: base64, parameters}`, a raw audio body, or multipart `file` + "
                            "`parameters`; parameters may also come in the query string (the body's win).")
@inference.post("/predict", summary="Transcribe (Inference Endpoints contract)", openapi_extra=_PREDICT_BODY)
async def predict(request: Request) -> JSONResponse:
    pipeline = _service(request).ready()
    query: dict[str, Any] = dict(request.query_params)
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, StarletteUpload):  # request.form() gives Starlette's class
            raise RequestError("send the audio in a multipart field named 'file'", field="file")
        fields = {key: value for key, value in form.items() if isinstance(value, str) and key != "parameters"}
        body, raw_parameters = await upload.read(), form.get("parameters")

        def data() -> Any:
            parameters = _json(raw_parameters, "parameters", "parameters") if raw_parameters else {}
            return {"inputs": body, "parameters": _merged(parameters, {**query, **fields})}
    elif media == "application/json" or media.endswith("+json"):
        body = await request.body()

        def data() -> Any:
            request_data = _json(body, "the request body")
            if isinstance(request_data, dict) and query:
                request_data = {**request_data, "parameters": _merged(request_data.get("parameters"), query)}
            return request_data
    elif media in ("", "application/octet-stream") or media.startswith(("audio/", "video/")):
        body = await request.body()  # huggingface_hub sends raw bytes without a Content-Type

        def data() -> Any:
            return {"inputs": body, "parameters": query}
    else:
        raise RequestError(f"unsupported Content-Type {media!r}: send application/json, audio/* or "
                           "multipart/form-data", 415, "Content-Type")
    return JSONResponse(await _service(request).run(request, lambda cancel: pipeline.run(data(), cancel)))


def _json(text: str | bytes, what: str, field: str | None = None) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(f"{what} is not valid JSON: {error}", field=field) from None


def _merged(parameters: Any, defaults: dict[str, Any]) -> Any:
    """Query-string/form parameters under the body's; a non-object is left for InferenceConfig to refuse."""
    if parameters is None:
        return defaults
    return {**defaults, **parameters} if isinstance(parameters, dict) else parameters


@dataclass
class OpenAIRequest:
    """The fields of OpenAI's audio transcription/translation form (validated by FastAPI in `openai_form`)."""

    file: UploadFile
    model: str
    language: str | None
    prompt: str | None
    response_format: ResponseFormat
    temperature: float
    timestamp_granularities: list[Literal["segment", "word"]]
    stream: bool


def openai_form(
    file: Annotated[UploadFile, File(description="audio in any container FFmpeg reads")],
    model: Annotated[str, Form(description="accepted for compatibility; the server's ASR_MODEL answers")] = "whisper-1",
    language: Annotated[str | None, Form(max_length=32, description="ISO-639-1 code; detected when absent")] = None,
    prompt: Annotated[str | None, Form(max_length=4000, description="text before the audio (names, terms, style) "
                                       "that Whisper continues from; only its last 223 tokens count")] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0, le=1, description="accepted; decoding is greedy (temperature 0)")] = 0,
    timestamp_granularities: Annotated[list[Literal["segment", "word"]] | None,
                                       Form(alias="timestamp_granularities[]")] = None,
    stream: Annotated[bool, Form(description="streaming is not supported")] = False,
) -> OpenAIRequest:
    return OpenAIRequest(file=file, model=model, language=language, prompt=prompt, response_format=response_format,
                         temperature=temperature, timestamp_granularities=timestamp_granularities or ["segment"],
                         stream=stream)


_OPENAI_DESCRIPTION = ("OpenAI-compatible multipart form. Extra form fields named like the Inference Endpoints "
                       "parameters (`vad`, `batch_size`, `num_beams`, `chunk_length_s`, `assisted`, `num_speakers`, "
                       "...) are applied too.")


@inference.post("/v1/audio/transcriptions", summary="Transcribe (OpenAI-compatible)", description=_OPENAI_DESCRIPTION)
async def transcriptions(request: Request, form: Annotated[OpenAIRequest, Depends(openai_form)]) -> Response:
    return await _openai(request, form, "transcribe")


@inference.post("/v1/audio/translations", summary="Translate to English (OpenAI-compatible)",
                description=_OPENAI_DESCRIPTION)
async def translations(request: Request, form: Annotated[OpenAIRequest, Depends(openai_form)]) -> Response:
    return await _openai(request, form, "translate")


async def _openai(request: Request, form: OpenAIRequest, task: str) -> Response:
    pipeline = _service(request).ready()
    if form.stream:
        raise RequestError("stream is not supported: leave it unset or false", field="stream")
    words = "word" in form.timestamp_granularities
    extra = {key: value for key, value in (await request.form()).items()
             if key in InferenceConfig.model_fields and key not in _OPENAI_FIELDS and isinstance(value, str)}
    config = InferenceConfig.parse({**extra, "task": task, "return_timestamps": "word" if words else "segment",
                                    **({"language": form.language} if form.language else {}),
                                    **({"prompt": form.prompt} if form.prompt else {})})
    if form.response_format == "diarized_json" and (pipeline.diarizer is None or not config.diarization):
        raise RequestError("response_format diarized_json needs diarization: a DIARIZATION_MODEL and diarization "
                           "not turned off", field="response_format")
    data = await form.file.read()

    def job(cancel: threading.Event) -> str | dict[str, Any]:
        transcript, _ = pipeline.transcribe_request({"inputs": data, "parameters": config.model_dump()}, cancel)
        return render(transcript, form.response_format, task, words)

    try:
        out = await _service(request).run(request, job)
    except RequestError as error:
        if error.field == "inputs":  # the audio arrives in the OpenAI form's `file` field
            error.field = "file"
        raise
    if isinstance(out, dict):
        return JSONResponse(out)
    return PlainTextResponse(out, media_type=MEDIA_TYPES.get(form.response_format, "text/plain"))


async def health(request: Request) -> JSONResponse:
    """503 while the models load, 500 when they could not be loaded, 200 with the model info once ready."""
    service = _service(request)
    if service.pipeline is None:
        if service.failed:
            return JSONResponse({"status": "failed", "error": "the models could not be loaded: see the server log"},
                                500)
        return JSONResponse({"status": "loading"}, 503, headers={"Retry-After": str(service.settings.retry_after_s)})
    queue = service.queue
    return JSONResponse({"status": "ok", "model": service.model_info(),
                         "queue": {"held": queue.held, "capacity": queue.capacity}})


def create_app(pipeline: SpeechPipeline | None = None, settings: ServerSettings | None = None) -> FastAPI:
    """The server app; without `pipeline`, one SpeechPipeline(ModelSettings()) loads in the background at start-up."""
    service = Service(settings or ServerSettings(), pipeline)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start_loading()  # in a thread: /health answers 503 "loading" meanwhile
        yield
        service.queue.shutdown()

    app = FastAPI(title="Whisper + diarization server", version="1.0", lifespan=lifespan,
                  description="Speech to text: the Inference Endpoints contract on `POST /` and OpenAI-compatible "
                              "`/v1/audio/transcriptions` and `/v1/audio/translations`.")
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=service.settings.max_upload_bytes)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_api_route("/health", health, methods=["GET"], summary="Readiness and model info")
    app.include_router(inference)
    return app


def __getattr__(name: str) -> Any:
    """`uvicorn server:app` builds the app (settings from the environment) on first access, not at import."""
    if name == "app":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
