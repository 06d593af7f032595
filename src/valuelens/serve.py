"""A real OpenAI-compatible server on loopback: llama.cpp's server, in-process, from the ``xllamacpp`` wheel.

>>> from valuelens.serve import llama_server              # doctest: +SKIP
>>> from valuelens.backends import OpenAIBackend, ChatRequest  # doctest: +SKIP
>>> with llama_server("smollm2") as url:                   # doctest: +SKIP
...     OpenAIBackend(url, "smollm2").complete([ChatRequest(user="Hi", max_tokens=8)])

The server listens on ``127.0.0.1`` (a random free port unless ``port`` is given) and serves
``/v1/chat/completions``, applying the GGUF's own chat template. It stops when the context exits (xllamacpp stops
the HTTP listener and frees the model when its ``Server`` object is released). ``valuelens serve --model smollm2``
runs it in the foreground until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelError

__all__ = ["llama_server", "resolve_gguf"]


def resolve_gguf(model: str | Path) -> Path:
    """A GGUF path for a short name (``smollm2``, ``qwen2.5-0.5b``) or a path to a ``.gguf`` file."""
    from .models import _check_gguf, _qwen_gguf, _smollm2_gguf, resolve_short_name

    short = resolve_short_name(str(model))
    if short == "smollm2":
        return _smollm2_gguf()
    if short == "qwen2.5-0.5b":
        return _qwen_gguf()
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path} (the server needs a GGUF file or a short name: smollm2, "
                         f"qwen2.5-0.5b)")
    _check_gguf(path)
    return path


def _wait_ready(url: str, timeout: float) -> None:
    """Wait until the server answers a one-token chat (``/health`` can say "ok" while chats still get 503)."""
    deadline = time.time() + timeout
    body = json.dumps({"model": "probe", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                       "temperature": 0}).encode()
    last = ""
    while time.time() < deadline:
        req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
                return
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):  # protected by an API key: it is up
                return
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(0.2)
    raise ModelError(f"the llama.cpp server at {url} did not become ready within {timeout:g} s ({last})")


@contextlib.contextmanager
def llama_server(gguf_path: str | Path, n_ctx: int = 2048, n_threads: int = 2, *, n_parallel: int = 1,
                 host: str = "127.0.0.1", port: int = 0, api_keys: Sequence[str] = (),
                 ready_timeout: float = 120.0, quiet: bool = True) -> Iterator[str]:
    """Start llama.cpp's OpenAI-compatible server in this process; yield its base URL (``http://127.0.0.1:PORT``).

    ``n_ctx`` is the total context, shared by the ``n_parallel`` slots (each slot gets ``n_ctx / n_parallel``
    tokens). ``port=0`` picks a free port. ``api_keys``: when given, the server requires one of them as a bearer
    token (like a hosted endpoint). The server is stopped and the model freed on exit.
    """
    try:
        import xllamacpp
    except ImportError:
        raise ModelError("the llama.cpp server needs the xllamacpp wheel: pip install xllamacpp") from None
    path = resolve_gguf(gguf_path)
    if n_ctx < 64 or n_threads < 1 or n_parallel < 1:
        raise ConfigError("n_ctx must be >= 64, n_threads and n_parallel >= 1")
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = n_ctx
    params.n_parallel = n_parallel
    params.cpuparams.n_threads = n_threads
    params.cpuparams_batch.n_threads = n_threads
    params.hostnames = [host]
    params.port = port
    params.warmup = False
    if api_keys:
        params.api_keys = list(api_keys)
    if quiet:
        params.verbosity = -1
    try:
        server: Any = xllamacpp.Server(params)
    except Exception as exc:  # C++ start-up failures, as one line
        raise ModelError(f"could not start the llama.cpp server for {path}: {type(exc).__name__}: {exc}") from None
    try:
        url = str(server.listening_address).rstrip("/")
        if not url.startswith("http"):
            raise ModelError(f"the llama.cpp server did not report a listening address (got {url!r})")
        _wait_ready(url, ready_timeout)
        yield url
    finally:
        del server
        gc.collect()
