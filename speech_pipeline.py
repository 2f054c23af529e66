"""The one speech pipeline behind the handler and the server: decode, find speech, transcribe, diarize."""

from __future__ import annotations

import collections
import difflib
import logging
import os
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

# on_window(index, segments): a streamed request's windows, in audio order, each as soon as it is decoded
WindowCallback = Callable[[int, list["Segment"]], None]

import numpy as np

# OpenMP threads that spin while they wait steal the cores from everything else on the machine (other requests'
# VAD and diarization, other processes): set before torch loads, the one place every entry point imports it through
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

import known_speakers
import metrics
from audio import SAMPLE_RATE, decode_audio, payload_bytes
from batching import WindowBatcher
from config import (DEFAULT_ASR_MODEL, DEFAULT_ASSISTANT_MODEL, DEFAULT_DIARIZATION_MODEL, PROJECT_DIR,
                    InferenceConfig, ModelSettings)
from diarization_utils import Diarization, diarize, load_diarizer, merge_speakers
from errors import Cancelled, RequestError, redact
from transcript import Segment, Transcript, Word, sentences
from vad import SpeechDetector, ends_at_pause, group_windows, max_windows
from word_timing import refine_words, resolve, uses_vad

logger = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # windows decoded so far, windows in all
CPU_MAX_BATCH = 24  # windows in one forward pass on a CPU, whatever batch_size asks for

# the most new tokens a window may decode per second of its audio, plus a margin for the prompt, task and first
# timestamp tokens: fast speech needs about half of it, a loop stops there
TOKENS_PER_SECOND = 12.0
TOKEN_MARGIN = 16


@dataclass(frozen=True)
class Guard:
    """The loop guard's settings for one request (openai-whisper's transcribe options); part of the batching key."""

    temperatures: tuple[float, ...]
    compression_ratio_threshold: float | None
    logprob_threshold: float | None
    no_speech_threshold: float | None

    @classmethod
    def of(cls, config: InferenceConfig) -> "Guard":
        return cls(config.temperatures, config.compression_ratio_threshold, config.logprob_threshold,
                   config.no_speech_threshold)


@dataclass
class Attempt:
    """One decoding of one window at one temperature, and what the guard thinks of it."""

    output: dict[str, Any]
    temperature: float
    compression_ratio: float
    avg_logprob: float | None  # None where it is not measured (beam search, drafts)
    no_speech_prob: float | None
    language: str | None
    bounded: bool

    def silent(self, guard: Guard) -> bool:
        """Whisper's own no-speech verdict: likely no speech and a poor transcript (openai-whisper's rule)."""
        return (guard.no_speech_threshold is not None and self.no_speech_prob is not None
                and self.no_speech_prob > guard.no_speech_threshold
                and (guard.logprob_threshold is None or self.avg_logprob is None
                     or self.avg_logprob < guard.logprob_threshold))

    def fails(self, guard: Guard) -> bool:
        """Too repetitive, too unlikely or cut at its token bound: worth decoding again at a higher temperature."""
        return not self.silent(guard) and (
            self.bounded or (guard.compression_ratio_threshold is not None
                             and self.compression_ratio > guard.compression_ratio_threshold)
            or (guard.logprob_threshold is not None and self.avg_logprob is not None
                and self.avg_logprob < guard.logprob_threshold))

    def repeats_real_speech(self, sampled: "Attempt", guard: Guard) -> bool:
        """This greedy attempt failed on compression alone, and a sampled one says the same words again: speech
        that repeats itself (a greedy loop rarely survives sampling, and the hotter attempts that break it
        drop most of the words)."""
        likely = guard.logprob_threshold is None or self.avg_logprob is None or \
            self.avg_logprob >= guard.logprob_threshold
        if self.temperature != 0 or self.bounded or sampled.bounded or not likely or self.silent(guard) \
                or not self.fails(guard):
            return False
        mine, theirs = _words(self.output["text"]), _words(sampled.output["text"])
        return len(mine) > 0 and difflib.SequenceMatcher(None, mine, theirs, autojunk=False).ratio() >= 0.9


def _words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()


def compression_ratio(text: str) -> float:
    """Bytes of the text over bytes of its zlib compression: repetition loops compress well (openai-whisper)."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def best_attempt(attempts: list[Attempt], guard: Guard) -> Attempt:
    """The first that passes; when none does, of those not cut at their bound and likely enough, the one neither
    repetitive nor less likely (faster-whisper's choice), else the least repetitive. Likelihood comes before
    repetition: speech that really repeats itself compresses like a loop at every temperature, and the one hot
    attempt that does not is improbable text missing most of the words."""
    for attempt in attempts:
        if not attempt.fails(guard):
            return attempt
    threshold, floor = guard.compression_ratio_threshold, guard.logprob_threshold

    def rank(a: Attempt) -> tuple:
        repetitive = threshold is not None and a.compression_ratio > threshold
        likely = floor is None or a.avg_logprob is None or a.avg_logprob >= floor
        return (not a.bounded, likely, not repetitive, -a.compression_ratio if repetitive else 0.0,
                a.avg_logprob if a.avg_logprob is not None else -float("inf"))

    return max(attempts, key=rank)


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX), by torch's private probes (absent: no)."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe() for probe in probes if probe)


def drafting_pays(main: Any, assistant: Any) -> bool:
    """Whether a draft step is cheap enough against a main step (two Whisper configs) for speculative decoding to win.

    A GPU decoding step costs about what the decoder's layer count says, and a draft must cost at most a quarter of
    a main step to pay (figures: docs/benchmarks.md, "Speculative decoding").
    """
    return assistant.decoder_layers * 4 <= main.decoder_layers


def _device_and_dtype(settings: ModelSettings) -> tuple[torch.device, torch.dtype]:
    device = torch.device("cuda" if settings.device == "auto" and torch.cuda.is_available() else
                          "cpu" if settings.device == "auto" else settings.device)
    if settings.dtype == "int8":  # fp32 weights, quantized once loaded (`whisper_model.quantize_int8`)
        if device.type != "cpu":
            raise RuntimeError(f"DTYPE=int8 runs on the CPU only, not on {device}: use float16 there")
        return device, torch.float32
    if settings.dtype != "auto":
        return device, getattr(torch, settings.dtype)
    if device.type == "cuda":
        return device, torch.float16
    # bf16 halves the bytes read per decoding step and runs the encoder's GEMMs 2.6x faster where the CPU has
    # bf16 instructions; elsewhere it is emulated and slower than fp32
    return device, torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else torch.float32


class SpeechPipeline:
    """Loads the models once; `handle(data)` serves one request of the Inference Endpoints contract."""

    def __init__(self, settings: ModelSettings | None = None, base_dir: str | Path | None = None):
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()  # per-request generation notices would flood service logs
        self.settings = settings or ModelSettings()
        base = Path(base_dir) if base_dir else PROJECT_DIR
        self.device, self.dtype = _device_and_dtype(self.settings)
        token = self.settings.token()
        asr_model = self._resolve_required(self.settings.asr_model, DEFAULT_ASR_MODEL, base)
        started = time.perf_counter()
        try:
            self.asr = self._load_asr(asr_model, token)
        except Exception as error:  # a start-up failure must say which model, never echo the token
            raise RuntimeError(f"could not load ASR_MODEL {asr_model!r}: {redact(str(error), token)}") from None
        metrics.MODEL_LOAD_SECONDS.labels("asr").set(time.perf_counter() - started)
        self.whisper = self.asr.model  # the FastWhisper that reports each window's WindowStats
        self.whisper.decode_threads = self.settings.decode_threads or None
        generation = self.whisper.generation_config
        self.multilingual = bool(getattr(generation, "is_multilingual", True))
        self.lang_to_id: dict[str, int] = dict(getattr(generation, "lang_to_id", None) or {})
        loading = time.perf_counter()
        self.assistant_kwargs = self._load_assistant(base, token)
        if self.assistant_kwargs:
            metrics.MODEL_LOAD_SECONDS.labels("assistant").set(time.perf_counter() - loading)
        self.drafting_pays = bool(self.assistant_kwargs) and drafting_pays(
            self.asr.model.config, self.assistant_kwargs["assistant_model"].config)
        self.detector = SpeechDetector()
        self.diarizer = None
        diarization_model = self._resolve_optional(self.settings.diarization_model, DEFAULT_DIARIZATION_MODEL, base)
        if diarization_model:
            loading = time.perf_counter()
            self.diarizer = load_diarizer(diarization_model, token, self.device)
            metrics.MODEL_LOAD_SECONDS.labels("diarization").set(time.perf_counter() - loading)
        # a CPU batch beyond the default gains little speed and costs ~19 MB a window (118 windows: +2.2 GB RSS)
        self.max_batch_size = 256 if self.device.type == "cuda" else CPU_MAX_BATCH
        self._lock = threading.Lock()  # one forward pass at a time: transformers models are not re-entrant
        self._diarization_lock = threading.Lock()  # pyannote pipelines keep state between calls too
        wait_s = self.settings.batch_wait_ms / 1000
        self._batcher = WindowBatcher(self._forward, wait_s=wait_s,
                                      arrival_wait_s=self.settings.batch_arrival_wait_ms / 1000 if wait_s else 0.0)
        logger.info("loaded %s on %s/%s in %.1f s (assistant: %s, drafting pays: %s, diarization: %s)", asr_model,
                    self.device, "int8" if self.whisper.quantized else self.dtype, time.perf_counter() - started,
                    bool(self.assistant_kwargs), self.drafting_pays, bool(self.diarizer))

    def _load_asr(self, name: str, token: str | None) -> Any:
        from transformers import AutoConfig, AutoFeatureExtractor, AutoTokenizer, pipeline

        from whisper_model import ATTENTION, FastWhisper, pack_decoder_int8, quantize_int8, rescored_head

        model_type = AutoConfig.from_pretrained(name, token=token).model_type
        if model_type != "whisper":
            raise ValueError(f"it is a {model_type!r} model; this service runs Whisper checkpoints")
        model = FastWhisper.from_pretrained(name, dtype=self.dtype, token=token, attn_implementation=ATTENTION)
        if self.settings.dtype == "int8":
            quantize_int8(model)
        rescored_head(model)  # CPU: the vocabulary product in int8, what decoding reads exact
        pack_decoder_int8(model)  # CPU bf16: decoding steps read int8 copies of the decoder weights
        return pipeline("automatic-speech-recognition", model=model.eval(), device=self.device,
                        tokenizer=AutoTokenizer.from_pretrained(name, token=token),
                        feature_extractor=AutoFeatureExtractor.from_pretrained(name, token=token))

    def _resolve_required(self, name: str, default: str, base: Path) -> str:
        resolved = self.settings.resolve(name, base)
        if name == default and not Path(resolved).is_dir():
            raise RuntimeError(f"the default model {default} is missing: run `bash setup.sh` to build it, "
                               "or set ASR_MODEL to a hub id or a local directory")
        return resolved

    def _resolve_optional(self, name: str | None, default: str, base: Path) -> str | None:
        """None when unset, or when it is the offline default and set-up did not build it; explicit ones must load."""
        resolved = self.settings.resolve(name, base)
        if resolved is None or (name == default and not Path(resolved).is_dir()):
            return None
        return resolved

    def _load_assistant(self, base: Path, token: str | None) -> dict[str, Any]:
        from transformers import AutoConfig, AutoTokenizer, GenerationMixin, WhisperForCausalLM
        from transformers import WhisperForConditionalGeneration

        class DraftWhisper(WhisperForConditionalGeneration):
            # Whisper's own generate() resets the begin index of the logits processors it shares with the
            # main model, which then stops enforcing timestamp rules: drafts use the generic loop.
            generate = GenerationMixin.generate

        resolved = self._resolve_optional(self.settings.assistant_model, DEFAULT_ASSISTANT_MODEL, base)
        if resolved is None:
            return {}
        try:
            architectures = AutoConfig.from_pretrained(resolved, token=token).architectures or []
            model_class = WhisperForCausalLM if "WhisperForCausalLM" in architectures else DraftWhisper
            model = model_class.from_pretrained(resolved, dtype=self.dtype, token=token).to(self.device).eval()
            tokenizer = AutoTokenizer.from_pretrained(resolved, token=token)
        except Exception as error:
            raise RuntimeError(f"could not load ASSISTANT_MODEL {resolved!r}: {redact(str(error), token)}") from None
        if tokenizer.get_vocab() == self.asr.tokenizer.get_vocab():
            return {"assistant_model": model}
        # different vocabularies (e.g. whisper-base + tiny.en): universal assisted generation re-tokenizes drafts
        return {"assistant_model": model, "tokenizer": self.asr.tokenizer, "assistant_tokenizer": tokenizer}

    def generate_kwargs(self, config: InferenceConfig) -> dict[str, Any]:
        """Decoding options for one request; English-only checkpoints get no task/language tokens."""
        kwargs: dict[str, Any] = {"num_beams": config.num_beams}
        if self.multilingual:
            kwargs["task"] = config.task
            if config.language:
                kwargs["language"] = self._language_code(config.language)
        else:
            if config.task == "translate":
                raise RequestError("this model is English-only: task 'translate' is not available", 422, "task")
            if config.language and config.language not in ("en", "english"):
                raise RequestError(f"this model is English-only: language {config.language!r} is not available",
                                   422, "language")
        if config.assisted is True and not self.assistant_kwargs:
            raise RequestError("assisted decoding asked for, but no ASSISTANT_MODEL is loaded", 400, "assisted")
        if config.prompt:
            kwargs["prompt_ids"] = self._prompt_ids(config.prompt)
        return kwargs

    def _prompt_ids(self, prompt: str) -> torch.Tensor:
        """<|startofprev|> and the prompt's last tokens: Whisper gives a prompt half of its 448 decoder positions
        (openai-whisper and OpenAI's API keep the last 223 tokens too)."""
        try:
            ids = self.asr.tokenizer.get_prompt_ids(prompt, return_tensors="pt")
        except ValueError as error:  # text of a control token such as <|endoftext|> or <|0.00|>
            raise RequestError(f"invalid parameter prompt: {error}", 422, "prompt") from None
        keep = self.asr.model.config.max_target_positions // 2 - 1
        return torch.cat([ids[:1], ids[1:][-keep:]])

    def use_assistant(self, config: InferenceConfig, windows: int) -> bool:
        """`assisted: auto` drafts only where it was measured to win: a GPU, an assistant whose decoder has at most
        a quarter of the main one's layers, one short window, batch of one (docs/benchmarks.md: elsewhere drafting
        made requests slower)."""
        if config.assisted != "auto":
            return bool(config.assisted)
        return (self.drafting_pays and self.device.type == "cuda" and windows == 1
                and config.batch_size in (None, 1) and config.num_beams == 1)

    def _language_code(self, language: str) -> str:
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        code = TO_LANGUAGE_CODE.get(language, language)
        if f"<|{code}|>" not in self.lang_to_id:
            raise RequestError(f"unknown language {language!r}: use a code such as 'en' or 'de'", 422, "language")
        return code

    def handle(self, data: Any, cancel: threading.Event | None = None) -> dict[str, Any]:
        """Serve one request: {"inputs": base64 or bytes, "parameters": {...}} -> response dict."""
        transcript, config = self.transcribe_request(data, cancel)
        return transcript.to_response(words=config.return_timestamps == "word", turns=config.return_turns)

    def transcribe_request(self, data: Any, cancel: threading.Event | None = None,
                           on_window: WindowCallback | None = None) -> tuple[Transcript, InferenceConfig]:
        """Validate the parameters, decode the audio once and transcribe it; raises RequestError on bad input."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = {"inputs": data}
        if not isinstance(data, dict):
            raise RequestError("the request must be a JSON object with 'inputs'", field="inputs")
        config = InferenceConfig.parse(data.get("parameters"))
        with self._batcher.arriving():
            audio = decode_audio(payload_bytes(data.get("inputs")), config.audio_format, config.sampling_rate,
                                 self.settings.max_audio_seconds)
        return self.transcribe(audio, config, cancel, on_window), config

    def transcribe(self, audio: np.ndarray, config: InferenceConfig, cancel: threading.Event | None = None,
                   on_window: WindowCallback | None = None, progress: Progress | None = None) -> Transcript:
        """Transcribe 16 kHz mono float32 audio (and diarize it when a diarization model is loaded).

        Setting `cancel` (a request's timeout) stops the work at the next check and raises `Cancelled`. With
        `on_window` the first window is decoded alone and the rest in batches of the batch size, in audio order, and
        each window's segments are handed to it as soon as its batch is out (streaming); the text is the same.
        `progress(done, total)` hears of the windows decoded the same way (the CLI's progress bar)."""
        cancel = cancel or threading.Event()
        started = time.perf_counter()
        generate_kwargs = self.generate_kwargs(config)  # refuses bad options before the VAD runs
        known = known_speakers.references(config.known_speaker_names, config.known_speaker_references)
        if known and (self.diarizer is None or not config.diarization):
            raise RequestError("known_speaker_names needs diarization: a DIARIZATION_MODEL and diarization not "
                               "turned off", field="known_speaker_names")
        duration = len(audio) / SAMPLE_RATE
        word_level = config.return_timestamps == "word"
        with self._batcher.arriving():  # one VAD pass: its probabilities cut the windows and time the words
            probabilities = (self.detector.probabilities(audio)
                             if config.vad or (word_level and uses_vad(config.word_timing)) else None)
            regions = (self.detector.regions(audio, config.chunk_length_s, probabilities) if config.vad
                       else [(0.0, duration)])
        windows = group_windows(regions, config.chunk_length_s, duration, max_windows(self.settings.max_audio_seconds))
        _check(cancel)
        assisted = self.use_assistant(config, len(windows))
        if assisted:
            generate_kwargs = {**generate_kwargs, **self.assistant_kwargs}
        segments, languages = self._transcribe_windows(audio, windows, config, generate_kwargs, assisted, cancel,
                                                       _with_progress(on_window, progress, len(windows)),
                                                       probabilities)
        text = "".join(segment.text for segment in segments).strip()
        transcript = Transcript(text=text, segments=segments, duration=duration, language=_majority(languages),
                                word_timing=resolve(config.word_timing) if word_level else None)
        if self.diarizer is not None and config.diarization:
            found = None
            if known:
                with self._diarization_lock:
                    found = known_speakers.named(self.diarizer, audio, diarize(self.diarizer, audio, config, cancel),
                                                 known)
            found, transcript.speakers = self.attribute_speakers(audio, config, segments, cancel, found)
            transcript.turns = found.turns
        metrics.observe_transcription(duration, time.perf_counter() - started)
        return transcript

    def attribute_speakers(self, audio: np.ndarray, config: InferenceConfig, segments: list[Segment],
                           cancel: threading.Event | None = None,
                           found: Diarization | None = None) -> tuple[Diarization, list[Segment]]:
        """Diarize (unless `found` is given) and label `segments` and their words with speakers; returns the
        diarization and the speaker-attributed segments. Words take the exclusive turns, made for transcripts."""
        if found is None:
            with self._diarization_lock:
                found = diarize(self.diarizer, audio, config, cancel)
        return found, merge_speakers(found.exclusive, segments, by_word=config.return_timestamps == "word")

    def _forward(self, inputs: list[dict[str, Any]], batch_size: int, options: dict[str, Any],
                 stop: Callable[[], bool]) -> list[dict]:
        """Decode windows with the loop guard: those that fail it are decoded again, together, at the next
        temperature; each output gets the chosen `Attempt` under "attempt" and the number of "fallbacks"."""
        guard: Guard = options["guard"]
        attempts: list[list[Attempt]] = [[] for _ in inputs]
        pending = list(range(len(inputs)))
        agreed: set[int] = set()  # windows whose repetitive text a sampled decoding said again: speech, not a loop
        with self._lock, torch.inference_mode():
            for temperature in guard.temperatures:
                decoded = self._decode([inputs[i] for i in pending], batch_size, options, stop, temperature)
                for i, attempt in zip(pending, decoded):
                    attempts[i].append(attempt)
                    if temperature > 0 and attempts[i][0].repeats_real_speech(attempt, guard):
                        agreed.add(i)
                pending = [i for i, attempt in zip(pending, decoded) if attempt.fails(guard) and i not in agreed]
                if not pending or stop():
                    break
        outputs = []
        for index, tried in enumerate(attempts):
            chosen = tried[0] if index in agreed else best_attempt(tried, guard)
            outputs.append({**chosen.output, "attempt": chosen, "fallbacks": len(tried) - 1})
            metrics.FALLBACKS.inc(len(tried) - 1)
        return outputs

    def _decode(self, inputs: list[dict[str, Any]], batch_size: int, options: dict[str, Any],
                stop: Callable[[], bool], temperature: float) -> list[Attempt]:
        from transformers import StoppingCriteriaList

        generate_kwargs = {**options["generate_kwargs"], "stopping_criteria": StoppingCriteriaList([_StopWhen(stop)]),
                           "max_tokens_per_second": TOKENS_PER_SECOND, "token_margin": TOKEN_MARGIN}
        if temperature > 0:  # sampling, one sequence a window; drafts only serve greedy decoding
            generate_kwargs = {key: value for key, value in generate_kwargs.items()
                               if key not in self.assistant_kwargs}
            generate_kwargs.update(do_sample=True, temperature=temperature, num_beams=1)
        metrics.observe_batch(len(inputs), batch_size)
        model = self.whisper
        model.window_stats = []
        model.pause_ends = collections.deque(bool(x.get("pause_end")) for x in inputs)  # generate() takes them in order
        try:  # the ASR pipeline takes its inputs apart: it gets copies, a fallback needs them again
            outputs = self.asr([{k: v for k, v in x.items() if k != "pause_end"} for x in inputs],
                               batch_size=batch_size, **{**options["asr"], "generate_kwargs": generate_kwargs})
            stats = model.window_stats
        finally:
            model.window_stats, model.pause_ends = None, None
        if len(stats) != len(outputs):
            raise RuntimeError(f"{len(outputs)} windows decoded, {len(stats)} measured")
        # beam search and drafts have no log-probability measured: compression is judged alone
        return [Attempt(output, temperature, compression_ratio(output["text"]), stat.avg_logprob, stat.no_speech_prob,
                        stat.language.strip("<|>") if stat.language else None, stat.bounded)
                for output, stat in zip(outputs, stats)]

    def _transcribe_windows(self, audio: np.ndarray, windows: list[tuple[float, float]], config: InferenceConfig,
                            generate_kwargs: dict[str, Any], assisted: bool, cancel: threading.Event,
                            on_window: WindowCallback | None = None,
                            probabilities: np.ndarray | None = None) -> tuple[list[Segment], dict[str, float]]:
        """The segments of every window, and seconds of speech per detected (or given) language. With `on_window`,
        the first window is decoded alone and each window's segments are handed over as soon as its batch is out.
        `probabilities`: the VAD's per frame of `audio`, for word timing."""
        if not windows:
            return [], {}
        inputs = [{"raw": audio[int(s * SAMPLE_RATE):int(e * SAMPLE_RATE)], "sampling_rate": SAMPLE_RATE,
                   "pause_end": ends_at_pause(probabilities, e)} for s, e in windows]
        word_level = config.return_timestamps == "word"
        guard = Guard.of(config)
        options = {"asr": {"return_timestamps": "word" if word_level else True}, "generate_kwargs": generate_kwargs,
                   "guard": guard}
        batch_size = min(config.effective_batch_size, self.max_batch_size)
        segments: list[Segment] = []
        spoken: Counter[str] = Counter()  # seconds of windows with text, per language
        heard: Counter[str] = Counter()  # of every window: the answer when none has text
        fallback_language = generate_kwargs.get("language") or (None if self.multilingual else "en")
        done = 0
        for size in [len(inputs)] if on_window is None else _streamed_batches(len(inputs), batch_size):
            batch = inputs[done:done + size]
            if assisted:  # drafts decode one sequence at a time; a given-up request stops before its next window
                outputs = []
                for window in batch:
                    outputs += self._forward([window], 1, options, cancel.is_set)
                    _check(cancel)
            else:
                key = (tuple(sorted((k, tuple(v.tolist()) if isinstance(v, torch.Tensor) else v)  # prompt_ids
                                    for k, v in generate_kwargs.items())), word_level, guard)
                outputs = self._batcher.submit(key, batch, batch_size, options, cancel)
            for index, ((start, end), output) in enumerate(zip(windows[done:done + size], outputs), done):
                attempt: Attempt = output["attempt"]
                language = attempt.language or fallback_language
                if language:
                    heard[language] += end - start
                window_segments: list[Segment] = []
                if not attempt.silent(guard):  # Whisper's own verdict: no speech here
                    chunks = [(_clock(c["timestamp"][0], start, start, end),
                               _clock(c["timestamp"][1], end, start, end), c["text"])
                              for c in output.get("chunks", []) if c["text"]]
                    if chunks and language:
                        spoken[language] += end - start
                    found = (sentences(refine_words([Word(s, e, t) for s, e, t in chunks], audio, (start, end),
                                                    config.word_timing, probabilities)) if word_level
                             else [Segment(s, e, t) for s, e, t in chunks])
                    window_segments = [replace(segment, language=language, temperature=attempt.temperature,
                                               avg_logprob=attempt.avg_logprob,
                                               compression_ratio=attempt.compression_ratio,
                                               no_speech_prob=attempt.no_speech_prob) for segment in found]
                segments.extend(window_segments)
                if on_window is not None:
                    on_window(index, window_segments)
            done += size
        return segments, dict(spoken or heard)


def _streamed_batches(total: int, batch_size: int) -> list[int]:
    """The first window alone, then batches of `batch_size`: the first text is out after one window's decoding, and
    the rest costs what it costs unstreamed (smaller batches would cost a CPU more in all: docs/streaming.md)."""
    rest = total - 1
    return [1] + [min(batch_size, rest - start) for start in range(0, rest, batch_size)]


class _StopWhen:
    """A transformers stopping criterion that ends decoding of a batch once `stop()` is true (all given up)."""

    def __init__(self, stop: Callable[[], bool]):
        self.stop = stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.stop(), dtype=torch.bool, device=input_ids.device)


def _with_progress(on_window: WindowCallback | None, progress: Progress | None,
                   total: int) -> WindowCallback | None:
    """`on_window`, also telling `progress` how many of `total` windows are decoded."""
    if progress is None:
        return on_window

    def report(index: int, segments: list[Segment]) -> None:
        if on_window is not None:
            on_window(index, segments)
        progress(index + 1, total)

    return report


def _majority(seconds: dict[str, float]) -> str | None:
    """The language with the most seconds of speech windows (the first detected on a tie); None without speech."""
    return max(seconds, key=seconds.__getitem__) if seconds else None


def _check(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise Cancelled()


def _clock(offset: float | None, fallback: float, start: float, end: float) -> float:
    """A window-relative time as seconds of the original audio, kept inside the window."""
    return round(fallback if offset is None else min(end, start + offset), 3)
