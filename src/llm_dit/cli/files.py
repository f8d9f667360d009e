"""The commands that write one file (or print one report) with one API call (`generation.tasks`): generate,
extract, style extract and combine, encode, stats, inspect, steer, train-adapter."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..config.options import FLAG, Given, takes
from ..core.errors import UserError
from ..core.modes import ADAPTER_KINDS, DIRECTION_METHODS
from .common import MODELS, TEXT_MODEL, Json, Output, RefImage


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
    """Extract the style vl.blend transfers from an image into a file for --style.

    The file holds what the blend mode reads (moments, style vector, rows or delta); generate and sweep apply it."""
    config = given.config()
    from ..generation.tasks import style_extract_file

    summary = style_extract_file(config, image, output, neutral=neutral, text=text)
    print(json.dumps(summary) if as_json else output)


def style_combine(
    styles: Annotated[list[str], typer.Argument(help="Style files FILE[:WEIGHT] (weight 1 when left out).")],
    output: Output,
) -> None:
    """Combine style files by weight (refused when their blend kind, layer, token mode, model or width differ)."""
    from ..generation.tasks import style_combine_file

    style_combine_file(styles, output)
    print(output)


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
            metavar=FLAG,
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the sink report as JSON.", metavar=FLAG)] = False,
) -> None:
    """Per-dimension reference statistics of the text encoder at one layer (default: built-in prompt set)."""
    if output is None and not sink_report:
        raise UserError("give the statistics file to write with --output/-o, or --sink-report to print the report")
    if as_json and not sink_report:
        raise UserError("--json prints the sink report: give --sink-report too")
    cfg = given.config()
    from ..generation.tasks import sink_report_of, stats_file
    from ..maths.sinks import sink_lines, sink_report_lines

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
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from the checkpoint.", metavar=FLAG)
    ] = True,
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
