"""SpeechPipeline (the handler's and the server's core) on tiny random Whisper checkpoints, loaded by path through
the hub-id code path."""

import sys

import numpy as np
import torch

import pytest
from conftest import MODELS, b64, encode, make_pipeline, tone

from audio import decode_audio
from config import InferenceConfig
from errors import RequestError


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return make_pipeline(tiny_models["main"], tiny_models["draft"])


def test_chunks_are_timestamped_inside_the_audio(tiny, speechlike):
    out = tiny.handle({"inputs": speechlike, "parameters": {"vad": False}})
    assert out["chunks"], out
    times = [t for c in out["chunks"] for t in c["timestamp"]]
    assert all(0 <= t <= 3.0 for t in times) and times == sorted(times)


def test_long_audio_is_cut_into_windows_and_batched(tiny):
    audio = np.concatenate([tone(2.0, freq=300 + 50 * i) for i in range(6)])  # 12 s
    data = encode(audio, 16000, "flac", "flac")
    passes, forward = [], tiny.asr

    def spy(inputs, **kwargs):
        passes.append(([x["raw"].copy() for x in inputs], kwargs["batch_size"]))
        outputs = forward(inputs, **kwargs)
        # each window's own times, as Whisper gives them, to check the offsets against
        passes[-1] += ([[c["timestamp"] for c in o["chunks"] if c["text"]] for o in outputs],)
        return outputs

    tiny.asr = spy
    try:
        out = tiny.handle({"inputs": data, "parameters": {"vad": False, "chunk_length_s": 5, "batch_size": 2}})
    finally:
        tiny.asr = forward
    # passes of at most the batch size the request asked for (later ones: the decoding fallback re-decoding
    # windows random weights loop in)
    assert all(size == 2 and len(w) <= 2 for w, size, _ in passes)
    audio = decode_audio(data)
    for start, end in ((0, 80000), (80000, 160000), (160000, 192000)):  # 5 s, 5 s, 2 s: the audio, cut
        assert any(len(x) == end - start and np.array_equal(x, audio[start:end]) for w, _, _ in passes for x in w)
    times = [t for c in out["chunks"] for t in c["timestamp"]]
    assert times == sorted(times) and 0 <= min(times) and max(times) <= 12.0
    assert any(c["timestamp"][0] >= 10.0 for c in out["chunks"])


def test_word_timestamps(tiny, speechlike):
    out = tiny.handle({"inputs": speechlike, "parameters": {"vad": False, "return_timestamps": "word"}})
    assert "words" in out and out["words"]
    assert "".join(w["text"] for w in out["words"]) == "".join(c["text"] for c in out["chunks"])
    for word in out["words"]:
        assert 0 <= word["start"] <= word["end"] <= 3.0


def test_silence_gives_an_empty_transcript(tiny):
    out = tiny.handle({"inputs": encode(np.zeros(16000 * 4, np.float32), 16000, "wav", "pcm_s16le")})
    assert out["text"] == "" and out["chunks"] == [] and out["duration"] == 4.0


@pytest.mark.parametrize("assistant, kind, shared_vocab", [
    ("draft", "DraftWhisper", True),  # distil-large-v3 for large-v3: same vocabulary, full model
    ("draft_decoder", "WhisperForCausalLM", True),  # distil-whisper's decoder-only kind, fed the main encoder's output
    ("draft_en", "DraftWhisper", False),  # tiny.en for base: universal assisted generation
])
def test_assisted_drafts_and_equals_greedy_token_for_token(tiny_models, speechlike, assistant, kind, shared_vocab):
    pipe = make_pipeline(tiny_models["main"], tiny_models[assistant])
    draft = pipe.assistant_kwargs["assistant_model"]
    assert type(draft).__name__ == kind and ("tokenizer" not in pipe.assistant_kwargs) == shared_vocab
    drafted = []
    hook = draft.register_forward_hook(lambda *args: drafted.append(1))
    try:
        plain = pipe.handle({"inputs": speechlike, "parameters": {"vad": False}})
        assert drafted == []  # plain decoding never runs the assistant
        assisted = pipe.handle({"inputs": speechlike, "parameters": {"vad": False, "assisted": True}})
    finally:
        hook.remove()
    assert len(drafted) > 1  # the assistant drafted, step by step
    assert assisted == plain and plain["chunks"]


def test_assisted_without_an_assistant_is_a_client_error(tiny_models, speechlike):
    pipe = make_pipeline(tiny_models["main"])
    with pytest.raises(RequestError, match="no ASSISTANT_MODEL") as caught:
        pipe.handle({"inputs": speechlike, "parameters": {"assisted": True}})
    assert caught.value.field == "assisted"


def test_language_is_validated(tiny, speechlike):
    assert tiny.handle({"inputs": speechlike, "parameters": {"vad": False, "language": "German"}})["language"] == "de"
    with pytest.raises(RequestError, match="unknown language") as caught:
        tiny.handle({"inputs": speechlike, "parameters": {"language": "klingon"}})
    assert caught.value.status == 422 and caught.value.field == "language"


def test_english_only_models_get_no_task_or_language(tiny_models, speechlike):
    pipe = make_pipeline(tiny_models["main_en"])
    assert not pipe.multilingual
    kwargs = pipe.generate_kwargs(pipe_config({"language": "en"}))
    assert "task" not in kwargs and "language" not in kwargs
    assert pipe.handle({"inputs": speechlike, "parameters": {"vad": False, "language": "en"}})["language"] == "en"
    with pytest.raises(RequestError, match="English-only"):
        pipe.handle({"inputs": speechlike, "parameters": {"task": "translate"}})
    with pytest.raises(RequestError, match="English-only"):
        pipe.handle({"inputs": speechlike, "parameters": {"language": "fr"}})


def pipe_config(parameters):
    from config import InferenceConfig

    return InferenceConfig.parse(parameters)


@pytest.mark.parametrize("data, message", [
    ({"inputs": "%%%"}, "not valid base64"),
    ({"inputs": b64(b"RIFF1234WAVEfmt garbage")}, "not a supported audio file"),
    ({"parameters": {}}, "inputs is missing"),
    ("just a string", "JSON object"),
    ({"inputs": b"x", "parameters": {"batch_size": -3}}, "batch_size"),
])
def test_bad_requests_raise_request_errors(tiny, data, message):
    with pytest.raises(RequestError, match=message):
        tiny.handle(data)


def test_missing_default_model_says_how_to_fix(monkeypatch, tmp_path):
    from config import ModelSettings
    from speech_pipeline import SpeechPipeline

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / ".venv"))  # nor in a checkout above the venv
    with pytest.raises(RuntimeError, match="setup.sh"):
        SpeechPipeline(ModelSettings(assistant_model="", diarization_model=""), base_dir=tmp_path / "nowhere")


def test_missing_model_fails_fast_without_leaking_the_token(tmp_path):
    with pytest.raises(RuntimeError, match="could not load ASR_MODEL") as caught:
        make_pipeline(tmp_path / "no-such-model", hf_token="hf_topsecret123")
    assert "hf_topsecret123" not in str(caught.value)


def test_concurrent_requests_share_forward_passes_with_identical_results(tiny_models):
    from concurrent.futures import ThreadPoolExecutor

    pipe = make_pipeline(tiny_models["main"], batch_wait_ms=300)
    requests = [{"inputs": encode(tone(2.0 + i, freq=180.0 + 90 * i), 16000, "wav", "pcm_s16le"),
                 "parameters": {"vad": False}} for i in range(4)]
    sequential = [pipe.handle(request) for request in requests]
    calls, forward = [], pipe.asr  # greedy passes (random weights also fail the loop guard: sampled passes follow)
    pipe.asr = lambda inputs, **kwargs: (
        calls.append(len(inputs)) if not kwargs["generate_kwargs"].get("do_sample") else None,
        forward(inputs, **kwargs))[1]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(pipe.handle, requests))
    assert concurrent == sequential  # sampled fallbacks included: each window samples with its own seed
    assert len(calls) < len(requests) and max(calls) > 1  # windows of several requests in one pass


def test_a_failing_batch_fails_its_requests_and_the_next_one_succeeds(tiny_models, speechlike):
    pipe = make_pipeline(tiny_models["main"])
    forward = pipe.asr
    pipe.asr = lambda inputs, **kwargs: (_ for _ in ()).throw(RuntimeError("out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):
        pipe.handle({"inputs": speechlike, "parameters": {"vad": False}})
    pipe.asr = forward
    assert pipe.handle({"inputs": speechlike, "parameters": {"vad": False}})["chunks"]


def test_assisted_auto_drafts_only_where_it_wins(tiny_models):
    from config import InferenceConfig

    pipe = make_pipeline(tiny_models["main_deep"], tiny_models["draft"])
    auto = InferenceConfig.parse({"assisted": "auto"})
    assert auto.effective_batch_size == 24 and InferenceConfig.parse({"assisted": "auto", "batch_size": 8})
    assert pipe.drafting_pays  # 2 of 8 decoder layers
    assert not pipe.use_assistant(auto, windows=1)  # a CPU: drafting was measured slower
    pipe.device = torch.device("cuda")  # the policy only; nothing runs on it here
    assert pipe.use_assistant(auto, windows=1)
    assert not pipe.use_assistant(auto, windows=3)
    assert not pipe.use_assistant(InferenceConfig.parse({"assisted": "auto", "batch_size": 8}), windows=1)
    assert pipe.use_assistant(InferenceConfig.parse({"assisted": True}), windows=3)
    assert not make_pipeline(tiny_models["main_deep"]).use_assistant(auto, windows=1)  # nothing to draft with


def test_assisted_auto_skips_a_draft_nearly_as_deep_as_the_main_model(tiny_models):
    """Like tiny.en for base (4 of 6 layers), 2.8x slower on an H200: auto leaves it unused; `true` still drafts."""
    from config import InferenceConfig

    pipe = make_pipeline(tiny_models["main"], tiny_models["draft"])  # 2 of 2 decoder layers
    pipe.device = torch.device("cuda")
    assert pipe.assistant_kwargs and not pipe.drafting_pays
    assert not pipe.use_assistant(InferenceConfig.parse({"assisted": "auto"}), windows=1)
    assert pipe.use_assistant(InferenceConfig.parse({"assisted": True}), windows=1)


def test_a_prompt_leads_the_decoder_input_and_a_long_one_keeps_its_end(tiny_models, speechlike):
    pipe = make_pipeline(tiny_models["main"])
    tokenizer = pipe.asr.tokenizer
    first_inputs: list[list[int]] = []
    hook = pipe.asr.model.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: first_inputs.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
    pipe.handle({"inputs": speechlike, "parameters": {"vad": False, "prompt": "Dr. Okafor, Kubernetes"}})
    hook.remove()
    prompt = tokenizer.get_prompt_ids("Dr. Okafor, Kubernetes").tolist()
    prefill = max(first_inputs, key=len)  # language detection runs the decoder on <|startoftranscript|> alone first
    assert prefill[:len(prompt)] == prompt and prompt[0] == tokenizer.convert_tokens_to_ids("<|startofprev|>")
    assert prefill[len(prompt)] == tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    long = " ".join(f"term{i}" for i in range(400))
    full, kept = tokenizer.get_prompt_ids(long).tolist(), pipe._prompt_ids(long).tolist()
    assert len(full) > 224 and len(kept) == 224 and kept == full[:1] + full[-223:]  # OpenAI's rule: the last 223
    assert pipe.handle({"inputs": speechlike, "parameters": {"vad": False, "prompt": long}})["chunks"] is not None
    assert InferenceConfig.parse({"prompt": "  "}).prompt is None
    with pytest.raises(RequestError, match="prompt") as caught:
        InferenceConfig.parse({"prompt": "x" * 4001})
    assert caught.value.status == 422


def test_requests_with_different_prompts_never_share_a_pass(tiny_models):
    from concurrent.futures import ThreadPoolExecutor

    pipe = make_pipeline(tiny_models["main"], batch_wait_ms=300)
    requests = [{"inputs": encode(tone(2.0 + i, freq=180.0 + 90 * i), 16000, "wav", "pcm_s16le"),
                 "parameters": {"vad": False, "prompt": ["alpha", "beta"][i % 2]}} for i in range(4)]
    sequential = [pipe.handle(request) for request in requests]
    windows: dict[tuple, int] = {}
    passes, forward = [], pipe.asr

    class Spy:  # the ASR pipeline, counting each prompt's windows per pass
        def __call__(self, inputs, **kwargs):
            if not kwargs["generate_kwargs"].get("do_sample"):  # the greedy passes (fallbacks follow each)
                prompt = tuple(kwargs["generate_kwargs"]["prompt_ids"].tolist())
                windows[prompt] = windows.get(prompt, 0) + len(inputs)
                passes.append(prompt)
            return forward(inputs, **kwargs)

        def __getattr__(self, name):
            return getattr(forward, name)

    pipe.asr = Spy()
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(pipe.handle, requests)) == sequential
    ids = {name: tuple(pipe._prompt_ids(name).tolist()) for name in ("alpha", "beta")}
    assert windows == {ids["alpha"]: 2, ids["beta"]: 2}  # each pass ran under its own requests' prompt
    assert len(passes) < len(requests)  # and requests with the same prompt did share one


def _decoder_steps(pipe, on_step=None):
    steps = []

    def count(*args):
        steps.append(1)
        if on_step:
            on_step(len(steps))

    return steps, pipe.asr.model.proj_out.register_forward_hook(count)  # once a forward: steps skip the decoder module


@pytest.mark.parametrize("assisted", [False, True])
def test_cancelling_stops_decoding_at_the_next_step(tiny_models, assisted):
    import threading

    from errors import Cancelled

    pipe = make_pipeline(tiny_models["main"], tiny_models["draft"])
    request = {"inputs": encode(tone(6.0), 16000, "wav", "pcm_s16le"),
               "parameters": {"vad": False, "assisted": assisted}}
    steps, hook = _decoder_steps(pipe)
    pipe.handle(request)
    full = len(steps)
    hook.remove()
    assert full > 8  # random weights decode to max_length: there is something to cut short

    cancel = threading.Event()
    steps, hook = _decoder_steps(pipe, lambda n: n == 3 and cancel.set())
    try:
        with pytest.raises(Cancelled):
            pipe.handle(request, cancel)
    finally:
        hook.remove()
    assert len(steps) <= 5 < full
    assert pipe.handle(request)["chunks"]  # the next request is served in full


def test_a_request_cancelled_before_it_runs_does_no_work(tiny_models):
    import threading

    from errors import Cancelled

    pipe = make_pipeline(tiny_models["main"])
    cancel = threading.Event()
    cancel.set()
    steps, hook = _decoder_steps(pipe)
    try:
        with pytest.raises(Cancelled):
            pipe.handle({"inputs": encode(tone(3.0), 16000, "wav", "pcm_s16le"), "parameters": {"vad": False}}, cancel)
    finally:
        hook.remove()
    assert steps == []


def test_drafting_pays_for_large_v3_with_distil_and_not_for_base_with_tiny_en():
    from transformers import WhisperConfig

    from benchmarks.bench_assisted import ARCHITECTURES
    from speech_pipeline import drafting_pays

    base, tiny_en = (WhisperConfig.from_pretrained(MODELS / name) for name in ("whisper-base", "whisper-tiny.en"))
    large, distil = (WhisperConfig(**ARCHITECTURES[name]) for name in ("large-v3", "distil-large-v3"))
    assert drafting_pays(large, distil) and not drafting_pays(base, tiny_en)


def test_concurrent_requests_with_different_parameters_each_get_their_own_decoding(tiny_models):
    """Word and segment timestamps, two languages, translate, assisted beside plain and two batch sizes at once:
    every request gets what it gets alone, and every forward pass runs one kind of request at its batch size."""
    from concurrent.futures import ThreadPoolExecutor

    pipe = make_pipeline(tiny_models["main"], tiny_models["draft"], batch_wait_ms=300)
    variants = [{}, {"return_timestamps": "word"}, {"language": "de"}, {"language": "en"}, {"task": "translate"},
                {"assisted": True}, {"batch_size": 1}, {"batch_size": 4}, {}, {"return_timestamps": "word"}]
    requests = [{"inputs": encode(tone(6.0, freq=170.0 + 40 * i), 16000, "wav", "pcm_s16le"),
                 "parameters": {"vad": False, "chunk_length_s": 3, **variant}} for i, variant in enumerate(variants)]
    sequential = [pipe.handle(request) for request in requests]
    passes, forward = [], pipe.asr

    class Spy:  # the ASR pipeline, recording what each pass ran with
        def __call__(self, inputs, **kwargs):
            generate = kwargs["generate_kwargs"]
            passes.append({"windows": len(inputs), "batch_size": kwargs["batch_size"],
                           "timestamps": kwargs["return_timestamps"], "task": generate.get("task"),
                           "language": generate.get("language"), "assisted": "assistant_model" in generate})
            return forward(inputs, **kwargs)

        def __getattr__(self, name):
            return getattr(forward, name)

    pipe.asr = Spy()
    with ThreadPoolExecutor(len(requests)) as pool:
        concurrent = list(pool.map(pipe.handle, requests))
    assert concurrent == sequential
    kinds: dict[tuple, int] = {}
    for p in passes:
        kind = (p["batch_size"], p["timestamps"], p["task"], p["language"], p["assisted"])
        kinds[kind] = kinds.get(kind, 0) + p["windows"]
    assert set(kinds) == set({  # each kind of request decoded apart, at its own batch size
        (24, True, "transcribe", None, False): 4, (24, "word", "transcribe", None, False): 4,
        (24, True, "transcribe", "de", False): 2, (24, True, "transcribe", "en", False): 2,
        (24, True, "translate", None, False): 2, (1, True, "transcribe", None, True): 2,
        (1, True, "transcribe", None, False): 2, (4, True, "transcribe", None, False): 2})
    assert all(p["windows"] <= p["batch_size"] for p in passes)


@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_the_task_token_leads_the_decoder_input(tiny, speechlike, task):
    """The reference path shares the task handling, so compare the decoder's actual prefix with Whisper's tokens."""
    tokenizer = tiny.asr.tokenizer
    first_inputs: list[list[int]] = []
    hook = tiny.asr.model.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: first_inputs.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
    try:
        tiny.handle({"inputs": speechlike, "parameters": {"vad": False, "task": task, "language": "de"}})
    finally:
        hook.remove()
    ids = tokenizer.convert_tokens_to_ids
    assert max(first_inputs, key=len)[:3] == [ids("<|startoftranscript|>"), ids("<|de|>"), ids(f"<|{task}|>")]
