"""Transcribe an audio file with the handler and print the JSON response.

    python -m scripts.transcribe samples/sample.flac [--parameters '{"return_timestamps": "word"}']

Models come from the same env vars as the endpoint (ASR_MODEL, ASSISTANT_MODEL, DIARIZATION_MODEL, ...);
without them, the offline defaults that setup.sh builds in models/.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the handler repo's flat modules

from config import RequestError  # noqa: E402
from handler import EndpointHandler  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="audio file (wav, flac, mp3, ogg, m4a, ...)")
    parser.add_argument("--parameters", default="{}", help="request parameters as a JSON object")
    args = parser.parse_args(argv)
    try:
        parameters = json.loads(args.parameters)
    except json.JSONDecodeError as error:
        parser.error(f"--parameters is not JSON: {error}")
    started = time.perf_counter()
    handler = EndpointHandler()
    loaded = time.perf_counter()
    try:
        response = handler({"inputs": base64.b64encode(args.file.read_bytes()).decode(), "parameters": parameters})
    except RequestError as error:
        print(json.dumps(error.to_dict()), file=sys.stderr)
        return 2
    done = time.perf_counter()
    print(json.dumps(response, indent=2, ensure_ascii=False))
    print(f"load {loaded - started:.1f} s, transcribe {done - loaded:.1f} s for {response['duration']:.1f} s of audio",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
