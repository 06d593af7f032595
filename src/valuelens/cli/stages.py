"""The pipeline stage commands: ``extract``, ``analyze``, ``run``, ``report`` and ``export-vector``."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import format_findings, load_config_file, parse_overrides
from ._scale import device_options, dry_run_option, ray_option
from .check import echo_report, query_options, query_overrides


@click.command("extract")
@device_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder (resumable).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON or YAML config file.")
@click.option("--quick", is_flag=True, help="A few-minute config (3 values, few queries) for smoke tests.")
@click.option("--model", help="Model short name, GGUF path, folder or hub id (overrides the config).")
@click.option("--values", help="Comma-separated values (default: all ten).")
@query_options
@click.option("--judge", help="auto | detector | llm | a trained detector folder.")
@click.option("--stage", "stages", multiple=True, help="Run only these stages (repeatable): "
              "prepare, generate, judge, activations, vectors.")
@click.option("--shard", default=None, help="i/n: process slice i of n (generate, activations).")
@click.option("--set", "overrides", multiple=True, help="key=value config override (JSON value), repeatable.")
@ray_option
@dry_run_option
def extract_cmd(out_dir: str, config_file: str | None, quick: bool, model: str | None, values: str | None,
                queries: str | None, judge: str | None, stages: tuple[str, ...], shard: str | None,
                overrides: tuple[str, ...], ray_address: str | None, dry_run: bool, query_column: str | None = None,
                query_format: str | None = None, turns: str | None = None, sample: int | None = None,
                language: str | None = None) -> None:
    """Steps 1–6: generate intrinsic and prompted responses, judge them, capture activations, build vectors.

    Interrupted runs resume where they stopped: rerun the same command.
    """
    from ..extract import ExtractConfig, run_extract
    from ..runio import parse_shard

    cfg_dict = load_config_file(config_file)
    cfg_dict.update(parse_overrides(overrides))
    for key, val in (("model", model), ("judge", judge)):
        if val is not None:
            cfg_dict[key] = val
    if values is not None:
        cfg_dict["values"] = [v for v in values.split(",") if v.strip()]
    cfg_dict.update(query_overrides(queries, query_column, query_format, turns, sample, language))
    cfg = ExtractConfig.quick(**cfg_dict) if quick else ExtractConfig.from_dict(cfg_dict)
    from ..check import check_extract

    # Before any model work or write: config, model depth, files, judge, run folder, disk (valuelens check).
    checked = check_extract(out_dir, cfg, stages=list(stages) or None)
    echo_report(checked)
    lm = None
    if dry_run or (not (Path(out_dir) / "items.jsonl").exists() and (not stages or "generate" in stages)):
        from ..estimate import estimate_extract

        # Before a fresh run: the work and, for long runs (always with --dry-run), the time on this device.
        est, lm = estimate_extract(cfg, warmup=True if dry_run else (None if ray_address is None else False))
        click.echo(est.text())
        if dry_run:
            return
    if ray_address is not None:
        from ..distributed import RayOptions, run_extract_ray

        if shard is not None:
            raise click.UsageError("--ray splits the work itself; drop --shard")
        summary = run_extract_ray(out_dir, cfg, opts=RayOptions(address=ray_address), stages=list(stages) or None)
    else:
        summary = run_extract(out_dir, cfg, stages=list(stages) or None, shard=parse_shard(shard), lm=lm,
                              pool=checked.pool)
    if summary:
        click.echo(f"vectors written to {out_dir}/vectors.safetensors; figure layer {summary['layer']}")
        for s in summary.get("skipped", []):
            click.echo(f"  skipped {s['value']}/{s['condition']}: {s['expressing']} expressing, "
                       f"{s['not_expressing']} not expressing (too few)")
        for v, c in summary.get("cos_int_prompt_at_layer", {}).items():
            click.echo(f"  cos(v_int, v_prompt) {v:<14} {c:+.3f}")


@click.command("analyze")
@device_options
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON or YAML analyze config.")
@click.option("--quick", is_flag=True, help="Small sweeps and few items (smoke tests).")
@click.option("--section", "sections", multiple=True, help="Run only these sections (repeatable; the sections "
              "they require run too, or are reused when cached).")
@click.option("--set", "overrides", multiple=True, help="key=value config override (JSON value), repeatable.")
@click.option("--findings-only", is_flag=True, help="Re-derive findings.json from the sections' files (no model).")
@click.option("--list", "list_sections", is_flag=True, help="List the registered sections and their options.")
@ray_option
def analyze_cmd(run_dir: str, config_file: str | None, quick: bool, sections: tuple[str, ...],
                overrides: tuple[str, ...], findings_only: bool, list_sections: bool, ray_address: str | None) -> None:
    """Steps 7–9 on an extract run: value neurons, steering evaluations with controls, findings with statistics."""
    from ..analysis import AnalyzeConfig, registry, run_analyze, write_findings

    if list_sections:
        for name, sec in registry().items():
            req = f" (requires {', '.join(sec.requires)})" if sec.requires else ""
            click.echo(f"{name}{req}: {sec.title}")
            for opt in sec.option_names():
                click.echo(f"    {opt} = {getattr(sec.Config(), opt)!r}")
        return
    if findings_only:
        doc = write_findings(run_dir)
        click.echo(format_findings(doc["findings"]))
        return
    d = load_config_file(config_file)
    d.update(parse_overrides(overrides))
    if sections:
        d["sections"] = list(sections)
    cfg = AnalyzeConfig.quick(**d) if quick else AnalyzeConfig.from_dict(d)
    from ..check import check_analyze

    check_analyze(run_dir, cfg)  # nothing is loaded or written before the run folder and the config pass
    if ray_address is not None:
        from ..distributed import RayOptions, run_analyze_ray

        click.echo(format_findings(run_analyze_ray(run_dir, cfg, opts=RayOptions(address=ray_address))))
        return
    click.echo(format_findings(run_analyze(run_dir, cfg)))


@click.command("run")
@device_options
@click.option("--out", "out_dir", default="runs/default", show_default=True, type=click.Path(file_okay=False))
@click.option("--quick", is_flag=True, help="A few-minute configuration (lexicon judge, 3 values, small sweeps).")
@click.option("--model", help="Model short name, GGUF path, folder or hub id (default: the embedded SmolLM2).")
@click.option("--extract-config", type=click.Path(dir_okay=False), help="JSON/YAML overrides for extract.")
@click.option("--analyze-config", type=click.Path(dir_okay=False), help="JSON/YAML overrides for analyze.")
@click.option("--calibrate-config", type=click.Path(dir_okay=False),
              help="JSON/YAML overrides for the instrument check (e.g. {\"parts\": [\"planted\", \"judge\", "
                   "\"ceiling\", \"organism\"]}; {\"parts\": []} skips it).")
@click.option("--data", default=None, help="ValueEval'23 folder for training the detector judge.")
@query_options
@ray_option
@dry_run_option
def run_cmd(out_dir: str, quick: bool, model: str | None, extract_config: str | None, analyze_config: str | None,
            data: str | None, ray_address: str | None, dry_run: bool, calibrate_config: str | None = None,
            queries: str | None = None,
            query_column: str | None = None, query_format: str | None = None, turns: str | None = None,
            sample: int | None = None, language: str | None = None) -> None:
    """The whole pipeline: detector judge → extract → instrument check → analyze → report.html (resumable).

    It first runs `valuelens check` on the same arguments (nothing is trained, loaded or written before it
    passes)."""
    ex = load_config_file(extract_config)
    ex.update(query_overrides(queries, query_column, query_format, turns, sample, language))
    if dry_run:
        from ..check import check_pipeline
        from ..estimate import estimate_extract, extract_config_for_run

        echo_report(check_pipeline(out_dir, quick=quick, model=model, extract_overrides=ex,
                                   analyze_overrides=load_config_file(analyze_config), data_dir=data))
        cfg = extract_config_for_run(quick, model, ex)
        click.echo(estimate_extract(cfg, warmup=True)[0].text())
        return
    import json

    from ..pipeline import run_pipeline

    report = run_pipeline(out_dir, quick=quick, model=model, extract_overrides=ex,
                          analyze_overrides=load_config_file(analyze_config), data_dir=data,
                          ray_address=ray_address, calibrate_overrides=load_config_file(calibrate_config))
    doc = json.loads((Path(out_dir) / "findings.json").read_text())
    click.echo(format_findings(doc["findings"]))
    counts = doc.get("counts", {})
    click.echo(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; α = {doc.get('alpha')}, layer {doc.get('layer')}"
               + (" (no α passed the capability guard: flagged)" if doc.get("guard_exceeded") else ""))
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

    from ..errors import DataError
    from ..values import get_value
    from ..vectors import ValueVectors

    path = Path(run_dir) / "vectors.safetensors"
    if not path.exists():
        raise DataError(f"{run_dir}: no vectors.safetensors; run `valuelens extract --out {run_dir}` first")
    vv = ValueVectors.load(path)
    hint = json.loads((Path(run_dir) / "model.json").read_text()).get("name", "") \
        if (Path(run_dir) / "model.json").exists() else ""
    info = vv.export_gguf(get_value(value_name).name, kind, out_path, model_hint=hint, scale=scale)
    click.echo(f"wrote {info['path']} ({len(info['written_layers'])} layers)")


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the HTML (default: RUN_DIR/report.html).")
def report_cmd(run_dir: Path, out: Path | None) -> None:
    """Write a self-contained HTML report of a run folder (findings, tables, figures, manifests).

    The report renders from the run's files alone; to refresh findings.json after a section was rerun, run
    `valuelens analyze RUN --findings-only`.
    """
    from ..report import build_report

    click.echo(str(build_report(run_dir, out)))
