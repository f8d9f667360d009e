"""Outlier dimensions: columns whose spread is far from the reference's, found and corrected (config
``vl.outlier_masking``: none, zero, clamp, scale, reference).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.errors import check_choice
from ..core.modes import OUTLIER_MODES
from ..core.numerics import check_number
from .stats import (
    STD_EPS,
    StatsError,
    check_embeddings,
    check_width,
    content_mask,
    mean_std,
    reference_tensors,
    standardize,
)

__all__ = [
    "OUTLIER_MODES",
    "get_outlier_dimensions",
    "mask_outlier_dimensions",
    "std_ratios",
]


def std_ratios(embeddings: Tensor, reference: Any) -> Tensor:
    """Per-dimension spread relative to the reference: ``ratio_d = σ_d / max(σ_ref_d, ε)``.

    ``σ_d`` is the population std of column ``d`` over the given rows (float32; pass content rows: an attention
    sink row alone can set ``σ_d``). ``ratio_d > 1``: the embeddings vary more than the reference; ``< 1``: less.
    Returns a float32 tensor ``[D]``.
    """
    x = check_embeddings(embeddings)
    ref_mean, ref_std = reference_tensors(reference, device=x.device)
    check_width(x.shape[1], ref_mean.numel())
    _, std = mean_std(x, dim=0)
    return std / ref_std.clamp_min(STD_EPS)


def _check_threshold(threshold: float) -> float:
    return check_number(threshold, "threshold", lambda t: t > 1.0, "a finite number > 1", error=StatsError)


def _severity(ratio: float) -> float:
    """``max(ratio, 1/ratio)``; ``inf`` for a ratio of 0."""
    if ratio <= 0.0:
        return math.inf
    return max(ratio, 1.0 / ratio)


def _outliers_from_ratios(ratios: Tensor, threshold: float) -> list[tuple[int, float]]:
    flagged = ((ratios > threshold) | (ratios < 1.0 / threshold)).nonzero().flatten().tolist()
    values = ratios.cpu().tolist()
    found = [(int(d), float(values[d])) for d in flagged]
    found.sort(key=lambda item: (-_severity(item[1]), item[0]))
    return found


def get_outlier_dimensions(
    embeddings: Tensor, threshold: float = 10.0, reference: Any = None
) -> list[tuple[int, float]]:
    """Dimensions whose spread is far from the reference, most severe first.

    With ``ratio_d`` from :func:`std_ratios`: ``d`` is an outlier when ``ratio_d > t`` or
    ``ratio_d < 1/t`` (``t = threshold > 1``). Sorted by severity ``max(ratio_d, 1/ratio_d)`` descending,
    ties by dimension index. Returns ``[(d, ratio_d), ...]``. With fewer than 2 rows no spread can be
    measured and the result is empty. ``reference`` is required (a :class:`StatsError` says so when missing).
    """
    t = _check_threshold(threshold)
    ratios = std_ratios(embeddings, reference)
    if embeddings.shape[0] < 2:
        return []
    return _outliers_from_ratios(ratios, t)


def _row_mask(rows: Any, n: int, device: torch.device) -> Tensor:
    """Boolean ``[n]`` mask from ``None`` (all rows), a boolean mask ``[n]`` or integer row indices."""
    if rows is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    r = torch.as_tensor(rows, device=device)
    if r.dtype == torch.bool:
        if r.shape != (n,):
            raise StatsError(f"boolean rows mask must have shape ({n},), got {tuple(r.shape)}")
        return r
    if r.is_floating_point() or r.is_complex():
        raise StatsError(f"rows must be a boolean mask or integer indices, got dtype {r.dtype}")
    r = r.reshape(-1).long()
    if r.numel() and (int(r.min()) < -n or int(r.max()) >= n):
        raise StatsError(f"row index out of range for {n} rows")
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[r] = True
    return mask


def _mask_zero(sel: Tensor, dims: Tensor) -> Tensor:
    """``x'_id = 0`` for the selected rows ``i`` and outlier dimensions ``d``."""
    out = sel.clone()
    out[:, dims] = 0.0
    return out


def _mask_clamp(sel: Tensor, dims: Tensor, ref_std: Tensor, threshold: float, fit: Tensor | None) -> Tensor:
    """Compress each too-wide outlier column to ratio exactly ``t``, about its mean.

    ``x'_id = μ_d + (x_id − μ_d) · t / ratio_d`` (only columns with ``ratio_d > t`` get here), computed as
    ``μ_d + z_id · t · max(σ_ref_d, ε)``; ``μ_d``, ``z`` from the ``fit`` rows.
    """
    out = sel.clone()
    z, mu, _ = standardize(sel[:, dims], dim=0, fit=fit)
    out[:, dims] = mu + z * (threshold * ref_std[dims].clamp_min(STD_EPS))
    return out


def _mask_scale(sel: Tensor, dims: Tensor, ref_std: Tensor, fit: Tensor | None) -> Tensor:
    """Soft correction: halve the log-ratio, about the mean.

    ``x'_id = μ_d + (x_id − μ_d) · ratio_d^(−1/2)``, so the new ratio is ``sqrt(ratio_d)``. Computed as
    ``μ_d + z_id · sqrt(σ_d) · sqrt(max(σ_ref_d, ε))``; ``μ_d``, ``σ_d``, ``z`` from the ``fit`` rows.
    """
    out = sel.clone()
    z, mu, sigma = standardize(sel[:, dims], dim=0, fit=fit)
    out[:, dims] = mu + z * (sigma.sqrt() * ref_std[dims].clamp_min(STD_EPS).sqrt())
    return out


def _mask_reference(sel: Tensor, dims: Tensor, ref_mean: Tensor) -> Tensor:
    """``x'_id = μ_ref_d`` for the selected rows and outlier dimensions."""
    out = sel.clone()
    out[:, dims] = ref_mean[dims]
    return out


def mask_outlier_dimensions(
    embeddings: Tensor,
    threshold: float = 10.0,
    mode: str = "zero",
    reference: Any = None,
    rows: Tensor | None = None,
    content: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Find outlier dimensions on the selected rows and correct them there, with one of :data:`OUTLIER_MODES`.

    ``rows`` (boolean mask ``[n]`` or integer indices; default all rows) selects the rows that are analysed
    (:func:`get_outlier_dimensions`) and modified; other rows are copied unchanged. ``content`` (boolean
    ``[n]``, e.g. the rows that are not attention sinks) narrows the *analysis* to ``rows ∧ content``; the
    correction still applies to every selected row. ``reference`` is required. Per outlier dimension ``d``
    with ``μ_d``/``σ_d`` over the analysed rows and ``t = threshold``:

    - ``none``: nothing changes, nothing is reported as masked;
    - ``zero``: ``x' = 0``;
    - ``clamp``: only columns that vary too much (``ratio_d > t``) are compressed,
      ``x' = μ_d + (x − μ_d) · t/ratio_d`` (ratio → t). Columns with ``ratio_d < 1/t`` are left unchanged and
      listed in ``unchanged_dimensions``: bringing them up to ``1/t`` would multiply a near-constant column
      (e.g. against sink-inflated reference stds) by ``1/(t·ratio_d)``, without bound as ``ratio_d → 0``;
    - ``scale``: ``x' = μ_d + (x − μ_d) · ratio_d^(−1/2)`` (ratio → sqrt(ratio));
    - ``reference``: ``x' = μ_ref_d``.

    Returns ``(masked, info)``: ``masked`` is a new float32 tensor (the input is never modified);
    ``info`` has ``masked_dimensions`` (the dimensions changed, severity order), ``ratios`` (their ratios
    before masking), ``unchanged_dimensions`` (``[(d, ratio_d)]`` flagged but left alone), ``mode``,
    ``threshold`` and ``row_count`` (rows analysed). Fewer than 2 analysed rows: nothing masked.
    """
    check_choice(mode, OUTLIER_MODES, "outlier mode", StatsError)
    t = _check_threshold(threshold)
    x = check_embeddings(embeddings, check_finite=mode != "none")
    ref_mean, ref_std = reference_tensors(reference, device=x.device)
    check_width(x.shape[1], ref_mean.numel())
    mask = _row_mask(rows, x.shape[0], x.device)
    analysed = mask if content is None else mask & content_mask(content, x)
    out = x.clone()
    row_count = int(analysed.sum())
    info: dict[str, Any] = {
        "masked_dimensions": [],
        "ratios": [],
        "unchanged_dimensions": [],
        "mode": mode,
        "threshold": t,
        "row_count": row_count,
    }
    if mode == "none" or row_count < 2:
        return out, info
    sel = x[mask]
    fit = None if content is None else analysed[mask]
    ratios = std_ratios(x[analysed], {"per_dim_mean": ref_mean, "per_dim_std": ref_std})
    outliers = _outliers_from_ratios(ratios, t)
    if mode == "clamp":
        info["unchanged_dimensions"] = [(d, r) for d, r in outliers if r < 1.0 / t]
        outliers = [(d, r) for d, r in outliers if r > t]
    info["masked_dimensions"] = [d for d, _ in outliers]
    info["ratios"] = [r for _, r in outliers]
    if not outliers:
        return out, info
    dims = torch.tensor(info["masked_dimensions"], dtype=torch.long, device=x.device)
    if mode == "zero":
        new = _mask_zero(sel, dims)
    elif mode == "clamp":
        new = _mask_clamp(sel, dims, ref_std, t, fit)
    elif mode == "scale":
        new = _mask_scale(sel, dims, ref_std, fit)
    else:
        new = _mask_reference(sel, dims, ref_mean)
    out[mask] = new
    return out, info
