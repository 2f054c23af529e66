"""The Whisper model class the ASR pipeline runs: the same weights and greedy results, less work per request.

Measured on a 2-core CPU (docs/benchmarks.md): transformers' `generate()` runs the encoder twice when it has
to detect the language; the decoder spent half its time in the vocabulary projection, whose GEMM is 2-3x slower
for a few rows in the layout `nn.Linear` uses than transposed, and about 1 ms a step rebuilding the suppress-token
mask; and word timestamps left the model on eager attention for good.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import nn
from transformers import WhisperForConditionalGeneration
from transformers.generation.logits_process import SuppressTokensLogitsProcessor


class LogitsHead(nn.Module):
    """`proj_out` (tied to the token embeddings) computed as W @ x^T on CPU: the same product, another GEMM shape."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])
        if hidden.device.type != "cpu" or flat.shape[0] == 1:  # GPUs, and a single row, where the kernels tie
            return nn.functional.linear(hidden, self.weight)
        return (self.weight @ flat.T).T.reshape(*hidden.shape[:-1], -1)


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
    suppress-token mask once, and keeps SDPA attention after word-timestamp calls."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.proj_out = LogitsHead(self.proj_out.weight)
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
