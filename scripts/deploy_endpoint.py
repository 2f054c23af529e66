"""Create and manage a Hugging Face Inference Endpoint that serves this repo's handler.

    HF_TOKEN=hf_... python -m scripts.deploy_endpoint NAME --repository USER/REPO [--wait] [--dry-run]
    HF_TOKEN=hf_... python -m scripts.deploy_endpoint NAME --pause | --resume [--wait] | --delete --yes | --status
    HF_TOKEN=hf_... python -m scripts.deploy_endpoint NAME --wait [--timeout 1800]
    HF_TOKEN=hf_... python -m scripts.deploy_endpoint NAME --repository USER/REPO --custom-image REGISTRY/IMAGE:TAG

The endpoint runs `handler.py` from the model repository (task "custom", framework "pytorch") on a GPU, with
ASR_MODEL, ASSISTANT_MODEL and DIARIZATION_MODEL as environment variables. With --custom-image it runs that
container instead (this repo's Dockerfile: server.py on port 8000, readiness at /health), not Hugging Face's
toolkit; the repository is still mounted in it, as the API requires one. HF_TOKEN is read from the caller's
environment only (there is no command-line option for it): it authenticates the API calls and is handed to the
endpoint as a secret, so gated models such as pyannote load. By default the endpoint scales to zero when idle
(--min-replica 0, --scale-to-zero-timeout minutes). --dry-run prints the exact keyword arguments of
huggingface_hub.create_inference_endpoint as JSON, token masked, and touches no network.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

TOKEN_ENV = "HF_TOKEN"
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")
CONTAINER_PORT = 8000  # the Dockerfile's EXPOSE and uvicorn --port
HEALTH_ROUTE = "/health"  # server.py: 503 while the models load, 200 once they serve
DEFAULT_ENV = {
    "ASR_MODEL": "openai/whisper-large-v3",
    "ASSISTANT_MODEL": "distil-whisper/distil-large-v3",
    "DIARIZATION_MODEL": "pyannote/speaker-diarization-3.1",
}


def mask(token: str) -> str:
    """What a token looks like in printed output: its kind, never its value."""
    return "hf_***" if token.startswith("hf_") else "***"


def redact(text: str, token: str | None) -> str:
    """Error messages from the API may echo request data: never let the token through."""
    return text.replace(token, mask(token)) if token else text


class _Parser(argparse.ArgumentParser):
    """argparse echoes unknown arguments in its errors: a token pasted on the command line must not be printed."""

    def error(self, message: str):  # type: ignore[override]
        hidden = _TOKEN_LIKE.sub("hf_***", redact(message, os.environ.get(TOKEN_ENV) or None))
        if hidden != message:
            hidden += f" ({TOKEN_ENV} is read from the environment only, never from arguments)"
        super().error(hidden)


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key.strip().upper() == TOKEN_ENV:
        raise argparse.ArgumentTypeError(f"{TOKEN_ENV} is taken from your environment only, never from arguments")
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: no option prefix can ever be mistaken for a token option
    parser = _Parser(prog="python -m scripts.deploy_endpoint", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="endpoint name (lowercase letters, digits and '-')")
    create = parser.add_argument_group("create (when --repository is given)")
    create.add_argument("--repository", help="model repository holding handler.py and requirements.txt")
    create.add_argument("--revision", help="commit of the repository to deploy")
    create.add_argument("--namespace", help="user or organisation owning the endpoint (default: the token's user)")
    create.add_argument("--framework", default="pytorch")
    create.add_argument("--task", default="custom", help="'custom' runs the repo's handler.py")
    create.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu"])
    create.add_argument("--vendor", default="aws")
    create.add_argument("--region", default="us-east-1")
    create.add_argument("--instance-type", default="nvidia-l4", help="e.g. nvidia-l4, nvidia-a10g, nvidia-a100")
    create.add_argument("--instance-size", default="x1", help="e.g. x1, x2, x4")
    create.add_argument("--type", default="authenticated", choices=["authenticated", "public", "private"],
                        help="who may call the endpoint")
    create.add_argument("--min-replica", type=int, default=0, help="0 lets the endpoint scale to zero when idle")
    create.add_argument("--max-replica", type=int, default=1)
    create.add_argument("--scale-to-zero-timeout", type=int, default=15,
                        help="idle minutes before scaling to zero (used only with --min-replica 0)")
    create.add_argument("--asr-model", default=DEFAULT_ENV["ASR_MODEL"], help="ASR_MODEL on the endpoint")
    create.add_argument("--assistant-model", default=DEFAULT_ENV["ASSISTANT_MODEL"],
                        help="ASSISTANT_MODEL on the endpoint; '' disables speculative decoding")
    create.add_argument("--diarization-model", default=DEFAULT_ENV["DIARIZATION_MODEL"],
                        help="DIARIZATION_MODEL on the endpoint; '' disables diarization")
    create.add_argument("--custom-image", metavar="URL",
                        help="deploy this container (built from the Dockerfile) instead of the handler toolkit")
    create.add_argument("--port", type=int, default=CONTAINER_PORT, help="port the custom container listens on")
    create.add_argument("--health-route", default=HEALTH_ROUTE,
                        help="route answering 200 once the custom container serves")
    create.add_argument("--env", type=_env_pair, action="append", default=[], metavar="KEY=VALUE",
                        help="more environment variables (DTYPE, MAX_AUDIO_SECONDS, ...); repeatable")
    life = parser.add_argument_group("lifecycle of an existing endpoint")
    actions = life.add_mutually_exclusive_group()
    actions.add_argument("--pause", action="store_true", help="stop it (no billing, no scale-up until resumed)")
    actions.add_argument("--resume", action="store_true", help="start a paused endpoint")
    actions.add_argument("--delete", action="store_true", help="delete it (asks unless --yes)")
    actions.add_argument("--status", action="store_true", help="print its status and URL")
    life.add_argument("--wait", action="store_true", help="wait until it is running (after create or resume)")
    life.add_argument("--timeout", type=int, default=1800, help="seconds --wait waits at most")
    life.add_argument("--yes", action="store_true", help="confirm --delete without asking")
    parser.add_argument("--dry-run", action="store_true", help="print what would be called, as JSON; no network")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    lifecycle = args.pause or args.resume or args.delete or args.status
    if args.repository and lifecycle:
        parser.error("--repository creates an endpoint; --pause/--resume/--delete/--status act on an existing one")
    if not args.repository and not lifecycle and not args.wait:
        parser.error("nothing to do: give --repository to create, or one of --pause/--resume/--delete/--status/--wait")
    if args.wait and (args.pause or args.delete or args.status):
        parser.error("--wait goes with creating or --resume")
    if args.min_replica < 0 or args.max_replica < max(1, args.min_replica):
        parser.error("need 0 <= --min-replica <= --max-replica and --max-replica >= 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if not 0 < args.port < 65536 or not args.health_route.startswith("/"):
        parser.error("--port must be 1-65535 and --health-route a path starting with '/'")
    return args


def create_kwargs(args: argparse.Namespace, token: str | None) -> dict[str, Any]:
    """Keyword arguments for huggingface_hub.create_inference_endpoint (the token in clear: never print this)."""
    env = {"ASR_MODEL": args.asr_model, "ASSISTANT_MODEL": args.assistant_model,
           "DIARIZATION_MODEL": args.diarization_model}
    env = {key: value for key, value in env.items() if value}  # an empty value means "off": leave it unset
    # the toolkit loads torch before handler.py can set it: spinning OpenMP threads slow every request on a busy CPU
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env.update(dict(args.env))
    kwargs: dict[str, Any] = {
        "name": args.name, "repository": args.repository, "revision": args.revision, "namespace": args.namespace,
        "framework": args.framework, "task": args.task, "accelerator": args.accelerator, "vendor": args.vendor,
        "region": args.region, "instance_type": args.instance_type, "instance_size": args.instance_size,
        "type": args.type, "min_replica": args.min_replica, "max_replica": args.max_replica,
        # the API reads None as "never scale to zero", which is what min_replica > 0 means
        "scale_to_zero_timeout": args.scale_to_zero_timeout if args.min_replica == 0 else None,
        "env": env, "secrets": {TOKEN_ENV: token} if token else None, "token": token,
    }
    if args.custom_image:  # a flat dict: huggingface_hub sends it as the API's {"custom": {...}} image
        kwargs["custom_image"] = {"url": args.custom_image, "port": args.port, "healthRoute": args.health_route}
    return kwargs


def masked(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A printable copy of create_kwargs(): every secret value masked."""
    out = dict(kwargs)
    if out.get("token"):
        out["token"] = mask(out["token"])
    if out.get("secrets"):
        out["secrets"] = {key: mask(value) for key, value in out["secrets"].items()}
    return out


def describe(endpoint: Any) -> dict[str, Any]:
    return {"name": endpoint.name, "namespace": getattr(endpoint, "namespace", None),
            "status": str(getattr(endpoint.status, "value", endpoint.status)), "url": endpoint.url}


def _print(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    token = os.environ.get(TOKEN_ENV) or None
    action = ("create" if args.repository else "pause" if args.pause else "resume" if args.resume else
              "delete" if args.delete else "status" if args.status else "wait")
    if args.dry_run:
        if action == "create":
            _print({"call": "huggingface_hub.create_inference_endpoint", "kwargs": masked(create_kwargs(args, token)),
                    "wait": args.timeout if args.wait else None})
        else:
            _print({"call": "huggingface_hub.get_inference_endpoint", "name": args.name, "namespace": args.namespace,
                    "action": action, "wait": args.timeout if args.wait else None})
        if not token:
            print(f"warning: {TOKEN_ENV} is not set: the endpoint would get no token for gated models",
                  file=sys.stderr)
        return 0
    if not token:
        print(f"error: set {TOKEN_ENV} in your environment (a token with write access to Inference Endpoints)",
              file=sys.stderr)
        return 2
    if action == "delete" and not args.yes:
        if not sys.stdin.isatty() or input(f"delete endpoint {args.name!r}? [y/N] ").strip().lower() != "y":
            print("not deleted (pass --yes to confirm)", file=sys.stderr)
            return 1

    import huggingface_hub  # looked up at call time so the module-level functions can be replaced in tests
    from huggingface_hub.errors import InferenceEndpointTimeoutError

    try:
        if action == "create":
            endpoint = huggingface_hub.create_inference_endpoint(**create_kwargs(args, token))
        else:
            endpoint = huggingface_hub.get_inference_endpoint(args.name, namespace=args.namespace, token=token)
            if action == "pause":
                endpoint = endpoint.pause()
            elif action == "resume":
                endpoint = endpoint.resume()
            elif action == "delete":
                endpoint.delete()
                _print({"name": args.name, "status": "deleted"})
                return 0
        if args.wait:
            print(f"waiting up to {args.timeout} s for {args.name} to run...", file=sys.stderr)
            endpoint = endpoint.wait(timeout=args.timeout)
    except InferenceEndpointTimeoutError:
        print(f"error: {args.name} is not running after {args.timeout} s", file=sys.stderr)
        return 3
    except Exception as error:  # API, HTTP and network failures alike: one line, the token masked, no traceback
        print(f"error: {type(error).__name__}: {redact(str(error), token)}", file=sys.stderr)
        return 1
    _print(describe(endpoint))
    return 0


if __name__ == "__main__":
    sys.exit(main())
