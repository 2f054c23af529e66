"""Let torchaudio import beside a torch it was not built for: remove its compiled extension when that cannot load.

    python -m scripts.torchaudio_cpu

The torchaudio wheels on PyPI that accept torch 2.13 (2.11) are CUDA builds for torch 2.11: on a CPU torch their
extension cannot load, and `import torchaudio` fails (`OSError: Could not load this library`). Without the
extension torchaudio runs pure-Python, which is all pyannote and transformers use here. A torchaudio whose
extension loads (the matching build on a GPU image) is left alone, as is an environment without torchaudio.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path


def _imports() -> bool:
    return subprocess.run([sys.executable, "-c", "import torchaudio"], capture_output=True).returncode == 0


def strip_extension() -> list[Path]:
    """Delete torchaudio's compiled libraries if `import torchaudio` fails with them; returns what was deleted."""
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or spec.origin is None or _imports():
        return []
    removed = sorted((Path(spec.origin).parent / "lib").glob("*.so"))
    for library in removed:
        library.unlink()
    if not _imports():
        raise SystemExit("torchaudio does not import even without its compiled extension")
    return removed


if __name__ == "__main__":
    argparse.ArgumentParser(prog="python -m scripts.torchaudio_cpu", description=__doc__.split("\n\n")[0]).parse_args()
    for path in strip_extension():
        print(f"removed {path}")
