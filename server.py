"""Self-hosted HTTP server: the Inference Endpoints contract and OpenAI-compatible audio routes on one pipeline.

    .venv/bin/python -m server --host 127.0.0.1 --port 8000      # uvicorn with the connection deadlines
    .venv/bin/python -m uvicorn server:app --host 127.0.0.1 --port 8000 --http http_protocol:GuardedH11Protocol

Models come from the same env vars as the handler (`ModelSettings`); limits and the API key from `ServerSettings`.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

import metrics
from admission import BodyLimit, ClientGone, InferenceRoute, ServerSettings, ServiceError, Service, service_of
from config import InferenceConfig, ModelSettings
from errors import RequestError, invalid_parameter
from formats import DIARIZED_FORMATS, ResponseFormat, SubtitleOptions, render
from http_protocol import redact_access_log, uvicorn_options
from realtime import RealtimeSettings, register as register_realtime
from speech_pipeline import SpeechPipeline
from streaming import stream_transcription

logger = logging.getLogger(__name__)
MEDIA_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt", "rttm": "text/plain"}
# set from the OpenAI form fields and the route
_OPENAI_FIELDS = {"task", "language", "prompt", "return_timestamps", "temperature"}
_KNOWN_SPEAKER_FIELDS = {"known_speaker_names[]": "known_speaker_names",
                         "known_speaker_references[]": "known_speaker_references"}
_OPENAI_FORM = {"file", "model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]",
                "stream"}  # openai_form's fields
OPENAI_MODEL_ALIAS = "whisper-1"  # what OpenAI clients send by default; the server's ASR_MODEL answers it


# OpenAI's error `type` and `code` for our statuses (its SDK reads them as e.type / e.code)
_OPENAI_CODES = {400: "invalid_request", 401: "invalid_api_key", 404: "not_found", 408: "upload_timeout",
                 413: "request_too_large", 415: "unsupported_file", 422: "invalid_value", 500: "internal_error",
                 503: "server_busy", 504: "timeout"}


def contract_error(error: RequestError) -> dict[str, Any]:
    """The Inference Endpoints contract's error: {"error": message, "field": name}."""
    return error.to_dict()


def openai_error(error: RequestError) -> dict[str, Any]:
    """OpenAI's error, what its SDK parses on /v1 routes: {"error": {"message", "type", "param", "code"}}."""
    kind = "server_error" if error.status >= 500 else "invalid_request_error"
    return {"error": {"message": error.message, "type": kind, "param": error.field,
                      "code": _OPENAI_CODES.get(error.status)}}


def _error_response(request: Request, error: RequestError) -> JSONResponse:
    body = openai_error(error) if request.url.path.startswith("/v1/") else contract_error(error)
    return JSONResponse(body, error.status, headers=getattr(error, "headers", None))


async def _request_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestError)
    return _error_response(request, error)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's own validation (form fields) in the RequestError shape, naming the first bad field."""
    assert isinstance(error, RequestValidationError)
    return _error_response(request, invalid_parameter(error.errors(), whole_path=True))


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return _error_response(request, ServiceError(str(error.detail), error.status_code, error.headers))


async def _client_gone(request: Request, error: Exception) -> Response:
    """A client that left during the upload or the transcription: one line, no traceback (nobody reads the answer)."""
    logger.info("%s %s: the client disconnected", request.method, request.url.path)
    return Response(status_code=499)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.error("unexpected error on %s %s: %r", request.method, request.url.path, error)
    return _error_response(request, ServiceError("internal server error", 500))


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
    pipeline = service_of(request).ready()
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
    return JSONResponse(await service_of(request).execute(request, lambda cancel: pipeline.handle(data(), cancel)))


def _json(text: str | bytes, what: str, field: str | None = None) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise RequestError(f"{what} is nested too deeply", field=field) from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError, and integers of over 4300 digits
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
    temperature: Annotated[float, Form(ge=0, le=1, description="the first decoding temperature (0: greedy); windows "
                                       "that fail the loop guard are decoded again hotter, up to 1")] = 0,
    timestamp_granularities: Annotated[list[Literal["segment", "word"]] | None,
                                       Form(alias="timestamp_granularities[]")] = None,
    stream: Annotated[bool, Form(description="server-sent events: `transcript.text.delta` as the windows are "
                                 "decoded, then `transcript.text.done`")] = False,
) -> OpenAIRequest:
    return OpenAIRequest(file=file, model=model, language=language, prompt=prompt, response_format=response_format,
                         temperature=temperature, timestamp_granularities=timestamp_granularities or ["segment"],
                         stream=stream)


_OPENAI_DESCRIPTION = ("OpenAI-compatible multipart form. Extra form fields named like the Inference Endpoints "
                       "parameters (`vad`, `batch_size`, `num_beams`, `chunk_length_s`, `assisted`, `num_speakers`, "
                       "...) are applied too; `known_speaker_names[]` with `known_speaker_references[]` (data: URLs "
                       "or files) name diarized speakers; `max_line_width`, `max_line_count`, `max_cue_seconds` and "
                       "`highlight_words` shape `srt` / `vtt`. Other fields are ignored and logged.")


@inference.post("/v1/audio/transcriptions", summary="Transcribe (OpenAI-compatible)", description=_OPENAI_DESCRIPTION)
async def transcriptions(request: Request, form: Annotated[OpenAIRequest, Depends(openai_form)]) -> Response:
    return await _openai(request, form, "transcribe")


@inference.post("/v1/audio/translations", summary="Translate to English (OpenAI-compatible)",
                description=_OPENAI_DESCRIPTION)
async def translations(request: Request, form: Annotated[OpenAIRequest, Depends(openai_form)]) -> Response:
    return await _openai(request, form, "translate")


async def _openai(request: Request, form: OpenAIRequest, task: str) -> Response:
    pipeline = service_of(request).ready()
    words = "word" in form.timestamp_granularities
    fields = await request.form()
    _log_unknown_fields(fields)
    extra = {key: value for key, value in fields.items()
             if key in InferenceConfig.model_fields and key not in _OPENAI_FIELDS and isinstance(value, str)}
    subtitles = _subtitle_options(fields)
    config = InferenceConfig.parse({
        **extra, **await _known_speakers(fields), "task": task,
        "return_timestamps": "word" if words or subtitles.shaped else "segment", "temperature": form.temperature,
        **({"language": form.language} if form.language else {}),
        **({"prompt": form.prompt} if form.prompt else {})})
    if form.response_format in DIARIZED_FORMATS and (pipeline.diarizer is None or not config.diarization):
        raise RequestError(f"response_format {form.response_format} needs diarization: a DIARIZATION_MODEL and "
                           "diarization not turned off", field="response_format")
    data = await form.file.read()

    def job(cancel: threading.Event) -> str | dict[str, Any]:
        transcript, _ = pipeline.transcribe_request({"inputs": data, "parameters": config.model_dump()}, cancel)
        return render(transcript, form.response_format, task, words, subtitles,
                      uri=Path(form.file.filename or "audio").stem)

    try:
        if form.stream:
            return await stream_transcription(request, pipeline, data, config, form.response_format,
                                              openai_error)
        out = await service_of(request).execute(request, job)
    except RequestError as error:
        if error.field == "inputs":  # the audio arrives in the OpenAI form's `file` field
            error.field = "file"
        raise
    if isinstance(out, dict):
        return JSONResponse(out)
    return PlainTextResponse(out, media_type=MEDIA_TYPES.get(form.response_format, "text/plain"))


def _log_unknown_fields(fields: FormData) -> None:
    """One log line per request naming the form fields nothing reads (README promises it)."""
    known = (_OPENAI_FORM | set(InferenceConfig.model_fields) | set(SubtitleOptions.model_fields)
             | set(_KNOWN_SPEAKER_FIELDS))
    unknown = sorted({key for key in fields.keys() if key not in known})
    if unknown:
        logger.warning("ignoring unknown form fields: %s", ", ".join(unknown)[:500])


def _subtitle_options(fields: FormData) -> SubtitleOptions:
    """srt/vtt shaping from extra form fields (max_line_width, max_line_count, max_cue_seconds, highlight_words)."""
    try:
        return SubtitleOptions.model_validate({key: value for key, value in fields.items()
                                               if key in SubtitleOptions.model_fields and isinstance(value, str)})
    except ValidationError as error:
        raise invalid_parameter(error.errors()) from None


async def _known_speakers(fields: FormData) -> dict[str, list[str]]:
    """OpenAI's known_speaker_names[] and known_speaker_references[] (data: URLs, base64 or uploaded files)."""
    out: dict[str, list[str]] = {}
    for form_name, parameter in _KNOWN_SPEAKER_FIELDS.items():
        values = fields.getlist(form_name) + fields.getlist(parameter)
        if values:
            out[parameter] = [base64.b64encode(await value.read()).decode()
                              if isinstance(value, StarletteUpload) else value for value in values]
    return out


def _model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "self-hosted"}


def _model_ids(service: Service) -> list[str]:
    settings = service.pipeline.settings if service.pipeline is not None else ModelSettings()
    return [settings.asr_model, OPENAI_MODEL_ALIAS]


async def _authorized(request: Request) -> None:
    """The API key, when one is set, for routes outside the inference queue (/v1/models, /metrics)."""
    service_of(request).authorize(request.headers.get("authorization"))


async def list_models(request: Request) -> JSONResponse:
    """OpenAI's model list: the server's ASR_MODEL and the alias OpenAI clients send (both served by it)."""
    service = service_of(request)
    return JSONResponse({"object": "list", "data": [_model_card(i, service.started) for i in _model_ids(service)]})


async def get_model(request: Request, model_id: str) -> JSONResponse:
    service = service_of(request)
    if model_id not in _model_ids(service):
        raise RequestError(f"model {model_id!r} is not served here: GET /v1/models lists the ids", 404, "model_id")
    return JSONResponse(_model_card(model_id, service.started))


async def metrics_route(request: Request) -> Response:
    """Prometheus text format; needs the API key when API_KEY is set."""
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


async def health(request: Request) -> JSONResponse:
    """503 while the models load, 500 when they could not be loaded, 200 with the model info once ready."""
    service = service_of(request)
    if service.pipeline is None:
        if service.failed:
            return JSONResponse({"status": "failed", "error": "the models could not be loaded: see the server log"},
                                500)
        return JSONResponse({"status": "loading"}, 503, headers={"Retry-After": str(service.settings.retry_after_s)})
    queue, realtime = service.queue, request.app.state.realtime
    return JSONResponse({"status": "ok", "model": service.model_info(),
                         "queue": {"held": queue.held, "capacity": queue.capacity},
                         "realtime": {"sessions": len(realtime.sessions), "capacity": realtime.settings.max_sessions}})


def create_app(pipeline: SpeechPipeline | None = None, settings: ServerSettings | None = None,
               realtime: RealtimeSettings | None = None) -> FastAPI:
    """The server app; without `pipeline`, one SpeechPipeline(ModelSettings()) loads in the background at start-up."""
    service = Service(settings or ServerSettings(), pipeline)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start_loading()  # in a thread: /health answers 503 "loading" meanwhile
        yield
        service.queue.shutdown()
        app.state.realtime.shutdown()

    app = FastAPI(title="Whisper + diarization server", version="1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Speech to text: the Inference Endpoints contract on `POST /`, OpenAI-compatible "
                              "`/v1/audio/transcriptions` and `/v1/audio/translations` (`stream=true`: server-sent "
                              "events), and OpenAI's Realtime transcription sessions on the WebSocket "
                              "`/v1/realtime?intent=transcription`.")
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=service.settings.max_upload_bytes,
                       min_rate=service.settings.upload_min_bytes_per_s, grace_s=service.settings.upload_grace_s)
    app.add_middleware(metrics.RequestMetrics)  # outermost: answers of the body limit are counted too
    api_key = service.settings.api_key
    redact_access_log(api_key.get_secret_value() if api_key else None)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_api_route("/health", health, methods=["GET"], summary="Readiness and model info")
    authorized = [Depends(_authorized), Depends(_bearer)]
    app.add_api_route("/v1/models", list_models, methods=["GET"], summary="Models (OpenAI-compatible)",
                      dependencies=authorized)
    app.add_api_route("/v1/models/{model_id:path}", get_model, methods=["GET"], summary="One model (OpenAI-compatible)",
                      dependencies=authorized)
    app.add_api_route("/metrics", metrics_route, methods=["GET"], summary="Prometheus metrics",
                      dependencies=authorized)
    _offline_docs(app)
    app.include_router(inference)
    app.state.realtime = register_realtime(app, service, realtime, openai_error)
    return app


def _offline_docs(app: FastAPI) -> None:
    """Swagger UI from the installed swagger-ui-bundle package instead of a CDN: /docs works on an offline host."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
                                   swagger_favicon_url=f"{root}/docs-assets/favicon-32x32.png")

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)


def main(argv: list[str] | None = None) -> None:
    """Start uvicorn on `server:app` with the connection deadlines of ServerSettings (http_protocol.py)."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    uvicorn.run("server:app", host=args.host, port=args.port, log_level=args.log_level,
                **uvicorn_options(ServerSettings()))


def __getattr__(name: str) -> Any:
    """`uvicorn server:app` builds the app (settings from the environment) on first access, not at import."""
    if name == "app":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
