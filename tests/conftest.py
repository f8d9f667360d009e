"""Shared fixtures: the tiny zoo (built once per machine, offline) and an in-process CLI runner."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_test_file(name: str) -> Path:
    """The test module `name` (`test_x.py`) wherever it lives under tests/: the docs name tests by file and function,
    and the tests mirror the packages (`tests/sweep/test_sweep.py`), so a file's name is unique."""
    found = sorted((REPO / "tests").rglob(name))
    assert len(found) == 1, f"{name}: {len(found)} files of that name under tests/"
    return found[0]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session gets its own llm-dit cache, so nothing depends on (or pollutes) the user's."""
    root = tmp_path_factory.mktemp("llm-dit-cache")
    (root / "zoo").symlink_to(shared_zoo(), target_is_directory=True)
    os.environ["LLM_DIT_CACHE"] = str(root)
    os.environ["HF_HUB_OFFLINE"] = "1"
    # torch.compile's kernels too: inductor's shared cache (/tmp/torchinductor_$USER) returned kernels compiled under
    # another thread count, which aborted the process under OMP_NUM_THREADS=1 (torch 2.13)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("torchinductor"))
    return root


@pytest.fixture(autouse=True)
def _own_tensor_cache(_isolated_cache: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Every test starts with an empty tensor cache (the zoo still shared): a test that counts forward passes or
    cache misses must not depend on which tests ran before it in its worker (`pytest -n` orders them differently)."""
    root = tmp_path_factory.mktemp("cache")
    (root / "zoo").symlink_to(shared_zoo(), target_is_directory=True)
    monkeypatch.setenv("LLM_DIT_CACHE", str(root))


def shared_zoo() -> Path:
    """Where the sessions and xdist workers of this machine keep the built zoos (`$LLM_DIT_TEST_ZOO`, else a folder
    in the system's temp dir). Sharing is safe: each build is keyed by its recipe and the library versions
    (`zoo.zoo_key`) and installed atomically (`zoo.install_built`), so a session reuses a build only if it would
    build the same bytes. Only the zoo is shared; every other cache entry stays per session."""
    folder = Path(os.environ.get("LLM_DIT_TEST_ZOO") or Path(tempfile.gettempdir()) / f"llm-dit-test-zoo-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_worker() -> None:
    """Under `pytest -n N` each worker computes with one thread: N workers on N cores, not N x cores threads
    fighting (the tiny models gain nothing from intra-op threads)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def zoo(_isolated_cache: Path) -> Path:
    """The cached tiny zoo folder with `zimage/` and `qwen3-vl/`."""
    from llm_dit.models.zoo import zoo_dir

    return zoo_dir("tiny")


def tiny_config(zoo: Path, **overrides):
    """The tiny zoo's two models at 64x64 pixels and 2 steps, plus dotted `overrides`."""
    from llm_dit.config.settings import load_config

    base = {"models.zimage": str(zoo / "zimage"), "models.vl": str(zoo / "qwen3-vl")}
    return load_config(
        overrides=base | {"generation.width": 64, "generation.height": 64, "generation.steps": 2} | overrides
    )


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_main(*args: object) -> int:
    """`llm-dit ARGS...` in-process through the real entry point (`llm_dit.cli.app.main`); its exit code. For
    module-scoped fixtures, which cannot use the `cli` fixture."""
    from llm_dit.cli.app import main

    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", ["llm-dit", *map(str, args)])
        try:
            main()
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `llm-dit ARGS...` in-process through the real entry point (`run_main`), capturing what it prints."""

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        code = run_main(*args)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: intra-op threading only adds overhead (and stalls on a busy machine). Use per module with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def signalling_cli(signal_name: str, method: str, count: int) -> list[str]:
    """The command of an `llm-dit` process that sends itself the real signal `signal_name` (SIGINT as Ctrl-C
    sends, SIGKILL as a crash) right after its `count`-th call of `SweepDir.method` returns (`append_result`: after
    that many result lines are saved; `write_spec`: once the plan is written, before any run): append the CLI's
    arguments. The interrupt then always lands mid-sweep; a test that watched the directory from outside and then
    signalled raced the sweep, whose tiny runs are fast, and lost on a loaded machine. SIGINT is handled as in an
    interactive shell (KeyboardInterrupt) even when the suite runs as a background job, whose children inherit
    SIGINT ignored."""
    program = f"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from llm_dit.sweep.dir import SweepDir
calls, real = [], SweepDir.{method}
def signalling(self, *args, **kwargs):
    out = real(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == {count}:
        os.kill(os.getpid(), signal.{signal_name})
    return out
SweepDir.{method} = signalling
from llm_dit.cli.app import main
sys.argv = ["llm-dit", *sys.argv[1:]]
main()
"""
    return [sys.executable, "-c", program]


def fsynced_path(fd: int) -> Path:
    """The file or folder `fd` is open on, a temporary file (`.NAME.RANDOM.tmp`) named as the file it becomes."""
    path = Path(os.readlink(f"/proc/self/fd/{fd}"))
    return path.with_name(re.sub(r"^\.(.+)\.[^.]+\.tmp$", r"\1", path.name))


@pytest.fixture
def fsynced(monkeypatch) -> list[Path]:
    """Every path fsynced while the test runs, files and folders, on any thread (Linux's /proc names the
    descriptor's file)."""
    paths: list[Path] = []
    real = os.fsync

    def record(fd: int) -> None:
        paths.append(fsynced_path(fd))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return paths
