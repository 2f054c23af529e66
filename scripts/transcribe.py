"""Transcribe an audio file with the handler and print the JSON response (or subtitles, text, ...).

    python -m scripts.transcribe samples/sample.flac [--parameters '{"return_timestamps": "word"}'] [--format srt]

`--format json` (the default) prints the endpoint's response; text, srt, vtt, verbose_json, diarized_json and rttm
(the diarizer's speaker turns) print what the server's OpenAI-compatible route answers. Models come from the same env vars as the endpoint
(ASR_MODEL, ASSISTANT_MODEL, DIARIZATION_MODEL, ...); without them, the offline defaults that setup.sh builds.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO


from errors import RequestError
from formats import DIARIZED_FORMATS, FORMATS, render
from handler import EndpointHandler

_SPINNER = "|/-\\"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="audio file (wav, flac, mp3, ogg, m4a, ...)")
    parser.add_argument("--parameters", default="{}", help="request parameters as a JSON object")
    parser.add_argument("--format", default="json", choices=FORMATS,
                        help="json: the endpoint's response (default); the others as the server's OpenAI routes")
    args = parser.parse_args(argv)
    try:
        parameters = json.loads(args.parameters)
    except json.JSONDecodeError as error:
        parser.error(f"--parameters is not JSON: {error}")
    started = time.perf_counter()
    handler = EndpointHandler()
    loaded = time.perf_counter()
    if args.format in DIARIZED_FORMATS and handler.pipeline.diarizer is None:
        print(json.dumps({"error": f"--format {args.format} needs a DIARIZATION_MODEL", "field": "format"}),
              file=sys.stderr)
        return 2
    data = args.file.read_bytes()
    try:
        with progress(f"transcribing {args.file.name}"):
            if args.format == "json":
                response = handler({"inputs": base64.b64encode(data).decode(), "parameters": parameters})
                output, duration = json.dumps(response, indent=2, ensure_ascii=False) + "\n", response["duration"]
            else:
                transcript, config = handler.pipeline.transcribe_request({"inputs": data, "parameters": parameters})
                rendered = render(transcript, args.format, config.task, config.return_timestamps == "word",
                                  uri=args.file.stem)
                output = rendered if isinstance(rendered, str) else json.dumps(rendered, indent=2,
                                                                               ensure_ascii=False) + "\n"
                duration = transcript.duration
    except RequestError as error:
        print(json.dumps(error.to_dict()), file=sys.stderr)
        return 2
    done = time.perf_counter()
    sys.stdout.write(output)
    print(f"load {loaded - started:.1f} s, transcribe {done - loaded:.1f} s for {duration:.1f} s of audio",
          file=sys.stderr)
    return 0


@contextmanager
def progress(label: str, stream: TextIO | None = None) -> Iterator[None]:
    """A spinner with the elapsed time on a terminal while the work runs; nothing when stderr is a file or pipe."""
    stream = stream or sys.stderr  # looked up per call: tests and callers may swap sys.stderr
    if not stream.isatty():
        yield
        return
    stop = threading.Event()

    def spin() -> None:
        begun, frame = time.perf_counter(), 0
        while not stop.wait(0.25):
            stream.write(f"\r{_SPINNER[frame % 4]} {label}: {time.perf_counter() - begun:.0f} s")
            stream.flush()
            frame += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        stream.write("\r\033[K")  # erase the spinner line before the summary
        stream.flush()


if __name__ == "__main__":
    sys.exit(main())
