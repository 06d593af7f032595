"""The HTTP layer of the steering server on a tiny random model, in-process on loopback: SSE framing, CORS,
limits (413 without reading the body, 411), routes, the API key on every route but /health, chat rendering
without a system turn."""

from __future__ import annotations

import http.client
import json

import pytest
import torch

from valuelens.models import NO_SYSTEM
from valuelens.serving.artifacts import VectorArtifact
from valuelens.serving.server import ServerConfig, SteeringServer, render_messages
from valuelens.serving.steering import SteerBank
from valuelens.testing import tiny_chat_lm
from valuelens.vectors import ValueVectors


@pytest.fixture(scope="module")
def srv():
    lm = tiny_chat_lm(seed=5)
    vv = ValueVectors(model_hash=lm.model_hash, n_layers=4, d_model=64, layers=[1, 2])
    vv.set("Tradition", "prompted", torch.randn(2, 64, generator=torch.Generator().manual_seed(0)))
    art = VectorArtifact(vv, model_id="tiny", default_layer=2, residual_norms=[5.0] * 4)
    cfg = ServerConfig(model_name="tiny", port=0, api_key="k", max_request_bytes=2000, max_tokens_limit=16,
                       cors=True)
    with SteeringServer(lm, SteerBank(art, art.residual_norms, 4), cfg) as s:
        yield s


def _req(srv, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    host, port = srv.httpd.server_address[:2]
    c = http.client.HTTPConnection(host, port, timeout=60)
    h = {"Authorization": "Bearer k", "Content-Type": "application/json", **(headers or {})}
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict(r.getheaders()), data


def test_sse_stream_framing_and_cors(srv) -> None:
    body = json.dumps({"model": "tiny+tradition@0.5", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 5, "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    status, headers, data = _req(srv, "POST", "/v1/chat/completions", body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert headers["Access-Control-Allow-Origin"] == "*"
    events = [e[len("data: "):] for e in data.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-2]["valuelens"]["steer"] == [{"value": "Tradition", "kind": "prompted", "layer": 2,
                                                 "alpha": 0.5}]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    status, headers, _ = _req(srv, "OPTIONS", "/v1/chat/completions")
    assert status == 204 and "Authorization" in headers["Access-Control-Allow-Headers"]


def test_limits_routes_and_key(srv) -> None:
    status, headers, data = _req(srv, "POST", "/v1/chat/completions", b"x" * 5000)
    assert status == 413 and json.loads(data)["error"]["code"] == "request_too_large"
    assert headers.get("Connection") == "close"
    status, _, data = _req(srv, "POST", "/v1/embeddings", b"{}")
    assert status == 404 and json.loads(data)["error"]["code"] == "not_found"
    status, _, data = _req(srv, "GET", "/v1/models", headers={"Authorization": "Bearer nope"})
    assert status == 401 and json.loads(data)["error"]["code"] == "invalid_api_key"
    status, _, data = _req(srv, "GET", "/health", headers={"Authorization": ""})
    assert status == 200 and json.loads(data)["status"] == "ok"
    status, _, data = _req(srv, "GET", "/v1/models/tiny+tradition@0.1")
    assert status == 200 and json.loads(data)["valuelens"]["steer"][0]["value"] == "Tradition"
    for bad in ({"n": 2}, {"logprobs": True}, {"stop": ["a"] * 5}, {"temperature": 3}, {"top_p": 0},
                {"max_tokens": 0}, {"seed": "x"}, {"messages": [{"role": "tool", "content": "x"}]}):
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **bad}
        status, _, data = _req(srv, "POST", "/v1/chat/completions", json.dumps(body).encode())
        assert status == 400, bad
        assert json.loads(data)["error"]["param"] is not None
    ok, _, data = _req(srv, "POST", "/v1/completions", json.dumps(
        {"model": "tiny", "prompt": ["abc"], "max_tokens": 3, "temperature": 0}).encode())
    assert ok == 200 and json.loads(data)["object"] == "text_completion"


def test_render_without_system_turn(srv) -> None:
    lm = srv.lm
    one = [{"role": "user", "content": "Hello"}]
    assert render_messages(lm, one, "none") == lm.chat.render("Hello", NO_SYSTEM).text
    multi = [*one, {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Again"}]
    text = render_messages(lm, multi, "none")
    assert "Hi!" in text and text.endswith("<|im_start|>assistant\n") and "system" not in text
    assert render_messages(lm, [{"role": "system", "content": "S"}, *one], "none").startswith(
        "<|im_start|>system\nS")
