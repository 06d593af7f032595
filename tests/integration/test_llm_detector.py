"""LLMDetector and LLMJudge end to end: through the real llama.cpp server on loopback and through the local
embedded SmolLM2 (shapes, parse statistics, determinism at temperature 0). SmolLM2-135M is far too small to
detect values well; these tests check the plumbing, not the quality (docs/llm.md reports the scores)."""

from __future__ import annotations

import numpy as np
import pytest

from valuelens.backends import LocalBackend, OpenAIBackend
from valuelens.detect.data import load_split
from valuelens.detect.llm import LLMDetector
from valuelens.judges import get_judge
from valuelens.judges.llm import LLMJudge
from valuelens.serve import llama_server

pytestmark = pytest.mark.integration

TEXTS = ["Family comes first: I visit my parents every Sunday and help them with whatever they need.",
         "Go skydiving! Life is too short to stay at home; chase every new thrill you can find.",
         "Follow the rules of the road; they keep everyone safe."]


@pytest.fixture(scope="module")
def server_backend():
    with llama_server("smollm2", n_ctx=4096, n_threads=1) as url:
        # One request at a time: llama.cpp reuses the cached prefix of the previous request, and a different
        # cache state can change the last bits of the logits; in a fixed order the same state recurs.
        yield OpenAIBackend(f"{url}/v1", "smollm2", concurrency=1)


@pytest.fixture(scope="module")
def five_arguments(valueeval_dir):
    return load_split(valueeval_dir, "validation").head(5)


def _check_predictions(det: LLMDetector, pred: np.ndarray, n: int) -> None:
    assert pred.shape == (n, 20) and pred.dtype == np.int64 and set(np.unique(pred)) <= {0, 1}
    stats = det.describe()["parse"]
    assert stats["n"] >= n and 0 <= stats["unparsable"] <= stats["n"]
    assert len(det.last_raw) == n and all("text" in r for r in det.last_raw)


def test_detector_zero_shot_through_server_is_deterministic(server_backend, five_arguments, valueeval_dir) -> None:
    det = LLMDetector(server_backend, shots=0, data_dir=valueeval_dir, max_tokens=16)
    args = five_arguments.arguments[:3]
    det.predict(args)  # leaves the server's prompt cache as the next two runs will find it
    a = det.predict(args)
    _check_predictions(det, a, 3)
    raw_a = [r["text"] for r in det.last_raw]
    b = det.predict(args)
    assert np.array_equal(a, b) and raw_a == [r["text"] for r in det.last_raw]
    d = det.describe()
    assert d["backend"]["backend"] == "openai" and d["parse"]["n"] == 9
    assert d["descriptions"] == "value-categories.json"


def test_detector_few_shot_cot_through_server(server_backend, five_arguments, valueeval_dir) -> None:
    det = LLMDetector(server_backend, shots=2, cot=True, data_dir=valueeval_dir, max_tokens=32)
    pred = det.predict(five_arguments.arguments[:2])
    _check_predictions(det, pred, 2)
    d = det.describe()
    assert d["cot"] and len(d["example_ids"]) == 2 and d["parse"]["no_marker"] <= 2


def test_llm_judge_through_server(server_backend) -> None:
    judge = get_judge("llm", backend=server_backend, max_tokens=3)
    assert isinstance(judge, LLMJudge)
    texts = TEXTS[:2]
    judge.judge(texts, ["benevolence", "stimulation"])  # same cache state before the two compared runs
    res = judge.judge(texts, ["benevolence", "stimulation"])
    assert res.labels.shape == res.valid.shape == res.scores.shape == (2, 2)
    assert np.isnan(res.scores[~res.valid]).all() and set(np.unique(res.scores[res.valid])) <= {0.0, 1.0}
    assert len(res.raw) == 2 and set(res.raw[0]) == {"Benevolence", "Stimulation"}
    again = judge.judge(texts, ["benevolence", "stimulation"])
    assert np.array_equal(res.labels, again.labels) and np.array_equal(res.valid, again.valid)
    assert judge.describe()["stats"]["n"] == 12


def test_detector_and_judge_with_local_backend(smollm2, five_arguments, valueeval_dir) -> None:
    backend = LocalBackend(smollm2, batch_size=4, bf16=True)  # bf16 autocast: ~2x faster generation on CPU
    det = LLMDetector(backend, shots=0, data_dir=valueeval_dir, max_tokens=6)
    args = five_arguments.arguments[:2]
    a = det.predict(args)
    _check_predictions(det, a, 2)
    assert det.describe()["backend"]["backend"] == "local"
    judge = LLMJudge(backend, max_tokens=3)
    res = judge.judge(TEXTS[:1], ["benevolence", "stimulation"])
    assert res.labels.shape == (1, 2)
    assert judge.describe()["backend"]["name"] == "smollm2"


def test_local_backend_chats_and_system_modes(smollm2) -> None:
    from valuelens.backends import ChatRequest

    reqs = [ChatRequest(user="Say hi.", max_tokens=3), ChatRequest(user="Say hi.", system="Be terse.", max_tokens=3)]
    default = LocalBackend(smollm2).complete(reqs)
    assert all(r.text and r.finish_reason in ("stop", "length") for r in default)
    assert default[0].prompt["system_mode"] == "template-default" and default[1].prompt["system"] == "Be terse."
    none = LocalBackend(smollm2, no_system="none").complete([ChatRequest(user="Say hi.", max_tokens=1)])[0]
    assert none.prompt["system_mode"] == "none" and "SmolLM" not in none.prompt["text"]
