import logging

import pytest

from config import InferenceConfig, ModelSettings
from errors import RequestError


def test_defaults_match_the_contract():
    config = InferenceConfig.parse(None)
    assert (config.task, config.batch_size, config.assisted, config.chunk_length_s, config.sampling_rate) == (
        "transcribe", None, False, 30.0, 16000)
    assert config.effective_batch_size == 24
    assert InferenceConfig.parse({"assisted": True}).effective_batch_size == 1


@pytest.mark.parametrize("parameters, field", [
    ({"task": "summarize"}, "task"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": "many"}, "batch_size"),
    ({"chunk_length_s": 45}, "chunk_length_s"),
    ({"sampling_rate": -1}, "sampling_rate"),
    ({"num_speakers": 0}, "num_speakers"),
    ({"return_timestamps": "char"}, "return_timestamps"),
    ({"assisted": "maybe"}, "assisted"),
    ({"language": "x" * 100}, "language"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": 1e308}, "temperature"),
    ({"temperature": [[0.2]]}, "temperature"),
    ({"temperature": [0.0] * 11}, "temperature"),
    ({"temperature": []}, "temperature"),
    ({"temperature_increment_on_fallback": float("inf")}, "temperature_increment_on_fallback"),
    ({"compression_ratio_threshold": 0.5}, "compression_ratio_threshold"),
    ({"compression_ratio_threshold": float("nan")}, "compression_ratio_threshold"),
    ({"logprob_threshold": 3}, "logprob_threshold"),
    ({"logprob_threshold": [-1]}, "logprob_threshold"),
    ({"no_speech_threshold": -1}, "no_speech_threshold"),
])
def test_bad_values_name_the_field(parameters, field):
    with pytest.raises(RequestError) as caught:
        InferenceConfig.parse(parameters)
    assert caught.value.field == field and field in caught.value.message
    assert caught.value.status == 422


@pytest.mark.parametrize("parameters, schedule", [
    ({}, (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)),  # openai-whisper's default fallback
    ({"temperature": 0.5}, (0.5, 0.7, 0.9)),  # OpenAI's temperature: the first one
    ({"temperature": 0.3, "temperature_increment_on_fallback": 0}, (0.3,)),
    ({"temperature": [0, 0.5]}, (0.0, 0.5)),
])
def test_the_temperature_schedule(parameters, schedule):
    assert InferenceConfig.parse(parameters).temperatures == schedule


@pytest.mark.parametrize("parameters, needle", [
    ({"min_speakers": 3, "max_speakers": 2}, "min_speakers"),
    ({"num_speakers": 5, "max_speakers": 2}, "num_speakers"),
    ({"num_speakers": 1, "min_speakers": 2}, "num_speakers"),
    ({"assisted": True, "batch_size": 8}, "batch_size 1"),
    ({"assisted": True, "num_beams": 4}, "num_beams"),
])
def test_contradictions_are_client_errors(parameters, needle):
    with pytest.raises(RequestError, match=needle):
        InferenceConfig.parse(parameters)


def test_unknown_parameters_are_ignored_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="config"):
        config = InferenceConfig.parse({"batch_size": 2, "temperature_fallback": 1, "zzz": None})
    assert config.batch_size == 2
    assert "temperature_fallback" in caplog.text and "zzz" in caplog.text


def test_parameters_must_be_an_object():
    with pytest.raises(RequestError, match="parameters must be a JSON object"):
        InferenceConfig.parse(["batch_size", 2])


def test_return_timestamps_true_means_segment_and_language_is_normalised():
    config = InferenceConfig.parse({"return_timestamps": True, "language": " English "})
    assert config.return_timestamps == "segment" and config.language == "english"


def test_settings_come_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ASR_MODEL", "openai/whisper-large-v3")
    monkeypatch.setenv("ASSISTANT_MODEL", "")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    settings = ModelSettings()
    assert settings.asr_model == "openai/whisper-large-v3" and settings.assistant_model is None
    assert settings.token() == "hf_secret_value" and "hf_secret_value" not in repr(settings)
    (tmp_path / "local").mkdir()
    assert settings.resolve("local", tmp_path) == str((tmp_path / "local").resolve())
    assert settings.resolve("openai/whisper-large-v3", tmp_path) == "openai/whisper-large-v3"
