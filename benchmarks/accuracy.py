"""Word error rate of each CPU precision against the reference texts: does a fast path cost accuracy?

    python -m benchmarks.accuracy [--dtypes float32,bfloat16] [--out benchmarks/results/accuracy.json]

The corpus: four recordings whose texts are known, `samples/sample.flac` (10.5 s), the same five times with pauses
(55 s: several windows), `samples/two_speakers.ogg` (24 s) and the one recording of real people at hand,
pyannote.audio's `sample.wav` (30 s of a two-speaker phone call, with its transcript); each clean, 20 dB quieter,
shifted by 0.37 s, in white noise at 20 and 10 dB SNR (fixed seeds) and band-limited to 4 kHz. Every precision
transcribes every clip with the offline default ASR model (or ASR_MODEL), greedy, English, no diarization; the
script prints the corpus WER per precision and every clip whose words differ from the first precision's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


from audio import SAMPLE_RATE, decode_audio
from config import PROJECT_DIR, InferenceConfig, ModelSettings
from benchmarks.benchmark import normalise_words as words

SAMPLES = PROJECT_DIR / "samples"


def _noisy(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(audio)).astype(np.float32)
    scale = np.sqrt(np.mean(audio ** 2) / (np.mean(noise ** 2) * 10 ** (snr_db / 10)))
    return (audio + scale * noise).astype(np.float32)


def _telephone(audio: np.ndarray) -> np.ndarray:
    """Down to 8 kHz and back up: everything above 4 kHz gone, as on a phone line."""
    positions = np.arange(0, len(audio), 2.0)
    narrow = np.interp(positions, np.arange(len(audio)), np.convolve(audio, np.ones(2) / 2, mode="same"))
    return np.interp(np.arange(len(audio)) / 2.0, np.arange(len(narrow)), narrow).astype(np.float32)


def corpus() -> dict[str, tuple[np.ndarray, str]]:
    """Clip name -> (16 kHz mono audio, reference text): every recording under every condition."""
    sample = decode_audio((SAMPLES / "sample.flac").read_bytes())
    sample_text = (SAMPLES / "sample.txt").read_text().strip()
    turns = json.loads((SAMPLES / "two_speakers.json").read_text())["turns"]
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    recordings = {
        "sample": (sample, sample_text),
        "sample x5": (np.concatenate([sample, gap] * 5), " ".join([sample_text] * 5)),
        "two speakers": (decode_audio((SAMPLES / "two_speakers.ogg").read_bytes()),
                         " ".join(turn["text"] for turn in turns)),
        "phone call": phone_call(),
    }
    conditions = {
        "clean": lambda audio, seed: audio,
        "quiet (-20 dB)": lambda audio, seed: audio * 0.1,
        "shifted 0.37 s": lambda audio, seed: np.concatenate([np.zeros(int(0.37 * SAMPLE_RATE), np.float32), audio]),
        "20 dB SNR": lambda audio, seed: _noisy(audio, 20, seed),
        "10 dB SNR": lambda audio, seed: _noisy(audio, 10, seed),
        "telephone band": lambda audio, seed: _telephone(audio),
    }
    return {f"{name}, {condition}": (change(audio, seed), text)
            for seed, (name, (audio, text)) in enumerate(recordings.items())
            for condition, change in conditions.items()}


def phone_call() -> tuple[np.ndarray, str]:
    """pyannote.audio's own test recording and its reference (`sample.stm`: five fields, then the words)."""
    import importlib.util

    folder = Path(next(iter(importlib.util.find_spec("pyannote.audio").submodule_search_locations))) / "sample"
    reference = " ".join(line.split(" ", 5)[5] for line in (folder / "sample.stm").read_text().splitlines())
    return decode_audio((folder / "sample.wav").read_bytes()), reference


def transcribe_all(dtype: str, clips: dict[str, tuple[np.ndarray, str]]) -> dict[str, str]:
    from speech_pipeline import SpeechPipeline

    pipeline = SpeechPipeline(ModelSettings(assistant_model="", diarization_model="", dtype=dtype))
    config = InferenceConfig.parse({"language": "en", "diarization": False})
    return {name: pipeline.transcribe(audio, config).text for name, (audio, _) in clips.items()}


def main(argv: list[str] | None = None) -> dict:
    import jiwer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated ModelSettings.dtype values")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    clips = corpus()
    references = [words(text) for _, text in clips.values()]
    report: dict = {"clips": list(clips), "dtypes": {}}
    for dtype in args.dtypes.split(","):
        texts = transcribe_all(dtype, clips)
        hypotheses = [words(text) for text in texts.values()]
        report["dtypes"][dtype] = {"wer": round(float(jiwer.wer(references, hypotheses)), 4), "texts": texts}
        print(f"{dtype:>9}: corpus WER {report['dtypes'][dtype]['wer']:.4f}")
    base, *others = report["dtypes"]
    for dtype in others:
        for name in clips:
            ours, theirs = report["dtypes"][base]["texts"][name], report["dtypes"][dtype]["texts"][name]
            if words(ours) != words(theirs):
                print(f"  {name}: {base} {ours!r}\n  {' ' * len(name)}  {dtype} {theirs!r}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
