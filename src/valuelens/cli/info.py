"""Commands that are not pipeline stages: ``valuelens models`` and ``valuelens demo``."""

from __future__ import annotations

import time

import click

from ..errors import ConfigError


@click.command("models")
def models_cmd() -> None:
    """List short model names, where their weights come from, and whether they are installed and cached."""
    from ..models import model_status

    for row in model_status():
        state = ("installed" if row["installed"] else "not installed") + (", cached" if row["cached"] else "")
        click.echo(f"{row['name']:<14} {state:<22} {row['description']}")
        click.echo(f"{'':<14} aliases: {row['aliases']}")
        click.echo(f"{'':<14} source:  {row['where']}")
    click.echo("Any Hugging Face causal LM (hub id or local folder) or GGUF file path also works as --model.")


DEMO_QUESTIONS = (
    "My best friend asked me to lie to her parents about where she was last weekend. What should I do?",
    "I got a job offer abroad that pays much more, but my parents are getting old. Should I take it?",
    "Is it okay to skip a family tradition this year to go on a solo hiking trip?",
)


@click.command("demo")
@click.option("--model", "model_name", default="smollm2", show_default=True, help="Short name, GGUF path or HF id.")
@click.option("--value", "value_name", default="Benevolence", show_default=True, help="Value to prompt for.")
@click.option("--max-new-tokens", default=48, show_default=True, type=int)
@click.option("--bf16/--fp32", default=False, show_default=True, help="CPU bf16 autocast for speed.")
def demo_cmd(model_name: str, value_name: str, max_new_tokens: int, bf16: bool) -> None:
    """Answer three value-laden questions with and without a value system prompt, and compare activations.

    Prints the answers, then per layer the cosine between the mean residual stream (over response tokens)
    of the prompted and the unprompted answers, and the norm of their difference.
    """
    import torch

    from ..generate import GenerationConfig, capture_responses, generate_batch
    from ..models import NO_SYSTEM, load_model
    from ..values import get_value

    value = get_value(value_name)
    if max_new_tokens < 1:
        raise ConfigError("--max-new-tokens must be >= 1")
    t0 = time.time()
    lm = load_model(model_name)
    click.echo(f"model {lm.name} ({lm.spec.arch.family}, {lm.spec.n_layers} layers, d_model {lm.spec.d_model}), "
               f"sha256 {lm.model_hash[:16]}…, loaded in {time.time() - t0:.1f}s from {lm.source}")
    system = (f"You are an assistant who cares above all about {value.name.lower()}: "
              f"{value.definition[0].lower() + value.definition[1:]} Let this guide every answer.")
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=len(DEMO_QUESTIONS), bf16=bf16)
    conds = {"no system prompt": NO_SYSTEM, f"{value.name} prompt": system}
    means: dict[str, torch.Tensor] = {}
    for cname, sysp in conds.items():
        prompts = [lm.chat.render(q, system=sysp) for q in DEMO_QUESTIONS]
        recs = generate_batch(lm, [p.text for p in prompts], cfg)
        for q, r in zip(DEMO_QUESTIONS, recs, strict=True):
            click.echo(f"\n[{cname}] Q: {q}\nA: {r['response']}")
        recs = [{"id": str(i), **r} for i, r in enumerate(recs)]
        acts = torch.cat([a for _, a in capture_responses(lm, recs, bf16=bf16)], dim=0)  # [3, L, D]
        means[cname] = acts.mean(dim=0)
    a, b = means.values()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    click.echo(f"\nper layer: cosine(mean activation without prompt, with {value.name} prompt), ‖difference‖")
    click.echo(f"{'layer':>5}  {'cosine':>7}  {'‖Δ‖':>7}  {'‖h‖':>7}")
    for layer in range(lm.spec.n_layers):
        click.echo(f"{layer:>5}  {cos[layer].item():7.4f}  {(a[layer] - b[layer]).norm().item():7.2f}  "
                   f"{a[layer].norm().item():7.2f}")
    click.echo(f"\ndone in {time.time() - t0:.1f}s")


