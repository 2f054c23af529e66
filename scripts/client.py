"""Send an audio file to the endpoint (or the local server) and print the transcript.

    python -m scripts.client samples/sample.flac                          # local server, plain text
    python -m scripts.client talk.mp3 --url https://xyz.endpoints.huggingface.cloud --format srt
    python -m scripts.client talk.mp3 --url URL --via hf --parameters '{"language": "en"}'

The request is the JSON contract {"inputs": <base64 audio>, "parameters": {...}}. A token is sent as
`Authorization: Bearer` when HF_TOKEN (or API_KEY) is set in the environment. --via requests posts it with
`requests`; --via hf goes through huggingface_hub.InferenceClient(model=URL).automatic_speech_recognition.
--format srt/vtt builds subtitles from the response's `chunks` (with their speaker labels when diarized), with
the server's subtitle writer (formats.py) and its shaping options (--max_line_width, ...).

A 503 or 429 answer (a scaled-to-zero endpoint waking up, a full queue) is retried after its `Retry-After` (else
after 2, 4, 8 ... 30 s), with a message on stderr, until --max-wait seconds of waiting are spent.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

import formats
from errors import invalid_parameter
from transcript import Transcript

DEFAULT_URL = "http://127.0.0.1:8000/predict"  # the local server's route; an Inference Endpoint takes its root URL
RETRY_STATUSES = (429, 503)
MAX_BACKOFF_S = 30.0


class Retryable(RuntimeError):
    """A 503/429 answer: the server asks to come back (after `retry_after` seconds when it says)."""

    def __init__(self, status: int, retry_after: float | None, text: str):
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status, self.retry_after = status, retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header's delay: seconds, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def with_retries(send: Callable[[], dict[str, Any]], max_wait: float, sleep: Callable[[float], None] = time.sleep
                 ) -> dict[str, Any]:
    """`send()` again after each Retryable answer, waiting as told, for at most `max_wait` seconds in all."""
    waited, attempt = 0.0, 0
    while True:
        try:
            return send()
        except Retryable as error:
            left = max_wait - waited
            if left <= 0:
                raise RuntimeError(f"{error} (still after {waited:.0f} s of retries; --max-wait)") from None
            delay = min(left, error.retry_after if error.retry_after is not None else min(2.0 ** (attempt + 1),
                                                                                           MAX_BACKOFF_S))
            print(f"HTTP {error.status} (the endpoint is starting or busy): retrying in {delay:.0f} s "
                  f"({waited:.0f} of at most {max_wait:.0f} s waited)", file=sys.stderr, flush=True)
            sleep(delay)
            waited, attempt = waited + delay, attempt + 1


def bearer_token() -> str | None:
    """The caller's token from the environment (HF_TOKEN for Inference Endpoints, API_KEY for a self-hosted one)."""
    return os.environ.get("HF_TOKEN") or os.environ.get("API_KEY") or None


def auth_headers() -> dict[str, str]:
    token = bearer_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def request_body(audio: bytes, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": base64.b64encode(audio).decode(), "parameters": parameters}


def transcribe_requests(audio: bytes, url: str, parameters: dict[str, Any], timeout: float) -> dict[str, Any]:
    import requests

    response = requests.post(url, json=request_body(audio, parameters), headers=auth_headers(), timeout=timeout)
    if response.status_code in RETRY_STATUSES:
        raise Retryable(response.status_code, retry_after_seconds(response.headers.get("Retry-After")), response.text)
    if response.status_code >= 400:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:1000]}")
    return response.json()


def transcribe_hf(audio: bytes, url: str, parameters: dict[str, Any], timeout: float) -> dict[str, Any]:
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    client = InferenceClient(model=url, token=bearer_token(), timeout=timeout)
    # InferenceClient posts raw audio when there are no parameters; a non-empty extra_body keeps the JSON
    # contract, which every server of this repo accepts (return_timestamps "segment" is the default anyway)
    try:
        output = client.automatic_speech_recognition(audio, extra_body=parameters or {"return_timestamps": "segment"})
    except HfHubHTTPError as error:
        response = error.response
        if response is not None and response.status_code in RETRY_STATUSES:
            raise Retryable(response.status_code, retry_after_seconds(response.headers.get("Retry-After")),
                            response.text) from None
        raise
    # the output is a dict subclass holding extra fields too; its dict view of the chunks drops their extra fields
    # (a diarized chunk's speaker), which the chunk objects keep
    response = {**output, "chunks": [dict(chunk) for chunk in output.chunks or []]}
    return json.loads(json.dumps(response, default=dict))


def render(response: dict[str, Any], output_format: str, subtitles: formats.SubtitleOptions | None = None) -> str:
    """The response as text, JSON or subtitles; subtitles through formats.py, the server's one subtitle writer."""
    if output_format == "json":
        return json.dumps(response, indent=2, ensure_ascii=False)
    if output_format in ("srt", "vtt"):
        return formats.render(Transcript.from_response(response), output_format, subtitles=subtitles)
    return response.get("text", "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scripts.client", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="audio file (wav, flac, mp3, ogg, m4a, ...)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"endpoint URL (default: {DEFAULT_URL})")
    parser.add_argument("--via", choices=["requests", "hf"], default="requests", help="HTTP client to use")
    parser.add_argument("--parameters", default="{}", help="request parameters as a JSON object")
    parser.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text", dest="output_format")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the response")
    parser.add_argument("--max-wait", "--max_wait", type=float, default=600.0, dest="max_wait",
                        help="seconds to spend waiting on 503/429 answers in all (default 600; 0: no retry)")
    parser.add_argument("--max_line_width", "--max-line-width", type=int, help="subtitles: characters per line")
    parser.add_argument("--max_line_count", "--max-line-count", type=int, help="subtitles: lines per cue")
    parser.add_argument("--max_cue_seconds", "--max-cue-seconds", type=float, help="subtitles: longest cue")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        parameters = json.loads(args.parameters)
    except json.JSONDecodeError as error:
        parser.error(f"--parameters is not JSON: {error}")
    if not isinstance(parameters, dict):
        parser.error("--parameters must be a JSON object")
    if not args.file.is_file():
        parser.error(f"no such file: {args.file}")
    try:
        subtitles = formats.SubtitleOptions(max_line_width=args.max_line_width, max_line_count=args.max_line_count,
                                            max_cue_seconds=args.max_cue_seconds)
    except ValidationError as error:
        parser.error(str(invalid_parameter(error.errors())))
    send = transcribe_hf if args.via == "hf" else transcribe_requests
    audio = args.file.read_bytes()
    try:
        response = with_retries(lambda: send(audio, args.url, parameters, args.timeout), args.max_wait)
    except Exception as error:  # network and HTTP errors alike: one line, no traceback, exit 1
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(render(response, args.output_format, subtitles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
