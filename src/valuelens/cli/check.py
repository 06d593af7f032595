"""``valuelens check``: validate a run's inputs before any model work and print what it will do.

The query options shared with ``extract`` and ``run`` (``--queries``, ``--query-column``, ``--query-format``,
``--turns``, ``--sample``, ``--language``) are defined here once and applied by :func:`query_overrides`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from ..datasets import QUERY_FORMATS, TURNS
from ._common import load_config_file, parse_overrides

__all__ = ["check_cmd", "echo_report", "query_options", "query_overrides"]


def query_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The query-source options of ``check``, ``extract`` and ``run`` (each overrides its config key)."""
    opts = [
        click.option("--queries", help="Query source: a JSONL/JSON/CSV/Parquet/TXT file, hf:owner/name or "
                     "hf:FOLDER (datasets.save_to_disk). Default: the shipped pool."),
        click.option("--query-column", help="Column with the query text or conversation (default: detected)."),
        click.option("--query-format", type=click.Choice(QUERY_FORMATS),
                     help="plain (a text column) or a conversation dump: sharegpt, lmsys, openai (default: auto)."),
        click.option("--turns", type=click.Choice(TURNS), help="Conversations: the first user turn (default) or all."),
        click.option("--sample", type=click.IntRange(min=1), help="Keep a seeded random sample of N queries "
                     "(after filters and deduplication; seed: the config's seed)."),
        click.option("--language", help="Keep queries in this language only (a light heuristic, docs/data.md)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def query_overrides(queries: str | None, query_column: str | None, query_format: str | None, turns: str | None,
                    sample: int | None, language: str | None) -> dict[str, Any]:
    """The config keys the query options set (only those given)."""
    pairs = {"queries": queries, "query_column": query_column, "query_format": query_format,
             "query_turns": turns, "query_sample": sample, "query_language": language}
    return {k: v for k, v in pairs.items() if v is not None}


def echo_report(report: Any, *, prefix: str = "check: ") -> None:
    """Print a check's lines on stdout (stderr stays for errors: a later failure is still one line there)."""
    for line in report.lines():
        click.echo(f"{prefix}{line}")


@click.command("check")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="The run folder the run will use (checked: new, resumable or replaceable; disk space).")
@click.option("--extract-only", is_flag=True, help="Check `valuelens extract` (its judge as configured) instead "
              "of `valuelens run` (trains/uses the default detector, rank labels, then analyze).")
@click.option("--analyze", "analyze_run", type=click.Path(file_okay=False), default=None,
              help="Check `valuelens analyze RUN` on an existing extract run instead.")
@click.option("--config", "--extract-config", "config_file", type=click.Path(dir_okay=False),
              help="JSON/YAML extract config (overrides).")
@click.option("--analyze-config", type=click.Path(dir_okay=False), help="JSON/YAML analyze config (overrides).")
@click.option("--quick", is_flag=True, help="Check the --quick configuration.")
@click.option("--model", help="Model short name, GGUF path, folder or hub id.")
@click.option("--values", help="Comma-separated values.")
@click.option("--judge", help="auto | detector | llm | lexicon | a trained detector folder.")
@query_options
@click.option("--stage", "stages", multiple=True, help="With --extract-only: only these stages.")
@click.option("--set", "overrides", multiple=True, help="Extract config key=value (JSON value), repeatable.")
@click.option("--analyze-set", "analyze_sets", multiple=True, help="Analyze config key=value, repeatable.")
@click.option("--data", default=None, help="ValueEval'23 folder (when the detector judge must be trained).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_cmd(out_dir: str | None, extract_only: bool, analyze_run: str | None, config_file: str | None,
              analyze_config: str | None, quick: bool, model: str | None, values: str | None, judge: str | None,
              queries: str | None, query_column: str | None, query_format: str | None, turns: str | None,
              sample: int | None, language: str | None, stages: tuple[str, ...], overrides: tuple[str, ...],
              analyze_sets: tuple[str, ...], data: str | None, as_json: bool) -> None:
    """Validate everything a run will touch, without loading model weights or writing anything.

    Config keys and ranges, layers against the model's depth (read from its GGUF header or config.json), value
    names, query and template files and their columns, the judge, the run folder and disk space; then what the
    run will do (counts, estimated tokens). Exit status 2 with a one-line error when something is wrong.
    Every stage command (extract, run) runs the same check first.
    """
    from .. import check

    ex = load_config_file(config_file)
    ex.update(parse_overrides(overrides))
    for key, val in (("model", model), ("judge", judge)):
        if val is not None:
            ex[key] = val
    if values is not None:
        ex["values"] = [v for v in values.split(",") if v.strip()]
    ex.update(query_overrides(queries, query_column, query_format, turns, sample, language))
    an = load_config_file(analyze_config)
    an.update(parse_overrides(analyze_sets))
    if analyze_run is not None:
        report = check.check_analyze(analyze_run, overrides=an, quick=quick)
    elif extract_only:
        from ..extract import ExtractConfig

        cfg = ExtractConfig.quick(**ex) if quick else ExtractConfig.from_dict(ex)
        report = check.check_extract(out_dir, cfg, stages=list(stages) or None)
    else:
        report = check.check_pipeline(out_dir or "runs/default", quick=quick, extract_overrides=ex,
                                      analyze_overrides=an, data_dir=data)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        echo_report(report, prefix="")
        click.echo("check passed")
