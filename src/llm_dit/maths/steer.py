"""Activation steering of caption rows: a direction d from contrastive pairs, added to T as T + α·s·d.

Each example is a `[n_i, D]` block of rows (one prompt's caption embeddings), pooled to one vector by the mean
over its rows: p_i = mean_r X_i[r]. Directions are unit-norm float32 `[D]`. The maths is in `direction_*` and
`apply_direction`; files go through safetensors (`save_direction` / `load_direction`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import UserError, check_choice
from ..core.files import load_tensors, save_tensors
from ..core.numerics import check_number, check_rows

SCALES = ("text_std", "none")
EPS_NORM = 1e-12


def _pooled(examples: Sequence[Tensor], label: str) -> Tensor:
    """Stack of row means p_i = mean_r X_i[r], float32 `[n, D]`; every X_i rows `[n_i, D]` (`numerics.check_rows`:
    2-D, non-empty, float, finite), all of example 0's width."""
    if not examples:
        raise UserError(f"steering: no {label} examples")
    rows: list[Tensor] = []
    for i, x in enumerate(examples):
        width = rows[0].shape[0] if rows else None
        check_rows(x, f"steering: {label} example {i}", width=width, width_of=f"{label} example 0")
        rows.append(x.float().mean(0))
    return torch.stack(rows)


def _unit(v: Tensor, what: str) -> Tensor:
    norm = v.norm()
    if not norm > EPS_NORM:
        raise UserError(f"steering: {what} is zero, so it has no direction")
    return v / norm


def _pairs(pos: Sequence[Tensor], neg: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    p, n = _pooled(pos, "positive"), _pooled(neg, "negative")
    if p.shape[1] != n.shape[1]:
        raise UserError(f"steering: positive examples have width {p.shape[1]}, negative {n.shape[1]}")
    return p, n


def direction_mean_difference(pos: Sequence[Tensor], neg: Sequence[Tensor]) -> Tensor:
    """d = (mean_i p⁺_i − mean_j p⁻_j) / ‖·‖ with p the row-mean of each example (counts may differ)."""
    p, n = _pairs(pos, neg)
    return _unit(p.double().mean(0) - n.double().mean(0), "the mean difference").float()


def direction_pca(pos: Sequence[Tensor], neg: Sequence[Tensor]) -> Tensor:
    """First principal component of the paired differences δ_i = p⁺_i − p⁻_i, unit norm, signed so that
    d·mean(δ) ≥ 0.

    The component is the top right-singular vector of the uncentred matrix Δ = [δ_i] (repeng's `pca_center`:
    PCA of the zero-mean set {±δ_i/2}); centring Δ would subtract the shared shift that *is* the concept and
    leave only the pair-to-pair noise. Needs as many positive as negative examples (pair i = pos[i], neg[i]).
    """
    if len(pos) != len(neg):
        raise UserError(f"steering: PCA needs paired examples, got {len(pos)} positive and {len(neg)} negative")
    p, n = _pairs(pos, neg)
    delta = (p - n).double()
    _, s, vh = torch.linalg.svd(delta, full_matrices=False)
    if not s[0] > EPS_NORM:
        raise UserError("steering: every positive example equals its negative, so there is no direction")
    d = vh[0]
    if d @ delta.mean(0) < 0:
        d = -d
    return _unit(d, "the principal component").float()


# The ways to build a direction from positive and negative examples, by name (`llm-dit steer --method`).
DIRECTIONS = {"mean_difference": direction_mean_difference, "pca": direction_pca}


def _check_direction(d: object, label: str) -> Tensor:
    if not isinstance(d, Tensor) or d.ndim != 1 or d.numel() == 0 or not d.is_floating_point():
        shape = f"shape {list(d.shape)} {d.dtype}" if isinstance(d, Tensor) else type(d).__name__
        raise UserError(f"{label}: expected a non-empty 1-D float direction, got {shape}")
    if not torch.isfinite(d).all():
        raise UserError(f"{label}: contains NaN/Inf values")
    if not d.norm() > EPS_NORM:
        raise UserError(f"{label}: is a zero vector")
    return d


def apply_direction(
    text: Tensor, direction: Tensor, alpha: float, scale: str = "text_std", content: Tensor | None = None
) -> Tensor:
    """T + α·s·d̂ for every row of T `[n, D]`, with d̂ = d/‖d‖; returns T's dtype (saturated to its range).

    s = σ(T), the population std of all elements of T (scale "text_std"), or 1 (scale "none"); with `content`
    (boolean `[n]`, the rows that are not attention sinks) σ is taken over those rows only, since one sink row can
    set σ(T) by itself (`condition.steer_conditioning` passes it, or hands over T's content rows). Why σ(T): d̂ is
    unit-norm, so its entries are ~1/√D while T's are ~σ(T) (about 60 on the real model); for roughly isotropic
    rows the projection of a row on d̂ also spreads by about σ(T), so α counts standard deviations along d̂ and
    one α suits any encoder layer. α = 0 returns a bitwise copy of T.
    """
    check_rows(text, "apply_direction: text", finite=False)
    d = _check_direction(direction, "steering direction")
    if d.shape[0] != text.shape[1]:
        raise UserError(f"steering direction has width {d.shape[0]}, the caption rows have {text.shape[1]}")
    check_number(alpha, "steering alpha", lambda _: True, "a finite number")
    check_choice(scale, SCALES, "steering scale")
    if alpha == 0:
        return text.clone()
    t = text.float()
    rows = t if content is None else t[torch.as_tensor(content, dtype=torch.bool, device=t.device)]
    if rows.shape[0] == 0:
        raise UserError("apply_direction: content selects no rows of the text")
    s = rows.std(correction=0) if scale == "text_std" else 1.0
    unit = d.to(t.device, torch.float32) / d.float().norm()
    info = torch.finfo(text.dtype)
    return (t + alpha * s * unit).clamp(info.min, info.max).to(text.dtype)


def save_direction(path: str | Path, direction: Tensor, meta: dict[str, Any]) -> Path:
    """Write `direction` (1-D, finite, stored float32 under the key "direction") and `meta` to a safetensors
    file."""
    d = _check_direction(direction, "steering direction")
    return save_tensors(path, {"direction": d.float()}, meta)


def load_direction(path: str | Path) -> tuple[Tensor, dict[str, Any]]:
    """The float32 direction and metadata from a file written by `save_direction`, validated."""
    tensors, meta = load_tensors(path, "direction file")
    if "direction" not in tensors:
        found = ", ".join(tensors) or "none"
        raise UserError(f"direction file {path} has no 'direction' tensor (found: {found})")
    return _check_direction(tensors["direction"], f"direction file {path}").float(), meta
