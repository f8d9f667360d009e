"""What a sweep report may rank: the best run per ranked metric (`best_runs`) and, for style against content, the
Pareto front per block instead of a winner (`tradeoffs`).

Each metric's registry entry (`metrics.MetricInfo`) says what it measures; only defect and quality metrics have a
direction that means better whatever the conditioning strength, so only they are ranked. Candidates are successful
variant runs whose output depends on their reference image: a baseline is the comparison, not a candidate, and an
image-free run shows no effect of the image (docs/methods.md §11).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from .grid import Block, grid_layout, image_free, is_number
from .metrics import CONTENT_KINDS, METRICS, STYLE_KINDS, pareto_optimal

__all__ = ["METRICS", "TradeOff", "best_runs", "metric_names", "tradeoffs"]


def _rankable(run: dict[str, Any]) -> bool:
    """A run a report may rank or put on a trade-off front: a successful variant whose output depends on its
    reference (baselines are the comparison, not a candidate; an image-free run shows no effect of the image)."""
    return run.get("kind") != "baseline" and run.get("status") == "ok" and not image_free(run)


def _value(metrics: dict[str, dict[str, Any]], run: dict[str, Any], name: str) -> float | None:
    v = metrics.get(str(run.get("id")), {}).get(name)
    return float(v) if is_number(v) and math.isfinite(v) else None


def best_runs(
    runs: list[dict[str, Any]], metrics: dict[str, dict[str, float]]
) -> tuple[dict[str, tuple[str, float]], dict[str, str]]:
    """The best run per rankable metric: `({metric: (run_id, value)}, {metric: why not ranked})`.

    Only metrics whose registry entry says `ranked` (a direction that means better whatever the conditioning
    strength: defects, quality) are ranked; style and content metrics trade off against each other (see
    `tradeoffs`), and ranking either would reward the strongest or the weakest conditioning. Candidates: successful
    variant runs that are not image-free (never baselines). Non-finite or unmeasured (None) values are ignored;
    ties go to the earlier run."""
    best: dict[str, tuple[str, float]] = {}
    skipped: dict[str, str] = {}
    for name in metric_names(runs, metrics):
        info = METRICS.get(name)
        if info is None:
            skipped[name] = "not a registered metric; what it measures is unknown"
            continue
        if not info.ranked:
            skipped[name] = _NOT_RANKED[info.kind]
            continue
        candidates = [(str(r["id"]), v) for r in runs if _rankable(r) and (v := _value(metrics, r, name)) is not None]
        if not candidates:
            skipped[name] = "no successful, image-dependent variant run has a measured value"
            continue
        sign = 1.0 if info.higher_is_better else -1.0
        best[name] = max(candidates, key=lambda item: sign * item[1])
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


def tradeoffs(runs: list[dict[str, Any]], metrics: dict[str, dict[str, float]]) -> list[TradeOff]:
    """For every (style metric, content metric) pair present and every block with two or more rankable runs
    (`_rankable`) measured on both: the runs' (content, style) values and which are Pareto-optimal within the
    block (`metrics.pareto_optimal`: no other run keeps at least as much content with at least as much style).
    A trade-off has no winner: the front is the set of settings worth choosing between."""
    present = metric_names(runs, metrics)
    kinds = {a: [n for n in present if n in METRICS and METRICS[n].kind in k] for a, k in _AXES.items()}
    by_id = {str(r.get("id")): r for r in runs}
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


def metric_names(runs: list[dict[str, Any]], metrics: dict[str, dict[str, float]]) -> list[str]:
    """Metrics present for at least one run: registry order first, then any others alphabetically."""
    ids = {str(r.get("id")) for r in runs}
    present = {name for rid, m in metrics.items() if rid in ids for name in m}
    return [n for n in METRICS if n in present] + sorted(present - set(METRICS))
