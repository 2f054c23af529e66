"""Transcribe audio files with the endpoint's pipeline; options named as whisperX's (dashes work too).

    whisper-transcribe a.mp3 b.flac --output_dir out --output_format all      (or: python -m scripts.transcribe)
    whisper-transcribe talk.mp3 --output_format srt --max_line_width 42 --max_line_count 2 --highlight_words True
    whisper-transcribe samples/sample.flac                                     # no output option: JSON on stdout

With --output_dir or --output_format, each FILE becomes OUTPUT_DIR/<name>.<format> (json: the endpoint's response;
all: json, txt, srt, vtt, tsv, and rttm when diarized); otherwise --format (default json) goes to stdout. Models
come from the endpoint's env vars (ASR_MODEL, DIARIZATION_MODEL, ...) or --model / --diarize_model; without them
the offline defaults that setup.sh builds. Files are checked before any model loads.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from config import InferenceConfig, ModelSettings
from errors import RequestError, invalid_parameter
from formats import FORMATS, SubtitleOptions, render, to_rttm, to_srt, to_text, to_tsv, to_vtt

OUTPUT_FORMATS = ("all", "json", "txt", "srt", "vtt", "tsv", "rttm")


def _bool(text: str) -> bool:
    """whisperX passes booleans as values (`--highlight_words True`); a bare flag means true."""
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, not {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisper-transcribe", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    def option(name: str, **kwargs: Any) -> None:
        names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        parser.add_argument(*names, dest=kwargs.pop("dest", name), **kwargs)

    def flag(name: str, help: str) -> None:
        option(name, type=_bool, nargs="?", const=True, default=None, metavar="BOOL", help=help)

    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio files (wav, flac, mp3, ogg, m4a...)")
    option("model", help="Whisper checkpoint: hub id or directory (default: ASR_MODEL, else models/whisper-base)")
    option("language", help="language code or name (default: detect)")
    option("task", choices=["transcribe", "translate"], help="translate: to English")
    option("batch_size", type=int, help="speech windows per forward pass")
    option("device", help="auto, cpu, cuda or cuda:N (default: DEVICE, else auto)")
    option("compute_type", dest="dtype", choices=["auto", "float32", "float16", "bfloat16"],
           help="model precision (default: DTYPE, else auto)")
    diarize = parser.add_mutually_exclusive_group()
    diarize.add_argument("--diarize", action="store_true", default=None,
                         help="attribute speakers (refused when no diarization model is set up)")
    diarize.add_argument("--no_diarize", "--no-diarize", dest="diarize", action="store_false",
                         help="skip diarization and do not load its model")
    option("diarize_model", help="pyannote pipeline: hub id or directory (default: DIARIZATION_MODEL)")
    option("min_speakers", type=int, help="diarization hint")
    option("max_speakers", type=int, help="diarization hint")
    option("num_speakers", type=int, help="diarization hint: the exact count")
    option("known_speaker", action="append", metavar="NAME=FILE", dest="known_speakers",
           help="a speaker's name and a 1-30 s clip of that voice; matched speakers are labelled NAME (up to 4)")
    option("output_dir", type=Path, help="write files here (default: . when --output_format is given)")
    option("output_format", choices=OUTPUT_FORMATS, help="file formats to write (default: all with --output_dir)")
    option("format", choices=FORMATS, default="json", dest="stdout_format",
           help="without --output_dir/--output_format: what goes to stdout (default json, the endpoint response)")
    option("max_line_width", type=int, help="subtitles: characters per line")
    option("max_line_count", type=int, help="subtitles: lines per cue (with --max_line_width)")
    option("max_cue_seconds", type=float, help="subtitles: longest cue, seconds")
    flag("highlight_words", "subtitles: underline each word while it is spoken (word timestamps)")
    option("parameters", default="{}", help="other request parameters as a JSON object (the options above win)")
    flag("print_progress", "progress bars over the files and each file's windows (default: on a terminal)")
    flag("verbose", "show model-loading output and the pipeline's log")
    return parser


_BOOL_FLAGS = {"--highlight_words", "--highlight-words", "--print_progress", "--print-progress", "--verbose"}
_BOOL_WORDS = {"true", "false", "1", "0", "yes", "no", "on", "off"}


def _explicit_bools(argv: list[str]) -> list[str]:
    """A bare boolean flag before a FILE (`--highlight_words talk.mp3`) means true, not a bad value."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg in _BOOL_FLAGS and following is not None and not (
                following.startswith("-") or following.lower() in _BOOL_WORDS):
            out.append("True")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(_explicit_bools(sys.argv[1:] if argv is None else argv))
    files = _checked_files(parser, args.files)
    subtitles, parameters = _request_options(parser, args)
    to_files = args.output_dir is not None or args.output_format is not None
    output_dir = args.output_dir or Path(".")
    formats = list(OUTPUT_FORMATS[1:]) if (args.output_format or "all") == "all" else [args.output_format]
    if to_files:
        stems = [path.stem for path in files]
        if len(set(stems)) < len(stems):
            parser.error("two files share a name: their outputs would overwrite each other (one call per folder)")
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            parser.error(f"cannot create --output_dir {output_dir}: {error.strerror}")
    _quiet(bool(args.verbose))

    from speech_pipeline import SpeechPipeline  # after the checks: importing torch alone takes seconds

    started = time.perf_counter()
    try:
        pipeline = SpeechPipeline(ModelSettings(**_model_overrides(args)))
    except RuntimeError as error:  # a model that cannot load: one line, as for a missing file
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.diarize and pipeline.diarizer is None:
        print("error: --diarize needs a diarization model: run `bash setup.sh` for the offline default or pass "
              "--diarize_model", file=sys.stderr)
        return 2
    if to_files and formats == ["rttm"] and pipeline.diarizer is None:
        print("error: --output_format rttm needs diarization (no diarization model is loaded)", file=sys.stderr)
        return 2
    from tqdm import tqdm

    hidden = None if args.print_progress is None else not args.print_progress  # tqdm's None: on a terminal only
    if args.verbose:
        tqdm.write(f"models loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    failed = 0
    with tqdm(files, unit="file", disable=True if len(files) == 1 else hidden, file=sys.stderr) as over_files:
        for path in over_files:
            with tqdm(total=0, unit="window", desc=path.name, leave=False, disable=hidden, file=sys.stderr) as bar:
                def advance(done: int, total: int, bar: Any = bar) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                begun = time.perf_counter()
                try:
                    transcript, config = _transcribe(pipeline, path, parameters, advance)
                except RequestError as error:
                    tqdm.write(f"error: {path}: {error}", file=sys.stderr)
                    failed += 1
                    continue
            seconds = time.perf_counter() - begun
            if to_files:
                written = _write(transcript, config, path.stem, output_dir, formats, subtitles)
                tqdm.write(f"{path}: {transcript.duration:.1f} s of audio in {seconds:.1f} s -> "
                           f"{', '.join(str(p) for p in written)}", file=sys.stderr)
            else:
                rendered = (transcript.to_response(words=config.return_timestamps == "word")
                            if args.stdout_format == "json" else
                            render(transcript, args.stdout_format, config.task, config.return_timestamps == "word",
                                   subtitles, uri=path.stem))
                sys.stdout.write(rendered if isinstance(rendered, str)
                                 else json.dumps(rendered, indent=2, ensure_ascii=False) + "\n")
                sys.stdout.flush()
    return 2 if failed else 0


def _checked_files(parser: argparse.ArgumentParser, files: list[Path]) -> list[Path]:
    """Every file must exist and be readable: refused here, before seconds of model loading."""
    for path in files:
        if not path.exists():
            parser.exit(2, f"error: no such file: {path}\n")
        if not path.is_file():
            parser.exit(2, f"error: not a file: {path}\n")
        if not os.access(path, os.R_OK):
            parser.exit(2, f"error: cannot read {path}: permission denied\n")
    return files


def _request_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[SubtitleOptions,
                                                                                        dict[str, Any]]:
    """The subtitle options and the request parameters, validated before any model loads."""
    try:
        parameters = json.loads(args.parameters)
    except json.JSONDecodeError as error:
        parser.error(f"--parameters is not JSON: {error}")
    if not isinstance(parameters, dict):
        parser.error("--parameters must be a JSON object")
    for name in ("language", "task", "batch_size", "min_speakers", "max_speakers", "num_speakers"):
        if getattr(args, name) is not None:
            parameters[name] = getattr(args, name)
    if args.diarize is not None:
        parameters["diarization"] = args.diarize
    for known in args.known_speakers or []:
        name, _, clip = known.partition("=")
        if not name or not clip:
            parser.error(f"--known_speaker wants NAME=FILE, not {known!r}")
        path = _checked_files(parser, [Path(clip)])[0]
        parameters.setdefault("known_speaker_names", []).append(name)
        parameters.setdefault("known_speaker_references", []).append(base64.b64encode(path.read_bytes()).decode())
    try:
        subtitles = SubtitleOptions(max_line_width=args.max_line_width, max_line_count=args.max_line_count,
                                    max_cue_seconds=args.max_cue_seconds, highlight_words=bool(args.highlight_words))
        if subtitles.shaped:  # cues are cut at word times
            parameters["return_timestamps"] = "word"
        InferenceConfig.parse(parameters)
    except ValidationError as error:
        parser.error(str(invalid_parameter(error.errors())))
    except RequestError as error:
        parser.error(str(error))
    return subtitles, parameters


def _model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.model:
        overrides["asr_model"] = args.model
    if args.diarize is False:
        overrides["diarization_model"] = None
    elif args.diarize_model:
        overrides["diarization_model"] = args.diarize_model
    if args.device:
        overrides["device"] = args.device
    if args.dtype:
        overrides["dtype"] = args.dtype
    return overrides


def _quiet(verbose: bool) -> None:
    """Model loading prints weight-loading bars and a Lightning warning about the VAD's empty state dict; a command
    line shows them with --verbose only."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def _transcribe(pipeline: Any, path: Path, parameters: dict[str, Any], progress: Any) -> tuple[Any, InferenceConfig]:
    from audio import decode_audio

    config = InferenceConfig.parse(parameters)
    audio = decode_audio(path.read_bytes(), config.audio_format, config.sampling_rate,
                         pipeline.settings.max_audio_seconds)
    return pipeline.transcribe(audio, config, progress=progress), config


def _write(transcript: Any, config: InferenceConfig, stem: str, output_dir: Path, formats: list[str],
           subtitles: SubtitleOptions) -> list[Path]:
    """One file per format; rttm only when diarization found speakers (with --output_format all)."""
    writers = {"json": lambda: json.dumps(transcript.to_response(words=config.return_timestamps == "word"),
                                          indent=2, ensure_ascii=False) + "\n",
               "txt": lambda: to_text(transcript), "srt": lambda: to_srt(transcript, subtitles),
               "vtt": lambda: to_vtt(transcript, subtitles), "tsv": lambda: to_tsv(transcript),
               "rttm": lambda: to_rttm(transcript, stem)}
    written = []
    for name in formats:
        if name == "rttm" and not transcript.turns and len(formats) > 1:
            continue
        path = output_dir / f"{stem}.{name}"
        path.write_text(writers[name](), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    sys.exit(main())
