"""Top-level commands that are not part of a pipeline stage: ``valuelens models`` and ``valuelens demo``."""

from __future__ import annotations

import time

import click

from .errors import ConfigError


@click.command("models")
def models_cmd() -> None:
    """List short model names, where their weights come from, and whether they are installed and cached."""
    from .models import model_status

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

    from .generate import GenerationConfig, capture_responses, generate_batch
    from .models import NO_SYSTEM, load_model
    from .values import get_value

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


def _load_config_file(path: str | None) -> dict:
    import json
    from pathlib import Path

    from .errors import DataError

    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise DataError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml/json parse errors carry line numbers in their message
        raise DataError(f"{p}: cannot parse config ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DataError(f"{p}: config must be a mapping of keys to values")
    return data


@click.command("extract")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder (resumable).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON or YAML config file.")
@click.option("--quick", is_flag=True, help="A few-minute config (3 values, few queries) for smoke tests.")
@click.option("--model", help="Model short name, GGUF path, folder or hub id (overrides the config).")
@click.option("--values", help="Comma-separated values (default: all ten).")
@click.option("--queries", help="Query file (JSONL/CSV/Parquet) or hf:owner/name.")
@click.option("--judge", help="auto | detector | llm | a trained detector folder.")
@click.option("--stage", "stages", multiple=True, help="Run only these stages (repeatable): "
              "prepare, generate, judge, activations, vectors.")
@click.option("--shard", default=None, help="i/n: process slice i of n (generate, activations).")
@click.option("--set", "overrides", multiple=True, help="key=value config override (JSON value), repeatable.")
def extract_cmd(out_dir: str, config_file: str | None, quick: bool, model: str | None, values: str | None,
                queries: str | None, judge: str | None, stages: tuple[str, ...], shard: str | None,
                overrides: tuple[str, ...]) -> None:
    """Steps 1–6: generate intrinsic and prompted responses, judge them, capture activations, build vectors.

    Interrupted runs resume where they stopped: rerun the same command.
    """
    from .extract import ExtractConfig, run_extract
    from .runio import parse_shard

    cfg_dict = _load_config_file(config_file)
    cfg_dict.update(_parse_overrides(overrides))
    for key, val in (("model", model), ("queries", queries), ("judge", judge)):
        if val is not None:
            cfg_dict[key] = val
    if values is not None:
        cfg_dict["values"] = [v for v in values.split(",") if v.strip()]
    cfg = ExtractConfig.quick(**cfg_dict) if quick else ExtractConfig.from_dict(cfg_dict)
    summary = run_extract(out_dir, cfg, stages=list(stages) or None, shard=parse_shard(shard))
    if summary:
        click.echo(f"vectors written to {out_dir}/vectors.safetensors; figure layer {summary['layer']}")
        for s in summary.get("skipped", []):
            click.echo(f"  skipped {s['value']}/{s['condition']}: {s['expressing']} expressing, "
                       f"{s['not_expressing']} not expressing (too few)")
        for v, c in summary.get("cos_int_prompt_at_layer", {}).items():
            click.echo(f"  cos(v_int, v_prompt) {v:<14} {c:+.3f}")


def _parse_overrides(items: tuple[str, ...]) -> dict:
    import json

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


@click.command("analyze")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON or YAML analyze config.")
@click.option("--quick", is_flag=True, help="Small sweeps and few items (smoke tests).")
@click.option("--section", "sections", multiple=True, help="Run only these sections (repeatable).")
@click.option("--set", "overrides", multiple=True, help="key=value config override (JSON value), repeatable.")
def analyze_cmd(run_dir: str, config_file: str | None, quick: bool, sections: tuple[str, ...],
                overrides: tuple[str, ...]) -> None:
    """Steps 7–9 on an extract run: value neurons, steering evaluations with controls, findings."""
    from .analyze import AnalyzeConfig, run_analyze

    d = _load_config_file(config_file)
    d.update(_parse_overrides(overrides))
    if sections:
        d["sections"] = list(sections)
    cfg = AnalyzeConfig.quick(**d) if quick else AnalyzeConfig.from_dict(d)
    for f in run_analyze(run_dir, cfg):
        click.echo(f"[{f['status']:>14}] {f['id']}: {f['ours']}")


@click.command("run")
@click.option("--out", "out_dir", default="runs/default", show_default=True, type=click.Path(file_okay=False))
@click.option("--quick", is_flag=True, help="A few-minute configuration (lexicon judge, 3 values, small sweeps).")
@click.option("--model", help="Model short name, GGUF path, folder or hub id (default: the embedded SmolLM2).")
@click.option("--extract-config", type=click.Path(dir_okay=False), help="JSON/YAML overrides for extract.")
@click.option("--analyze-config", type=click.Path(dir_okay=False), help="JSON/YAML overrides for analyze.")
@click.option("--data", default=None, help="ValueEval'23 folder for training the detector judge.")
def run_cmd(out_dir: str, quick: bool, model: str | None, extract_config: str | None, analyze_config: str | None,
            data: str | None) -> None:
    """The whole pipeline: detector judge → extract → analyze → report.html (resumable; rerun to continue)."""
    from .pipeline import run_pipeline

    report = run_pipeline(out_dir, quick=quick, model=model, extract_overrides=_load_config_file(extract_config),
                          analyze_overrides=_load_config_file(analyze_config), data_dir=data)
    click.echo(f"report: {report}")


@click.command("export-vector")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--value", "value_name", required=True, help="Schwartz value, e.g. Power.")
@click.option("--kind", default="prompted", show_default=True,
              help="intrinsic | prompted | intrinsic_orth | prompted_orth | shared | diff_intrinsic | diff_prompted")
@click.option("--scale", default=1.0, show_default=True, type=float, help="Multiply the vector (llama.cpp adds it as is).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output .gguf file.")
def export_vector_cmd(run_dir: str, value_name: str, kind: str, scale: float, out_path: str) -> None:
    """Export a value vector of a run as a llama.cpp control-vector GGUF (all layers)."""
    import json
    from pathlib import Path

    from .errors import DataError
    from .values import get_value
    from .vectors import ValueVectors

    path = Path(run_dir) / "vectors.safetensors"
    if not path.exists():
        raise DataError(f"{run_dir}: no vectors.safetensors; run `valuelens extract --out {run_dir}` first")
    vv = ValueVectors.load(path)
    hint = json.loads((Path(run_dir) / "model.json").read_text()).get("name", "") \
        if (Path(run_dir) / "model.json").exists() else ""
    info = vv.export_gguf(get_value(value_name).name, kind, out_path, model_hint=hint, scale=scale)
    click.echo(f"wrote {info['path']} ({len(info['written_layers'])} layers)")
