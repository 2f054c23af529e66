"""OpenAI's Realtime API for transcription sessions over WebSocket: `/v1/realtime?intent=transcription`.

A client appends base64 PCM16 (24 kHz, or 16 kHz when the session says so); server VAD (Silero, a recurrent state
per session) finds the turns; each utterance goes through the same pipeline and window batcher as the HTTP routes,
so live sessions share forward passes. While someone speaks, the growing utterance is decoded again about every
second and the words two decodes agree on go out as `delta` events (whisper_streaming's local agreement); the
utterance's final decode gives `completed`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.websockets import WebSocketDisconnect, WebSocketState

from admission import Service
from audio import SAMPLE_RATE, PcmStream
from config import InferenceConfig
from errors import Cancelled, RequestError, invalid_parameter
from vad import FRAME, StreamingVad

logger = logging.getLogger(__name__)
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less
MAX_UTTERANCE_S = 30.0  # one Whisper window: a longer turn is committed there and goes on as a new item
RATES = (24000, 16000)


class RealtimeSettings(BaseSettings):
    """Limits of the realtime route, from env vars REALTIME_MAX_SESSIONS, REALTIME_MAX_BUFFER_S, ..."""

    model_config = SettingsConfigDict(env_prefix="REALTIME_", case_sensitive=False, extra="ignore")

    max_sessions: int = Field(8, ge=0, le=256, description="WebSocket sessions at once; more are refused with 503")
    max_buffer_s: float = Field(120.0, ge=MAX_UTTERANCE_S + 1, description=(
        "seconds of uncommitted audio a session may hold (without server VAD); more is refused with an error event"))
    idle_timeout_s: float = Field(60.0, gt=0, description="a session that sends nothing for this long is closed")
    partial_interval_s: float = Field(1.0, ge=0, description="how often a growing utterance is decoded again for "
                                                             "delta events; 0 sends none before completed")
    partial_decodes: int = Field(1, ge=1, le=256, description=(
        "partial decodes in flight server-wide; sessions take turns: each partial costs an encoder pass, and on a "
        "small CPU many at once starve the final decodes"))
    early_decode_ms: int = Field(200, ge=0, description=(
        "a pause this long starts the turn's final decode while server VAD waits out silence_duration_ms (its words "
        "become a partial hypothesis if the speaker goes on); 0 waits for the end of the turn"))


class TurnDetection(BaseModel):
    """OpenAI's `server_vad` turn detection."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0, le=5000)
    silence_duration_ms: int = Field(500, ge=32, le=10000)


class Transcription(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = "whisper-1"
    language: str | None = Field(None, max_length=32)
    prompt: str | None = Field(None, max_length=4000)


class AudioFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000, 16000] = 24000


class SessionRequest(BaseModel):
    """The fields of `session.update` (GA: `audio.input.*`) and `transcription_session.update` (beta) we apply."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["transcription"] = "transcription"
    format: AudioFormat | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    turn_detection_set: bool = False  # an explicit null turns server VAD off


@dataclass
class Item:
    """One utterance: its audio from `start` (absolute 16 kHz sample) and the words its deltas sent."""

    id: str
    start: int
    sent: list[str] = field(default_factory=list)
    hypothesis: list[str] | None = None
    partials: asyncio.Task | None = None
    # a decode started in a pause: the final if the pause ends the turn, a partial hypothesis if the speaker goes on
    early: asyncio.Task | None = None
    early_is_final: bool = False


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class Realtime:
    """The sessions of one server: admission (count, API key, models ready) and the threads they decode on."""

    def __init__(self, service: Service, settings: RealtimeSettings,
                 error_body: Callable[[RequestError], dict[str, Any]]):
        self.service, self.settings, self.error_body = service, settings, error_body
        self.sessions: set[Session] = set()
        # finals go first: while one waits, partial decodes are not started and those in flight are given up
        self.finals_pending = 0
        self.partial_cancels: set[threading.Event] = set()
        self.partial_slots = asyncio.Semaphore(settings.partial_decodes)  # the server-wide turns to run a partial
        # each session has at most a partial and a final decode waiting on the batcher at once
        self.executor = ThreadPoolExecutor(max(1, 2 * settings.max_sessions), thread_name_prefix="realtime")

    async def serve(self, ws: WebSocket) -> None:
        refusal = self._refusal(ws)
        if refusal is not None:  # an HTTP answer to the handshake, in the /v1 routes' error shape
            if "websocket.http.response" in ws.scope.get("extensions", {}):
                await ws.send_denial_response(JSONResponse(self.error_body(refusal), refusal.status))
            else:
                await ws.close(1008, refusal.message[:120])
            return
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
        session = Session(self, ws)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            session.close()
            logger.info("realtime session %s ended", session.id)

    def _refusal(self, ws: WebSocket) -> RequestError | None:
        header = ws.headers.get("authorization")
        for protocol in ws.scope.get("subprotocols") or []:  # browsers cannot set headers: OpenAI's subprotocol
            if header is None and protocol.startswith("openai-insecure-api-key."):
                header = "Bearer " + protocol.removeprefix("openai-insecure-api-key.")
        try:
            self.service.authorize(header)
            self.service.ready()
        except RequestError as error:
            return error
        intent = ws.query_params.get("intent", "transcription")
        if intent != "transcription":
            return RequestError(f"intent {intent!r} is not served: this server runs transcription sessions only",
                                400, "intent")
        if len(self.sessions) >= self.settings.max_sessions:
            return RequestError(f"the server holds {len(self.sessions)} realtime sessions (REALTIME_MAX_SESSIONS): "
                                "retry later", 503)
        return None

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class Session:
    """One WebSocket: the session's settings, its input audio buffer, server VAD and the utterances in flight."""

    def __init__(self, realtime: Realtime, ws: WebSocket):
        self.realtime, self.ws, self.id = realtime, ws, _id("sess")
        self.pipeline = realtime.service.ready()
        self.settings = realtime.settings
        self.rate, self.transcription = 24000, Transcription()
        self.turn_detection: TurnDetection | None = TurnDetection()
        self.pcm = PcmStream(self.rate)
        self.vad: StreamingVad = self.pipeline.detector.stream()
        self.buffer = np.zeros(0, np.float32)  # audio from absolute sample `base` on
        self.base = self.total = self.vad_at = 0  # absolute 16 kHz samples: buffer start, received, seen by VAD
        self.speech: Item | None = None  # the utterance being spoken (server VAD)
        self.silence_from: int | None = None
        self.previous_item: str | None = None
        self.last_final: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()
        self.cancels: set[threading.Event] = set()
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    # --- the connection ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_all())
        self.send({"type": "session.created", "session": self.view()})
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), self.settings.idle_timeout_s)
                except TimeoutError:
                    if self.last_final is not None and not self.last_final.done():
                        continue  # the client waits for a transcript: not idle
                    self.error(f"no event for {self.settings.idle_timeout_s:g} s (REALTIME_IDLE_TIMEOUT_S): "
                               "closing the session", "idle_timeout")
                    self.outbox.put_nowait(None)
                    await sender  # the error goes out before the close
                    await self.ws.close(1000)
                    return
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is None:
                    self.error("send events as JSON text frames, not binary", "invalid_event")
                    continue
                try:
                    self.receive(message["text"])
                except Exception:  # a bug must cost one event, not the session
                    logger.exception("realtime event failed")
                    self.error("the server could not handle this event: see its log", "server_error",
                               kind="server_error")
        except WebSocketDisconnect:
            return
        finally:
            sender.cancel()

    async def _send_all(self) -> None:
        while (payload := await self.outbox.get()) is not None:
            if self.ws.client_state != WebSocketState.CONNECTED:
                return
            try:
                await self.ws.send_text(json.dumps({"event_id": _id("event"), **payload}, ensure_ascii=False))
            except (WebSocketDisconnect, RuntimeError, OSError):  # the client is gone: the receive loop ends too
                return

    def send(self, payload: dict[str, Any]) -> None:
        self.outbox.put_nowait(payload)

    def error(self, message: str, code: str, param: str | None = None, event_id: str | None = None,
              kind: str = "invalid_request_error") -> None:
        self.send({"type": "error", "error": {"type": kind, "code": code, "message": message, "param": param,
                                              "event_id": event_id}})

    def close(self) -> None:
        """The client left (or timed out): stop its decodes at their next check and drop its audio."""
        for cancel in list(self.cancels):
            cancel.set()
        for task in list(self.tasks):
            task.cancel()
        self.buffer = np.zeros(0, np.float32)

    # --- client events ----------------------------------------------------------------------------------------

    def receive(self, text: str) -> None:
        try:
            event = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            return self.error(f"the event is not valid JSON: {error}", "invalid_json")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return self.error("an event is a JSON object with a string 'type'", "invalid_event")
        kind, event_id = event["type"], event.get("event_id") if isinstance(event.get("event_id"), str) else None
        handler = {"session.update": self.update, "transcription_session.update": self.update,
                   "input_audio_buffer.append": self.append, "input_audio_buffer.commit": self.commit,
                   "input_audio_buffer.clear": self.clear}.get(kind)
        if handler is None:
            return self.error(f"unsupported event type {kind!r} in a transcription session", "invalid_event",
                              "type", event_id)
        try:
            handler(event)
        except RequestError as error:
            self.error(error.message, "invalid_value", error.field, event_id)

    def update(self, event: dict[str, Any]) -> None:
        beta = event["type"] == "transcription_session.update"
        raw = event.get("session")
        if not isinstance(raw, dict):
            raise RequestError("'session' must be an object", field="session")
        request = _beta_session(raw) if beta else _ga_session(raw)
        transcription = request.transcription or self.transcription
        self._config(transcription)  # refuses an unknown language before anything changes
        if request.format is not None and request.format.rate != self.rate:
            self.rate, self.pcm = request.format.rate, PcmStream(request.format.rate)
        self.transcription = transcription
        if request.turn_detection_set:
            if request.turn_detection is None and self.speech is not None:
                self._end_speech(self.total, stopped=False)
            if request.turn_detection is not None and self.turn_detection is None:  # VAD resumes from here
                self.vad, self.vad_at = self.pipeline.detector.stream(), self.total
            self.turn_detection = request.turn_detection
        view = self.view(beta)
        self.send({"type": "transcription_session.updated" if beta else "session.updated", "session": view})

    def append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise RequestError("'audio' must be base64 PCM16 text", field="audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("'audio' is not valid base64", field="audio") from None
        samples = self.pcm.feed(data)
        if self.turn_detection is None and (self.total - self.base + len(samples)) / SAMPLE_RATE > \
                self.settings.max_buffer_s:
            raise RequestError(f"the input audio buffer is full ({self.settings.max_buffer_s:g} s, "
                               "REALTIME_MAX_BUFFER_S): commit or clear it", field="audio")
        self.buffer = np.concatenate([self.buffer, samples])
        self.total += len(samples)
        if self.turn_detection is None:
            self.vad_at = self.total
            return
        self._detect(samples)

    def commit(self, event: dict[str, Any]) -> None:
        if self.speech is not None:  # a manual commit while VAD hears speech ends the turn there
            self._end_speech(self.total, stopped=False)
            return
        if (self.total - self.base) * 1000 < MIN_COMMIT_MS * SAMPLE_RATE:
            raise RequestError(f"the input audio buffer holds {(self.total - self.base) / SAMPLE_RATE * 1000:.0f} ms "
                               f"of audio: commit at least {MIN_COMMIT_MS} ms", field="audio")
        self._commit(Item(_id("item"), self.base), self.total)

    def clear(self, event: dict[str, Any]) -> None:
        for task in (self.speech.partials, self.speech.early) if self.speech is not None else ():
            if task is not None:
                task.cancel()
        self.speech, self.silence_from = None, None
        self._drop_until(self.total)
        self.send({"type": "input_audio_buffer.cleared"})

    # --- server VAD -------------------------------------------------------------------------------------------

    def _detect(self, samples: np.ndarray) -> None:
        turn = self.turn_detection
        assert turn is not None
        silence = turn.silence_duration_ms * SAMPLE_RATE // 1000
        for probability in self.vad.probabilities(samples):
            self.vad_at += FRAME
            frame_start = self.vad_at - FRAME
            if self.speech is None:
                if probability >= turn.threshold:
                    start = max(self.base, frame_start - turn.prefix_padding_ms * SAMPLE_RATE // 1000)
                    self._start_speech(start)
                continue
            if probability >= turn.threshold:
                self.silence_from = None
                if self.speech.early_is_final:  # the pause was not the end: the decode serves as a partial
                    self.speech.early_is_final = False
                    self.speech.early.add_done_callback(functools.partial(self._early_as_partial, self.speech))
            elif probability < max(turn.threshold - 0.15, 0.01):  # Silero's hysteresis
                self.silence_from = frame_start if self.silence_from is None else self.silence_from
                if self.vad_at - self.silence_from >= silence:
                    self._end_speech(self.vad_at, stopped=True)
                    continue
                early = self.settings.early_decode_ms * SAMPLE_RATE // 1000
                item = self.speech
                if early and not item.early_is_final and (item.early is None or item.early.done()) and \
                        self.vad_at - self.silence_from >= min(early, silence // 2):
                    # decode the turn while the rest of the silence confirms its end: completed comes sooner; as the
                    # likely final it goes before partials, and no other session's final gives it up
                    audio = self.buffer[item.start - self.base:self.vad_at - self.base].copy()
                    item.early = self._spawn(self._first_decode(audio, early=True))
                    item.early_is_final = True
            if (self.vad_at - self.speech.start) / SAMPLE_RATE >= MAX_UTTERANCE_S:
                self._end_speech(self.vad_at, stopped=True)
                self._start_speech(self.vad_at)
        if self.speech is None:  # keep only what a next turn's prefix padding can reach
            self._drop_until(self.vad_at - turn.prefix_padding_ms * SAMPLE_RATE // 1000 - FRAME)

    def _start_speech(self, start: int) -> None:
        item = self.speech = Item(_id("item"), start)
        self.silence_from = None
        self.send({"type": "input_audio_buffer.speech_started", "item_id": item.id,
                   "audio_start_ms": _ms(start)})
        if self.settings.partial_interval_s > 0:
            item.partials = self._spawn(self._partials(item))

    def _end_speech(self, end: int, stopped: bool) -> None:
        item = self.speech
        assert item is not None
        self.speech, self.silence_from = None, None
        if item.partials is not None:
            item.partials.cancel()  # the final decode needs the batcher more than a stale partial
        if stopped:
            self.send({"type": "input_audio_buffer.speech_stopped", "item_id": item.id, "audio_end_ms": _ms(end)})
        self._commit(item, end)

    # --- transcription ----------------------------------------------------------------------------------------

    def _commit(self, item: Item, end: int) -> None:
        audio = self.buffer[item.start - self.base:end - self.base].copy()
        self._drop_until(end)
        self.send({"type": "input_audio_buffer.committed", "item_id": item.id, "previous_item_id": self.previous_item})
        self.previous_item = item.id
        self.last_final = self._spawn(self._final(item, audio, self.last_final))

    async def _first_decode(self, audio: np.ndarray, early: bool = False) -> str:
        """A final decode: partial decodes wait while one is pending, and those in flight are given up (an early
        decode spares this session's own: the speaker may go on, and that partial is nearly done)."""
        realtime = self.realtime
        realtime.finals_pending += 1
        for cancel in list(realtime.partial_cancels):  # a batch of partials only stops at its next decoding step
            if not (early and cancel in self.cancels):
                cancel.set()
        try:
            return await self._decode(audio)
        finally:
            realtime.finals_pending -= 1

    async def _final(self, item: Item, audio: np.ndarray, previous: asyncio.Task | None) -> None:
        try:
            text, error = None, None
            if item.early_is_final:  # its audio holds the whole turn and part of the pause: the same words
                with contextlib.suppress(Cancelled):  # given up for another session's final: decode again
                    text = await item.early
            if text is None:
                text = await self._first_decode(audio)
        except asyncio.CancelledError:
            raise
        except Exception as failure:  # the session goes on; this item reports its failure
            text, error = "", failure
        if previous is not None:  # completed events go out in the order the items were committed
            await asyncio.gather(previous, return_exceptions=True)
        if error is not None:
            logger.error("realtime transcription failed: %r", error)
            message = error.message if isinstance(error, RequestError) else "transcription failed: see the server log"
            self.send({"type": "conversation.item.input_audio_transcription.failed", "item_id": item.id,
                       "content_index": 0, "error": {"type": "transcription_error", "message": message}})
            return
        words = text.split()
        if item.sent and words[:len(item.sent)] == item.sent and len(words) > len(item.sent):
            self._delta(item, " " + " ".join(words[len(item.sent):]))
        elif not item.sent and text:
            self._delta(item, text)
        self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item.id,
                   "content_index": 0, "transcript": text,
                   "usage": {"type": "duration", "seconds": round(len(audio) / SAMPLE_RATE, 3)}})

    async def _partials(self, item: Item) -> None:
        """Decode the growing utterance every `partial_interval_s`; send the words the last two decodes agree on."""
        interval, decoded = self.settings.partial_interval_s, 0
        while True:
            started = time.monotonic()
            if self._partial_due(item, decoded):
                async with self.realtime.partial_slots:
                    end = self.total  # the audio grew while this session waited for its turn
                    words = None
                    if self._partial_due(item, decoded):
                        with contextlib.suppress(Cancelled):  # given up for a final decode: try again later
                            words = (await self._decode(self.buffer[item.start - self.base:end - self.base].copy(),
                                                        partial=True)).split()
                if words is not None:
                    decoded = end
                    self._hypothesis(item, words)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    def _partial_due(self, item: Item, decoded: int) -> bool:
        """Whether the growing utterance is worth a partial decode now (a second of it, half a second new, nobody's
        final waiting, no pause, no early decode of this turn in flight)."""
        end = self.total
        return (end - item.start >= SAMPLE_RATE and end - decoded >= SAMPLE_RATE // 2
                and not self.realtime.finals_pending and self.silence_from is None
                and (item.early is None or item.early.done()))

    def _hypothesis(self, item: Item, words: list[str]) -> None:
        """A partial decode's words: send those the last two decodes agree on."""
        # the first hypothesis's last word is likely cut off by the end of the audio
        stable = words[:-1] if item.hypothesis is None else _common_prefix(item.hypothesis, words)
        item.hypothesis = words
        if len(stable) > len(item.sent) and stable[:len(item.sent)] == item.sent:
            self._delta(item, (" " if item.sent else "") + " ".join(stable[len(item.sent):]))
            item.sent = stable

    def _early_as_partial(self, item: Item, task: asyncio.Task) -> None:
        if self.speech is item and not task.cancelled() and task.exception() is None:
            self._hypothesis(item, task.result().split())

    def _delta(self, item: Item, text: str) -> None:
        self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": item.id,
                   "content_index": 0, "delta": text})

    async def _decode(self, audio: np.ndarray, partial: bool = False) -> str:
        config = self._config(self.transcription, vad=len(audio) / SAMPLE_RATE > MAX_UTTERANCE_S)
        cancel, started = threading.Event(), time.perf_counter()
        self.cancels.add(cancel)
        if partial:
            self.realtime.partial_cancels.add(cancel)
        try:
            transcript = await asyncio.get_running_loop().run_in_executor(
                self.realtime.executor, self.pipeline.transcribe, audio, config, cancel)
        except asyncio.CancelledError:
            cancel.set()  # the batch it waits for stops early, or it leaves the queue
            raise
        finally:
            self.cancels.discard(cancel)
            self.realtime.partial_cancels.discard(cancel)
        logger.debug("decoded %.2f s of audio in %.2f s", len(audio) / SAMPLE_RATE, time.perf_counter() - started)
        return transcript.text

    def _config(self, transcription: Transcription, vad: bool = False) -> InferenceConfig:
        config = InferenceConfig.parse({"language": transcription.language, "prompt": transcription.prompt,
                                        "vad": vad, "diarization": False})
        self.pipeline.generate_kwargs(config)  # an unknown language is the client's error, now
        return config

    def _spawn(self, coroutine: Any) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _drop_until(self, sample: int) -> None:
        if sample > self.base:
            self.buffer = self.buffer[min(sample, self.total) - self.base:]
            self.base = min(sample, self.total)

    # --- what the client sees of its session ------------------------------------------------------------------

    def view(self, beta: bool = False) -> dict[str, Any]:
        transcription = self.transcription.model_dump()
        turn = self.turn_detection.model_dump() if self.turn_detection else None
        if beta:
            return {"id": self.id, "object": "realtime.transcription_session", "input_audio_format": "pcm16",
                    "input_audio_transcription": transcription, "turn_detection": turn}
        return {"type": "transcription", "id": self.id, "object": "realtime.transcription_session",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": self.rate},
                                    "transcription": transcription, "turn_detection": turn,
                                    "noise_reduction": None}},
                "include": []}


def _ga_session(raw: dict[str, Any]) -> SessionRequest:
    audio = raw.get("audio") if isinstance(raw.get("audio"), dict) else {}
    given = audio.get("input") if isinstance(audio.get("input"), dict) else {}
    if raw.get("type", "transcription") != "transcription":
        raise RequestError(f"session type {raw.get('type')!r} is not served: this server runs transcription "
                           "sessions", field="session.type")
    return _session({"format": given.get("format"), "transcription": given.get("transcription"),
                     "turn_detection": given.get("turn_detection"), "turn_detection_set": "turn_detection" in given},
                    "session.audio.input")


def _beta_session(raw: dict[str, Any]) -> SessionRequest:
    fmt = raw.get("input_audio_format")
    if fmt not in (None, "pcm16"):
        raise RequestError(f"input_audio_format {fmt!r} is not supported: send pcm16",
                           field="session.input_audio_format")
    return _session({"transcription": raw.get("input_audio_transcription"), "turn_detection": raw.get("turn_detection"),
                     "turn_detection_set": "turn_detection" in raw}, "session")


def _session(fields: dict[str, Any], where: str) -> SessionRequest:
    turn = fields.get("turn_detection")
    if isinstance(turn, dict) and turn.get("type", "server_vad") != "server_vad":
        raise RequestError(f"turn_detection type {turn.get('type')!r} is not supported: use server_vad or null",
                           field=f"{where}.turn_detection.type")
    try:
        return SessionRequest.model_validate({key: value for key, value in fields.items()
                                              if value is not None or key == "turn_detection"})
    except ValidationError as error:
        invalid = invalid_parameter(error.errors(), whole_path=True)
        raise RequestError(invalid.message, field=f"{where}.{invalid.field}") from None


def _common_prefix(a: list[str], b: list[str]) -> list[str]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return b[:n]


def _ms(sample: int) -> int:
    return sample * 1000 // SAMPLE_RATE


def register(app: FastAPI, service: Service, settings: RealtimeSettings | None,
             error_body: Callable[[RequestError], dict[str, Any]]) -> Realtime:
    """Adds `/v1/realtime` (WebSocket) to the app; the returned object holds the live sessions."""
    realtime = Realtime(service, settings or RealtimeSettings(), error_body)

    async def endpoint(ws: WebSocket) -> None:
        await realtime.serve(ws)

    app.add_api_websocket_route("/v1/realtime", endpoint, name="realtime")
    return realtime
