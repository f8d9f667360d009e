"""Paired statistics of an eval: per-method means with confidence intervals, paired differences between methods over
the cells they share, and the verdict "better than caption".

An eval's cells cross references with prompts (and seeds). Cells that share a reference are correlated (a method
works better on some references than on others), and so are cells that share a prompt, so treating cells as
independent (a plain bootstrap over cells) gives intervals that are far too narrow: with 8 references x 24 prompts
and a reference effect as large as the cell noise, a 95% interval over cells covers the true mean 46% of the time
(`tests/test_comparison.py` measures it). The intervals here are two-way cluster-robust (Cameron, Gelbach &
Miller 2011, "Robust inference with multiway clustering", JBES 29(2)): for the mean theta of n values d_i, and a
grouping g with G groups,

    V_g = G / (G - 1) * sum_k (sum_{i in group k} (d_i - theta))^2 / n^2

    V = max(V_reference + V_prompt - V_cell, V_cell)    (a cell: one reference with one prompt, its seeds together)
    CI = theta -/+ t_{G-1}(1 - (1 - level) / 2) * sqrt(V),   G = min(G_reference, G_prompt)

The floor V_cell (every cell independent) guards the small-sample case the difference can fall to or below 0 in
(Cameron, Gelbach & Miller replace such a V by max(V_reference, V_prompt), which is below V_cell there). A factor
with a single level carries no variation and leaves the sum (one reference: clustered by prompt only); with a
single reference and a single prompt the seeds are the independent units. On crossed random effects (8 x 24, 400
draws per case, tests) this interval covers at 95-99%, where clustering by reference alone drops to 83% when prompts
carry the variation.
Statistics in float64 on the metric values (float32 cosines), scipy's Student t quantile (`scipy.special.stdtrit`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .errors import UserError

LEVEL = 0.95
CI_METHOD = "two-way cluster-robust t (references x prompts; Cameron, Gelbach & Miller 2011)"
ADHERENCE_TOLERANCE = 0.01
"""How much prompt adherence (the CLIP-T cosine, or SigLIP-T's) a method may lose against caption and still be
called better: the lower bound of the paired difference's CI must be >= -0.01 (a cosine difference; CLIP ViT-L/14
scores of matching prompts sit around 0.25-0.30, so 0.01 is a few percent of the score)."""


@dataclass(frozen=True)
class Estimate:
    """A mean over `n` cells and its confidence interval [`low`, `high`] at `level`; `clusters` is the G whose
    t quantile (G - 1 degrees of freedom) set the interval's width."""

    mean: float
    low: float
    high: float
    n: int
    level: float = LEVEL
    clusters: int = 0

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def cluster_variance(values: np.ndarray, groups: Sequence[Hashable]) -> tuple[float, int]:
    """`(V_g, G)`: the cluster-robust variance of the mean of `values` for the grouping `groups` (one label per
    value), V_g = G / (G - 1) * sum_k (sum_{i in k} (d_i - theta))^2 / n^2, and the number of groups G (>= 2)."""
    ids: dict[Hashable, int] = {}
    index = np.asarray([ids.setdefault(label, len(ids)) for label in groups])
    n, g = values.size, len(ids)
    sums = np.bincount(index, weights=values - values.mean(), minlength=g)
    return float(g / (g - 1) * (sums**2).sum() / n**2), g


def clustered_ci(
    values: Sequence[float] | np.ndarray,
    references: Sequence[Hashable],
    prompts: Sequence[Hashable],
    level: float = LEVEL,
) -> tuple[float, float, int]:
    """`(low, high, G)`: the two-way cluster-robust t interval at `level` of the mean of `values`, clustered by
    `references` and `prompts` (one label of each per value; the module docstring has the formula). All-equal
    values give (value, value)."""
    d = np.asarray(values, dtype=np.float64)
    if d.size < 2:
        raise UserError("a confidence interval needs at least two values (two references, prompts or seeds)")
    if not np.isfinite(d).all():
        raise UserError("a confidence interval needs finite values")
    if len(references) != d.size or len(prompts) != d.size:
        raise UserError("a confidence interval needs one reference and one prompt label per value")
    factors = [list(f) for f in (references, prompts) if len(set(f)) > 1]
    theta = float(d.mean())
    if len(factors) == 2:
        (v_r, g_r), (v_p, g_p) = (cluster_variance(d, f) for f in factors)
        v_cell, _ = cluster_variance(d, list(zip(*factors, strict=True)))
        variance, g = max(v_r + v_p - v_cell, v_cell), min(g_r, g_p)
    else:  # one factor varies, or none (the seeds of one cell are the units)
        variance, g = cluster_variance(d, factors[0] if factors else list(range(d.size)))
    from scipy.special import stdtrit  # the Student t quantile; imported here, not on every CLI start

    half = float(stdtrit(g - 1, 1 - (1 - level) / 2)) * variance**0.5
    return theta - half, theta + half, g


def estimate(cells: Mapping[tuple, float], level: float = LEVEL) -> Estimate:
    """The mean of the values of `cells` (eval cell key `(reference hash, prompt, seed)` -> value) and its
    clustered CI (`clustered_ci`) by the keys' references and prompts."""
    keys = list(cells)
    d = np.asarray([cells[k] for k in keys], dtype=np.float64)
    low, high, g = clustered_ci(d, [k[0] for k in keys], [k[1] for k in keys], level)
    return Estimate(float(d.mean()), low, high, int(d.size), level, g)


def paired_difference(
    method: Mapping[tuple, float], baseline: Mapping[tuple, float], level: float = LEVEL
) -> Estimate | None:
    """The mean of `method[cell] - baseline[cell]` over the cells both have, with its clustered CI (`estimate`;
    cells paired by their key: reference, prompt and seed); None when they share fewer than two cells."""
    cells = {c: method[c] - baseline[c] for c in method if c in baseline}
    return estimate(cells, level) if len(cells) >= 2 else None


@dataclass(frozen=True)
class Verdict:
    """Whether a method is better than the baseline it was compared with, and why (one line)."""

    better: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def better_than(
    style: Estimate | None, adherence: Estimate | None, tolerance: float = ADHERENCE_TOLERANCE, against: str = "caption"
) -> Verdict:
    """*Better than `against`* only when the paired style gain's CI lies above 0 (its lower bound > 0) and the paired
    prompt-adherence difference's CI lower bound is >= -`tolerance` (the loss stays within the tolerance)."""
    if style is None or adherence is None:
        missing = "style" if style is None else "prompt-adherence"
        return Verdict(False, f"undecided: no paired {missing} metric against {against}")
    if style.low <= 0:
        where = "lies below 0" if style.high < 0 else "does not exclude 0"
        return Verdict(False, f"not better: style gain {style.mean:+.4f} [{style.low:+.4f}, {style.high:+.4f}] {where}")
    if adherence.low < -tolerance:
        return Verdict(
            False,
            f"not better: prompt adherence {adherence.mean:+.4f} [{adherence.low:+.4f}, {adherence.high:+.4f}] may "
            f"lose more than the tolerance {tolerance}",
        )
    return Verdict(
        True,
        f"better than {against}: style gain {style.mean:+.4f} [{style.low:+.4f}, {style.high:+.4f}], prompt "
        f"adherence {adherence.mean:+.4f} (lower bound {adherence.low:+.4f} >= -{tolerance})",
    )


def adherence_kept(adherence: Estimate | None, tolerance: float = ADHERENCE_TOLERANCE) -> bool:
    """Whether a paired prompt-adherence difference keeps adherence: its CI lower bound >= -`tolerance`."""
    return adherence is not None and adherence.low >= -tolerance
