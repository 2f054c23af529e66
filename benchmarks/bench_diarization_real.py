"""Diarization error rate on real recordings: the ten AMI tuning clips and pyannote's phone call.

    python -m benchmarks.bench_diarization_real --out benchmarks/results/bench_diarization_real.json
    python -m benchmarks.bench_diarization_real --compare BEFORE.json AFTER.json   # per-clip markdown table

For every clip, with no hint and with the true speaker count (`num_speakers`): DER from the diarizer's turns
alone, and end to end as a user sees it (each word of a `return_timestamps: "word"` response, labelled with its
speaker, is a turn; time between words is missed speech). DER is pyannote.metrics'
`DiarizationErrorRate(collar=0.0, skip_overlap=False)` over the UEM, per clip (miss, false alarm, confusion) and
pooled (sum of errors over sum of reference speech). Also: speakers found against the truth, seconds of
diarization per clip. Models come from ASR_MODEL and DIARIZATION_MODEL as in the endpoint (offline defaults
unless set); `--turns-only` skips ASR. Data: /work/shared/data/ami-debug-train (or --ami DIR) and the
`sample.wav` / `sample.rttm` inside the installed pyannote.audio wheel.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audio import SAMPLE_RATE, decode_audio
from config import InferenceConfig, ModelSettings

AMI = Path("/work/shared/data/ami-debug-train")
SETTINGS = ("none", "num_speakers")  # hints: none, or the true speaker count


@dataclass
class Clip:
    uri: str
    audio: np.ndarray
    reference: Any  # pyannote.core.Annotation
    uem: Any  # pyannote.core.Timeline


def phone_call_dir() -> Path | None:
    """pyannote.audio's sample folder (sample.wav + sample.rttm), or None when the wheel lacks it."""
    import importlib.util

    spec = importlib.util.find_spec("pyannote.audio")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "sample"
    return folder if (folder / "sample.wav").exists() and (folder / "sample.rttm").exists() else None


def read_rttm(path: Path) -> dict[str, Any]:
    """uri -> Annotation of an RTTM file (one SPEAKER line per turn)."""
    from pyannote.core import Annotation, Segment

    annotations: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[0] != "SPEAKER":
            continue
        uri, start, duration, speaker = fields[1], float(fields[3]), float(fields[4]), fields[7]
        annotation = annotations.setdefault(uri, Annotation(uri=uri))
        annotation[Segment(start, start + duration), len(annotation)] = speaker
    return annotations


def load_clips(ami: Path | None = AMI, phone_call: bool = True) -> list[Clip]:
    """The AMI clips (with their UEM) and the phone call (scored over the whole file)."""
    from pyannote.core import Segment, Timeline

    clips = []
    if ami is not None and (ami / "debug.train.rttm").exists():
        references = read_rttm(ami / "debug.train.rttm")
        for line in (ami / "debug.train.uem").read_text().splitlines():
            uri, _, start, end = line.split()
            audio = decode_audio((ami / f"{uri}.wav").read_bytes())
            clips.append(Clip(uri, audio, references[uri], Timeline([Segment(float(start), float(end))], uri=uri)))
    folder = phone_call_dir() if phone_call else None
    if folder is not None:
        audio = decode_audio((folder / "sample.wav").read_bytes())
        clips.append(Clip("sample", audio, read_rttm(folder / "sample.rttm")["sample"],
                          Timeline([Segment(0.0, len(audio) / SAMPLE_RATE)], uri="sample")))
    return clips


def annotation(uri: str, turns: list[tuple[float, float, str | None]]) -> Any:
    from pyannote.core import Annotation, Segment

    out = Annotation(uri=uri)
    for i, (start, end, speaker) in enumerate(turns):
        if speaker is not None and end > start:
            out[Segment(start, end), i] = speaker
    return out


def hints(clip: Clip, setting: str) -> dict[str, int]:
    return {"num_speakers": len(clip.reference.crop(clip.uem).labels())} if setting == "num_speakers" else {}


class Scores:
    """One pooled DER accumulator and per-clip components for one (source, setting)."""

    def __init__(self) -> None:
        from pyannote.metrics.diarization import DiarizationErrorRate

        self.metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)  # as pyannote reports AMI
        self.clips: dict[str, dict[str, Any]] = {}
        self.components: dict[str, dict[str, float]] = {}

    def add(self, clip: Clip, hypothesis: Any, extra: dict[str, Any]) -> dict[str, Any]:
        detail = self.metric(clip.reference, hypothesis, uem=clip.uem, detailed=True)
        self.components[clip.uri] = detail
        total = detail["total"]
        row = {"der": round(detail["diarization error rate"], 4),
               **{key: round(detail[name] / total, 4) for key, name in
                  (("miss", "missed detection"), ("false_alarm", "false alarm"), ("confusion", "confusion"))},
               "speakers_found": len(hypothesis.crop(clip.uem).labels()),
               "speakers_true": len(clip.reference.crop(clip.uem).labels()), **extra}
        self.clips[clip.uri] = row
        return row

    def summary(self, uris: list[str]) -> dict[str, Any]:
        """Pooled over `uris`: sum of errors / sum of reference speech."""
        totals = {name: 0.0 for name in ("total", "missed detection", "false alarm", "confusion")}
        for uri in uris:
            for name in totals:
                totals[name] += self.components[uri][name]
        total = totals["total"] or 1.0
        return {"der": round((totals["missed detection"] + totals["false alarm"] + totals["confusion"]) / total, 4),
                "miss": round(totals["missed detection"] / total, 4),
                "false_alarm": round(totals["false alarm"] / total, 4),
                "confusion": round(totals["confusion"] / total, 4),
                "count_within_1": all(abs(self.clips[u]["speakers_found"] - self.clips[u]["speakers_true"]) <= 1
                                      for u in uris)}


def run(clips: list[Clip], turns_only: bool = False, language: str = "en") -> dict[str, Any]:
    from speech_pipeline import SpeechPipeline

    pipeline = SpeechPipeline(ModelSettings(assistant_model=""))
    if pipeline.diarizer is None:
        raise SystemExit("no diarization model: run `bash setup.sh` or set DIARIZATION_MODEL")
    sources = ("turns",) if turns_only else ("turns", "words")
    scores = {(source, setting): Scores() for source in sources for setting in SETTINGS}
    asr = InferenceConfig(return_timestamps="word", language=language, diarization=False)
    for clip in clips:
        segments = [] if turns_only else pipeline.transcribe(clip.audio, asr).segments
        for setting in SETTINGS:
            config = InferenceConfig(return_timestamps="word", language=language, **hints(clip, setting))
            started = time.perf_counter()
            found, _ = pipeline.attribute_speakers(clip.audio, config, copy.deepcopy(segments))
            seconds = round(time.perf_counter() - started, 2)  # the merge costs nothing next to diarization
            row = scores["turns", setting].add(clip, annotation(clip.uri, found.turns), {"seconds": seconds})
            line = f"{clip.uri:7s} {setting:12s} turns DER {row['der']:.3f} ({row['speakers_found']}/" \
                   f"{row['speakers_true']} speakers, {seconds:.1f} s)"
            if not turns_only:
                words = [w for s in pipeline.attribute_speakers(clip.audio, config, copy.deepcopy(segments),
                                                                found=found)[1] for w in s.words]
                row = scores["words", setting].add(clip, annotation(clip.uri, [(w.start, w.end, w.speaker)
                                                                                for w in words]), {})
                line += f", words DER {row['der']:.3f}"
            print(line, flush=True)
    ami = [c.uri for c in clips if c.uri != "sample"]
    report: dict[str, Any] = {
        "metric": "DiarizationErrorRate(collar=0.0, skip_overlap=False), UEM, pooled",
        "models": {"asr": None if turns_only else pipeline.asr.model.name_or_path,
                   "diarization": pipeline.settings.diarization_model},
        "results": {}}
    for (source, setting), score in scores.items():
        entry: dict[str, Any] = {"clips": score.clips}
        if ami:
            entry["ami_pooled"] = score.summary(ami)
        if "sample" in score.clips:
            entry["phone_call"] = score.clips["sample"]
        report["results"][f"{source}/{setting}"] = entry
        if ami:
            pooled = entry["ami_pooled"]
            print(f"{source:5s} {setting:12s} AMI pooled DER {pooled['der']:.3f} (miss {pooled['miss']:.3f}, "
                  f"false alarm {pooled['false_alarm']:.3f}, confusion {pooled['confusion']:.3f}), count within 1 "
                  f"on every clip: {pooled['count_within_1']}"
                  + (f"; phone call DER {score.clips['sample']['der']:.3f}, "
                     f"{score.clips['sample']['speakers_found']} speakers" if "sample" in score.clips else ""),
                  flush=True)
    return report


def compare(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A markdown table of two reports: DER and speakers found per clip, turns and words, no hint and true count."""
    keys = ("turns/none", "turns/num_speakers", "words/none", "words/num_speakers")
    lines = ["| clip | speakers | " + " | ".join(f"{k} before | after" for k in keys) + " |",
             "|---|---|" + "---|---|" * len(keys)]
    for uri, row in after["results"][keys[0]]["clips"].items():
        cells = []
        for key in keys:
            old, new = before["results"][key]["clips"][uri], after["results"][key]["clips"][uri]
            cells += [f"{old['der']:.3f} ({old['speakers_found']})", f"{new['der']:.3f} ({new['speakers_found']})"]
        lines.append(f"| {uri} | {row['speakers_true']} | " + " | ".join(cells) + " |")
    pooled = [f"{report['results'][key]['ami_pooled']['der']:.3f}" for key in keys for report in (before, after)]
    lines.append("| AMI pooled | | " + " | ".join(pooled) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ami", type=Path, default=AMI, help="folder of the AMI clips, RTTM and UEM")
    parser.add_argument("--turns-only", action="store_true", help="score the diarizer's turns only (no ASR)")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"),
                        help="print a per-clip markdown table of two reports instead of running")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(path.read_text()) for path in args.compare)
        print(compare(before, after), end="")
        return 0
    clips = load_clips(args.ami)
    if not clips:
        raise SystemExit(f"no clips: {args.ami} has no debug.train.rttm and pyannote's sample is missing")
    report = run(clips, args.turns_only)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
