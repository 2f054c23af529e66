import io
import wave

import numpy as np
import pytest
from conftest import SAMPLE, b64, encode, tone

from audio import SAMPLE_RATE, decode_audio, payload_bytes
from errors import RequestError


def test_base64_bytes_and_data_uri_give_the_same_bytes(sample_bytes):
    assert payload_bytes(b64(sample_bytes)) == sample_bytes
    assert payload_bytes(sample_bytes) == sample_bytes
    assert payload_bytes("data:audio/flac;base64," + b64(sample_bytes)) == sample_bytes


@pytest.mark.parametrize("inputs, message", [
    ("not base64 at all!", "not valid base64"),
    ("QUJD=x", "not valid base64"),
    ("", "audio is empty"),
    (b"", "audio is empty"),
    (None, "inputs is missing"),
    (123, "must be base64 text or bytes"),
])
def test_bad_payloads(inputs, message):
    with pytest.raises(RequestError, match=message) as caught:
        payload_bytes(inputs)
    assert caught.value.field == "inputs" and caught.value.status == 400


def test_sample_decodes_to_16k_mono(sample_bytes):
    audio = decode_audio(sample_bytes)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / SAMPLE_RATE - 10.5) < 0.05


@pytest.mark.parametrize("container, codec, rate", [
    ("wav", "pcm_s16le", 44100), ("flac", "flac", 22050), ("mp3", "libmp3lame", 44100),
    ("ogg", "libopus", 48000), ("ipod", "aac", 44100),
])
def test_containers_stereo_and_rates_are_resampled_once(container, codec, rate):
    data = encode(tone(2.0, rate), rate, container, codec, channels=2)
    audio = decode_audio(data)
    assert abs(len(audio) / SAMPLE_RATE - 2.0) < 0.1  # the container's rate wins
    spectrum = np.abs(np.fft.rfft(audio[4000:20000]))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / 16000 - 220) < 3  # pitch kept: no mis-scaled time


def test_sampling_rate_parameter_is_ignored_for_containers(sample_bytes):
    assert len(decode_audio(sample_bytes, sampling_rate=8000)) == len(decode_audio(sample_bytes))


def test_raw_pcm_uses_sampling_rate():
    pcm = (tone(1.0, 8000) * 32767).astype("<i2").tobytes()
    audio = decode_audio(pcm, "pcm_s16le", 8000)
    assert abs(len(audio) - SAMPLE_RATE) < 50
    same_rate = decode_audio(tone(1.0).astype("<f4").tobytes(), "pcm_f32le", 16000)
    np.testing.assert_allclose(same_rate, tone(1.0), atol=1e-6)


@pytest.mark.parametrize("data, fmt, message, status", [
    (b"this is not audio, just some text" * 10, "auto", "not a supported audio file", 415),
    (SAMPLE.read_bytes()[:200], "auto", "not a supported audio file|empty", None),
    (b"\x00\x01\x02", "pcm_s16le", "whole number", 400),
    ((tone(0.05)).astype("<f4").tobytes(), "pcm_f32le", "too short", 400),
    (np.array([np.nan] * 8000, "<f4").tobytes(), "pcm_f32le", "NaN", 400),
])
def test_undecodable_or_unusable_audio(data, fmt, message, status):
    with pytest.raises(RequestError, match=message) as caught:
        decode_audio(data, fmt)
    assert caught.value.status == status or status is None


def test_wav_with_no_samples_is_empty():
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
    with pytest.raises(RequestError, match="audio is empty"):
        decode_audio(buffer.getvalue())


def test_duration_limit_refuses_long_audio():
    data = encode(np.zeros(16000 * 5, np.float32), 16000, "flac", "flac")  # compresses to almost nothing
    with pytest.raises(RequestError, match="too long") as caught:
        decode_audio(data, max_seconds=2)
    assert caught.value.status == 413
    assert len(decode_audio(data, max_seconds=10)) == 16000 * 5
