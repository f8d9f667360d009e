"""Paired statistics of an eval: per-method means with bootstrap confidence intervals, paired differences between
methods over the cells they share, and the verdict "better than caption". Pure numpy; seeded, so an eval's numbers
are reproducible.

The bootstrap is scipy's (`scipy.stats.bootstrap`, `paired=True`, `method="BCa"`, 9999 resamples) without scipy:
resampling indices of the per-cell differences d_i = m(method, cell) - m(baseline, cell) and taking the mean is
exactly scipy's paired resampling of (method, baseline) with statistic `mean(a) - mean(b)`, and with the same seed
it draws the same indices. BCa (Efron & Tibshirani 1993, §14.3) corrects the percentile interval for bias (z0, from
the share of resampled means below the estimate) and skew (the acceleration a, from the jackknife). All-equal
values have no spread to resample: their interval is the value itself (scipy returns NaN there).

Cells that share a reference or a prompt are correlated; resampling cells treats them as independent, so the
intervals are narrower than a cluster bootstrap's. Every estimate carries its number of cells; an eval also records
its number of references next to it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from .errors import UserError

N_RESAMPLES = 9999
LEVEL = 0.95
ADHERENCE_TOLERANCE = 0.01
"""How much prompt adherence (the CLIP-T cosine, or SigLIP-T's) a method may lose against caption and still be
called better: the lower bound of the paired difference's CI must be >= -0.01 (a cosine difference; CLIP ViT-L/14
scores of matching prompts sit around 0.25-0.30, so 0.01 is a few percent of the score)."""
BOOTSTRAP_METHODS = ("bca", "percentile")


@dataclass(frozen=True)
class Estimate:
    """A mean over `n` cells and its confidence interval [`low`, `high`] at `level`."""

    mean: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = N_RESAMPLES,
    level: float = LEVEL,
    method: str = "bca",
    seed: int = 0,
) -> tuple[float, float]:
    """The bootstrap confidence interval at `level` of the mean of `values` (`method` "bca" or "percentile"),
    with `n_resamples` resamples drawn from `numpy.random.default_rng(seed)`; all-equal values give (value, value)."""
    if method not in BOOTSTRAP_METHODS:
        raise UserError(f"bootstrap method '{method}' is not one of {', '.join(BOOTSTRAP_METHODS)}")
    d = np.asarray(values, dtype=np.float64)
    n = d.size
    if n == 0:
        raise UserError("a confidence interval needs at least one value")
    if not np.isfinite(d).all():
        raise UserError("a confidence interval needs finite values")
    theta = float(d.mean())
    if np.ptp(d) == 0:  # nothing to resample: BCa's acceleration would be 0/0
        return theta, theta
    idx = np.random.default_rng(seed).integers(0, n, (n_resamples, n))
    means = d[idx].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = alpha, 1 - alpha
    if method == "bca":
        normal = NormalDist()
        share = ((means < theta).sum() + (means <= theta).sum()) / (2 * n_resamples)
        z0 = normal.inv_cdf(min(max(share, 1 / (2 * n_resamples)), 1 - 1 / (2 * n_resamples)))
        jack = (d.sum() - d) / (n - 1)
        u = (n - 1) * (jack.mean() - jack)
        spread = (u**2).sum()
        a = (u**3).sum() / (6 * spread**1.5) if spread > 0 else 0.0
        za = normal.inv_cdf(alpha)
        lo = normal.cdf(z0 + (z0 + za) / (1 - a * (z0 + za)))
        hi = normal.cdf(z0 + (z0 - za) / (1 - a * (z0 - za)))
    low, high = np.quantile(means, [lo, hi])
    return float(low), float(high)


def estimate(values: Sequence[float] | np.ndarray, **kw: object) -> Estimate:
    """The mean of `values` and its bootstrap CI (`bootstrap_ci`'s keywords)."""
    d = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(d, **kw)  # type: ignore[arg-type]
    return Estimate(float(d.mean()), low, high, int(d.size), float(kw.get("level", LEVEL)))  # type: ignore[arg-type]


def paired_difference(
    method: Mapping[Hashable, float], baseline: Mapping[Hashable, float], **kw: object
) -> Estimate | None:
    """The mean of `method[cell] - baseline[cell]` over the cells both have, with its bootstrap CI (cells paired
    by their key: reference, prompt and seed); None when they share no cell."""
    cells = [c for c in method if c in baseline]
    if not cells:
        return None
    return estimate([method[c] - baseline[c] for c in cells], **kw)


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
