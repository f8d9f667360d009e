"""The composability measure of a sweep: does combining references behave linearly?

For each run conditioned on a reference set (`a.png+b.png` with weights w) whose single-reference runs (same prompt,
seed and settings) are in the sweep (the `composability` preset makes them), three comparisons of the combination
with the weighted sum of the single-reference results (`compose.linearity`: effect E of the combination against the
sum of effects S = Σ w_k·(X_k − B)):

- conditioning: the caption rows against the text rows T (measured when the run was prepared: its record's
  `conditioning.composition`);
- image: the pixels against the run's text-only baseline image;
- metrics: each metric the combination and every single run have, the combination's value against Σ w_k·m_k.

A linear combination has residual 0 and lies on the diagonal of the plot (projection of E on S against ‖S‖).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import UserError
from ..core.files import load_image
from ..maths.compose import equal_weights, linearity
from ..sweep.run import RunResult
from ..sweep.spec import reference_paths
from .grid import fmt_value, reference_caption, value_key


def _pixels(sweep_dir: Path, run: RunResult) -> torch.Tensor | None:
    if run.output is None:
        return None
    try:
        return torch.from_numpy(np.asarray(load_image(sweep_dir / run.output), dtype=np.float64) / 255.0)
    except UserError:
        return None


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def composability(
    sweep_dir: Path,
    runs: list[RunResult],
    metrics: dict[str, dict[str, float]],
    pairs: dict[str, str | None],
) -> list[dict[str, Any]]:
    """One entry per reference-set run with all its single-reference runs: `run`, `singles`, `weights`,
    `settings`, `conditioning` and `image` (`compose.linearity`, None when not measurable) and `metrics`
    ([(name, combination, weighted sum of singles)])."""
    ok = [r for r in runs if r.ok and r.kind == "variant"]

    def key(run: RunResult, image: str | None) -> str:
        return value_key([run.prompt, image, run.settings])

    by_key = {key(r, r.image): r for r in ok if len(reference_paths(r.image)) == 1}
    by_id = {r.id: r for r in runs}
    out = []
    for run in ok:
        paths = reference_paths(run.image)
        singles = [s for p in paths if (s := by_key.get(key(run, p))) is not None]
        if len(paths) < 2 or len(singles) < len(paths):
            continue
        weights = run.reference_weights or equal_weights(len(paths))
        base = by_id.get(pairs.get(run.id) or "")
        image = None
        if base is not None and base.ok:
            pixels = [_pixels(sweep_dir, r) for r in (base, run, *singles)]
            if all(p is not None for p in pixels):
                image = linearity(pixels[0], pixels[1], pixels[2:], weights)
        own = metrics.get(run.id) or {}
        values = [metrics.get(s.id) or {} for s in singles]
        compared = [
            (name, v, sum(w * m[name] for w, m in zip(weights, values, strict=True)))
            for name, v in own.items()
            if _finite(v) and all(_finite(m.get(name)) for m in values)
        ]
        out.append(
            {
                "run": run,
                "singles": singles,
                "weights": weights,
                "caption": reference_caption(run),
                "settings": ", ".join(f"{k.split('.')[-1]}={fmt_value(v)}" for k, v in run.settings.items()),
                "conditioning": ((run.record or {}).get("conditioning") or {}).get("composition"),
                "image": image,
                "metrics": compared,
            }
        )
    return out


def diagonal_plot(
    points: list[tuple[float, float, str]], w: int = 300, h: int = 240, m: int = 36
) -> dict[str, Any] | None:
    """Pixel positions for a plot of effect (projection of E on S, y) against sum of effects (‖S‖, x), both axes on
    one scale from 0 to the largest value, with the diagonal y = x a linear combination lies on. None: no points."""
    if not points:
        return None
    top = max(max(x, y) for x, y, _ in points) or 1.0

    def px(x: float, y: float) -> tuple[float, float]:
        return m + x / top * (w - 1.5 * m), h - m - y / top * (h - 1.5 * m)

    (x0, y0), (x1, y1) = px(0, 0), px(top, top)
    return {
        "w": w,
        "h": h,
        "m": m,
        "diagonal": (x0, y0, x1, y1),
        "top": fmt_value(round(top, 4)),
        "points": [{"x": px(x, y)[0], "y": px(x, y)[1], "title": t} for x, y, t in points],
    }
