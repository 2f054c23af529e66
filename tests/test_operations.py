"""Operations on the server (in-process, tiny random Whisper): /v1/models with the real openai SDK, Prometheus
/metrics, the offline docs page, subtitle shaping and known-speaker fields on the OpenAI route, unknown fields."""

from __future__ import annotations

import logging
import re

import pytest
import srt
from conftest import encode, make_pipeline, tone
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server import ServerSettings, create_app

KEY = "sk-ops-0123456789"


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return make_pipeline(tiny_models["main"])


@pytest.fixture(scope="module")
def client(tiny):
    with TestClient(create_app(tiny, ServerSettings())) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def wav() -> bytes:
    return encode(tone(3.0), 16000, "wav", "pcm_s16le")


def transcribe(client, wav, **fields):
    return client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav, "audio/wav")},
                       data={"model": "whisper-1", "vad": "false", **fields})


def test_openai_sdk_lists_the_models_and_transcribes_with_a_listed_id(client, tiny, wav):
    from openai import NotFoundError, OpenAI

    sdk = OpenAI(base_url=f"{client.base_url}/v1", api_key="unused", http_client=client, max_retries=0)
    ids = [model.id for model in sdk.models.list()]
    assert ids == [tiny.settings.asr_model, "whisper-1"]  # a local path here; a hub id such as openai/whisper-base
    for model_id in ids:
        model = sdk.models.retrieve(model_id)
        assert model.id == model_id and model.object == "model" and model.created > 0
        text = sdk.audio.transcriptions.create(model=model_id, file=("a.wav", wav), response_format="text",
                                               extra_body={"vad": "false"})
        assert isinstance(text, str) and text.endswith("\n")
    with pytest.raises(NotFoundError):
        sdk.models.retrieve("whisper-large-v9")


def test_models_and_metrics_need_the_key_when_one_is_set(tiny):
    with TestClient(create_app(tiny, ServerSettings(api_key=KEY))) as keyed:
        for path in ("/v1/models", "/v1/models/whisper-1", "/metrics"):
            assert keyed.get(path).status_code == 401
            assert keyed.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert keyed.get("/health").status_code == 200 and keyed.get("/docs").status_code == 200


def _samples(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def test_metrics_parse_and_move_with_a_request(client, wav):
    before = _samples(client)
    assert transcribe(client, wav).status_code == 200
    assert transcribe(client, b"not audio").status_code == 415
    after = _samples(client)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    route = "/v1/audio/transcriptions"
    assert moved("whisper_http_requests_total", method="POST", route=route, status="200") == 1
    assert moved("whisper_http_requests_total", method="POST", route=route, status="415") == 1
    assert moved("whisper_http_requests_total", method="GET", route="/metrics", status="200") == 1
    assert moved("whisper_http_request_seconds_count", route=route) == 2
    assert moved("whisper_audio_seconds_total") == 3.0
    assert moved("whisper_real_time_factor_count") == 1
    passes = 1 + moved("whisper_fallbacks_total")  # the random model may fail the loop guard: each fallback re-decodes
    assert moved("whisper_windows_decoded_total") == passes and moved("whisper_batch_windows_count") == passes
    assert moved("whisper_batch_windows_bucket", le="1.0") == passes
    assert moved("whisper_queue_wait_seconds_count") == 2  # the undecodable upload waited for a worker too
    assert after[("whisper_requests_in_flight", ())] == 0 and after[("whisper_requests_queued", ())] == 0
    assert after[("whisper_model_load_seconds", (("model", "asr"),))] > 0
    assert ("whisper_fallbacks_total", ()) in after


def test_docs_load_swagger_ui_from_the_server_only(client):
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert urls and not [url for url in urls if "//" in url]  # no CDN, no other host
    assets = [url for url in urls if url.startswith("/docs-assets/")]
    assert {"/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"} <= set(assets)
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert b"SwaggerUIBundle" in client.get("/docs-assets/swagger-ui-bundle.js").content


def test_unknown_form_fields_are_logged_once_per_request(client, wav, caplog):
    with caplog.at_level(logging.WARNING):
        response = transcribe(client, wav, chunking_strategy="auto", **{"include[]": "logprobs"},
                              max_line_width="30")
    assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if "unknown" in r.getMessage()]
    assert lines == ["ignoring unknown form fields: chunking_strategy, include[]"]


def test_subtitle_shaping_form_fields(client, wav, monkeypatch):
    import formats
    from speech_pipeline import Segment, Transcript, Word

    words = [Word(i * 0.3, i * 0.3 + 0.25, f" word{i}") for i in range(30)]
    long = Transcript(text="x", segments=[Segment(0.0, 9.0, "".join(w.text for w in words), words)], duration=9.0)
    monkeypatch.setattr("server.render", lambda transcript, *args, **kwargs: formats.render(long, *args, **kwargs))
    plain = list(srt.parse(transcribe(client, wav, response_format="srt").text))
    assert len(plain) == 1 and len(plain[0].content) == 199
    shaped = list(srt.parse(transcribe(client, wav, response_format="srt", max_line_width="32",
                                       max_line_count="2").text))
    assert len(shaped) > 1 and all(len(line) <= 32 for s in shaped for line in s.content.splitlines())
    assert all(len(s.content.splitlines()) <= 2 for s in shaped)
    highlighted = transcribe(client, wav, response_format="vtt", highlight_words="true").text
    assert highlighted.count("<u>") == 30
    bad = transcribe(client, wav, response_format="srt", max_line_width="0")
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "max_line_width"


@pytest.mark.parametrize("fields, field, message", [
    ({"known_speaker_names[]": ["Ann", "Bob"], "known_speaker_references[]": ["data:audio/wav;base64,AAAA"]},
     "known_speaker_references", "2 names but"),
    ({"known_speaker_names[]": ["A", "B", "C", "D", "E"], "known_speaker_references[]": ["x"] * 5},
     "known_speaker_names", "at most 4"),
    ({"known_speaker_names[]": ["Ann"], "known_speaker_references[]": ["data:audio/wav;base64,bm90IGF1ZGlv"]},
     "known_speaker_references", "known speaker 'Ann': could not decode audio"),
])
def test_known_speaker_fields_are_checked(client, wav, fields, field, message):
    response = transcribe(client, wav, **fields)
    error = response.json()["error"]  # OpenAI's error shape on /v1 routes
    assert response.status_code in (400, 415) and error["param"] == field and message in error["message"]


def test_known_speakers_need_diarization(client, wav):
    reference = "data:audio/wav;base64," + __import__("base64").b64encode(wav).decode()
    response = transcribe(client, wav, **{"known_speaker_names[]": "Ann", "known_speaker_references[]": reference})
    assert response.status_code == 400 and response.json()["error"]["param"] == "known_speaker_names"


def test_batch_histogram_counts_each_forward_pass():
    import metrics
    from prometheus_client import REGISTRY

    def count() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("whisper_batch_windows_sum"),
                REGISTRY.get_sample_value("whisper_batch_windows_count"))

    before = count()
    metrics.observe_batch(50, 24)  # passes of 24, 24 and 2 windows
    after = count()
    assert (after[0] - before[0], after[1] - before[1]) == (50, 3)
