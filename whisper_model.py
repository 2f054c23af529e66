"""The Whisper model class the ASR pipeline runs: the same weights and greedy results, less work per request.

What it changes and why: transformers' `generate()` runs the encoder twice when it has to detect the language;
fp32 decoding steps are dominated by products of a few rows with weights streamed from memory, which MKL does
faster in the transposed layout, and in bf16 read int8 copies of the decoder weights (`DecodeLinear.pack`: half the
bytes, words as close to fp32's as bf16's); the vocabulary product is the largest of them (`RescoredLogitsHead`:
int8, what decoding reads recomputed exactly); the suppress-token masks were rebuilt every step; word timestamps
left the model on eager attention for good; torch's CPU SDPA kernel is slow for one bf16 query over the encoder
frames; the encoder frames' keys and values were projected twice per call (`CrossLinear`); and a decoding step's
hundreds of tiny ops, split over two OpenMP threads, each wait for the slower thread, which on a shared CPU is often
descheduled (`decode_threads`; only reading the frames' keys and values for several rows takes both); each cached
decoding step went through transformers' per-layer plumbing (`_decoder_step` runs the same modules without it); and
a window Whisper ended at an opening timestamp was encoded again for its tail (`_FinishWindows`).
The measured effect of each: docs/benchmarks.md, "What made it faster".

It also reports, per window, what the loop guard of the pipeline needs (`WindowStats`: detected language,
no-speech probability, average log-probability, tokens) and stops a window at its own token bound.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from transformers import AttentionInterface, WhisperForConditionalGeneration
from transformers.cache_utils import EncoderDecoderCache
from transformers.generation.logits_process import (LogitsProcessor, LogitsProcessorList,
                                                    SuppressTokensAtBeginLogitsProcessor, SuppressTokensLogitsProcessor)
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_outputs import Seq2SeqLMOutput

ATTENTION = "sdpa_cpu_decode"  # the attention implementation to load FastWhisper with
CROSS_THREAD_ROWS = 2  # decoding steps of this many rows attend over the encoder frames on the encoder's threads


def sdpa_cpu_decode(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                    **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA, except for a single bf16/fp16 query on CPU (a decoding step): over a long key (cross-attention)
    plain matmuls, over a short one (self-attention) the fp32 kernel."""
    if query.device.type != "cpu" or query.dtype == torch.float32 or query.shape[2] != 1 or module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if key.shape[2] < 256:  # self-attention over the tokens so far: torch's fp32 kernel is 5x its bf16 one here
        float_mask = attention_mask is not None and attention_mask.dtype != torch.bool
        mask = attention_mask.float() if float_mask else attention_mask
        output, _ = sdpa_attention_forward(module, query.float(), key.float(), value.float(), mask,
                                           dropout=dropout, scaling=scaling, **kwargs)
        return output.to(query.dtype), None
    shared = getattr(module, "shared", None)  # FastWhisper's: reading the encoder frames' keys and values is the cost
    with _threads(shared.threads if shared is not None and query.shape[0] >= CROSS_THREAD_ROWS else None):
        scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
        if attention_mask is not None:
            scores = (scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool
                      else scores + attention_mask)
        weights = torch.softmax(scores.float(), dim=-1).to(value.dtype)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, sdpa_cpu_decode)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, with fp32 products of up to 64 rows on CPU computed as W @ x^T, one row padded to two.

    A decoding step reads every decoder weight once, from memory rather than cache: MKL streams a weight 3-5x
    faster in the transposed layout (512 x 512, 3 rows: 172 -> 53 us), and for two rows 2.7x faster than for
    one. The same sums in another order: results agree to float rounding."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if x.device.type != "cpu" or x.dtype != torch.float32 or not 0 < rows <= 64:
        return nn.functional.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1]).contiguous()  # x^T must be a transposed view: MKL's fast case
    if rows == 1:
        flat = torch.cat([flat, torch.zeros_like(flat)])
    out = (weight @ flat.T).T[:rows].contiguous()  # a transposed result would reach the next layer as such
    if bias is not None:
        out += bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


PACKED_ROWS = 12  # past this many rows bf16's own product is faster (both ~11 ms for a decoder's weights, 1 thread)


class DecodeLinear(nn.Linear):
    """A decoder `nn.Linear` computed by `cpu_linear` (same parameters, same state dict); once `pack()`ed, decoding
    steps in bf16 (one position a row) use int8 weights instead."""

    # the int8 weight, its bf16 scale per output row, and the same weights in bf16 for steps of many rows
    packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def pack(self) -> None:
        """Keeps an int8 copy of the bf16 weight with a scale per output row (weight-only: activations stay bf16).
        The prompt's and the encoder frames' products keep the weight itself."""
        weight = self.weight.detach().float()
        scales = (weight.abs().amax(1).clamp_min(1e-12) / 127).to(torch.bfloat16)
        quantized = (weight / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.packed = (quantized, scales, (quantized.float() * scales.float()[:, None]).to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None or x.dtype != torch.bfloat16 or x.dim() != 3 or x.shape[1] != 1 or not x.shape[0]:
            return cpu_linear(x, self.weight, self.bias)
        quantized, scales, dequantized = self.packed
        rows = x.reshape(x.shape[0], x.shape[-1]).contiguous()
        # torch's weight-only int8 kernel costs per row: many rows take bf16's product of the same weights
        out = (torch._weight_int8pack_mm(rows, quantized, scales) if len(rows) <= PACKED_ROWS
               else nn.functional.linear(rows, dequantized))
        if self.bias is not None:
            out += self.bias
        return out[:, None]


class CrossProjections:
    """What the encoder and the cross-attention of one generate() call share: the encoder's thread count, and each
    key and value projection's last input and output until it is used again (language detection and the prompt
    project the same frames)."""

    def __init__(self) -> None:
        self.threads = 0  # torch's thread count when generate() began (the encoder's); 0 outside it: nothing is kept
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


class CrossLinear(DecodeLinear):
    """A cross-attention key or value projection of the encoder frames (1500 rows a window): a big product, run on
    the encoder's threads, and computed once per generate() call for the same frames."""

    shared: CrossProjections | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared
        if shared is None or not shared.threads:
            return super().forward(x)
        kept = shared.outputs.pop(id(self), None)  # used once: the prompt's pass keeps its own copy in the cache
        if kept is not None and kept[0] is x:  # the very tensor: the encoder's cached output
            return kept[1]
        with _threads(shared.threads):
            out = super().forward(x)
        shared.outputs[id(self)] = (x, out)
        return out


class LogitsHead(nn.Module):
    """`proj_out`, tied to the token embeddings, computed by `cpu_linear`."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return cpu_linear(hidden, self.weight)


class QuantizedLogitsHead(nn.Module):
    """`proj_out` as a dynamically quantized int8 Linear (per-row weight scales): the vocabulary matrix is the
    largest weight a decoding step reads (51865 x 512), and its int8 product with VNNI is several times faster."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        head.weight = nn.Parameter(weight.detach().float(), requires_grad=False)
        head.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        self.linear = torch.ao.nn.quantized.dynamic.Linear.from_float(head)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden)


class RescoredLogitsHead(nn.Module):
    """`proj_out` for decoding steps on CPU: the text tokens' logits from an int8 copy of their rows, then each
    row's `top` best recomputed exactly in fp32, and every special token's (end, languages, task, no-speech,
    timestamps) exact. The vocabulary matrix is the largest weight a step reads; its int8 product is ~6x faster.

    What decoding reads stays exact: the greedy choice (unless int8 rounding pushes the best text token out of the
    top 32), the timestamp rule's text maximum and timestamp mass, the language and no-speech logits. Only the
    softmax normaliser sees the other text tokens' int8 values. Several positions at once (the prompt) are exact.
    """

    def __init__(self, weight: nn.Parameter, first_special: int, top: int = 32):
        super().__init__()
        self.weight, self.first_special, self.top = weight, first_special, top  # weight: tied to the embeddings
        text = nn.Linear(weight.shape[1], first_special, bias=False)
        text.weight = nn.Parameter(weight.detach()[:first_special].float(), requires_grad=False)
        text.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        with warnings.catch_warnings():  # torch.ao's deprecation notice: a log line per start-up, no action
            warnings.simplefilter("ignore")
            self.text = torch.ao.nn.quantized.dynamic.Linear.from_float(text)
        self.register_buffer("special", weight.detach()[first_special:].float().clone(), persistent=False)
        self.register_buffer("text_sums", self.text.weight().dequantize().sum(1), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.dim() != 3 or hidden.shape[1] != 1 or hidden.device.type != "cpu":
            return cpu_linear(hidden, self.weight)
        rows = hidden[:, 0].float()
        # int8 activations share one scale per call: each row mapped onto exactly [-1, 1] first, so a window's
        # logits do not depend on the rows batched with it (W x = half * W unit + center * W 1)
        low, high = rows.amin(-1, keepdim=True), rows.amax(-1, keepdim=True)
        center, half = (high + low) / 2, ((high - low) / 2).clamp_min(1e-12)
        unit = ((rows - center) / half).clamp_(-1, 1)
        unit.scatter_(1, rows.argmax(-1, keepdim=True), 1.0).scatter_(1, rows.argmin(-1, keepdim=True), -1.0)
        text = self.text(unit) * half + center * self.text_sums
        best = text.topk(min(self.top, text.shape[-1]), dim=-1).indices
        exact = torch.einsum("rd,rkd->rk", rows, self.weight[best].float())
        text.scatter_(1, best, exact)
        return torch.cat([text, cpu_linear(rows, self.special)], dim=-1)[:, None]


def rescored_head(model: "FastWhisper") -> "FastWhisper":
    """`RescoredLogitsHead` as the logits head of a CPU FastWhisper whose head is float (not int8-quantized), where
    torch's quantized engine is x86's; in place. The special tokens start at the end-of-text token."""
    # fbgemm's int8 kernels (x86); elsewhere (ARM's qnnpack) the exact head stays
    if (model.device.type == "cpu" and isinstance(model.proj_out, LogitsHead)
            and torch.backends.quantized.engine in ("x86", "fbgemm")):
        first_special = model.generation_config.eos_token_id
        first_special = first_special[0] if isinstance(first_special, list) else first_special
        model.proj_out = RescoredLogitsHead(model.proj_out.weight, first_special)
    return model


def pack_decoder_int8(model: "FastWhisper") -> "FastWhisper":
    """`DecodeLinear.pack()` for every decoder Linear of a bf16 FastWhisper on an AVX-512 CPU, in place: a decoding
    step reads each weight from memory once, and int8 halves that (torch's weight-only int8 kernel is vectorised
    for AVX-512; on AVX2 it was slower than fp32)."""
    if (model.dtype == torch.bfloat16 and model.device.type == "cpu"
            and torch.backends.cpu.get_cpu_capability() == "AVX512"):
        for module in model.model.decoder.modules():
            if type(module) is DecodeLinear:  # not the cross-attention keys and values: the encoder frames, not steps
                module.pack()
    return model


def quantize_int8(model: "FastWhisper") -> "FastWhisper":
    """Every Linear of an fp32 FastWhisper (encoder, decoder, logits head) as a dynamically quantized int8 Linear
    (int8 weights with per-row scales, activations quantized per call), in place; CPU only."""
    if model.dtype != torch.float32 or model.device.type != "cpu":
        raise ValueError("int8 quantization takes an fp32 model on the CPU")
    for module in model.model.decoder.modules():
        if isinstance(module, DecodeLinear):
            module.__class__ = nn.Linear  # quantize_dynamic swaps exact nn.Linear types only
    with warnings.catch_warnings():  # torch.ao's notices that torchao replaces it: a log line per start-up, no action
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(
            model.model, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8,
            inplace=True)
        model.proj_out = QuantizedLogitsHead(model.proj_out.weight)
    return model


def _suppressed(processor: LogitsProcessor, tokens: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """`scores` with `tokens` at -inf, through a vocabulary mask built once per processor."""
    mask = getattr(processor, "_mask", None)
    if mask is None or mask.shape[0] != scores.shape[-1] or mask.device != scores.device:
        vocabulary = torch.arange(scores.shape[-1], device=scores.device)
        mask = processor._mask = torch.isin(vocabulary, tokens.to(scores.device))
    return torch.where(mask, -float("inf"), scores)


class CachedSuppressTokens(SuppressTokensLogitsProcessor):
    """The same rule, its vocabulary mask built once: `torch.isin` over 51k tokens cost about 1 ms every step."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return _suppressed(self, self.suppress_tokens, scores)


class CachedSuppressTokensAtBegin(SuppressTokensAtBeginLogitsProcessor):
    """The same rule, its vocabulary mask built once (transformers rebuilt it every step, for the first one)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] != self.begin_index:
            return scores
        return _suppressed(self, self.begin_suppress_tokens, scores)


_CACHED = {SuppressTokensLogitsProcessor: CachedSuppressTokens,
           SuppressTokensAtBeginLogitsProcessor: CachedSuppressTokensAtBegin}


def _cached(processors: Any) -> Any:
    for index, processor in enumerate(processors or []):
        cached_class = _CACHED.get(type(processor))
        if cached_class is not None:
            cached = cached_class.__new__(cached_class)
            cached.__dict__.update(processor.__dict__)
            processors[index] = cached
    return processors


def _move_rows(cache: EncoderDecoderCache, moves: list[tuple[int, int]], keep: int) -> None:
    """Copy row `source` of every cached key and value over row `target`, for each (source, target), then keep the
    first `keep` rows: `EncoderDecoderCache.batch_select_indices` in the storage the cache has (a copy of 24 windows'
    cross-attention cache would add 400 MB), moving only the rows that fill the gaps."""
    for layer in (*cache.self_attention_cache.layers, *cache.cross_attention_cache.layers):
        for name in ("keys", "values"):
            tensor = getattr(layer, name)
            for source, target in moves:
                tensor[target].copy_(tensor[source])
            setattr(layer, name, tensor[:keep])


def _heads(states: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(rows, 1, heads * head_dim) -> (rows, heads, 1, head_dim), contiguous (WhisperAttention's layout)."""
    return states.view(states.shape[0], 1, -1, head_dim).transpose(1, 2).contiguous()


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Torch (OpenMP) on `count` threads in the calling thread for the block; None or 0 leaves it as it is."""
    before = torch.get_num_threads()
    if not count or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


FRAMES_PER_SECOND = 100  # log-mel frames per second of audio (10 ms hop)


@dataclass
class WindowStats:
    """What one window's decoding looked like: the loop guard's inputs (openai-whisper's DecodingResult)."""

    language: str | None  # the language token decoded with, e.g. "<|en|>"; None for English-only models
    no_speech_prob: float | None  # probability of <|nospeech|> right after <|startoftranscript|>
    sum_logprob: float | None  # None: not measured (beam search, drafts)
    tokens: int | None  # new tokens, the end-of-text token included
    bounded: bool  # stopped at its token bound

    @property
    def avg_logprob(self) -> float | None:
        return None if self.sum_logprob is None else self.sum_logprob / max(1, self.tokens or 0)


class _Meter:
    """Per-window log-probabilities and token counts while a batch decodes, and a per-window token bound.

    `rows` maps the current batch's rows to the windows of the `generate()` call (transformers decodes a window
    again from its last timestamp when it ended mid-segment, with the finished windows left out)."""

    def __init__(self, limits: torch.Tensor, eos: int, ends: torch.Tensor | None = None):
        # `ends`: per window, its log-mel frames where its audio ends at a pause (`_FinishWindows`), else -1
        self.limits, self.eos, self.ends = limits, eos, ends
        self.sums = torch.zeros(len(limits), dtype=torch.float64)
        self.counts = torch.zeros(len(limits), dtype=torch.long)
        self.bounded = torch.zeros(len(limits), dtype=torch.bool)
        self.start([*range(len(limits))])

    def start(self, rows: list[int], left: torch.Tensor | None = None) -> None:
        """`left`: per row, log-mel frames of its window from where this pass begins, -1 where the pass does not
        reach the window's end (None: not known)."""
        self.rows = torch.tensor(rows, dtype=torch.long)
        self.left = left
        self.active = torch.ones(len(rows), dtype=torch.bool)
        self.logprobs: torch.Tensor | None = None

    def scores(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        # the processed scores before any temperature (transformers applies it after custom processors), as
        # openai-whisper's sum_logprobs
        self.logprobs = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def step(self, input_ids: torch.LongTensor, scores: Any) -> torch.Tensor:
        tokens = input_ids[:, -1].cpu()
        active = self.active.clone()
        if self.logprobs is not None and active.any():
            chosen = self.logprobs.cpu().gather(1, tokens[:, None])[:, 0].double()
            rows = self.rows[active]
            self.sums.index_add_(0, rows, torch.where(chosen[active].isfinite(), chosen[active], 0.0))
            self.counts.index_add_(0, rows, torch.ones(len(rows), dtype=torch.long))
        self.active &= tokens != self.eos
        over = self.active & (self.counts[self.rows] >= self.limits[self.rows])
        self.bounded[self.rows[over]] = True
        self.active &= ~over
        return (~self.active).to(input_ids.device)


FINISH_MARGIN_S = 0.5  # a window's last this many seconds may stay untranscribed rather than cost another pass
TIMESTAMP_FRAMES = 2  # log-mel frames per timestamp token step (0.02 s)


class _FinishWindows(LogitsProcessor):
    """For a window whose audio ends at a pause (`FastWhisper.pause_ends`): no end of text right after a segment's
    opening timestamp while more than FINISH_MARGIN_S of the window's audio follows it, so the model transcribes
    that segment in this pass.

    Whisper ends a window with an opening timestamp when it takes the last segment for cut off, and transformers
    then encodes the window again from there: a whole encoder pass for a tail. A window that ends at a pause cuts
    nothing off (where speech goes on past its end, forcing the segment can loop); on real meetings the tails
    decoded again cost a third of the time and agreed worse with references (one was an invented "Thank you.";
    docs/benchmarks.md, "Continuation passes")."""

    def __init__(self, meter: _Meter, timestamp_begin: int, eos: int):
        self.meter, self.timestamp_begin, self.eos = meter, timestamp_begin, eos

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        left = self.meter.left
        if left is None or input_ids.shape[1] < 2:
            return scores
        last, before = input_ids[:, -1].cpu(), input_ids[:, -2].cpu()
        opened = (last >= self.timestamp_begin) & (before >= self.timestamp_begin) & (left >= 0)
        if not opened.any():
            return scores
        at = (last - self.timestamp_begin) * TIMESTAMP_FRAMES
        going_on = opened & (at < left - FINISH_MARGIN_S * FRAMES_PER_SECOND)
        if going_on.any():
            scores = scores.clone()
            scores[going_on.to(scores.device), self.eos] = -float("inf")
        return scores


class _MeterScores(LogitsProcessor):
    def __init__(self, meter: _Meter):
        self.meter = meter

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return self.meter.scores(input_ids, scores)


class _SeededSampling(LogitsProcessor):
    """Sampling at `temperature` as Gumbel noise plus greedy choice, the noise drawn from a generator per window
    seeded by its audio: a window samples the same tokens whatever else shares its batch."""

    def __init__(self, meter: _Meter, temperature: float, seeds: list[int]):
        self.meter, self.temperature = meter, temperature
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=self.generators[row])
                               for row in self.meter.rows.tolist()]).clamp_(min=1e-20, max=1 - 1e-7)
        return scores.float() / self.temperature - torch.log(-torch.log(uniform)).to(scores.device)


class _MeterStop(StoppingCriteria):
    def __init__(self, meter: _Meter):
        self.meter = meter

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return self.meter.step(input_ids, scores)


def token_limits(frames: torch.Tensor, tokens_per_second: float, margin: int) -> torch.Tensor:
    """The most new tokens each window may decode: its audio seconds (from log-mel frames) at `tokens_per_second`,
    plus `margin` for the language, task and timestamp tokens."""
    return (frames.double() / FRAMES_PER_SECOND * tokens_per_second).ceil().long() + margin


class FastWhisper(WhisperForConditionalGeneration):
    """Whisper that encodes a batch once per `generate()`, projects logits with `LogitsHead`, builds the
    suppress-token mask once, and keeps its attention implementation (load it with `ATTENTION`) after
    word-timestamp calls."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.proj_out = LogitsHead(self.proj_out.weight)
        for module in self.model.decoder.modules():
            if type(module) is nn.Linear:
                module.__class__ = DecodeLinear
        self._cross = CrossProjections()
        for layer in self.model.decoder.layers:
            layer.encoder_attn.shared = self._cross
            for projection in (layer.encoder_attn.k_proj, layer.encoder_attn.v_proj):
                projection.__class__, projection.shared = CrossLinear, self._cross
        self._encoded: list[tuple[torch.Tensor, Any]] | None = None  # this generate() call's encoder results
        self._meter: _Meter | None = None
        self._alive: torch.Tensor | None = None  # rows of this pass left in the step cache (None: all of them)
        self._no_speech: torch.Tensor | None = None  # this generate() call's no-speech probabilities
        self._languages: list[str | None] = []
        self.window_stats: list[WindowStats] | None = None  # a list here collects every window's WindowStats
        self.decode_threads: int | None = None  # torch threads for the decoding steps on CPU (None: torch's count)
        # per window of the coming generate() calls, in order: whether its audio ends at a pause, where
        # `_FinishWindows` applies (None: no window is known to)
        self.pause_ends: collections.deque[bool] | None = None
        encoder = self.get_encoder()
        encoder.forward = self._encode_once(encoder.forward)

    def get_output_embeddings(self) -> nn.Module:
        return self.proj_out

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.proj_out = LogitsHead(new_embeddings.weight)

    @property
    def quantized(self) -> bool:
        """Whether `quantize_int8` made this model's Linear layers int8."""
        return isinstance(self.proj_out, QuantizedLogitsHead)

    def _encode_once(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(forward)  # generate() inspects the encoder's signature
        def encode(input_features: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            # language detection encodes the batch, then generate() encodes the same features again
            # (word timestamps ask for encoder attentions, which generate() only passes through: cached output has none)
            cacheable = self._encoded is not None and not args and not kwargs.get("output_hidden_states")
            if cacheable:
                for features, output in self._encoded:
                    if features.shape == input_features.shape and torch.equal(features, input_features):
                        return output
            with _threads(self._cross.threads):  # big GEMMs: every thread pays off, also when decoding has fewer
                output = forward(input_features, *args, **kwargs)
            if cacheable:
                self._encoded.append((input_features, output))
            return output

        return encode

    # what generate() passes for a decoding step; anything else (attentions for word timestamps, labels, embeddings,
    # position ids) takes transformers' own forward
    _STEP_KEYS = frozenset({"decoder_input_ids", "decoder_attention_mask", "encoder_outputs", "past_key_values",
                            "attention_mask", "use_cache", "return_dict", "output_attentions", "output_hidden_states"})

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """transformers' forward; a greedy or sampled decoding step on CPU (one new token a row, keys and values
        cached) computes the same operations on the same modules without transformers' per-layer plumbing (masks,
        output capture, cache dispatch), about a tenth of a whisper-base step (docs/benchmarks.md)."""
        if args or not self._fast_step(kwargs):
            if self._alive is not None:  # the cache holds fewer rows than transformers' batch now
                raise RuntimeError("a decoding step left the fast path after finished rows left its cache")
            return super().forward(*args, **kwargs)
        ids, cache = kwargs["decoder_input_ids"], kwargs["past_key_values"]
        alive = self._shrink(cache, ids.shape[0])
        logits = self.proj_out(self._decoder_step(ids if alive is None else ids[alive], cache))
        if alive is not None:  # finished rows: transformers pads them whatever their logits
            logits = logits.new_zeros((ids.shape[0], *logits.shape[1:])).index_copy_(0, alive, logits)
        return Seq2SeqLMOutput(logits=logits, past_key_values=cache)

    def _shrink(self, cache: EncoderDecoderCache, rows: int) -> torch.Tensor | None:
        """The rows of this pass still decoding, as indices, once some have finished (None: all): finished rows
        leave the step cache (`_move_rows`), so a step reads the encoder frames' keys and values of live rows only."""
        meter = self._meter
        if meter is None or len(meter.active) != rows:
            return self._alive
        alive = self._alive.cpu() if self._alive is not None else torch.arange(rows)
        live = meter.active[alive]  # per row of the cache
        if live.all() or not live.any():  # none finished, or all: transformers stops before the next step
            return self._alive
        keep = int(live.sum())
        gaps = (~live[:keep]).nonzero()[:, 0]
        tail = live[keep:].nonzero()[:, 0] + keep  # live rows past the end: each fills a gap
        _move_rows(cache, list(zip(tail.tolist(), gaps.tolist())), keep)
        alive = alive.clone()
        alive[gaps] = alive[tail]
        self._alive = alive[:keep].to(self.device)
        return self._alive

    def _fast_step(self, kwargs: dict[str, Any]) -> bool:
        ids, cache, mask = kwargs.get("decoder_input_ids"), kwargs.get("past_key_values"), \
            kwargs.get("decoder_attention_mask")
        return (not self.training and self.device.type == "cpu" and self.config._attn_implementation == ATTENTION
                and kwargs.keys() <= self._STEP_KEYS and kwargs.get("use_cache") is not False
                and not kwargs.get("output_attentions") and not kwargs.get("output_hidden_states")
                and ids is not None and ids.dim() == 2 and ids.shape[1] == 1
                and isinstance(cache, EncoderDecoderCache) and cache.get_seq_length() > 0
                and all(cache.is_updated.get(layer.encoder_attn.layer_idx) for layer in self.model.decoder.layers)
                and (mask is None or bool(mask.all())))

    def _decoder_step(self, ids: torch.Tensor, cache: EncoderDecoderCache) -> torch.Tensor:
        """WhisperDecoder's forward for one cached step in eval mode (no dropout, no mask): its layers' modules in
        the same order, the keys and values appended to and read from transformers' own cache."""
        decoder = self.model.decoder
        rows = ids.shape[0]
        hidden = decoder.embed_tokens(ids) + decoder.embed_positions.weight[cache.get_seq_length()]
        for layer in decoder.layers:
            residual, states = hidden, layer.self_attn_layer_norm(hidden)
            attention = layer.self_attn
            query = _heads(attention.q_proj(states) * attention.scaling, attention.head_dim)
            key, value = cache.self_attention_cache.update(_heads(attention.k_proj(states), attention.head_dim),
                                                           _heads(attention.v_proj(states), attention.head_dim),
                                                           attention.layer_idx)
            out, _ = sdpa_cpu_decode(attention, query, key, value, None, scaling=1.0)
            hidden = residual + attention.out_proj(out.reshape(rows, 1, -1))
            residual, states = hidden, layer.encoder_attn_layer_norm(hidden)
            attention = layer.encoder_attn
            query = _heads(attention.q_proj(states) * attention.scaling, attention.head_dim)
            frames = cache.cross_attention_cache.layers[attention.layer_idx]
            out, _ = sdpa_cpu_decode(attention, query, frames.keys, frames.values, None, scaling=1.0)
            hidden = residual + attention.out_proj(out.reshape(rows, 1, -1))
            residual, states = hidden, layer.final_layer_norm(hidden)
            hidden = residual + layer.fc2(layer.activation_fn(layer.fc1(states)))
        return decoder.layer_norm(hidden)

    def _retrieve_logit_processors(self, *args: Any, **kwargs: Any) -> Any:
        return _cached(super()._retrieve_logit_processors(*args, **kwargs))

    def _get_logits_processor(self, *args: Any, **kwargs: Any) -> Any:
        return _cached(super()._get_logits_processor(*args, **kwargs))

    def detect_language(self, input_features: torch.Tensor | None = None, encoder_outputs: Any = None,
                        generation_config: Any = None, num_segment_frames: int = 3000) -> torch.Tensor:
        """transformers' detection (the most likely language token after <|startoftranscript|>), which also keeps
        the no-speech probability those same logits give (as openai-whisper does)."""
        generation_config = generation_config or self.generation_config
        inputs = ({"input_features": input_features[:, :, :num_segment_frames]} if input_features is not None
                  else {"encoder_outputs": encoder_outputs})
        batch_size = (input_features if input_features is not None else encoder_outputs[0]).shape[0]
        start = torch.full((batch_size, 1), generation_config.decoder_start_token_id, device=self.device)
        with torch.no_grad():
            logits = self(**inputs, decoder_input_ids=start, use_cache=False).logits[:, -1]
        self._no_speech = logits.float().softmax(dim=-1)[:, generation_config.no_timestamps_token_id - 1].cpu()
        lang_ids = list((getattr(generation_config, "lang_to_id", None) or {}).values())
        if not lang_ids:  # English-only: only the no-speech probability was wanted
            return torch.zeros(batch_size, dtype=torch.long, device=self.device)
        non_language = torch.ones_like(logits[0], dtype=torch.bool)
        non_language[lang_ids] = False
        return logits.masked_fill(non_language, -float("inf")).argmax(-1)

    def _retrieve_init_tokens(self, input_features: torch.Tensor, batch_size: int, generation_config: Any,
                              *args: Any, **kwargs: Any) -> torch.Tensor:
        init_tokens = super()._retrieve_init_tokens(input_features, batch_size, generation_config, *args, **kwargs)
        if self._no_speech is None:  # language given: the no-speech probability still needs the first step
            self.detect_language(input_features, generation_config=generation_config)
        id_to_lang = {v: k for k, v in (getattr(generation_config, "lang_to_id", None) or {}).items()}
        self._languages = [next((id_to_lang[t] for t in row if t in id_to_lang), None)
                           for row in init_tokens.tolist()]
        return init_tokens

    def generate_with_fallback(self, segment_input: torch.Tensor, decoder_input_ids: torch.Tensor, cur_bsz: int,
                               seek: torch.Tensor, batch_idx_map: list[int], *args: Any, **kwargs: Any) -> Any:
        self._alive = None
        if self._meter is not None:  # a window decoded again from its last timestamp keeps its count
            rows = list(batch_idx_map[:cur_bsz])
            ends, left = self._meter.ends, None
            if ends is not None and (ends >= 0).any():
                left = ends[rows] - seek.cpu()[rows]
                # a window cut mid-speech, or longer than 30 s (this pass sees part of it): transformers' rule
                left[(ends[rows] < 0) | (left > segment_input.shape[-1])] = -1
            self._meter.start(rows, left)
        return super().generate_with_fallback(segment_input, decoder_input_ids, cur_bsz, seek, batch_idx_map,
                                              *args, **kwargs)

    def _retrieve_segment(self, *args: Any, **kwargs: Any) -> tuple[list[dict], Any]:
        """transformers' segments of one row's pass and how far it got; a window that stopped within FINISH_MARGIN_S
        of its audio's end is done (`_FinishWindows`), where transformers would decode that tail again."""
        segments, offset = super()._retrieve_segment(*args, **kwargs)
        left = self._meter.left if self._meter is not None else None
        frames = kwargs["seek_num_frames"][kwargs["prev_idx"]]
        tail = left[kwargs["idx"]] - offset if left is not None else -1
        if offset < frames and 0 <= tail <= FINISH_MARGIN_S * FRAMES_PER_SECOND:
            return segments, frames
        return segments, offset

    def generate(self, input_features: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 max_tokens_per_second: float | None = None, token_margin: int = 16, **kwargs: Any) -> Any:
        """transformers' Whisper generate(); with `max_tokens_per_second`, no window decodes more new tokens than
        its audio length (from `attention_mask`) at that rate plus `token_margin`. Appends one `WindowStats` per
        window to `window_stats` when it is a list. `do_sample` with a `temperature` samples per window
        (`_SeededSampling`) when decoding is not beam search or drafted."""
        self._encoded, self._no_speech, self._languages = [], None, []
        queue, windows = self.pause_ends, input_features.shape[0] if input_features is not None else 0
        pause_end = torch.tensor([bool(queue.popleft()) if queue else False for _ in range(windows)], dtype=torch.bool)
        self._cross.threads = torch.get_num_threads()
        attention = self.config._attn_implementation
        meter = None
        if input_features is not None and kwargs.get("num_beams", 1) == 1 and "assistant_model" not in kwargs:
            frames = (attention_mask.sum(-1).cpu() if attention_mask is not None
                      else torch.full((input_features.shape[0],), input_features.shape[-1]))
            limits = (token_limits(frames, max_tokens_per_second, token_margin) if max_tokens_per_second
                      else torch.full((len(frames),), self.config.max_target_positions))
            meter = self._meter = _Meter(limits, self.generation_config.eos_token_id,
                                         torch.where(pause_end, frames, -1))
            processors = [*(kwargs.get("logits_processor") or []), _MeterScores(meter)]
            no_timestamps = getattr(self.generation_config, "no_timestamps_token_id", None)
            if no_timestamps is not None:  # before the meter: the log-probabilities are of what may be chosen
                processors.insert(-1, _FinishWindows(meter, no_timestamps + 1, self.generation_config.eos_token_id))
            temperature = kwargs.pop("temperature", None)
            if kwargs.pop("do_sample", False) and temperature:
                seeds = [zlib.crc32(row.float().cpu().numpy().tobytes()) ^ round(temperature * 1000)
                         for row in input_features]
                processors.append(_SeededSampling(meter, temperature, seeds))
            kwargs["logits_processor"] = LogitsProcessorList(processors)
            kwargs["stopping_criteria"] = StoppingCriteriaList([*(kwargs.get("stopping_criteria") or []),
                                                                _MeterStop(meter)])
        try:
            with _threads(self.decode_threads if self.device.type == "cpu" else None):
                output = super().generate(input_features, attention_mask=attention_mask, **kwargs)
            if self.window_stats is not None and input_features is not None:
                rows = input_features.shape[0]
                no_speech = self._no_speech.tolist() if self._no_speech is not None else [None] * rows
                languages = self._languages or [None] * rows
                if meter is None:
                    self.window_stats.extend(WindowStats(language, p, None, None, False)
                                             for language, p in zip(languages, no_speech))
                else:
                    self.window_stats.extend(
                        WindowStats(language, p, float(total), int(count), bool(bounded))
                        for language, p, total, count, bounded in zip(languages, no_speech, meter.sums, meter.counts,
                                                                      meter.bounded))
            return output
        finally:
            # one model for all threads; they take turns (a lock)
            self._encoded, self._meter, self._alive = None, None, None
            self._cross.threads, self._cross.outputs = 0, {}
            # word timestamps switch the shared config to eager attention for good: later requests keep SDPA
            self.config._attn_implementation = attention
