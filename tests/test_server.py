"""The HTTP server (FastAPI TestClient) on the tiny random Whisper: every route, format and error class."""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pytest
import srt
import webvtt
from conftest import b64, encode, make_pipeline, tone
from fastapi.testclient import TestClient

import admission
import server
from audio import decode_audio
from config import InferenceConfig
from server import ServerSettings, create_app
from diarization_utils import merge_speakers
from speech_pipeline import Segment

NO_VAD = {"vad": False}  # random models are fed tones: no real speech for the VAD to find
KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return make_pipeline(tiny_models["main"], hf_token="hf_topsecret123")


@pytest.fixture(scope="module")
def wav() -> bytes:
    return encode(tone(3.0), 16000, "wav", "pcm_s16le")


@pytest.fixture(scope="module")
def client(tiny):
    with TestClient(create_app(tiny, ServerSettings())) as test_client:
        yield test_client


class Hooked:
    """The tiny pipeline with a hook run before each transcription (block, fail) and an optional transform."""

    def __init__(self, pipeline, hook=None, transform=None):
        self._pipeline, self._hook, self._transform = pipeline, hook, transform

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def handle(self, data, cancel=None):
        if self._hook:
            self._hook()
        return self._pipeline.handle(data, cancel)

    def transcribe_request(self, data, cancel=None):
        if self._hook:
            self._hook()
        transcript, config = self._pipeline.transcribe_request(data, cancel)
        return (self._transform(transcript) if self._transform else transcript), config


def blocking_once():
    """A hook that blocks the first call until `release` is set; later calls pass."""
    started, release, calls = threading.Event(), threading.Event(), []

    def hook():
        calls.append(1)
        if len(calls) == 1:
            started.set()
            release.wait(30)

    return hook, started, release


def openai(client, wav, path="/v1/audio/transcriptions", **fields):
    data = {"model": "whisper-1", "vad": "false", **fields}
    return client.post(path, files={"file": ("a.wav", wav, "audio/wav")}, data=data)


# --- health and docs ---------------------------------------------------------------------------------------------

def test_health_reports_the_model_without_secrets(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["model"]["asr_model"].endswith("main")
    assert body["model"]["device"] == "cpu" and body["model"]["diarization_model"] is None
    assert "topsecret" not in response.text and "token" not in response.text


def test_openapi_docs_list_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/", "/predict", "/health", "/v1/audio/transcriptions", "/v1/audio/translations"} <= set(paths)
    assert "multipart/form-data" in paths["/"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


# --- Inference Endpoints contract --------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/predict"])
def test_json_body_gives_the_handler_output(client, tiny, wav, path):
    response = client.post(path, json={"inputs": b64(wav), "parameters": NO_VAD})
    assert response.status_code == 200
    assert response.json() == tiny.handle({"inputs": wav, "parameters": NO_VAD})


def test_raw_audio_body_takes_parameters_from_the_query_string(client, tiny, wav):
    expected = tiny.handle({"inputs": wav, "parameters": {**NO_VAD, "return_timestamps": "word", "batch_size": 2}})
    response = client.post("/?vad=false&return_timestamps=word&batch_size=2", content=wav,
                           headers={"Content-Type": "audio/wav"})
    assert response.status_code == 200 and response.json() == expected and "words" in expected


def test_raw_body_without_content_type_is_audio(client, wav):
    # huggingface_hub's InferenceClient posts raw bytes with no Content-Type when it has no parameters
    response = client.post("/predict?vad=0", content=wav, headers={"Content-Type": ""})
    assert response.status_code == 200 and "text" in response.json()


def test_multipart_file_and_parameters(client, tiny, wav):
    response = client.post("/", files={"file": ("a.wav", wav, "audio/wav")},
                           data={"parameters": json.dumps({"return_timestamps": "word"}), "vad": "false"})
    assert response.status_code == 200
    assert response.json() == tiny.handle({"inputs": wav, "parameters": {**NO_VAD, "return_timestamps": "word"}})


@pytest.mark.parametrize("kwargs, status, field, needle", [
    ({"json": {"inputs": "%%%"}}, 400, "inputs", "not valid base64"),
    ({"json": {"inputs": b64(b"RIFF1234WAVEfmt garbage")}}, 415, "inputs", "not a supported audio file"),
    ({"json": {"parameters": {}}}, 400, "inputs", "inputs is missing"),
    ({"json": {"inputs": "AAAA", "parameters": "fast"}}, 400, "parameters", "JSON object"),
    ({"json": {"inputs": "AAAA", "parameters": {"batch_size": 0}}}, 422, "batch_size", "greater than or equal"),
    ({"content": b"{oops", "headers": {"Content-Type": "application/json"}}, 400, None, "not valid JSON"),
    ({"content": b"RIFF", "headers": {"Content-Type": "audio/wav"}, "params": {"num_beams": "many"}}, 422,
     "num_beams", "valid integer"),
    ({"content": b"hi", "headers": {"Content-Type": "text/html"}}, 415, "Content-Type", "unsupported"),
    ({"files": {"audio": ("a.wav", b"x")}}, 400, "file", "field named 'file'"),
    ({"files": {"file": ("a.wav", b"x")}, "data": {"parameters": "{"}}, 400, "parameters", "not valid JSON"),
])
def test_client_errors_name_the_field(client, kwargs, status, field, needle):
    response = client.post("/", **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert needle in body["error"] and body.get("field") == field


def test_too_long_audio_is_413(client, tiny, wav, monkeypatch):
    monkeypatch.setattr(tiny.settings, "max_audio_seconds", 1.0)
    response = client.post("/", json={"inputs": b64(wav)})
    assert response.status_code == 413 and "too long" in response.json()["error"]
    response = openai(client, wav)
    assert response.status_code == 413 and response.json()["error"]["param"] == "file"


# --- OpenAI-compatible routes ------------------------------------------------------------------------------------

def test_openai_json_and_text(client, wav):
    as_json = openai(client, wav)
    assert as_json.status_code == 200 and set(as_json.json()) == {"text"}
    as_text = openai(client, wav, response_format="text")
    assert as_text.headers["content-type"].startswith("text/plain")
    assert as_text.text == as_json.json()["text"] + "\n"


def test_openai_srt_parses_with_increasing_cues(client, wav):
    response = openai(client, wav, response_format="srt", **{"timestamp_granularities[]": "word"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-subrip")
    subtitles = list(srt.parse(response.text))
    assert subtitles and all(s.start < s.end for s in subtitles)
    assert all(a.end <= b.start for a, b in zip(subtitles, subtitles[1:]))


def test_openai_vtt_parses_with_increasing_cues(client, wav):
    response = openai(client, wav, response_format="vtt")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/vtt")
    captions = webvtt.from_string(response.text).captions
    times = [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds()) for c in captions]
    assert captions and all(start < end for start, end in times)
    assert all(a[1] <= b[0] for a, b in zip(times, times[1:]))


def test_openai_verbose_json_shape(client, wav):
    response = openai(client, wav, response_format="verbose_json", language="de",
                      **{"timestamp_granularities[]": ["word", "segment"]})
    body = response.json()
    assert body["task"] == "transcribe" and body["language"] == "german" and body["duration"] == 3.0
    assert body["segments"] and {"id", "start", "end", "text"} <= set(body["segments"][0])
    assert "speaker" not in body["segments"][0]  # no diarization configured
    assert body["words"] and set(body["words"][0]) == {"word", "start", "end"}
    assert "".join(s["text"] for s in body["segments"]).strip() == body["text"]
    segment_only = openai(client, wav, response_format="verbose_json").json()
    assert "words" not in segment_only


def test_openai_prompt_reaches_the_decoder(client, tiny, wav, monkeypatch):
    seen, generate_kwargs = [], tiny.generate_kwargs
    monkeypatch.setattr(tiny, "generate_kwargs", lambda config: (seen.append(config), generate_kwargs(config))[1])
    body = openai(client, wav, prompt="Dr. Okafor, Kubernetes", response_format="verbose_json").json()
    assert seen[-1].prompt == "Dr. Okafor, Kubernetes"
    expected = tiny.transcribe(decode_audio(wav), InferenceConfig.parse({**NO_VAD, "prompt": "Dr. Okafor, Kubernetes"}))
    assert body["text"] == expected.text
    too_long = openai(client, wav, prompt="x" * 4001)
    assert too_long.status_code == 422 and "prompt" in too_long.text


def test_openai_translation_runs_the_translate_task(client, tiny, wav):
    translated = openai(client, wav, "/v1/audio/translations", response_format="verbose_json").json()
    assert translated["task"] == "translate"
    expected = tiny.transcribe(decode_audio(wav), InferenceConfig.parse({**NO_VAD, "task": "translate"}))
    assert translated["text"] == expected.text


def test_openai_extra_inference_fields_apply(client, tiny, wav, monkeypatch):
    """Extra form fields reach the request's InferenceConfig and the ASR passes run at the batch size sent."""
    configs, passes, asr, transcribe_request = [], [], tiny.asr, tiny.transcribe_request

    class Spy:  # the ASR pipeline, recording each pass's windows and batch size
        def __call__(self, inputs, **kwargs):
            passes.append((len(inputs), kwargs["batch_size"]))
            return asr(inputs, **kwargs)

        def __getattr__(self, name):
            return getattr(asr, name)

    def spy_request(data, cancel=None):
        transcript, config = transcribe_request(data, cancel)
        configs.append(config)
        return transcript, config

    monkeypatch.setattr(tiny, "asr", Spy())
    monkeypatch.setattr(tiny, "transcribe_request", spy_request)
    response = openai(client, wav, batch_size="2", chunk_length_s="1", num_beams="1", temperature="0",
                      no_speech_threshold="0.5")
    assert response.status_code == 200, response.text
    config = configs[-1]
    assert (config.batch_size, config.chunk_length_s, config.num_beams, config.vad) == (2, 1, 1, False)
    assert config.no_speech_threshold == 0.5 and config.temperature == 0
    # 3 s in 1 s windows (VAD off): passes of at most the 2 windows asked for, every window decoded
    assert passes and all(size == 2 and windows <= 2 for windows, size in passes), passes
    assert sum(windows for windows, _ in passes) >= 3
    response = openai(client, wav, batch_size="0")
    assert response.status_code == 422 and response.json()["error"]["param"] == "batch_size"


def _words(text: str) -> list[str]:
    import html

    return html.unescape(text.replace("<u>", "").replace("</u>", "")).split()


@pytest.mark.parametrize("fields", [{}, {"timestamp_granularities[]": "word"}, {"max_line_width": "12"}])
def test_every_response_format_carries_the_json_text(client, tiny, wav, fields):
    """Each format's words, timing lines stripped, are the JSON response's words (subtitles wrapped or not)."""
    from formats import to_tsv

    text = openai(client, wav, **fields).json()["text"]
    assert text.split()  # the random model says something on the tone
    assert _words(openai(client, wav, response_format="text", **fields).text) == text.split()
    verbose = openai(client, wav, response_format="verbose_json", **fields).json()
    assert verbose["text"] == text and _words("".join(s["text"] for s in verbose["segments"])) == text.split()
    cues = list(srt.parse(openai(client, wav, response_format="srt", **fields).text))
    assert _words(" ".join(cue.content for cue in cues)) == text.split()
    captions = webvtt.from_string(openai(client, wav, response_format="vtt", **fields).text).captions
    assert _words(" ".join(caption.text for caption in captions)) == text.split()
    if "timestamp_granularities[]" in fields:
        assert [w["word"] for w in verbose["words"]] == text.split()
    transcript = tiny.transcribe(decode_audio(wav), InferenceConfig.parse(NO_VAD))  # the CLI's tsv, same transcript
    assert _words(" ".join(row.split("\t", 2)[2] for row in to_tsv(transcript).splitlines()[1:])) == text.split()


@pytest.mark.parametrize("fields, status, field", [
    ({"response_format": "xml"}, 422, "response_format"),
    ({"temperature": "2"}, 422, "temperature"),
    ({"timestamp_granularities[]": "char"}, 422, "timestamp_granularities[].0"),
    ({"language": "klingon"}, 422, "language"),
    ({"response_format": "diarized_json"}, 400, "response_format"),  # no DIARIZATION_MODEL here
    ({"response_format": "rttm"}, 400, "response_format"),
])
def test_openai_bad_fields_name_the_field(client, wav, fields, status, field):
    response = openai(client, wav, **fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == field  # OpenAI's error shape on /v1 routes


def test_openai_missing_or_bad_file(client, wav):
    missing = client.post("/v1/audio/transcriptions", data={"model": "whisper-1"})
    assert missing.status_code == 422 and missing.json() == {"error": {
        "message": "invalid parameter file: Field required", "type": "invalid_request_error", "param": "file",
        "code": "invalid_value"}}
    bad = client.post("/v1/audio/transcriptions", files={"file": ("a.mp3", b"not audio")})
    assert bad.status_code == 415 and bad.json()["error"]["param"] == "file"
    empty = client.post("/v1/audio/transcriptions", files={"file": ("a.mp3", b"")})
    assert empty.status_code in (400, 422) and empty.json()["error"]["param"] == "file"


def test_diarized_formats_carry_speakers(tiny, wav):
    def two_speakers(transcript):
        half = transcript.duration / 2
        transcript.segments = [Segment(0.0, half, " first"), Segment(half, transcript.duration, " second")]
        transcript.turns = [(0.0, half, "SPEAKER_00"), (half, transcript.duration, "SPEAKER_01")]
        transcript.speakers = merge_speakers(transcript.turns, transcript.segments)
        return transcript

    diarized = Hooked(tiny, transform=two_speakers)
    diarized.diarizer = object()  # what the routes check for "diarization configured"
    with TestClient(create_app(diarized, ServerSettings())) as client:
        turns = openai(client, wav, response_format="diarized_json").json()
        assert [s["speaker"] for s in turns["segments"]] == ["SPEAKER_00", "SPEAKER_01"]
        assert turns["segments"][0]["type"] == "transcript.text.segment" and turns["segments"][0]["id"] == "seg_0"
        verbose = openai(client, wav, response_format="verbose_json").json()
        assert all(s["speaker"] in ("SPEAKER_00", "SPEAKER_01") for s in verbose["segments"])
        subtitles = list(srt.parse(openai(client, wav, response_format="srt").text))
        assert all(s.content.startswith("[SPEAKER_0") for s in subtitles)
        rttm = openai(client, wav, response_format="rttm").text.splitlines()
        assert [line.split()[7] for line in rttm] == ["SPEAKER_00", "SPEAKER_01"] and rttm[0].startswith("SPEAKER ")
        for fmt in ("diarized_json", "rttm"):
            turned_off = openai(client, wav, response_format=fmt, diarization="false")
            assert turned_off.status_code == 400 and turned_off.json()["error"]["param"] == "response_format"


# --- access, limits, failures ------------------------------------------------------------------------------------

def test_api_key_guards_inference_routes_only(tiny, wav, caplog):
    with caplog.at_level(logging.DEBUG), TestClient(create_app(tiny, ServerSettings(api_key=KEY))) as client:
        assert client.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            response = client.post("/", json={"inputs": b64(wav)}, headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert "API key" in response.json()["error"]
        assert openai(client, wav).status_code == 401
        good = {"Authorization": f"Bearer {KEY}"}
        assert client.post("/", json={"inputs": b64(wav), "parameters": NO_VAD}, headers=good).status_code == 200
        assert client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data=NO_VAD,
                           headers=good).status_code == 200
    assert KEY not in caplog.text


def test_upload_limit_from_content_length_and_while_streaming(tiny, wav):
    with TestClient(create_app(tiny, ServerSettings(max_upload_bytes=1000))) as client:
        declared = client.post("/", content=wav, headers={"Content-Type": "audio/wav"})
        assert declared.status_code == 413 and "MAX_UPLOAD_BYTES" in declared.json()["error"]
        chunks = (wav[i:i + 512] for i in range(0, len(wav), 512))  # chunked: no Content-Length
        streamed = client.post("/", content=chunks, headers={"Content-Type": "audio/wav"})
        assert streamed.status_code == 413 and "MAX_UPLOAD_BYTES" in streamed.json()["error"]
        assert openai(client, wav).status_code == 413
        assert client.post("/", content=wav[:900], headers={"Content-Type": "audio/wav"}).status_code != 413


def test_model_failure_is_a_500_and_the_server_keeps_serving(tiny, wav):
    calls = []

    def fail_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory at /secret/path")

    with TestClient(create_app(Hooked(tiny, fail_once), ServerSettings())) as client:
        response = client.post("/", json={"inputs": b64(wav), "parameters": NO_VAD})
        assert response.status_code == 500
        assert response.json() == {"error": "transcription failed (RuntimeError): see the server log"}
        assert client.post("/", json={"inputs": b64(wav), "parameters": NO_VAD}).status_code == 200


def test_timeout_is_a_504_and_the_server_keeps_serving(tiny, wav):
    hook, started, release = blocking_once()
    silence = encode(np.zeros(16000, np.float32), 16000, "wav", "pcm_s16le")  # the VAD finds nothing: fast
    with TestClient(create_app(Hooked(tiny, hook), ServerSettings(request_timeout_s=1.5))) as client:
        response = client.post("/", json={"inputs": b64(wav), "parameters": NO_VAD})
        assert response.status_code == 504 and "REQUEST_TIMEOUT_S" in response.json()["error"]
        assert client.get("/health").json()["queue"]["held"] == 1  # the transcription still runs, holding its place
        encoded = []  # the given-up request must stop before the model runs for it
        hook = tiny.asr.model.get_encoder().conv1.register_forward_hook(lambda *args: encoded.append(1))
        try:
            release.set()
            deadline = time.monotonic() + 30
            while client.get("/health").json()["queue"]["held"] and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            hook.remove()
        assert encoded == [] and client.get("/health").json()["queue"]["held"] == 0
        assert client.post("/", json={"inputs": b64(silence)}).json()["text"] == ""


def test_full_queue_is_a_503_with_retry_after(tiny, wav):
    hook, started, release = blocking_once()
    settings = ServerSettings(max_concurrent_requests=1, max_queued_requests=0, retry_after_s=7)
    with TestClient(create_app(Hooked(tiny, hook), settings)) as client:
        first = {}
        thread = threading.Thread(target=lambda: first.update(r=openai(client, wav)))
        thread.start()
        try:
            assert started.wait(30)
            busy = client.post("/", json={"inputs": b64(wav), "parameters": NO_VAD})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "7"
            assert "busy" in busy.json()["error"]
        finally:
            release.set()
            thread.join(30)
        assert first["r"].status_code == 200


def test_health_and_a_short_request_answer_while_a_long_one_runs(tiny, wav):
    hook, started, release = blocking_once()
    settings = ServerSettings(max_concurrent_requests=2)
    with TestClient(create_app(Hooked(tiny, hook), settings)) as client:
        long = {}
        thread = threading.Thread(target=lambda: long.update(r=openai(client, wav, response_format="text")))
        thread.start()
        try:
            assert started.wait(30)
            began = time.perf_counter()
            assert client.get("/health").status_code == 200
            short = client.post("/", json={"inputs": b64(wav), "parameters": NO_VAD})
            assert short.status_code == 200 and time.perf_counter() - began < 20
            assert thread.is_alive()  # the long request was still in flight all along
        finally:
            release.set()
            thread.join(30)
        assert long["r"].status_code == 200


def test_health_is_503_while_loading_then_ok(tiny, wav, monkeypatch):
    loaded = threading.Event()

    def slow_load(settings):
        loaded.wait(30)
        return tiny

    monkeypatch.setattr(admission, "SpeechPipeline", slow_load)
    with TestClient(create_app(None, ServerSettings(retry_after_s=3))) as client:
        loading = client.get("/health")
        assert loading.status_code == 503 and loading.json() == {"status": "loading"}
        assert loading.headers["retry-after"] == "3"
        refused = client.post("/", json={"inputs": b64(wav)})
        assert refused.status_code == 503 and "loading" in refused.json()["error"]
        loaded.set()
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json()["status"] == "ok"
        assert client.post("/", json={"inputs": b64(wav), "parameters": NO_VAD}).status_code == 200


def test_failed_load_is_reported_without_the_token(monkeypatch, caplog):
    def broken(settings):
        raise RuntimeError("could not load ASR_MODEL 'x': 401 for token hf_leaky999")

    monkeypatch.setenv("HF_TOKEN", "hf_leaky999")
    monkeypatch.setattr(admission, "SpeechPipeline", broken)
    with caplog.at_level(logging.ERROR), TestClient(create_app(None, ServerSettings())) as client:
        deadline = time.monotonic() + 10
        while client.get("/health").status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.02)
        response = client.get("/health")
        assert response.status_code == 500 and response.json()["status"] == "failed"
        assert client.post("/", json={"inputs": "AAAA"}).status_code == 503
    assert "could not load ASR_MODEL" in caplog.text and "hf_leaky999" not in caplog.text


def test_unknown_route_is_json(client):
    response = client.get("/nowhere")
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}


def test_module_app_is_built_lazily():
    assert "app" not in vars(server)  # importing builds nothing; `uvicorn server:app` asks for it
    try:
        assert server.app.title and "app" in vars(server)
    finally:
        del server.app


def test_each_transcription_hands_freed_memory_back(tiny, wav, monkeypatch):
    trims = []

    class Libc:
        def malloc_trim(self, pad):
            trims.append(pad)

    monkeypatch.setattr(admission, "_LIBC", Libc())
    with TestClient(create_app(tiny, ServerSettings())) as client:
        assert client.post("/", json={"inputs": b64(wav), "parameters": NO_VAD}).status_code == 200
        assert client.post("/", json={"inputs": "not base64!"}).status_code == 400
    assert trims == [0, 0]  # after a good and after a refused request alike
