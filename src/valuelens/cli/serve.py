"""``valuelens serve``: an OpenAI-compatible endpoint on loopback — a steered HF model, or llama.cpp for a GGUF.

``valuelens lm-eval``: lm-evaluation-harness's own command line with the ``valuelens`` model registered and the
shipped tasks on the include path (for lm-eval releases that do not load plugins from entry points).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from ..errors import ConfigError


@click.command("serve")
@click.option("--model", default="smollm2", show_default=True,
              help="short name (smollm2, qwen2.5-0.5b), GGUF path, model folder or hub id")
@click.option("--vectors", default=None, help="run folder, vector folder or Hub repo id: enables per-request steering")
@click.option("--backend", type=click.Choice(["auto", "hf", "llamacpp"]), default="auto", show_default=True,
              help="auto: the steering server (hf) when --vectors is given, else llama.cpp for a GGUF")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True, help="0 picks a free port")
@click.option("--name", default=None, help="model name clients use (default: the --model short name)")
@click.option("--kind", default="prompted", show_default=True, help="vector kind when a request names none")
@click.option("--max-alpha", type=float, default=2.0, show_default=True, help="largest |α| a request may ask")
@click.option("--api-key-env", default="VALUELENS_API_KEY", show_default=True,
              help="environment variable holding the API key; when it is set, requests must send it")
@click.option("--max-batch", type=int, default=16, show_default=True, help="rows decoded together")
@click.option("--batch-window-ms", type=float, default=10.0, show_default=True,
              help="an idle server waits this long after a request for others to start with it")
@click.option("--max-tokens-limit", type=int, default=2048, show_default=True)
@click.option("--default-max-tokens", type=int, default=256, show_default=True)
@click.option("--max-prompt-tokens", type=int, default=4096, show_default=True)
@click.option("--max-request-bytes", type=int, default=1 << 20, show_default=True)
@click.option("--system-mode", type=click.Choice(["template", "none"]), default="template", show_default=True,
              help="chats without a system message: the template's default system prompt, or no system turn")
@click.option("--cors", is_flag=True, help="allow browser chat UIs on other origins (Access-Control-Allow-*)")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast (faster on CPUs with bf16; drifts from fp32)")
@click.option("--n-ctx", type=int, default=2048, show_default=True, help="llama.cpp: total context of the slots")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--parallel", type=int, default=1, show_default=True, help="llama.cpp: requests decoded in parallel")
@click.option("--verbose", is_flag=True, help="log requests (llama.cpp: its own log)")
def serve_cmd(model: str, vectors: str | None, backend: str, host: str, port: int, name: str | None, kind: str,
              max_alpha: float, api_key_env: str, max_batch: int, batch_window_ms: float, max_tokens_limit: int,
              default_max_tokens: int, max_prompt_tokens: int, max_request_bytes: int, system_mode: str,
              cors: bool, bf16: bool, n_ctx: int, threads: int, parallel: int, verbose: bool) -> None:
    """Serve a model as an OpenAI-compatible endpoint until Ctrl-C.

    With --vectors: a steered Hugging Face model; each request may steer with "steer": {"value", "kind",
    "alpha", "layer"} or a model alias NAME+value@alpha[:kind]. Without: llama.cpp serves the GGUF (for LLM
    judge tests: --llm openai:http://HOST:PORT/v1#MODEL).
    """
    if backend == "auto":
        backend = "hf" if vectors else "llamacpp"
    if backend == "llamacpp":
        if vectors:
            raise ConfigError("llama.cpp cannot steer per request; use --backend hf with --vectors")
        _serve_llamacpp(model, host, port, n_ctx, threads, parallel, verbose)
        return
    _serve_hf(model, vectors, host, port, name, kind, max_alpha, api_key_env, max_batch, batch_window_ms,
              max_tokens_limit, default_max_tokens, max_prompt_tokens, max_request_bytes, system_mode, cors, bf16,
              threads, verbose)


def _serve_llamacpp(model: str, host: str, port: int, n_ctx: int, threads: int, parallel: int,
                    verbose: bool) -> None:
    from ..serve import llama_server

    with llama_server(model, n_ctx=n_ctx, n_threads=threads, n_parallel=parallel, host=host, port=port,
                      quiet=not verbose) as url:
        name = Path(str(model)).stem if str(model).lower().endswith(".gguf") else str(model)
        click.echo(f"serving {model} at {url}/v1/chat/completions", err=True)
        click.echo(f"backend spec: openai:{url}/v1#{name}")
        click.echo("press Ctrl-C to stop", err=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("stopping", err=True)


def _serve_hf(model: str, vectors: str | None, host: str, port: int, name: str | None, kind: str, max_alpha: float,
              api_key_env: str, max_batch: int, batch_window_ms: float, max_tokens_limit: int,
              default_max_tokens: int, max_prompt_tokens: int, max_request_bytes: int, system_mode: str,
              cors: bool, bf16: bool, threads: int, verbose: bool) -> None:
    import torch

    from ..models import load_model, resolve_short_name
    from ..serving.artifacts import VectorArtifact
    from ..serving.server import ServerConfig, SteeringServer
    from ..serving.steering import SteerBank

    if min(max_batch, max_tokens_limit, default_max_tokens, max_prompt_tokens, max_request_bytes) < 1:
        raise ConfigError("--max-batch, the token limits and --max-request-bytes must be >= 1")
    torch.set_num_threads(max(1, threads))
    api_key = os.environ.get(api_key_env) or None
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(f"valuelens serve: WARNING: listening on {host} without an API key (set {api_key_env})", err=True)
    lm = load_model(model)
    art = None
    norms = None
    if vectors:
        art = VectorArtifact.load(vectors)
        vv = art.vectors
        vv.check_compatible(lm.model_hash, lm.spec.d_model, lm.spec.n_layers)
        norms = art.residual_norms
        if norms is None:
            from ..evals.capability import residual_norms

            click.echo("valuelens serve: measuring the residual norms (the unit of α) once", err=True)
            norms = [float(x) for x in residual_norms(lm)]
    bank = SteerBank(art, norms, lm.spec.n_layers, default_kind=kind, max_alpha=max_alpha)
    served = name or resolve_short_name(model) or Path(model).name
    cfg = ServerConfig(model_name=served, host=host, port=port, api_key=api_key,
                       max_request_bytes=max_request_bytes, max_tokens_limit=max_tokens_limit,
                       default_max_tokens=min(default_max_tokens, max_tokens_limit),
                       max_prompt_tokens=max_prompt_tokens,
                       default_top_k=int(getattr(lm.model.generation_config, "top_k", None) or 50),
                       system_mode=system_mode, cors=cors, quiet=not verbose)
    srv = SteeringServer(lm, bank, cfg, max_batch=max_batch, batch_window=batch_window_ms / 1000.0, bf16=bf16)
    click.echo(f"url: {srv.url}")
    sys.stdout.flush()
    click.echo(f"serving {served} at {srv.url}/v1 (models: {', '.join(bank.aliases(served)[:4])}"
               f"{' …' if len(bank.aliases(served)) > 4 else ''}); "
               f"{'API key required' if api_key else 'no API key'}; Ctrl-C stops", err=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopping", err=True)


@click.command("lm-eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                            "help_option_names": []})
@click.pass_context
def lm_eval_cmd(ctx: click.Context) -> None:
    """lm-evaluation-harness with the `valuelens` model and the shipped tasks (arguments go to lm_eval).

    Example: valuelens lm-eval --model valuelens --model_args pretrained=smollm2,vectors=RUN,value=Benevolence,
    alpha=0.1 --tasks valuelens_capability_mc
    """
    from ..serving.harness import run_lm_eval_cli

    sys.exit(run_lm_eval_cli(list(ctx.args)))
