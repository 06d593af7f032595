"""The steering server as a real process on loopback (``valuelens serve --vectors``), driven by the official
``openai`` client: steered output equals the library's steered ``generate_batch`` (greedy), unsteered equals
plain, streaming equals non-streaming, concurrent steered and unsteered requests share batches without changing
each other's tokens, and bad requests get 4xx JSON errors while the server keeps serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

KEY = "test-key-not-secret"
PROMPTS = ["What should I do this weekend?", "Give me one tip for cooking rice."]
ALPHA = 0.3
N = 16


@pytest.fixture(scope="module")
def vectors(smollm2, tmp_path_factory) -> Path:
    from valuelens.evals.capability import residual_norms
    from valuelens.evals.items import load_heldout_text
    from valuelens.serving.quick import quick_vectors

    paras = [p for p in load_heldout_text().split("\n\n") if p.strip()][:4]
    norms = [float(x) for x in residual_norms(smollm2, paras, max_length=64)]
    art = quick_vectors(smollm2, ("Benevolence", "Power"), n_queries=4, layers=[10, 15, 20], default_layer=15,
                        norms=norms)
    art.guard_alpha = 0.1
    return art.save_pretrained(tmp_path_factory.mktemp("serving") / "vectors")


@pytest.fixture(scope="module")
def server(vectors: Path):
    env = {**os.environ, "VALUELENS_API_KEY": KEY, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "valuelens.cli", "serve", "--model", "smollm2", "--vectors", str(vectors),
           "--port", "0", "--threads", "1", "--max-batch", "8", "--max-tokens-limit", "64",
           "--max-prompt-tokens", "120", "--max-request-bytes", "20000", "--batch-window-ms", "50"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("url: "):
            proc.kill()
            pytest.fail(f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        url = line.split()[1]
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if json.loads(r.read())["status"] == "ok":
                        break
            except OSError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def client(server: str):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def reference(smollm2, vectors: Path) -> dict[str, list[list[int]]]:
    """What the library generates: plain, and steered by Benevolence (prompted) at α, greedy."""
    from valuelens.generate import GenerationConfig, generate_batch
    from valuelens.serving.artifacts import VectorArtifact

    art = VectorArtifact.load(vectors)
    cfg = GenerationConfig(max_new_tokens=N)
    texts = [smollm2.chat.render(p).text for p in PROMPTS]
    steer = [art.steer("Benevolence", "prompted", ALPHA)]
    return {"plain": [generate_batch(smollm2, [t], cfg)[0]["response_ids"] for t in texts],
            "steered": [generate_batch(smollm2, [t], cfg, interventions=steer)[0]["response_ids"] for t in texts]}


def _chat(client, prompt: str, **kw):
    return client.chat.completions.create(messages=[{"role": "user", "content": prompt}], temperature=0,
                                          max_tokens=N, **kw)


def test_models_lists_the_steering_aliases(client) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == ["smollm2", "smollm2+power@0.1", "smollm2+benevolence@0.1"]


def test_steered_and_plain_equal_the_library(client, reference, smollm2) -> None:
    assert reference["plain"] != reference["steered"]  # the steer changes what SmolLM2 says
    for i, p in enumerate(PROMPTS):
        plain = _chat(client, p, model="smollm2", extra_body={"return_token_ids": True})
        assert plain.choices[0].model_extra["token_ids"] == reference["plain"][i]
        assert plain.choices[0].message.content.strip() == smollm2.tokenizer.decode(
            reference["plain"][i], skip_special_tokens=True).strip()
        assert plain.usage.completion_tokens == len(reference["plain"][i])
        body = _chat(client, p, model="smollm2", extra_body={
            "return_token_ids": True, "steer": {"value": "Benevolence", "kind": "prompted", "alpha": ALPHA}})
        alias = _chat(client, p, model=f"smollm2+benevolence@{ALPHA}", extra_body={"return_token_ids": True})
        for r in (body, alias):
            assert r.choices[0].model_extra["token_ids"] == reference["steered"][i]
            assert r.model_extra["valuelens"]["steer"] == [
                {"value": "Benevolence", "kind": "prompted", "layer": 15, "alpha": ALPHA}]
        stream = _chat(client, p, model=f"smollm2+benevolence@{ALPHA}", stream=True,
                       stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == alias.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == len(reference["steered"][i])
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_concurrent_steered_and_plain_rows_share_batches(client, reference) -> None:
    out: dict[int, object] = {}

    def ask(k: int) -> None:
        i, steered = k % 2, k >= 2
        model = f"smollm2+benevolence@{ALPHA}" if steered else "smollm2"
        out[k] = _chat(client, PROMPTS[i], model=model, extra_body={"return_token_ids": True})

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, r in out.items():
        want = reference["steered" if k >= 2 else "plain"][k % 2]
        assert r.choices[0].model_extra["token_ids"] == want, k
    assert max(r.model_extra["valuelens"]["batch_rows_max"] for r in out.values()) >= 2


def _raw(url: str, body: bytes, key: str | None = KEY, path: str = "/v1/chat/completions",
         headers: dict[str, str] | None = None) -> tuple[int, dict]:
    h = {"Content-Type": "application/json", **(headers or {})}
    if key:
        h["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + path, data=body, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server: str, client) -> None:
    import openai

    good = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                       "temperature": 0}).encode()
    long_prompt = "word " * 400
    cases = [
        (b"{not json", KEY, 400, None),
        (json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}],
                     "steer": {"value": "Kindness", "alpha": 0.1}}).encode(), KEY, 400, "unknown_value"),
        (json.dumps({"model": "smollm2+power@5", "messages": [{"role": "user", "content": "hi"}]}).encode(), KEY,
         400, "alpha_out_of_range"),
        (json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": long_prompt}]}).encode(), KEY,
         400, "context_length_exceeded"),
        (json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}],
                     "max_tokens": 1000}).encode(), KEY, 400, None),
        (json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode(), KEY, 404,
         "model_not_found"),
        (good, "wrong-key", 401, "invalid_api_key"),
        (good, None, 401, "invalid_api_key"),
        (json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "x" * 30000}]}).encode(), KEY,
         413, "request_too_large"),
        (json.dumps({"model": "smollm2", "messages": "hello"}).encode(), KEY, 400, None),
    ]
    for body, key, status, code in cases:
        got, err = _raw(server, body, key)
        assert got == status, (body[:60], err)
        assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["message"]
        if code:
            assert err["error"]["code"] == code
        ok, resp = _raw(server, good)  # still serving
        assert ok == 200 and resp["choices"][0]["message"]["role"] == "assistant"
    with pytest.raises(openai.AuthenticationError):
        type(client)(base_url=server + "/v1", api_key="nope", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])


def test_completions_endpoint_and_stop(client) -> None:
    r = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert "Paris" in r.choices[0].text
    s = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0,
                                  stop=["Paris"])
    assert "Paris" not in s.choices[0].text and s.choices[0].finish_reason == "stop"
