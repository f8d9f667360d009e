"""The `llm-dit` command: a thin layer over the Python API. Each command parses its options (the settings ones from
the one table in `config.options`), resolves the config, makes one API call and prints the result: paths and JSON
on stdout, messages on stderr. A command resolves its settings before it imports the feature it calls, so help,
flag and choice errors and bad settings never wait for torch (tests/test_cli_start.py).

Every failure caused by input (a file, a value, a model) is a `UserError`: one line on stderr, exit code 2, no
traceback (`--debug` shows it), with the command's flags beside the config keys it names (`options.with_flags`).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape

from ..config.options import Given, reset_active, resolve_config, takes, with_flags
from ..core.errors import UserError, check_choice
from ..core.modes import ADAPTER_KINDS, DIRECTION_METHODS, ZOO_PRESETS

if TYPE_CHECKING:
    from ..sweep.spec import SweepSpec


def _flags_take_no_value() -> None:
    """typer's rich help (0.29) shows a flag's type as if it took a value (`--json <bool>`, `--help <bool>`): a
    flag (`--json`, `--low-memory/--no-low-memory`) shows none, as in click's plain help."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "flags_take_no_value", False):
        return

    def display_type_rich(self: TyperOption, ctx: click.Context) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.flags_take_no_value = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Condition Z-Image on a reference image through Qwen3-VL hidden states.",
)
models_app = typer.Typer(no_args_is_help=True, help="Build the offline random-weight models.")
config_app = typer.Typer(no_args_is_help=True, help="Show the resolved configuration.")
style_app = typer.Typer(no_args_is_help=True, help="Style files: what a blend mode transfers, extracted or combined.")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
app.add_typer(style_app, name="style")

console = Console(stderr=True, soft_wrap=True)  # a message is one line, whatever the width (logs, pipes)
_state = {"debug": False}

# Option tags (`llm_dit.config.options`) of every command that loads models: config file, profile, zoo, model paths.
MODELS = ("config", "zoo", "zimage", "vl-model")
TEXT_MODEL = ("config", "zoo", "zimage")  # commands that run only the text encoder

Output = Annotated[Path, typer.Option("--output", "-o", help="safetensors file to write.")]
RefImage = Annotated[Path, typer.Option("--image", "-i", help="Reference image.")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
SweepDirArg = Annotated[Path, typer.Argument(help="A sweep directory.")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug


@models_app.command("tiny")
def models_tiny(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")],
    preset: Annotated[str, typer.Option("--preset", help=f"One of: {', '.join(ZOO_PRESETS)}.")] = "tiny",
) -> None:
    """Build random-weight Z-Image and Qwen3-VL models of the real architectures, offline."""
    from ..models.zoo import install_zoo

    if preset not in ZOO_PRESETS:
        raise UserError(f"unknown preset '{preset}' (valid: {', '.join(ZOO_PRESETS)})")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder is not empty: {out}")
    if out.exists():
        out.rmdir()
    install_zoo(out, preset)
    print(out / "zimage")
    print(out / "qwen3-vl")


@models_app.command("metrics")
def models_metrics(out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")]) -> None:
    """Build the tiny random-weight metric models (CLIP, SigLIP, DINOv2, a CSD checkpoint and its conversion), offline:
    what --metric-models tiny uses."""
    from ..models.zoo import install_built
    from ..scoring.metriczoo import build_metric_zoo

    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder is not empty: {out}")
    if out.exists():
        out.rmdir()
    install_built(out, build_metric_zoo, {"name": "metrics"})
    print(out)


@models_app.command("convert-csd")
def models_convert_csd(
    checkpoint: Annotated[Path, typer.Argument(help="CSD checkpoint (pytorch_model.bin / checkpoint.pth).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder to create (default: where --metric-models default looks)."),
    ] = None,
) -> None:
    """Convert the published CSD checkpoint, without executing pickle code, to a CLIPVisionModelWithProjection
    folder (the csd metric model)."""
    from ..scoring.csd import convert_csd
    from ..scoring.scorer import default_csd_dir

    print(convert_csd(checkpoint, out or default_csd_dir()))


@config_app.command("show")
@takes("config")
def config_show(given: Given) -> None:
    """Print the resolved config of a profile as a config file (`--config` reads it back)."""
    from ..config.settings import as_toml

    print(as_toml(given.config(), given.get("profile", "default")), end="")


@app.command()
@takes(*MODELS, "low-memory", "dit", "quantization", "generation", "conditioning", "inputs")
def generate(
    given: Given,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to draw.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write (a .json sidecar goes next to it).")],
) -> None:
    """Generate one image; writes OUTPUT and OUTPUT.json with every setting that made it."""
    config = given.config()
    from ..generation.tasks import generate_file

    inputs = given.of("inputs")
    if inputs["neutral_image"] and inputs["neutral_embeddings"]:
        raise UserError("give one of --neutral-image, --neutral-embeddings")
    print(generate_file(config, prompt, output, **inputs))


@app.command()
@takes(*MODELS, "extraction")
def extract(
    given: Given,
    image: RefImage,
    output: Output,
    text: Annotated[str | None, typer.Option("--text", "-t", help="Text after the image.")] = None,
    as_json: Json = False,
) -> None:
    """Extract Qwen3-VL rows of one layer for an image (+ text) into a safetensors file.

    With vl.layers, the weighted sum of its layers."""
    config = given.config()
    from ..generation.tasks import extract_file

    summary = extract_file(config, image, output, text)
    print(json.dumps(summary) if as_json else output)


@style_app.command("extract")
@takes(*MODELS, "conditioning")
def style_extract(
    given: Given,
    image: RefImage,
    output: Output,
    neutral: Annotated[Path | None, typer.Option("--neutral", help="Neutral image (vl.blend style_delta).")] = None,
    text: Annotated[
        str | None, typer.Option("--text", "-t", help="Text after the image (generation puts the prompt there).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Extract the style vl.blend transfers from an image (moments, style vector, rows or delta) into a file that
    generate and sweep apply with --style."""
    config = given.config()
    from ..generation.tasks import style_extract_file

    summary = style_extract_file(config, image, output, neutral=neutral, text=text)
    print(json.dumps(summary) if as_json else output)


@style_app.command("combine")
def style_combine(
    styles: Annotated[list[str], typer.Argument(help="Style files FILE[:WEIGHT] (weight 1 when left out).")],
    output: Output,
) -> None:
    """Combine style files by weight (refused when their blend kind, layer, token mode, model or width differ)."""
    from ..generation.tasks import style_combine_file

    style_combine_file(styles, output)
    print(output)


@app.command()
@takes(*TEXT_MODEL, "encoder")
def encode(
    given: Given,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt to encode.")],
    output: Output,
    as_json: Json = False,
) -> None:
    """Encode a prompt with Z-Image's text encoder (caption rows as the DiT sees them) into a safetensors file."""
    config = given.config()
    from ..generation.tasks import encode_file

    summary = encode_file(config, prompt, output)
    print(json.dumps(summary) if as_json else output)


STATS_SINK_LINES = 12


@app.command()
@takes(*TEXT_MODEL)
def stats(
    given: Given,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="safetensors file to write.")] = None,
    layer: Annotated[int, typer.Option("--layer", help="Hidden layer.")] = -2,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Text file, one prompt a line.")] = None,
    sink_report: Annotated[
        bool,
        typer.Option(
            "--sink-report",
            help="Print how the rows' max |x| over the median row's is distributed and whether vl.sink_ratio "
            "separates the attention sinks from the content rows (-o optional).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the sink report as JSON.")] = False,
) -> None:
    """Per-dimension reference statistics of the text encoder at one layer (default: built-in prompt set)."""
    if output is None and not sink_report:
        raise UserError("give the statistics file to write with --output/-o, or --sink-report to print the report")
    if as_json and not sink_report:
        raise UserError("--json prints the sink report: give --sink-report too")
    cfg = given.config()
    from ..generation.tasks import sink_report_of, stats_file
    from ..maths.stats import sink_lines, sink_report_lines

    if sink_report:
        report = sink_report_of(cfg, layer, prompts)
        print(json.dumps(report, indent=2) if as_json else "\n".join(sink_report_lines(report)))
        if output is None:
            return
    result = stats_file(cfg, output, layer, prompts)
    sinks = json.loads(result.metadata["sinks"])
    say = f"layer {layer}: {len(sinks)} attention-sink row(s) of {result.token_count + len(sinks)} left out"
    print(f"{say} (vl.sink_ratio {cfg.vl.sink_ratio:g}; all listed in the file's 'sinks' metadata)", file=sys.stderr)
    for line in sink_lines(sinks)[:STATS_SINK_LINES]:
        print(f"  {line}", file=sys.stderr)
    if len(sinks) > STATS_SINK_LINES:
        print(f"  ... {len(sinks) - STATS_SINK_LINES} more", file=sys.stderr)
    print(output)


@app.command("inspect")
@takes(*MODELS, "inspect")
def inspect_cmd(
    given: Given,
    image: RefImage,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt after the image.")],
    as_json: Json = False,
) -> None:
    """Compare VL rows with the text encoder's, per layer: spans, statistics, outliers, image influence."""
    from ..generation.diagnostics import print_report

    config = given.config()
    from ..generation.tasks import inspect_image

    report = inspect_image(config, image, prompt, given.get("layers"))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, Console(soft_wrap=True))


@app.command()
@takes(*MODELS, "vl-rows")
def steer(
    given: Given,
    pairs: Annotated[Path, typer.Option("--pairs", help="TOML: \\[\\[pairs]] prompt/positive/negative, or two sets.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Direction file (safetensors).")],
    method: Annotated[
        str, typer.Option("--method", help=f"One of: {', '.join(DIRECTION_METHODS)}.")
    ] = "mean_difference",
) -> None:
    """Build a steering direction from contrastive VL extractions (styled vs neutral images, same prompt)."""
    config = given.config()
    from ..generation.tasks import steer_file

    print(steer_file(config, pairs, output, method))


@app.command("train-adapter")
@takes(*MODELS, "vl-rows", "training")
def train_adapter_cmd(
    given: Given,
    images: Annotated[Path, typer.Option("--images", help="Folder of training images (png, jpg, webp).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Adapter file (safetensors).")],
    captions: Annotated[
        Path | None, typer.Option("--captions", help="JSON {name: caption} or NAME<TAB>CAPTION.")
    ] = None,
    kind: Annotated[str, typer.Option("--kind", help=f"One of: {', '.join(ADAPTER_KINDS)}.")] = "linear",
    rank: Annotated[int | None, typer.Option("--rank", help="Rank of a low_rank adapter.")] = None,
    lam: Annotated[float, typer.Option("--lam", help="Ridge penalty of the closed-form initialisation.")] = 1e-2,
    finetune_steps: Annotated[int, typer.Option(help="Flow-matching steps through the frozen DiT (0 = none).")] = 0,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate.")] = 1e-3,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Checkpoints (default: OUTPUT.ckpt/).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the checkpoint.")] = True,
) -> None:
    """Train a small adapter from Qwen3-VL rows to the DiT's caption space (ridge init, optional fine-tuning)."""
    config = given.config()
    from ..generation.tasks import train_adapter_file

    training = {"kind": kind, "rank": rank, "lam": lam, "steps": finetune_steps, "lr": lr, "resume": resume}
    try:
        path = train_adapter_file(config, images, output, captions=captions, checkpoint_dir=checkpoint_dir, **training)
    except UserError as e:  # --captions is this command's own option, not one of the table's
        raise UserError(str(e).replace("'captions'", "'captions' (--captions)", 1)) from None
    print(path)


@app.command()
@takes(*MODELS, "low-memory", "dit", "quantization", "generation", "conditioning", "sweep", "run", axes=True)
def sweep(
    given: Given,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Sweep directory.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="A built-in sweep (see --list-presets).")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Sweep spec TOML (fixed, axes, prompts...).")] = None,
    list_presets: Annotated[bool, typer.Option("--list-presets", help="List presets with run counts.")] = False,
    prompts_file: Annotated[Path | None, typer.Option(help="Text file, one prompt a line.")] = None,
    img2img: Annotated[bool, typer.Option("--img2img", help="Start each run from its reference image.")] = False,
    no_baseline: Annotated[bool, typer.Option("--no-baseline", help="Leave out the pure-text baselines.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and stop.")] = False,
    as_json: Json = False,
) -> None:
    """Run a sweep: every combination of the axes (plus the pure-text baseline) with metrics, grid and report."""
    from ..experiment.run import EXECUTORS, checked_plan, run_experiment

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
        work = checked_plan(cfg, resolved)
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
        result = run_experiment(cfg, resolved, output, **run)
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


@app.command(name="eval")
@takes(*MODELS, "low-memory", "eval", "run")
def eval_command(
    given: Given,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Eval directory.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything, print the plan and stop.")] = False,
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

    e, run = given.of("eval"), given.of("run")
    check_choice(run["executor"], EXECUTORS, "executor")
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
        plan = plan_eval(given.config("models", "generation"), suite, methods, tolerance=e["tolerance"],
                         metric_models_spec=run["metric_models"] or "default",
                         metric_device=run["metric_device"] or "cpu")  # fmt: skip
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
        resume=run["resume"],
        executor=run["executor"],
        batch_size=run["batch_size"],
        metric_models_spec=run["metric_models"] or "default",
        metric_device=run["metric_device"] or "cpu",
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


@app.command()
@takes("scoring")
def metrics(given: Given, sweep_dir: SweepDirArg) -> None:
    """Recompute metrics.json for a sweep directory."""
    from ..scoring.sweep_metrics import write_metrics
    from ..sweep.dir import SweepDir

    scoring = given.of("scoring")
    metrics = write_metrics(SweepDir.existing(sweep_dir), scoring["metric_models"], scoring["metric_device"] or "cpu")
    print(json.dumps(metrics, indent=2))


@app.command()
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


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where to write the demo outputs.")] = Path("out/demo"),
    image: Annotated[Path | None, typer.Option("--image", "-i", help="Reference image.")] = None,
) -> None:
    """The whole pipeline on the tiny offline models, then the paths of its image and report.

    A reference-conditioned image with its sidecar, then the `vl_only_vs_qwen3` sweep with metrics, grid and
    report. Rerunning it finishes or reuses earlier work."""
    from ..experiment.run import run_experiment
    from ..generation.tasks import generate_file
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
        sweep = run_experiment(cfg, spec, out / "sweep", resume=True)
    except KeyboardInterrupt:  # the demo always resumes: the same command finishes it
        interrupted(out / "sweep", shlex.join(["llm-dit", *sys.argv[1:]]))
    console.print(
        f"sweep: {sweep.summary['completed']} runs, {sweep.summary['vl_forward_passes']} VL forward passes; report:",
        highlight=False,
    )
    print(sweep.report)
    exit_if_runs_failed(sweep.summary, out / "sweep")


@app.command()
@takes(*MODELS, "low-memory", "generation", "conditioning")
def studio(
    given: Given,
    host: Annotated[str, typer.Option("--host", help="Address to bind; another than the loopback needs --token.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="Port to listen on.", min=0, max=65535)] = 7860,
    workspace: Annotated[
        Path, typer.Option("--workspace", help="Folder of inputs, uploads, outputs and sweeps; nothing outside it.")
    ] = Path("studio"),
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="LLM_DIT_STUDIO_TOKEN", help="Every request must carry it (header or ?token=)."),
    ] = None,
) -> None:
    """Serve the studio: a local web page and HTTP API over warm models.

    The settings given here are the page's defaults. Stops with Ctrl-C."""
    from ..studio.app import check_bind, serve

    check_bind(host, token)
    serve(given.config(), workspace, host, port, token, say=lambda m: console.print(m, highlight=False))


@app.command()
@takes("bench")
def bench(
    given: Given,
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            help="Model zoo preset: tiny or small; blend-cost: the model-free section; real-size: the real models' "
            "memory (opt-in: 32 GB disk, 13 GiB RAM).",
        ),
    ] = "small",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures to this JSON file.")] = None,
    repeats: Annotated[int, typer.Option(help="Timed repetitions per figure (after one warm-up).", min=1)] = 5,
    work: Annotated[
        Path | None, typer.Option(help="real-size: folder for its 29.4 GB of weights (default: under $LLM_DIT_CACHE).")
    ] = None,
) -> None:
    """Benchmark against diffusers and the naive workflow; every figure is a ratio measured side by side."""
    from ..bench.harness import BLEND_COST, REAL_SIZE, SIZES, print_blend_cost, run_bench, run_blend_cost, run_real_size
    from ..core.cache import cache_root
    from ..core.files import write_json

    presets = (*SIZES, BLEND_COST, REAL_SIZE)
    if preset not in presets:
        raise UserError(f"unknown preset '{preset}' (valid: {', '.join(presets)})")
    say = lambda step: console.print(f"[dim]bench: {step}[/]")  # noqa: E731
    if preset == REAL_SIZE:
        result = run_real_size(work or cache_root() / REAL_SIZE, progress=say, threads=os.cpu_count())
        if json_out is not None:
            write_json(json_out, result)
        print(json.dumps({k: result[k] for k in ("stages", "sum_of_stages_gib", "staged_vs_sum")}, indent=2))
        return
    if preset == BLEND_COST:
        result = run_blend_cost(repeats, progress=say)
        if json_out is not None:
            write_json(json_out, result)
        print(print_blend_cost(result))
        return
    result = run_bench(preset, repeats, progress=say, only=given.get("only"))
    if json_out is not None:
        write_json(json_out, result)
    for name, fig in result.items():
        if isinstance(fig, dict) and "ratio" in fig:
            met = "" if "met" not in fig else ("  ok" if fig["met"] else "  MISSED")
            print(f"{name:34} ratio {fig['ratio']:<8} target {fig.get('target', '-'):<7}{met}")
    for name, passes in (
        ("cache_rerun_forward_passes", result.get("cache_rerun_forward_passes")),
        ("studio_rerender_forward_passes", result.get("studio_rerender_vs_dit", {}).get("rerender_forward_passes")),
    ):
        if passes is not None:
            print(f"{name:34} vl {passes['vl']} text {passes['text']}")


def main() -> None:
    """Console entry point: runs the app and turns `UserError` into one line (the keys it names followed by the
    command's flags) and exit code 2."""
    warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"
    reset_active()
    try:
        app()
    except UserError as e:
        if _state["debug"]:
            raise
        console.print(f"[bold red]error:[/] {escape(with_flags(str(e)))}", highlight=False, soft_wrap=True)
        sys.exit(2)
