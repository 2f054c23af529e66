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
from typing import Any, AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from admission import ClientGone, service_of
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


ErrorBody = Callable[[RequestError], dict[str, Any]]  # the route's error JSON: {"error": {"message", ...}}


async def stream_transcription(request: Request, pipeline: SpeechPipeline, data: bytes, config: InferenceConfig,
                               response_format: str, error_body: ErrorBody) -> StreamingResponse:
    """Starts the transcription in a queue place and answers once its first event is ready: errors before that (bad
    audio, busy, REQUEST_TIMEOUT_S) keep their HTTP status; later ones end the stream with an `error` event in the
    route's error shape (the SDK raises `APIError` for it). A client that goes away cancels the rest of the work."""
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
    try:
        first = await events.get()
        if first[0] == "end":
            first[1].result()  # raises the request's error with its status
    except BaseException:
        task.cancel()  # the handler was given up: the transcription stops at its next check
        raise
    return StreamingResponse(_events(first, events, task, diarized, error_body), media_type="text/event-stream",
                             headers=SSE_HEADERS)


async def _events(first: tuple[str, Any], events: asyncio.Queue[tuple[str, Any]], task: asyncio.Future,
                  diarized: bool, error_body: ErrorBody) -> AsyncIterator[str]:
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
                except RequestError as error:  # REQUEST_TIMEOUT_S (504), a model failure (500), bad audio
                    yield event({"type": "error", **error_body(error)})
                    return
                except (ClientGone, Cancelled, asyncio.CancelledError):  # nobody reads on
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
            item = await events.get()
    finally:
        task.cancel()  # a no-op once done; after a disconnect it stops the transcription at its next check
