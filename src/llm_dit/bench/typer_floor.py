"""The help floor of the CLI framework: a bare typer app shaped like `llm-dit` (as many top-level commands and
command groups, each with a one-line summary) and nothing behind it, run as `python -m llm_dit.bench.typer_floor
--help` by `figures.cli_help`.

`python -c "import typer, rich"` is the floor of importing the framework; rendering typer's rich help costs more
than the import (typer's `rich_utils` brings in rich's markdown and tables). This app pays exactly that and nothing
of llm-dit's, so `llm-dit --help` / this app's `--help` is what llm-dit adds to typer's own help. Its shape follows
`llm-dit`'s (tests/bench/test_bench.py checks the counts).
"""

from __future__ import annotations

import sys

import typer

COMMANDS = 14  # top-level commands of `llm-dit`
GROUPS = 3  # command groups of `llm-dit` (models, config, style)
SUMMARY = "Do one thing of the pipeline on the given inputs and print where the result went."


def bare_app() -> typer.Typer:
    """A typer app of `COMMANDS` commands and `GROUPS` groups, each with `SUMMARY`, no options and no body."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
    for i in range(COMMANDS):
        app.command(f"command-{i}", help=SUMMARY)(lambda: None)
    for i in range(GROUPS):
        app.add_typer(typer.Typer(help=SUMMARY), name=f"group-{i}")
    return app


if __name__ == "__main__":
    bare_app()(sys.argv[1:], prog_name="llm-dit")
