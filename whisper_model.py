"""The Whisper model class the ASR pipeline runs: the same weights and greedy results, less work per request.

What it changes and why: transformers' `generate()` runs the encoder twice when it has to detect the language;
fp32 decoding steps are dominated by products of a few rows with weights streamed from memory, which MKL does
faster in the transposed layout; the suppress-token mask was rebuilt every step; word timestamps left the model
on eager attention for good; and torch's CPU SDPA kernel is slow for one bf16 query over the encoder frames.
The measured effect of each: docs/benchmarks.md, "What made it faster".
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import nn
from transformers import AttentionInterface, WhisperForConditionalGeneration
from transformers.generation.logits_process import SuppressTokensLogitsProcessor
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "sdpa_cpu_decode"  # the attention implementation to load FastWhisper with


def sdpa_cpu_decode(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                    **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA, except a single bf16/fp16 query over a long key (decoding cross-attention) on CPU: plain matmuls."""
    if (query.device.type != "cpu" or query.dtype == torch.float32 or query.shape[2] != 1 or key.shape[2] < 256
            or module.training):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
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


class DecodeLinear(nn.Linear):
    """A decoder `nn.Linear` computed by `cpu_linear` (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_linear(x, self.weight, self.bias)


class LogitsHead(nn.Module):
    """`proj_out`, tied to the token embeddings, computed by `cpu_linear`."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return cpu_linear(hidden, self.weight)


class CachedSuppressTokens(SuppressTokensLogitsProcessor):
    """The same rule, its vocabulary mask built once: `torch.isin` over 51k tokens cost about 1 ms every step."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        mask = getattr(self, "_mask", None)
        if mask is None or mask.shape[0] != scores.shape[-1] or mask.device != scores.device:
            vocabulary = torch.arange(scores.shape[-1], device=scores.device)
            mask = self._mask = torch.isin(vocabulary, self.suppress_tokens.to(scores.device))
        return torch.where(mask, -float("inf"), scores)


def _cached(processors: Any) -> Any:
    for index, processor in enumerate(processors or []):
        if type(processor) is SuppressTokensLogitsProcessor:
            cached = CachedSuppressTokens.__new__(CachedSuppressTokens)
            cached.__dict__.update(processor.__dict__)
            processors[index] = cached
    return processors


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
        self._encoded: list[tuple[torch.Tensor, Any]] | None = None  # this generate() call's encoder results
        encoder = self.get_encoder()
        encoder.forward = self._encode_once(encoder.forward)

    def get_output_embeddings(self) -> nn.Module:
        return self.proj_out

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.proj_out = LogitsHead(new_embeddings.weight)

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
            output = forward(input_features, *args, **kwargs)
            if cacheable:
                self._encoded.append((input_features, output))
            return output

        return encode

    def _retrieve_logit_processors(self, *args: Any, **kwargs: Any) -> Any:
        return _cached(super()._retrieve_logit_processors(*args, **kwargs))

    def _get_logits_processor(self, *args: Any, **kwargs: Any) -> Any:
        return _cached(super()._get_logits_processor(*args, **kwargs))

    def generate(self, input_features: torch.Tensor | None = None, **kwargs: Any) -> Any:
        self._encoded = []
        attention = self.config._attn_implementation
        try:
            return super().generate(input_features, **kwargs)
        finally:
            self._encoded = None  # the pipeline holds one model for all threads; they take turns (a lock)
            # word timestamps switch the shared config to eager attention for good: later requests keep SDPA
            self.config._attn_implementation = attention
