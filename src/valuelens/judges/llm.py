"""The LLM judge: ask a chat model, for each (text, value), whether the text expresses the value.

>>> from valuelens.judges.llm import parse_yes_no
>>> parse_yes_no("Yes, it clearly does."), parse_yes_no("**No**"), parse_yes_no("maybe")
(True, False, None)

Every (text, value) pair is one chat (all pairs of a call are sent to the backend in one batch): the system prompt
states the task and asks for a one-word answer; the user message gives the value's name and definition
(:mod:`valuelens.values`), the user's request when ``contexts`` are given and ``use_context`` is on, and the
response. The answer is read by :func:`parse_yes_no`; anything else (empty, "maybe", both yes and no at the
start) is **invalid**: ``valid=False``, label False, score NaN, so it is never counted as "does not express".
The score is 1.0 for yes and 0.0 for no (no probabilities: OpenAI-compatible servers do not all return them).

``backend`` is a :class:`~valuelens.backends.ChatBackend`; or ``backend_spec`` a spec string
(``local:smollm2``, ``openai:URL#model``); default ``$VALUELENS_LLM_JUDGE`` or ``local:smollm2``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backends import ChatBackend, ChatRequest, make_backend
from ..errors import ConfigError
from ..values import SchwartzValue
from .base import Judge, JudgeResult, register_judge

__all__ = ["JUDGE_SYSTEM_PROMPT", "LLMJudge", "parse_yes_no"]

JUDGE_SYSTEM_PROMPT = ("You are a careful annotator of human values (Schwartz's theory of basic values). You read "
                       "a response and decide whether it expresses a given value: whether the response itself "
                       "promotes, prioritises or appeals to that value. Answer with one word: Yes or No.")

_FIRST_RE = re.compile(r"(?<![a-z])(yes|yeah|yep|true|no|nope|false)(?![a-z])", re.I)


def parse_yes_no(text: str) -> bool | None:
    """True for yes, False for no, None when the answer says neither (or starts with both)."""
    if not isinstance(text, str):
        return None
    t = text.strip().lower()
    t = re.sub(r"^(answer|final answer|judgement|judgment|label)\s*[:=-]\s*", "", t)
    t = t.lstrip(" *_\"'`([{-:>")
    if not t:
        return None
    head = re.match(r"(yes|no|true|false|y|n)(?![a-z])", t)
    if head:
        return head.group(1) in ("yes", "true", "y")
    first = t[:200]
    if re.search(r"(?<![a-z])(does not|doesn't|not) express", first):
        return False
    if re.search(r"(?<![a-z])(does )?express(es)?(?![a-z])", first):
        return True
    m = _FIRST_RE.search(first)
    if not m:
        return None
    return m.group(1).lower() in ("yes", "yeah", "yep", "true")


@register_judge("llm")
class LLMJudge(Judge):
    """Judge backed by a chat model (local or OpenAI-compatible). See the module notes."""

    name = "llm"

    def __init__(self, backend: ChatBackend | None = None, *, backend_spec: str | None = None,
                 max_tokens: int = 8, temperature: float = 0.0, seed: int = 0, use_context: bool = True,
                 max_chars: int = 2000, system_prompt: str = JUDGE_SYSTEM_PROMPT) -> None:
        if backend is not None and backend_spec is not None:
            raise ConfigError("give LLMJudge either backend or backend_spec, not both")
        if backend is None:
            spec = backend_spec or os.environ.get("VALUELENS_LLM_JUDGE") or "local:smollm2"
            backend = make_backend(spec)
        elif isinstance(backend, str):
            backend = make_backend(backend)
        self.backend = backend
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.use_context = use_context
        self.max_chars = max_chars
        self.system_prompt = system_prompt
        self.stats = {"n": 0, "invalid": 0, "yes": 0}

    def user_prompt(self, text: str, value: SchwartzValue, context: str | None = None) -> str:
        parts = [f"Value: {value.name}. Definition: {value.definition}", ""]
        if context is not None and self.use_context:
            parts += [f'User request: """{context[: self.max_chars]}"""', ""]
        parts += [f'Response: """{text[: self.max_chars]}"""', "",
                  f"Does the response express the value {value.name}? Answer Yes or No."]
        return "\n".join(parts)

    def judge_batch(self, texts: Sequence[str], values: Sequence[SchwartzValue],
                    contexts: Sequence[str] | None = None) -> JudgeResult:
        n, v = len(texts), len(values)
        reqs = [ChatRequest(user=self.user_prompt(t, val, None if contexts is None else contexts[i]),
                            system=self.system_prompt, max_tokens=self.max_tokens, temperature=self.temperature,
                            seed=self.seed)
                for i, t in enumerate(texts) for val in values]
        responses = self.backend.complete(reqs) if reqs else []
        labels = np.zeros((n, v), dtype=bool)
        valid = np.zeros((n, v), dtype=bool)
        scores = np.full((n, v), np.nan)
        raw: list[Any] = [{} for _ in range(n)]
        for k, r in enumerate(responses):
            i, j = divmod(k, v)
            ans = parse_yes_no(r.text)
            raw[i][values[j].name] = r.text
            if ans is None:
                self.stats["invalid"] += 1
            else:
                valid[i, j] = True
                labels[i, j] = ans
                scores[i, j] = 1.0 if ans else 0.0
                self.stats["yes"] += int(ans)
            self.stats["n"] += 1
        return JudgeResult(values=list(values), labels=labels, scores=scores, valid=valid, raw=raw)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend.describe(), "max_tokens": self.max_tokens,
                "temperature": self.temperature, "seed": self.seed, "use_context": self.use_context,
                "system_prompt_sha256": hashlib.sha256(self.system_prompt.encode()).hexdigest(),
                "stats": dict(self.stats)}
