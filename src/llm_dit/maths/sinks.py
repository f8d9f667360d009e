"""Attention sinks (massive activations): find them, describe them, and report whether a threshold separates them.

A few fixed positions of an LLM's sequence (the first token, some delimiters) carry values hundreds of times larger
than any other row in a few fixed dimensions. They are not content, and statistics that include them describe them,
not the content. :func:`find_sinks` finds them; every statistic of `maths.normalize` and `maths.outliers` can be
fitted on the content rows only (``content=``), and `maths.refstats.compute_reference_stats` leaves them out of
reference statistics.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.errors import check_choice
from ..core.modes import SINK_RATIO, SINK_ROW_MODES
from ..core.numerics import check_number, check_rows
from .stats import StatsError, check_sequences

__all__ = [
    "SINK_MARGIN",
    "SINK_RATIO",
    "SINK_REPORT_EDGES",
    "SINK_ROW_MODES",
    "SINK_TOP_DIMS",
    "check_sink_ratio",
    "check_sink_rows",
    "describe_sinks",
    "find_sinks",
    "row_ratios",
    "sink_lines",
    "sink_report",
    "sink_report_lines",
]


SINK_TOP_DIMS = 3
"""Dimensions listed per sink row by :func:`describe_sinks`."""


def check_sink_ratio(ratio: float) -> float:
    """``ratio`` if it is a finite number > 1, else a :class:`StatsError` naming ``vl.sink_ratio``."""
    return check_number(ratio, "sink ratio (vl.sink_ratio)", lambda r: r > 1.0, "a finite number > 1", error=StatsError)


def check_sink_rows(mode: str) -> str:
    """``mode`` if it is one of :data:`SINK_ROW_MODES`, else a :class:`StatsError` naming ``vl.sink_rows``."""
    return check_choice(mode, SINK_ROW_MODES, "vl.sink_rows", StatsError)


def _row_peaks(rows: Tensor) -> tuple[Tensor, float]:
    """``m_i = max_d |x_id|`` (float32 ``[n]``) and their median ``M`` (lower median; NaN rows ignored)."""
    check_rows(rows, "sink detection rows", finite=False, error=StatsError)
    peaks = rows.detach().to(torch.float32).abs().amax(dim=1)
    return peaks, float(peaks.nanmedian())


def find_sinks(rows: Tensor, ratio: float = SINK_RATIO) -> Tensor:
    """Attention-sink (massive-activation) rows of one sequence ``rows`` ``[n, D]``: a boolean mask ``[n]``.

    With ``m_i = max_d |x_id|`` (float32) and ``M`` the median of the ``m_j`` (the lower one for even ``n``),
    row ``i`` is a sink when ``m_i > r · M``, ``r = ratio > 1`` (config ``vl.sink_ratio``, default 20).

    The median row is never a sink (``M ≤ r·M``), so at most ``⌊n/2⌋`` rows are flagged and a single row never
    is: the rule cannot call a whole sequence a sink. A NaN row is not flagged (NaN compares false).
    Apply it once per sequence (one prompt's rows), before any row is removed: the median is that sequence's.
    """
    r = check_sink_ratio(ratio)
    peaks, median = _row_peaks(rows)
    return peaks > r * median


def describe_sinks(
    rows: Tensor,
    sinks: Tensor,
    ratio: float,
    *,
    positions: Sequence[int] | None = None,
    token: Callable[[int], str] | None = None,
    top_dims: int = SINK_TOP_DIMS,
) -> dict[str, Any]:
    """A JSON-able account of the sink rows of ``rows`` ``[n, D]`` (``sinks`` from :func:`find_sinks`).

    ``{"ratio": r, "median_max_abs": M, "count": k, "rows": [...]}`` with one entry per sink row, in row order:
    ``position`` (``positions[i]``, e.g. the token position in the prompt; default ``i``), ``token``
    (``token(position)`` or None), ``max_abs`` ``m_i``, ``ratio_to_median`` ``m_i / M`` and ``dims``: the
    ``top_dims`` dimensions of largest ``|x_id|`` as ``[d, x_id]`` pairs, largest first.
    """
    peaks, median = _row_peaks(rows)
    mask = torch.as_tensor(sinks, dtype=torch.bool)
    if mask.shape != peaks.shape:
        raise StatsError(f"sink mask must have shape ({peaks.numel()},), got {tuple(mask.shape)}")
    x = rows.detach().to(torch.float32)
    k = min(int(top_dims), x.shape[1])
    described = []
    for i in mask.nonzero().flatten().tolist():
        position = int(positions[i]) if positions is not None else i
        dims = x[i].abs().topk(k).indices.tolist()
        described.append(
            {
                "position": position,
                "token": token(position) if token is not None else None,
                "max_abs": float(peaks[i]),
                "ratio_to_median": float(peaks[i]) / median if median > 0 else math.inf,
                "dims": [[int(d), float(x[i, d])] for d in dims],
            }
        )
    return {"ratio": float(ratio), "median_max_abs": median, "count": len(described), "rows": described}


def sink_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per sink row of a `sinks.describe_sinks` record: where it is, its token, the dims that carry it."""
    out = []
    for r in rows:
        where = (f"prompt {r['prompt']} " if "prompt" in r else "") + f"position {r['position']}"
        token = f" {r['token']!r}" if r.get("token") is not None else ""
        dims = ", ".join(f"dim {d} = {v:.4g}" for d, v in r["dims"])
        out.append(f"{where}{token}: {dims} ({r['ratio_to_median']:.3g}x the median row's max)")
    return out


SINK_MARGIN = 2.0
"""How far a threshold ``r`` must keep content and sinks apart to *separate* them (:func:`sink_report`): every content
row's ratio at most ``r / SINK_MARGIN`` and every sink's at least ``r · SINK_MARGIN``."""
SINK_REPORT_EDGES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0)
"""Bin edges of :func:`sink_report`'s histogram of row ratios: ``[0, 1)``, ``[1, 2)``, …, ``[1000, inf)``."""
SINK_REPORT_QUANTILES = (0.5, 0.9, 0.99)


def row_ratios(rows: Tensor) -> Tensor:
    """``ρ_i = m_i / M`` (float64 ``[n]``): each row's max ``|x_id|`` over the median row max, the quantity
    :func:`find_sinks` compares with ``r`` (``m``, ``M`` as there). ``M = 0``: ``ρ_i = 1`` for ``m_i = 0`` (a row
    like the median) and ``inf`` otherwise."""
    peaks, median = _row_peaks(rows)
    p = peaks.double()
    if median > 0:
        return p / median
    return torch.where(p > 0, math.inf, 1.0).double()


def sink_report(
    rows: Tensor | Sequence[Tensor],
    ratio: float = SINK_RATIO,
    *,
    token: Callable[[int, int], str] | None = None,
    top: int = 5,
) -> dict[str, Any]:
    """Does ``r = ratio`` (config ``vl.sink_ratio``) separate the attention sinks of ``rows`` (one ``[n_p, D]`` tensor
    per prompt) from their content rows? The distribution of the row ratios ``ρ_i = m_i / M_p`` (:func:`row_ratios`,
    each row against its own prompt's median row max ``M_p``; a sink is ``ρ_i > r``, :func:`find_sinks`) and:

    - ``rows``, ``above`` (sinks: rows with ``ρ > r``), ``quantiles`` (``50%``, ``90%``, ``99%`` — lower quantiles,
      i.e. ratios of actual rows — and ``max``), ``histogram`` (rows per bin of :data:`SINK_REPORT_EDGES`);
    - ``largest_content = max{ρ_i ≤ r}``, ``smallest_sink = min{ρ_i > r}`` (None without sinks) and ``gap =
      smallest_sink / largest_content``; ``highest_content`` and ``lowest_sinks``: the ``top`` rows on each side of
      the threshold (prompt, position, token, ratio, ``max_abs`` and the 3 largest ``[d, x_id]``);
    - ``separates``: ``largest_content ≤ r / m`` and (no sink or ``smallest_sink ≥ r · m``), ``m =``
      :data:`SINK_MARGIN`;
    - ``widest_gap = (a, b)``: the largest ratio ``b / a`` between consecutive sorted ratios ``a < b`` with ``a ≥ 1``
      (at or above a median row), where a gap between content and sinks lies; ``suggested_ratio = sqrt(a·b)`` (its
      geometric middle) when ``r`` does not separate and that gap is at least ``m²`` wide, else None.
    """
    r = check_sink_ratio(ratio)
    xs, ratios, sinks, where = [], [], [], []
    for p, x in enumerate(check_sequences(rows, "no rows to report on")):
        xs.append(x)
        ratios.append(row_ratios(x))
        sinks.append(find_sinks(x, r))
        where += [(p, i) for i in range(x.shape[0])]
    rho, sink = torch.cat(ratios).numpy(), torch.cat(sinks).numpy()
    content = rho[~sink]

    def described(k: int) -> dict[str, Any]:
        p, i = where[k]
        x = xs[p][i]
        dims = x.abs().topk(min(SINK_TOP_DIMS, x.numel())).indices.tolist()
        return {
            "prompt": p,
            "position": i,
            "token": token(p, i) if token is not None else None,
            "ratio": float(rho[k]),
            "max_abs": float(x.abs().max()),
            "dims": [[int(d), float(x[d])] for d in dims],
        }

    order = np.argsort(rho, kind="stable")
    upper = np.sort(rho[rho >= 1.0])
    widest = None
    if len(upper) > 1 and upper[0] > 0:
        steps = upper[1:] / upper[:-1]
        k = int(np.argmax(steps))
        widest = (float(upper[k]), float(upper[k + 1]))
    largest_content = float(content.max())
    smallest_sink = float(rho[sink].min()) if sink.any() else None
    separates = largest_content <= r / SINK_MARGIN and (smallest_sink is None or smallest_sink >= r * SINK_MARGIN)
    clear = widest is not None and widest[1] >= widest[0] * SINK_MARGIN**2
    edges = (0.0, *SINK_REPORT_EDGES, math.inf)
    bins = {f"[{lo:g}, {hi:g})": int(((rho >= lo) & (rho < hi)).sum()) for lo, hi in itertools.pairwise(edges)}
    bins[f"[{edges[-2]:g}, inf)"] += int((rho == math.inf).sum())
    return {
        "ratio": r,
        "rows": len(rho),
        "above": int(sink.sum()),
        "quantiles": {f"{q * 100:g}%": float(np.quantile(rho, q, method="lower")) for q in SINK_REPORT_QUANTILES}
        | {"max": float(rho.max())},
        "histogram": bins,
        "largest_content": largest_content,
        "smallest_sink": smallest_sink,
        "gap": None if smallest_sink is None else smallest_sink / largest_content,
        "separates": separates,
        "widest_gap": widest,
        "suggested_ratio": math.sqrt(widest[0] * widest[1]) if widest and clear and not separates else None,
        "highest_content": [described(k) for k in order[~sink[order]][::-1][:top]],
        "lowest_sinks": [described(k) for k in order[sink[order]][:top]],
    }


def sink_report_lines(report: dict[str, Any]) -> list[str]:
    """:func:`sink_report` as lines of text: the distribution, the rows on each side of the threshold, and whether it
    separates them (if not, the gap to move ``vl.sink_ratio`` into, when there is one)."""
    r, q = report["ratio"], report["quantiles"]

    def row(e: dict[str, Any]) -> str:
        token = f" {e['token']!r}" if e.get("token") is not None else ""
        dims = ", ".join(f"dim {d} = {v:.4g}" for d, v in e["dims"])
        return f"  {e['ratio']:8.3g}x  prompt {e['prompt']} position {e['position']}{token}: {dims}"

    out = [
        f"row ratio = a row's max |x| / its prompt's median row max, over {report['rows']} rows",
        "quantiles: " + ", ".join(f"{k} {v:.3g}" for k, v in q.items()),
        *(f"  {name:12} {count}" for name, count in report["histogram"].items()),
        f"{report['above']} of {report['rows']} rows above vl.sink_ratio {r:g} (attention sinks)",
        "highest content rows:",
        *map(row, report["highest_content"]),
    ]
    if report["lowest_sinks"]:
        out += ["lowest sinks:", *map(row, report["lowest_sinks"])]
    content, sink = report["largest_content"], report["smallest_sink"]
    sinks = "no sinks" if sink is None else f"sinks from {sink:.3g}x (gap {report['gap']:.3g}x)"
    if report["separates"] and sink is None:
        out.append(
            f"vl.sink_ratio {r:g} finds no sinks: every row is at most {content:.3g}x its prompt's median row max "
            f"(at least {SINK_MARGIN:g}x below the threshold)"
        )
        return out
    if report["separates"]:
        out.append(f"vl.sink_ratio {r:g} separates them: content up to {content:.3g}x, {sinks}")
        return out
    out.append(
        f"vl.sink_ratio {r:g} does not separate them with a {SINK_MARGIN:g}x margin on each side: content up to "
        f"{content:.3g}x, {sinks}"
    )
    low, high = report["widest_gap"] or (None, None)
    if report["suggested_ratio"] is not None:
        out.append(
            f"the widest gap in the ratios is from {low:.3g}x to {high:.3g}x: set vl.sink_ratio to about "
            f"{report['suggested_ratio']:.3g} (its geometric middle) and run this report again"
        )
    else:
        widest = "none" if low is None else f"{low:.3g}x to {high:.3g}x"
        out.append(
            f"no clear gap (at least {SINK_MARGIN**2:g}x) in the ratios above the median (widest: {widest}): no "
            "threshold separates sinks from content here; look at the rows listed (tokens, dims) before changing "
            "vl.sink_ratio"
        )
    return out
