"""The one progress bar of llm-dit (sweeps, the Ray executor, adapter fine-tuning): rich columns on stderr, so stdout
keeps only what a command prints as its result."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn


def progress_bar(*extra: ProgressColumn | str, transient: bool = True, disable: bool = False) -> Progress:
    """A rich `Progress` on stderr: the task's description, a bar, `done/total`, the `extra` columns (a string is a
    `TextColumn` format, e.g. `"loss {task.fields[loss]}"`), the time remaining. `transient`: erased when it stops;
    `disable`: shows nothing. Shown only when stderr is a terminal: in a log or a pipe a bar is noise (rich would
    write its last frame, or a blank line when transient)."""
    console = Console(stderr=True)
    columns = [TextColumn(c) if isinstance(c, str) else c for c in extra]
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *columns,
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable or not console.is_terminal,
    )
