"""The Inference Endpoints handler: loads its models from the environment and serves the contract."""

from conftest import b64

from handler import EndpointHandler


def test_handler_loads_from_env_and_serves_both_input_kinds(monkeypatch, tiny_models, speechlike):
    monkeypatch.setenv("ASR_MODEL", str(tiny_models["main"]))
    monkeypatch.setenv("ASSISTANT_MODEL", "")
    monkeypatch.setenv("DIARIZATION_MODEL", "")
    handler = EndpointHandler()
    params = {"vad": False}
    from_b64 = handler({"inputs": b64(speechlike), "parameters": params})
    from_bytes = handler({"inputs": speechlike, "parameters": params})
    assert from_b64 == from_bytes
    assert set(from_b64) >= {"text", "chunks", "speakers"} and from_b64["speakers"] == []
    assert from_b64["text"] == "".join(c["text"] for c in from_b64["chunks"]).strip()
