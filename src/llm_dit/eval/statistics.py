"""Paired statistics of an eval: per-method means with confidence intervals, paired differences between methods over
the cells they share, and the verdict "better than caption".

An eval's cells cross references with prompts (and seeds). Cells that share a reference are correlated (a method
works better on some references than on others), and so are cells that share a prompt, so treating cells as
independent (a plain bootstrap over cells) gives intervals that are far too narrow: with 8 references x 24 prompts
and a reference effect as large as the cell noise, a 95% interval over cells covers the true mean 46% of the time
(`tests/eval/test_comparison.py` measures it). The intervals here are two-way cluster-robust (Cameron, Gelbach &
Miller 2011, "Robust inference with multiway clustering", JBES 29(2)): for the mean theta of n values d_i, and a
grouping g with G groups,

    V_g = G / (G - 1) * sum_k (sum_{i in group k} (d_i - theta))^2 / n^2

    V = max(V_reference + V_prompt - V_cell, V_cell)    (a cell: one reference with one prompt, its seeds together)
    CI = theta -/+ t_{G-1}(1 - (1 - level) / 2) * sqrt(V),   G = min(G_reference, G_prompt)

The floor V_cell (every cell independent) guards the small-sample case the difference can fall to or below 0 in
(Cameron, Gelbach & Miller replace such a V by max(V_reference, V_prompt), which is below V_cell there). A factor
with a single level carries no variation and leaves the sum (one reference: clustered by prompt only); with a
single reference and a single prompt the seeds are the independent units. On crossed random effects (8 x 24, six
cases, 10,000 draws each: docs/validity.md) this interval covers 94.7-98.6% (94.7% when references alone vary),
where clustering by reference alone drops to 83% when prompts carry the variation.
Statistics in float64 on the metric values (float32 cosines), scipy's Student t quantile (`scipy.special.stdtrit`).

**Verdicts, family-wise** (`family_verdicts`). Each method compared with caption is a one-sided test of its paired
style gain d (H0: mean(d) <= 0) on the same clustered statistic the interval uses:

    t = theta / sqrt(V),   p = P(T_{G-1} >= t) = stdtr(G - 1, -t)     (se = sqrt(V) = 0: p = 0 if theta > 0, else 1)

With m methods compared, their p-values are Holm-adjusted (Holm 1979, "A simple sequentially rejective multiple
test procedure", Scand. J. Statist. 6(2)): sorted ascending p_(1) <= ... <= p_(m),

    p_holm_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j))

and a style gain is shown when p_holm <= ALPHA = (1 - LEVEL) / 2 = 0.025: the probability that any of the m null
methods is called better stays <= 0.025 whatever their dependence (they share the caption images). With one
method, Holm's rule is the single test, i.e. the interval's lower bound above 0. The content-leak test (H0: the
method copies no more of the reference's content than caption, mean paired `dino_leak` difference <= 0) is adjusted
the same way over the same methods. Suites with one reference or one prompt get no verdict
(`single_level_factor`): a factor that does not vary cannot show its share of the variance.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np

from ..core.errors import UserError
from ..core.modes import ADHERENCE_TOLERANCE

K = TypeVar("K")
LEVEL = 0.95
ALPHA = round((1 - LEVEL) / 2, 12)
"""The family-wise level of the one-sided verdict tests: 0.025, the one-sided level of a 95% two-sided interval."""
CI_METHOD = "two-way cluster-robust t (references x prompts; Cameron, Gelbach & Miller 2011)"


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
    se: float | None = None  # sqrt(V), the clustered standard error of the mean (module docstring)

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


def clustered_se(
    values: Sequence[float] | np.ndarray, references: Sequence[Hashable], prompts: Sequence[Hashable]
) -> tuple[float, float, int]:
    """`(theta, sqrt(V), G)`: the mean of `values`, its two-way cluster-robust standard error by `references` and
    `prompts` (one label of each per value; the module docstring has the formula) and the G of its t quantile."""
    d = np.asarray(values, dtype=np.float64)
    if d.size < 2:
        raise UserError("a confidence interval needs at least two values (two references, prompts or seeds)")
    if not np.isfinite(d).all():
        raise UserError("a confidence interval needs finite values")
    if len(references) != d.size or len(prompts) != d.size:
        raise UserError("a confidence interval needs one reference and one prompt label per value")
    factors = [list(f) for f in (references, prompts) if len(set(f)) > 1]
    if len(factors) == 2:
        (v_r, g_r), (v_p, g_p) = (cluster_variance(d, f) for f in factors)
        v_cell, _ = cluster_variance(d, list(zip(*factors, strict=True)))
        variance, g = max(v_r + v_p - v_cell, v_cell), min(g_r, g_p)
    else:  # one factor varies, or none (the seeds of one cell are the units)
        variance, g = cluster_variance(d, factors[0] if factors else list(range(d.size)))
    return float(d.mean()), variance**0.5, g


def clustered_ci(
    values: Sequence[float] | np.ndarray,
    references: Sequence[Hashable],
    prompts: Sequence[Hashable],
    level: float = LEVEL,
) -> tuple[float, float, int]:
    """`(low, high, G)`: the two-way cluster-robust t interval at `level` of the mean of `values`, clustered by
    `references` and `prompts` (`clustered_se`): theta -/+ t_{G-1}(1 - (1 - level) / 2) * sqrt(V). All-equal
    values give (value, value)."""
    theta, se, g = clustered_se(values, references, prompts)
    half = t_quantile(g, level) * se
    return theta - half, theta + half, g


def t_quantile(g: int, level: float = LEVEL) -> float:
    """t_{G-1}(1 - (1 - level) / 2), the two-sided interval's Student t quantile on G - 1 degrees of freedom."""
    from scipy.special import stdtrit  # the Student t quantile; imported here, not on every CLI start

    return float(stdtrit(g - 1, 1 - (1 - level) / 2))


def estimate(cells: Mapping[tuple, float], level: float = LEVEL) -> Estimate:
    """The mean of the values of `cells` (eval cell key `(reference hash, prompt, seed)` -> value) and its
    clustered CI (`clustered_ci`) by the keys' references and prompts."""
    keys = list(cells)
    d = np.asarray([cells[k] for k in keys], dtype=np.float64)
    theta, se, g = clustered_se(d, [k[0] for k in keys], [k[1] for k in keys])
    half = t_quantile(g, level) * se
    return Estimate(theta, theta - half, theta + half, int(d.size), level, g, se)


def paired_difference(
    method: Mapping[tuple, float], baseline: Mapping[tuple, float], level: float = LEVEL
) -> Estimate | None:
    """The mean of `method[cell] - baseline[cell]` over the cells both have, with its clustered CI (`estimate`;
    cells paired by their key: reference, prompt and seed); None when they share fewer than two cells."""
    cells = {c: method[c] - baseline[c] for c in method if c in baseline}
    return estimate(cells, level) if len(cells) >= 2 else None


def p_greater(e: Estimate) -> float:
    """The one-sided p-value of H0: mean <= 0 against mean > 0 for the clustered estimate `e`: P(T_{G-1} >= t),
    t = mean / se (module docstring); se = 0 gives 0 when mean > 0, else 1. `ValueError` without a standard error
    or with G < 2."""
    if e.se is None or e.clusters < 2:
        raise ValueError("a p-value needs the estimate's clustered standard error and G >= 2")
    if e.se == 0:
        return 0.0 if e.mean > 0 else 1.0
    from scipy.special import stdtr  # the Student t CDF; imported here, not on every CLI start

    return float(stdtr(e.clusters - 1, -e.mean / e.se))


def holm(p: Mapping[K, float]) -> dict[K, float]:
    """Holm's adjusted p-values of the family `p` (name -> p-value): sorted ascending p_(1) <= ... <= p_(m),
    p_holm_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j)). Rejecting where p_holm <= alpha keeps the family-wise
    error rate <= alpha under any dependence between the tests (Holm 1979)."""
    m, running, adjusted = len(p), 0.0, {}
    for j, key in enumerate(sorted(p, key=lambda k: p[k])):  # j = 0..m-1: the multiplier m - j = m - (j+1) + 1
        running = max(running, min(1.0, (m - j) * p[key]))
        adjusted[key] = running
    return {k: adjusted[k] for k in p}


def single_level_factor(references: int, prompts: int) -> str | None:
    """Why a suite of `references` x `prompts` gets no verdict or rank, or None: with one reference (or one
    prompt) the clustered variance cannot see how a method's effect varies across references (prompts), so its
    intervals and tests can be far too narrow (one reference's effect is indistinguishable from the method's)."""
    single = [f"1 {name}" for name, n in (("reference", references), ("prompt", prompts)) if n < 2]
    if not single:
        return None
    return (
        f"the suite has {' and '.join(single)}: how a method's effect varies across "
        f"{'references' if references < 2 else 'prompts'} cannot be measured, so its intervals can be far too "
        "narrow; means only, no verdicts or ranks (use at least 2 references and 2 prompts)"
    )


def _ci(e: Estimate) -> str:
    return f"{e.mean:+.4f} [{e.low:+.4f}, {e.high:+.4f}]"


ADHERENCE_LOST = "prompt adherence lost"
ADHERENCE_NOT_SHOWN = "prompt adherence not shown kept"


def adherence_status(adherence: Estimate | None, tolerance: float = ADHERENCE_TOLERANCE) -> str | None:
    """None when a paired prompt-adherence difference keeps adherence (its CI lower bound >= -`tolerance`);
    `ADHERENCE_LOST` only when the whole CI lies below -`tolerance` (its upper bound too); otherwise
    `ADHERENCE_NOT_SHOWN` (the interval is too wide to tell). None input: `ADHERENCE_NOT_SHOWN`."""
    if adherence is None or adherence.low < -tolerance:
        return ADHERENCE_LOST if adherence is not None and adherence.high < -tolerance else ADHERENCE_NOT_SHOWN
    return None


def adherence_kept(adherence: Estimate | None, tolerance: float = ADHERENCE_TOLERANCE) -> bool:
    """Whether a paired prompt-adherence difference keeps adherence: its CI lower bound >= -`tolerance`."""
    return adherence is not None and adherence_status(adherence, tolerance) is None


@dataclass(frozen=True)
class Verdict:
    """Whether a method is better than the baseline it was compared with, and why (one line); the one-sided
    p-values of its style gain and content leak and their Holm adjustments over the `family` methods tested."""

    better: bool
    reason: str
    style_p: float | None = None
    style_p_holm: float | None = None
    leak_p: float | None = None
    family: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Paired:
    """A method's paired differences (method - baseline, `paired_difference`) that its verdict reads: style
    similarity, prompt adherence and content leak; None when not measured."""

    style: Estimate | None
    adherence: Estimate | None
    leak: Estimate | None


@dataclass(frozen=True)
class Metrics:
    """The metric labels a verdict names: style (with " (fallback ...)" when it is one), adherence and leak."""

    style: str = "style"
    adherence: str = "prompt adherence"
    leak: str = "dino_leak"


def family_verdicts(
    paired: Mapping[str, Paired],
    tolerance: float = ADHERENCE_TOLERANCE,
    against: Mapping[str, str] | None = None,
    metrics: Metrics = Metrics(),
    alpha: float = ALPHA,
) -> dict[str, Verdict]:
    """The verdict of each method of `paired` against its baseline (`against[name]`, default "caption"). The
    methods with all three differences form the family: each gets the one-sided p of its style gain, Holm-adjusted
    over the family (`holm`), and of its content leak (`p_greater`). *Better* only when

    * the style gain is shown: p_holm(style) <= `alpha`;
    * prompt adherence is kept: the adherence difference's CI lower bound >= -`tolerance` (`adherence_status`);
    * the content leak is not shown worse: p(leak) > `alpha`, *not* adjusted: the leak test guards a claim rather
      than making one, and adjusting it would let more copying methods through as the family grows.

    A method missing a difference is undecided and outside the family."""
    family = {k: v for k, v in paired.items() if None not in (v.style, v.adherence, v.leak)}
    p_style = {k: p_greater(v.style) for k, v in family.items()}  # type: ignore[arg-type]
    p_leak = {k: p_greater(v.leak) for k, v in family.items()}  # type: ignore[arg-type]
    holm_style = holm(p_style)
    m = len(family)
    verdicts: dict[str, Verdict] = {}
    for name, v in paired.items():
        base = (against or {}).get(name, "caption")
        if name not in family:
            missing = next(
                kind
                for kind, e in (("style", v.style), ("prompt-adherence", v.adherence),
                                (f"content-leak ({metrics.leak})", v.leak))
                if e is None
            )  # fmt: skip
            verdicts[name] = Verdict(False, f"undecided: no paired {missing} metric against {base}")
            continue
        style, adherence, leak = v.style, v.adherence, v.leak
        assert style is not None and adherence is not None and leak is not None
        tests = {"style_p": p_style[name], "style_p_holm": holm_style[name], "leak_p": p_leak[name], "family": m}
        holm_of = f"Holm-adjusted over {m} method{'s' if m != 1 else ''}"
        gain = f"style gain ({metrics.style}) {_ci(style)}, p {holm_style[name]:.4f} ({holm_of})"
        if holm_style[name] > alpha:
            verdicts[name] = Verdict(False, f"not better: {gain} > {alpha:g}", **tests)
        elif status := adherence_status(adherence, tolerance):
            verdicts[name] = Verdict(
                False,
                f"not better: {status}: prompt adherence ({metrics.adherence}) {_ci(adherence)}, "
                f"{'the whole interval' if status == ADHERENCE_LOST else 'its lower bound'} below -{tolerance}",
                **tests,
            )
        elif p_leak[name] <= alpha:
            verdicts[name] = Verdict(
                False,
                f"not better: content leak ({metrics.leak}) {_ci(leak)} is more than {base}'s, p "
                f"{p_leak[name]:.4f} <= {alpha:g}",
                **tests,
            )
        else:
            verdicts[name] = Verdict(
                True,
                f"better than {base}: {gain} <= {alpha:g}; prompt adherence ({metrics.adherence}) "
                f"{adherence.mean:+.4f} (lower bound {adherence.low:+.4f} >= -{tolerance}); content leak "
                f"({metrics.leak}) {leak.mean:+.4f}, not shown more (p {p_leak[name]:.4f})",
                **tests,
            )
    return verdicts
