"""The `llm-dit` command: a thin layer over the Python API. Each command parses its options (the settings ones from
the one table in `config.options`), resolves the config, makes one API call and prints the result: paths and JSON
on stdout, messages on stderr. A command resolves its settings before it imports the feature it calls, so help,
flag and choice errors and bad settings never wait for torch (tests/cli/test_cli_start.py).

The commands live by group in `setup`, `files`, `runs`, `studio` and `bench` (each imports the feature it calls
inside its body); this module makes the app of them, in the order `--help` lists them.

Every failure caused by input (a file, a value, a model) is a `UserError`: one line on stderr, exit code 2, no
traceback (`--debug` shows it), with the command's flags beside the config keys it names (`options.takes`).
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup, TyperOption

from ..config.options import FLAG
from ..core.errors import UserError
from . import bench, files, runs, setup, studio
from .common import console

if TYPE_CHECKING:
    from typer import Context


class HelpFlag:
    """Shows `--help` as the flag it is (`FLAG`), as every other flag of this CLI: typer builds the help option
    itself, without a metavar, and its rich help would show `--help <bool>`."""

    def get_help_option(self, ctx: Context) -> TyperOption | None:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = FLAG
        return option


class Command(HelpFlag, TyperCommand):
    """A command of this CLI (`cls=` of every command)."""


class Group(HelpFlag, TyperGroup):
    """A command group of this CLI (`cls=` of every `typer.Typer`)."""


app = typer.Typer(
    cls=Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Condition Z-Image on a reference image through Qwen3-VL hidden states.",
)
models_app = typer.Typer(cls=Group, no_args_is_help=True, help="Build the offline random-weight models.")
config_app = typer.Typer(cls=Group, no_args_is_help=True, help="Show the resolved configuration.")
style_app = typer.Typer(
    cls=Group, no_args_is_help=True, help="Style files: what a blend mode transfers, extracted or combined."
)
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
app.add_typer(style_app, name="style")

_state = {"debug": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.", metavar=FLAG)] = False) -> None:
    _state["debug"] = debug


# Every command, in the order --help lists them.
models_app.command("tiny", cls=Command)(setup.models_tiny)
models_app.command("metrics", cls=Command)(setup.models_metrics)
models_app.command("convert-csd", cls=Command)(setup.models_convert_csd)
config_app.command("show", cls=Command)(setup.config_show)
app.command(cls=Command)(files.generate)
app.command(cls=Command)(files.extract)
style_app.command("extract", cls=Command)(files.style_extract)
style_app.command("combine", cls=Command)(files.style_combine)
app.command(cls=Command)(files.encode)
app.command(cls=Command)(files.stats)
app.command("inspect", cls=Command)(files.inspect_cmd)
app.command(cls=Command)(files.steer)
app.command("train-adapter", cls=Command)(files.train_adapter_cmd)
app.command(cls=Command)(runs.sweep)
app.command(name="eval", cls=Command)(runs.eval_command)
app.command(cls=Command)(runs.metrics)
app.command(cls=Command)(runs.report)
app.command(cls=Command)(runs.demo)
app.command(cls=Command)(studio.studio)
app.command(cls=Command)(bench.bench)


def main() -> None:
    """Console entry point: runs the app and turns `UserError` into one line (`takes` has put the command's flags
    beside the keys it names) and exit code 2."""
    warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"
    try:
        app(prog_name="llm-dit")  # the same name however it is started (`python -m`, a test runner)
    except UserError as e:
        if _state["debug"]:
            raise
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
