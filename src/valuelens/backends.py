"""Chat backends: one interface for a local model and any OpenAI-compatible HTTP endpoint.

>>> from valuelens.backends import ChatRequest, make_backend
>>> ChatRequest(user="Hi").max_tokens
64
>>> make_backend("openai:http://127.0.0.1:8080/v1#smollm2").describe()["model"]
'smollm2'

A backend answers a list of single-turn chats (:class:`ChatRequest`: optional system prompt, user message,
``max_tokens``, ``temperature``, ``seed``) with :class:`ChatResponse` objects in the same order (text, finish
reason, and the exact rendered prompt or request payload, for audit).

Specs (``make_backend``): ``local:<short name | GGUF path | model folder | hub id>`` and
``openai:<base_url>#<model>``. The base URL may or may not end in ``/v1``.

Choices made here:

* **No system prompt.** ``ChatRequest(system=None)`` means "the request has no system turn". An OpenAI-compatible
  server then applies its chat template to the user message alone, and most templates (SmolLM2's, Qwen's)
  insert their default system prompt. :class:`LocalBackend` does the same by default
  (``no_system="template-default"``), so that one model gives the same prompt through both backends; pass
  ``no_system="none"`` to render truly without a system turn (:data:`valuelens.models.NO_SYSTEM`). Judges and
  detectors in valuelens always send an explicit system prompt, so this only matters for raw use.
* **Secrets.** :class:`OpenAIBackend` reads its API key from an environment variable (default
  ``OPENAI_API_KEY``) at request time. The key is never stored on the object, never put in a response's audit
  payload, a manifest or :meth:`describe`, and never appears in error messages.
* **Retries.** HTTP 429, 5xx, connection errors and timeouts are retried with exponential backoff
  (``backoff · 2^attempt`` seconds, at most 20 s); any other 4xx fails at once. Failures raise
  :class:`BackendError` with one line naming the URL.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import ConfigError, ValuelensError

if TYPE_CHECKING:
    from .models import LoadedModel

__all__ = [
    "BACKEND_SPEC_FORMS",
    "BackendError",
    "ChatBackend",
    "ChatRequest",
    "ChatResponse",
    "LocalBackend",
    "OpenAIBackend",
    "make_backend",
    "parse_backend_spec",
]

BACKEND_SPEC_FORMS = ("local:<model short name, GGUF path, folder or hub id> (e.g. local:smollm2)",
                      "openai:<base_url>#<model> (e.g. openai:http://127.0.0.1:8080/v1#smollm2)")


class BackendError(ValuelensError):
    """A chat backend failed: unreachable server, HTTP error, malformed answer."""


@dataclass(frozen=True)
class ChatRequest:
    """One single-turn chat. ``system=None``: no system turn (see the module notes)."""

    user: str
    system: str | None = None
    max_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.user, str):
            raise ConfigError(f"ChatRequest.user must be a string, got {type(self.user).__name__}")
        if self.max_tokens < 1:
            raise ConfigError("ChatRequest.max_tokens must be >= 1")
        if self.temperature < 0:
            raise ConfigError("ChatRequest.temperature must be >= 0")


@dataclass
class ChatResponse:
    """The answer to one :class:`ChatRequest`.

    ``finish_reason``: ``"stop"`` (the model ended its turn), ``"length"`` (hit ``max_tokens``) or whatever the
    server reported. ``prompt``: for audit, the rendered prompt (local) or the JSON request payload (HTTP),
    never any credential.
    """

    text: str
    finish_reason: str
    prompt: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that answers chats in order. ``describe()`` identifies it for manifests (no secrets)."""

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]: ...

    def describe(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------------------------------------------
# Local model


class LocalBackend:
    """A :class:`~valuelens.models.LoadedModel` answering through its chat template and ``generate_batch``.

    Requests are grouped by (max_tokens, temperature, seed) and, within a group, sorted by prompt length and cut
    into batches of ``batch_size`` (less padding); answers come back in request order. Greedy when
    ``temperature == 0``. The same requests always form the same batches, so results are reproducible.
    """

    def __init__(self, lm: LoadedModel, *, batch_size: int = 8, bf16: bool = False,
                 no_system: str = "template-default") -> None:
        from .models import NO_SYSTEM, TEMPLATE_DEFAULT

        if no_system not in (str(TEMPLATE_DEFAULT), str(NO_SYSTEM)):
            raise ConfigError(f"no_system must be 'template-default' or 'none', got {no_system!r}")
        if batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        self.lm = lm
        self.batch_size = batch_size
        self.bf16 = bf16
        self.no_system = TEMPLATE_DEFAULT if no_system == str(TEMPLATE_DEFAULT) else NO_SYSTEM

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        from .generate import GenerationConfig, generate_batch

        reqs = list(requests)
        rendered = [self.lm.chat.render(r.user, self.no_system if r.system is None else r.system) for r in reqs]
        out: list[ChatResponse | None] = [None] * len(reqs)
        groups: dict[tuple[int, float, int], list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault((r.max_tokens, r.temperature, r.seed), []).append(i)
        for (max_tokens, temperature, seed), idx in groups.items():
            idx = sorted(idx, key=lambda i: (len(rendered[i].text), i))
            cfg = GenerationConfig(max_new_tokens=max_tokens, do_sample=temperature > 0,
                                   temperature=temperature if temperature > 0 else 0.7, seed=seed,
                                   batch_size=self.batch_size, bf16=self.bf16)
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                res = generate_batch(self.lm, [rendered[i].text for i in chunk], cfg, seed=seed)
                for i, r in zip(chunk, res, strict=True):
                    out[i] = ChatResponse(text=r["response"], finish_reason=r["finish_reason"],
                                          prompt=rendered[i].to_dict())
        return [r for r in out if r is not None]

    def describe(self) -> dict[str, Any]:
        return {"backend": "local", **self.lm.describe(), "batch_size": self.batch_size, "bf16": self.bf16,
                "no_system": str(self.no_system)}


# --------------------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP endpoint


def _chat_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


def _redact_url(url: str) -> str:
    """The URL without any ``user:password@`` part (kept out of manifests and messages)."""
    p = urllib.parse.urlsplit(url)
    if p.username is None and p.password is None:
        return url
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urllib.parse.urlunsplit((p.scheme, host, p.path, p.query, p.fragment))


class _Retryable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OpenAIBackend:
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint, over the standard library only.

    ``concurrency`` requests are in flight at once (a thread pool); the server decides how many it decodes in
    parallel (llama.cpp: its ``n_parallel`` slots). Deterministic servers (llama.cpp at temperature 0 with a seed)
    give identical answers for identical requests.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
                 max_retries: int = 3, backoff: float = 1.0, concurrency: int = 4) -> None:
        p = urllib.parse.urlsplit(base_url)
        if p.scheme not in ("http", "https") or not p.netloc:
            raise ConfigError(f"base URL must start with http:// or https:// and name a host, got {base_url!r}")
        if not model:
            raise ConfigError("an OpenAI-compatible backend needs a model name (openai:<base_url>#<model>)")
        if max_retries < 0 or concurrency < 1 or timeout <= 0:
            raise ConfigError("max_retries must be >= 0, concurrency >= 1 and timeout > 0")
        self.base_url = base_url.rstrip("/")
        self.url = _chat_url(self.base_url)
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.concurrency = concurrency

    def payload(self, r: ChatRequest) -> dict[str, Any]:
        """The JSON body sent for one request (also returned as the audit record)."""
        messages = ([] if r.system is None else [{"role": "system", "content": r.system}])
        messages.append({"role": "user", "content": r.user})
        return {"model": self.model, "messages": messages, "max_tokens": r.max_tokens,
                "temperature": r.temperature, "seed": r.seed, "stream": False}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "valuelens"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post_once(self, body: bytes) -> dict[str, Any]:
        where = _redact_url(self.url)
        req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                excerpt = exc.read()[:300].decode("utf-8", "replace")
            except Exception:  # the body is only for the message
                excerpt = ""
            excerpt = " ".join(excerpt.split())[:200]
            msg = f"HTTP {exc.code} from {where}: {excerpt or exc.reason}"
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(msg) from None
            raise BackendError(msg) from None
        except urllib.error.URLError as exc:
            raise _Retryable(f"cannot reach the server at {where}: {exc.reason}") from None
        except TimeoutError:
            raise _Retryable(f"no answer from {where} within {self.timeout:g} s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Retryable(f"connection to {where} failed: {type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            text = " ".join(raw[:200].decode("utf-8", "replace").split())
            raise BackendError(f"malformed JSON from {where}: {text[:120]!r}") from None
        if not isinstance(data, dict):
            raise BackendError(f"malformed answer from {where}: expected a JSON object, got {type(data).__name__}")
        return data

    def _complete_one(self, r: ChatRequest) -> ChatResponse:
        payload = self.payload(r)
        body = json.dumps(payload).encode("utf-8")
        attempt = 0
        while True:
            try:
                data = self._post_once(body)
                break
            except _Retryable as exc:
                if attempt >= self.max_retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise BackendError(exc.message + tries) from None
                time.sleep(min(20.0, self.backoff * 2 ** attempt))
                attempt += 1
        where = _redact_url(self.url)
        if "error" in data and "choices" not in data:
            err = data["error"]
            msg = err.get("message") if isinstance(err, dict) else err
            raise BackendError(f"error from {where}: {str(msg)[:200]}")
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"]
            finish = choice.get("finish_reason") or "unknown"
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"malformed answer from {where}: no choices[0].message.content in "
                               f"{json.dumps(data)[:150]}") from None
        return ChatResponse(text=(text or "").strip(), finish_reason=str(finish), prompt=payload)

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        reqs = list(requests)
        if len(reqs) <= 1 or self.concurrency == 1:
            return [self._complete_one(r) for r in reqs]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(reqs))) as pool:
            return list(pool.map(self._complete_one, reqs))

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "base_url": _redact_url(self.base_url), "model": self.model,
                "api_key_env": self.api_key_env, "timeout": self.timeout, "max_retries": self.max_retries,
                "concurrency": self.concurrency}


# --------------------------------------------------------------------------------------------------------------
# Specs


def parse_backend_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"local:smollm2"`` → ``("local", {"model": "smollm2"})``; ``"openai:URL#m"`` → ``("openai", {...})``."""
    forms = "; ".join(BACKEND_SPEC_FORMS)
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"bad backend spec {spec!r}; use one of: {forms}")
    kind, rest = spec.split(":", 1)
    kind = kind.strip().lower()
    rest = rest.strip()
    if kind == "local":
        if not rest:
            raise ConfigError(f"bad backend spec {spec!r}: no model after 'local:'; use one of: {forms}")
        return "local", {"model": rest}
    if kind == "openai":
        url, sep, model = rest.rpartition("#")
        if not sep or not url or not model.strip():
            raise ConfigError(f"bad backend spec {_redact_url(spec)!r}: expected openai:<base_url>#<model>; "
                              f"use one of: {forms}")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"bad backend spec {_redact_url(spec)!r}: the base URL must start with http:// or "
                              f"https://; use one of: {forms}")
        return "openai", {"base_url": url, "model": model.strip()}
    raise ConfigError(f"bad backend spec {spec!r}: unknown kind {kind!r}; use one of: {forms}")


def make_backend(spec: str | ChatBackend, **kwargs: Any) -> ChatBackend:
    """Build a backend from a spec string (see :data:`BACKEND_SPEC_FORMS`); a backend object passes through.

    ``kwargs`` go to the backend (local: ``batch_size``, ``bf16``, ``no_system`` and ``load_model`` options such
    as ``dtype``; openai: ``api_key_env``, ``timeout``, ``max_retries``, ``backoff``, ``concurrency``).
    """
    if not isinstance(spec, str):
        if isinstance(spec, ChatBackend):
            return spec
        raise ConfigError(f"expected a backend spec string or a ChatBackend, got {type(spec).__name__}")
    kind, args = parse_backend_spec(spec)
    if kind == "local":
        from .models import load_model

        local_keys = {"batch_size", "bf16", "no_system"}
        lm = load_model(args["model"], **{k: v for k, v in kwargs.items() if k not in local_keys})
        return LocalBackend(lm, **{k: v for k, v in kwargs.items() if k in local_keys})
    return OpenAIBackend(args["base_url"], args["model"], **kwargs)
