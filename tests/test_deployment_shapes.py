"""The configuration the reference deploys, offline: tiny random models shaped like whisper-large-v3 (128 mel bins,
vocabulary 51866) and a distil-large-v3-like draft (2 decoder layers, the same vocabulary), through the handler."""

import pytest
from conftest import MODELS, make_pipeline, tiny_whisper


@pytest.fixture(scope="module")
def large_v3(tmp_path_factory):
    root = tmp_path_factory.mktemp("v3")
    main = tiny_whisper(MODELS / "whisper-base", root / "large-v3", 10, decoder_layers=8, large_v3=True)
    draft = tiny_whisper(MODELS / "whisper-base", root / "distil-large-v3", 11, decoder_layers=2, large_v3=True)
    return make_pipeline(main, draft)


def test_large_v3_shapes_run_plain_assisted_and_with_word_timestamps(large_v3, speechlike):
    model = large_v3.asr.model
    assert model.config.num_mel_bins == 128 and model.config.vocab_size == 51866 == len(large_v3.asr.tokenizer)
    assert large_v3.asr.feature_extractor.feature_size == 128 and "<|yue|>" in large_v3.lang_to_id
    draft = large_v3.assistant_kwargs["assistant_model"]
    assert set(large_v3.assistant_kwargs) == {"assistant_model"}  # same vocabulary: plain assistant_model drafting
    assert large_v3.drafting_pays  # 2 of 8 decoder layers, as distil-large-v3 for large-v3
    drafted = []
    hook = draft.register_forward_hook(lambda *args: drafted.append(1))
    try:
        plain = large_v3.handle({"inputs": speechlike, "parameters": {"vad": False}})
        assert drafted == []
        assisted = large_v3.handle({"inputs": speechlike, "parameters": {"vad": False, "assisted": True}})
    finally:
        hook.remove()
    assert len(drafted) > 1 and assisted == plain and plain["chunks"]
    words = large_v3.handle({"inputs": speechlike, "parameters": {"vad": False, "return_timestamps": "word",
                                                                  "language": "yue"}})
    assert words["words"] and words["language"] == "yue"
    assert "".join(w["text"] for w in words["words"]) == "".join(c["text"] for c in words["chunks"])
    assert all(0 <= w["start"] <= w["end"] <= 3.0 for w in words["words"])
