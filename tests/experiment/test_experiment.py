"""Experiments: one owner of the sweep directory, executors below one entry point, one call that runs, scores and
reports a sweep, and a plan that resolves each run's config once."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm_dit.config.settings import load_config
from llm_dit.core.cache import TensorCache
from llm_dit.core.errors import UserError
from llm_dit.experiment.run import checked_plan, run_experiment, run_sweep
from llm_dit.sweep import spec as sweep_module
from llm_dit.sweep.dir import SweepDir
from llm_dit.sweep.run import Run, RunResult
from llm_dit.sweep.runner import RunOptions, Session
from llm_dit.sweep.spec import SweepSpec, resolve_spec

from ..conftest import REPO, tiny_config

SRC = REPO / "src" / "llm_dit"
REF = REPO / "examples" / "reference-images" / "test_scene.png"
PROMPT = "an experiment's lighthouse"
FORMAT_FILES = re.compile(r"\b(results\.jsonl|metrics\.json|sweep\.json|spec\.json)\b")


def small_spec(**axes: list) -> SweepSpec:
    """A sweep of the tiny zoo at 32x32 px and 2 steps: one prompt (its own, so other tests' cache entries do not
    count), the reference image, `axes` (as the CLI sets them: steps a one-valued axis, the size fixed values)."""
    spec = SweepSpec(prompts=[PROMPT], images=[str(REF)])
    size = {"generation.width": 32, "generation.height": 32}
    return resolve_spec(spec, None, {**axes, "generation.steps": [2]}, size)


def imports(module: Path) -> set[str]:
    """The package modules `module` imports (`from .x import`, `from llm_dit.x import`, `from . import x`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found |= {alias.name for alias in node.names}
            elif node.module and node.module.startswith("llm_dit."):
                found.add(node.module.split(".")[1])
    return found


# ------------------------------------------------------------------------------------------ the directory


def test_only_sweepdir_names_the_sweep_directory_files_or_takes_its_lock():
    """No module but `sweep.dir` opens results.jsonl, metrics.json, sweep.json or spec.json: none names them in code
    (docstrings may), and none but it locks (filelock; no fcntl anywhere)."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "sweep" / "dir.py":
            continue
        text = path.read_text()
        tree = ast.parse(text)
        docs = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}  # bare strings: docs
        strings = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        offenders += [
            f"{path.name}:{n.lineno} {n.value!r}" for n in strings if id(n) not in docs and FORMAT_FILES.search(n.value)
        ]
        if re.search(r"^\s*(import|from) (fcntl|filelock)\b", text, re.M):
            offenders.append(f"{path.name}: takes a lock")
    assert offenders == []
    assert "fcntl" not in (SRC / "sweep" / "dir.py").read_text()


def test_a_sweep_holding_the_directory_in_another_process_locks_out_a_second_one(zoo, tmp_path):
    """Another process holds the directory (as a running sweep does); a second sweep into it is refused with one
    line before it writes anything, and goes ahead once the first process has let go."""
    out = tmp_path / "locked"
    holder = textwrap.dedent(
        f"""
        import sys
        from llm_dit.sweep.dir import SweepDir
        with SweepDir({str(out)!r}).writing():
            print("holding", flush=True)
            sys.stdin.readline()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert proc.stdout.readline().strip() == "holding"
        with pytest.raises(UserError) as e:
            run_sweep(tiny_config(zoo), small_spec(), out)
        assert str(e.value) == f"another sweep is writing to {out}"
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
        with pytest.raises(UserError, match="another sweep"), SweepDir(out).writing():
            pass
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0
    with SweepDir(out).writing():  # released by the other process: free again
        pass


def test_reading_results_skips_torn_lines_and_the_last_record_of_an_id_wins(tmp_path):
    sweep = SweepDir(tmp_path)
    a, b, c = (Run(prompt=p) for p in "abc")
    sweep.append_result(RunResult.of(a, status="failed", error="RuntimeError: boom"))
    sweep.append_result(RunResult.of(b, status="ok", output=f"images/{b.id}.png"))
    sweep.append_result(RunResult.of(a, status="ok", output=f"images/{a.id}.png"))
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"id": "x", "status": "ok"}\n')  # not a result: no prompt
        f.write('{"id": "c", "sta')  # a crash mid-write
    assert [(r.id, r.status) for r in sweep.runs()] == [(a.id, "ok"), (b.id, "ok")]
    assert [r.id for r in sweep.lines()] == [a.id, b.id, a.id] and sweep.done() == {a.id, b.id}
    (tmp_path / ".x.png.1.tmp").write_bytes(b"half")
    with sweep.writing(resume=True):  # repairs: the torn line is cut, temp files go
        sweep.append_result(last := RunResult.of(c, status="ok", output=f"images/{c.id}.png"))
    assert json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1]) == last.as_record()
    assert sweep.lines()[-1] == last
    assert not list(tmp_path.glob("*.tmp")) and sweep.done() == {a.id, b.id, c.id}
    assert sweep.summary() == {} and sweep.metrics() == {}  # absent: empty, not an error


# ------------------------------------------------------------------------------------------ the entry point


def test_executors_sit_below_one_entry_point():
    """runner (the steps and the local executor) imports no executor and no entry point; only experiment imports
    the Ray executor; nothing below experiment imports it."""
    from ..test_architecture import imports, modules

    importers = {name: imports(name, path) for name, path in modules().items()}
    assert not importers["sweep.runner"] & {"sweep.distributed", "experiment.run"}
    assert "sweep.runner" in importers["sweep.distributed"]
    assert sorted(m for m, names in importers.items() if "sweep.distributed" in names) == ["experiment.run"]
    # above it only: the benchmark, the eval (whose every (method, cell) is a run of one sweep), the command line
    # and the studio (its sweep launch)
    above = sorted(m for m, names in importers.items() if "experiment.run" in names)
    assert above == ["bench.figures", "cli.runs", "eval.run", "studio.jobs"]


def test_the_plan_resolves_each_run_config_once(zoo, tmp_path, monkeypatch):
    """Planning, checking, priming and rendering a sweep resolve each run's config exactly once."""
    calls: list[str] = []
    resolve = sweep_module.run_config

    def counted(base, run):
        calls.append(run.id)
        return resolve(base, run)

    monkeypatch.setattr(sweep_module, "run_config", counted)
    spec = small_spec(**{"vl.alpha": [0.3, 0.6]})
    summary = run_sweep(tiny_config(zoo), spec, tmp_path / "s", session=Session(cache=TensorCache(tmp_path / "cache")))
    assert summary["completed"] == summary["runs"] == 3
    assert sorted(calls) == sorted(r.id for r in SweepDir(tmp_path / "s").runs())


def counted(monkeypatch, function) -> list[tuple]:
    """The arguments of every call of `function`, wherever a loaded llm_dit module binds it (modules import it by
    name, so each binding is patched)."""
    calls: list[tuple] = []

    def counting(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    for module in list(sys.modules.values()):
        bound = getattr(module, function.__name__, None) if module.__name__.startswith("llm_dit") else None
        if bound is function:
            monkeypatch.setattr(module, function.__name__, counting)
    return calls


def test_each_rule_runs_once_per_run_of_a_sweep_and_once_per_image_of_the_api(zoo, tmp_path, monkeypatch):
    """Issue 23: checking, priming and rendering a sweep apply each rule of one image once per run, through one
    function per rule (before: the image-free rule 3 times per run, a reference set's weights up to 7 times,
    style_delta's neutral twice in two wordings); `Generator.prepare` applies each once to what it is given."""
    from llm_dit.conditioning import imagedep, source
    from llm_dit.generation import assemble
    from llm_dit.generation.generate import Generator
    from llm_dit.maths import compose

    rules = (
        assemble.check_request,
        imagedep.refuse_image_free,
        source.check_reference_weights,
        compose.check_weights,
        source.check_neutral,
    )
    calls = {rule.__name__: counted(monkeypatch, rule) for rule in rules}
    pair = f"{REF}+{REF.with_name('sunset.png')}"
    on_the_set = {"images": [pair], "reference_weights": [[0.7, 0.3]]}
    spec = small_spec(**{"vl.alpha": [0.3, 0.6]}).model_copy(update=on_the_set)
    cache = TensorCache(tmp_path / "cache")
    summary = run_sweep(tiny_config(zoo), spec, tmp_path / "s", options=RunOptions(batch_size=2),
                        session=Session(cache=cache))  # fmt: skip
    assert summary["completed"] == summary["runs"] == 3  # the text-only baseline and two alphas on the set
    assert {name: len(c) for name, c in calls.items()} == {
        "check_request": 3,
        "refuse_image_free": 3,
        "check_reference_weights": 2,  # the two runs on the reference set
        "check_weights": 2,
        "check_neutral": 3,
    }
    for c in calls.values():
        c.clear()
    images = [Image.open(p).convert("RGB") for p in pair.split("+")]
    Generator(tiny_config(zoo), cache).prepare(PROMPT, source.Reference(images, weights=[0.8, 0.2]))
    assert {name: len(c) for name, c in calls.items()} == dict.fromkeys(calls, 1)


def test_an_eval_swaps_in_its_captions_without_checking_again(zoo, monkeypatch):
    """`runner.with_prompts`: runs that differ only in their prompts (an eval's captions, written after every run
    was checked) get new ids and forward passes, and reuse their checked requests: no rule runs again."""
    from llm_dit.generation import assemble
    from llm_dit.sweep.runner import with_prompts
    from llm_dit.sweep.spec import ListedRun

    placeholder = ListedRun(prompt="a fox. the caption", image=str(REF), label="caption")
    spec = SweepSpec(runs=[placeholder, ListedRun(prompt="a fox", label="text")])
    work = checked_plan(tiny_config(zoo), spec)
    calls = counted(monkeypatch, assemble.check_request)
    captioned = spec.model_copy(
        update={"runs": [placeholder.model_copy(update={"prompt": "a fox. in ink"}), spec.runs[1]]}
    )
    swapped = with_prompts(work, captioned)
    assert calls == [] and swapped.spec is captioned
    assert [c.request.prompt for c in swapped.checked] == [r.prompt for r in swapped.plan.runs]
    assert [r.prompt for r in swapped.plan.runs] == ["a fox. in ink", "a fox"]
    assert swapped.plan.runs[0].id != work.plan.runs[0].id and swapped.plan.runs[1] == work.plan.runs[1]
    assert swapped.checked[0].request.source is work.checked[0].request.source
    assert {e["prompt"] for e in swapped.plan.unique_encodes} == {"a fox. in ink", "a fox"}
    other = placeholder.model_copy(update={"settings": {"vl.alpha": 0.9}})
    with pytest.raises(ValueError, match="more than its prompt"):
        with_prompts(work, spec.model_copy(update={"runs": [other]}))


def test_run_experiment_writes_what_the_cli_sweep_writes(cli, zoo, tmp_path, monkeypatch):
    """One API call runs, scores and reports a sweep: its summary, results, images, metrics, grid and report are the
    ones `llm-dit sweep` writes for the same sweep (each with a fresh tensor cache, so the counts compare)."""
    seen: list[RunResult] = []
    models = {"models.zimage": str(zoo / "zimage"), "models.vl": str(zoo / "qwen3-vl")}
    api = run_experiment(
        load_config(overrides=models),
        small_spec(**{"vl.alpha": [0.3, 0.6]}),
        tmp_path / "api",
        options=RunOptions(on_result=seen.append),
        session=Session(cache=TensorCache(tmp_path / "cache-api")),
    )
    monkeypatch.setenv("LLM_DIT_CACHE", str(tmp_path / "cache-cli"))
    args = ["--alphas", "0.3,0.6", "-i", REF, "-p", PROMPT, "--zimage", zoo / "zimage", "--vl", zoo / "qwen3-vl"]
    r = cli("sweep", *args, "--width", "32", "--height", "32", "--steps", "2", "-o", tmp_path / "cli", "--json")
    assert r.code == 0, r.err
    printed = json.loads(r.out)

    api_dir, cli_dir = SweepDir(tmp_path / "api"), SweepDir(tmp_path / "cli")
    assert (api.grid, api.report) == (api_dir.grid, api_dir.report) and api.report.is_file()
    assert (printed["grid"], printed["report"]) == (str(cli_dir.grid), str(cli_dir.report))
    spec_files = [json.loads((d.path / "spec.json").read_text()) for d in (api_dir, cli_dir)]
    assert spec_files[0] == spec_files[1] and len(spec_files[0]["runs"]) == 3

    def timeless(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in ("wall_time_s", "grid", "report")}

    assert api.summary == api_dir.summary() and timeless(api.summary) == timeless(cli_dir.summary())
    assert timeless(api.summary) == timeless(printed)
    assert api.summary["completed"] == 3 and api.summary["vl_forward_passes"] == 2

    def lines(sweep: SweepDir) -> list[dict]:
        return [x.as_record() | {"record": {**(x.record or {}), "timings_s": None}} for x in sweep.lines()]

    written = json.loads(json.dumps([x.as_record() for x in seen], default=str))
    assert written == [x.as_record() for x in api_dir.lines()]  # each line as it was written
    assert lines(api_dir) == lines(cli_dir)
    for x in api_dir.lines():
        a = np.asarray(Image.open(api_dir.path / str(x.output))).astype(int)
        b = np.asarray(Image.open(cli_dir.path / str(x.output))).astype(int)
        assert np.abs(a - b).max() <= 1
    assert api.metrics == api_dir.metrics() == cli_dir.metrics() and len(api.metrics) == 3
    assert Image.open(api.grid).size == Image.open(cli_dir.grid).size

    def numberless(html: str) -> str:  # timings and wall time differ between the two runs; nothing else may
        return re.sub(r"\d+\.\d+(e-?\d+)?", "#", html)

    assert numberless(api.report.read_text()) == numberless(cli_dir.report.read_text())
