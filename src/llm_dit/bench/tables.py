"""BENCHMARKS.md's tables, rendered from the JSON files of bench runs, so a table cannot say what its run did not.

A table in a Markdown file is a block between `<!-- table KIND FILE -->` and `<!-- /table -->`: KIND one of `TABLES`,
FILE a bench JSON file relative to the Markdown file. `render_blocks` renders every block from its file;
tests/bench/test_tables.py asserts that BENCHMARKS.md equals its rendering, and

    python -m llm_dit.bench.tables BENCHMARKS.md

rewrites the blocks after a new run (`llm-dit bench ... --json docs/FILE.json`). Numbers are shown as the JSON holds
them (rounded by the bench when it wrote them); a figure with a target says whether it was met.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.files import atomic_write_text
from .blend_cost import print_blend_cost

BLOCK = re.compile(r"(<!-- table (?P<kind>[\w-]+) (?P<file>\S+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)

PASS_COUNTS = {  # figures that are forward-pass counts (must be 0), not ratios: where their counts are
    "cache_rerun_forward_passes": ("cache_rerun_forward_passes", "rerun into a new directory"),
    "studio_rerender_forward_passes": ("studio_rerender_vs_dit", "studio re-renders"),
}


def _met(fig: dict[str, Any]) -> str:
    return "—" if "met" not in fig else ("yes" if fig["met"] else "**missed**")


def run_line(result: dict[str, Any], file: str) -> str:
    """One line saying which run the numbers come from: date, machine, load, versions, repetitions, file."""
    m, v = result["machine"], result["versions"]
    load = m.get("load_average_1m")
    return (
        f"Run: `{file}`, {result['date']}, {m['cpus']} CPU cores ({m['torch_threads']} torch threads), "
        f"1-minute load average {load if load is not None else 'not recorded'} at the start, "
        f"torch {v['torch']}, diffusers {v['diffusers']}, transformers {v['transformers']}"
        + (f", medians of {result['repeats']}" if "repeats" in result else "")
        + f"; wall time {result['wall_time_s']} s."
    )


def figures_table(result: dict[str, Any]) -> str:
    """Every ratio figure of a run (`numerator`, `denominator`, `ratio`, target, met), in the order the run wrote
    them, then the forward-pass counts that must be 0."""
    lines = ["| figure | numerator | denominator | ratio | target | met |", "|---|---|---|---|---|---|"]
    for name, fig in result.items():
        if isinstance(fig, dict) and "ratio" in fig:
            what = f"`{name}` ({fig['ratio_is']}" + (f", {fig['unit']}" if "unit" in fig else "") + ")"
            lines.append(
                f"| {what} | {fig['numerator']} | {fig['denominator']} | **{fig['ratio']}** | "
                f"{fig.get('target', '—')} | {_met(fig)} |"
            )
    for label, (key, what) in PASS_COUNTS.items():
        fig = result.get(key)
        passes = None if fig is None else fig.get("rerender_forward_passes", fig)
        if passes is not None and "vl" in passes:
            lines.append(f"| `{label}` ({what}) | {passes['vl']} VL, {passes['text']} text | — | — | 0 | "
                         f"{'yes' if passes['vl'] == passes['text'] == 0 else '**missed**'} |")  # fmt: skip
    return "\n".join(lines)


def eval_phases_table(result: dict[str, Any]) -> str:
    """The eval's phases (its own `timings`) against the floor's, and the whole eval against the whole floor."""
    fig = result["eval_vs_floor"]
    ours, floor = fig["eval_phases_s"], fig["floor_phases_s"]
    floor_of = {"sweep": "generation", "scoring": "scoring"}
    lines = ["| phase | eval (s) | floor (s) | ratio |", "|---|---|---|---|"]
    for phase, seconds in ours.items():
        f = floor.get(floor_of.get(phase, ""))
        ratio = "—" if f is None or not f else round(seconds / f, 2)
        lines.append(f"| {phase} | {seconds} | {'—' if f is None else f} | {ratio} |")
    lines.append(
        f"| **whole eval** (`eval_vs_floor`) | {fig['numerator']} | {fig['denominator']} | **{fig['ratio']}** "
        f"(target {fig['target']}: {_met(fig)}) |"
    )
    return "\n".join(lines)


def real_size_table(result: dict[str, Any]) -> str:
    """Each stage's weights and peaks above the post-import baseline (as run; every weight resident), the sum of
    the stages and the staged generation."""
    s = result["stages"]
    names = {"text_encoder": "text encoder", "vl": "Qwen3-VL", "pipeline": "DiT + VAE"}
    lines = [
        "| stage | weights (GiB) | peak as run (GiB) | peak, every weight resident (GiB) |",
        "|---|---|---|---|",
    ]
    for stage, label in names.items():
        row = s[stage]
        lines.append(
            f"| {label} | {row['weights_gib']} | {row['peak_above_base_gib']} | "
            f"{row['all_weights_peak_above_base_gib']} |"
        )
    weights = round(sum(s[k]["weights_gib"] for k in names), 2)
    lines.append(f"| sum of the stages | {weights} | {result['sum_of_stages_gib']} | {result['all_weights_sum_gib']} |")
    staged = result["staged_vs_sum"]
    lines.append(
        f"| **staged generation** (staged / sum: {staged['ratio']}) | — | **{staged['numerator']}** | "
        f"{result['all_weights_staged_peak_gib']} |"
    )
    return "\n".join(lines)


TABLES: dict[str, Callable[[dict[str, Any]], str]] = {
    "figures": figures_table,
    "eval-phases": eval_phases_table,
    "blend-cost": print_blend_cost,
    "real-size": real_size_table,
}
"""Each kind of table by name; `run` (the run line) is rendered by `render_blocks` itself."""


def render(kind: str, result: dict[str, Any], file: str) -> str:
    """The table `kind` of `result` (read from `file`)."""
    if kind == "run":
        return run_line(result, file)
    if kind not in TABLES:
        raise ValueError(f"unknown table kind '{kind}' (valid: run, {', '.join(TABLES)})")
    return TABLES[kind](result)


def render_blocks(markdown: str, folder: Path) -> str:
    """`markdown` with every table block rendered from its JSON file (relative to `folder`)."""

    def one(m: re.Match[str]) -> str:
        result = json.loads((folder / m["file"]).read_text())
        return f"{m.group(1)}{render(m['kind'], result, m['file'])}\n{m.group(5)}"

    return BLOCK.sub(one, markdown)


def main(argv: list[str]) -> None:
    """`python -m llm_dit.bench.tables FILE.md...`: rewrite each file's table blocks from their JSON files."""
    for name in argv:
        path = Path(name)
        try:
            text = path.read_text()
            rendered = render_blocks(text, path.parent)
        except (OSError, ValueError, KeyError) as e:  # a missing file, bad JSON, an unknown kind, a missing field
            print(f"error: {path}: cannot render its tables: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        if rendered != text:
            atomic_write_text(path, rendered)
            print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
