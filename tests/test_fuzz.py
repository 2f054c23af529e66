"""Property tests (hypothesis): bad parameters, audio and HTTP requests give a 4xx RequestError, never a crash."""

from __future__ import annotations

import base64
import json
import math
from collections import Counter

import numpy as np
import pytest
from conftest import encode, make_pipeline, tone
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audio import decode_audio, payload_bytes
from config import InferenceConfig
from errors import RequestError
from server import ServerSettings, create_app

FIELDS = sorted(InferenceConfig.model_fields)
def fuzz(max_examples: int = 100) -> settings:
    # derandomized or exploring as the profile in conftest says (HYPOTHESIS_EXPLORE)
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck))

# --- JSON-like values ---------------------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324, 2**63, -(2**63), 10**30]),
    st.text(max_size=40),
    st.sampled_from(["transcribe", "translate", "auto", "word", "segment", "pcm_s16le", "pcm_f32le", "en", " EN ",
                     "true", "false", "1", "0", "nan", "inf", "-1", "1e400", "16000", "", " ", "\x00", "é", "𝄞"]),
)
JSON = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=12) | st.sampled_from(FIELDS), children, max_size=4),
                    max_leaves=12)
PARAMS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), JSON, max_size=8)


def assert_request_error(error: RequestError) -> None:
    assert 400 <= error.status < 500, (error.status, error.message)
    assert isinstance(error.message, str) and error.message
    if error.field is not None:
        assert isinstance(error.field, str) and error.field


@fuzz(300)
@given(st.one_of(PARAMS, JSON))
def test_config_parse_returns_a_config_or_a_request_error(parameters):
    try:
        config = InferenceConfig.parse(parameters)
    except RequestError as error:
        assert_request_error(error)
        assert error.field in FIELDS + ["parameters"], error.field  # names a field of the request
        return
    assert isinstance(config, InferenceConfig)


# --- audio bytes --------------------------------------------------------------------------------------------------

CONTAINERS = [("wav", 16000, "wav", "pcm_s16le"), ("flac", 22050, "flac", "flac"), ("mp3", 44100, "mp3", "libmp3lame"),
              ("ogg", 48000, "ogg", "libopus"), ("m4a", 16000, "ipod", "aac")]
ENCODED = {name: encode(tone(0.6, rate), rate, container, codec) for name, rate, container, codec in CONTAINERS}


@st.composite
def corrupted(draw) -> bytes:
    data = bytearray(ENCODED[draw(st.sampled_from(sorted(ENCODED)))])
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    for _ in range(draw(st.integers(0, 8))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.integers(0, 3)) == 0:
        data = bytearray(draw(st.binary(min_size=1, max_size=64))) + data
    if draw(st.integers(0, 5)) == 0:
        data += draw(st.binary(max_size=64))
    return bytes(data)


B64_TEXT = st.one_of(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n.", max_size=80),
    st.text(max_size=40),
    st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode().rstrip("=")),  # missing padding
    st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode() + "="),  # too much padding
    corrupted().map(lambda b: "data:audio/wav;base64," + base64.b64encode(b).decode()),
)


def check_audio(inputs, audio_format="auto", rate=16000, max_seconds=60.0):
    try:
        audio = decode_audio(payload_bytes(inputs), audio_format, rate, max_seconds)
    except RequestError as error:
        assert_request_error(error)
        return "error"
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) and np.isfinite(audio).all()
    return "ok"


@fuzz(250)
@given(corrupted(), st.sampled_from(["auto", "auto", "auto", "pcm_s16le", "pcm_f32le"]),
       st.sampled_from([16000, 8000, 44100, 1000]))
def test_corrupted_containers_decode_or_give_a_request_error(data, audio_format, rate):
    check_audio(data, audio_format, rate)


@fuzz(200)
@given(st.one_of(B64_TEXT, st.binary(max_size=300), JSON))
def test_random_payloads_decode_or_give_a_request_error(inputs):
    check_audio(inputs)


@pytest.mark.parametrize("data, audio_format, rate", [(b"\x00f", "pcm_s16le", 8000), (b"\0" * 8, "pcm_f32le", 44100)])
def test_tiny_resampled_pcm_gives_a_request_error(data, audio_format, rate):
    with pytest.raises(RequestError) as caught:
        decode_audio(data, audio_format, rate)
    assert caught.value.status == 400


def test_every_intact_container_decodes():
    for name, data in ENCODED.items():
        assert check_audio(data) == "ok", name


# --- the HTTP server ----------------------------------------------------------------------------------------------

NO_VAD = {"vad": False}
WAV = encode(tone(0.5), 16000, "wav", "pcm_s16le")
CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", "application/ld+json",
                                 "audio/wav", "audio/x-anything", "video/mp4", "application/octet-stream", "",
                                 "text/plain", "multipart/form-data", "multipart/form-data; boundary=zz",
                                 "application/x-www-form-urlencoded", "\xfc/\xfc", "application/json;;;"]
                                ).map(lambda c: c.encode("latin-1"))
QUERY = st.dictionaries(st.sampled_from(FIELDS) | st.text(min_size=1, max_size=8),
                        st.text(max_size=12) | st.sampled_from(["false", "0", "word", "2", "-1", "nan", "1e400"]),
                        max_size=4)
STATUS = Counter()


@pytest.fixture(scope="module")
def client(tiny_models):
    app = create_app(make_pipeline(tiny_models["main"]), ServerSettings(max_upload_bytes=2**20))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    print("\nfuzzed server statuses:", dict(sorted(STATUS.items())))


def check_response(response) -> None:
    STATUS[response.status_code] += 1
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error  # OpenAI's shape on /v1 routes
        assert isinstance(message, str) and message, body


@st.composite
def predict_bodies(draw):
    kind = draw(st.sampled_from(["json", "json_valid_audio", "raw", "garbage"]))
    if kind == "json":
        return json.dumps(draw(st.one_of(JSON, st.fixed_dictionaries({"inputs": B64_TEXT, "parameters": PARAMS}))),
                          allow_nan=True).encode()
    if kind == "json_valid_audio":
        parameters = {**draw(PARAMS), **NO_VAD, "batch_size": draw(st.integers(1, 4)), "num_beams": 1}
        return json.dumps({"inputs": base64.b64encode(WAV).decode(), "parameters": parameters}).encode()
    if kind == "raw":
        return draw(corrupted())
    return draw(st.binary(max_size=200))


@fuzz(120)
@given(body=predict_bodies(), content_type=CONTENT_TYPES, query=QUERY, path=st.sampled_from(["/", "/predict"]))
def test_predict_answers_random_requests_without_a_5xx(client, body, content_type, query, path):
    query = {**query, "vad": "false"} if "vad" not in query else query
    check_response(client.post(path, content=body, params=query, headers={"Content-Type": content_type}))


@fuzz(80)
@given(form=st.dictionaries(st.sampled_from(["model", "language", "prompt", "response_format", "temperature",
                                             "timestamp_granularities[]", "stream", *FIELDS]) | st.text(max_size=8),
                            st.text(max_size=12) | st.sampled_from(["json", "text", "srt", "vtt", "verbose_json",
                                                                   "diarized_json", "word", "true", "2", "-1"]),
                            max_size=5),
       audio=st.one_of(st.just(WAV), corrupted(), st.binary(max_size=100)), with_file=st.booleans())
def test_openai_route_answers_random_forms_without_a_5xx(client, form, audio, with_file):
    form = {**form, "vad": "false"}
    files = {"file": ("a.wav", audio, "audio/wav")} if with_file else None
    check_response(client.post("/v1/audio/transcriptions", data=form, files=files))
