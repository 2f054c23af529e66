"""The HTTP layer under the app: uvicorn's HTTP/1.1 protocol with the deadlines it lacks, its options, and an access
log without secrets.

uvicorn closes a connection only when it stays silent `timeout_keep_alive` seconds after a response: a fresh
socket that never sends, or one that sends its request head a byte at a time, stays open for ever. Here a request
head must arrive whole within `HEADER_TIMEOUT_S` of the connection or of the previous response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD_BYTES = 16384  # request line + headers (h11's default; set explicitly so the limit is documented)
_SECRET_QUERY = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|hf[_-]?token|auth|authorization|"
                           r"password|secret)=)[^&\s\"]*")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that closes a connection whose request head has not arrived whole in time, and
    answers malformed requests with JSON instead of plain text."""

    # None: HEADER_TIMEOUT_S / KEEP_ALIVE_S from the environment, for `uvicorn --http http_protocol:GuardedH11Protocol`
    header_timeout_s: float | None = None
    keep_alive_s: float | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.header_timeout_s is None or self.keep_alive_s is None:
            from admission import ServerSettings

            settings = ServerSettings()
            self.header_timeout_s, self.keep_alive_s = settings.header_timeout_s, settings.keep_alive_s
        self.timeout_keep_alive = self.keep_alive_s
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_request():
            self._disarm()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm()  # the socket now belongs to the WebSocket protocol and its own ping/idle limits
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._in_request():  # waiting for the next request head (a pipelined one may already run)
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": f"{msg} (malformed HTTP/1.1)"}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._head_deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _expire(self) -> None:
        self._head_deadline = None
        if not self._in_request() and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """uvicorn.Config / uvicorn.run keyword arguments for `ServerSettings`: the guarded protocol with its header
    deadline, the keep-alive timeout and the request-head size limit."""
    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,),
                    {"header_timeout_s": settings.header_timeout_s, "keep_alive_s": settings.keep_alive_s})
    return {"http": protocol, "timeout_keep_alive": settings.keep_alive_s,
            "h11_max_incomplete_event_size": MAX_HEAD_BYTES}


class _RedactQuery(logging.Filter):
    """Masks secret-looking query parameters (`?api_key=...`, `token`, ...) and the API key itself in access logs."""

    def __init__(self, secret: str | None):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True

    def _clean(self, text: str) -> str:
        text = _SECRET_QUERY.sub(r"\1***", text)
        return text.replace(self.secret, "***") if self.secret else text


def redact_access_log(secret: str | None) -> None:
    """Install (once; a later call updates the key) the filter on uvicorn's access logger."""
    access = logging.getLogger("uvicorn.access")
    for existing in access.filters:
        if isinstance(existing, _RedactQuery):
            existing.secret = secret
            return
    access.addFilter(_RedactQuery(secret))
