"""Statistics of hidden-state rows: the overflow-safe moments every other statistic is built on.

Everything in `maths.stats`, `maths.refstats`, `maths.sinks`, `maths.normalize` and `maths.outliers` works on 2-D
tensors ``[n, D]`` (rows = tokens, columns = hidden dimensions). All statistics are computed in float32, whatever the
input dtype, and are *population* statistics (divide by ``n``, ``correction=0``).

Standard deviations are computed after dividing each column (or the whole tensor) by its largest absolute
value, so that squaring never overflows float32 even for activations of order 1e30; mathematically this
changes nothing.

Notation: ``x`` embeddings ``[n, D]``, ``μ_d``/``σ_d`` the mean/std of column ``d`` over the rows,
``μ_ref_d``/``σ_ref_d`` the reference per-dimension mean/std, ``ε = 1e-6`` the std floor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.errors import UserError
from ..core.numerics import check_rows, require_finite

__all__ = [
    "F32_MAX",
    "STD_EPS",
    "TENSOR_KEYS",
    "StatsError",
    "as_float_tensor",
    "check_embeddings",
    "check_sequences",
    "check_stats_tensors",
    "check_width",
    "content_mask",
    "describe",
    "mean_std",
    "pooled_std",
    "reference_tensors",
    "standardize",
]


STD_EPS = 1e-6
"""Floor applied to every standard deviation used as a divisor."""

TENSOR_KEYS = ("per_dim_mean", "per_dim_std")
"""The tensors of reference statistics: what `reference_tensors` reads and a statistics file holds."""
_TINY = torch.finfo(torch.float32).tiny
F32_MAX = torch.finfo(torch.float32).max


class StatsError(UserError):
    """Invalid statistics, inputs or stats files; the message is one line."""


def _scaled_mean_std(x: Tensor, dim: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Population mean/std of float32 ``x`` in scaled units.

    ``s = max|x|`` (over ``dim``, floored at the smallest normal float32), ``m = mean(x/s)``,
    ``v = sqrt(mean((x/s − m)²))``; then ``μ = m·s`` and ``σ = v·s``. Returns ``(m, v, s)`` with ``dim``
    kept (or 0-d tensors when ``dim`` is None). A constant column gives ``x/s = ±1`` exactly, so ``v = 0``.
    """
    if dim is None:
        s = x.abs().amax().clamp_min(_TINY)
        var, m = torch.var_mean(x / s, correction=0)
    else:
        s = x.abs().amax(dim=dim, keepdim=True).clamp_min(_TINY)
        var, m = torch.var_mean(x / s, dim=dim, correction=0, keepdim=True)
    return m, var.sqrt(), s


def mean_std(x: Tensor, dim: int | None) -> tuple[Tensor, Tensor]:
    """Population ``(μ, σ)`` of float32 ``x`` over ``dim`` (``dim`` removed), overflow-safe."""
    m, v, s = _scaled_mean_std(x, dim)
    if dim is not None:
        m, v, s = m.squeeze(dim), v.squeeze(dim), s.squeeze(dim)
    return m * s, v * s


def standardize(x: Tensor, dim: int | None, fit: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``z = (x − μ) / max(σ, ε)`` over ``dim``; returns ``(z, μ, σ)`` with ``dim`` kept.

    ``μ``, ``σ`` come from the rows selected by ``fit`` (boolean ``[n]``; default all rows) and ``z`` is computed
    for every row. Computed in scaled units (``(x/s − m) / max(v, ε/s)``, ``s = max|x|`` over all rows) so nothing
    overflows; ``|z| ≤ sqrt(n)`` on the fitted rows, and z is saturated to the finite float32 range elsewhere.
    """
    if fit is None:
        m, v, s = _scaled_mean_std(x, dim)
    else:
        s = (x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)).clamp_min(_TINY)
        var, m = torch.var_mean(x[fit] / s, dim=dim, correction=0, keepdim=dim is not None)
        v = var.sqrt()
    denom = torch.maximum(v, (STD_EPS / s).clamp_min(_TINY))
    z = ((x / s - m) / denom).clamp(-F32_MAX, F32_MAX)
    return z, m * s, v * s


def as_float_tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise StatsError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        raise StatsError(f"{name} must be a real-valued tensor, got dtype {value.dtype}")
    return value.detach().to(torch.float32).contiguous()


def check_embeddings(emb: Any, *, check_finite: bool = True) -> Tensor:
    """``emb`` checked as rows ``[n, D]`` (:func:`numerics.check_rows`), returned as float32 (finite if
    ``check_finite``: checked after the cast, which can overflow)."""
    x = check_rows(emb, "embeddings", finite=False, error=StatsError).detach().to(torch.float32)
    return require_finite(x, "embeddings", error=StatsError) if check_finite else x


def check_sequences(rows: Tensor | Sequence[Tensor], empty: str) -> list[Tensor]:
    """Each sequence of ``rows`` (one ``[n_p, D]`` tensor per prompt; a single tensor is one sequence) checked and
    cast by :func:`check_embeddings`; ``StatsError(empty)`` when there is none."""
    seqs = [rows] if isinstance(rows, Tensor) else list(rows)
    if not seqs:
        raise StatsError(empty)
    return [check_embeddings(seq) for seq in seqs]


def check_width(width: int, ref_width: int) -> None:
    if width != ref_width:
        raise StatsError(f"embedding width {width} does not match reference width {ref_width}")


def reference_tensors(reference: Any, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """``(per_dim_mean, per_dim_std)`` as float32 1-D tensors from a ReferenceStats, mapping or object.

    There is no default: statistics of the wrong layer or model silently mis-scale every row, so the caller names
    them (``TextEncoder.reference_stats`` or ``llm-dit stats --layer L``).
    """
    if reference is None:
        raise StatsError(
            "reference statistics are required: pass the text encoder's statistics of the same layer "
            "(TextEncoder.reference_stats, or a file from `llm-dit stats --layer L`)"
        )
    values = []
    for key in TENSOR_KEYS:
        if isinstance(reference, Mapping):
            if key not in reference:
                raise StatsError(f"reference mapping has no {key!r} entry")
            value = reference[key]
        elif hasattr(reference, key):
            value = getattr(reference, key)
        else:
            raise StatsError(f"reference {type(reference).__name__} has no {key!r} attribute")
        values.append(as_float_tensor(value, f"reference {key}"))
    mean, std = values
    check_stats_tensors(mean, std)
    if device is not None:
        mean, std = mean.to(device), std.to(device)
    return mean, std


def check_stats_tensors(mean: Tensor, std: Tensor) -> None:
    if mean.ndim != 1 or std.ndim != 1 or mean.shape != std.shape or mean.numel() == 0:
        raise StatsError(
            f"per_dim_mean and per_dim_std must be non-empty 1-D tensors of equal shape, "
            f"got {tuple(mean.shape)} and {tuple(std.shape)}"
        )
    if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all())):
        raise StatsError("reference statistics contain NaN or infinite values")
    if bool((std < 0).any()):
        raise StatsError("per_dim_std contains negative values")


def pooled_std(per_dim_mean: Tensor, per_dim_std: Tensor) -> float:
    """Population std of all elements pooled over dimensions with equal row counts.

    ``σ_global = sqrt(mean_d(σ_d²) + var_d(μ_d))`` (law of total variance; ``var`` is the population
    variance over dimensions). Computed in float32, after scaling by the largest magnitude.
    """
    mean = per_dim_mean.detach().to(torch.float32)
    std = per_dim_std.detach().to(torch.float32)
    scale = torch.maximum(mean.abs().amax(), std.amax()).clamp_min(_TINY)
    var_means = torch.var(mean / scale, correction=0)
    mean_sq_std = ((std / scale) ** 2).mean()
    return float((mean_sq_std + var_means).sqrt() * scale)


def content_mask(content: Tensor, x: Tensor) -> Tensor:
    """``content`` checked as a boolean mask over the rows of ``x``."""
    mask = torch.as_tensor(content, device=x.device)
    if mask.dtype != torch.bool or mask.shape != (x.shape[0],):
        shape = tuple(mask.shape)
        raise StatsError(f"content must be a boolean mask of shape ({x.shape[0]},), got {mask.dtype} {shape}")
    return mask


def describe(x: Tensor) -> dict[str, float]:
    """Summary of a tensor for records, float32: mean, population std, min, max over all elements."""
    x = x.detach().float()
    return {
        "mean": x.mean().item(),
        "std": x.std(correction=0).item() if x.numel() > 1 else 0.0,
        "min": x.min().item(),
        "max": x.max().item(),
    }
