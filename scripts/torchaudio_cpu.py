"""Let a CUDA torchaudio wheel import beside a CPU torch: remove its compiled extension (`python -m scripts.torchaudio_cpu`).

The torchaudio wheels on PyPI that accept torch 2.13 are CUDA builds: on a CPU torch their extension cannot load
and `import torchaudio` fails. Without it torchaudio runs pure-Python, which is all pyannote and transformers use.
Does nothing where torch is a CUDA build (a GPU image) or torchaudio is absent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def strip_extension() -> list[Path]:
    """Delete torchaudio's compiled libraries when torch is a CPU build; returns what was deleted."""
    import torch

    spec = importlib.util.find_spec("torchaudio")
    if torch.version.cuda is not None or spec is None or spec.origin is None:
        return []
    removed = sorted((Path(spec.origin).parent / "lib").glob("*.so"))
    for library in removed:
        library.unlink()
    return removed


if __name__ == "__main__":
    for path in strip_extension():
        print(f"removed {path}")
