"""whisper_model: the fast model class computes what transformers' Whisper computes."""

import copy

import pytest
import torch
from conftest import make_pipeline

from whisper_model import (DecodeLinear, FastWhisper, LogitsHead, RescoredLogitsHead, cpu_linear,
                           sdpa_cpu_decode)


def test_logits_head_equals_the_linear_layer_for_every_shape():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(1000, 64))
    head = LogitsHead(weight)
    for shape in ((1, 1, 64), (3, 1, 64), (2, 4, 64), (5, 64)):
        hidden = torch.randn(shape)
        out = head(hidden)
        assert out.shape == (*shape[:-1], 1000)
        torch.testing.assert_close(out, torch.nn.functional.linear(hidden, weight), rtol=1e-5, atol=1e-4)


def test_cpu_linear_equals_the_linear_layer_for_every_row_count_and_layout():
    """One row (padded to two), a few, the 64-row limit and past it, with and without bias, and inputs that are
    transposed views (as a previous layer's output can be)."""
    torch.manual_seed(0)
    weight, bias = torch.randn(96, 40), torch.randn(96)
    for rows in (1, 2, 3, 64, 65, 300):
        for x in (torch.randn(rows, 1, 40), torch.randn(40, rows).T.reshape(rows, 1, 40)):
            for b in (None, bias):
                out = cpu_linear(x, weight, b)
                assert out.shape == (rows, 1, 96) and out.is_contiguous()
                torch.testing.assert_close(out, torch.nn.functional.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    assert cpu_linear(torch.randn(0, 40), weight).shape == (0, 96)


def test_the_decoders_linear_layers_use_cpu_linear_and_keep_their_weights(tiny_models):
    from transformers import WhisperForConditionalGeneration

    fast = FastWhisper.from_pretrained(tiny_models["main"])
    stock = WhisperForConditionalGeneration.from_pretrained(tiny_models["main"])
    decoder_linears = [m for m in fast.model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert decoder_linears and all(isinstance(m, DecodeLinear) for m in decoder_linears)
    assert not any(type(m) is DecodeLinear for m in fast.model.encoder.modules())
    ours, theirs = fast.state_dict(), stock.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_packed_decode_linear_uses_int8_weights_for_bf16_decoding_steps_only():
    """Decoding steps (one position a row) in bf16: the product with the int8 copy (a scale per row), close to the
    bf16 one, the same for a row alone or among many rows; the prompt (several positions) and fp32 take the weight."""
    from whisper_model import PACKED_ROWS

    assert PACKED_ROWS >= 8  # a batch of 8 windows decodes on torch's int8 kernel
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96).to(torch.bfloat16)
    linear.__class__ = DecodeLinear
    steps = {rows: torch.randn(rows, 1, 256, dtype=torch.bfloat16) for rows in (1, 3, 8, PACKED_ROWS + 5)}
    before = {rows: linear(x) for rows, x in steps.items()}
    prompt = torch.randn(2, 4, 256, dtype=torch.bfloat16)
    prompt_before = linear(prompt)
    linear.pack()
    weights, scales, dequantized = linear.packed
    assert weights.dtype == torch.int8 and weights.abs().max() == 127 and scales.shape == (96,)
    assert (dequantized.float() - linear.weight.float()).abs().max() <= scales.float().max() / 2 * 1.01
    for rows, x in steps.items():
        out = linear(x)
        assert out.shape == (rows, 1, 96) and out.dtype == torch.bfloat16
        expected = x.float() @ dequantized.float().T + linear.bias.float()
        torch.testing.assert_close(out.float(), expected, rtol=0.02, atol=0.02)
        assert not torch.equal(out, before[rows])  # the int8 weights were used
        assert (out.float() - before[rows].float()).abs().max() < 0.05 * before[rows].float().abs().max()
        alone = torch.cat([linear(row[None]) for row in x])  # through the int8 kernel, row by row
        torch.testing.assert_close(out, alone, rtol=0.01, atol=0.02)
        if rows <= 8:
            assert torch.equal(out, alone)
    assert torch.equal(linear(prompt), prompt_before)
    x32 = torch.randn(2, 1, 256)
    linear32 = torch.nn.Linear(256, 96)
    linear32.__class__ = DecodeLinear
    reference = linear32(x32)
    linear32.pack()
    assert torch.equal(linear32(x32), reference)


@pytest.mark.parametrize("dtype, capability, packed", [("bfloat16", "AVX512", True), ("float32", "AVX512", False),
                                                       ("bfloat16", "AVX2", False)])
def test_the_pipeline_packs_the_decoder_in_bf16_on_avx512_only(tiny_models, monkeypatch, dtype, capability, packed):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    model = make_pipeline(tiny_models["main"], dtype=dtype).asr.model
    linears = [m for m in model.model.decoder.modules() if type(m) is DecodeLinear]
    assert len(linears) == 8 * model.config.decoder_layers  # all but the cross-attention keys and values
    assert all((m.packed is not None) is packed for m in linears)
    assert not any(isinstance(m, DecodeLinear) for m in model.model.encoder.modules())


def test_logits_head_in_bf16_is_the_linear_layer():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(1000, 64, dtype=torch.bfloat16))
    for rows in (1, 3):
        hidden = torch.randn(rows, 1, 64, dtype=torch.bfloat16)
        assert torch.equal(LogitsHead(weight)(hidden), torch.nn.functional.linear(hidden, weight))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("keys", [1500, 100])
def test_decode_attention_equals_sdpa(dtype, masked, keys):
    """One query over 1500 encoder frames takes the matmul branch in bf16, over 100 tokens (self-attention) the fp32
    kernel, and the SDPA kernel in fp32: each must compute softmax(q k^T * scale) v, masked positions excluded."""
    torch.manual_seed(0)
    module = torch.nn.Module().eval()
    query, key, value = (torch.randn(2, 8, length, 64).to(dtype) for length in (1, keys, keys))
    mask = (torch.rand(2, 1, 1, keys) > 0.3) if masked else None
    sdpa = torch.nn.functional.scaled_dot_product_attention
    expected = sdpa(query.float(), key.float(), value.float(), attn_mask=mask, scale=0.125).transpose(1, 2)
    out, weights = sdpa_cpu_decode(module, query, key, value, mask, scaling=0.125)
    assert weights is None and out.dtype == dtype and out.shape == (2, 1, 8, 64)
    error = (out.float() - expected).abs().max()
    if dtype == torch.float32:
        assert error < 1e-5
    else:  # no further from the exact result than torch's own bf16 kernel
        assert error <= max((sdpa(query, key, value, attn_mask=mask, scale=0.125).float().transpose(1, 2)
                             - expected).abs().max(), 2 ** -8)


def test_auto_dtype_is_bf16_only_on_cpus_with_bf16_instructions(monkeypatch):
    from config import ModelSettings
    from speech_pipeline import _device_and_dtype

    settings = ModelSettings(device="cpu", dtype="auto")
    for avx512_bf16, amx, expected in ((True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                       (False, False, torch.float32)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        assert _device_and_dtype(settings) == (torch.device("cpu"), expected)
    assert _device_and_dtype(ModelSettings(device="cpu", dtype="float32"))[1] == torch.float32


def test_the_pipeline_runs_fast_whisper_with_tied_logits(tiny_models):
    model = make_pipeline(tiny_models["main"]).asr.model
    assert isinstance(model, FastWhisper) and isinstance(model.proj_out, RescoredLogitsHead)
    assert model.proj_out.weight is model.model.decoder.embed_tokens.weight  # the exact rows are the tied ones


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rescored_head_is_exact_where_decoding_reads_it(dtype):
    """Special tokens and each row's 32 best text tokens (by int8) are the fp32 product of the (tied) weight; so is
    the argmax and every position of a multi-token step; the other text tokens are within int8 rounding."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter((torch.randn(51865, 64) * 0.3).to(dtype))
    head = RescoredLogitsHead(weight, first_special=50257)
    exact = weight.float()
    hidden = torch.randn(5, 1, 64).to(dtype)
    out = head(hidden)
    expected = torch.nn.functional.linear(hidden.float(), exact)
    assert out.shape == (5, 1, 51865) and out.dtype == torch.float32
    torch.testing.assert_close(out[..., 50257:], expected[..., 50257:], rtol=1e-5, atol=1e-4)
    assert min(((out - expected).abs()[:, 0, :50257] < 1e-4).sum(-1).tolist()) >= 32  # 32 rescored a row
    best = expected[:, 0, :50257].topk(8).indices  # the best few are among them
    torch.testing.assert_close(out[:, 0, :50257].gather(1, best), expected[:, 0, :50257].gather(1, best),
                               rtol=1e-5, atol=1e-4)
    assert torch.equal(out.argmax(-1), expected.argmax(-1))
    rounding = (out - expected).abs().max()
    assert 0 < rounding < 0.02 * expected.abs().max()  # the int8 part is used, and close
    prompt = torch.randn(2, 3, 64).to(dtype)
    assert torch.equal(head(prompt), LogitsHead(weight)(prompt))
    # a row's logits do not depend on the rows decoded with it (int8 activations share one scale per call)
    spread = hidden * torch.tensor([1.0, 5.0, 0.2, 1.0, 3.0]).to(dtype)[:, None, None]
    alone = torch.cat([head(spread[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(head(spread), alone, rtol=0, atol=1e-5)


def test_the_exact_head_stays_where_the_int8_engine_is_not_x86s(tiny_models, monkeypatch):
    from whisper_model import rescored_head

    monkeypatch.setattr(torch.backends.quantized, "engine", "qnnpack")
    model = rescored_head(FastWhisper.from_pretrained(tiny_models["main"]))
    assert type(model.proj_out) is LogitsHead


def test_the_rescored_head_decodes_what_the_stock_class_decodes(tiny_models):
    """Greedy tokens, timestamps included, equal transformers' Whisper in fp32 with the pipeline's head."""
    from transformers import WhisperForConditionalGeneration

    from whisper_model import rescored_head

    fast = rescored_head(FastWhisper.from_pretrained(tiny_models["main"], attn_implementation="sdpa").eval())
    stock = WhisperForConditionalGeneration.from_pretrained(tiny_models["main"], attn_implementation="sdpa").eval()
    assert isinstance(fast.proj_out, RescoredLogitsHead)
    torch.manual_seed(1)
    features = torch.randn(3, 80, 3000)
    with torch.inference_mode():
        ours = fast.generate(features, task="transcribe", return_timestamps=True)
        theirs = stock.generate(features, task="transcribe", return_timestamps=True)
    assert torch.equal(ours, theirs)


def test_generate_encodes_the_batch_once(tiny_models):
    model = make_pipeline(tiny_models["main"]).asr.model
    calls = []
    hook = model.get_encoder().conv1.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.inference_mode():
            model.generate(torch.randn(2, 80, 3000), task="transcribe")  # language detection included
    finally:
        hook.remove()
    assert len(calls) == 1


def test_generate_equals_the_stock_class_also_when_a_window_is_decoded_twice(tiny_models):
    """Random weights rarely stop before max_length, so generate() seeks into the window and decodes a second
    pass over new features: the cache must not answer that one. Word timestamps leave SDPA attention on."""
    from transformers import WhisperForConditionalGeneration

    fast = FastWhisper.from_pretrained(tiny_models["main"], attn_implementation="sdpa").eval()
    stock = WhisperForConditionalGeneration.from_pretrained(tiny_models["main"], attn_implementation="sdpa").eval()
    torch.manual_seed(0)
    features = torch.randn(2, 80, 3000)
    for options in ({"return_timestamps": True}, {"return_timestamps": True, "return_token_timestamps": True}):
        with torch.inference_mode():
            ours, theirs = fast.generate(features, task="transcribe", **options), \
                stock.generate(features, task="transcribe", **options)
        ours, theirs = (out["sequences"] if isinstance(out, dict) else out for out in (ours, theirs))
        assert torch.equal(ours, theirs)
    assert fast.config._attn_implementation == "sdpa" and stock.config._attn_implementation == "eager"


def test_cached_suppress_tokens_equals_the_stock_processor_and_is_used():
    from transformers.generation.logits_process import SuppressTokensLogitsProcessor

    from whisper_model import CachedSuppressTokens, _cached

    stock = SuppressTokensLogitsProcessor([1, 5, 999])
    processors = _cached([stock])
    assert type(processors[0]) is CachedSuppressTokens
    torch.manual_seed(0)
    for _ in range(2):  # the second call uses the cached mask
        scores = torch.randn(3, 1000)
        assert torch.equal(processors[0](None, scores.clone()), stock(None, scores.clone()))


def test_cached_suppress_tokens_at_begin_equals_the_stock_processor_and_is_used():
    from transformers.generation.logits_process import SuppressTokensAtBeginLogitsProcessor

    from whisper_model import CachedSuppressTokensAtBegin, _cached

    stock = SuppressTokensAtBeginLogitsProcessor([220, 999], begin_index=3)
    processors = _cached([stock])
    assert type(processors[0]) is CachedSuppressTokensAtBegin
    torch.manual_seed(0)
    for length in (3, 4, 3):  # at the begin index (twice: the cached mask) and after it
        scores, ids = torch.randn(2, 1000), torch.zeros(2, length, dtype=torch.long)
        assert torch.equal(processors[0](ids, scores.clone()), stock(ids, scores.clone()))
    assert processors[0](torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 1000))[:, [220, 999]].isinf().all()


def test_decoding_steps_run_on_decode_threads_and_the_encoder_on_all(tiny_models):
    """DECODE_THREADS=1 (the default): the encoder's GEMMs take every torch thread, each decoding step one, and the
    caller's thread count is back afterwards; 0 leaves every step on torch's count."""
    pipeline = make_pipeline(tiny_models["main"])
    model = pipeline.asr.model
    assert model.decode_threads == 1
    assert make_pipeline(tiny_models["main"], decode_threads=0).whisper.decode_threads is None
    seen: dict[str, list[int]] = {"encoder": [], "decoder": []}
    hooks = [module.register_forward_hook(lambda *args, part=part: seen[part].append(torch.get_num_threads()))
             for part, module in (("encoder", model.get_encoder().conv1),
                                  ("decoder", model.model.decoder.layers[0].fc1))]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            model.generate(torch.randn(2, 80, 3000), task="transcribe")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        for hook in hooks:
            hook.remove()
    assert seen["encoder"] == [2] and len(seen["decoder"]) > 1 and set(seen["decoder"]) == {1}


def test_cross_attention_keys_and_values_are_projected_once_a_call_on_the_encoders_threads(tiny_models, monkeypatch):
    """Language detection and the prompt both attend over the same encoder frames: each key and value projection
    runs once per generate() call, on torch's thread count, while the decoding steps run on one thread."""
    import whisper_model
    from whisper_model import CrossLinear

    model = make_pipeline(tiny_models["main"]).asr.model
    cross = [m for m in model.model.decoder.modules() if isinstance(m, CrossLinear)]
    assert len(cross) == 2 * model.config.decoder_layers
    products: list[int] = []  # the thread count of each product over the 1500 encoder frames of 2 windows

    def counting(x, weight, bias=None):
        if x.shape[:-1] == (2, 1500):
            products.append(torch.get_num_threads())
        return cpu_linear(x, weight, bias)

    monkeypatch.setattr(whisper_model, "cpu_linear", counting)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(2):  # nothing is kept from one call to the next
            products.clear()
            with torch.inference_mode():
                model.generate(torch.randn(2, 80, 3000), task="transcribe")  # the language is detected first
            assert products == [2] * len(cross)
    finally:
        torch.set_num_threads(before)
    assert not model._cross.outputs and not model._cross.threads


def test_cross_attention_of_several_rows_runs_on_the_encoders_threads(monkeypatch):
    """A bf16 decoding step over the encoder frames: one row stays on the caller's (decoding) thread count, two or
    more take the encoder's; the result is the same either way."""
    import whisper_model
    from whisper_model import CROSS_THREAD_ROWS, CrossProjections

    assert CROSS_THREAD_ROWS == 2
    module = torch.nn.Module().eval()
    module.shared = CrossProjections()
    module.shared.threads = 2
    seen: list[int] = []
    matmul = torch.matmul
    monkeypatch.setattr(whisper_model.torch, "matmul",
                        lambda a, b: seen.append(torch.get_num_threads()) or matmul(a, b))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for rows, threads in ((1, 1), (3, 2)):
            seen.clear()
            query, key, value = (torch.randn(rows, 4, n, 16, dtype=torch.bfloat16) for n in (1, 300, 300))
            out, _ = sdpa_cpu_decode(module, query, key, value, None)
            assert seen == [threads, threads] and torch.get_num_threads() == 1
            monkeypatch.setattr(module, "shared", None)
            seen.clear()
            torch.testing.assert_close(sdpa_cpu_decode(module, query, key, value, None)[0], out)
            assert seen == [1, 1]
            module.shared = CrossProjections()
            module.shared.threads = 2
    finally:
        torch.set_num_threads(before)


def test_int8_quantizes_every_linear_layer_and_keeps_the_logits_close(tiny_models):
    """DTYPE=int8: every Linear of the encoder, the decoder and the logits head is a dynamically quantized int8
    Linear (no float Linear left), and the int8 model's logits stay near fp32's."""
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    from whisper_model import QuantizedLogitsHead

    fp32, int8 = (make_pipeline(tiny_models["main"], dtype=dtype).asr.model for dtype in ("float32", "int8"))
    assert int8.quantized and not fp32.quantized and isinstance(int8.proj_out, QuantizedLogitsHead)
    linears = [m for m in int8.modules() if isinstance(m, (torch.nn.Linear, QuantizedLinear))]
    assert len(linears) == len([m for m in fp32.modules() if isinstance(m, torch.nn.Linear)]) + 1  # + the head's
    assert all(type(m) is QuantizedLinear for m in linears)
    torch.manual_seed(0)
    features, start = torch.randn(2, 80, 3000), torch.full((2, 3), 50258)
    with torch.inference_mode():
        ours, theirs = (m(input_features=features, decoder_input_ids=start).logits for m in (int8, fp32))
    assert ours.dtype == torch.float32 and (ours - theirs).abs().max() < 0.05 * theirs.abs().max()


def test_int8_is_refused_off_the_cpu():
    from config import ModelSettings
    from speech_pipeline import _device_and_dtype

    assert _device_and_dtype(ModelSettings(device="cpu", dtype="int8")) == (torch.device("cpu"), torch.float32)
    with pytest.raises(RuntimeError, match="CPU only"):
        _device_and_dtype(ModelSettings(device="cuda", dtype="int8"))


def test_the_server_reports_int8_for_a_quantized_model(tiny_models):
    from types import SimpleNamespace

    from admission import Service

    for dtype, shown in (("int8", "int8"), ("float32", "float32")):
        pipeline = make_pipeline(tiny_models["main"], dtype=dtype)
        assert Service.model_info(SimpleNamespace(pipeline=pipeline))["dtype"] == shown


def test_a_window_goes_on_after_an_opening_timestamp_unless_its_audio_ends_within_the_margin():
    from whisper_model import FINISH_MARGIN_S, FRAMES_PER_SECOND, _FinishWindows, _Meter

    eos, first = 50257, 50365  # <|endoftext|>, <|0.00|>
    meter = _Meter(torch.full((4,), 100), eos)
    meter.start([0, 1, 2, 3], left=torch.tensor([3000, 3000, 1000, -1]))
    finish = _FinishWindows(meter, first, eos)
    # timestamp steps of 0.02 s: 20 s and 29.6 s of 30 s, 8 s of 10 s, 2 s into a pass that does not reach the end
    opened_at = {0: 1000, 1: 1480, 2: 400, 3: 100}
    ids = torch.tensor([[50258, 400, first + step, first + step] for step in opened_at.values()])
    scores = finish(ids, torch.zeros(4, 51865))
    assert FINISH_MARGIN_S * FRAMES_PER_SECOND > 3000 - 2 * 1480
    assert scores[:, eos].tolist() == [-float("inf"), 0.0, -float("inf"), 0.0]
    assert (scores[:, :eos] == 0).all()
    text_last = ids.clone()
    text_last[:, -1] = 400  # a segment's text, or a closing timestamp after text: the stock rules decide
    assert (finish(text_last, torch.zeros(4, 51865)) == 0).all()
    closed = ids.clone()
    closed[:, -2] = 400
    assert (finish(closed, torch.zeros(4, 51865)) == 0).all()


def test_a_window_that_stops_within_the_margin_of_its_end_is_not_decoded_again(tiny_models):
    from whisper_model import _Meter

    model = FastWhisper.from_pretrained(tiny_models["main"])
    first = model.generation_config.no_timestamps_token_id + 1
    model._meter = _Meter(torch.full((2,), 100), model.generation_config.eos_token_id)
    model._meter.start([0, 1], left=torch.tensor([2933, 2933]))

    def offset(opened_at: int, row: int) -> int:
        sequence = torch.tensor([first, 400, 401, first + opened_at, first + opened_at])
        segments, frames = model._retrieve_segment(
            seek_sequence=sequence, seek_outputs=[{}, {}], time_offset=torch.zeros(2), timestamp_begin=first,
            seek_num_frames=torch.tensor([3000, 3000]), time_precision=0.02, time_precision_features=0.01,
            input_stride=2, prev_idx=row, idx=row, return_token_timestamps=False, decoder_input_ids=torch.zeros(2, 3))
        assert len(segments) == 1 and float(segments[0]["end"]) == opened_at * 0.02
        return int(frames)

    assert offset(1448, 0) == 3000  # 28.96 s of a 29.33 s window: the rest is under the margin
    assert offset(1000, 1) == 2000  # 20 s: transformers decodes the window again from there


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_decoding_steps_compute_what_transformers_forward_computes(tiny_models, monkeypatch, dtype):
    """Greedy and sampled, three rows: the same tokens with `_decoder_step` as through transformers' forward;
    word timestamps (cross-attention weights wanted) take transformers' forward."""
    from whisper_model import ATTENTION

    model = FastWhisper.from_pretrained(tiny_models["main"], dtype=dtype, attn_implementation=ATTENTION).eval()
    steps = []
    fast_step = FastWhisper._decoder_step
    monkeypatch.setattr(FastWhisper, "_decoder_step", lambda self, *args: steps.append(1) or fast_step(self, *args))
    torch.manual_seed(2)
    features = torch.randn(3, 80, 3000).to(dtype)
    for options in ({}, {"do_sample": True, "temperature": 0.6}):
        with torch.inference_mode():
            ours = model.generate(features, task="transcribe", return_timestamps=True, **options)
            assert steps
            with monkeypatch.context() as patched:
                patched.setattr(FastWhisper, "_fast_step", lambda self, kwargs: False)
                theirs = model.generate(features, task="transcribe", return_timestamps=True, **options)
        assert torch.equal(ours, theirs)
        steps.clear()
    with torch.inference_mode():
        model.generate(features, task="transcribe", return_timestamps=True, return_token_timestamps=True)
    assert not steps
    with torch.inference_mode():  # one step, both ways, from the same cache: the same logits and cache, exactly
        encoded = model.get_encoder()(features)
        start = torch.tensor([[50258, 50259, 50359]] * 3)
        cache = model(encoder_outputs=encoded, decoder_input_ids=start, use_cache=True).past_key_values
        other = copy.deepcopy(cache)
        token = torch.tensor([[400], [50365], [1000]])
        ours = model(encoder_outputs=encoded, decoder_input_ids=token, past_key_values=cache, use_cache=True)
        monkeypatch.setattr(FastWhisper, "_fast_step", lambda self, kwargs: False)
        theirs = model(encoder_outputs=encoded, decoder_input_ids=token, past_key_values=other, use_cache=True)
    assert len(steps) == 1 and torch.equal(ours.logits, theirs.logits)
    for mine, reference in zip(cache.self_attention_cache.layers, other.self_attention_cache.layers):
        assert torch.equal(mine.keys, reference.keys) and torch.equal(mine.values, reference.values)


def test_finished_rows_leave_the_step_cache_and_the_others_decode_the_same_tokens(monkeypatch):
    """Real speech, windows of 4, 12 and 25 s in one batch: the short ones end first and leave the cache (a step
    then reads the encoder frames of live rows only); every window's tokens equal those of the full batch."""
    from transformers import AutoFeatureExtractor

    import whisper_model
    from benchmarks.accuracy import phone_call
    from conftest import MODELS
    from whisper_model import ATTENTION

    model = FastWhisper.from_pretrained(MODELS / "whisper-base", dtype=torch.float32,
                                        attn_implementation=ATTENTION).eval()
    audio = phone_call()[0]
    windows = [audio[:16000 * seconds] for seconds in (4, 12, 25)]
    inputs = AutoFeatureExtractor.from_pretrained(MODELS / "whisper-base")(
        windows, sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    kept = []
    move_rows = whisper_model._move_rows
    monkeypatch.setattr(whisper_model, "_move_rows",
                        lambda cache, moves, keep: kept.append(keep) or move_rows(cache, moves, keep))
    with torch.inference_mode():
        ours = model.generate(inputs.input_features, attention_mask=inputs.attention_mask, language="en",
                              return_timestamps=True)
        assert kept and kept[-1] == 1
        monkeypatch.setattr(FastWhisper, "_shrink", lambda self, cache, rows: None)
        theirs = model.generate(inputs.input_features, attention_mask=inputs.attention_mask, language="en",
                                return_timestamps=True)
    assert torch.equal(ours, theirs)


def test_moving_rows_of_a_cache_equals_transformers_batch_select_in_the_same_storage():
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    from whisper_model import _move_rows

    torch.manual_seed(3)
    tensors = [torch.randn(5, 2, length, 4) for length in (7, 7, 30, 30)]
    ours, theirs = (EncoderDecoderCache(DynamicCache(), DynamicCache()) for _ in range(2))
    for cache in (ours, theirs):
        cache.self_attention_cache.update(tensors[0].clone(), tensors[1].clone(), 0)
        cache.cross_attention_cache.update(tensors[2].clone(), tensors[3].clone(), 0)
    storage = ours.cross_attention_cache.layers[0].keys.data_ptr()
    # rows 1 and 3 finish: row 4 fills row 1's place (3 is past the end); then row 0: row 2 fills it
    for moves, keep, order in (([(4, 1)], 3, [0, 4, 2]), ([(2, 0)], 2, [2, 1])):
        _move_rows(ours, moves, keep)
        theirs.batch_select_indices(torch.tensor(order))
        for mine, reference in zip((*ours.self_attention_cache.layers, *ours.cross_attention_cache.layers),
                                   (*theirs.self_attention_cache.layers, *theirs.cross_attention_cache.layers)):
            assert torch.equal(mine.keys, reference.keys) and torch.equal(mine.values, reference.values)
    assert ours.cross_attention_cache.layers[0].keys.data_ptr() == storage
