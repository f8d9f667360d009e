"""The one progress bar (llm_dit.core.progress): what it shows, where, and that nothing else builds one."""

import ast
from pathlib import Path

import llm_dit
from llm_dit.core.progress import progress_bar


def test_progress_bar_columns_and_stderr(monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich: stderr is a terminal
    bar = progress_bar("loss {task.fields[loss]}", transient=False)
    names = [type(c).__name__ for c in bar.columns]
    assert names == ["TextColumn", "BarColumn", "MofNCompleteColumn", "TextColumn", "TimeRemainingColumn"]
    assert bar.columns[0].text_format == "{task.description}"
    assert bar.columns[3].text_format == "loss {task.fields[loss]}"
    assert bar.console.stderr and not bar.live.transient and not bar.disable
    quiet = progress_bar(disable=True)
    assert quiet.live.transient and quiet.disable and len(quiet.columns) == 4


def test_progress_bar_is_silent_when_stderr_is_not_a_terminal(capfd):
    """Before: a transient bar on a pipe wrote a blank line (sweep, demo, bench output started with one)."""
    with progress_bar() as bar:
        bar.add_task("work", total=2)
    assert bar.disable
    assert capfd.readouterr() == ("", "")


def test_no_other_module_builds_a_progress_bar():
    root = Path(llm_dit.__file__).parent
    users = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "rich.progress":
                users.add(path.name)
    assert users == {"progress.py"}
