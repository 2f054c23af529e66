"""Start the self-hosted server (server.py's FastAPI app) with Uvicorn.

    whisper-server --host 0.0.0.0 --port 8000 --workers 1 --log-level info     (or: python -m scripts.serve)

Each option falls back to an env var (HOST, PORT, WORKERS, LOG_LEVEL), then to the default shown. Models, limits
and API_KEY come from the server's env vars as README lists. Each worker is a process with its own models.
"""

from __future__ import annotations

import argparse
import os
import sys

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisper-server", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="address to bind (env HOST)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")), help="port (env PORT)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "1")),
                        help="server processes, each loading the models (env WORKERS)")
    parser.add_argument("--log-level", "--log_level", dest="log_level", choices=LOG_LEVELS,
                        default=os.environ.get("LOG_LEVEL", "info").lower(), help="env LOG_LEVEL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        build_parser().error("--workers must be at least 1")
    import uvicorn

    from http_protocol import uvicorn_options
    from server import ServerSettings

    # the factory builds the app in each worker, so each loads its own models after start-up; the guarded protocol
    # brings ServerSettings' connection deadlines (python -m server's)
    uvicorn.run("server:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, **uvicorn_options(ServerSettings()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
