"""Documentation as tests: every shell command in README.md and docs/*.md runs, as written, against the tiny zoo.

The docs explain the one switch this relies on: `LLM_DIT_MODELS=tiny` makes the default model ids resolve to the tiny
offline zoo (`config.locate_models`). Each doc file runs in order in a scratch folder that looks like the repo root
(`examples`, `src`, `.venv`, `Makefile`, `pyproject.toml` linked in), so later commands may use earlier outputs and
no file of the repo is written. The rules (also in docs/cli.md, "Examples are tests"):

- Commands run with the repo's `.venv` activated, as README.md says to (`. .venv/bin/activate`).
- ```` ```bash setup ```` blocks are installation steps: never run (they would change this machine's Python), and
  may hold only `pip install` and `make setup` lines, so nothing else can hide in them. A `pip` command anywhere
  else is an error.
- ```` ```bash server ```` blocks start a server that runs until stopped, or talk to one (`llm-dit studio`,
  `ssh`, `curl`): never run (a server would not return); they may hold only those commands. The studio's own tests
  start it and drive it (tests/studio/test_studio.py, tests/studio/test_studio_page.py).
- Commands run as bash would run them: bash expands each line (variables, quotes, the doc's state); a line that
  is one `llm-dit` command (no pipe, redirection, list or subshell) then runs in this process through the real entry
  point (`llm_dit.cli.app.main`) with that argv, environment and folder, its stdout and stderr caught in order;
  every other line runs in bash. (A fresh interpreter per command cost ~10 s of imports each: most of the suite.)
- ```` ```bash ```` blocks: every command must exit 0. Assignments, `export`, `.`/`source` and `cd` lines are kept
  as state for the file's later commands. `make TARGET` runs as `make -n TARGET` (the target exists and what it runs
  is shown; `make test` must not recurse into itself).
- ```` ```console ```` blocks: `$ COMMAND` lines run, and what they print (stdout and stderr, in order) must equal
  the lines below them, except that `...` stands for any text within a line, and a line that is only `...` for any
  number of lines, and that decimal numbers (with a point or an exponent) are compared as numbers, to a relative
  tolerance of `FLOAT_RTOL` (1e-5: float32 values differ in their last digits between CPUs and thread counts);
  integers and all other text exactly. `$?` is the previous command's exit code.
- A command ending in `# GPU` needs a GPU: on a machine without one it must be refused cleanly (exit 2, one
  `error:` line).
- Other fences (```` ``` ```` synopses, `toml`, `json`, `python`) are not run.
A failing command is reported with its file and line.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import REPO, run_main

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINKED = ("examples", "src", ".venv", "Makefile", "pyproject.toml")
STATE = re.compile(r"^(export\s+|\.\s+|source\s+|cd\s+|[A-Za-z_][A-Za-z0-9_]*=)")
GPU = re.compile(r"\s+#\s*GPU\s*$")
TIMEOUT_S = 600


@dataclass
class Command:
    """One shell command of a doc: where it is, what it runs, and (console blocks) what it must print."""

    file: Path
    line: int
    text: str
    expected: list[str] | None = None  # None: only the exit code is checked
    gpu: bool = False

    @property
    def where(self) -> str:
        name = self.file.relative_to(REPO) if self.file.is_relative_to(REPO) else self.file
        return f"{name}:{self.line}"


INSTALLERS = re.compile(r"^(sudo\s+)?(pip3?|python3?\s+-m\s+pip|apt(-get)?|conda|uv)\s")
SETUP = re.compile(r"^(pip install\s|make setup$)")
SERVER = re.compile(r"^([A-Z_]+=(\$\([^)]*\)|\S+)\s+)?(llm-dit studio\b|ssh\s|curl\s)")


@dataclass
class Block:
    lang: str
    info: str
    line: int  # line of the first line inside the fence
    lines: list[str] = field(default_factory=list)


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block with its info string's first word and the line number of its first content line."""
    blocks: list[Block] = []
    current: Block | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                info = line[3:].strip()
                current = Block(info.split(" ")[0], info, number + 1)
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.lines.append(line)
    return blocks


def _logical(lines: list[str], start: int) -> list[tuple[int, str]]:
    """Lines joined at trailing backslashes, each with the number of its first physical line."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for offset, line in enumerate(lines):
        if pending is None:
            pending = (start + offset, line)
        else:
            pending = (pending[0], pending[1][:-1].rstrip() + " " + line.strip())
        if not pending[1].endswith("\\"):
            out.append(pending)
            pending = None
    if pending is not None:
        out.append(pending)
    return out


def _command(file: Path, line: int, text: str, expected: list[str] | None) -> Command:
    gpu = bool(GPU.search(text))
    return Command(file, line, GPU.sub("", text).strip(), expected, gpu)


def doc_commands(file: Path) -> list[Command]:
    """The commands of `file`'s bash and console blocks, in order."""
    commands: list[Command] = []
    for block in fenced_blocks(file.read_text()):
        if block.info == "bash setup":
            for line, text in _logical(block.lines, block.line):
                if text.strip() and not text.lstrip().startswith("#"):
                    assert SETUP.match(text), f"{file}:{line}: only `pip install` and `make setup` in a setup block"
        elif block.info == "bash server":
            for line, text in _logical(block.lines, block.line):
                if text.strip() and not text.lstrip().startswith("#"):
                    assert SERVER.match(text), f"{file}:{line}: only `llm-dit studio`, `ssh`, `curl` in a server block"
        elif block.lang == "bash":
            for line, text in _logical(block.lines, block.line):
                if text.strip() and not text.lstrip().startswith("#"):
                    commands.append(_command(file, line, text, None))
        elif block.lang == "console":
            own: list[Command] = []  # this block's commands: output lines belong to the last of them
            for line, text in _logical(block.lines, block.line):
                if text.startswith("$ "):
                    own.append(_command(file, line, text[2:], []))
                    commands.append(own[-1])
                elif own:
                    own[-1].expected.append(text)
                else:
                    raise AssertionError(f"{file}:{line}: console output without a `$ ` command")
    for command in commands:
        assert not INSTALLERS.match(command.text), f"{command.where}: installs run only in a ```bash setup block"
    for command in commands:  # a console block's trailing blank line separates commands: not output
        while command.expected and not command.expected[-1].strip():
            command.expected.pop()
    return commands


# A decimal number standing alone (not part of a name such as `rtx4090` or a version such as `0.0.0.0`).
DECIMAL = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?!\.?\w)")
NUMBER = r"([-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)"
FLOAT_RTOL = 1e-5  # float32 carries ~7 significant digits; kernels differ in the last one or two


def _is_float(token: str) -> bool:
    return any(c in token for c in ".eE")


def _literal(piece: str) -> tuple[str, list[float]]:
    """`piece` as a regex in which each float is a captured number (compared later); the floats it shows."""
    pattern, floats, end = [], [], 0
    for m in DECIMAL.finditer(piece):
        if _is_float(m.group()):
            pattern += [re.escape(piece[end : m.start()]), NUMBER]
            floats.append(float(m.group()))
            end = m.end()
    pattern.append(re.escape(piece[end:]))
    return "".join(pattern), floats


def output_pattern(expected: list[str]) -> tuple[re.Pattern[str], list[float]]:
    """`expected` as a regex (`...` = any text within a line; a line that is only `...` = any number of lines) and
    the floats it shows, in order: each is a captured group of the regex."""
    parts, floats = [], []
    for line in expected:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        pieces = [_literal(piece) for piece in line.rstrip().split("...")]
        parts.append(".*?".join(p for p, _ in pieces) + r"\n")
        floats += [f for _, fs in pieces for f in fs]
    return re.compile("".join(parts), re.DOTALL), floats


def matches(expected: list[str], actual: str) -> bool:
    """Whether `actual` is what `expected` shows: text exactly, floats to `FLOAT_RTOL`."""
    text = "\n".join(line.rstrip() for line in actual.splitlines()) + "\n" if actual else ""
    pattern, floats = output_pattern(expected)
    found = pattern.fullmatch(text)
    return found is not None and all(
        math.isclose(float(got), want, rel_tol=FLOAT_RTOL) for got, want in zip(found.groups(), floats, strict=True)
    )


def scratch_root(tmp: Path) -> Path:
    """A folder that looks like the repo root for the commands: the needed parts linked, nothing else."""
    for name in LINKED:
        (tmp / name).symlink_to(REPO / name)
    return tmp


def shell_line(command: Command) -> str:
    """`make TARGET` as a dry run; everything else as written."""
    if command.text.startswith("make "):
        return "make -n " + command.text.removeprefix("make ")
    return command.text


SHELL_SYNTAX = set("|&;<>()`")  # pipes, redirections, lists, subshells: the line runs in bash


def in_process(text: str) -> bool:
    """Whether `text` is one `llm-dit` command (after any `NAME=value` prefixes) with no shell syntax beyond words,
    quotes and `$VAR`: it can run in this process once bash has expanded it."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # unbalanced quotes: let bash say so
        return False
    if any(set(word) <= SHELL_SYNTAX for word in words):
        return False
    program = next((w for w in words if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)), "")
    return program == "llm-dit"


def expand(
    state: list[str], last: int, text: str, cwd: Path, env: dict[str, str]
) -> tuple[list[str], dict[str, str], Path]:
    """What bash would run for `text` after the doc's `state` lines: its argv (words expanded and split by bash
    itself), its environment (the exported variables, plus the line's `NAME=value` prefixes) and its folder."""
    script = "\n".join([*state, f"(exit {last})", f"set -- {text}", 'printf "%s\\0" "$PWD" "$#" "$@"', "env -0"])
    out = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\0")
    folder, count = Path(out[0]), int(out[1])
    words, exported = out[2 : 2 + count], [v for v in out[2 + count :] if v]
    own_env = dict(v.split("=", 1) for v in exported if "=" in v)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        name, _, value = words.pop(0).partition("=")
        own_env[name] = value
    return words, own_env, folder


def run_in_process(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run `argv` (`llm-dit ...`) through the real entry point in this process, in `cwd` with exactly `env` as the
    environment; its exit code and what it printed (stdout and stderr, in order)."""
    assert argv[0] == "llm-dit", argv
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    output = io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            code = run_main(*argv[1:])
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return code, output.getvalue()


def run_doc(file: Path, cwd: Path) -> list[str]:
    """Run every command of `file` in order in `cwd`; the failures, each naming its file and line."""
    venv = str(REPO / ".venv" / "bin")
    cache = cwd / ".llm-dit-cache"  # each doc starts with an empty tensor cache ("cache": "miss" as the docs show)
    cache.mkdir(exist_ok=True)
    if not (cache / "zoo").exists():  # ... and the session's zoo build (built once)
        (cache / "zoo").symlink_to(Path(os.environ["LLM_DIT_CACHE"]) / "zoo")
    env = {
        **os.environ,
        "LLM_DIT_CACHE": str(cache),
        "PATH": f"{venv}{os.pathsep}{os.environ['PATH']}",
        "LLM_DIT_MODELS": "tiny",
        "PYTHONUNBUFFERED": "1",
        "NO_COLOR": "1",
        "TERM": "dumb",
    }
    env.pop("COLUMNS", None)
    import torch

    has_gpu = torch.cuda.is_available()
    state: list[str] = []
    last = 0
    failures: list[str] = []
    for command in doc_commands(file):
        if STATE.match(command.text) and command.expected is None:
            state.append(command.text)
            continue
        if in_process(command.text):
            argv, own_env, folder = expand(state, last, command.text, cwd, env)
            last, output = run_in_process(argv, own_env, folder)
        else:
            script = "\n".join([*state, f"(exit {last})", shell_line(command)])
            proc = subprocess.run(
                ["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, timeout=TIMEOUT_S, check=False,
            )  # fmt: skip
            last, output = proc.returncode, proc.stdout
        lines = output.strip().splitlines()
        problem = None
        if command.gpu and not has_gpu:
            gpu_refusal = (
                len(lines) == 1 and lines[0].startswith("error: ") and re.search(r"cuda|CUDA|accelerator", lines[0])
            )
            if last != 2 or not gpu_refusal:  # refused for the GPU, not for a missing file or a typo
                problem = "a GPU-only command must be refused on CPU with exit 2 and one `error:` line naming the GPU"
        elif command.expected is None and last != 0:  # (a GPU command on a GPU machine runs as any other)
            problem = f"exited {last}"
        if problem is None and command.expected is not None and not matches(command.expected, output):
            problem = "printed something else than the doc shows:\n--- doc\n" + "\n".join(command.expected)
        if problem:
            failures.append(f"{command.where}: `{command.text}`: {problem}\n--- tool (exit {last})\n{output}")
    return failures


@pytest.mark.parametrize("doc", [d for d in DOCS if doc_commands(d)], ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_run_as_written(doc: Path, zoo: Path, tmp_path: Path) -> None:
    start = time.perf_counter()
    failures = run_doc(doc, scratch_root(tmp_path))
    print(f"{doc.name}: {len(doc_commands(doc))} commands in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    assert not failures, "\n\n".join(failures)


# The harness's own rules, on small made-up docs.


def test_parser_joins_continuations_keeps_line_numbers_and_marks_gpu(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "intro\n```bash\n# comment\nA=1\nllm-dit generate -p x \\\n    -o y.png\n"
        "llm-dit x --profile rtx4090  # GPU\n```\n"
        "```console\n$ echo hi\nhi\n\n$ echo $?\n0\n```\n```\nllm-dit synopsis [OPTIONS]\n```\n"
    )
    got = [(c.line, c.text, c.expected, c.gpu) for c in doc_commands(doc)]
    assert got == [
        (4, "A=1", None, False),
        (5, "llm-dit generate -p x -o y.png", None, False),
        (7, "llm-dit x --profile rtx4090", None, True),
        (10, "echo hi", ["hi"], False),
        (13, "echo $?", ["0"], False),
    ]


def test_install_steps_never_run_and_hold_only_installs(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("```bash setup\npip install -e .\nmake setup\n```\n")
    assert doc_commands(doc) == []
    doc.write_text("```bash setup\npip install torch\nllm-dit demo\n```\n")
    with pytest.raises(AssertionError, match=r"x\.md:3: only `pip install`"):
        doc_commands(doc)
    doc.write_text("```bash\npip install torch\n```\n")
    with pytest.raises(AssertionError, match=r"installs run only in a ```bash setup block"):
        doc_commands(doc)


def test_output_check_is_exact_except_for_the_ellipsis() -> None:
    assert matches(["a 1", "b"], "a 1\nb\n")
    assert not matches(["a 1", "b"], "a 2\nb\n")
    assert not matches(["a"], "a\nextra\n")
    assert matches(["took ... s", "..."], "took 3.2 s\nmore\nlines\n")
    assert matches(["x", "...", "z"], "x\nz\n")
    assert not matches(["took ... s"], "took 3\n")


def test_floats_compare_as_numbers_to_the_stated_tolerance_and_all_else_exactly() -> None:
    doc = ['{"median_max_abs": 0.13108424842357635, "count": 2}']
    assert matches(doc, '{"median_max_abs": 0.13108423352241516, "count": 2}\n')  # the 8th significant digit
    assert not matches(doc, '{"median_max_abs": 0.13208424842357635, "count": 2}\n')  # the 3rd
    assert not matches(doc, '{"median_max_abs": 0.13108424842357635, "count": 3}\n')  # integers exactly
    assert not matches(doc, '{"median_max_abs": "0.131084248", "count": 2}\n')  # quotes are text
    assert matches(["│ image │ 258 │ -0.003206 │ 0.05445 │"], "│ image │ 258 │ -0.0032060001 │ 0.05445 │\n")
    assert not matches(["│ image │ 258 │ -0.003206 │"], "│ image │ 258 │ 0.003206 │\n")  # the sign counts
    assert matches(["scale 1e-05 ... done"], "scale 1.0000001e-05 then done\n")
    assert not matches(["rtx4090 v0.1.0 at 0.0.0.0"], "rtx4091 v0.1.0 at 0.0.0.0\n")  # names and versions: text
    assert not matches(["rtx4090 v0.1.0 at 0.0.0.0"], "rtx4090 v0.1.1 at 0.0.0.0\n")
    assert not matches(["bound 0.5"], "bound 0.5000\nmore\n")


def test_console_output_belongs_to_a_command_of_its_own_block(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("```console\n$ echo a\na\n```\n\n```console\nan excerpt\n```\n")
    with pytest.raises(AssertionError, match=r"x\.md:7: console output without a `\$ ` command"):
        doc_commands(doc)


def test_a_failing_command_is_named_by_file_and_line(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("```bash\nX=out\ntrue\nfalse\n```\n```console\n$ echo $X\nout\n$ echo no\nyes\n```\n")
    found = run_doc(doc, tmp_path)
    assert [f.split(": `")[0].rsplit(":", 1)[1] for f in found] == ["4", "9"]
    assert "exited 1" in found[0] and "printed something else" in found[1]


def test_a_gpu_command_that_runs_or_fails_noisily_is_a_failure(tmp_path: Path) -> None:
    doc = tmp_path / "g.md"
    doc.write_text("```bash\ntrue  # GPU\necho 'error: no cuda' >&2; exit 2  # GPU\n```\n")
    found = run_doc(doc, tmp_path)
    assert len(found) == 1 and found[0].split(": `")[0].endswith(":2")


def test_llm_dit_lines_run_in_process_as_bash_would_run_them(tmp_path: Path) -> None:
    assert in_process('llm-dit generate -p "a red fox" -o x.png')
    assert in_process("LLM_DIT_CACHE=/tmp/c llm-dit config show")
    assert not in_process("llm-dit config show > mine.toml")  # a redirection: bash runs it
    assert not in_process("printf 'x' > b.toml && llm-dit config show --config b.toml")
    assert not in_process("echo $?") and not in_process("make -n demo")
    (tmp_path / "sub").mkdir()
    state = ['SMALL="--steps 2 --width 64"', "export EXPORTED=1", "UNEXPORTED=2", "cd sub"]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    argv, own_env, folder = expand(
        state, 0, 'CACHE=/x llm-dit generate $SMALL -p "a fox" -o "$UNEXPORTED.png"', tmp_path, env
    )
    assert argv == ["llm-dit", "generate", "--steps", "2", "--width", "64", "-p", "a fox", "-o", "2.png"]
    assert own_env["EXPORTED"] == "1" and own_env["CACHE"] == "/x" and "UNEXPORTED" not in own_env
    assert folder == tmp_path / "sub"


def test_an_in_process_command_prints_stdout_and_stderr_in_order_and_leaves_no_trace(tmp_path: Path) -> None:
    before_env, before_cwd = dict(os.environ), Path.cwd()
    env = {"NO_COLOR": "1", "LLM_DIT_CACHE": os.environ["LLM_DIT_CACHE"]}
    argv = ["llm-dit", "generate", "--models", "tiny", "-p", "x", "-o", "x.png", "--width", "100"]
    code, output = run_in_process(argv, env, tmp_path)
    assert code == 2 and output.count("\n") == 1
    assert output.startswith("error: bad value for 'generation.width' (--width)")
    code, output = run_in_process(["llm-dit", "generate", "-p", "x", "--steps", "zero"], env, tmp_path)
    assert code == 2 and "Usage: llm-dit generate [OPTIONS]" in output  # the program's own name, not pytest's
    assert dict(os.environ) == before_env and Path.cwd() == before_cwd
