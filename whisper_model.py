"""The Whisper model class the ASR pipeline runs: the same weights and greedy results, less work per request.

Measured on a 2-core CPU (docs/benchmarks.md): transformers' `generate()` runs the encoder twice when it has
to detect the language, and the decoder spends half its time in the vocabulary projection, whose GEMM is
2-3x slower for a few rows in the layout `nn.Linear` uses than transposed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import WhisperForConditionalGeneration


class LogitsHead(nn.Module):
    """`proj_out` (tied to the token embeddings) computed as W @ x^T on CPU: the same product, another GEMM shape."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.device.type != "cpu":
            return nn.functional.linear(hidden, self.weight)
        flat = hidden.reshape(-1, hidden.shape[-1])
        if flat.shape[0] == 1:  # a vector: the kernels tie, and this keeps one code path for GPUs and CPUs alike
            return nn.functional.linear(hidden, self.weight)
        return (self.weight @ flat.T).T.reshape(*hidden.shape[:-1], -1)


class FastWhisper(WhisperForConditionalGeneration):
    """Whisper that encodes each batch once and projects logits with `LogitsHead`."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.proj_out = LogitsHead(self.proj_out.weight)

    def get_output_embeddings(self) -> nn.Module:
        return self.proj_out

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.proj_out = LogitsHead(new_embeddings.weight)

    def generate(self, input_features: torch.Tensor | None = None, **kwargs: Any) -> Any:
        # language detection would encode the batch a second time: hand generate() the encoder output instead;
        # long-form input (over 30 s) and drafting (the assistant encodes from the features) keep the stock path
        if (input_features is not None and kwargs.get("encoder_outputs") is None and "assistant_model" not in kwargs
                and input_features.shape[-1] <= 2 * self.config.max_source_positions):
            kwargs["encoder_outputs"] = self.get_encoder()(input_features)
            return super().generate(**kwargs)
        return super().generate(input_features, **kwargs)
