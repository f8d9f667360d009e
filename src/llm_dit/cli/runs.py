"""The commands over sweeps and evals: sweep, eval, metrics, report, demo; and how a sweep that stops early ends
(`interrupted`, `exit_if_runs_failed`)."""

from __future__ import annotations

import json
import shlex
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from ..config.options import FLAG, Given, resolve_config, takes
from ..core.errors import UserError, check_choice
from .common import MODELS, Json, SweepDirArg, console

if TYPE_CHECKING:
    from ..sweep.spec import SweepSpec


@takes(*MODELS, "low-memory", "dit", "quantization", "generation", "conditioning", "sweep", "run", axes=True)
def sweep(
    given: Given,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Sweep directory.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="A built-in sweep (see --list-presets).")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Sweep spec TOML (fixed, axes, prompts...).")] = None,
    list_presets: Annotated[
        bool, typer.Option("--list-presets", help="List presets with run counts.", metavar=FLAG)
    ] = False,
    prompts_file: Annotated[Path | None, typer.Option(help="Text file, one prompt a line.")] = None,
    img2img: Annotated[
        bool, typer.Option("--img2img", help="Start each run from its reference image.", metavar=FLAG)
    ] = False,
    no_baseline: Annotated[
        bool, typer.Option("--no-baseline", help="Leave out the pure-text baselines.", metavar=FLAG)
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and stop.", metavar=FLAG)] = False,
    as_json: Json = False,
) -> None:
    """Run a sweep: every combination of the axes (plus the pure-text baseline) with metrics, grid and report."""
    from ..experiment.run import EXECUTORS, checked_plan, run_experiment
    from ..scoring.scorer import Scoring
    from ..sweep.runner import RunOptions

    if list_presets:
        print_presets()
        return
    run = given.of("run")
    check_choice(run["executor"], EXECUTORS, "executor")
    if output is None and not dry_run:
        raise UserError("give the sweep directory with --output/-o")
    resolved = sweep_spec(given, spec, preset, prompts_file, img2img, no_baseline)
    cfg = given.config("models")
    if dry_run:
        work = checked_plan(cfg, resolved).plan
        if as_json:
            run_list = [run.as_record() for run in work.runs]
            print(json.dumps(work.as_dict() | {"run_list": run_list}, indent=2, default=str))
        else:
            print(
                f"{len(work.runs)} runs, {len(work.unique_extractions)} unique VL extractions "
                f"({sum(len(e['layers']) for e in work.unique_extractions)} layers) "
                f"+ {len(work.probe_extractions)} image-check probe extractions, "
                f"{len(work.unique_encodes)} unique text encodes"
            )
        return
    try:
        options = RunOptions(run["resume"], run["executor"], run["batch_size"])
        scoring = Scoring(run["metric_models"], run["metric_device"] or "cpu")
        result = run_experiment(cfg, resolved, output, options=options, scoring=scoring)
    except KeyboardInterrupt:
        resume = [] if run["resume"] else ["--resume"]
        interrupted(output, shlex.join(["llm-dit", *sys.argv[1:], *resume]))
    summary = result.summary
    if as_json:
        print(json.dumps(summary | {"grid": str(result.grid), "report": str(result.report)}, indent=2))
    else:
        console.print(
            f"{summary['completed']}/{summary['runs']} runs done ({summary['failed']} failed), "
            f"{summary['vl_forward_passes']} VL and {summary['text_forward_passes']} text forward passes"
        )
        print(result.report)
    exit_if_runs_failed(summary, output)


INTERRUPTED = 130
"""Exit code after SIGINT (Ctrl-C), as a shell reports a process it interrupted (128 + SIGINT)."""


def interrupted(out_dir: Path, command: str) -> NoReturn:
    """After SIGINT during a sweep: say what was saved (runs done of runs planned) and the command that resumes it
    (stderr), and exit `INTERRUPTED`."""
    from ..sweep.dir import SweepDir

    sweep = SweepDir(out_dir)
    planned = len(sweep.plan())
    done = sum(r.ok for r in sweep.runs())
    saved = f"{done} of {planned} runs saved in {out_dir}" if planned else "nothing saved yet"
    console.print(f"interrupted: {saved}; resume with: {command}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(INTERRUPTED)


RUNS_FAILED = 3
"""Exit code of a command whose sweep finished with failed runs (everything else written; `--resume` retries them)."""


def exit_if_runs_failed(summary: dict, out_dir: Path) -> None:
    """Say how many runs failed (stderr) and exit `RUNS_FAILED`; nothing when every run is done."""
    from ..sweep.dir import SweepDir

    if summary["failed"]:
        console.print(
            f"{summary['failed']} of {summary['runs']} runs failed (errors in {out_dir / SweepDir.RESULTS}); "
            "rerun with --resume to retry them",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(RUNS_FAILED)


@takes(*MODELS, "low-memory", "eval", "run")
def eval_command(
    given: Given,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Eval directory.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check everything, print the plan and stop.", metavar=FLAG)
    ] = False,
    as_json: Json = False,
) -> None:
    """Compare methods (text, caption, img2img, VL conditioning...) on references x prompts x seeds.

    Every method on every cell, scored, paired statistics, eval.json, leaderboard.md and report.html. Prints their
    paths; exits 3 when runs failed (everything else written; --resume retries them)."""
    import tempfile

    from ..eval.methods import methods_of
    from ..eval.run import REFERENCES, RUNS, plan_eval, run_eval
    from ..eval.suite import load_suite
    from ..experiment.run import EXECUTORS
    from ..scoring.scorer import Scoring
    from ..sweep.runner import RunOptions

    e, run = given.of("eval"), given.of("run")
    check_choice(run["executor"], EXECUTORS, "executor")
    scoring = Scoring(run["metric_models"] or "default", run["metric_device"] or "cpu")
    if output is None and not dry_run:
        raise UserError("give the eval directory with --output/-o")
    scratch = tempfile.TemporaryDirectory(prefix="llm-dit-eval-") if dry_run else None  # a dry run writes nothing
    suite = load_suite(
        e["suite"],
        references=e["references"],
        prompts=e["prompt_count"],
        seeds=e["seed_count"],
        quick=e["quick"],
        prompts_file=e["prompts_file"],
        image_column=e["image_column"],
        prompt_column=e["prompt_column"],
        split=e["split"],
        store=Path(scratch.name) if scratch else output / REFERENCES,  # type: ignore[operator]
    )
    methods = methods_of(
        e["methods"] or (),
        presets=e["presets"] or (),
        img2img_strengths=e["img2img_strengths"] or (),
        adapter=e["adapter"],
        steer=e["steer"],
        spec=e["eval_spec"],
        omni=e["omni"],
        base=given.config("models", "generation"),
    )
    if dry_run:
        plan = plan_eval(
            given.config("models", "generation"), suite, methods, scoring=scoring, tolerance=e["tolerance"]
        )
        if as_json:
            print(json.dumps(plan, indent=2))
        else:
            print(
                f"{plan['runs']} runs ({plan['cells']} cells x {len(plan['methods'])} methods, text runs shared by "
                f"the references), {plan['captions']} style captions, {plan['unique_extractions']} unique VL "
                f"extractions + {plan['probe_extractions']} image-check probe extractions, {plan['unique_encodes']} "
                "unique text encodes"
            )
            for name, pair in plan["baselines"].items():
                print(f"matched baselines: {name} against {' and '.join(pair.values())}")
        if plan["no_verdicts"]:
            console.print(f"note: no verdicts: {plan['no_verdicts']}", highlight=False, soft_wrap=True)
        return
    result = run_eval(
        given.config("models", "generation"),
        suite,
        methods,
        output,
        options=RunOptions(run["resume"], run["executor"], run["batch_size"]),
        scoring=scoring,
        tolerance=e["tolerance"],
    )
    data = result.data
    sweep = data["sweep"]
    better = ", ".join(k for k, v in data["verdicts"].items() if v["better"]) or "none"
    console.print(
        f"{sweep['completed']}/{sweep['runs']} runs done ({sweep['failed']} failed) over {data['suite']['cells']} "
        f"cells x {len(data['methods'])} methods; better than caption: "
        + (f"no verdicts ({data['settings']['no_verdicts']})" if data["settings"]["no_verdicts"] else better),
        highlight=False,
        soft_wrap=True,
    )
    if as_json:
        paths = {"eval": str(result.eval_json), "leaderboard": str(result.leaderboard), "report": str(result.report)}
        print(json.dumps(paths | {"verdicts": data["verdicts"], "leaderboard_rows": data["leaderboard"]}, indent=2))
    else:
        print(result.eval_json)
        print(result.leaderboard)
        print(result.report)
    exit_if_runs_failed(sweep, output / RUNS)


def sweep_spec(
    given: Given, spec: Path | None, preset: str | None, prompts_file: Path | None, img2img: bool, no_baseline: bool
) -> SweepSpec:
    """The sweep's `SweepSpec`: the spec file, its inputs replaced by the command line's, then (`resolve_spec`)
    the preset below it and the command line's axes and fixed settings above it. A sweep's seeds are the spec's
    `seeds`: `--seeds`, else `--seed`."""
    from ..core.files import read_lines
    from ..sweep.spec import SweepSpec, resolve_spec

    base = SweepSpec.from_toml(spec) if spec else SweepSpec()
    inputs = {
        k: [x if isinstance(x, list) else str(x) for x in v] if isinstance(v, list) else str(v)
        for k, v in given.of("sweep").items()
        if v
    }  # paths as text; weight lists as they are
    inputs["prompts"] = inputs.get("prompts", []) + (read_lines(prompts_file, "prompts file") if prompts_file else [])
    axes, fixed = dict(given.axes), given.settings("generation", "vl")
    seed = fixed.pop("generation.seed", None)
    seeds = axes.pop("generation.seed", None) or ([] if seed is None else [seed])
    updates = {k: v for k, v in (inputs | {"seeds": seeds}).items() if v}
    updates |= {"baseline": base.baseline and not no_baseline, "img2img": base.img2img or img2img}
    return resolve_spec(base.model_copy(update=updates), preset, axes, fixed)


def print_presets() -> None:
    """Every sweep preset with its run count per prompt x image x seed and the inputs it needs."""
    from ..sweep.spec import PRESETS, SweepSpec, expand, preset_needs, resolve_spec

    for name in PRESETS:
        needs = preset_needs(name)
        pair = "-i A -i B" in needs
        inputs = (
            {"steer": "s"} if "--steer" in needs else {"images": ["i", "j"] if pair else ["i"], "neutral_image": "n"}
        )
        probe = resolve_spec(SweepSpec(prompts=["p"], **inputs), name, {}, {})
        needs = ", ".join(preset_needs(name)) or "nothing"
        per = "prompt x image pair x seed" if pair else "prompt x image x seed"
        print(f"{name:18} {len(expand(probe)):3d} runs per {per} (baselines included); needs {needs}")


@takes("scoring")
def metrics(given: Given, sweep_dir: SweepDirArg) -> None:
    """Recompute metrics.json for a sweep directory."""
    from ..scoring.scorer import Scoring
    from ..scoring.sweep_metrics import write_metrics
    from ..sweep.dir import SweepDir

    given_scoring = given.of("scoring")
    scoring = Scoring(given_scoring["metric_models"], given_scoring["metric_device"] or "cpu")
    metrics = write_metrics(SweepDir.existing(sweep_dir), scoring)
    print(json.dumps(metrics, indent=2))


def report(
    directory: Annotated[Path, typer.Argument(help="A sweep directory, or an eval directory (with eval.json).")],
) -> None:
    """Rebuild grid.png and report.html for a sweep directory, or report.html for an eval directory."""
    from ..eval.run import EVAL, load_eval
    from ..report.eval_report import write_eval_report
    from ..report.sweep_report import build_report
    from ..sweep.dir import SweepDir

    if (directory / EVAL).is_file():
        result = load_eval(directory)
        print(write_eval_report(result.dir, result.data))
        return
    for path in build_report(SweepDir.existing(directory)):
        print(path)


def demo(
    out: Annotated[Path, typer.Option("--out", help="Where to write the demo outputs.")] = Path("out/demo"),
    image: Annotated[Path | None, typer.Option("--image", "-i", help="Reference image.")] = None,
) -> None:
    """The whole pipeline on the tiny offline models, then the paths of its image and report.

    A reference-conditioned image with its sidecar, then the `vl_only_vs_qwen3` sweep with metrics, grid and
    report. Rerunning it finishes or reuses earlier work."""
    from ..experiment.run import run_experiment
    from ..generation.tasks import generate_file
    from ..sweep.runner import RunOptions
    from ..sweep.spec import SweepSpec, resolve_spec

    ref = image or Path(str(resources.files("llm_dit") / "data" / "demo_reference.png"))
    prompt = "a house by the sea at sunset"
    small = {"generation.width": 128, "generation.height": 128, "generation.steps": 4}
    cfg = resolve_config(models="tiny", overrides=small)
    single = generate_file(cfg, prompt, out / "reference_conditioned.png", image=ref)
    console.print(f"reference-conditioned image (settings in {single.with_suffix('.json')}):", highlight=False)
    print(single)

    spec = resolve_spec(SweepSpec(prompts=[prompt], images=[str(ref)]), "vl_only_vs_qwen3", {}, small)
    try:
        sweep = run_experiment(cfg, spec, out / "sweep", options=RunOptions(resume=True))
    except KeyboardInterrupt:  # the demo always resumes: the same command finishes it
        interrupted(out / "sweep", shlex.join(["llm-dit", *sys.argv[1:]]))
    console.print(
        f"sweep: {sweep.summary['completed']} runs, {sweep.summary['vl_forward_passes']} VL forward passes; report:",
        highlight=False,
    )
    print(sweep.report)
    exit_if_runs_failed(sweep.summary, out / "sweep")
