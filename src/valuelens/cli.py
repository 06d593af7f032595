"""The ``valuelens`` command.

Sub-commands live next to the code they drive (``valuelens.detect.cli`` etc.) and are loaded lazily, so
``valuelens --help`` stays fast and a heavy import only happens for the command that needs it.
User errors (:class:`valuelens.errors.ValuelensError`) print one line and exit with status 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from .errors import ValuelensError

# name -> "module:attribute" of a click command or group.
_COMMANDS: dict[str, str] = {
    "models": "valuelens.commands:models_cmd",
    "demo": "valuelens.commands:demo_cmd",
    "detect": "valuelens.detect.cli:detect",
    "extract": "valuelens.commands:extract_cmd",
    "report": "valuelens.report:report_cmd",
    "analyze": "valuelens.commands:analyze_cmd",
    "run": "valuelens.commands:run_cmd",
    "export-vector": "valuelens.commands:export_vector_cmd",
    "serve": "valuelens.serve:serve_cmd",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS:
            module, attr = _COMMANDS[cmd_name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="valuelens")
def cli() -> None:
    """valuelens: how a language model expresses human values, how to steer it, and how to detect values."""


def main(argv: list[str] | None = None) -> Any:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
