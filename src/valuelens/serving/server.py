"""An OpenAI-compatible HTTP server for a steered Hugging Face model (``valuelens serve --model M --vectors RUN``).

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both streaming over SSE or not), ``GET /v1/models``
(the model and its steering aliases), ``GET /health``. Steering per request: the body field ``"steer"`` or a model
alias ``NAME+value@alpha[:kind]`` (:mod:`valuelens.serving.steering`); concurrent requests are batched
continuously, each row with its own intervention (:mod:`valuelens.serving.engine`).

HTTP stack: the standard library's ``ThreadingHTTPServer`` — one thread per connection that parses, validates
and tokenizes, then waits on its request's event queue while the single model thread generates. The server does
no async I/O work worth an event loop (the model thread is the bottleneck), so it needs no web framework and
``valuelens serve`` works in the base install (docs/serving.md gives the full reasoning).

Safety: binds to 127.0.0.1 unless told otherwise; an API key (read by the CLI from an environment variable,
never logged) is checked on every route but ``/health``; bodies over ``max_request_bytes`` get 413 without being
read; ``max_tokens`` and the prompt length are bounded; every 4xx/5xx is JSON in OpenAI's error shape
(``{"error": {"message", "type", "param", "code"}}``), and no request can stop the server.
"""

from __future__ import annotations

import hmac
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import ValuelensError
from .engine import Engine, Job, Sampling
from .steering import RequestError, SteerBank, parse_alias

__all__ = ["ServerConfig", "SteeringServer", "render_messages"]


@dataclass(frozen=True)
class ServerConfig:
    """Limits and defaults of the HTTP layer (the CLI's options)."""

    model_name: str = "smollm2"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_request_bytes: int = 1 << 20
    max_tokens_limit: int = 2048
    default_max_tokens: int = 256
    max_prompt_tokens: int = 4096
    default_top_k: int = 50  # HF generate's default, so sampling matches the library's generate
    system_mode: str = "template"  # "template": the chat template's default system prompt; "none": no system turn
    cors: bool = False
    quiet: bool = True


def render_messages(lm: Any, messages: list[dict[str, str]], system_mode: str = "template") -> str:
    """The prompt text for a chat: the model's template with a generation prompt.

    ``system_mode="none"`` renders a chat without a system message with *no* system turn at all (as the
    pipeline's intrinsic condition), instead of the template's default system prompt.
    """
    from ..models import _SENTINEL

    chat = lm.chat
    if system_mode != "none" or any(m["role"] == "system" for m in messages) or not chat.has_template:
        return str(chat._apply(messages))
    parts = chat._system_turn_parts()
    if parts is None:
        return str(chat._apply(messages))
    preamble, prefix, eot = parts
    with_sys = chat._apply([{"role": "system", "content": _SENTINEL}, *messages])
    turn = prefix + _SENTINEL + eot
    if not with_sys.startswith(turn):
        raise RequestError("this chat template cannot render a chat without a system turn; send a system message")
    return str(preamble + with_sys[len(turn):])


def _error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
                code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class SteeringServer:
    """The model, its steering vectors, the engine and the HTTP listener. Use as a context manager or
    :meth:`serve_forever`.

    >>> # with SteeringServer(lm, bank, ServerConfig(port=0)) as srv: print(srv.url)   # doctest: +SKIP
    """

    def __init__(self, lm: Any, bank: SteerBank, config: ServerConfig, *, max_batch: int = 16,
                 batch_window: float = 0.01, bf16: bool = False) -> None:
        self.lm = lm
        self.bank = bank
        self.cfg = config
        self.engine = Engine(lm, max_batch=max_batch, batch_window=batch_window, bf16=bf16)
        self._tok_lock = threading.Lock()
        self.created = int(time.time())
        n_ctx = getattr(lm.model.config, "max_position_embeddings", None)
        self.context_length = int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None
        handler = type("Handler", (_Handler,), {"server_obj": self})
        self.httpd = ThreadingHTTPServer((config.host, config.port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SteeringServer:
        self.engine.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="valuelens-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.engine.start()
        try:
            self.httpd.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        self.httpd.shutdown() if self._thread is not None else None
        self.httpd.server_close()
        self.engine.stop()

    def __enter__(self) -> SteeringServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- request handling (called from handler threads) --------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        with self._tok_lock:  # fast tokenizers are not safe to share across threads while encoding
            return list(self.lm.tokenizer(text, add_special_tokens=False).input_ids)

    def models(self) -> dict[str, Any]:
        data = []
        for name in self.bank.aliases(self.cfg.model_name):
            entry: dict[str, Any] = {"id": name, "object": "model", "created": self.created, "owned_by": "valuelens"}
            _, specs = parse_alias(name)
            if specs:
                entry["valuelens"] = {"steer": [s.describe() for s in self.bank.resolve(specs, param="model")]}
            data.append(entry)
        return {"object": "list", "data": data}

    def prepare(self, body: Any, chat: bool) -> tuple[Job, dict[str, Any]]:
        """Validate a request body and build its engine job; raises :class:`RequestError` (4xx)."""
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise RequestError("'model' is required (a string)", param="model")
        base, alias_specs = parse_alias(model)
        if base != self.cfg.model_name:
            raise RequestError(f"The model '{model}' does not exist; this server serves '{self.cfg.model_name}' "
                               f"and its aliases ({self.cfg.model_name}+value@alpha)", status=404, param="model",
                               code="model_not_found")
        steers = self.bank.resolve(alias_specs, param="model") if alias_specs else []
        steers += self.bank.resolve(body.get("steer"), param="steer")
        if chat:
            text = render_messages(self.lm, _messages(body.get("messages")), self.cfg.system_mode)
        else:
            text = _prompt(body.get("prompt"))
        s = self._sampling(body)
        ids = self.tokenize(text)
        if not ids:
            raise RequestError("the prompt is empty", param="messages" if chat else "prompt")
        if len(ids) > self.cfg.max_prompt_tokens:
            raise RequestError(f"the prompt has {len(ids)} tokens; this server accepts at most "
                               f"{self.cfg.max_prompt_tokens}", param="messages" if chat else "prompt",
                               code="context_length_exceeded")
        if self.context_length is not None and len(ids) + s.max_tokens > self.context_length:
            raise RequestError(f"this model's context is {self.context_length} tokens; the prompt ({len(ids)}) "
                               f"plus max_tokens ({s.max_tokens}) exceed it", param="max_tokens",
                               code="context_length_exceeded")
        extra = {"steer": [x.describe() for x in steers],
                 "return_token_ids": bool(body.get("return_token_ids", False)),
                 "stream": bool(body.get("stream", False)),
                 "include_usage": bool((body.get("stream_options") or {}).get("include_usage", False))
                 if isinstance(body.get("stream_options") or {}, dict) else False}
        return Job(prompt_ids=ids, sampling=s, steers=steers), extra

    def _sampling(self, body: dict[str, Any]) -> Sampling:
        cfg = self.cfg

        def num(name: str, default: float, lo: float, hi: float) -> float:
            v = body.get(name, default)
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise RequestError(f"'{name}' must be a number in [{lo:g}, {hi:g}], got {v!r}", param=name)
            return float(v)

        mt = body.get("max_completion_tokens", body.get("max_tokens"))
        if mt is None:
            mt = min(cfg.default_max_tokens, cfg.max_tokens_limit)
        if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
            raise RequestError(f"'max_tokens' must be a positive integer, got {mt!r}", param="max_tokens")
        if mt > cfg.max_tokens_limit:
            raise RequestError(f"'max_tokens' is {mt}; this server allows at most {cfg.max_tokens_limit}",
                               param="max_tokens")
        n = body.get("n", 1)
        if n not in (1, None):
            raise RequestError("only n=1 is supported", param="n")
        if body.get("logprobs") or body.get("echo") or body.get("best_of") not in (None, 1):
            raise RequestError("logprobs, echo and best_of are not supported by this server", param="logprobs")
        stop = body.get("stop")
        if stop is None:
            stops: tuple[str, ...] = ()
        elif isinstance(stop, str):
            stops = (stop,)
        elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(x, str) and x for x in stop):
            stops = tuple(stop)
        else:
            raise RequestError("'stop' must be a string or a list of at most 4 non-empty strings", param="stop")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RequestError("'seed' must be an integer", param="seed")
        top_k = body.get("top_k", cfg.default_top_k)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise RequestError("'top_k' must be a non-negative integer (0 = off)", param="top_k")
        top_p = num("top_p", 1.0, 0.0, 1.0)
        if top_p <= 0:
            raise RequestError("'top_p' must be > 0", param="top_p")
        return Sampling(max_tokens=int(mt), temperature=num("temperature", 1.0, 0.0, 2.0), top_p=top_p,
                        top_k=int(top_k), seed=seed, stop=stops,
                        presence_penalty=num("presence_penalty", 0.0, -2.0, 2.0),
                        frequency_penalty=num("frequency_penalty", 0.0, -2.0, 2.0),
                        ignore_eos=bool(body.get("ignore_eos", False)))


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "role" not in m:
            raise RequestError(f"messages[{i}] must be an object with 'role' and 'content'", param="messages")
        role = {"developer": "system"}.get(m["role"], m["role"])
        if role not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{i}].role {m['role']!r} is not supported (system, user, assistant)",
                               param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            texts = []
            for p in content:
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise RequestError(f"messages[{i}].content: only text parts are supported", param="messages")
                texts.append(p["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string", param="messages")
        out.append({"role": role, "content": content})
    return out


def _prompt(raw: Any) -> str:
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
        raw = raw[0]
    if not isinstance(raw, str):
        raise RequestError("'prompt' must be a string (one prompt per request)", param="prompt")
    return raw


class _Handler(BaseHTTPRequestHandler):
    server_obj: SteeringServer
    protocol_version = "HTTP/1.1"
    server_version = "valuelens"
    sys_version = ""
    timeout = 300  # seconds a socket read or write may block: an idle or stuck client cannot hold a thread forever

    # -- plumbing ----------------------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # request line and status only; never headers
        if not self.server_obj.cfg.quiet:
            sys.stderr.write(f"valuelens serve: {self.address_string()} {format % args}\n")

    def _cors(self) -> None:
        if self.server_obj.cfg.cors:
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
            self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")

    def _json(self, status: int, obj: Any, *, close: bool = False) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._cors()
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, exc: RequestError, *, close: bool = False) -> None:
        self._json(exc.status, _error_body(str(exc), exc.type, exc.param, exc.code),
                   close=close or self.close_connection)

    def _key_ok(self) -> bool:
        key = self.server_obj.cfg.api_key
        if not key:
            return True
        got = self.headers.get("Authorization", "")
        token = got[7:].strip() if got.lower().startswith("bearer ") else ""
        return hmac.compare_digest(token.encode(), key.encode())

    def _authorised(self) -> bool:
        if self._key_ok():
            return True
        self._json(401, _error_body("Incorrect API key provided (send it as 'Authorization: Bearer KEY')",
                                    "invalid_request_error", None, "invalid_api_key"))
        return False

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except RequestError as exc:
            self._fail(exc)
        except ValuelensError as exc:
            self._fail(RequestError(str(exc)))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # a bug must not take the server down: 500 and carry on
            try:
                self._json(500, _error_body(f"internal error: {type(exc).__name__}: {str(exc)[:200]}",
                                            "server_error", None, "internal_error"), close=True)
            except OSError:
                self.close_connection = True

    # -- routes --------------------------------------------------------------------------------------------------
    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self._cors()
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._json(200, {"status": "ok", "model": self.server_obj.cfg.model_name,
                             "stats": dict(self.server_obj.engine.stats)})
            return
        if not self._authorised():
            return

        def go() -> None:
            if path == "/v1/models":
                self._json(200, self.server_obj.models())
            elif path.startswith("/v1/models/"):
                name = path[len("/v1/models/"):]
                for m in self.server_obj.models()["data"]:
                    if m["id"] == name:
                        self._json(200, m)
                        return
                raise RequestError(f"The model '{name}' does not exist", status=404, code="model_not_found")
            else:
                raise RequestError(f"no route GET {path}", status=404, code="not_found")
        self._guard(go)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._drain_or_close()
            self._fail(RequestError(f"no route POST {path}", status=404, code="not_found"), close=True)
            return
        if not self._key_ok():
            self._drain_or_close()
            self._authorised()
            return
        self._guard(lambda: self._complete(chat=path == "/v1/chat/completions"))

    def _drain_or_close(self) -> None:
        """Read a small body so the connection can be reused; otherwise mark it to close."""
        n = self._length()
        if n is not None and 0 < n <= self.server_obj.cfg.max_request_bytes:
            self.rfile.read(n)
        elif n:
            self.close_connection = True

    def _length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None

    def _complete(self, chat: bool) -> None:
        srv = self.server_obj
        n = self._length()
        if n is None:
            self.close_connection = True
            raise RequestError("Content-Length is required", status=411)
        if n > srv.cfg.max_request_bytes:
            self.close_connection = True  # the body is not read: this connection cannot be reused
            raise RequestError(f"request body of {n} bytes exceeds the limit of {srv.cfg.max_request_bytes}",
                               status=413, code="request_too_large")
        raw = self.rfile.read(n)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise RequestError(f"malformed JSON body: {exc}") from None
        job, extra = srv.prepare(body, chat)
        srv.engine.submit(job)
        model = body["model"]
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if extra["stream"]:
            self._stream(job, extra, rid, created, model, chat)
        else:
            self._whole(job, extra, rid, created, model, chat)

    @staticmethod
    def _events(job: Job) -> Iterator[tuple[Any, ...]]:
        while True:
            ev = job.events.get()
            yield ev
            if ev[0] != "delta":
                return

    def _meta(self, job: Job, extra: dict[str, Any]) -> dict[str, Any]:
        return {"steer": extra["steer"], "seed": job.seed_used, "batch_rows_max": job.max_batch}

    def _usage(self, job: Job) -> dict[str, int]:
        return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": len(job.ids),
                "total_tokens": len(job.prompt_ids) + len(job.ids)}

    def _whole(self, job: Job, extra: dict[str, Any], rid: str, created: int, model: str, chat: bool) -> None:
        parts: list[str] = []
        finish = "stop"
        for ev in self._events(job):
            if ev[0] == "delta":
                parts.append(ev[1])
            elif ev[0] == "done":
                finish = ev[1]
            else:
                raise RequestError(ev[2], status=ev[1], type="server_error", code="generation_failed")
        text = "".join(parts)
        choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text},
                                   "finish_reason": finish, "logprobs": None} if chat else
                                  {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
        if extra["return_token_ids"]:
            choice["token_ids"] = list(job.ids)
            choice["prompt_token_ids"] = list(job.prompt_ids)
        self._json(200, {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                         "model": model, "system_fingerprint": _fingerprint(), "choices": [choice],
                         "usage": self._usage(job), "valuelens": self._meta(job, extra)})

    def _stream(self, job: Job, extra: dict[str, Any], rid: str, created: int, model: str, chat: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self._cors()
        self.end_headers()
        self.close_connection = True
        obj = "chat.completion.chunk" if chat else "text_completion"

        def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        def chunk(delta: dict[str, Any] | str | None, finish: str | None) -> dict[str, Any]:
            c: dict[str, Any] = ({"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": None}
                                 if chat else {"index": 0, "text": delta or "", "finish_reason": finish,
                                               "logprobs": None})
            return {"id": rid, "object": obj, "created": created, "model": model,
                    "system_fingerprint": _fingerprint(), "choices": [c]}

        try:
            if chat:
                send(chunk({"role": "assistant", "content": ""}, None))
            for ev in self._events(job):
                if ev[0] == "delta":
                    send(chunk({"content": ev[1]} if chat else ev[1], None))
                elif ev[0] == "done":
                    last = chunk({} if chat else "", ev[1])
                    last["valuelens"] = self._meta(job, extra)
                    if extra["return_token_ids"]:
                        last["choices"][0]["token_ids"] = list(job.ids)
                    send(last)
                else:
                    send(_error_body(ev[2], "server_error", None, "generation_failed"))
                    return
            if extra["include_usage"]:
                send({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                      "usage": self._usage(job)})
            send("[DONE]")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            job.cancel()  # the client left (or stopped reading): free its row
            self.close_connection = True


def _fingerprint() -> str:
    from .. import __version__

    return f"valuelens-{__version__}"
