"""OpenAI's `stream=true` on the audio routes: server-sent events as the windows are decoded, in audio order.

`transcript.text.delta` events carry the text as it comes (their concatenation is the final text), one
`transcript.text.done` the whole text; with `response_format=diarized_json` the speaker turns come after diarization
(it needs the whole recording) as `transcript.text.segment` events, each after its deltas (`segment_id`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any, AsyncIterator

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse

from admission import service_of
from config import InferenceConfig
from errors import Cancelled, RequestError
from speech_pipeline import SpeechPipeline
from transcript import Segment, Transcript

logger = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not hold events back


class _Text:
    """The deltas of a text that arrives in pieces: their concatenation equals the stripped whole, as OpenAI's."""

    def __init__(self) -> None:
        self.raw, self.sent = "", ""

    def delta(self, piece: str) -> str:
        self.raw += piece
        whole = self.raw.strip()  # the final text is stripped: hold leading and trailing blanks back
        delta, self.sent = whole[len(self.sent):], whole
        return delta


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def error_event(message: str, kind: str = "server_error", code: str | None = None) -> str:
    """The SDK raises `APIError(message)` for a data line with an `error` object."""
    return event({"type": "error", "error": {"message": message, "type": kind, "code": code}})


async def stream_transcription(request: Request, pipeline: SpeechPipeline, data: bytes, config: InferenceConfig,
                               response_format: str) -> StreamingResponse:
    """Starts the transcription in the request's queue place and answers once its first event is ready: errors
    before that (bad audio, busy, timeout) keep their HTTP status; later ones end the stream with an error event.
    A client that goes away cancels the rest of the work."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    diarized = response_format == "diarized_json"

    def on_window(index: int, segments: list[Segment]) -> None:
        loop.call_soon_threadsafe(events.put_nowait, ("window", segments))

    def job(cancel: threading.Event) -> Transcript:
        transcript, _ = pipeline.transcribe_request({"inputs": data, "parameters": config.model_dump()}, cancel,
                                                    None if diarized else on_window)
        return transcript

    task = asyncio.ensure_future(service_of(request).execute(request, job))
    # the worker schedules its windows before its result: "end" is always the last item
    task.add_done_callback(lambda finished: events.put_nowait(("end", finished)))
    deadline = anyio.current_effective_deadline()  # REQUEST_TIMEOUT_S, set by InferenceRoute
    try:
        first = await events.get()
        if first[0] == "end":
            first[1].result()  # raises the request's error with its status
    except BaseException:
        task.cancel()  # the request's timeout or disconnect: the transcription stops at its next check
        raise
    return StreamingResponse(_events(first, events, task, deadline, diarized), media_type="text/event-stream",
                             headers=SSE_HEADERS)


async def _events(first: tuple[str, Any], events: asyncio.Queue[tuple[str, Any]], task: asyncio.Future,
                  deadline: float, diarized: bool) -> AsyncIterator[str]:
    text, item = _Text(), first
    try:
        while True:
            kind, value = item
            if kind == "window":
                delta = text.delta("".join(segment.text for segment in value))
                if delta:
                    yield event({"type": "transcript.text.delta", "delta": delta})
            else:
                try:
                    transcript: Transcript = value.result()
                except RequestError as error:
                    yield error_event(error.message, "invalid_request_error" if error.status < 500 else "server_error")
                    return
                except (Cancelled, asyncio.CancelledError):
                    yield error_event("the transcription was cancelled")
                    return
                if diarized:
                    for number, turn in enumerate(transcript.speakers):
                        segment_id = f"seg_{number}"
                        delta = text.delta(turn.text)
                        if delta:
                            yield event({"type": "transcript.text.delta", "delta": delta, "segment_id": segment_id})
                        yield event({"type": "transcript.text.segment", "id": segment_id, "start": turn.start,
                                     "end": turn.end, "text": turn.text, "speaker": turn.speaker})
                yield event({"type": "transcript.text.done", "text": transcript.text})
                return
            with anyio.fail_after(deadline - anyio.current_time() if deadline != float("inf") else None):
                item = await events.get()
    except TimeoutError:
        yield error_event("the request took longer than REQUEST_TIMEOUT_S", code="timeout")
    finally:
        task.cancel()  # a no-op once done; after a disconnect it stops the transcription at its next check
