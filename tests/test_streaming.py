"""stream=true on the OpenAI routes: the real openai SDK reads the server-sent events (tiny random Whisper)."""

from __future__ import annotations

import json
import threading
import time

import httpx2
import numpy as np
import openai
import pytest
from conftest import encode, make_pipeline, serving, tone
from fastapi.testclient import TestClient

from audio import decode_audio
from config import InferenceConfig
from server import ServerSettings, create_app

# three windows of a tone each (random models need no speech; the VAD is off), greedy only (no sampled fallback)
FIELDS = {"vad": "false", "chunk_length_s": "10", "language": "en", "temperature_increment_on_fallback": "0"}
KEY = "sk-stream-test"


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return make_pipeline(tiny_models["main"])


@pytest.fixture(scope="module")
def wav() -> bytes:
    return encode(np.concatenate([tone(10), tone(10, freq=330), tone(8, freq=440)]), 16000, "wav", "pcm_s16le")


@pytest.fixture(scope="module")
def client(tiny):
    with TestClient(create_app(tiny, ServerSettings())) as test_client:
        yield test_client


def sdk(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url="http://testserver/v1", http_client=client, max_retries=0)


def test_the_sdk_streams_deltas_whose_text_is_the_plain_answer(client, wav):
    plain = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                        data={"model": "whisper-1", **FIELDS}).json()["text"]
    events = list(sdk(client).audio.transcriptions.create(file=("a.wav", wav), model="whisper-1", stream=True,
                                                          extra_body=FIELDS))
    types = [event.type for event in events]
    assert types[-1] == "transcript.text.done" and set(types[:-1]) == {"transcript.text.delta"}
    assert len(types) - 1 == 3  # one delta a window
    assert events[-1].text == plain and plain
    assert "".join(event.delta for event in events[:-1]) == plain


def test_translation_streams_too(client, wav):
    plain = client.post("/v1/audio/translations", files={"file": ("a.wav", wav)},
                        data={"model": "whisper-1", **FIELDS}).json()["text"]
    response = client.post("/v1/audio/translations", files={"file": ("a.wav", wav)},
                           data={"model": "whisper-1", "stream": "true", **FIELDS})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line.removeprefix("data: ")) for line in response.text.splitlines() if line]
    assert events[-1] == {"type": "transcript.text.done", "text": plain}


def test_windows_are_handed_over_in_order_the_first_alone(tiny):
    audio = decode_audio(encode(np.concatenate([tone(3, freq=200 + 40 * i) for i in range(7)]), 16000, "wav",
                                "pcm_s16le"))
    # greedy only: the loop guard's sampled fallback would make two runs of a random model differ
    config = InferenceConfig.parse({"vad": False, "chunk_length_s": 3, "batch_size": 4,
                                    "temperature_increment_on_fallback": 0})
    sizes, seen = [], []
    submit = tiny._batcher.submit

    def spy(key, inputs, *args, **kwargs):
        sizes.append(len(inputs))
        return submit(key, inputs, *args, **kwargs)

    tiny._batcher.submit = spy
    try:
        streamed = tiny.transcribe(audio, config, on_window=lambda index, segments: seen.append((index, segments)))
    finally:
        del tiny._batcher.submit
    assert sizes == [1, 4, 2]  # the first window is out after one window's decoding, then batches share passes
    assert [index for index, _ in seen] == list(range(7))
    assert [s for _, segments in seen for s in segments] == streamed.segments
    plain = tiny.transcribe(audio, config)  # the non-streamed path: one submit, the same text and times
    assert plain.text == streamed.text and [(s.start, s.end, s.text) for s in plain.segments] == [
        (s.start, s.end, s.text) for s in streamed.segments]  # measures like avg_logprob may differ with the batches


def test_errors_before_the_stream_keep_their_status(tiny, client, wav):
    bad = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"not audio")},
                      data={"model": "whisper-1", "stream": "true"})
    assert bad.status_code == 415 and bad.json()["error"]["param"] == "file"
    unknown = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                          data={"model": "whisper-1", "stream": "true", "language": "klingon"})
    assert unknown.status_code == 422 and unknown.json()["error"]["param"] == "language"
    with TestClient(create_app(tiny, ServerSettings(api_key=KEY))) as locked:
        with pytest.raises(openai.AuthenticationError):
            list(sdk(locked).audio.transcriptions.create(file=("a.wav", wav), model="whisper-1", stream=True))


class FailsAfterFirstWindow:
    """The tiny pipeline, but the transcription fails once its first window was handed over."""

    def __init__(self, pipeline):
        self._pipeline = pipeline

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def transcribe_request(self, data, cancel=None, on_window=None):
        def first_then_fail(index, segments):
            on_window(index, segments)
            raise RuntimeError("the GPU fell off")

        return self._pipeline.transcribe_request(data, cancel, first_then_fail)


def test_an_error_mid_stream_ends_it_with_an_error_event(tiny, wav):
    with TestClient(create_app(FailsAfterFirstWindow(tiny), ServerSettings())) as client:
        stream = sdk(client).audio.transcriptions.create(file=("a.wav", wav), model="whisper-1", stream=True,
                                                         extra_body=FIELDS)
        first = next(iter(stream))
        assert first.type == "transcript.text.delta"
        with pytest.raises(openai.APIError, match="transcription failed"):
            list(stream)


class Paced:
    """The tiny pipeline; every window after the first waits on `gate`, and `cancelled` records the cancel event."""

    def __init__(self, pipeline):
        self._pipeline, self.gate, self.cancelled = pipeline, threading.Event(), threading.Event()
        self.windows = 0

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def transcribe_request(self, data, cancel=None, on_window=None):
        def paced(index, segments):
            self.windows += 1
            on_window(index, segments)
            while not cancel.is_set() and not self.gate.wait(0.05):
                pass
            if cancel.is_set():
                self.cancelled.set()

        return self._pipeline.transcribe_request(data, cancel, paced)


def test_the_first_delta_comes_before_the_rest_and_a_client_that_leaves_cancels_the_work(tiny, wav):
    """Over a real socket: the first event arrives while later windows are still held back; closing the connection
    then sets the transcription's cancel event, so the rest is never decoded."""
    paced = Paced(tiny)
    app = create_app(paced, ServerSettings())
    with serving(app) as url, httpx2.Client(base_url=url, timeout=30) as http:
        with http.stream("POST", "/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                         data={"model": "whisper-1", "stream": "true", **FIELDS}) as response:
            assert response.status_code == 200
            line = next(line for line in response.iter_lines() if line)
            assert json.loads(line.removeprefix("data: "))["type"] == "transcript.text.delta"
            if paced.cancelled.is_set():  # say why the server gave up: the rest of the stream holds its error event
                pytest.fail(f"cancelled before the client left: {list(response.iter_lines())}")
            assert paced.windows == 1
        # the response is closed: the server hears the disconnect and cancels
        assert paced.cancelled.wait(10)
        deadline = time.monotonic() + 10
        while app.state.service.queue.held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.service.queue.held == 0 and paced.windows == 1  # its queue place is free again


class TwoSpeakers:
    """The tiny pipeline with a diarizer: the first half of the audio is SPEAKER_00's, the rest SPEAKER_01's."""

    diarizer = object()  # what the routes check for "diarization configured"

    def __init__(self, pipeline):
        self._pipeline = pipeline

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def transcribe_request(self, data, cancel=None, on_window=None):
        from diarization_utils import merge_speakers
        from transcript import Segment

        transcript, config = self._pipeline.transcribe_request(data, cancel, on_window)
        half = transcript.duration / 2
        transcript.segments = [Segment(0.0, half, " first words."), Segment(half, transcript.duration, " Then more.")]
        transcript.speakers = merge_speakers([(0.0, half, "SPEAKER_00"), (half, transcript.duration, "SPEAKER_01")],
                                             transcript.segments)
        transcript.text = "".join(segment.text for segment in transcript.segments).strip()
        return transcript, config


def test_a_diarized_stream_sends_each_turn_as_deltas_and_a_segment(tiny, wav):
    with TestClient(create_app(TwoSpeakers(tiny), ServerSettings())) as client:
        plain = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                            data={"model": "whisper-1", "response_format": "diarized_json", **FIELDS}).json()
        events = list(sdk(client).audio.transcriptions.create(
            file=("a.wav", wav), model="whisper-1", stream=True, response_format="diarized_json", extra_body=FIELDS))
    assert [event.type for event in events] == ["transcript.text.delta", "transcript.text.segment"] * 2 + [
        "transcript.text.done"]
    deltas, segments = events[0:4:2], events[1:4:2]
    assert [delta.segment_id for delta in deltas] == [segment.id for segment in segments] == ["seg_0", "seg_1"]
    assert [(s.speaker, s.start, s.end, s.text) for s in segments] == [
        (s["speaker"], s["start"], s["end"], s["text"]) for s in plain["segments"]]
    assert "".join(delta.delta for delta in deltas) == events[-1].text == plain["text"] == "first words. Then more."


def test_request_timeout_mid_stream_ends_it_with_an_error_event_and_stops_the_work(tiny, wav):
    paced = Paced(tiny)  # never released: only the timeout ends it
    with TestClient(create_app(paced, ServerSettings(request_timeout_s=20))) as client:
        response = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                               data={"model": "whisper-1", "stream": "true", **FIELDS})
    events = [json.loads(line.removeprefix("data: ")) for line in response.text.splitlines() if line]
    assert response.status_code == 200 and [event["type"] for event in events] == ["transcript.text.delta", "error"]
    assert "REQUEST_TIMEOUT_S" in events[1]["error"]["message"] and events[1]["error"]["code"] == "timeout"
    assert paced.cancelled.wait(10) and paced.windows == 1
