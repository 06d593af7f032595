"""Backend specs, request validation, secrets kept out of describe(), connection errors (no server needed)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from valuelens.backends import (
    BackendError,
    ChatBackend,
    ChatRequest,
    OpenAIBackend,
    make_backend,
    parse_backend_spec,
)
from valuelens.errors import ConfigError, ValuelensError


def test_parse_local_and_openai_specs() -> None:
    assert parse_backend_spec("local:smollm2") == ("local", {"model": "smollm2"})
    assert parse_backend_spec("local:/models/x.gguf") == ("local", {"model": "/models/x.gguf"})
    kind, args = parse_backend_spec("openai:http://127.0.0.1:8080/v1#smollm2")
    assert kind == "openai" and args == {"base_url": "http://127.0.0.1:8080/v1", "model": "smollm2"}
    # The model name is after the last '#'; URLs with ports and paths survive.
    assert parse_backend_spec("OpenAI:https://api.example.org/v1#gpt-4o-mini")[1]["model"] == "gpt-4o-mini"


@pytest.mark.parametrize("spec", ["smollm2", "local:", "openai:http://x:1/v1", "openai:http://x:1/v1#",
                                  "openai:ftp://x/v1#m", "openai:#m", "hf:gpt2", "", "mystery:thing"])
def test_bad_specs_list_the_forms(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_backend_spec(spec)
    msg = str(err.value)
    assert "local:" in msg and "openai:<base_url>#<model>" in msg
    assert "\n" not in msg


def test_make_backend_openai_and_passthrough() -> None:
    b = make_backend("openai:http://127.0.0.1:9/v1#m", max_retries=0, concurrency=2)
    assert isinstance(b, OpenAIBackend) and isinstance(b, ChatBackend)
    assert b.url == "http://127.0.0.1:9/v1/chat/completions"
    assert make_backend(b) is b
    with pytest.raises(ConfigError):
        make_backend(42)  # type: ignore[arg-type]


def test_chat_url_forms() -> None:
    assert OpenAIBackend("http://h:1", "m").url == "http://h:1/v1/chat/completions"
    assert OpenAIBackend("http://h:1/v1/", "m").url == "http://h:1/v1/chat/completions"
    assert OpenAIBackend("http://h:1/v1/chat/completions", "m").url == "http://h:1/v1/chat/completions"
    with pytest.raises(ConfigError):
        OpenAIBackend("h:1", "m")
    with pytest.raises(ConfigError):
        OpenAIBackend("http://h:1", "")


def test_request_validation_and_payload() -> None:
    with pytest.raises(ConfigError):
        ChatRequest(user="x", max_tokens=0)
    with pytest.raises(ConfigError):
        ChatRequest(user="x", temperature=-1)
    b = OpenAIBackend("http://h:1/v1", "m")
    p = b.payload(ChatRequest(user="hi", system="be brief", max_tokens=5, seed=3))
    assert p["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert (p["max_tokens"], p["temperature"], p["seed"], p["model"]) == (5, 0.0, 3, "m")
    # No system turn when system is None.
    assert b.payload(ChatRequest(user="hi"))["messages"] == [{"role": "user", "content": "hi"}]


def test_api_key_never_in_describe_payload_or_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-DO-NOT-LEAK-123456"
    monkeypatch.setenv("VL_TEST_KEY", secret)
    b = OpenAIBackend("http://user:pw@127.0.0.1:9/v1", "m", api_key_env="VL_TEST_KEY")
    d = json.dumps(b.describe())
    assert secret not in d and "pw" not in d and "VL_TEST_KEY" in d
    assert secret not in json.dumps(b.payload(ChatRequest(user="x")))
    assert secret not in json.dumps(vars(b))  # not stored on the object either
    assert b._headers()["Authorization"] == f"Bearer {secret}"  # only read at request time
    monkeypatch.delenv("VL_TEST_KEY")
    assert "Authorization" not in b._headers()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_clear_line_after_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-unreachable-secret"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    port = _free_port()
    b = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff=0.01)
    t0 = time.time()
    with pytest.raises(BackendError) as err:
        b.complete([ChatRequest(user="hi"), ChatRequest(user="ho")])
    msg = str(err.value)
    assert isinstance(err.value, ValuelensError)
    assert f"127.0.0.1:{port}" in msg and "cannot reach" in msg and "after 3 attempts" in msg
    assert "\n" not in msg and secret not in msg
    assert time.time() - t0 < 10
