"""The ten defects an outside attack found (issue 15), each reproduced against the real code: window and PCM bombs,
slow uploads, cancellation on timeout and disconnect, 500s for client mistakes, many-channel WAVs, common base64,
log floods, the OpenAI error shape, and what an unauthenticated client learns."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import socket
import threading
import time
import wave

import httpx
import numpy as np
import pytest
from conftest import b64, encode, make_pipeline, tone
from conftest import serving as conftest_serving
from fastapi.testclient import TestClient

import audio
from audio import decode_audio, payload_bytes
from batching import WindowBatcher
from config import InferenceConfig
from errors import Cancelled, RequestError
from server import ServerSettings, create_app
from vad import group_windows

NO_VAD = {"vad": False}
KEY = "sk-hostile-0123456789"


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return make_pipeline(tiny_models["main"], max_audio_seconds=120)


@pytest.fixture(scope="module")
def wav() -> bytes:
    return encode(tone(2.0), 16000, "wav", "pcm_s16le")


@pytest.fixture(scope="module")
def client(tiny):
    with TestClient(create_app(tiny, ServerSettings())) as test_client:
        yield test_client


class Blocking:
    """The tiny pipeline whose first transcription blocks until `release` (or its cancel event) is set."""

    def __init__(self, pipeline):
        self._pipeline, self.started, self.release, self.cancels, self.calls = pipeline, threading.Event(), \
            threading.Event(), [], 0

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def handle(self, data, cancel=None):
        self.calls += 1
        if self.calls == 1:
            self.cancels.append(cancel)
            self.started.set()
            while not self.release.is_set() and not cancel.is_set():
                time.sleep(0.01)
            if cancel.is_set():
                raise Cancelled()
        return self._pipeline.handle(data, cancel)


@contextlib.contextmanager
def serving(app, settings: ServerSettings):
    """The app on a real socket with the server's own protocol options; yields (host, port)."""
    from urllib.parse import urlsplit

    with conftest_serving(app, settings) as url:
        parts = urlsplit(url)
        yield parts.hostname, parts.port


def read_until_closed(conn: socket.socket, seconds: float = 10) -> bytes:
    conn.settimeout(seconds)
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    conn.close()
    return b"".join(chunks)


def closed_within(conn: socket.socket, seconds: float) -> bool:
    """Whether the server closes `conn` within `seconds` (reads until EOF or the time is up)."""
    conn.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if conn.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


# --- 1. window bomb ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1e-300, 1e-5, 0.01, 0.5])
def test_chunk_length_below_a_second_is_refused(value):
    with pytest.raises(RequestError) as caught:
        InferenceConfig.parse({"chunk_length_s": value})
    assert caught.value.status == 422 and caught.value.field == "chunk_length_s"


def test_window_count_is_computed_up_front_and_capped():
    caught = []

    def cut():  # the old loop never ended: start += 1e-300 does not advance
        try:
            group_windows([(0.0, 120.0)], 1e-300, 120.0, max_windows=1000)
        except RequestError as error:
            caught.append(error)

    thread = threading.Thread(target=cut, daemon=True)
    thread.start()
    thread.join(60)  # a hang guard, not a speed bound: the refusal comes before any window is made
    assert not thread.is_alive() and len(caught) == 1
    assert caught[0].status == 422 and caught[0].field == "chunk_length_s"
    assert len(group_windows([(0.0, 120.0)], 1.0, 120.0, max_windows=120)) == 120


def test_window_bomb_answers_422_at_once_on_every_front_door(client, wav):
    started = time.perf_counter()
    raw = client.post("/?chunk_length_s=1e-300&diarization=false", content=wav, headers={"Content-Type": "audio/wav"})
    as_json = client.post("/", json={"inputs": b64(wav), "parameters": {"chunk_length_s": 1e-300}})
    form = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"chunk_length_s": "1e-300"})
    assert [r.status_code for r in (raw, as_json, form)] == [422, 422, 422]
    assert "chunk_length_s" in raw.json()["error"] and form.json()["error"]["param"] == "chunk_length_s"
    assert time.perf_counter() - started < 5


def test_many_short_windows_are_refused_before_the_model_runs(tiny, wav):
    long = encode(tone(110.0), 16000, "wav", "pcm_s16le")  # 110 one-second windows, over 64 for MAX_AUDIO 120 s
    with pytest.raises(RequestError) as caught:
        tiny.handle({"inputs": long, "parameters": {**NO_VAD, "chunk_length_s": 1}})
    assert caught.value.status == 422 and "windows" in caught.value.message


# --- 2. raw PCM bomb, batch memory -------------------------------------------------------------------------------

def test_raw_pcm_over_the_limit_is_refused_before_resampling(monkeypatch):
    def no_resampling():
        raise AssertionError("resampled before the length check")

    monkeypatch.setattr(audio, "_resampler", no_resampling)
    pcm = bytes(4_900_000)  # 2450 s at 1 kHz: 200x as many samples once resampled to 16 kHz
    with pytest.raises(RequestError) as caught:
        decode_audio(pcm, "pcm_s16le", 1000, max_seconds=120)
    assert caught.value.status == 413 and "2450 s" in caught.value.message


def test_a_cpu_forward_pass_holds_at_most_the_default_batch(tiny, wav):
    seen = []
    forward = tiny._batcher._forward

    def recording(inputs, batch_size, options, stop):
        seen.append((len(inputs), batch_size))
        return forward(inputs, batch_size, options, stop)

    tiny._batcher._forward = recording
    try:
        long = encode(tone(30.0), 16000, "wav", "pcm_s16le")
        tiny.handle({"inputs": long, "parameters": {**NO_VAD, "chunk_length_s": 1, "batch_size": 256}})
    finally:
        tiny._batcher._forward = forward
    assert sum(n for n, _ in seen) == 30 and max(n for n, _ in seen) <= 24 and max(b for _, b in seen) <= 24


# --- 3. slow uploads ---------------------------------------------------------------------------------------------

def test_slow_uploaders_hold_no_queue_place(tiny, wav):
    settings = ServerSettings(max_concurrent_requests=1, max_queued_requests=1, upload_grace_s=30)
    app, arrived = create_app(tiny, settings), []

    async def counted(scope, receive, send):  # the app, noting each request that reaches it
        if scope["type"] == "http":
            arrived.append(scope["path"])
        await app(scope, receive, send)

    with serving(counted, settings) as (host, port):
        slow = []
        for _ in range(4):  # more slow uploads than places: each sent headers and a few bytes, then stalls
            conn = socket.create_connection((host, port))
            conn.sendall(b"POST /?vad=false HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(wav) + wav[:10])
            slow.append(conn)
        deadline = time.monotonic() + 60  # only a hang guard: all four stalled uploads are in the app, uploading
        while len(arrived) < 4:
            assert time.monotonic() < deadline, arrived
            time.sleep(0.01)
        response = httpx.post(f"http://{host}:{port}/?vad=false", content=wav, headers={"Content-Type": "audio/wav"},
                              timeout=60)
        assert response.status_code == 200, response.text
        assert httpx.get(f"http://{host}:{port}/health").json()["queue"]["held"] == 0
        for conn in slow:
            conn.close()


def test_a_stalled_upload_gets_408_after_its_grace_time(tiny, wav):
    settings = ServerSettings(upload_grace_s=0.5, upload_min_bytes_per_s=1000)
    with serving(create_app(tiny, settings), settings) as (host, port):
        conn = socket.create_connection((host, port))
        conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\nContent-Length: %d\r\n\r\n"
                     % len(wav) + wav[:10])
        answer = read_until_closed(conn)
        assert answer.startswith(b"HTTP/1.1 408") and b"UPLOAD_MIN_BYTES_PER_S" in answer, answer
        conn.close()


def test_idle_and_half_sent_connections_are_closed(tiny):
    settings = ServerSettings(header_timeout_s=0.5, keep_alive_s=1)
    with serving(create_app(tiny, settings), settings) as (host, port):
        idle = socket.create_connection((host, port))
        trickle = socket.create_connection((host, port))
        trickle.sendall(b"GET /health HTTP/1.1\r\n")
        with contextlib.suppress(OSError):  # the server may close it while it trickles: what this test wants
            for _ in range(20):  # a byte at a time: uvicorn's keep-alive timer restarts on every byte
                time.sleep(0.2)
                trickle.sendall(b"X")
        assert closed_within(idle, 5) and closed_within(trickle, 5)
        assert httpx.get(f"http://{host}:{port}/health").status_code == 200


# --- 4. cancellation on timeout (between batches) and on disconnect ----------------------------------------------

def test_a_cancelled_job_drops_its_remaining_batches_and_a_shared_batch_completes():
    calls, cancel, started, release = [], threading.Event(), threading.Event(), threading.Event()

    def forward(inputs, batch_size, options, stop):
        calls.append(list(inputs))
        started.set()
        assert release.wait(60)  # the first batch runs until the small job is queued and the big one cancelled
        return [x * 10 for x in inputs]

    batcher = WindowBatcher(forward, wait_s=0.01, arrival_wait_s=0)
    results = {}

    def big():
        try:
            results["big"] = batcher.submit("k", list(range(100)), 4, {}, cancel)
        except Cancelled:
            results["big"] = "cancelled"

    thread = threading.Thread(target=big)
    thread.start()
    assert started.wait(5)
    small = threading.Thread(target=lambda: results.update(small=batcher.submit("k", [1000], 4, {})))
    small.start()  # arrives while the big job runs: it gets into the next batch, not after 100 windows
    deadline = time.monotonic() + 60  # only a hang guard
    while not any(job.inputs == [1000] for job in list(batcher._queue)):
        assert time.monotonic() < deadline, "the small job never queued"
        time.sleep(0.001)
    cancel.set()
    release.set()
    thread.join(10)
    small.join(10)
    assert results == {"big": "cancelled", "small": [10000]}
    assert len(calls) <= 3 and all(len(batch) <= 4 for batch in calls)
    assert any(1000 in batch for batch in calls)


def test_a_timed_out_request_frees_its_worker_within_a_batch(tiny):
    long = encode(tone(60.0), 16000, "wav", "pcm_s16le")
    encoded = []  # windows through the encoder
    hook = tiny.asr.model.get_encoder().conv1.register_forward_hook(lambda m, i, out: encoded.append(out.shape[0]))
    try:
        with TestClient(create_app(tiny, ServerSettings(request_timeout_s=1.0))) as client:
            response = client.post("/?vad=false&chunk_length_s=1&batch_size=1", content=long,
                                   headers={"Content-Type": "audio/wav"})
            assert response.status_code == 504
            deadline = time.monotonic() + 60  # one batch, on a loaded machine
            while client.get("/health").json()["queue"]["held"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.get("/health").json()["queue"]["held"] == 0
    finally:
        hook.remove()
    assert sum(encoded) < 60  # the 60 windows were not all encoded


def test_a_client_that_disconnects_cancels_its_transcription(tiny, wav):
    blocking = Blocking(tiny)
    settings = ServerSettings()
    with serving(create_app(blocking, settings), settings) as (host, port):
        conn = socket.create_connection((host, port))
        body = json.dumps({"inputs": b64(wav), "parameters": NO_VAD}).encode()
        conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body)
        assert blocking.started.wait(20)
        conn.close()
        deadline = time.monotonic() + 5
        while not blocking.cancels[0].is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert blocking.cancels[0].is_set()
        while httpx.get(f"http://{host}:{port}/health").json()["queue"]["held"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"http://{host}:{port}/health").json()["queue"]["held"] == 0


# --- 5. client mistakes that were 500s ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/v1/audio/transcriptions"])
def test_deep_json_and_huge_integers_are_400s(client, wav, path):
    deep = "[" * 100_000 + "]" * 100_000
    huge = "1" * 5000
    if path == "/":
        answers = [client.post(path, content=f'{{"inputs": "AAAA", "parameters": {deep}}}',
                               headers={"Content-Type": "application/json"}),
                   client.post(path, content=f'{{"inputs": "AAAA", "parameters": {{"batch_size": {huge}}}}}',
                               headers={"Content-Type": "application/json"}),
                   client.post(path, files={"file": ("a.wav", wav)}, data={"parameters": deep})]
    else:
        answers = [client.post(path, files={"file": ("a.wav", wav)}, data={"batch_size": huge})]
    for response in answers:
        assert 400 <= response.status_code < 500, response.text
        message = response.json()["error"]
        assert (message["message"] if isinstance(message, dict) else message)


def test_a_prompt_with_whisper_control_tokens_is_a_422(client, wav):
    for prompt in ("<|endoftext|>", "names: <|0.00|> Okafor"):
        response = client.post("/", json={"inputs": b64(wav), "parameters": {**NO_VAD, "prompt": prompt}})
        assert response.status_code == 422 and response.json()["field"] == "prompt", response.text
    plain = client.post("/", json={"inputs": b64(wav), "parameters": {**NO_VAD, "prompt": "a < b | c"}})
    assert plain.status_code == 200


# --- 6. many channels --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [3, 9, 11, 17, 25, 32])
def test_any_channel_count_is_downmixed(channels):
    mono = tone(1.0)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(16000)
        weights = np.zeros(channels, np.float32)
        weights[0] = channels  # all the signal in the first channel: the average is the tone itself
        out.writeframes((np.outer(mono, weights) / channels * 32767).astype("<i2").tobytes())
    decoded = decode_audio(buffer.getvalue())
    assert len(decoded) == 16000
    np.testing.assert_allclose(decoded, mono / channels, atol=2e-3)


# --- 7. base64 as browsers and the base64 command write it ------------------------------------------------------

def test_line_wrapped_base64_and_data_uris_with_parameters(wav):
    assert payload_bytes(base64.encodebytes(wav).decode()) == wav
    assert payload_bytes("data:audio/webm;codecs=opus;base64," + b64(wav)) == wav
    assert payload_bytes("data:audio/wav;name=a.wav;base64,\r\n" + base64.encodebytes(wav).decode()) == wav
    for junk in ("data:audio/wav;base64,%%%", "QUJD\n=x", "data:,hello"):
        with pytest.raises(RequestError, match="not valid base64"):
            payload_bytes(junk)


# --- 8. a disconnect during the upload is one quiet line ---------------------------------------------------------

def test_a_disconnect_during_upload_logs_no_error_or_traceback(tiny, wav, caplog):
    settings = ServerSettings()
    app, arrived, finished = create_app(tiny, settings), [], []

    async def counted(scope, receive, send):  # the app, noting each request that reaches it and leaves it
        if scope["type"] == "http":
            arrived.append(scope["path"])
        try:
            await app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                finished.append(scope["path"])

    def until(condition):  # only a hang guard
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.01)

    with caplog.at_level(logging.INFO), serving(counted, settings) as (host, port):
        for count, path in enumerate(("/", "/v1/audio/transcriptions"), 1):
            conn = socket.create_connection((host, port))
            kind = b"audio/wav" if path == "/" else b"multipart/form-data; boundary=zz"
            part = b"" if path == "/" else (b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"'
                                            b"\r\nContent-Type: audio/wav\r\n\r\n")
            conn.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: 100000\r\n\r\n"
                         % (path.encode(), kind) + part + wav[:1000])
            until(lambda: len(arrived) == count)  # the app is reading its body
            conn.close()
            until(lambda: len(finished) == count)  # the app is done with it, whatever it logged
        assert httpx.get(f"http://{host}:{port}/health").status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text
    assert caplog.text.count("POST /: the client disconnected") == 1, caplog.text  # the contract route's one line


# --- 9. each client's error shape --------------------------------------------------------------------------------

def test_openai_routes_answer_openai_errors_and_the_sdk_reads_them(client, wav):
    import openai

    response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                           data={"response_format": "xml"})
    error = response.json()["error"]
    assert response.status_code == 422 and set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "response_format" and error["type"] == "invalid_request_error"
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), response_format="json",
                                        extra_body={"batch_size": 0})
    assert caught.value.param == "batch_size" and caught.value.code and "batch_size" in str(caught.value)
    contract = client.post("/", json={"inputs": "%%%"})
    assert contract.json() == {"error": "inputs is not valid base64", "field": "inputs"}


def test_the_http_layer_answers_json_too(tiny):
    settings = ServerSettings()
    with serving(create_app(tiny, settings), settings) as (host, port):
        conn = socket.create_connection((host, port))
        conn.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
        answer = read_until_closed(conn)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head.lower()
    assert json.loads(body)["error"]


# --- 10. what an unauthenticated client learns and what the log keeps ---------------------------------------------

def test_the_key_is_checked_before_the_upload_limit(tiny, wav):
    with TestClient(create_app(tiny, ServerSettings(api_key=KEY, max_upload_bytes=1000))) as client:
        anonymous = client.post("/", content=wav, headers={"Content-Type": "audio/wav"})
        assert anonymous.status_code == 401 and "1000" not in anonymous.text
        keyed = client.post("/", content=wav, headers={"Content-Type": "audio/wav", "Authorization": f"Bearer {KEY}"})
        assert keyed.status_code == 413


def test_a_key_in_the_query_string_is_not_logged(tiny):
    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    settings = ServerSettings(api_key=KEY)
    with serving(create_app(tiny, settings), settings) as (host, port):
        access = logging.getLogger("uvicorn.access")  # uvicorn's config stops it propagating to caplog
        handler = Keep()
        access.addHandler(handler)
        try:
            response = httpx.post(f"http://{host}:{port}/?api_key={KEY}&vad=false", content=b"x")
            assert response.status_code == 401
            deadline = time.monotonic() + 30  # uvicorn writes the access line after the response: wait for it
            while not any("vad=false" in line for line in lines) and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            access.removeHandler(handler)
    assert any("vad=false" in line and "api_key=***" in line for line in lines), lines
    assert not any(KEY in line for line in lines)
