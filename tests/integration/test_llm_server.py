"""OpenAIBackend against a REAL OpenAI-compatible server: llama.cpp (xllamacpp wheel) serving the embedded
SmolLM2 GGUF on loopback, started by the test. No mocks."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from valuelens.backends import BackendError, ChatRequest, OpenAIBackend, make_backend
from valuelens.serve import llama_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server_url():
    # One thread: llama.cpp threads spin-wait, and on a busy 2-core machine two of them can be 10x slower.
    with llama_server("smollm2", n_ctx=2048, n_threads=1) as url:
        yield url


def test_chats_through_the_server(server_url: str) -> None:
    b = make_backend(f"openai:{server_url}/v1#smollm2")
    reqs = [ChatRequest(user="Name one colour.", max_tokens=3),
            ChatRequest(user="Say the word yes.", system="Answer with one word.", max_tokens=8),
            ChatRequest(user="Count from one to three.", max_tokens=12, seed=7)]
    out = b.complete(reqs)
    assert len(out) == 3
    for r, q in zip(out, reqs, strict=True):
        assert r.text.strip(), r
        assert r.finish_reason in ("stop", "length")
        assert r.prompt["messages"][-1]["content"] == q.user  # audit: the exact payload
    assert out[0].finish_reason == "length"  # 3 tokens cannot finish a sentence
    assert out[1].prompt["messages"][0] == {"role": "system", "content": "Answer with one word."}


def test_deterministic_at_temperature_zero(server_url: str) -> None:
    b = OpenAIBackend(server_url, "smollm2", concurrency=3)  # base URL without /v1 works too
    reqs = [ChatRequest(user=f"Give a short tip about {t}.", max_tokens=10, seed=1) for t in ("sleep", "tea")]
    assert [r.text for r in b.complete(reqs)] == [r.text for r in b.complete(reqs)]


def test_wrong_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "smollm2", max_retries=1, backoff=0.01)
    with pytest.raises(BackendError, match=rf"cannot reach the server at http://127.0.0.1:{port}/v1"):
        b.complete([ChatRequest(user="hi")])


def test_bad_path_gives_http_404_with_body_excerpt(server_url: str) -> None:
    b = OpenAIBackend(f"{server_url}/no/such/path/chat/completions", "smollm2", max_retries=3)
    with pytest.raises(BackendError) as err:
        b.complete([ChatRequest(user="hi", max_tokens=2)])
    msg = str(err.value)
    assert msg.startswith("HTTP 404 from ") and "Not Found" in msg and "\n" not in msg
    assert "attempts" not in msg  # a 404 is not retried


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "vl-test-key-8c1f"
    with llama_server("smollm2", n_ctx=512, n_threads=1, api_keys=[secret]) as url:
        b = OpenAIBackend(f"{url}/v1", "smollm2", api_key_env="VL_TEST_KEY", max_retries=0)
        monkeypatch.delenv("VL_TEST_KEY", raising=False)
        with pytest.raises(BackendError, match="HTTP 401") as err:
            b.complete([ChatRequest(user="hi", max_tokens=2)])
        assert secret not in str(err.value)
        monkeypatch.setenv("VL_TEST_KEY", secret)
        r = b.complete([ChatRequest(user="hi", max_tokens=2)])[0]
        assert r.text and secret not in json.dumps(r.to_dict()) and secret not in json.dumps(b.describe())


def test_server_stops_on_exit() -> None:
    with llama_server("smollm2", n_ctx=256, n_threads=1) as url, \
            urllib.request.urlopen(url + "/health", timeout=10) as resp:
        assert resp.status == 200
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
