"""What a sweep report may rank: the best run per ranked metric and block, by its effect against its own text-only
baseline (`best_runs`), and, for style against content, the Pareto front per block instead of a winner (`tradeoffs`).

Each metric's registry entry (`metrics.MetricInfo`) says what it measures; only defect and quality metrics have a
direction that means better whatever the conditioning strength, so only they are ranked. Candidates are successful
variant runs whose output depends on their reference image: a baseline is the comparison, not a candidate, and an
image-free run shows no effect of the image (docs/methods.md §11). A ranking compares like with like: runs of one
block (same prompt, reference image(s) and seed; they differ only in the settings compared), each by its effect
against the text-only baseline it is paired with (`sweep.baseline_pairs`), never by its raw value, which an easier
prompt, image or seed, or a non-conditioning setting such as more steps, improves for the baseline too.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from ..scoring.image_metrics import CONTENT_KINDS, METRICS, STYLE_KINDS, pareto_optimal
from ..sweep.run import RunResult, baseline_pairs
from .grid import Block, grid_layout, image_free, is_number

__all__ = ["METRICS", "RANKING_RULE", "Best", "TradeOff", "best_runs", "metric_names", "tradeoffs"]

RANKING_RULE = (
    "the best effect against its own text-only baseline (run − baseline), within the same prompt, reference image "
    "and seed"
)
"""What `best_runs` ranks by, as the report says it."""


def _rankable(run: RunResult) -> bool:
    """A run a report may rank or put on a trade-off front: a successful variant whose output depends on its
    reference (baselines are the comparison, not a candidate; an image-free run shows no effect of the image)."""
    return run.kind != "baseline" and run.ok and not image_free(run)


def _value(metrics: dict[str, dict[str, Any]], run: RunResult, name: str) -> float | None:
    v = metrics.get(run.id, {}).get(name)
    return float(v) if is_number(v) and math.isfinite(v) else None


def _block_variants(block: Block) -> list[str]:
    """The ids of a block's variant runs, in the block's cell order."""
    return [c.run_id for row in block.cells for c in row if c is not None and c.kind == "variant" and c.run_id]


@dataclass(frozen=True)
class Best:
    """The best run of one block for one ranked metric: the block's variant run with the best effect
    `value - baseline_value` against the text-only baseline it is paired with (`baseline_id`). `compared` runs of
    the block were ranked; `unpaired` more had a value but no measured baseline, so they were not ranked."""

    metric: str
    block: Block
    run_id: str
    value: float
    baseline_id: str
    baseline_value: float
    compared: int
    unpaired: int = 0

    @property
    def effect(self) -> float:
        """The run's effect against its own baseline: `value - baseline_value` (the metric's own units)."""
        return self.value - self.baseline_value


def best_runs(runs: list[RunResult], metrics: dict[str, dict[str, float]]) -> tuple[list[Best], dict[str, str]]:
    """The best run per rankable metric and block, by effect against its own baseline: `([Best], {metric: why not
    ranked})`, metrics in registry order, blocks in grid order (`grid.grid_layout`).

    For a metric m, a block B (the variant runs of one prompt, reference image(s) and seed: they differ only in
    the settings compared) and each candidate r in B with its text-only baseline b(r) (`sweep.baseline_pairs`: the
    same prompt, seed and every non-conditioning setting, no reference), the effect is

        e(r) = m(r) - m(b(r))        and the block's best is   argmax_{r in B} s * e(r),

    s = +1 when higher is better, -1 when lower is. Runs of different blocks are never compared, and a raw value
    never ranks: an easier prompt, image or seed, or a non-conditioning setting (steps), improves the baseline as
    much as the run. Only metrics whose registry entry says `ranked` (a direction that means better whatever the
    conditioning strength: defects, quality) are ranked; style and content metrics trade off against each other
    (see `tradeoffs`), and ranking either would reward the strongest or the weakest conditioning. Candidates:
    successful variant runs that are not image-free (never baselines) with a finite value whose baseline succeeded
    with a finite value; a run whose baseline is missing, failed or unmeasured is counted in `Best.unpaired`, not
    ranked. Ties go to the earlier run."""
    by_id = {r.id: r for r in runs}
    order = {rid: i for i, rid in enumerate(by_id)}
    pairs = baseline_pairs(runs)
    blocks = grid_layout(runs).blocks
    best: list[Best] = []
    skipped: dict[str, str] = {}
    for name in metric_names(runs, metrics):
        info = METRICS.get(name)
        if info is None:
            skipped[name] = "not a registered metric; what it measures is unknown"
            continue
        if not info.ranked:
            skipped[name] = _NOT_RANKED[info.kind]
            continue
        sign = 1.0 if info.higher_is_better else -1.0
        found = unpaired_total = 0
        for block in blocks:
            paired: list[tuple[str, float, str, float]] = []
            unpaired = 0
            for rid in sorted(set(_block_variants(block)), key=lambda i: order.get(i, len(order))):
                run = by_id.get(rid)
                if run is None or not _rankable(run) or (v := _value(metrics, run, name)) is None:
                    continue
                bid = pairs.get(rid)
                base = by_id.get(bid) if bid else None
                b = _value(metrics, base, name) if base is not None and base.ok else None
                if bid is None or b is None:
                    unpaired += 1
                else:
                    paired.append((rid, v, bid, b))
            unpaired_total += unpaired
            if paired:
                rid, v, bid, b = max(paired, key=lambda p: sign * (p[1] - p[3]))
                best.append(Best(name, block, rid, v, bid, b, len(paired), unpaired))
                found += 1
        if not found:
            skipped[name] = (
                "no run has a measured text-only baseline to compare with (runs are ranked by their effect against it)"
                if unpaired_total
                else "no successful, image-dependent variant run has a measured value"
            )
    return best, skipped


_NOT_RANKED = {
    "style_similarity": "style: rises with conditioning strength, shown against content as a trade-off",
    "prompt_adherence": "prompt adherence: falls as conditioning strengthens, shown against style as a trade-off",
    "content_kept": "content kept: doing nothing scores best, shown against style as a trade-off",
    "content_leak": "content leak: falls as conditioning weakens; read beside style, not ranked",
    "descriptive": "descriptive metric with no better direction",
}


@dataclass
class TradeOff:
    """Runs of one block on a style-against-content plane: `points` are (run_id, content, style, pareto)."""

    style: str
    content: str
    block: Block
    points: list[tuple[str, float, float, bool]]


_AXES = {"style": STYLE_KINDS, "content": CONTENT_KINDS}  # the two axes of a trade-off plane


def tradeoffs(runs: list[RunResult], metrics: dict[str, dict[str, float]]) -> list[TradeOff]:
    """For every (style metric, content metric) pair present and every block with two or more rankable runs
    (`_rankable`) measured on both: the runs' (content, style) values and which are Pareto-optimal within the
    block (`metrics.pareto_optimal`: no other run keeps at least as much content with at least as much style).
    A trade-off has no winner: the front is the set of settings worth choosing between."""
    present = metric_names(runs, metrics)
    kinds = {a: [n for n in present if n in METRICS and METRICS[n].kind in k] for a, k in _AXES.items()}
    by_id = {r.id: r for r in runs}
    out: list[TradeOff] = []
    blocks = grid_layout(runs).blocks
    for style, content in itertools.product(kinds["style"], kinds["content"]):
        for block in blocks:
            ids = [c.run_id for row in block.cells for c in row if c is not None and c.kind == "variant"]
            values = [
                (rid, _value(metrics, by_id[rid], content), _value(metrics, by_id[rid], style))
                for rid in ids
                if rid in by_id and _rankable(by_id[rid])
            ]
            measured = [(rid, c, s) for rid, c, s in values if c is not None and s is not None]
            if len(measured) < 2:
                continue
            front = pareto_optimal([(c, s) for _, c, s in measured])
            points = [(rid, c, s, opt) for (rid, c, s), opt in zip(measured, front, strict=True)]
            out.append(TradeOff(style, content, block, points))
    return out


def metric_names(runs: list[RunResult], metrics: dict[str, dict[str, float]]) -> list[str]:
    """Metrics present for at least one run: registry order first, then any others alphabetically."""
    ids = {r.id for r in runs}
    present = {name for rid, m in metrics.items() if rid in ids for name in m}
    return [n for n in METRICS if n in present] + sorted(present - set(METRICS))
