"""The ``valuelens`` command.

One home for the command line: every command lives in this package, one module per command group
(``info`` — models, demo; ``stages`` — extract, analyze, run, report, export-vector; ``detect``; ``serve``), all
built with click. Commands are loaded lazily from :data:`COMMANDS`, so ``valuelens --help`` stays fast and a heavy
import only happens for the command that runs; the one-line descriptions shown by ``--help`` live here too, so
listing commands imports nothing.
User errors (:class:`valuelens.errors.ValuelensError`) print one line and exit with status 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from ..errors import ValuelensError

# name -> ("module:attribute" of a click command or group, one-line description for `valuelens --help`).
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("valuelens.cli.info:models_cmd", "List short model names, where their weights come from, status."),
    "demo": ("valuelens.cli.info:demo_cmd", "Three questions with and without a value system prompt, compared."),
    "run": ("valuelens.cli.stages:run_cmd", "The whole pipeline: detector judge, extract, analyze, report.html."),
    "check": ("valuelens.cli.check:check_cmd", "Validate a run's config, model, files, judge and disk; print the plan."),
    "extract": ("valuelens.cli.stages:extract_cmd", "Steps 1-6: responses, judging, activations, value vectors."),
    "analyze": ("valuelens.cli.stages:analyze_cmd", "Steps 7-9: value neurons, interventions, evaluations, findings."),
    "report": ("valuelens.cli.stages:report_cmd", "Render a run folder as one self-contained report.html."),
    "export-vector": ("valuelens.cli.stages:export_vector_cmd", "Export a value vector as a llama.cpp GGUF."),
    "detect": ("valuelens.cli.detect:detect", "Value detector: download, train, evaluate, compare, predict."),
    "calibrate": ("valuelens.cli.calibrate:calibrate_cmd", "Instrument check: planted direction, model organisms, judge."),
    "monitor": ("valuelens.cli.calibrate:monitor_cmd", "Which value would fine-tuning on a dataset raise?"),
    "serve": ("valuelens.cli.serve:serve_cmd", "OpenAI-compatible endpoint: a steered HF model, or llama.cpp for a GGUF."),
    "lm-eval": ("valuelens.cli.serve:lm_eval_cmd", "lm-evaluation-harness with the valuelens model and shipped tasks."),
    "pack": ("valuelens.cli.vectors:pack_cmd", "A run's vectors as a shareable folder: safetensors, config, model card."),
    "push": ("valuelens.cli.vectors:push_cmd", "Upload a run's (or a vector folder's) vectors to the Hugging Face Hub."),
    "convert": ("valuelens.cli.vectors:convert_cmd", "Convert vectors to/from repeng GGUF and steering-vectors."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            module, attr = COMMANDS[cmd_name][0].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Descriptions from the registry: listing the commands must not import every command module.
        rows = [(name, COMMANDS[name][1]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="valuelens")
@click.option("-q", "--quiet", is_flag=True, help="No progress output (results and errors are still printed).")
def cli(quiet: bool) -> None:
    """valuelens: how a language model expresses human values, how to steer it, and how to detect values.

    Progress: a bar with ETA on a terminal, one line per ~10 % of a stage in a log file.
    """
    from ..progress import set_quiet

    if quiet:
        set_quiet(True)


def main(argv: list[str] | None = None) -> Any:
    from ..progress import quiet_libraries

    quiet_libraries()
    try:
        return cli.main(args=argv, prog_name="valuelens", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("valuelens: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ValuelensError as exc:
        click.echo(f"valuelens: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("valuelens: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
