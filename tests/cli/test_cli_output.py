"""What a script gets from `llm-dit`: with stdout and stderr not terminals, stdout holds only results (paths, JSON)
and stderr only llm-dit's messages; `--help` of every command shows flags as flags and whole summaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from ..conftest import REPO

REF = REPO / "examples" / "reference-images" / "sunset.png"
TINY = ["--width", "32", "--height", "32", "--steps", "1"]


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`llm-dit ARGS` in a fresh process, stdout and stderr pipes (not terminals), the tiny zoo for the defaults."""
    env = {**os.environ, "LLM_DIT_MODELS": "tiny"}
    command = [sys.executable, "-m", "llm_dit", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, check=False)


def no_blank_lines(text: str) -> bool:
    return all(line.strip() for line in text.splitlines())


def test_sweep_stdout_is_the_report_path_or_the_json_and_nothing_else(cli, zoo, tmp_path, monkeypatch):
    """Before: a transient progress bar wrote a blank line first (`--json` output began with "\\n{" in a log). The
    plain run in a fresh process (all a process prints), the JSON run in this one (the same pipes, not terminals)."""
    args = ["sweep", "-i", REF, "-p", "x", "--alphas", "0.3", *TINY]
    plain = run(*args, "-o", "a", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "a/report.html\n"
    assert no_blank_lines(plain.stderr), repr(plain.stderr)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLM_DIT_MODELS", "tiny")
    as_json = cli(*args, "-o", "b", "--json")
    assert as_json.code == 0, as_json.err
    assert as_json.out.startswith("{")
    assert json.loads(as_json.out)["completed"] == 2
    assert no_blank_lines(as_json.err), repr(as_json.err)


def test_demo_stdout_is_its_two_paths(zoo, tmp_path):
    """Before: labelled lines on stdout, blank lines from the progress bar in a log."""
    r = run("demo", "--out", "d", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["d/reference_conditioned.png", "d/sweep/report.html"]
    assert all((tmp_path / line).is_file() for line in r.stdout.splitlines())
    assert no_blank_lines(r.stderr), repr(r.stderr)
    assert r.stderr.splitlines()[0] == "reference-conditioned image (settings in d/reference_conditioned.json):"
    record = json.loads((tmp_path / "d" / "reference_conditioned.json").read_text())  # before: no inputs, no output
    assert record["output"] == str((tmp_path / "d" / "reference_conditioned.png").resolve())
    assert Path(record["inputs"]["reference_image"]["path"]).name == "demo_reference.png"


def test_a_cold_cache_prints_the_result_alone_whatever_the_cpu(tmp_path):
    """A first run builds the tiny zoo into an empty cache and imports every library for the first time. Before:
    transformers' "Writing model shards" bars (cold cache only) and, on CPUs with AVX512-BF16, bitsandbytes' Hub
    kernel lookup warning "Skipping publisher trust check ..." (offline mode only) reached the output, so what a
    command printed depended on the machine and the cache."""
    env = {**os.environ, "LLM_DIT_MODELS": "tiny", "LLM_DIT_CACHE": str(tmp_path / "cold"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "llm_dit", "generate", "-p", "x", *TINY, "-o", "x.png"]
    r = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("x.png\n", "")


def test_every_file_a_record_names_is_absolute_and_resolved(cli, zoo, tmp_path, monkeypatch):
    """records.file_fields: one path rule. Before: `output` was the path as given (relative) beside absolute
    `inputs` and `models` paths."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ref.png").write_bytes(REF.read_bytes())
    r = cli("generate", "--models", "tiny", *TINY, "-p", "x", "-i", "ref.png", "-o", "sub/../x.png")
    assert r.code == 0, r.err
    record = json.loads((tmp_path / "x.json").read_text())
    assert record["output"] == str(tmp_path.resolve() / "x.png")
    assert record["inputs"]["reference_image"]["path"] == str(tmp_path.resolve() / "ref.png")
    assert all(Path(m["path"]).is_absolute() for m in record["models"].values())


def test_extract_and_encode_json_parse(cli, zoo, tmp_path):
    for args in (["extract", "-i", REF, "-o", tmp_path / "v.safetensors"], ["encode", "-p", "x", "-o", tmp_path / "t"]):
        r = cli(*args, "--models", "tiny", "--json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["output"] == str(args[-1])


def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command and group of the app with its command line."""
    found = [(path, group)]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer 0.29 builds them on its own copy of click)
            found += commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


ALL = commands(typer.main.get_command(__import__("llm_dit.cli.app", fromlist=["app"]).app))


@pytest.mark.parametrize("path,command", ALL, ids=[" ".join(p) or "llm-dit" for p, _ in ALL])
def test_help_shows_flags_as_flags_and_a_whole_summary(cli, path, command):
    """Before: every flag showed `<bool>` (`--help <bool>`, `--json <bool>`), the extract and demo summaries broke
    mid-sentence (a docstring's first paragraph over two lines), and `models` said "build or inspect"."""
    r = cli(*path, "--help")
    assert r.code == 0, r.err
    assert "<bool>" not in r.out
    summary = (command.help or "").split("\n\n")[0]
    assert summary and "\n" not in summary.strip(), summary
    assert "inspect models" not in r.out.lower()
