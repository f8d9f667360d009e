"""Experiments: a sweep run, scored and reported by one call.

`run_sweep` plans a spec (`checked_plan`: `sweep.plan_sweep` resolves each run's config once and refuses runs
that could not do what they say, `runner.validate` reads every input once and checks every run's settings, all
before anything is written or any model loads), holds the sweep directory (`sweepdir.SweepDir.writing`: lock, resume,
repair), hands the runs not yet done to an executor (`EXECUTORS`: `runner.run_local` or `distributed.run_on_ray`,
which return the same `runner.Stats`) and writes the summary. `run_experiment` is `run_sweep`, then the metrics
(`scoring.write_metrics`), then `grid.png` and `report.html` (`report.build_report`): what `llm-dit sweep` and
`llm-dit demo` run, and what a notebook calls.

    from llm_dit import SweepSpec, load_config, run_experiment
    spec = SweepSpec(prompts=["a lighthouse"], images=["style.png"], axes={"vl.alpha": [0.3, 0.6]})
    result = run_experiment(load_config(), spec, "out/alpha")
    result.summary["completed"], result.metrics, result.report
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.settings import Config
from ..core.cache import TensorCache
from ..core.errors import check_choice
from ..core.modes import EXECUTOR_NAMES
from ..generation.components import Components
from ..generation.records import library_versions
from ..report.sweep_report import build_report
from ..scoring.scorer import check_metric_device
from ..scoring.sweep_metrics import Metrics, write_metrics
from ..sweep.dir import SweepDir
from ..sweep.distributed import run_on_ray
from ..sweep.runner import Job, OnResult, run_local, validate
from ..sweep.spec import Inputs, Plan, SweepSpec, plan_sweep

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


def checked_plan(base: Config, spec: SweepSpec, inputs: Inputs | None = None) -> Plan:
    """The plan of `spec` (`sweep.plan_sweep`) with every input read and every run's settings checked
    (`runner.validate`), before any model loads: what `sweep --dry-run` shows and `run_sweep` runs. `inputs`:
    where the input files are read into (the executor reuses them)."""
    inputs = inputs if inputs is not None else Inputs()
    work = plan_sweep(base, spec, inputs)
    validate(work, inputs)
    return work


def run_sweep(
    base: Config,
    spec: SweepSpec,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    batch_size: int = 1,
    executor: str = "local",
    on_result: OnResult | None = None,
    cache: TensorCache | None = None,
    inputs: Inputs | None = None,
    components: Components | None = None,
) -> dict[str, Any]:
    """Run `spec` into the sweep directory `out_dir` with `base` as every run's config below its own settings;
    returns the summary (also written as `sweep.json`). `resume`: finish a sweep already in `out_dir` (its done
    runs are kept); `batch_size`: runs per diffusers call when they can share one; `executor`: a name of
    `EXECUTORS`; `on_result`: called with each result line as it is written; `cache`: the tensor cache (default:
    the one under `$LLM_DIT_CACHE`); `inputs`: where the input files are read into (`checked_plan`); `components`:
    models already loaded for `base` that the local executor generates with instead of loading its own (the eval's
    captioning VL model, the studio's warm models; Ray workers always load their own)."""
    execute = EXECUTORS[check_choice(executor, EXECUTORS, "executor")]
    inputs = inputs if inputs is not None else Inputs()
    work = checked_plan(base, spec, inputs)  # refuses before anything is written or loaded
    t0 = time.perf_counter()
    with SweepDir(out_dir).writing(resume) as sweep:
        if resume:
            sweep.check_plan(base.model_dump(), work.runs)
        todo = work.only(set(work.configs) - sweep.done())
        sweep.write_spec(spec.model_dump(), base.model_dump(), work.runs)
        stats = execute(Job(base, todo, sweep, batch_size, on_result, cache, inputs, components))
        finished = sweep.runs()
        summary = {
            "name": spec.name,
            "runs": len(work.runs),
            "completed": sum(r.status == "ok" for r in finished),
            "failed": sum(r.status == "failed" for r in finished),
            "ran_now": len(todo.runs),
            "vl_forward_passes": stats.forward_passes["vl"],
            "text_forward_passes": stats.forward_passes["text"],
            "cache_hits": stats.cache_hits,
            "cache_misses": stats.cache_misses,
            "plan": todo.passes(),
            "executor": executor,
            "batch_size": batch_size,
            "wall_time_s": round(time.perf_counter() - t0, 3),
            "versions": library_versions(),
        }
        sweep.write_summary(summary)
    return summary


def run_experiment(
    config: Config,
    spec: SweepSpec,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    executor: str = "local",
    batch_size: int = 1,
    metric_models: list[str] | None = None,
    metric_device: str = "cpu",
    cache: TensorCache | None = None,
    on_result: OnResult | None = None,
    components: Components | None = None,
) -> ExperimentResult:
    """Run `spec` into `out_dir` (`run_sweep`, same arguments), score every finished run (`scoring.write_metrics`,
    with the metric models `metric_models` on `metric_device`: `scorer.metric_models`) and write `grid.png` and
    `report.html` (`report.build_report`)."""
    check_metric_device(metric_device)  # refused before the sweep runs, not when scoring it
    inputs = Inputs()  # each input file read once: checked, run and scored
    summary = run_sweep(
        config,
        spec,
        out_dir,
        resume=resume,
        batch_size=batch_size,
        executor=executor,
        on_result=on_result,
        cache=cache,
        inputs=inputs,
        components=components,
    )
    metrics = write_metrics(out_dir, metric_models, metric_device, inputs)
    grid, report = build_report(out_dir)
    return ExperimentResult(summary, metrics, grid, report)
