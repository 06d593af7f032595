"""``valuelens calibrate`` (the instrument check) and ``valuelens monitor`` (which value would a fine-tune raise)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ._common import load_config_file, parse_overrides


def format_checks(doc: dict[str, Any]) -> str:
    """The instrument check as plain text, one line per check (at most 110 characters)."""
    from ..calibrate import summary_rows

    lines = [f"{'check':<58} {'result':>8} {'95% CI':<18} {'ok':<3} against"]
    for r in summary_rows(doc):
        res = r["result"]
        res_s = f"{res:.3f}" if isinstance(res, float) else str(res)
        ci = r.get("ci")
        ci_s = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""
        lines.append(f"{r['check'][:58]:<58} {res_s:>8} {ci_s:<18} {'yes' if r['passed'] else 'NO':<3} "
                     f"{r['against']}"[:110])
    return "\n".join(lines)


@click.command("calibrate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: calibrated in place if it holds an extract run, else a quick extract is run first.")
@click.option("--model", help="Model short name, GGUF path, folder or hub id (for a new folder; default smollm2).")
@click.option("--quick", is_flag=True, help="A configuration that fits in about 20 minutes on 2 CPU cores.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON/YAML calibrate config.")
@click.option("--part", "parts", multiple=True, help="planted | judge | ceiling | organism (repeatable; default all).")
@click.option("--set", "overrides", multiple=True, help="key=value config override (JSON value), repeatable.")
@click.option("--data", default=None, help="ValueEval'23 folder for training the detector judge (new folders).")
def calibrate_cmd(out_dir: str, model: str | None, quick: bool, config_file: str | None, parts: tuple[str, ...],
                  overrides: tuple[str, ...], data: str | None) -> None:
    """Prove the instrument can see an effect: a planted direction, value model organisms, the judge on chat
    answers, the prompt as ceiling. Writes OUT/calibration.json (the report's "Instrument check")."""
    from ..calibrate import CalibrateConfig, run_calibrate

    d = load_config_file(config_file)
    d.update(parse_overrides(overrides))
    if parts:
        d["parts"] = list(parts)
    cfg = CalibrateConfig.quick(**d) if quick else CalibrateConfig.from_dict(d)
    out = Path(out_dir)
    if not (out / "vectors.safetensors").exists():
        from ..pipeline import run_pipeline

        run_pipeline(out, quick=True, model=model, data_dir=data, calibrate_overrides=cfg.to_dict(),
                     skip_analyze=True)
        doc = json.loads((out / "calibration.json").read_text())
    else:
        doc = run_calibrate(out, cfg)
    click.echo(format_checks(doc))
    click.echo(f"calibration: {out / 'calibration.json'}")


@click.command("monitor")
@click.argument("data_file", type=click.Path(dir_okay=False))
@click.option("--vectors", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder with the base model's value vectors (valuelens extract / run).")
@click.option("--layer", type=int, default=None, help="Layer (default: the run's analysis layer).")
@click.option("--prompt-field", default="auto", show_default=True,
              help="Field with the user prompt (auto: query, prompt, instruction, question, or a conversation).")
@click.option("--response-field", default="auto", show_default=True,
              help="Field with the response (auto: response, completion, output, answer, or a conversation).")
@click.option("--limit", type=int, default=None, help="Use only the first N records.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def monitor_cmd(data_file: str, run_dir: str, layer: int | None, prompt_field: str, response_field: str,
                limit: int | None, as_json: bool) -> None:
    """Before fine-tuning: which value would training on DATA_FILE raise? Projects the data's responses (minus
    the base model's own answers to the same prompts) onto the run's value vectors and ranks the values."""
    from ..calibrate.organism import monitor_file

    res = monitor_file(data_file, run_dir, layer=layer, prompt_field=prompt_field, response_field=response_field,
                       limit=limit)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"{res['n']} records, layer {res['layer']}; projection of (data − base model's own answers) on "
               "each value's v_prompt:")
    for i, v in enumerate(res["ranking"], 1):
        click.echo(f"{i:>3}. {v:<15} {res['projection'][v]:+.4f}")
    click.echo(f"prediction: a fine-tune on this data raises {res['ranking'][0]} most")
