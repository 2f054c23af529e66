"""SpeechPipeline (the handler's and the server's core) on tiny random Whisper checkpoints, loaded by path through
the hub-id code path."""

import sys

import numpy as np
import torch

import pytest
from conftest import MODELS, b64, encode, make_pipeline, tone

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
    out = tiny.handle({"inputs": data, "parameters": {"vad": False, "chunk_length_s": 5, "batch_size": 2}})
    starts = [c["timestamp"][0] for c in out["chunks"]]
    assert starts == sorted(starts) and max(c["timestamp"][1] for c in out["chunks"]) <= 12.0
    assert any(s >= 5.0 for s in starts)  # windows after the first were transcribed and offset


def test_word_timestamps(tiny, speechlike):
    out = tiny.handle({"inputs": speechlike, "parameters": {"vad": False, "return_timestamps": "word"}})
    assert "words" in out and out["words"]
    assert "".join(w["text"] for w in out["words"]) == "".join(c["text"] for c in out["chunks"])
    for word in out["words"]:
        assert 0 <= word["start"] <= word["end"] <= 3.0


def test_silence_gives_an_empty_transcript(tiny):
    out = tiny.handle({"inputs": encode(np.zeros(16000 * 4, np.float32), 16000, "wav", "pcm_s16le")})
    assert out["text"] == "" and out["chunks"] == [] and out["duration"] == 4.0


@pytest.mark.parametrize("assistant", ["draft", "draft_en"])
def test_assisted_equals_greedy_token_for_token(tiny_models, speechlike, assistant):
    pipe = make_pipeline(tiny_models["main"], tiny_models[assistant])
    shared_vocab = "tokenizer" not in pipe.assistant_kwargs
    assert shared_vocab == (assistant == "draft")
    plain = pipe.handle({"inputs": speechlike, "parameters": {"vad": False}})
    assisted = pipe.handle({"inputs": speechlike, "parameters": {"vad": False, "assisted": True}})
    assert assisted == plain


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
    calls, forward = [], pipe.asr
    pipe.asr = lambda inputs, **kwargs: (calls.append(len(inputs)), forward(inputs, **kwargs))[1]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(pipe.handle, requests))
    assert concurrent == sequential
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

    return steps, pipe.asr.model.model.decoder.register_forward_hook(count)


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
