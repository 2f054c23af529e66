"""The module layout README's "How it works" describes: no import cycle, and the light modules stay light."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from conftest import ROOT

TOP_LEVEL = {path.stem for path in ROOT.glob("*.py")}


def _imports(path) -> set[str]:
    """Top-level project modules a file imports anywhere (function-level and TYPE_CHECKING imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & TOP_LEVEL


def test_no_import_cycle_among_the_top_level_modules():
    graph = {name: _imports(ROOT / f"{name}.py") - {name} for name in TOP_LEVEL}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            assert state.get(target) != "open", f"import cycle: {' -> '.join(path + [name, target])}"
            if target not in state:
                visit(target, path + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_formats_the_data_model_and_the_client_import_without_torch():
    code = ("import sys, formats, transcript, errors, scripts.client; "
            "assert 'torch' not in sys.modules and 'speech_pipeline' not in sys.modules, sorted(sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


# records the OpenMP wait policy in force when torch is first imported (libgomp reads it once, at load)
TORCH_LOAD_SPY = """
import importlib, importlib.abc, os, sys
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            print("policy:", os.environ.get("OMP_WAIT_POLICY"))
            sys.meta_path.remove(self)
sys.meta_path.insert(0, Spy())
importlib.import_module(sys.argv[1])
"""


@pytest.mark.parametrize("entry", ["handler", "server", "admission", "speech_pipeline"])
def test_torch_loads_with_openmp_threads_that_sleep_while_they_wait(entry):
    """Spinning OpenMP threads slow decoding several-fold on a busy CPU (docs/streaming.md): every entry point must
    load torch with the passive wait policy, and a user's own setting must win."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", TORCH_LOAD_SPY, entry], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert "policy: PASSIVE" in run.stdout, run.stderr[-2000:]
    mine = subprocess.run([sys.executable, "-c", TORCH_LOAD_SPY, entry], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert "policy: ACTIVE" in mine.stdout, mine.stderr[-2000:]


def test_scripts_hold_product_commands_and_benchmarks_the_measurement_tools():
    assert not [p.name for p in (ROOT / "scripts").glob("bench*")]
    assert not list((ROOT / "scripts").glob("reliability*")) and not list((ROOT / "scripts").glob("accuracy*"))
    for path in [*(ROOT / "scripts").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        assert "sys.path.insert" not in path.read_text(), path  # run with python -m from the repo root


def test_every_command_and_measurement_tool_runs_as_documented():
    """`python -m scripts.X --help` / `python -m benchmarks.X --help` from the repo root, as their docstrings say."""
    names = [f"{folder}.{path.stem}" for folder in ("scripts", "benchmarks")
             for path in sorted((ROOT / folder).glob("*.py")) if "argparse" in path.read_text()]
    assert "benchmarks.benchmark" in names and "scripts.client" in names
    runs = {name: subprocess.Popen([sys.executable, "-m", name, "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for name in names}
    for name, run in runs.items():
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0 and "usage:" in out, (name, err[-2000:])


def test_the_package_ships_every_top_level_module():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert sorted(config["tool"]["setuptools"]["py-modules"]) == sorted(TOP_LEVEL)
