"""scripts/deploy_endpoint.py: arguments, the dry-run payload, token handling and lifecycle calls; no network."""

import inspect
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import huggingface_hub
import pytest
from conftest import ROOT

from scripts import deploy_endpoint

TOKEN = "hf_TESTsecretTOKEN0123456789"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any real hub call fails the test; HF_TOKEN is a known fake."""
    def refuse(*args, **kwargs):
        raise AssertionError("a real huggingface_hub call was made")

    monkeypatch.setattr(huggingface_hub, "create_inference_endpoint", refuse)
    monkeypatch.setattr(huggingface_hub, "get_inference_endpoint", refuse)
    monkeypatch.setenv("HF_TOKEN", TOKEN)


class FakeEndpoint:
    def __init__(self, calls: list, name: str = "asr-test"):
        self.calls, self.name, self.namespace = calls, name, "me"
        self.status, self.url = "paused", None

    def pause(self):
        self.calls.append("pause")
        self.status = "paused"
        return self

    def resume(self):
        self.calls.append("resume")
        self.status = "initializing"
        return self

    def delete(self):
        self.calls.append("delete")

    def wait(self, timeout=None, refresh_every=5):
        self.calls.append(("wait", timeout))
        self.status, self.url = "running", "https://asr-test.endpoints.example"
        return self


def run(capsys, argv):
    code = deploy_endpoint.main(argv)
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    return code, out, err


def test_dry_run_prints_the_create_kwargs_with_the_token_masked(capsys):
    code, out, _ = run(capsys, ["asr-test", "--repository", "me/whisper-endpoint", "--dry-run"])
    assert code == 0
    printed = json.loads(out)
    assert printed["call"] == "huggingface_hub.create_inference_endpoint"
    kwargs = printed["kwargs"]
    # the documented shape: every key is a parameter of create_inference_endpoint, the required ones are there
    inspect.signature(huggingface_hub.HfApi.create_inference_endpoint).bind(None, **kwargs)
    assert kwargs == {
        "name": "asr-test", "repository": "me/whisper-endpoint", "revision": None, "namespace": None,
        "framework": "pytorch", "task": "custom", "accelerator": "gpu", "vendor": "aws", "region": "us-east-1",
        "instance_type": "nvidia-l4", "instance_size": "x1", "type": "authenticated",
        "min_replica": 0, "max_replica": 1, "scale_to_zero_timeout": 15,
        "env": {"ASR_MODEL": "openai/whisper-large-v3", "ASSISTANT_MODEL": "distil-whisper/distil-large-v3",
                "DIARIZATION_MODEL": "pyannote/speaker-diarization-3.1", "OMP_WAIT_POLICY": "PASSIVE"},
        "secrets": {"HF_TOKEN": "hf_***"}, "token": "hf_***",
    }


def test_dry_run_options_map_onto_the_kwargs(capsys):
    code, out, _ = run(capsys, [
        "asr-2", "--repository", "org/repo", "--revision", "abc", "--namespace", "org", "--instance-type",
        "nvidia-a10g", "--instance-size", "x2", "--region", "eu-west-1", "--min-replica", "1", "--max-replica", "3",
        "--diarization-model", "", "--assistant-model", "", "--env", "DTYPE=float16", "--type", "private",
        "--dry-run", "--wait", "--timeout", "99"])
    assert code == 0
    printed = json.loads(out)
    kwargs = printed["kwargs"]
    assert printed["wait"] == 99
    # '' switches a model off
    assert kwargs["env"] == {"ASR_MODEL": "openai/whisper-large-v3", "DTYPE": "float16", "OMP_WAIT_POLICY": "PASSIVE"}
    assert (kwargs["min_replica"], kwargs["max_replica"], kwargs["scale_to_zero_timeout"]) == (1, 3, None)
    assert (kwargs["instance_type"], kwargs["instance_size"], kwargs["region"]) == ("nvidia-a10g", "x2", "eu-west-1")
    assert (kwargs["revision"], kwargs["namespace"], kwargs["type"]) == ("abc", "org", "private")


def test_dry_run_without_a_token_warns_and_sends_no_secret(capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    code, out, err = run(capsys, ["asr-test", "--repository", "me/repo", "--dry-run"])
    assert code == 0 and "HF_TOKEN is not set" in err
    kwargs = json.loads(out)["kwargs"]
    assert kwargs["secrets"] is None and kwargs["token"] is None


def test_the_kwargs_become_the_documented_rest_payload(monkeypatch):
    """The real huggingface_hub builds the request from our kwargs; the session is replaced, nothing is sent."""
    sent = {}

    class Captured(Exception):
        pass

    class Session:
        def post(self, url, headers=None, json=None, **kwargs):
            sent.update(url=url, headers=headers, json=json)
            raise Captured

    monkeypatch.setattr(huggingface_hub.hf_api, "get_session", lambda: Session())
    monkeypatch.setattr(huggingface_hub, "create_inference_endpoint", huggingface_hub.HfApi().create_inference_endpoint)
    assert deploy_endpoint.main(["asr-test", "--repository", "me/whisper-endpoint", "--namespace", "me"]) == 1
    payload = sent["json"]
    assert sent["url"].endswith("/endpoint/me") and sent["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert payload["compute"] == {"accelerator": "gpu", "instanceSize": "x1", "instanceType": "nvidia-l4",
                                  "scaling": {"maxReplica": 1, "minReplica": 0, "scaleToZeroTimeout": 15}}
    assert payload["model"] == {
        "framework": "pytorch", "repository": "me/whisper-endpoint", "revision": None, "image": {"huggingface": {}},
        "task": "custom", "env": {"ASR_MODEL": "openai/whisper-large-v3",
                                  "ASSISTANT_MODEL": "distil-whisper/distil-large-v3",
                                  "DIARIZATION_MODEL": "pyannote/speaker-diarization-3.1",
                                  "OMP_WAIT_POLICY": "PASSIVE"},
        "secrets": {"HF_TOKEN": TOKEN},  # the token travels as a secret, never as a plain env var
    }
    assert payload["provider"] == {"region": "us-east-1", "vendor": "aws"}
    assert payload["name"] == "asr-test" and payload["type"] == "authenticated"


@pytest.mark.parametrize("argv, message", [
    (["asr", "--token", TOKEN, "--repository", "r"], "unrecognized arguments"),
    (["asr", "--tok", TOKEN, "--repository", "r"], "unrecognized arguments"),
    (["asr", "--repository", "r", "--env", f"HF_TOKEN={TOKEN}"], "environment only"),
    (["asr", "--repository", "r", "--env", "NOEQUALS"], "KEY=VALUE"),
    (["asr"], "nothing to do"),
    (["asr", "--repository", "r", "--pause"], "existing one"),
    (["asr", "--pause", "--resume"], "not allowed with"),
    (["asr", "--delete", "--wait"], "--wait goes with"),
    (["asr", "--repository", "r", "--min-replica", "2", "--max-replica", "1"], "min-replica"),
])
def test_bad_arguments_are_refused_and_never_echo_the_token(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        deploy_endpoint.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err
    assert TOKEN not in err


def test_no_option_holds_the_token():
    args = deploy_endpoint.parse_args(["asr", "--repository", "r"])
    assert not any("token" in name for name in vars(args))
    assert TOKEN not in repr(vars(args))


@pytest.mark.parametrize("argv, calls", [
    (["--pause"], ["pause"]),
    (["--resume"], ["resume"]),
    (["--resume", "--wait", "--timeout", "60"], ["resume", ("wait", 60)]),
    (["--wait"], [("wait", 1800)]),
    (["--delete", "--yes"], ["delete"]),
    (["--status"], []),
])
def test_lifecycle_actions_call_the_endpoint_methods(capsys, monkeypatch, argv, calls):
    made, looked_up = [], []

    def get_inference_endpoint(name, *, namespace=None, token=None):
        looked_up.append((name, namespace, token))
        return FakeEndpoint(made, name)

    monkeypatch.setattr(huggingface_hub, "get_inference_endpoint", get_inference_endpoint)
    code, out, _ = run(capsys, ["asr-test", "--namespace", "me", *argv])
    assert code == 0
    assert looked_up == [("asr-test", "me", TOKEN)] and made == calls
    printed = json.loads(out)
    assert printed["name"] == "asr-test"
    assert printed["status"] == ("deleted" if "delete" in calls else "running" if ("wait", 60) in calls or
                                 ("wait", 1800) in calls else "initializing" if "resume" in calls else "paused")


def test_create_and_wait_passes_the_token_to_the_library_only(capsys, monkeypatch):
    made, received = [], {}

    def create_inference_endpoint(name, **kwargs):
        received.update(kwargs, name=name)
        return FakeEndpoint(made, name)

    monkeypatch.setattr(huggingface_hub, "create_inference_endpoint", create_inference_endpoint)
    code, out, err = run(capsys, ["asr-test", "--repository", "me/repo", "--wait", "--timeout", "120"])
    assert code == 0 and made == [("wait", 120)]
    assert received["secrets"] == {"HF_TOKEN": TOKEN} and received["token"] == TOKEN
    assert "HF_TOKEN" not in received["env"]
    assert json.loads(out) == {"name": "asr-test", "namespace": "me", "status": "running",
                               "url": "https://asr-test.endpoints.example"}


def test_delete_without_yes_on_a_pipe_does_nothing(capsys, monkeypatch):
    made = []
    monkeypatch.setattr(huggingface_hub, "get_inference_endpoint", lambda *a, **k: FakeEndpoint(made))
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))
    code, _, err = run(capsys, ["asr-test", "--delete"])
    assert code == 1 and made == [] and "--yes" in err


def test_without_a_token_nothing_is_called(capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    code, _, err = run(capsys, ["asr-test", "--pause"])
    assert code == 2 and "HF_TOKEN" in err


def test_timeouts_and_errors_are_reported_with_the_token_redacted(capsys, monkeypatch):
    from huggingface_hub.errors import InferenceEndpointTimeoutError

    class Slow(FakeEndpoint):
        def wait(self, timeout=None, refresh_every=5):
            raise InferenceEndpointTimeoutError("timed out")

    monkeypatch.setattr(huggingface_hub, "get_inference_endpoint", lambda *a, **k: Slow([]))
    code, _, err = run(capsys, ["asr-test", "--wait", "--timeout", "5"])
    assert code == 3 and "not running after 5 s" in err

    def failing(*args, **kwargs):
        raise ConnectionError(f"bad request sent with {TOKEN}")

    monkeypatch.setattr(huggingface_hub, "get_inference_endpoint", failing)
    code, _, err = run(capsys, ["asr-test", "--pause"])
    assert code == 1 and "ConnectionError: bad request sent with hf_***" in err


def test_any_token_pasted_on_the_command_line_is_masked_in_errors(capsys):
    with pytest.raises(SystemExit):
        deploy_endpoint.parse_args(["asr", "--repository", "r", "--token", "hf_PastedByMistake42"])
    err = capsys.readouterr().err
    assert "hf_PastedByMistake42" not in err and "read from the environment only" in err


# --- the custom container: scripts/deploy_endpoint.py --custom-image and the Dockerfile ---------------------------

IMAGE = "ghcr.io/me/whisper-endpoint:1"


def test_custom_image_dry_run_names_the_container_port_and_health_route(capsys):
    code, out, _ = run(capsys, ["asr-test", "--repository", "me/whisper-endpoint", "--custom-image", IMAGE,
                                "--dry-run"])
    assert code == 0
    kwargs = json.loads(out)["kwargs"]
    inspect.signature(huggingface_hub.HfApi.create_inference_endpoint).bind(None, **kwargs)
    assert kwargs["custom_image"] == {"url": IMAGE, "port": 8000, "healthRoute": "/health"}
    assert kwargs["env"]["ASR_MODEL"] == "openai/whisper-large-v3" and kwargs["secrets"] == {"HF_TOKEN": "hf_***"}


def test_custom_image_becomes_the_apis_custom_container_payload(monkeypatch):
    sent = {}

    class Session:
        def post(self, url, headers=None, json=None, **kwargs):
            sent.update(json=json)
            raise RuntimeError("not sent")

    monkeypatch.setattr(huggingface_hub.hf_api, "get_session", lambda: Session())
    monkeypatch.setattr(huggingface_hub, "create_inference_endpoint", huggingface_hub.HfApi().create_inference_endpoint)
    assert deploy_endpoint.main(["asr-test", "--repository", "me/whisper-endpoint", "--namespace", "me",
                                 "--custom-image", IMAGE, "--port", "8080"]) == 1
    assert sent["json"]["model"]["image"] == {"custom": {"url": IMAGE, "port": 8080, "healthRoute": "/health"}}
    assert sent["json"]["model"]["secrets"] == {"HF_TOKEN": TOKEN}


@pytest.mark.parametrize("argv", [["--port", "0"], ["--port", "70000"], ["--health-route", "health"]])
def test_custom_image_bad_port_or_route_is_refused(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        deploy_endpoint.parse_args(["asr", "--repository", "r", "--custom-image", IMAGE, *argv])
    assert exit_info.value.code == 2 and "--port" in capsys.readouterr().err


def _dockerfile() -> dict[str, list[str]]:
    instructions: dict[str, list[str]] = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.setdefault(keyword, []).append(rest.strip())
    return instructions


def test_dockerfile_serves_the_server_where_deploy_endpoint_looks():
    """The image itself is not built here (no Docker engine): its port, command and health route are checked
    against the deploy script and the server, and the rest runs in CI as the same commands (bash setup.sh)."""
    import server

    docker = _dockerfile()
    command = json.loads(docker["CMD"][0])
    assert docker["EXPOSE"] == [str(deploy_endpoint.CONTAINER_PORT)]
    assert command[command.index("--port") + 1] == str(deploy_endpoint.CONTAINER_PORT)
    assert command[:4] == [".venv/bin/python", "-m", "uvicorn", "server:app"] and "0.0.0.0" in command
    assert docker["RUN"] == ["bash setup.sh"] and docker["FROM"][0].startswith("python:3.11")
    assert any(getattr(route, "path", None) == deploy_endpoint.HEALTH_ROUTE and "GET" in route.methods
               for route in server.create_app().routes)  # what `server:app` builds, without caching it
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "models", ".git"} <= set(ignored)  # the image builds its own venv and models


@pytest.mark.e2e
def test_dockerfile_command_serves_health_in_the_local_venv():
    """The Dockerfile's CMD, on 127.0.0.1 and a free port, in the venv setup.sh made: /health goes 503 -> 200."""
    command = json.loads(_dockerfile()["CMD"][0])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command[command.index("0.0.0.0")] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    env = {key: value for key, value in os.environ.items()
           if key not in ("ASR_MODEL", "ASSISTANT_MODEL", "DIARIZATION_MODEL", "API_KEY")}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    statuses = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and 200 not in statuses:
            try:
                statuses.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status)
            except urllib.error.HTTPError as error:
                statuses.append(error.code)
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(20)
    assert statuses and statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
