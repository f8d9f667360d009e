"""Experiments: a sweep run, scored and reported by one call.

`run_sweep` plans a spec (`checked_plan`: `sweep.plan_sweep` resolves each run's config once and refuses runs
that could not do what they say, `runner.check_plan` reads every input once and checks every run, all before
anything is written or any model loads: a `runner.CheckedPlan`, never checked again), holds the sweep directory
(`sweepdir.SweepDir.writing`: lock, resume, repair), hands the runs not yet done to an executor (`EXECUTORS`:
`runner.run_local` or `distributed.run_on_ray`, which return the same `runner.Stats`) and writes the summary.
`run_experiment` is `run_sweep`, then the metrics (`scoring.write_metrics`), then `grid.png` and `report.html`
(`report.build_report`): what `llm-dit sweep` and `llm-dit demo` run, and what a notebook calls. Both take a spec or
the plan `checked_plan` made of it, and three small values instead of keyword lists: `RunOptions` (how it runs),
`Scoring` (the metric models) and `Session` (what it reuses from this process).

    from llm_dit import RunOptions, Scoring, SweepSpec, load_config, run_experiment
    spec = SweepSpec(prompts=["a lighthouse"], images=["style.png"], axes={"vl.alpha": [0.3, 0.6]})
    result = run_experiment(load_config(), spec, "out/alpha")
    result.summary["completed"], result.metrics, result.report
    again = run_experiment(load_config(), spec, "out/alpha", options=RunOptions(resume=True), scoring=Scoring("tiny"))
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.settings import Config
from ..core.errors import check_choice
from ..core.modes import EXECUTOR_NAMES
from ..generation.records import library_versions
from ..report.sweep_report import build_report
from ..scoring.scorer import Scoring
from ..scoring.sweep_metrics import Metrics, write_metrics
from ..sweep.dir import SweepDir
from ..sweep.distributed import run_on_ray
from ..sweep.runner import CheckedPlan, Job, RunOptions, Session, check_plan, run_local
from ..sweep.spec import Inputs, SweepSpec, plan_sweep

EXECUTORS = dict(zip(EXECUTOR_NAMES, (run_local, run_on_ray), strict=True))
"""The executors by name; each runs a `runner.Job` (a plan's runs into a sweep directory) and returns `runner.Stats`."""


@dataclass(frozen=True)
class ExperimentResult:
    """What `run_experiment` made: the sweep summary (`sweep.json`), the metrics (`metrics.json`) and the paths of
    the contact sheet and the report."""

    summary: dict[str, Any]
    metrics: Metrics
    grid: Path
    report: Path


def checked_plan(base: Config, spec: SweepSpec, inputs: Inputs | None = None) -> CheckedPlan:
    """The plan of `spec` (`sweep.plan_sweep`) with every input read and every run checked (`runner.check_plan`),
    before any model loads: what `sweep --dry-run` shows and `run_sweep` runs, without checking it again.
    `inputs`: where the input files are read into (default: a new `Inputs`; the plan keeps them)."""
    inputs = inputs if inputs is not None else Inputs()
    return check_plan(base, spec, plan_sweep(base, spec, inputs), inputs)


def _checked(base: Config, spec: SweepSpec | CheckedPlan) -> CheckedPlan:
    """`spec`'s checked plan: made now (`checked_plan`), or `spec` itself when it is one (made for `base`)."""
    if not isinstance(spec, CheckedPlan):
        return checked_plan(base, spec)
    if spec.base != base:
        raise ValueError("the checked plan was made for another base config")
    return spec


def run_sweep(
    base: Config,
    spec: SweepSpec | CheckedPlan,
    out_dir: str | os.PathLike[str],
    *,
    options: RunOptions | None = None,
    session: Session | None = None,
) -> dict[str, Any]:
    """Run `spec` into the sweep directory `out_dir` with `base` as every run's config below its own settings;
    returns the summary (also written as `sweep.json`). `spec`: a spec, or its plan already checked for `base`
    (`checked_plan`: not checked again). `options`: resume, executor, batch size, a callback per result line
    (`runner.RunOptions`; default: a new sweep, local, one run per call); `session`: warm components or the tensor
    cache to reuse (`runner.Session`; default: the cache under `$LLM_DIT_CACHE`; Ray workers always load their own
    models)."""
    options, session = options or RunOptions(), session or Session()
    execute = EXECUTORS[check_choice(options.executor, EXECUTORS, "executor")]
    work = _checked(base, spec)  # refuses before anything is written or loaded
    t0 = time.perf_counter()
    with SweepDir(out_dir).writing(options.resume) as sweep:
        if options.resume:
            sweep.check_plan(base.model_dump(), work.plan.runs)
        todo = work.only(set(work.plan.configs) - sweep.done())
        sweep.write_spec(work.spec.model_dump(), base.model_dump(), work.plan.runs)
        stats = execute(Job(todo, sweep, options, session))
        finished = sweep.runs()
        summary = {
            "name": work.spec.name,
            "runs": len(work.plan.runs),
            "completed": sum(r.status == "ok" for r in finished),
            "failed": sum(r.status == "failed" for r in finished),
            "ran_now": len(todo.plan.runs),
            "vl_forward_passes": stats.forward_passes["vl"],
            "text_forward_passes": stats.forward_passes["text"],
            "cache_hits": stats.cache_hits,
            "cache_misses": stats.cache_misses,
            "plan": todo.plan.passes(),
            "executor": options.executor,
            "batch_size": options.batch_size,
            "wall_time_s": round(time.perf_counter() - t0, 3),
            "versions": library_versions(),
        }
        sweep.write_summary(summary)
    return summary


def run_experiment(
    config: Config,
    spec: SweepSpec | CheckedPlan,
    out_dir: str | os.PathLike[str],
    *,
    options: RunOptions | None = None,
    scoring: Scoring | None = None,
    session: Session | None = None,
) -> ExperimentResult:
    """Run `spec` into `out_dir` (`run_sweep`, same arguments), score every finished run (`scoring.write_metrics`
    with `scoring`: the metric models and their device, checked before the sweep runs; default: model-free metrics
    only) and write `grid.png` and `report.html` (`report.build_report`)."""
    scoring = scoring or Scoring()
    scoring.check()  # refused before the sweep runs, not when scoring it
    work = _checked(config, spec)  # each input file read once: checked, run and scored
    summary = run_sweep(config, work, out_dir, options=options, session=session)
    metrics = write_metrics(out_dir, scoring, work.inputs)
    grid, report = build_report(out_dir)
    return ExperimentResult(summary, metrics, grid, report)
