"""scripts/client.py against a canned contract server on 127.0.0.1 (loopback only), through both HTTP clients."""

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import SAMPLE

from scripts import client

RESPONSE = {
    "text": "Hello and welcome. This is a test.",
    "chunks": [{"timestamp": [0.0, 1.52], "text": " Hello and welcome.", "speaker": "SPEAKER_00"},
               {"timestamp": [1.52, None], "text": " This is a test.", "speaker": "SPEAKER_01"}],
    "speakers": [{"speaker": "SPEAKER_00", "timestamp": [0.0, 1.52], "text": " Hello and welcome."},
                 {"speaker": "SPEAKER_01", "timestamp": [1.52, 3.2], "text": " This is a test."}],
    "language": "en",
    "duration": 3.2,
}


@pytest.fixture(scope="module")
def server():
    """A tiny HTTP server answering the JSON contract: POST /predict -> RESPONSE, anything else -> 400."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                         "body": body})
            status, answer = (200, RESPONSE) if self.path == "/predict" else (400, {"error": "inputs is missing"})
            headers = {}
            if self.path.startswith("/waking"):  # /waking/N/RETRY_AFTER: 503 for the first N calls (scaled to zero)
                _, _, calls, retry_after = self.path.split("/")
                waking = sum(1 for request in seen if request["path"] == self.path) <= int(calls)
                status, answer = (503, {"error": "the endpoint is starting"}) if waking else (200, RESPONSE)
                headers = {"Retry-After": retry_after} if waking and retry_after != "none" else {}
            data = json.dumps(answer).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_tokens(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("API_KEY", raising=False)
    # conftest sets HF_HUB_OFFLINE, which blocks InferenceClient too; here its only target is the loopback server
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)


@pytest.mark.parametrize("via", ["requests", "hf"])
def test_sends_the_json_contract_and_prints_the_text(server, capsys, monkeypatch, via):
    url, seen = server
    monkeypatch.setenv("HF_TOKEN", "hf_clienttesttoken")
    seen.clear()
    code = client.main([str(SAMPLE), "--url", f"{url}/predict", "--via", via, "--parameters", '{"language": "en"}'])
    assert code == 0
    assert capsys.readouterr().out.strip() == RESPONSE["text"]
    (request,) = seen
    body = json.loads(request["body"])
    assert base64.b64decode(body["inputs"]) == SAMPLE.read_bytes()
    assert body["parameters"] == {"language": "en"}
    assert request["headers"]["authorization"] == "Bearer hf_clienttesttoken"
    assert request["headers"]["content-type"].startswith("application/json")


@pytest.mark.parametrize("via", ["requests", "hf"])
def test_without_parameters_the_body_is_still_the_json_contract(server, capsys, via):
    url, seen = server
    seen.clear()
    assert client.main([str(SAMPLE), "--url", f"{url}/predict", "--via", via]) == 0
    body = json.loads(seen[0]["body"])
    assert base64.b64decode(body["inputs"]) == SAMPLE.read_bytes() and isinstance(body["parameters"], dict)
    assert "authorization" not in seen[0]["headers"]  # no token in the environment: none is sent


def test_api_key_is_the_fallback_token(server, capsys, monkeypatch):
    url, seen = server
    monkeypatch.setenv("API_KEY", "local-key")
    seen.clear()
    assert client.main([str(SAMPLE), "--url", f"{url}/predict"]) == 0
    assert seen[0]["headers"]["authorization"] == "Bearer local-key"


@pytest.mark.parametrize("via", ["requests", "hf"])
def test_srt_and_vtt_carry_speaker_labels(server, capsys, via):
    url, _ = server
    assert client.main([str(SAMPLE), "--url", f"{url}/predict", "--via", via, "--format", "srt"]) == 0
    assert capsys.readouterr().out == (
        "1\n00:00:00,000 --> 00:00:01,520\n[SPEAKER_00] Hello and welcome.\n\n"
        "2\n00:00:01,520 --> 00:00:03,200\n[SPEAKER_01] This is a test.\n\n")  # an open end: the audio's
    assert client.main([str(SAMPLE), "--url", f"{url}/predict", "--via", via, "--format", "vtt"]) == 0
    assert capsys.readouterr().out == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.520\n[SPEAKER_00] Hello and welcome.\n\n"
        "00:00:01.520 --> 00:00:03.200\n[SPEAKER_01] This is a test.\n\n")


def test_json_output_keeps_every_field_through_both_clients(server, capsys):
    url, _ = server
    for via in ("requests", "hf"):
        assert client.main([str(SAMPLE), "--url", f"{url}/predict", "--via", via, "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out) == RESPONSE


def test_without_speakers_subtitles_have_no_labels():
    response = {**RESPONSE, "chunks": [{k: v for k, v in c.items() if k != "speaker"} for c in RESPONSE["chunks"]],
                "speakers": []}
    assert client.render(response, "srt") == (
        "1\n00:00:00,000 --> 00:00:01,520\nHello and welcome.\n\n"
        "2\n00:00:01,520 --> 00:00:03,200\nThis is a test.\n")  # an open end runs to the end of the audio
    assert client.render({"text": "", "chunks": [], "speakers": []}, "vtt") == "WEBVTT\n"
    odd = {"chunks": [{"timestamp": [0.0, 1.0], "text": " a <b> &\n\n c --> d"}]}
    assert client.render(odd, "vtt") == "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na &lt;b&gt; &amp; c -&gt; d\n"


@pytest.mark.parametrize("via", ["requests", "hf"])
def test_http_errors_exit_1_with_the_message(server, capsys, via):
    url, _ = server
    assert client.main([str(SAMPLE), "--url", f"{url}/wrong", "--via", via]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "inputs is missing" in captured.err  # the server's own message


@pytest.mark.parametrize("argv, message", [
    (["--parameters", "{nope"], "not JSON"),
    (["--parameters", "[1]"], "JSON object"),
    (["--via", "curl"], "invalid choice"),
    (["--format", "txt"], "invalid choice"),
])
def test_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        client.main([str(SAMPLE), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_missing_file(capsys, tmp_path):
    with pytest.raises(SystemExit):
        client.main([str(tmp_path / "none.wav")])
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("via", ["requests", "hf"])
def test_a_waking_endpoint_is_waited_for_as_retry_after_says(server, capsys, via):
    url, seen = server
    seen.clear()
    started = time.monotonic()
    assert client.main([str(SAMPLE), "--url", f"{url}/waking/2/1", "--via", via, "--max-wait", "10"]) == 0
    # it waited (two 503s, each with Retry-After: 1); no upper bound: a loaded machine only makes it slower
    assert time.monotonic() - started >= 2.0
    captured = capsys.readouterr()
    assert captured.out.strip() == RESPONSE["text"] and len(seen) == 3
    assert captured.err.count("HTTP 503 (the endpoint is starting or busy): retrying in 1 s") == 2


def test_retries_stop_after_max_wait_with_the_last_answer(server, capsys):
    url, seen = server
    seen.clear()
    assert client.main([str(SAMPLE), "--url", f"{url}/waking/99/1", "--max-wait", "2"]) == 1
    assert len(seen) == 3
    err = capsys.readouterr().err
    assert "HTTP 503" in err and "the endpoint is starting" in err and "after 2 s of retries" in err


def test_without_retry_after_the_client_backs_off_within_the_bound():
    delays, answers = [], iter([client.Retryable(503, None, "x")] * 5)

    def send():
        error = next(answers, None)
        if error:
            raise error
        return {"text": "ok"}

    assert client.with_retries(send, max_wait=40, sleep=delays.append) == {"text": "ok"}
    assert delays == [2, 4, 8, 16, 10]  # doubling, cut to what is left of max_wait
    with pytest.raises(RuntimeError, match="after 40 s of retries"):
        client.with_retries(lambda: (_ for _ in ()).throw(client.Retryable(429, 60, "busy")), 40, delays.append)


def test_retry_after_as_seconds_or_http_date():
    assert client.retry_after_seconds("7") == 7.0
    assert client.retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412500.0) == 10.0
    assert client.retry_after_seconds("soon") is None and client.retry_after_seconds(None) is None
