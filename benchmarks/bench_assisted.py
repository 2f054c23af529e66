"""What one decoding step costs a main model and its assistant here: can speculative decoding win at all?

    python -m benchmarks.bench_assisted [--pairs models/whisper-base:models/whisper-tiny.en,large-v3:distil-large-v3]
        [--device cuda] [--dtype float16] [--drafts 5] [--steps 40] [--out docs/bench_assisted.json]

A round of speculative decoding costs `drafts` assistant steps plus one main step over drafts + 1 tokens, and
yields at most drafts + 1 tokens: its best case, every draft accepted, is (drafts + 1) * main / (drafts * draft +
verify). Where even that bound is near 1, drafting cannot pay for its rejected tokens. A directory loads real
weights; a name from ARCHITECTURES builds that architecture's decoder with random weights, since a step's cost does
not depend on the weights' values (so the large pairs need no download). Encoder states are random, 1500 frames.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch


from config import PROJECT_DIR

# Hub configs of the checkpoints (d_model, decoder layers, heads, ffn, vocabulary); one encoder layer stands in for
# the encoder, which a decoding step never runs.
ARCHITECTURES = {
    "large-v3": dict(d_model=1280, decoder_layers=32, decoder_attention_heads=20, decoder_ffn_dim=5120,
                     vocab_size=51866, num_mel_bins=128),
    "distil-large-v3": dict(d_model=1280, decoder_layers=2, decoder_attention_heads=20, decoder_ffn_dim=5120,
                            vocab_size=51866, num_mel_bins=128),
    "large-v3-turbo": dict(d_model=1280, decoder_layers=4, decoder_attention_heads=20, decoder_ffn_dim=5120,
                           vocab_size=51866, num_mel_bins=128),
    "medium": dict(d_model=1024, decoder_layers=24, decoder_attention_heads=16, decoder_ffn_dim=4096),
    "tiny": dict(d_model=384, decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536),
}
PROMPT = 4  # <|startoftranscript|><|en|><|transcribe|><|0.00|>


def load(name: str, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    folder = PROJECT_DIR / name if (PROJECT_DIR / name).is_dir() else Path(name)
    if folder.is_dir():
        return WhisperForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()
    if name not in ARCHITECTURES:
        raise SystemExit(f"{name!r} is neither a model directory nor one of {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    config = WhisperConfig(encoder_layers=1, encoder_attention_heads=arch["decoder_attention_heads"],
                           encoder_ffn_dim=arch["decoder_ffn_dim"], **arch)
    with torch.device(device):
        return WhisperForConditionalGeneration(config).to(dtype).eval()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def step_seconds(model: Any, tokens: int, steps: int) -> float:
    """Median seconds of one cached decoder forward over `tokens` new tokens, after a 4-token prompt."""
    from transformers import DynamicCache, EncoderDecoderCache

    device, dtype = model.device, model.dtype
    states = torch.randn(1, 1500, model.config.d_model, device=device, dtype=dtype)
    times = []
    for _ in range(steps + 3):  # the first runs pay for kernel selection and allocation: dropped
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        ids = torch.randint(0, 50000, (1, PROMPT + tokens), device=device)
        model(encoder_outputs=(states,), decoder_input_ids=ids[:, :PROMPT], past_key_values=cache, use_cache=True)
        synchronize(device)
        started = time.perf_counter()
        model(encoder_outputs=(states,), decoder_input_ids=ids[:, PROMPT:], past_key_values=cache, use_cache=True)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return sorted(times[3:])[len(times[3:]) // 2]


def measure_pair(main: str, assistant: str, device: torch.device, dtype: torch.dtype, drafts: int,
                 steps: int) -> dict[str, Any]:
    main_model, draft_model = load(main, device, dtype), load(assistant, device, dtype)
    step, verify = step_seconds(main_model, 1, steps), step_seconds(main_model, drafts + 1, steps)
    draft = step_seconds(draft_model, 1, steps)
    del main_model, draft_model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"main": main, "assistant": assistant, "main_step_ms": round(step * 1e3, 3),
            "assistant_step_ms": round(draft * 1e3, 3), "verify_ms": round(verify * 1e3, 3),
            "cost_ratio": round(draft / step, 3),
            "best_case_speedup": round((drafts + 1) * step / (drafts * draft + verify), 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="models/whisper-base:models/whisper-tiny.en,large-v3:distil-large-v3",
                        help="comma-separated main:assistant pairs (model directories or architecture names)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                        help="default: float16 on GPU, float32 on CPU")
    parser.add_argument("--drafts", type=int, default=5, help="assistant tokens per round")
    parser.add_argument("--steps", type=int, default=40, help="timed forwards per measurement (median)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dtype": str(dtype),
        "drafts": args.drafts, "torch": torch.__version__, "pairs": []}
    for pair in args.pairs.split(","):
        main_name, assistant_name = pair.split(":")
        report["pairs"].append(measure_pair(main_name, assistant_name, device, dtype, args.drafts, args.steps))
        row = report["pairs"][-1]
        print(f"{main_name} + {assistant_name}: main step {row['main_step_ms']} ms, assistant "
              f"{row['assistant_step_ms']} ms (cost ratio {row['cost_ratio']}), verify {args.drafts + 1} tokens "
              f"{row['verify_ms']} ms, best case {row['best_case_speedup']}x", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
