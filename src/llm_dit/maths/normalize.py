"""Normalisation of VL rows towards reference statistics (config ``vl.normalize``): none, global, per_dim, hybrid."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.errors import check_choice
from ..core.modes import NORMALIZATION_MODES
from ..core.numerics import check_number
from .stats import (
    F32_MAX,
    StatsError,
    check_embeddings,
    check_width,
    content_mask,
    pooled_std,
    reference_tensors,
    standardize,
)

__all__ = [
    "NORMALIZATION_MODES",
    "normalize",
    "normalize_global",
    "normalize_hybrid",
    "normalize_none",
    "normalize_per_dim",
]


def normalize_none(emb: Tensor) -> Tensor:
    """``x' = x`` (returned as float32; a copy, never the input object)."""
    return emb.detach().to(torch.float32, copy=True)


def normalize_global(emb: Tensor, ref_global_std: float, *, content: Tensor | None = None) -> Tensor:
    """Scale the spread of all elements to the reference global std, keeping the global mean.

    ``x' = μ + (x − μ) · σ_ref / max(σ, ε)`` with ``μ``/``σ`` the population mean/std of *all* elements
    of ``x``. Afterwards ``std(x') = σ_ref`` and ``mean(x') = μ`` (the mean is kept, not scaled; for a
    zero-mean input this is plain ``x · σ_ref / σ``). ``content`` (boolean ``[n]``): ``μ``, ``σ`` over those
    rows only (e.g. without attention sinks); the map is applied to every row.
    """
    x = check_embeddings(emb)
    z, mu, _ = standardize(x, dim=None, fit=_fit_rows(content, x))
    return (mu + z * float(ref_global_std)).clamp(-F32_MAX, F32_MAX)


def normalize_per_dim(
    emb: Tensor,
    ref_mean: Tensor,
    ref_std: Tensor,
    *,
    clip_sigma: float | None = None,
    content: Tensor | None = None,
) -> Tensor:
    """Match each dimension to the reference: z-score over the tokens, optional clip, re-scale.

    ``z_id = (x_id − μ_d) / max(σ_d, ε)``; if ``clip_sigma = k``: ``z_id ← clamp(z_id, −k, k)``;
    ``x'_id = z_id · σ_ref_d + μ_ref_d``. Without clipping (and with ``σ_d > ε``) every output column has
    exactly mean ``μ_ref_d`` and std ``σ_ref_d``; a constant column becomes ``μ_ref_d``. ``content`` (boolean
    ``[n]``): ``μ_d``, ``σ_d`` over those rows only; the map is applied to every row (then the content rows
    have the reference moments).
    """
    x = check_embeddings(emb)
    mean = ref_mean.detach().to(device=x.device, dtype=torch.float32)
    std = ref_std.detach().to(device=x.device, dtype=torch.float32)
    check_width(x.shape[1], mean.numel())
    z, _, _ = standardize(x, dim=0, fit=_fit_rows(content, x))
    if clip_sigma is not None:
        k = _check_clip(clip_sigma)
        z = z.clamp(-k, k)
    return (z * std + mean).clamp(-F32_MAX, F32_MAX)


def normalize_hybrid(
    emb: Tensor,
    ref_mean: Tensor,
    ref_std: Tensor,
    *,
    hybrid_weight: float = 0.5,
    clip_sigma: float | None = None,
    content: Tensor | None = None,
) -> Tensor:
    """Blend of the two: ``x' = w · per_dim(x) + (1 − w) · global(x)`` with ``w = hybrid_weight ∈ [0, 1]``.

    ``global`` targets the pooled reference std ``sqrt(mean_d(σ_ref_d²) + var_d(μ_ref_d))``;
    ``clip_sigma`` applies to the per-dimension part only; ``content`` to both.
    """
    w = _check_weight(hybrid_weight)
    per_dim = normalize_per_dim(emb, ref_mean, ref_std, clip_sigma=clip_sigma, content=content)
    glob = normalize_global(emb, pooled_std(ref_mean, ref_std), content=content)
    return w * per_dim + (1.0 - w) * glob


def _fit_rows(content: Tensor | None, x: Tensor) -> Tensor | None:
    """The boolean ``[n]`` mask of rows statistics are fitted on (None: all rows); at least one row."""
    if content is None:
        return None
    mask = content_mask(content, x)
    if not bool(mask.any()):
        raise StatsError("content selects no rows: statistics need at least one content row")
    return mask


def _check_clip(clip_sigma: float) -> float:
    return check_number(clip_sigma, "clip_sigma", lambda k: k > 0.0, "a finite number > 0", error=StatsError)


def _check_weight(weight: float) -> float:
    return check_number(weight, "hybrid_weight", lambda w: 0.0 <= w <= 1.0, "in [0, 1]", error=StatsError)


def normalize(
    emb: Tensor,
    mode: str,
    reference: Any,
    *,
    clip_sigma: float | None = None,
    hybrid_weight: float = 0.5,
    content: Tensor | None = None,
) -> Tensor:
    """Normalise ``emb`` ``[n, D]`` towards ``reference`` with one of :data:`NORMALIZATION_MODES`.

    ``none`` → :func:`normalize_none`; ``global`` → :func:`normalize_global` (target: the pooled reference
    std); ``per_dim`` → :func:`normalize_per_dim`; ``hybrid`` → :func:`normalize_hybrid`. ``reference`` is
    a :class:`ReferenceStats`, a mapping or any object with ``per_dim_mean``/``per_dim_std`` (required).
    ``clip_sigma`` only affects ``per_dim`` and ``hybrid``. ``content`` (boolean ``[n]``, e.g. the rows that are
    not attention sinks): the moments of ``emb`` come from those rows only; every row is mapped.
    Input of any float dtype; output float32.
    Raises :class:`StatsError` for an unknown mode, a width mismatch or non-finite input.
    """
    check_choice(mode, NORMALIZATION_MODES, "normalization mode", StatsError)
    x = check_embeddings(emb, check_finite=mode != "none")
    ref_mean, ref_std = reference_tensors(reference, device=x.device)
    check_width(x.shape[1], ref_mean.numel())
    if clip_sigma is not None:
        _check_clip(clip_sigma)
    _check_weight(hybrid_weight)
    if mode == "none":
        return normalize_none(emb)
    if mode == "global":
        return normalize_global(x, pooled_std(ref_mean, ref_std), content=content)
    if mode == "per_dim":
        return normalize_per_dim(x, ref_mean, ref_std, clip_sigma=clip_sigma, content=content)
    return normalize_hybrid(x, ref_mean, ref_std, hybrid_weight=hybrid_weight, clip_sigma=clip_sigma, content=content)
