"""Blend Qwen3-VL hidden states V [n_v, D] into Qwen3-4B text embeddings T [n_t, D] (rows = tokens).

Pure tensor maths. Every mode validates its arguments, computes in float32 and returns T's dtype (values
saturated to that dtype's finite range, e.g. ±65504 for fp16) and T's shape unless stated. ``alpha == 0``
returns ``text.clone()``, bitwise T. Statistics are population statistics (correction=0); divisors are
clamped (std ≥ 1e-6, eigenvalues ≥ 1e-8, norms ≥ 1e-12), so finite input gives finite output; target
statistics are not clamped, so a constant V is reproduced exactly.
A(·) below is ``align(·, n_t, resample)``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.errors import UserError, check_choice
from ..core.modes import CAPTION_LIMIT, RESAMPLE_MODES
from ..core.numerics import check_number, check_rows, require_finite
from .stats import describe

# The most caption rows Z-Image's DiT takes: it pads a caption to a multiple of 32 and starts the image's RoPE
# positions after it (caption positions from 1) on an axis of 1536 entries, so a caption has at most 1504 rows.
EPS_STD = 1e-6
EPS_EIG = 1e-8
EPS_NORM = 1e-12

BlendMode: TypeAlias = Callable[..., Tensor]  # (text, vl, alpha, **options) -> Tensor


class BlendError(UserError):
    """Invalid blend argument: bad shape or dtype, alpha out of range, unknown name."""


# --------------------------------------------------------------------------------------------- helpers


def _check_rows(mode: str, label: str, x: object, d: int | None = None, of: str = "text") -> None:
    """`numerics.check_rows` for argument `label` of `mode`, of width `d` (that of `of`) when given; finiteness is
    checked on the result (`_finish`)."""
    check_rows(x, f"{mode}: {label}", width=d, width_of=f"the width of {of}", finite=False, error=BlendError)


def _check_resample(mode: str, resample: object, n_v: int, n: int) -> None:
    check_choice(resample, RESAMPLE_MODES, "resample mode", BlendError)
    if resample == "truncate" and n_v < n:
        raise BlendError(f"{mode}: resample 'truncate' needs >= {n} rows, got {n_v}; use area/linear/nearest")


def _prepare(mode: str, text: Tensor, vl: Tensor, alpha: object, hi: float = 1.0) -> float:
    """Validate T, V (2-D, float, equal D) and alpha ∈ [0, hi]; return alpha as float."""
    _check_rows(mode, "text", text)
    _check_rows(mode, "vl", vl, text.shape[1])
    return _check_alpha(mode, alpha, hi)


ALPHA_MAX = {"style_delta": 2.0}  # every other mode: alpha in [0, 1]
ALPHA_VALUES = {"replace": (0.0, 1.0)}  # modes whose alpha is a switch, not a strength


def check_alpha(mode: str, alpha: object) -> float:
    """`alpha` as a float if it lies in the mode's range `[0, ALPHA_MAX.get(mode, 1)]` (or is one of the mode's
    `ALPHA_VALUES`), else `BlendError`."""
    if mode in ALPHA_VALUES:
        return _check_switch(mode, alpha)
    return _check_alpha(mode, alpha, ALPHA_MAX.get(mode, 1.0))


def _check_switch(mode: str, alpha: object) -> float:
    valid = " or ".join(f"{v:g}" for v in ALPHA_VALUES[mode])
    rule = f"{valid} (it switches the VL rows on or off)"
    return check_number(alpha, f"{mode}: alpha", lambda x: x in ALPHA_VALUES[mode], rule, error=BlendError)


def _check_alpha(mode: str, alpha: object, hi: float = 1.0) -> float:
    return check_number(alpha, f"{mode}: alpha", lambda x: 0.0 <= x <= hi, f"in [0, {hi:g}]", error=BlendError)


def _check_option(
    mode: str, name: str, value: object, ok: Callable[[float], bool], rule: str, integer: bool = False
) -> None:
    check_number(value, f"{mode}: option {name}", ok, rule, integer=integer, error=BlendError)


def _f32(x: Tensor, like: Tensor) -> Tensor:
    return x.to(device=like.device, dtype=torch.float32)


def _finish(x: Tensor, like: Tensor, mode: str) -> Tensor:
    """Cast float32 ``x`` to ``like``'s dtype, saturating at the dtype's finite range; NaN/Inf in ``x`` (from
    non-finite T or V, or an overflow in the mode's float32 maths) is an error naming the mode."""
    require_finite(x, f"blend mode {mode}", "T and V must be finite", BlendError)
    info = torch.finfo(like.dtype)
    return x.clamp(info.min, info.max).to(like.dtype)


def _std(x: Tensor, dim: int) -> Tensor:
    """Population std over ``dim`` (kept), clamped ≥ 1e-6: a safe divisor."""
    return x.std(dim, correction=0, keepdim=True).clamp_min(EPS_STD)


def _unit(x: Tensor) -> tuple[Tensor, Tensor]:
    """Row directions x_i/|x_i| (zero where |x_i| ≤ 1e-12) and row norms [n, 1]."""
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > EPS_NORM, x / norm.clamp_min(EPS_NORM), 0.0), norm


def _sym_pow(c: Tensor, power: float) -> Tensor:
    """C^power for symmetric C via eigh, eigenvalues clamped ≥ 1e-8."""
    evals, evecs = torch.linalg.eigh(c)
    return (evecs * evals.clamp_min(EPS_EIG).pow(power)) @ evecs.T


def _shrunk_cov(x: Tensor, shrinkage: float) -> Tensor:
    """(1−λ)·C + λ·(tr C / D)·I with C = (X − μ)ᵀ(X − μ)/n."""
    xc = x - x.mean(0)
    c = xc.T @ xc / x.shape[0]
    d = c.shape[0]
    return (1 - shrinkage) * c + shrinkage * (c.trace() / d) * torch.eye(d, dtype=c.dtype, device=c.device)


# ------------------------------------------------------------------------------------------- alignment


def align(v: Tensor, n: int, resample: str = "area") -> Tensor:
    """Resample the rows of ``v`` [n_v, D] to ``n`` rows; returns float32 [n, D] (n = n_v: exact copy).

    area      row i = mean of v[floor(i·n_v/n) : ceil((i+1)·n_v/n)] (adaptive_avg_pool1d); every row of v
              contributes, for down- and up-sampling alike.
    linear    F.interpolate linear, align_corners=True (first and last rows kept); n = 1 gives the mean
              of all rows (a single point has no corner-aligned grid).
    nearest   F.interpolate nearest: row i = v[floor(i·n_v/n)].
    truncate  v[:n]; error if n_v < n.
    """
    _check_rows("align", "v", v)
    check_number(n, "align: n", lambda x: x >= 1, "a positive int", integer=True, error=BlendError)
    _check_resample("align", resample, v.shape[0], n)
    x = v.float()
    if n == x.shape[0] or resample == "truncate":
        return x[:n].clone()
    if resample == "linear" and n == 1:
        return x.mean(0, keepdim=True)
    seq = x.T.unsqueeze(0)  # [1, D, n_v]
    if resample == "area":
        out = F.adaptive_avg_pool1d(seq, n)
    elif resample == "nearest":
        out = F.interpolate(seq, size=n, mode="nearest")
    else:
        out = F.interpolate(seq, size=n, mode="linear", align_corners=True)
    return out[0].T.contiguous()


def _aligned(vl: Tensor, text: Tensor, resample: str) -> Tensor:
    return align(vl.to(text.device), text.shape[0], resample)


# ----------------------------------------------------------------------------------------------- modes


def interpolate(text: Tensor, vl: Tensor, alpha: float, *, resample: str = "area") -> Tensor:
    """Linear blend: out = α·A(V) + (1−α)·T. alpha ∈ [0, 1]."""
    alpha = _prepare("interpolate", text, vl, alpha)
    _check_resample("interpolate", resample, vl.shape[0], text.shape[0])
    if alpha == 0:
        return text.clone()
    return _finish(alpha * _aligned(vl, text, resample) + (1 - alpha) * text.float(), text, "interpolate")


def adain(text: Tensor, vl: Tensor, alpha: float, *, resample: str = "area") -> Tensor:
    """Per-token AdaIN over the hidden dimension, then a linear blend. alpha ∈ [0, 1].

    With μ, σ of each row over D (divisor σ(T_i) clamped ≥ 1e-6) and A = A(V):
        X_i = (T_i − μ(T_i)) / σ(T_i) · σ(A_i) + μ(A_i),   out = α·X + (1−α)·T.
    """
    alpha = _prepare("adain", text, vl, alpha)
    _check_resample("adain", resample, vl.shape[0], text.shape[0])
    if alpha == 0:
        return text.clone()
    return apply_moments(text, *moments(_aligned(vl, text, resample), 1), alpha, 1, "adain")


def moments(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """The moments AdaIN transfers: mean and population std of float32 ``x`` over ``dim`` (kept, not clamped)."""
    return x.mean(dim, keepdim=True), x.std(dim, correction=0, keepdim=True)


def apply_moments(text: Tensor, mean: Tensor, std: Tensor, alpha: float, dim: int, mode: str) -> Tensor:
    """AdaIN's second half: out = α·((T − μ_T)/σ_T · std + mean) + (1−α)·T, T's statistics over ``dim``
    (σ_T clamped ≥ 1e-6); ``mean``/``std`` broadcast against T (per row: [n_t, 1]; per dimension: [1, D])."""
    t = text.float()
    x = (t - t.mean(dim, keepdim=True)) / _std(t, dim) * _f32(std, text) + _f32(mean, text)
    return _finish(alpha * x + (1 - alpha) * t, text, mode)


def adain_per_dim(text: Tensor, vl: Tensor, alpha: float) -> Tensor:
    """Per-dimension AdaIN over tokens, then a linear blend. alpha ∈ [0, 1].

        out = α·((T − μ_T)/σ_T · σ_V + μ_V) + (1−α)·T
    μ, σ: per hidden dimension over rows (divisor σ_T clamped ≥ 1e-6); V's statistics use all its rows
    (no alignment).
    """
    alpha = _prepare("adain_per_dim", text, vl, alpha)
    if alpha == 0:
        return text.clone()
    return apply_moments(text, *moments(_f32(vl, text), 0), alpha, 0, "adain_per_dim")


def compute_style_delta(styled: Tensor, neutral: Tensor, n: int | None = None, resample: str = "area") -> Tensor:
    """Style direction Δ = A(V_styled) − A(V_neutral), both aligned to n rows (default n_styled).

    Returns float32 [n, D].
    """
    _check_rows("style_delta", "styled", styled)
    _check_rows("style_delta", "neutral", neutral, styled.shape[1], "styled")
    n = styled.shape[0] if n is None else n
    return align(styled, n, resample) - align(neutral.to(styled.device), n, resample)


def blend_with_style_delta(text: Tensor, delta: Tensor, alpha: float, scale_to_text: bool = True) -> Tensor:
    """Add a style direction: out = T + α·Δ, Δ [n_t, D]. alpha ∈ [0, 2] (α > 1 extrapolates).

    scale_to_text: first Δ ← Δ · σ(T)/σ(Δ), σ = population std over all elements, so the step is on T's
    scale whatever V's scale; Δ is left as is when σ(Δ) < 1e-6 (e.g. a constant or zero Δ).
    """
    _check_rows("style_delta", "text", text)
    _check_rows("style_delta", "delta", delta, text.shape[1])
    if delta.shape[0] != text.shape[0]:
        n_d, n_t = delta.shape[0], text.shape[0]
        raise BlendError(f"style_delta: delta has {n_d} rows, text {n_t}; align it first (n={n_t})")
    alpha = check_alpha("style_delta", alpha)
    if alpha == 0:
        return text.clone()
    t, d = text.float(), _f32(delta, text)
    if scale_to_text:
        sd = d.std(correction=0)
        if sd >= EPS_STD:
            d = d * (t.std(correction=0) / sd)
    return _finish(t + alpha * d, text, "style_delta")


def style_delta(
    text: Tensor,
    vl: Tensor,
    alpha: float,
    *,
    neutral: Tensor | None = None,
    scale_to_text: bool = True,
    resample: str = "area",
) -> Tensor:
    """Styled-minus-neutral VL direction: out = T + α·Δ, Δ = A(V) − A(V_neutral). alpha ∈ [0, 2].

    ``neutral`` [n_n, D] (required) is the VL encoding of an unstyled reference; Δ is rescaled to T's std
    when ``scale_to_text`` (see blend_with_style_delta).
    """
    alpha = _prepare("style_delta", text, vl, alpha, hi=ALPHA_MAX["style_delta"])
    if neutral is None:
        raise BlendError("style_delta: option 'neutral' (tensor [n_n, D]) is required")
    _check_rows("style_delta", "neutral", neutral, text.shape[1])
    for x in (vl, neutral):
        _check_resample("style_delta", resample, x.shape[0], text.shape[0])
    if alpha == 0:
        return text.clone()
    delta = compute_style_delta(vl.to(text.device), neutral, text.shape[0], resample)
    return blend_with_style_delta(text, delta, alpha, scale_to_text)


def gem_pool(text: Tensor, vl: Tensor, alpha: float, *, p: float = 3.0) -> Tensor:
    """Generalised-mean (GeM) style vector, injected as a mean shift. alpha ∈ [0, 1], p > 0.

        s_d = (mean_i |V_id|^p)^(1/p) · sign(mean_i V_id),   out = T + α·(s − μ_T),  μ_T = mean_i T_i
    GeM pools magnitudes, so the sign is borrowed from the arithmetic mean: s points the way the plain mean
    does (p = 1 and a constant-sign column give s_d = mean_i V_id; sign(0) = 0 gives s_d = 0).
    Evaluated as m·(mean_i (|V_id|/m)^p)^(1/p), m = max_i |V_id|, so large p cannot overflow.
    """
    alpha = _prepare("gem_pool", text, vl, alpha)
    _check_option("gem_pool", "p", p, lambda x: x > 0, "a number > 0")
    if alpha == 0:
        return text.clone()
    return apply_mean_shift(text, gem_vector(_f32(vl, text), p), alpha, "gem_pool")


def gem_vector(v: Tensor, p: float) -> Tensor:
    """GeM's style vector s [D] of float32 V (see `gem_pool`)."""
    mag = v.abs()
    m = mag.amax(0)
    m = torch.where(m > 0, m, 1.0)
    return m * (mag / m).pow(p).mean(0).pow(1 / p) * v.mean(0).sign()


def apply_mean_shift(text: Tensor, s: Tensor, alpha: float, mode: str) -> Tensor:
    """A style vector s [D] injected as a mean shift: out = T + α·(s − μ_T) (`gem_pool`, `svd_style`)."""
    t = text.float()
    return _finish(t + alpha * (_f32(s, text) - t.mean(0)), text, mode)


class DecompositionCache:
    """The alpha-independent part of the costly modes (`whiten`'s eigendecompositions, `svd_style`'s SVD,
    `gram`'s Adam iterations), kept per (mode, content of T and V, options) for the last `size` keys: a sweep over
    alpha on one reference pays it once. `hits` and `misses` count lookups."""

    def __init__(self, size: int = 16) -> None:
        self.size, self.hits, self.misses = size, 0, 0
        self._entries: OrderedDict[tuple, Tensor] = OrderedDict()

    def get(self, mode: str, tensors: tuple[Tensor, ...], options: tuple, compute: Callable[[], Tensor]) -> Tensor:
        key = (mode, *map(_digest, tensors), options)
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
        else:
            self.misses += 1
            self._entries[key] = compute()
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0


def _digest(x: Tensor) -> tuple:
    """Content key of a tensor: dtype, shape and a BLAKE2 hash of its bytes (~10 ms for 1000 x 2560 float32)."""
    data = x.detach().contiguous().cpu()
    raw = data.view(torch.uint8) if data.dtype != torch.uint8 else data
    return (str(x.dtype), tuple(x.shape), hashlib.blake2b(raw.numpy().tobytes(), digest_size=16).hexdigest())


DECOMPOSITIONS = DecompositionCache()


def svd_style(text: Tensor, vl: Tensor, alpha: float, *, k: int = 8) -> Tensor:
    """Mean of V's rank-k reconstruction, injected as a mean shift. alpha ∈ [0, 1], k ≥ 1.

        V = U S Wᵀ (SVD of the uncentred V),  s = mean_i (U_k S_k W_kᵀ)_i,  out = T + α·(s − μ_T)
    k is clipped to min(n_v, D); at the clip s = mean(V). V is uncentred, so the top components mostly
    carry its mean direction.
    """
    alpha = _prepare("svd_style", text, vl, alpha)
    _check_option("svd_style", "k", k, lambda x: x >= 1, "an int >= 1", integer=True)
    if alpha == 0:
        return text.clone()
    return apply_mean_shift(text, svd_vector(_f32(vl, text), k), alpha, "svd_style")


def svd_vector(v: Tensor, k: int) -> Tensor:
    """The SVD style vector s [D] of float32 V: the mean of its rank-k reconstruction (see `svd_style`)."""
    k = min(k, *v.shape)

    def vector() -> Tensor:
        u, sv, wt = torch.linalg.svd(v, full_matrices=False)
        return (u[:, :k].mean(0) * sv[:k]) @ wt[:k]

    return DECOMPOSITIONS.get("svd_style", (v,), (k,), vector)


def whiten(text: Tensor, vl: Tensor, alpha: float, *, shrinkage: float = 0.1, resample: str = "area") -> Tensor:
    """ZCA re-colouring of V to T's covariance, then a linear blend. alpha ∈ [0, 1], shrinkage λ ∈ [0, 1].

    C_X = (X − μ_X)ᵀ(X − μ_X)/n_X (D×D), shrunk C ← (1−λ)·C + λ·(tr C / D)·I;
    W = C_V^(−1/2), M = C_T^(1/2) (eigh, eigenvalues clamped ≥ 1e-8);
        V' = (V − μ_V)·W·M + μ_T,   out = α·A(V') + (1−α)·T.
    With λ = 0 and a full-rank C_V (n_v > D), cov(V') = C_T.

    Null space: centred V has rank ≤ n_v − 1, so with n_v ≤ D C_V is singular. With λ = 0 its null eigenvalues
    are clamped to 1e-8 and W multiplies rounding noise along them by (1e-8)^(−1/2) = 1e4: refused (an error
    before any alpha is applied). With λ > 0 the smallest eigenvalue of the shrunk C_V is λ·tr C_V/D and the mean
    one tr C_V/D, so a null direction is amplified at most 1/√λ times more than an average one (3.2 at λ = 0.1).
    """
    alpha = _prepare("whiten", text, vl, alpha)
    _check_option("whiten", "shrinkage", shrinkage, lambda x: 0 <= x <= 1, "a number in [0, 1]")
    _check_resample("whiten", resample, vl.shape[0], text.shape[0])
    n_v, d = vl.shape
    if float(shrinkage) == 0 and n_v <= d:
        raise BlendError(
            f"whiten: shrinkage 0 needs more VL rows than dimensions (n_v = {n_v} <= D = {d}): the VL covariance is "
            f"singular and its inverse square root amplifies null-space noise up to 1e4; use shrinkage > 0 (e.g. 0.1)"
        )
    if alpha == 0:
        return text.clone()
    return apply_whitened(text, [(whitened(_f32(vl, text), shrinkage), 1.0)], alpha, shrinkage, resample)


def whitened(v: Tensor, shrinkage: float) -> Tensor:
    """Whiten's first half, independent of T: (V − μ_V)·C_V^(−1/2) (shrunk covariance; see `whiten`)."""
    lam = float(shrinkage)
    return DECOMPOSITIONS.get("whiten", (v,), (lam,), lambda: (v - v.mean(0)) @ _sym_pow(_shrunk_cov(v, lam), -0.5))


def apply_whitened(
    text: Tensor, parts: Sequence[tuple[Tensor, float]], alpha: float, shrinkage: float, resample: str
) -> Tensor:
    """Whiten's second half for weighted whitened rows Z_k: R = Σ_k w_k·A(Z_k·C_T^(1/2) + μ_T),
    out = α·R + (1−α)·T (one part of weight 1: exactly `whiten`)."""
    t = text.float()
    lam = float(shrinkage)
    m = DECOMPOSITIONS.get("whiten T", (t,), (lam,), lambda: _sym_pow(_shrunk_cov(t, lam), 0.5))
    rows = [align(_f32(z, text) @ m + t.mean(0), t.shape[0], resample) for z, _ in parts]
    r = rows[0] if len(parts) == 1 and parts[0][1] == 1 else _weighted_sum(rows, [w for _, w in parts])
    return _finish(alpha * r + (1 - alpha) * t, text, "whiten")


def _weighted_sum(xs: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Σ_k w_k·x_k in float32 (the one weighted sum of every combination)."""
    return torch.stack([float(w) * x.float() for x, w in zip(xs, weights, strict=True)]).sum(0)


def _gram_loss(x: Tensor, targets: Sequence[tuple[Tensor, float]], t: Tensor) -> Tensor:
    """‖XᵀX − Σ_k w_k·A_kᵀA_k‖²/(n²D²) + ‖X − T‖²/(nD), using ‖XᵀX − G‖² = ‖XXᵀ‖² − 2·Σ_k w_k‖XA_kᵀ‖² + ‖G‖²
    (tr(XᵀX·AᵀA) = ‖XAᵀ‖²) with the constant ‖G‖² dropped: n×n products, O(n²D) instead of O(nD²)."""
    n, d = x.shape
    gram = (x @ x.T).square().sum()
    for a, w in targets:
        gram = gram - 2 * (x @ a.T).square().sum() if w == 1 else gram - 2 * w * (x @ a.T).square().sum()
    return gram / (n * n * d * d) + (x - t).square().sum() / (n * d)


def gram(
    text: Tensor,
    vl: Tensor,
    alpha: float,
    *,
    iterations: int = 50,
    lr: float = 1e-2,
    resample: str = "area",
) -> Tensor:
    """Second-moment (Gram) matching by Adam, then a linear blend. alpha ∈ [0, 1]. Deterministic.

    With G(X) = XᵀX/n, minimise from X₀ = T for ``iterations`` Adam steps of size ``lr``:
        L(X) = ‖G(X) − G(A(V))‖²_F / D² + ‖X − T‖²_F / (n·D),   out = α·X + (1−α)·T.
    L is evaluated on X/r, T/r, A(V)/r with r = RMS(T) = ‖T‖_F/√(nD) (clamped ≥ 1e-6), so the loss and
    ``lr`` do not depend on T's overall scale: lr is a step in units of T's RMS.
    """
    alpha = _prepare("gram", text, vl, alpha)
    _check_option("gram", "iterations", iterations, lambda x: x >= 0, "an int >= 0", integer=True)
    _check_option("gram", "lr", lr, lambda x: x > 0, "a number > 0")
    _check_resample("gram", resample, vl.shape[0], text.shape[0])
    if alpha == 0:
        return text.clone()
    return gram_match(text, [(vl, 1.0)], alpha, iterations, lr, resample)


def gram_match(
    text: Tensor, parts: Sequence[tuple[Tensor, float]], alpha: float, iterations: int, lr: float, resample: str
) -> Tensor:
    """Gram matching's optimisation towards the weighted target G = Σ_k w_k·G(A(V_k)) (see `gram`; one part of
    weight 1: exactly `gram`)."""
    t = text.float()

    def matched() -> Tensor:  # independent of alpha: cached, so a sweep over alpha pays it once
        with torch.inference_mode(False), torch.enable_grad():
            r = t.square().mean().sqrt().clamp_min(EPS_STD)
            t_hat = t.clone() / r  # fresh tensors, safe under inference_mode
            targets = [(_aligned(v, text, resample) / r, float(w)) for v, w in parts]
            x = t_hat.clone().requires_grad_(True)
            opt = torch.optim.Adam([x], lr=float(lr))
            for _ in range(iterations):
                opt.zero_grad()
                _gram_loss(x, targets, t_hat).backward()
                opt.step()
            return x.detach() * r

    options = (int(iterations), float(lr), resample, tuple(float(w) for _, w in parts))
    x = DECOMPOSITIONS.get("gram", (text, *(v for v, _ in parts)), options, matched)
    return _finish(alpha * x + (1 - alpha) * t, text, "gram")


def attention_weighted(
    text: Tensor,
    vl: Tensor,
    alpha: float,
    *,
    weights: Tensor | Sequence[float] | None = None,
    resample: str = "area",
) -> Tensor:
    """Per-token linear blend: out_i = α·w_i·A(V)_i + (1 − α·w_i)·T_i. alpha ∈ [0, 1].

    ``weights`` [n_t] in [0, 1]; default w_i = (cos(T_i, A(V)_i) + 1)/2, a zero row counting as orthogonal
    (w_i = ½).
    """
    alpha = _prepare("attention_weighted", text, vl, alpha)
    _check_resample("attention_weighted", resample, vl.shape[0], text.shape[0])
    n = text.shape[0]
    if weights is not None:
        w = torch.as_tensor(weights).to(device=text.device, dtype=torch.float32)
        if w.shape != (n,) or not bool(((w >= 0) & (w <= 1)).all()):
            raise BlendError(f"attention_weighted: weights must be shape ({n},) with values in [0, 1]")
    if alpha == 0:
        return text.clone()
    t, a = text.float(), _aligned(vl, text, resample)
    if weights is None:
        w = ((_unit(t)[0] * _unit(a)[0]).sum(1).clamp(-1, 1) + 1) / 2
    aw = alpha * w[:, None]
    return _finish(aw * a + (1 - aw) * t, text, "attention_weighted")


def slerp(text: Tensor, vl: Tensor, alpha: float, *, resample: str = "area") -> Tensor:
    """Row-wise spherical interpolation of direction, linear interpolation of norm. alpha ∈ [0, 1].

    With A = A(V), u = T_i/|T_i|, w = A_i/|A_i|, θ = 2·atan2(|u − w|, |u + w|):
        dir = (sin((1−α)θ)·u + sin(αθ)·w) / sin θ,   out_i = dir · ((1−α)|T_i| + α|A_i|).
    When sin θ < 1e-4 (θ ≈ 0, or the ill-defined θ ≈ π) dir is the normalised lerp (1−α)u + αw.
    A zero row (|·| ≤ 1e-12) takes the other row's direction, so out_i = lerp(T_i, A_i).
    """
    alpha = _prepare("slerp", text, vl, alpha)
    _check_resample("slerp", resample, vl.shape[0], text.shape[0])
    if alpha == 0:
        return text.clone()
    t, a = text.float(), _aligned(vl, text, resample)
    (u0, nt), (w0, na) = _unit(t), _unit(a)
    u, w = torch.where(nt > EPS_NORM, u0, w0), torch.where(na > EPS_NORM, w0, u0)
    theta = 2 * torch.atan2((u - w).norm(dim=1, keepdim=True), (u + w).norm(dim=1, keepdim=True))
    sin = theta.sin()
    far = sin >= 1e-4
    arc = (torch.sin((1 - alpha) * theta) * u + torch.sin(alpha * theta) * w) / torch.where(far, sin, 1.0)
    direction = torch.where(far, arc, _unit((1 - alpha) * u + alpha * w)[0])
    return _finish(direction * ((1 - alpha) * nt + alpha * na), text, "slerp")


def concat(text: Tensor, vl: Tensor, alpha: float, *, max_rows: int = CAPTION_LIMIT) -> Tensor:
    """Sequence concatenation: out = cat([T, α·V']) of shape [n_t + n_v', D]. alpha ∈ [0, 1].

    V' = V, or V area-resampled to max_rows − n_t rows when n_t + n_v > max_rows (1504 = Z-Image caption
    limit; needs n_t < max_rows). T's rows are copied bit-exactly; alpha = 0 returns a copy of T ([n_t, D]).
    """
    alpha = _prepare("concat", text, vl, alpha)
    _check_option("concat", "max_rows", max_rows, lambda x: x >= 1, "an int >= 1", integer=True)
    n_t, n_v = text.shape[0], vl.shape[0]
    if n_t >= max_rows:
        raise BlendError(f"concat: text has {n_t} rows, leaving no room under max_rows={max_rows}")
    if alpha == 0:
        return text.clone()
    v = _f32(vl, text)
    if n_t + n_v > max_rows:
        v = align(v, max_rows - n_t, "area")
    return torch.cat([text, _finish(alpha * v, text, "concat")])


def replace_rows(n_v: int, max_rows: int = CAPTION_LIMIT) -> dict[str, int | bool]:
    """What `replace` gives the DiT for `n_v` VL rows: `{"vl_rows", "caption_rows", "pooled"}` (for records)."""
    return {"vl_rows": n_v, "caption_rows": min(n_v, max_rows), "pooled": n_v > max_rows}


def replace(text: Tensor, vl: Tensor, alpha: float, *, max_rows: int = CAPTION_LIMIT) -> Tensor:
    """VL rows instead of the text rows: C = V' of shape [n_v', D], or T when alpha = 0. alpha ∈ {0, 1}.

    V' = V (every kept VL row, bit-exact in T's dtype) when n_v <= max_rows, else V area-pooled to max_rows rows
    (1504 = Z-Image caption limit). alpha is a switch, not a strength: 1 gives the DiT the VL rows themselves
    ("VL replaces the text encoder"), 0 gives T (so schedules can switch between the two); anything else is
    refused, because a partial replacement has no meaning here (use `interpolate` for a blend). See
    `replace_rows` for what a record should say.
    """
    _check_rows("replace", "text", text)
    _check_rows("replace", "vl", vl, text.shape[1])
    alpha = _check_switch("replace", alpha)
    _check_option("replace", "max_rows", max_rows, lambda x: x >= 1, "an int >= 1", integer=True)
    if alpha == 0:
        return text.clone()
    v = _f32(vl, text)
    if v.shape[0] > max_rows:
        v = align(v, max_rows, "area")
    return _finish(v, text, "replace")


BLEND_MODES: dict[str, BlendMode] = {
    "interpolate": interpolate,
    "linear": interpolate,
    "adain": adain,
    "adain_per_dim": adain_per_dim,
    "style_delta": style_delta,
    "gem_pool": gem_pool,
    "svd_style": svd_style,
    "whiten": whiten,
    "gram": gram,
    "attention_weighted": attention_weighted,
    "slerp": slerp,
    "concat": concat,
    "replace": replace,
}

# Research-note names, argument order (text, vl, alpha).
blend_interpolate = interpolate
blend_adain = adain
blend_adain_per_dim = adain_per_dim


def mode_options(mode: str) -> tuple[str, ...]:
    """Option names accepted by ``blend(..., mode, ...)``."""
    check_choice(mode, BLEND_MODES, "blend mode", BlendError)
    return _keyword_options(BLEND_MODES[mode])


@functools.cache
def _keyword_options(fn: BlendMode) -> tuple[str, ...]:
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def check_options(mode: str, names: Iterable[str]) -> None:
    """`BlendError` naming the mode's valid options if any of `names` is not one of them."""
    valid = mode_options(mode)
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise BlendError(
            f"unknown option(s) {', '.join(unknown)} for blend mode {mode!r}; valid: {', '.join(valid) or 'none'}"
        )


def blend(text: Tensor, vl: Tensor, mode: str, alpha: float, **options: object) -> Tensor:
    """Dispatch: BLEND_MODES[mode](text, vl, alpha, **options); unknown mode or option names raise."""
    check_options(mode, options)
    return BLEND_MODES[mode](text, vl, alpha, **options)


def blend_stats(before: Tensor, after: Tensor) -> dict[str, float]:
    """{before,after}_{std,mean,min,max} over all elements, float32, std population — sidecar metadata."""
    out: dict[str, float] = {}
    for name, x in (("before", before), ("after", after)):
        if not isinstance(x, Tensor) or x.numel() == 0:
            raise BlendError(f"blend_stats: {name} must be a non-empty tensor")
        out |= {f"{name}_{k}": v for k, v in describe(x).items()}
    return out
