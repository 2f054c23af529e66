"""The realtime WebSocket: OpenAI's transcription-session protocol, server VAD on real speech, partial deltas,
limits and error events. Protocol tests run the tiny random Whisper in-process; the words come from whisper-base."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import av
import numpy as np
import pytest
from conftest import MODELS, SAMPLE, SAMPLE_TEXT, ROOT, make_pipeline, serving, tone
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from test_e2e import wer, words

from audio import SAMPLE_RATE, PcmStream, decode_audio
from config import InferenceConfig
from realtime import RealtimeSettings
from server import ServerSettings, create_app
from transcript import Transcript

KEY = "sk-realtime-test"
MANUAL = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}}}


def pcm(audio: np.ndarray, rate: int = 24000) -> bytes:
    """16 kHz float audio as the PCM16 a client sends (OpenAI's 24 kHz by default)."""
    if rate == SAMPLE_RATE:
        return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="flt", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    return b"".join(out.to_ndarray()[0].astype("<i2").tobytes()
                    for out in resampler.resample(frame) + resampler.resample(None))


def append(data: bytes) -> dict:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()}


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return make_pipeline(tiny_models["main"])


@pytest.fixture(scope="module")
def client(tiny):
    with TestClient(create_app(tiny, ServerSettings(), RealtimeSettings(idle_timeout_s=30))) as test_client:
        yield test_client


def connect(client, path="/v1/realtime?intent=transcription", **kwargs):
    ws = client.websocket_connect(path, **kwargs)
    return ws


def until(ws, kind: str) -> tuple[dict, list[dict]]:
    """Events up to the first of type `kind`: (that event, all before it)."""
    before = []
    while (event := ws.receive_json())["type"] != kind:
        before.append(event)
    return event, before


# --- protocol (tiny model) ---------------------------------------------------------------------------------------

def test_session_update_ga_and_beta(client):
    with connect(client) as ws:
        created = ws.receive_json()
        assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
        assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert created["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
        ws.send_json({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}, "transcription": {"model": "whisper-1", "language": "de"},
            "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 700}}}}})
        updated = ws.receive_json()["session"]["audio"]["input"]
        assert updated["format"]["rate"] == 16000 and updated["transcription"]["language"] == "de"
        assert updated["turn_detection"]["threshold"] == 0.6 and updated["turn_detection"]["prefix_padding_ms"] == 300
        ws.send_json({"type": "transcription_session.update", "session": {
            "input_audio_format": "pcm16", "input_audio_transcription": {"language": "en", "prompt": "Okafor"},
            "turn_detection": None}})
        beta = ws.receive_json()
        assert beta["type"] == "transcription_session.updated" and beta["session"]["turn_detection"] is None
        assert beta["session"]["input_audio_transcription"]["prompt"] == "Okafor"


@pytest.mark.parametrize("event, code, param", [
    ("{not json", "invalid_json", None),
    ("[" * 100_000, "invalid_json", None),
    ("[1, 2]", "invalid_event", None),
    (json.dumps({"type": "response.create"}), "invalid_event", "type"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "***"}), "invalid_value", "audio"),
    (json.dumps(append(b"\x00\x01\x02")), "invalid_value", "audio"),  # half a sample
    (json.dumps({"type": "input_audio_buffer.append", "audio": 5}), "invalid_value", "audio"),
    (json.dumps({"type": "session.update", "session": {"type": "realtime"}}), "invalid_value", "session.type"),
    (json.dumps({"type": "session.update", "session": {"audio": {"input": {"transcription": {"language": "xx"}}}}}),
     "invalid_value", "language"),
    (json.dumps({"type": "session.update",
                 "session": {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}}),
     "invalid_value", "session.audio.input.turn_detection.type"),
    (json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"threshold": 2}}}}}),
     "invalid_value", "session.audio.input.turn_detection.threshold"),
    (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"rate": 8000}}}}}),
     "invalid_value", "session.audio.input.format.rate"),
    (json.dumps({"type": "input_audio_buffer.commit", "event_id": "mine"}), "invalid_value", "audio"),  # empty
])
def test_bad_events_get_error_events_and_the_session_goes_on(client, event, code, param):
    with connect(client) as ws:
        ws.receive_json()
        ws.send_text(event)
        error = ws.receive_json()
        assert error["type"] == "error" and error["error"]["code"] == code and error["error"]["message"]
        assert error["error"]["param"] == param
        if "mine" in event:
            assert error["error"]["event_id"] == "mine"
        ws.send_json({"type": "input_audio_buffer.clear"})
        assert ws.receive_json()["type"] == "input_audio_buffer.cleared"  # still serving


def test_binary_frames_get_an_error_event(client):
    with connect(client) as ws:
        ws.receive_json()
        ws.send_bytes(b"\x00\x01")
        assert ws.receive_json()["error"]["code"] == "invalid_event"


@pytest.mark.parametrize("rate", [24000, 16000])
def test_manual_commit_transcribes_the_buffer_through_the_pipeline(client, tiny, rate):
    audio = tone(1.5, freq=300)
    with connect(client) as ws:
        ws.receive_json()
        ws.send_json({"type": "session.update", "session": {"audio": {"input": {
            "turn_detection": None, "format": {"type": "audio/pcm", "rate": rate},
            "transcription": {"language": "en"}}}}})
        ws.receive_json()
        data = pcm(audio, rate)
        for start in range(0, len(data), 4800):
            ws.send_json(append(data[start:start + 4800]))
        ws.send_json({"type": "input_audio_buffer.commit"})
        committed = ws.receive_json()
        assert committed["type"] == "input_audio_buffer.committed" and committed["previous_item_id"] is None
        completed, before = until(ws, "conversation.item.input_audio_transcription.completed")
        assert completed["item_id"] == committed["item_id"] and completed["content_index"] == 0
        assert completed["usage"]["type"] == "duration" and abs(completed["usage"]["seconds"] - 1.5) < 0.01
        stream = PcmStream(rate)
        received = np.concatenate([stream.feed(data[start:start + 4800]) for start in range(0, len(data), 4800)])
        expected = tiny.transcribe(received, InferenceConfig.parse({"vad": False, "language": "en",
                                                                    "diarization": False}))
        assert completed["transcript"] == expected.text
        assert "".join(event["delta"] for event in before) == expected.text


def test_pcm_stream_resamples_pieces_as_one_file(tiny):
    audio = decode_audio(SAMPLE.read_bytes())[:3 * SAMPLE_RATE]
    data = pcm(audio)
    stream = PcmStream(24000)
    pieces = np.concatenate([stream.feed(data[start:start + 962]) for start in range(0, len(data), 962)])
    whole = decode_audio(data, "pcm_s16le", 24000)
    assert abs(len(pieces) - len(whole)) < 64  # the resampler holds a few samples back until the stream ends
    assert np.abs(pieces[:len(whole) - 64] - whole[:len(pieces)][:len(whole) - 64]).max() < 1e-3


def test_limits_sessions_key_and_intent(tiny):
    app = create_app(tiny, ServerSettings(api_key=KEY), RealtimeSettings(max_sessions=1))
    with TestClient(app) as client:
        with pytest.raises(WebSocketDenialResponse) as denied:
            with connect(client):
                pass
        assert denied.value.status_code == 401 and "API key" in denied.value.json()["error"]["message"]
        header = {"Authorization": f"Bearer {KEY}"}
        with pytest.raises(WebSocketDenialResponse) as wrong_intent:
            with connect(client, "/v1/realtime?intent=conversation", headers=header):
                pass
        assert wrong_intent.value.status_code == 400 and wrong_intent.value.json()["error"]["param"] == "intent"
        # browsers send the key as a subprotocol
        with connect(client, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as first:
            assert first.receive_json()["type"] == "session.created"
            assert client.get("/health").json()["realtime"] == {"sessions": 1, "capacity": 1}
            with pytest.raises(WebSocketDenialResponse) as full:
                with connect(client, headers=header):
                    pass
            assert full.value.status_code == 503 and "REALTIME_MAX_SESSIONS" in full.value.json()["error"]["message"]
        assert client.get("/health").json()["realtime"]["sessions"] == 0
        with connect(client, headers=header) as again:  # the place is free again
            assert again.receive_json()["type"] == "session.created"


def test_buffer_limit_and_idle_timeout(tiny):
    app = create_app(tiny, ServerSettings(), RealtimeSettings(max_buffer_s=31, idle_timeout_s=1))
    with TestClient(app) as client, connect(client) as ws:
        ws.receive_json()
        ws.send_json(MANUAL)
        ws.receive_json()
        ws.send_json(append(pcm(tone(20.0), SAMPLE_RATE * 3 // 2)))
        ws.send_json(append(pcm(tone(20.0), SAMPLE_RATE * 3 // 2)))
        error = ws.receive_json()
        assert error["type"] == "error" and "REALTIME_MAX_BUFFER_S" in error["error"]["message"]
        started = time.monotonic()
        timeout = ws.receive_json()
        assert timeout["error"]["code"] == "idle_timeout" and 0.5 < time.monotonic() - started < 10
        assert ws.receive()["type"] == "websocket.close"


def test_a_session_outlives_the_request_head_deadline(tiny):
    """The server's own protocol (a deadline for request heads) must not close an upgraded WebSocket: a live session
    is quiet between utterances for longer than HEADER_TIMEOUT_S."""
    import websockets.sync.client

    settings = ServerSettings(header_timeout_s=0.3)
    with serving(create_app(tiny, settings), settings) as url, websockets.sync.client.connect(
            url.replace("http", "ws") + "/v1/realtime?intent=transcription") as ws:
        assert json.loads(ws.recv(10))["type"] == "session.created"
        time.sleep(1.0)
        ws.send(json.dumps(MANUAL))
        assert json.loads(ws.recv(10))["type"] == "session.updated"


# --- partial deltas: real VAD on real speech, a scripted decoder -----------------------------------------------

class Scripted:
    """The tiny pipeline, whose decode says the first words of SAMPLE_TEXT, one more each second of audio (a
    speaker read out as the audio grows), so the deltas are known in advance."""

    def __init__(self, pipeline):
        self._pipeline, self.decodes = pipeline, 0

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def transcribe(self, audio, config, cancel=None, on_window=None):
        self.decodes += 1
        words = SAMPLE_TEXT.split()[:int(len(audio) / SAMPLE_RATE)]
        return Transcript(" ".join(words), [], len(audio) / SAMPLE_RATE)


def test_partial_deltas_arrive_before_speech_stops_and_add_up_to_the_transcript(tiny):
    speech = decode_audio(SAMPLE.read_bytes())
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)])
    scripted = Scripted(tiny)
    app = create_app(scripted, ServerSettings(), RealtimeSettings(partial_interval_s=0.25))
    data, step = pcm(audio), 4800  # 100 ms
    with TestClient(app) as client, connect(client) as ws:
        ws.receive_json()
        for start in range(0, len(data), step):  # four times real time
            ws.send_json(append(data[start:start + step]))
            time.sleep(0.025)
        completed, before = until(ws, "conversation.item.input_audio_transcription.completed")
    kinds = [event["type"] for event in before]
    assert kinds[0] == "input_audio_buffer.speech_started"
    stopped = kinds.index("input_audio_buffer.speech_stopped")
    deltas = [event["delta"] for event in before if event["type"].endswith(".delta")]
    early = [event for event in before[:stopped] if event["type"].endswith(".delta")]
    assert early and len(deltas) > 2, kinds  # text while the speaker still talks
    assert "".join(deltas) == completed["transcript"]
    words = completed["transcript"].split()
    assert len(words) >= 9 and words == SAMPLE_TEXT.split()[:len(words)]
    assert scripted.decodes > 3


class Recording(Scripted):
    """Scripted, and the length (samples) of every audio it was asked to decode."""

    def __init__(self, pipeline):
        super().__init__(pipeline)
        self.lengths: list[int] = []

    def transcribe(self, audio, config, cancel=None, on_window=None):
        self.lengths.append(len(audio))
        return super().transcribe(audio, config, cancel, on_window)


def _turns(app, audio: np.ndarray) -> list[dict]:
    """Streams `audio` at four times real time; returns the events up to the first completed one."""
    data, step = pcm(audio), 4800  # 100 ms
    with TestClient(app) as client, connect(client) as ws:
        ws.receive_json()
        for start in range(0, len(data), step):
            ws.send_json(append(data[start:start + step]))
            time.sleep(0.025)
        completed, before = until(ws, "conversation.item.input_audio_transcription.completed")
    return before + [completed]


def test_early_decode_is_the_final_when_the_pause_ends_the_turn(tiny):
    speech = decode_audio(SAMPLE.read_bytes())[:4 * SAMPLE_RATE]
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)])
    recording = Recording(tiny)
    events = _turns(create_app(recording, ServerSettings(),
                               RealtimeSettings(partial_interval_s=0, early_decode_ms=100)), audio)
    started = next(e for e in events if e["type"] == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
    committed = (stopped["audio_end_ms"] - started["audio_start_ms"]) * SAMPLE_RATE // 1000
    final = recording.lengths[-1]
    # decoded when the pause began, not after silence_duration_ms (500 ms) confirmed it
    assert committed - 0.45 * SAMPLE_RATE < final < committed - 0.3 * SAMPLE_RATE, (final, committed)
    assert all(abs(length - committed) > 0.1 * SAMPLE_RATE for length in recording.lengths)  # no second decode
    assert events[-1]["transcript"] == " ".join(SAMPLE_TEXT.split()[:int(final / SAMPLE_RATE)])


def test_a_pause_that_is_not_the_end_turns_the_early_decode_into_a_partial(tiny):
    speech = decode_audio(SAMPLE.read_bytes())
    pause = np.zeros(int(0.3 * SAMPLE_RATE), np.float32)  # under silence_duration_ms: the turn goes on
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), speech[:4 * SAMPLE_RATE], pause,
                            speech[4 * SAMPLE_RATE:8 * SAMPLE_RATE], np.zeros(SAMPLE_RATE, np.float32)])
    recording = Recording(tiny)
    events = _turns(create_app(recording, ServerSettings(),
                               RealtimeSettings(partial_interval_s=0, early_decode_ms=100)), audio)
    kinds = [event["type"] for event in events]
    assert kinds.count("input_audio_buffer.speech_started") == 1  # one turn across the short pause
    stopped = kinds.index("input_audio_buffer.speech_stopped")
    deltas = [event["delta"] for event in events if event["type"].endswith(".delta")]
    # no partial decodes (interval 0): text before the turn ended came from the pause's decode
    assert any(kind.endswith(".delta") for kind in kinds[:stopped]), kinds
    assert "".join(deltas) == events[-1]["transcript"]
    assert len(recording.lengths) >= 2 and recording.lengths[-1] > 7 * SAMPLE_RATE  # the final saw the whole turn


class Overlapping(Scripted):
    """Scripted, each decode taking 0.3 s; counts how many partial decodes (cancellable for a final) ran at once,
    and notes for each decode whether it was one."""

    def __init__(self, pipeline):
        super().__init__(pipeline)
        self.realtime = None
        self.lock, self.running, self.most, self.kinds, self.given_up = threading.Lock(), 0, 0, [], []

    def transcribe(self, audio, config, cancel=None, on_window=None):
        partial = cancel in self.realtime.partial_cancels
        with self.lock:
            self.kinds.append((len(audio), partial))
            self.running += partial
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.3)
            return super().transcribe(audio, config, cancel, on_window)
        finally:
            with self.lock:
                self.running -= partial
                if partial and cancel.is_set():
                    self.given_up.append(len(audio))


def _two_speakers(tiny, **settings) -> Overlapping:
    """Two sessions stream the sample (8 s of speech, then silence) at once, at twice real time."""
    speech = decode_audio(SAMPLE.read_bytes())[:8 * SAMPLE_RATE]
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)])
    overlapping = Overlapping(tiny)
    app = create_app(overlapping, ServerSettings(), RealtimeSettings(**settings))
    overlapping.realtime = app.state.realtime
    data, step = pcm(audio), 4800  # 100 ms
    with TestClient(app) as client, connect(client) as first, connect(client) as second:
        for ws in (first, second):
            ws.receive_json()
        for start in range(0, len(data), step):
            for ws in (first, second):
                ws.send_json(append(data[start:start + step]))
            time.sleep(0.05)
        for ws in (first, second):
            until(ws, "conversation.item.input_audio_transcription.completed")
    return overlapping


@pytest.mark.parametrize("value", ["0", "-1", "257", "many", "1.5"])
def test_partial_decodes_from_env_are_bounded(monkeypatch, value):
    from pydantic import ValidationError

    monkeypatch.setenv("REALTIME_PARTIAL_DECODES", "3")
    assert RealtimeSettings().partial_decodes == 3
    monkeypatch.setenv("REALTIME_PARTIAL_DECODES", value)
    with pytest.raises(ValidationError, match="partial_decodes"):
        RealtimeSettings()


@pytest.mark.parametrize("slots", [1, 2])
def test_partial_decodes_take_turns_server_wide(tiny, slots):
    """REALTIME_PARTIAL_DECODES: two sessions speaking at once never have more partial decodes in flight."""
    overlapping = _two_speakers(tiny, partial_interval_s=0.2, early_decode_ms=0, partial_decodes=slots)
    assert sum(partial for _, partial in overlapping.kinds) >= 4
    assert overlapping.most == slots


def test_the_early_decode_is_a_final_no_other_session_gives_up(tiny):
    """The decode started in a pause is not among the partials another session's final cancels, and while it
    waits no partial starts (its audio ends at the pause, before the committed end)."""
    overlapping = _two_speakers(tiny, partial_interval_s=0, early_decode_ms=100)
    assert overlapping.kinds and not any(partial for _, partial in overlapping.kinds)


def test_a_pause_spares_its_own_sessions_partial_in_flight(tiny):
    """The decode a pause starts does not give up the same session's partial (the speaker may go on, and that partial
    is nearly done); the final at the end of the turn still does. Partials back to back, 0.3 s each: several pauses'
    early decodes find one in flight."""
    speech = decode_audio(SAMPLE.read_bytes())
    pause = np.zeros(int(0.3 * SAMPLE_RATE), np.float32)  # under silence_duration_ms: the turn goes on
    parts = [np.zeros(SAMPLE_RATE // 2, np.float32)]
    for second in range(0, 8, 2):
        parts += [speech[second * SAMPLE_RATE:(second + 2) * SAMPLE_RATE], pause]
    overlapping = Overlapping(tiny)
    app = create_app(overlapping, ServerSettings(), RealtimeSettings(partial_interval_s=0.05, early_decode_ms=100))
    overlapping.realtime = app.state.realtime
    events = _turns(app, np.concatenate([*parts, np.zeros(SAMPLE_RATE, np.float32)]))
    assert [e["type"] for e in events].count("input_audio_buffer.speech_started") == 1
    partials = [length for length, partial in overlapping.kinds if partial]
    assert len(partials) >= 4 and len(overlapping.kinds) > len(partials)  # partials, and early decodes or a final
    turn = max(length for length, _ in overlapping.kinds)
    assert all(length > turn - SAMPLE_RATE for length in overlapping.given_up), (overlapping.given_up, turn)


# --- real speech, real model, a real socket ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_url():
    # no partial decodes (tested above with a scripted decoder): on 2 busy cores they would only slow these down
    app = create_app(make_pipeline(MODELS / "whisper-base"), ServerSettings(), RealtimeSettings(partial_interval_s=0))
    with serving(app) as url:
        yield url, app


async def stream(url: str, audio: np.ndarray, pace: float, language: str = "en", close_after: float | None = None):
    """A websockets client: sends `audio` in 100 ms pieces at `pace` times real time, then waits for the last
    completed event (or closes after `close_after` seconds of audio). Returns the events with their arrival times."""
    import websockets

    events: list[tuple[float, dict]] = []
    async with websockets.connect(url.replace("http", "ws") + "/v1/realtime?intent=transcription") as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"transcription": {"model": "whisper-1", "language": language}}}}}))
        assert json.loads(await ws.recv())["type"] == "session.updated"
        started = time.monotonic()

        async def receive():
            async for message in ws:
                event = json.loads(message)
                events.append((time.monotonic() - started, event))
                items = {e["item_id"] for _, e in events if e["type"] == "input_audio_buffer.committed"}
                done = {e["item_id"] for _, e in events if e["type"].endswith(".completed")}
                if sending.done() and items and items == done:
                    return

        async def send():
            data, step = pcm(audio), 4800
            for index, start in enumerate(range(0, len(data), step)):
                if close_after is not None and index / 10 >= close_after:
                    return
                await ws.send(json.dumps(append(data[start:start + step])))
                await asyncio.sleep(max(0.0, (index + 1) * 0.1 / pace - (time.monotonic() - started)))

        sending = asyncio.ensure_future(send())
        if close_after is not None:
            receiving = asyncio.ensure_future(receive())
            await sending
            await asyncio.sleep(0.2)
            receiving.cancel()
            return events
        await asyncio.wait_for(asyncio.gather(sending, receive()), 240)
    return events


def transcripts(events) -> str:
    return " ".join(e["transcript"] for _, e in events if e["type"].endswith(".completed"))


@pytest.mark.e2e
def test_live_speech_gets_turn_events_and_the_right_words(base_url):
    url, _ = base_url
    speech = decode_audio(SAMPLE.read_bytes())
    audio = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)])
    events = asyncio.run(stream(url, audio, pace=3.0))
    kinds = [e["type"] for _, e in events]
    first_start = next(e for _, e in events if e["type"] == "input_audio_buffer.speech_started")
    last_stop = [e for _, e in events if e["type"] == "input_audio_buffer.speech_stopped"][-1]
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
    assert 500 <= first_start["audio_start_ms"] <= 1100  # speech begins at 1 s; 300 ms of prefix padding
    assert 11_000 <= last_stop["audio_end_ms"] <= 12_200  # it ends near 11.2 s, heard after 500 ms of silence
    assert wer(SAMPLE_TEXT, transcripts(events)) <= 0.15, transcripts(events)


@pytest.mark.e2e
def test_two_sessions_at_once_stay_separate(base_url):
    url, _ = base_url
    turns = json.loads((ROOT / "samples" / "two_speakers.json").read_text())["turns"][:2]
    other = decode_audio((ROOT / "samples" / "two_speakers.ogg").read_bytes())[:int(8.2 * SAMPLE_RATE)]
    sample = decode_audio(SAMPLE.read_bytes())
    pad = np.zeros(SAMPLE_RATE, np.float32)

    async def both():
        return await asyncio.gather(stream(url, np.concatenate([pad, sample, pad]), pace=3.0),
                                    stream(url, np.concatenate([other, pad]), pace=3.0))

    first, second = asyncio.run(both())
    assert wer(SAMPLE_TEXT, transcripts(first)) <= 0.15, transcripts(first)
    # whisper-base hears the second voice's "budget review" as other words; nothing of the other session leaks in
    assert wer(" ".join(turn["text"] for turn in turns), transcripts(second)) <= 0.3, transcripts(second)
    assert not {"weather", "breeze", "recording"} & set(words(transcripts(second)).split())
    assert not {"morning", "call", "here"} & set(words(transcripts(first)).split())
    ids = [{e["item_id"] for _, e in events if "item_id" in e} for events in (first, second)]
    assert not ids[0] & ids[1]


@pytest.mark.e2e
def test_a_disconnect_mid_utterance_frees_the_session(base_url):
    url, app = base_url
    realtime = app.state.realtime
    realtime.settings.partial_interval_s = 1.0  # a partial decode is in flight when the client leaves
    speech = decode_audio(SAMPLE.read_bytes())
    seen = []

    async def leave_mid_utterance():
        task = asyncio.ensure_future(stream(url, np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), speech]),
                                            pace=1.0, close_after=3.5))
        while not realtime.sessions:
            await asyncio.sleep(0.01)
        seen.extend(realtime.sessions)
        return await task

    try:
        events = asyncio.run(leave_mid_utterance())
    finally:
        realtime.settings.partial_interval_s = 0
    assert [e["type"] for _, e in events][:1] == ["input_audio_buffer.speech_started"]  # it was mid-utterance
    session = seen[0]
    deadline = time.monotonic() + 30
    while (realtime.sessions or session.tasks or session.cancels) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not realtime.sessions and not session.tasks and not session.cancels
    assert session.buffer.size == 0


def test_openai_sdk_realtime_client_works_unchanged(tiny):
    """The openai SDK's own realtime client (GA events, Bearer key on the handshake) against the server."""
    import openai

    data = pcm(tone(1.0, freq=300))
    with serving(create_app(tiny, ServerSettings(api_key=KEY))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY)
        with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
            assert connection.recv().type == "session.created"
            connection.session.update(session={"type": "transcription", "audio": {"input": {
                "turn_detection": None, "transcription": {"model": "whisper-1", "language": "en"}}}})
            assert connection.recv().type == "session.updated"
            connection.input_audio_buffer.append(audio=base64.b64encode(data).decode())
            connection.input_audio_buffer.commit()
            events = []
            for event in connection:
                events.append(event)
                if event.type == "conversation.item.input_audio_transcription.completed":
                    break
    assert type(events[-1]).__name__ == "ConversationItemInputAudioTranscriptionCompletedEvent"
    assert events[0].type == "input_audio_buffer.committed" and events[-1].item_id == events[0].item_id
    assert abs(events[-1].usage.seconds - 1.0) < 0.01  # the resampler holds a few samples back
