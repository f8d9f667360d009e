"""`llm-dit bench`: the benchmark (`llm_dit.bench`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from ..config.options import Given, takes
from ..core.errors import UserError
from .common import console


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
    from ..bench.blend_cost import BLEND_COST, print_blend_cost, run_blend_cost
    from ..bench.figures import run_bench
    from ..bench.harness import SIZES
    from ..bench.real_size import REAL_SIZE, run_real_size
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
