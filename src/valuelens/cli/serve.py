"""``valuelens serve``: an OpenAI-compatible endpoint on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..serve import llama_server


@click.command("serve")
@click.option("--model", default="smollm2", show_default=True, help="short name (smollm2, qwen2.5-0.5b) or GGUF path")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True, help="0 picks a free port")
@click.option("--n-ctx", type=int, default=2048, show_default=True, help="total context, shared by the slots")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--parallel", type=int, default=1, show_default=True, help="requests decoded in parallel (slots)")
@click.option("--verbose", is_flag=True, help="show llama.cpp's log")
def serve_cmd(model: str, host: str, port: int, n_ctx: int, threads: int, parallel: int, verbose: bool) -> None:
    """Serve a GGUF model as an OpenAI-compatible endpoint (llama.cpp, in-process) until Ctrl-C.

    Use it with any LLM judge or detector: --llm openai:http://HOST:PORT/v1#MODEL.
    """
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
