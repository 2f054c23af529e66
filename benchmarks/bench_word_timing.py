"""Word timestamps against exact references: how far is each word's start and end from where it is spoken?

    python -m benchmarks.bench_word_timing [--methods whisper,energy+vad] [--post-hoc energy,vad] [--faster-whisper]
                                           [--real] [--cost] [--out benchmarks/results/word_timing.json]

The reference is generated with espeak-ng (apt-get install espeak-ng), in three voices at two speaking rates:
- `isolated`: every word spoken on its own, trimmed to its sound (first to last sample above 2% of its peak), joined
  with pauses drawn from 80-250 ms (fixed seed): each word's start and end are known to the sample.
- `run-together`: each sentence spoken as a whole; the boundaries between words are espeak-ng's own word events
  (its synthesis callback, through libespeak-ng), known to a phoneme's edge rather than to the sample.

Every engine transcribes every clip in a process of its own: our pipeline (`return_timestamps: "word"`) once per
`word_timing` method, and faster-whisper (`word_timestamps=True`, greedy) on the same whisper-base weights.
Hypothesis words are matched to reference words by their text (difflib; one-for-one substitutions count too).
Per engine: start and end error (mean, p90), the share of words within 50 and 100 ms at both ends, words that
start inside a reference pause (more than 20 ms before the word), pauses swallowed (a reference pause of 80 ms
or more with no gap of 20 ms between the words around it) and words that overlap or run backwards.

`--real` runs the same engines on recordings without a word reference (the ten AMI clips in
/work/shared/data/ami-debug-train or AMI_DIR, and pyannote's phone call `sample.wav`), against their RTTM speaker
turns as the reference speech: words that start where no one speaks for 60 ms, words that hold 200 ms or more
where no one speaks, and overlaps; with the diarization model loaded, the diarization error rate of the word-level
`speakers` entries, pooled over the AMI clips (pyannote.metrics, no collar, overlap scored, 0-30 s).
`--cost` times a 5-minute recording (the AMI clips back to back) with segment timestamps, word timestamps as
Whisper gives them and each refined method, alternating, each configuration once per round (`--rounds`);
`--cost-against CHECKOUT` times another checkout's word timestamps in the same rounds (e.g. `git worktree add` of
the commit before a change), so that before and after are ratios to the same segment runs.
"""

from __future__ import annotations

import argparse
import ctypes
import difflib
import io
import json
import multiprocessing
import os
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from audio import SAMPLE_RATE, decode_audio
from benchmarks.benchmark import normalise_words

VOICES = ("en-us+m3", "en-us+f3", "en-gb-x-rp")
RATES = (140, 185)  # words per minute: espeak-ng's default is 175
SENTENCES = (
    "The old harbour was quiet when the fishing boats came back before sunset.",
    "She asked the driver to wait outside while she collected her heavy suitcase.",
    "Our team finished the quarterly report and sent it to every manager yesterday.",
    "Fresh bread and warm coffee made the long morning meeting much easier.",
)
PAUSE_S = (0.08, 0.25)
AMI_DIR = Path(os.environ.get("AMI_DIR", "/work/shared/data/ami-debug-train"))
Reference = list[tuple[float, float, str]]  # (start, end, word) in seconds


class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h): type, unique_identifier, text_position, length, audio_position (ms), ..."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class Espeak:
    """libespeak-ng in synchronous mode: the samples of a text and the time each of its words starts."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libespeak-ng.so.1")
        self.rate = self.lib.espeak_Initialize(2, 0, None, 0)  # AUDIO_OUTPUT_SYNCHRONOUS
        if self.rate <= 0:
            raise RuntimeError("espeak-ng did not initialise: apt-get install espeak-ng")
        self._chunks: list[np.ndarray] = []
        self._words: dict[int, int] = {}
        self._callback = _CALLBACK(self._collect)  # kept referenced: libespeak-ng calls it
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples: Any, count: int, events: Any) -> int:
        if count > 0 and samples:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        index = 0
        while events[index].type != 0:  # espeakEVENT_LIST_TERMINATED
            if events[index].type == 1 and events[index].text_position > 0:  # a word (position 0: a stale event)
                self._words[events[index].text_position] = events[index].sample
            index += 1
        return 0

    def speak(self, text: str, voice: str, rate: int) -> tuple[np.ndarray, list[float]]:
        """16 kHz float32 audio and the second at which each word starts (espeak-ng's word events)."""
        self._chunks, self._words = [], {}
        self.lib.espeak_SetVoiceByName(voice.encode())
        self.lib.espeak_SetParameter(1, rate, 0)  # espeakRATE
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        raw = np.concatenate(self._chunks).astype(np.int16)
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1), out.setsampwidth(2), out.setframerate(self.rate)
            out.writeframes(raw.tobytes())
        return decode_audio(buffer.getvalue()), [self._words[key] / self.rate for key in sorted(self._words)]


def _sound(audio: np.ndarray) -> tuple[int, int]:
    """First and last sample above 2% of the peak: where a synthesized word's sound begins and ends."""
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    return int(loud[0]), int(loud[-1]) + 1


def isolated_clip(espeak: Espeak, sentence: str, voice: str, rate: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, Reference]:
    """Each word spoken alone, trimmed to its sound, with pauses of 80-250 ms between words."""
    pieces, reference, clock = [np.zeros(int(0.3 * SAMPLE_RATE), np.float32)], [], 0.3
    for word in sentence.split():
        audio, _ = espeak.speak(word, voice, rate)
        first, last = _sound(audio)
        sound = audio[first:last]
        reference.append((clock, clock + len(sound) / SAMPLE_RATE, word))
        pause = np.zeros(int(rng.uniform(*PAUSE_S) * SAMPLE_RATE), np.float32)
        pieces += [sound, pause]
        clock += (len(sound) + len(pause)) / SAMPLE_RATE
    pieces.append(np.zeros(int(0.3 * SAMPLE_RATE), np.float32))
    return np.concatenate(pieces), reference


def run_together_clip(espeak: Espeak, sentence: str, voice: str, rate: int) -> tuple[np.ndarray, Reference]:
    """The sentence spoken as a whole; a word ends where the next begins (espeak-ng's word events)."""
    audio, starts = espeak.speak(sentence, voice, rate)
    first, last = _sound(audio)
    lead = 0.3 - first / SAMPLE_RATE  # the sound starts at 0.3 s, as in the isolated clips
    pad = np.zeros(int(0.3 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([pad, audio[first:last], pad])
    words = sentence.split()
    if len(starts) != len(words):
        raise RuntimeError(f"espeak-ng gave {len(starts)} word events for {len(words)} words: {sentence!r}")
    bounds = [max(0.3, start + lead) for start in starts] + [0.3 + (last - first) / SAMPLE_RATE]
    return audio, [(bounds[i], bounds[i + 1], word) for i, word in enumerate(words)]


def reference_clips(variants: tuple[str, ...] = ("isolated", "run-together")) -> list[dict[str, Any]]:
    """Every variant x voice x rate: two sentences a clip (about 10-14 s), with their word references."""
    espeak, rng, clips = Espeak(), np.random.default_rng(22), []
    for variant in variants:
        for voice in VOICES:
            for rate in RATES:
                for pair in range(0, len(SENTENCES), 2):
                    audio_parts, reference, offset = [], [], 0.0
                    for sentence in SENTENCES[pair:pair + 2]:
                        audio, words = (isolated_clip(espeak, sentence, voice, rate, rng) if variant == "isolated"
                                        else run_together_clip(espeak, sentence, voice, rate))
                        audio_parts.append(audio)
                        reference += [(start + offset, end + offset, word) for start, end, word in words]
                        offset += len(audio) / SAMPLE_RATE
                    clips.append({"name": f"{variant} {voice} {rate} wpm #{pair // 2}", "variant": variant,
                                  "audio": np.concatenate(audio_parts), "reference": reference})
    return clips


# -- engines, each in a process of its own ----------------------------------------------------------------------

def _ours(clips: list[np.ndarray], method: str | None,
          diarize: bool) -> tuple[list[list[dict]], float, list, dict[str, float]]:
    """Words per clip, seconds, (with `diarize`) the diarizer's turns per clip, and the seconds of the parts word
    timing adds or shares (VAD pass, token timestamps from cross-attention DTW, refinement), from our pipeline."""
    import threading

    import speech_pipeline
    from config import InferenceConfig, ModelSettings
    from diarization_utils import diarize as diarize_turns
    from speech_pipeline import SpeechPipeline

    pipeline = SpeechPipeline(ModelSettings(assistant_model="", **({} if diarize else {"diarization_model": ""})))
    parameters: dict[str, Any] = {"language": "en", "return_timestamps": "word" if method else "segment",
                                  "diarization": False}
    if method:
        parameters["word_timing"] = method
    config = InferenceConfig.parse(parameters)
    pipeline.transcribe(clips[0][:SAMPLE_RATE * 5], config)  # warm-up: the first batch of a process is slower
    parts = {"vad_s": 0.0, "token_timestamps_s": 0.0, "refine_s": 0.0}
    for owner, name, part in ((pipeline.detector, "probabilities", "vad_s"),
                              (pipeline.whisper, "_extract_token_timestamps", "token_timestamps_s"),
                              (speech_pipeline, "refine_words", "refine_s")):
        setattr(owner, name, _timed(getattr(owner, name), parts, part))
    words, turns, started = [], [], time.perf_counter()
    for audio in clips:
        transcript = pipeline.transcribe(audio, config)
        words.append([{"start": w.start, "end": w.end, "text": w.text} for s in transcript.segments for w in s.words])
        if diarize:  # the turns alone, so that every word timing is merged with the same ones
            turns.append(diarize_turns(pipeline.diarizer, audio, config, threading.Event()))
    return words, time.perf_counter() - started, turns, {key: round(value, 2) for key, value in parts.items()}


def _timed(function: Any, parts: dict[str, float], part: str) -> Any:
    """`function`, adding the seconds each call takes to `parts[part]`."""
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            parts[part] += time.perf_counter() - started
    return timed


def _faster_whisper(clips: list[np.ndarray]) -> tuple[list[list[dict]], float, list, dict[str, float]]:
    import tempfile

    from faster_whisper import WhisperModel

    from benchmarks.benchmark import faster_whisper_model_dir

    with tempfile.TemporaryDirectory(prefix="ct2-whisper-base-") as tmp:
        model = WhisperModel(str(faster_whisper_model_dir(Path(tmp))), device="cpu", compute_type="float32",
                             local_files_only=True)
        words, started = [], time.perf_counter()
        for audio in clips:
            segments, _ = model.transcribe(audio, language="en", beam_size=1, word_timestamps=True)
            words.append([{"start": w.start, "end": w.end, "text": w.word} for s in segments for w in s.words])
        return words, time.perf_counter() - started, [], {}


def _worker(connection: Any, engine: str, method: str | None, clips: list[np.ndarray], diarize: bool) -> None:
    try:
        connection.send(_faster_whisper(clips) if engine == "faster-whisper" else _ours(clips, method, diarize))
    except Exception as error:  # the parent reports it and goes on with the other engines
        connection.send(error)


def run_engine(engine: str, method: str | None, clips: list[np.ndarray], diarize: bool = False) -> tuple:
    """(words per clip, seconds, diarization turns per clip) from a fresh process: engines' thread pools never mix."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_worker, args=(theirs, engine, method, clips, diarize), daemon=True)
    process.start()
    while not ours.poll(1):
        if not process.is_alive():
            raise RuntimeError(f"the {engine} worker died (exit code {process.exitcode})")
    result = ours.recv()
    process.join()
    if isinstance(result, Exception):
        raise result
    return result


# -- scoring ------------------------------------------------------------------------------------------------------

def match(reference: Reference, words: list[dict]) -> list[tuple[int, int]]:
    """(reference index, hypothesis index) of words that are the same word: equal text, or one-for-one
    substitutions (harbour / harbor) between equal runs."""
    ref = [normalise_words(w) for _, _, w in reference]
    hyp_index = [(i, token) for i, w in enumerate(words) for token in [normalise_words(w["text"])] if token]
    hyp = [token for _, token in hyp_index]
    pairs = []
    for tag, r0, r1, h0, h1 in difflib.SequenceMatcher(None, ref, hyp, autojunk=False).get_opcodes():
        if tag == "equal" or (tag == "replace" and r1 - r0 == h1 - h0):
            pairs += [(r, hyp_index[h][0]) for r, h in zip(range(r0, r1), range(h0, h1))]
    return pairs


def score(clips: list[dict[str, Any]], hypotheses: list[list[dict]]) -> dict[str, Any]:
    starts, ends, inside_pause, swallowed, pauses, overlaps, total = [], [], 0, 0, 0, 0, 0
    for clip, words in zip(clips, hypotheses):
        reference = clip["reference"]
        total += len(reference)
        overlaps += sum(b["start"] < a["end"] - 0.001 or b["end"] < b["start"] for a, b in zip(words, words[1:]))
        paired = dict(match(reference, words))
        for r, h in paired.items():
            start, end, _ = reference[r]
            starts.append(words[h]["start"] - start)
            ends.append(words[h]["end"] - end)
            previous_end = reference[r - 1][1] if r else 0.0
            inside_pause += previous_end <= words[h]["start"] < start - 0.02
        for r in range(1, len(reference)):
            if reference[r][0] - reference[r - 1][1] < 0.08 or r - 1 not in paired or r not in paired:
                continue
            pauses += 1
            swallowed += words[paired[r]]["start"] - words[paired[r - 1]]["end"] < 0.02
    starts_a, ends_a = np.abs(starts), np.abs(ends)
    both = np.maximum(starts_a, ends_a)
    return {
        "words": total, "matched": len(starts),
        "start_error_ms": {"mean": _ms(starts_a.mean()), "p90": _ms(np.percentile(starts_a, 90)),
                           "signed_mean": _ms(np.mean(starts))},
        "end_error_ms": {"mean": _ms(ends_a.mean()), "p90": _ms(np.percentile(ends_a, 90)),
                         "signed_mean": _ms(np.mean(ends))},
        "within_50ms": round(float(np.mean(both <= 0.05)), 3), "within_100ms": round(float(np.mean(both <= 0.1)), 3),
        "start_inside_pause": int(inside_pause), "pauses": pauses, "pauses_swallowed": int(swallowed),
        "overlaps": int(overlaps),  # numpy's sums of booleans are no JSON
    }


def _ms(seconds: float) -> float:
    return round(float(seconds) * 1000, 1)


# -- recordings without a word reference ---------------------------------------------------------------------------

def real_recordings() -> dict[str, tuple[np.ndarray, Path]]:
    """Name -> (audio, RTTM): the AMI debug clips and pyannote's phone call, where present."""
    import importlib.util

    recordings: dict[str, tuple[np.ndarray, Path]] = {}
    for path in sorted(AMI_DIR.glob("trn*.wav")):
        recordings[path.stem] = (decode_audio(path.read_bytes()), AMI_DIR / "debug.train.rttm")
    spec = importlib.util.find_spec("pyannote.audio")
    if spec and spec.submodule_search_locations:
        sample = Path(next(iter(spec.submodule_search_locations))) / "sample" / "sample.wav"
        if sample.exists():
            recordings["sample"] = (decode_audio(sample.read_bytes()), sample.with_suffix(".rttm"))
    return recordings


def rttm_turns(rttm: Path, name: str) -> list[tuple[float, float, str]]:
    """(start, end, speaker) of one recording's turns in an RTTM file."""
    turns = []
    for fields in (line.split() for line in rttm.read_text().splitlines() if line.strip()):
        if fields[1] == name:
            start = float(fields[3])
            turns.append((start, start + float(fields[4]), fields[7]))
    return turns


def activity(words: list[dict], turns: list[tuple[float, float, str]], duration: float) -> dict[str, int]:
    """How words sit against the reference's speech (its speaker turns, 10 ms frames): words that start where no
    one speaks for 60 ms, words that hold 200 ms or more where no one speaks, overlapping words."""
    frame_s = 0.01
    speech = np.zeros(int(duration / frame_s) + 1, bool)
    for start, end, _ in turns:
        speech[int(start / frame_s):int(end / frame_s) + 1] = True
    frame = lambda t: min(len(speech), max(0, int(t / frame_s)))  # noqa: E731
    start_in_silence = swallowed = 0
    for word in words:
        first = frame(word["start"])
        start_in_silence += not speech[first:max(first + 1, frame(word["start"] + 0.06))].any()
        silent = ~speech[first:frame(word["end"])]
        edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
        swallowed += bool(len(edges)) and (edges[1::2] - edges[::2]).max() * frame_s >= 0.2
    overlaps = sum(b["start"] < a["end"] - 0.001 for a, b in zip(words, words[1:]))
    return {"words": len(words), "start_in_non_speech": start_in_silence, "words_over_200ms_non_speech": swallowed,
            "overlaps": overlaps}


def diarization_error(names: list[str], speakers: list[list], rttms: list[Path]) -> float:
    """Pooled DER (no collar, overlap scored) of the word-level speaker entries against the RTTMs, over 0-30 s."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    for name, entries, rttm in zip(names, speakers, rttms):
        reference, hypothesis = Annotation(uri=name), Annotation(uri=name)
        for start, end, speaker in rttm_turns(rttm, name):
            reference[Segment(start, end)] = speaker
        for start, end, speaker in entries:
            if end > start:
                hypothesis[Segment(start, end)] = speaker or "none"
        metric(reference, hypothesis, uem=Timeline([Segment(0, 30)]))
    return round(abs(metric), 4)


def write_sample(path: Path) -> dict[str, Any]:
    """The test clip: the first sentence, words spoken alone by en-us+f3 at 165 wpm, with their references."""
    from benchmarks.fixtures import encode

    espeak, rng, pieces, reference, offset = Espeak(), np.random.default_rng(7), [], [], 0.0
    for sentence in SENTENCES[:1]:
        audio, words = isolated_clip(espeak, sentence, "en-us+f3", 165, rng)
        pieces.append(audio)
        reference += [(round(start + offset, 4), round(end + offset, 4), word) for start, end, word in words]
        offset += len(audio) / SAMPLE_RATE
    path.write_bytes(encode(np.concatenate(pieces), SAMPLE_RATE, "flac", "flac"))
    sample = {"made_by": "python -m benchmarks.bench_word_timing --write-sample " + str(path),
              "voice": "en-us+f3", "rate_wpm": 165, "words": reference}
    path.with_suffix(".json").write_text(json.dumps(sample, indent=1) + "\n")
    print(f"{path}: {offset:.1f} s, {len(reference)} words")
    return sample


# -- main ----------------------------------------------------------------------------------------------------------

def engines(methods: list[str], faster_whisper: bool) -> list[tuple[str, str | None]]:
    return [("ours", method) for method in methods] + ([("faster-whisper", None)] if faster_whisper else [])


def post_hoc(clips: list[dict[str, Any]], hypotheses: list[list[dict]], method: str) -> list[list[dict]]:
    """Whisper's words refined afterwards with `method`, the whole clip as the window (the pipeline refines each
    VAD window): the refinement alone, without another transcription."""
    from transcript import Word
    from vad import SpeechDetector
    from word_timing import refine_words, uses_vad

    detector, out = SpeechDetector(), []
    for clip, words in zip(clips, hypotheses):
        probabilities = detector.probabilities(clip["audio"]) if uses_vad(method) else None
        refined = refine_words([Word(w["start"], w["end"], w["text"]) for w in words], clip["audio"],
                               (0.0, len(clip["audio"]) / SAMPLE_RATE), method, probabilities)
        out.append([{"start": w.start, "end": w.end, "text": w.text} for w in refined])
    return out


def reference_benchmark(methods: list[str], faster_whisper: bool, post: list[str]) -> dict[str, Any]:
    clips = reference_clips()
    report: dict[str, Any] = {"clips": len(clips), "engines": {}}
    runs = [(engine, method, None) for engine, method in engines(methods, faster_whisper)]
    if post and ("ours", "whisper", None) in runs:
        runs[runs.index(("ours", "whisper", None)) + 1:1] = [("ours", "whisper", m) for m in post]
    whisper_words: list[list[dict]] = []
    for engine, method, refined in runs:
        label = f"{engine} ({method})" if method else engine
        if refined:
            label, seconds = f"ours (whisper words, then {refined}: post hoc)", 0.0
            hypotheses = post_hoc(clips, whisper_words, refined)
        else:
            hypotheses, seconds, _, _ = run_engine(engine, method, [clip["audio"] for clip in clips])
            if (engine, method) == ("ours", "whisper"):
                whisper_words = hypotheses
        row: dict[str, Any] = {"seconds": round(seconds, 2)}
        for variant in ("isolated", "run-together"):
            chosen = [i for i, clip in enumerate(clips) if clip["variant"] == variant]
            row[variant] = score([clips[i] for i in chosen], [hypotheses[i] for i in chosen])
        report["engines"][label] = row
        for variant in ("isolated", "run-together"):
            r = row[variant]
            print(f"{label:>24} {variant:>12}: start {r['start_error_ms']['mean']:6.1f} ms (p90 "
                  f"{r['start_error_ms']['p90']:6.1f}), end {r['end_error_ms']['mean']:6.1f} ms (p90 "
                  f"{r['end_error_ms']['p90']:6.1f}), within 50/100 ms {r['within_50ms']:.0%}/{r['within_100ms']:.0%}"
                  f", {r['matched']}/{r['words']} matched, starts in pauses {r['start_inside_pause']}, pauses "
                  f"swallowed {r['pauses_swallowed']}/{r['pauses']}, overlaps {r['overlaps']}", flush=True)
    return report


def real_benchmark(methods: list[str], faster_whisper: bool, post: list[str]) -> dict[str, Any]:
    from diarization_utils import merge_speakers
    from transcript import Word, sentences

    recordings = real_recordings()
    if not recordings:
        return {"skipped": f"no recordings: {AMI_DIR} and pyannote's sample.wav are absent"}
    names = list(recordings)
    clips = [{"audio": audio} for audio, _ in recordings.values()]
    ami = [i for i, name in enumerate(names) if name.startswith("trn")]
    report: dict[str, Any] = {"recordings": names, "engines": {}}
    runs = [(engine, method, None) for engine, method in engines(methods, faster_whisper)]
    if post and ("ours", "whisper", None) in runs:
        runs[runs.index(("ours", "whisper", None)) + 1:1] = [("ours", "whisper", m) for m in post]
    whisper_words: list[list[dict]] = []
    whisper_turns: list = []
    for engine, method, refined in runs:
        label = f"{engine} ({method})" if method else engine
        if refined:
            label, seconds, turns = f"ours (whisper words, then {refined}: post hoc)", 0.0, whisper_turns
            hypotheses = post_hoc(clips, whisper_words, refined)
        else:
            hypotheses, seconds, turns, _ = run_engine(engine, method, [c["audio"] for c in clips],
                                                    diarize=engine == "ours")
            if (engine, method) == ("ours", "whisper"):
                whisper_words, whisper_turns = hypotheses, turns
        totals: dict[str, int] = {}
        for name, clip, words in zip(names, clips, hypotheses):
            reference = rttm_turns(recordings[name][1], name)
            for key, value in activity(words, reference, len(clip["audio"]) / SAMPLE_RATE).items():
                totals[key] = totals.get(key, 0) + int(value)
        row: dict[str, Any] = {"seconds": round(seconds, 2), **totals}
        if ami and turns:
            speakers = []
            for i in ami:
                words = [Word(w["start"], w["end"], w["text"]) for w in hypotheses[i]]
                merged = merge_speakers(turns[i], sentences(words), by_word=True)
                speakers.append([(s.start, s.end, s.speaker) for s in merged])
            row["der_ami"] = diarization_error([names[i] for i in ami], speakers,
                                               [recordings[names[i]][1] for i in ami])
        report["engines"][label] = row
        print(f"{label:>24} real: {row}", flush=True)
    return report


def five_minutes() -> np.ndarray:
    """The ten 30 s AMI clips back to back: 300 s of meeting speech."""
    return np.concatenate([audio for name, (audio, _) in real_recordings().items() if name.startswith("trn")])


_TIME_IN_CHECKOUT = """
import json, sys, time
import numpy as np
import speech_pipeline
from benchmarks.bench_word_timing import _ours, real_recordings
calls, transcribe = [], speech_pipeline.SpeechPipeline.transcribe
def timed(self, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        return transcribe(self, *args, **kwargs)
    finally:
        calls.append((time.perf_counter() - wall, time.process_time() - cpu))
speech_pipeline.SpeechPipeline.transcribe = timed
audio = np.concatenate([a for n, (a, _) in real_recordings().items() if n.startswith("trn")])
result = _ours([audio], None if sys.argv[1] == "segment" else sys.argv[1], False)
print(json.dumps({"wall_s": calls[-1][0], "cpu_s": calls[-1][1], "parts_s": result[3] if len(result) > 3 else {}}))
"""


def time_in(checkout: Path, method: str | None) -> dict[str, Any]:
    """Wall and CPU seconds (all threads) of one transcription of `five_minutes()` with a checkout's code (this
    virtual environment), in a process of its own after a warm-up, and the parts `_ours` times where it does."""
    done = subprocess.run([sys.executable, "-c", _TIME_IN_CHECKOUT, method or "segment"], cwd=checkout,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def cost_benchmark(methods: list[str], rounds: int, against: Path | None = None) -> dict[str, Any]:
    """Seconds on `five_minutes()` per configuration, each in a fresh process, the configurations alternating within
    every round; with `against`, that checkout's word timings run in the same rounds ("before: ..."). CPU seconds
    beside wall seconds: on a shared machine the wall clock measures the neighbours too."""
    here = Path(__file__).resolve().parents[1]
    runs: list[tuple[str, Path, str | None]] = [("segment", here, None)]
    for method in methods:
        runs.append((method, here, method))
        if against and method != "whisper":
            runs.append((f"before: {method}", against, method))
    found: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in runs}
    for _ in range(rounds):
        for label, checkout, method in runs:
            load = round(os.getloadavg()[0], 2)  # 1-minute load average as the run starts
            found[label].append({**time_in(checkout, method), "load_average": load})
            print(f"{label}: {found[label][-1]}", flush=True)
    ratio = {label: {kind: [round(run[kind] / base[kind], 3) for run, base in zip(rows, found["segment"])]
                     for kind in ("wall_s", "cpu_s")} for label, rows in found.items()}
    report = {"audio_s": round(len(five_minutes()) / SAMPLE_RATE, 1), "against": str(against) if against else None,
              "runs": found, "ratio_to_segment": ratio}
    print(f"cost on {report['audio_s']} s: ratio to segment {ratio}", flush=True)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="whisper,energy+vad",
                        help="our word_timing methods to run, comma-separated")
    parser.add_argument("--post-hoc", default="",
                        help="methods also applied afterwards to the words of --methods' whisper run (no new run)")
    parser.add_argument("--faster-whisper", action="store_true", help="also faster-whisper on the same weights")
    parser.add_argument("--real", action="store_true", help="also the recordings without a word reference")
    parser.add_argument("--cost", action="store_true", help="also time a 5-minute recording")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the --cost timing")
    parser.add_argument("--cost-against", type=Path, metavar="CHECKOUT",
                        help="also time another checkout of this project in the --cost rounds (the code before)")
    parser.add_argument("--no-reference", action="store_true", help="skip the generated reference")
    parser.add_argument("--write-sample", type=Path, metavar="FLAC",
                        help="write one isolated-word clip (FLAC) and its reference (.json beside it), then stop")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.write_sample:
        return write_sample(args.write_sample)
    methods = [m for m in args.methods.split(",") if m]
    report: dict[str, Any] = {}
    if not args.no_reference:
        report["reference"] = reference_benchmark(methods, args.faster_whisper,
                                                  [m for m in args.post_hoc.split(",") if m])
    if args.real:
        report["real"] = real_benchmark(methods, args.faster_whisper, [m for m in args.post_hoc.split(",") if m])
    if args.cost:
        report["cost"] = cost_benchmark(methods, args.rounds, args.cost_against)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
