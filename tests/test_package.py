"""The distribution: `pip install .` gives the flat modules, the scripts package and two working commands."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, encode, tone

NAME = "whisper-diarization-endpoint"


@pytest.fixture(autouse=True, scope="module")
def _no_build_leftovers() -> Iterator[None]:
    """Building in place leaves build/ and *.egg-info in the source tree: the tests remove what they made (an
    egg-info in the working folder reads as an installed distribution to a later `python -c`)."""
    before = set(ROOT.glob("*.egg-info")) | set(ROOT.glob("build"))
    yield
    for made in (set(ROOT.glob("*.egg-info")) | set(ROOT.glob("build"))) - before:
        shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package installed into a folder of its own (the venv's packages serve its dependencies)."""
    target = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--disable-pip-version-check", "--target", str(target), str(ROOT)],
                         capture_output=True, text=True, timeout=300, cwd=target)
    assert run.returncode == 0, run.stderr[-2000:]
    return target


def _env(installed: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(installed), "ASSISTANT_MODEL": "", "DIARIZATION_MODEL": "", **extra}


def test_the_distribution_holds_the_modules_and_commands_only(installed):
    top = {p.name for p in installed.iterdir()} - {"__pycache__"}
    modules = {p.name for p in ROOT.glob("*.py")}
    assert modules <= top and "scripts" in top and "bin" in top
    assert not top & {"samples", "tests", "benchmarks", "models", "docs"}
    (info,) = installed.glob("whisper_diarization_endpoint-*.dist-info")
    entry_points = (info / "entry_points.txt").read_text()
    assert "whisper-transcribe = scripts.transcribe:main" in entry_points
    assert "whisper-server = scripts.serve:main" in entry_points
    # its dependencies are the local stack's pins (what setup.sh installs), torch exactly 2.13.0
    requires = [line.split(": ", 1)[1] for line in (info / "METADATA").read_text().splitlines()
                if line.startswith("Requires-Dist: ")]
    pins = [line.strip() for line in (ROOT / "requirements-local.txt").read_text().splitlines()
            if line.strip() and not line.startswith(("#", "-"))]
    assert requires == pins and "torch==2.13.0" in requires


def test_pip_install_into_the_set_up_venv_installs_the_package_and_nothing_else():
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation",
                          "--disable-pip-version-check", str(ROOT)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("Would install")]
    assert line.split()[2:] == [f"{NAME}-1.0.0"]


def test_the_commands_run_outside_the_repo(installed, tiny_models, tmp_path):
    audio = tmp_path / "tone.wav"
    audio.write_bytes(encode(tone(3.0), 16000, "wav", "pcm_s16le"))
    env = _env(installed)
    for command in ("whisper-transcribe", "whisper-server"):
        run = subprocess.run([str(installed / "bin" / command), "--help"], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=120)
        assert run.returncode == 0 and run.stdout.startswith(f"usage: {command}"), run.stderr[-2000:]
    run = subprocess.run([str(installed / "bin" / "whisper-transcribe"), str(audio), "--model",
                          str(tiny_models["main"]), "--output_dir", "out", "--output_format", "json",
                          "--parameters", '{"vad": false}'], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "tone.json").read_text())["duration"] == 3.0
    assert "Loading weights" not in run.stderr and "state dict" not in run.stderr


def test_the_server_command_serves(installed, tiny_models, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(installed / "bin" / "whisper-server"), "--log-level", "warning"],
                              env=_env(installed, ASR_MODEL=str(tiny_models["main"]), PORT=str(port)), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    health = json.load(response)
                    break
            except OSError:
                time.sleep(0.5)
        assert health and health["status"] == "ok", server.stdout.read() if server.poll() is not None else health
        assert health["model"]["asr_model"] == str(tiny_models["main"])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_installed_copy_finds_the_models_of_the_checkout_whose_venv_runs_it(tmp_path, monkeypatch):
    from config import DEFAULT_ASR_MODEL, ModelSettings

    checkout_models = Path(sys.prefix).parent / DEFAULT_ASR_MODEL  # setup.sh's .venv sits in the checkout
    if not checkout_models.is_dir():
        pytest.skip("this venv is not a checkout's .venv with built models")
    monkeypatch.chdir(tmp_path)
    assert ModelSettings().resolve(DEFAULT_ASR_MODEL, tmp_path / "site-packages") == str(checkout_models.resolve())
    assert ModelSettings().resolve("openai/whisper-base", tmp_path) == "openai/whisper-base"  # a hub id stays
