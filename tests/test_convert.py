"""The CTranslate2 -> transformers conversion: same greedy tokens as faster-whisper on the same weights."""

import struct

import numpy as np
import pytest
import torch
from conftest import MODELS, SAMPLE

from scripts.build_models import sources
from scripts.convert_ct2_whisper import read_ct2_model


def _write_ct2(variables: dict, aliases: dict) -> bytes:
    """A model.bin in CTranslate2's layout (version 6), written independently of the reader."""
    def string(s):
        return struct.pack("H", len(s) + 1) + s.encode() + b"\0"
    ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
    out = struct.pack("I", 6) + string("WhisperSpec") + struct.pack("I", 3) + struct.pack("I", len(variables))
    for name, value in variables.items():
        out += string(name) + struct.pack("B", value.ndim) + b"".join(struct.pack("I", d) for d in value.shape)
        out += struct.pack("B", ids[value.dtype]) + struct.pack("I", value.nbytes) + value.tobytes()
    out += struct.pack("I", len(aliases)) + b"".join(string(a) + string(t) for a, t in aliases.items())
    return out


def test_reader_parses_every_dtype_and_alias():
    variables = {"a/weight": np.arange(6, dtype=np.float16).reshape(2, 3), "b": np.array(7, dtype=np.int16),
                 "c": np.array([1.5, -2.0], dtype=np.float32), "d": np.array([1, -1], dtype=np.int8)}
    spec, parsed = read_ct2_model(_write_ct2(variables, {"e/weight": "a/weight"}))
    assert spec == "WhisperSpec"
    for name, value in variables.items():
        np.testing.assert_array_equal(parsed[name], value)
    np.testing.assert_array_equal(parsed["e/weight"], variables["a/weight"])
    with pytest.raises(ValueError, match="trailing"):
        read_ct2_model(_write_ct2(variables, {}) + b"x")


def _ct2_directory(name: str, tmp_path) -> str:
    """The original package's CTranslate2 directory, its split model.bin joined (as build_models does)."""
    source = sources()[name]
    if len(source["parts"]) == 1:
        return str(source["ct2_dir"])
    joined = tmp_path / name
    joined.mkdir()
    for file in source["ct2_dir"].iterdir():
        if file.is_file() and not file.name.startswith("model.bin"):
            (joined / file.name).symlink_to(file)
    with open(joined / "model.bin", "wb") as out:
        for part in source["parts"]:
            out.write(part.read_bytes())
    return str(joined)


@pytest.mark.parametrize("name, prompt_tokens", [
    ("whisper-tiny.en", ["<|startoftranscript|>", "<|notimestamps|>"]),
    # the default ASR model, multilingual: the same prompt tokens on both sides
    pytest.param("whisper-base", ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"],
                 marks=pytest.mark.e2e),
])
def test_converted_model_matches_faster_whisper_token_for_token(tmp_path, name, prompt_tokens):
    import ctranslate2
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from audio import decode_audio

    processor = WhisperProcessor.from_pretrained(MODELS / name)
    features = processor(decode_audio(SAMPLE.read_bytes()), sampling_rate=16000, return_tensors="pt").input_features
    model = WhisperForConditionalGeneration.from_pretrained(MODELS / name, dtype=torch.float32)
    prompt = processor.tokenizer.convert_tokens_to_ids(prompt_tokens)
    tokens = model.generate(features, decoder_input_ids=torch.tensor([prompt]), num_beams=1,
                            return_timestamps=False)[0].tolist()

    # the same features through CTranslate2 (faster-whisper's engine) on the original package's weights
    reference = ctranslate2.models.Whisper(_ct2_directory(name, tmp_path), device="cpu", compute_type="float32",
                                           intra_threads=2)
    result = reference.generate(ctranslate2.StorageView.from_array(features.numpy()), [prompt], beam_size=1)
    expected = result[0].sequences_ids[0]
    generated = [t for t in tokens if t < model.generation_config.eos_token_id]  # drop the prompt and EOT
    assert generated == expected and len(generated) > 20
    assert processor.tokenizer.decode(generated).strip().startswith("Hello and welcome")


def test_converted_models_have_the_generation_config_whisper_needs():
    from transformers import GenerationConfig

    base = GenerationConfig.from_pretrained(MODELS / "whisper-base")
    assert base.task == "transcribe" and base.is_multilingual and base.lang_to_id["<|en|>"] == 50259
    assert base.task_to_id == {"transcribe": 50359, "translate": 50358} and base.no_timestamps_token_id == 50363
    assert base.alignment_heads and base.suppress_tokens and base.begin_suppress_tokens == [220, 50257]
    english = GenerationConfig.from_pretrained(MODELS / "whisper-tiny.en")
    assert not english.is_multilingual and getattr(english, "task", None) is None
    assert english.no_timestamps_token_id == 50362
