from __future__ import annotations

import inspect
import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_dit.maths.blend import (
    BLEND_MODES,
    RESAMPLE_MODES,
    BlendError,
    adain,
    adain_per_dim,
    align,
    attention_weighted,
    blend,
    blend_adain,
    blend_adain_per_dim,
    blend_interpolate,
    blend_stats,
    blend_with_style_delta,
    compute_style_delta,
    concat,
    gem_pool,
    gram,
    interpolate,
    slerp,
    style_delta,
    svd_style,
    whiten,
)

MODES = tuple(BLEND_MODES)
ALPHA_MAX = {m: 2.0 if m == "style_delta" else 1.0 for m in MODES}
ON = {m: 1.0 if m == "replace" else 0.5 for m in MODES}  # a non-zero alpha every mode takes (replace: 0 or 1 only)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def tt(rows: list[list[float]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def rand(n: int, d: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * scale + shift


def required(mode: str, d: int, dtype: torch.dtype = torch.float32) -> dict[str, object]:
    return {"neutral": rand(3, d, 99, 2.0).to(dtype)} if mode == "style_delta" else {}


# ----------------------------------------------------------------------------- independent references


def area_ref(v: np.ndarray, n: int) -> np.ndarray:
    """Adaptive average pooling written out: bin i covers rows [floor(i·L/n), ceil((i+1)·L/n))."""
    length = v.shape[0]
    out = np.zeros((n, v.shape[1]))
    for i in range(n):
        lo, hi = (i * length) // n, -((-(i + 1) * length) // n)
        out[i] = v[lo:hi].mean(axis=0)
    return out


def adain_per_dim_ref(t: np.ndarray, v: np.ndarray, alpha: float) -> np.ndarray:
    out = np.zeros_like(t)
    for j in range(t.shape[1]):
        mt, st_ = t[:, j].mean(), max(t[:, j].std(), 1e-6)
        mv, sv = v[:, j].mean(), v[:, j].std()
        for i in range(t.shape[0]):
            out[i, j] = alpha * ((t[i, j] - mt) / st_ * sv + mv) + (1 - alpha) * t[i, j]
    return out


def style_delta_ref(t: np.ndarray, styled: np.ndarray, neutral: np.ndarray, alpha: float) -> np.ndarray:
    delta = area_ref(styled, t.shape[0]) - area_ref(neutral, t.shape[0])
    if delta.std() >= 1e-6:
        delta = delta * (t.std() / delta.std())
    return t + alpha * delta


# ---------------------------------------------------------------------------------------------- align


def test_align_known_numbers() -> None:
    v = tt([[0.0], [1.0], [2.0]])
    assert align(v, 2).flatten().tolist() == [0.5, 1.5]  # bins [0, 2) and [1, 3)
    assert align(v, 5).flatten().tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert align(v, 5, "linear").flatten().tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert align(v, 1, "linear").flatten().tolist() == [1.0]  # mean, not the first row
    assert align(tt([[0.0], [1.0], [5.0]]), 1, "linear").flatten().tolist() == [2.0]
    assert align(v, 5, "nearest").flatten().tolist() == [0.0, 0.0, 1.0, 1.0, 2.0]
    assert align(v, 2, "truncate").flatten().tolist() == [0.0, 1.0]
    assert align(tt([[3.0, 4.0]]), 3).tolist() == [[3.0, 4.0]] * 3


@pytest.mark.parametrize("resample", RESAMPLE_MODES)
def test_align_same_length_is_identity_float32(resample: str) -> None:
    v = rand(5, 3, 0).to(torch.bfloat16)
    out = align(v, 5, resample)
    assert out.dtype == torch.float32
    assert torch.equal(out, v.float())


@pytest.mark.parametrize(("n_v", "n"), [(7, 3), (3, 7), (10, 4), (1, 5), (5, 1), (6, 6), (5, 13)])
def test_area_uses_every_row(n_v: int, n: int) -> None:
    v = rand(n_v, 4, 1)
    base = align(v, n)
    for j in range(n_v):
        w = v.clone()
        w[j] += 1.0
        assert not torch.allclose(align(w, n), base), f"row {j} ignored"
        t = rand(n, 4, 2)
        assert not torch.allclose(interpolate(t, w, 0.5), interpolate(t, v, 0.5))


def test_truncate_too_short_is_an_error() -> None:
    with pytest.raises(BlendError, match="truncate"):
        align(rand(2, 3, 0), 3, "truncate")
    with pytest.raises(BlendError, match="truncate"):
        interpolate(rand(4, 3, 0), rand(2, 3, 1), 0.5, resample="truncate")


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_align_bad_n(n: object) -> None:
    with pytest.raises(BlendError, match="positive int"):
        align(rand(2, 3, 0), n, "area")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ known numbers per mode


def test_interpolate_known() -> None:
    t, v = tt([[0.0, 0.0], [2.0, 4.0]]), tt([[4.0, 8.0]])
    assert interpolate(t, v, 0.25).tolist() == [[1.0, 2.0], [2.5, 5.0]]
    assert interpolate(t, v, 1.0).tolist() == [[4.0, 8.0], [4.0, 8.0]]


def test_adain_known() -> None:
    t, v = tt([[1.0, 3.0]]), tt([[10.0, 14.0]])  # T row: μ 2, σ 1; V row: μ 12, σ 2
    torch.testing.assert_close(adain(t, v, 1.0), tt([[10.0, 14.0]]))
    torch.testing.assert_close(adain(t, v, 0.5), tt([[5.5, 8.5]]))
    # per token: each T row takes its own aligned V row's statistics
    t2, v2 = tt([[1.0, 3.0], [0.0, 4.0]]), tt([[10.0, 14.0], [0.0, 1.0]])
    torch.testing.assert_close(adain(t2, v2, 1.0), tt([[10.0, 14.0], [0.0, 1.0]]))


def test_adain_per_dim_known() -> None:
    t = tt([[0.0, 5.0], [2.0, 5.0]])  # col0 μ 1 σ 1; col1 constant
    v = tt([[8.0, 1.0], [12.0, 1.0], [10.0, 4.0]])  # col0 μ 10 σ √(8/3); col1 μ 2
    s = math.sqrt(8 / 3)
    torch.testing.assert_close(adain_per_dim(t, v, 1.0), tt([[10 - s, 2.0], [10 + s, 2.0]]))
    torch.testing.assert_close(adain_per_dim(t, v, 0.5), tt([[(10 - s) / 2, 3.5], [(12 + s) / 2, 3.5]]))


def test_style_delta_known() -> None:
    t = tt([[1.0, 0.0], [-1.0, 0.0]])  # σ(T) = √0.5
    styled, neutral = tt([[3.0, 1.0], [1.0, 3.0]]), tt([[1.0, 1.0], [1.0, 1.0]])  # Δ = 2I, σ(Δ) = 1
    half = math.sqrt(0.5)
    torch.testing.assert_close(style_delta(t, styled, 1.5, neutral=neutral), t + 1.5 * tt([[2, 0], [0, 2]]) * half)
    torch.testing.assert_close(
        style_delta(t, styled, 0.5, neutral=neutral, scale_to_text=False), t + tt([[1, 0], [0, 1]])
    )
    # constant Δ has σ(Δ) = 0 < 1e-6: left unscaled
    torch.testing.assert_close(style_delta(t, tt([[2.0, 2.0]]), 2.0, neutral=tt([[1.0, 1.0]])), t + 2.0)


def test_style_delta_helpers_compose() -> None:
    t, styled, neutral = rand(5, 4, 0), rand(7, 4, 1, 3.0), rand(3, 4, 2)
    delta = compute_style_delta(styled, neutral, n=5)
    assert delta.shape == (5, 4) and delta.dtype == torch.float32
    torch.testing.assert_close(delta, align(styled, 5) - align(neutral, 5))
    assert compute_style_delta(styled, neutral).shape == (7, 4)  # default n = len(styled)
    torch.testing.assert_close(blend_with_style_delta(t, delta, 0.7), style_delta(t, styled, 0.7, neutral=neutral))
    with pytest.raises(BlendError, match="align it first"):
        blend_with_style_delta(t, compute_style_delta(styled, neutral), 0.5)


def test_gem_pool_known() -> None:
    t = tt([[0.0, 0.0], [2.0, 2.0]])  # μ_T = [1, 1]
    v = tt([[1.0, -2.0], [3.0, -2.0]])  # p=2: [√5, 2·sign(−2)]
    expected = t + 0.5 * (tt([[math.sqrt(5), -2.0]]) - 1.0)
    torch.testing.assert_close(gem_pool(t, v, 0.5, p=2.0), expected)
    # p = 1 with constant-sign columns is the arithmetic mean; sign(0) zeroes a column
    v1 = tt([[1.0, -3.0, 2.0], [3.0, -1.0, -2.0]])
    torch.testing.assert_close(gem_pool(tt([[0.0, 0.0, 0.0]]), v1, 1.0, p=1.0), tt([[2.0, -2.0, 0.0]]))


def test_gem_pool_large_p_does_not_overflow() -> None:
    v = tt([[1e4, -5.0], [3.0, -2e4]])
    out = gem_pool(torch.zeros(1, 2), v, 1.0, p=200.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, tt([[1e4 * 0.5**0.005, -2e4 * 0.5**0.005]]))


def test_svd_style_known() -> None:
    t = tt([[1.0, 1.0], [3.0, 1.0]])  # μ_T = [2, 1]
    v = tt([[3.0, 0.0], [0.0, 1.0]])  # rank-1 reconstruction [[3, 0], [0, 0]] -> s = [1.5, 0]
    torch.testing.assert_close(svd_style(t, v, 1.0, k=1), t + tt([[-0.5, -1.0]]))
    # k at the clip (min(n_v, D)) reconstructs V exactly: s = mean(V)
    torch.testing.assert_close(svd_style(t, v, 0.5, k=50), t + 0.5 * (tt([[1.5, 0.5]]) - tt([[2.0, 1.0]])))


def test_whiten_known_one_dim() -> None:
    t, v = tt([[0.0], [2.0]]), tt([[12.0], [8.0]])  # V' = (V − 10)/2·1 + 1 = [[2], [0]]
    torch.testing.assert_close(whiten(t, v, 1.0), tt([[2.0], [0.0]]))
    torch.testing.assert_close(whiten(t, v, 0.5), tt([[1.0], [1.0]]))


def mixing(d: int, seed: int) -> torch.Tensor:
    """A D×D matrix with singular values in [0.5, 3] (covariance condition number ≤ 36): a float32 whitening is then
    accurate to ~1e-5 whatever the CPU, unlike a product of Gaussian matrices (condition numbers up to ~1e6)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return torch.from_numpy(q * np.linspace(0.5, 3.0, d)).float()


def test_whiten_recovers_text_covariance() -> None:
    n, d = 400, 6
    t = rand(n, d, 3) @ mixing(d, 4) + 2.0
    v = rand(n, d, 5, 3.0) @ mixing(d, 6) - 7.0
    out = whiten(t, v, 1.0, shrinkage=0.0).double()  # equal lengths: A is the identity
    cov = lambda x: torch.cov(x.double().T, correction=0)  # noqa: E731
    torch.testing.assert_close(cov(out), cov(t), rtol=2e-3, atol=2e-3 * cov(t).abs().max().item())
    torch.testing.assert_close(out.mean(0), t.double().mean(0), rtol=0, atol=1e-3)


def test_whiten_full_shrinkage_is_isotropic_rescale() -> None:
    t, v = rand(50, 3, 7, 2.0), rand(50, 3, 8, 5.0, 1.0)
    scale = math.sqrt(torch.cov(t.T, correction=0).trace() / torch.cov(v.T, correction=0).trace())
    expected = (v - v.mean(0)) * scale + t.mean(0)
    torch.testing.assert_close(whiten(t, v, 1.0, shrinkage=1.0), expected, rtol=1e-4, atol=1e-4)


def test_gram_first_step_is_sign_descent() -> None:
    """One Adam step moves each element by lr·r against the sign of the gradient (m̂/√v̂ = sign g)."""
    t, v = rand(4, 3, 10), rand(6, 3, 11, 2.0, 0.5)
    tn, an = t.double().numpy(), area_ref(v.double().numpy(), 4)
    r = np.sqrt((tn**2).mean())
    x, a = tn / r, an / r
    n, d = x.shape
    grad = 4 * (x @ x.T @ x - x @ a.T @ a) / (n * n * d * d)  # proximity term has zero gradient at X = T
    assert np.abs(grad).min() > 1e-4
    expected = tn - 0.05 * r * np.sign(grad)
    out = gram(t, v, 1.0, iterations=1, lr=0.05)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gram(t, v, 0.4, iterations=1, lr=0.05).numpy(), 0.4 * expected + 0.6 * tn, atol=1e-5)


def test_gram_reduces_gram_distance_and_is_deterministic() -> None:
    t, v = rand(8, 6, 0), rand(12, 6, 1, 2.0, 1.0)
    a = align(v, 8)
    g = lambda x: x.T @ x / x.shape[0]  # noqa: E731
    out = gram(t, v, 1.0)
    assert (g(out) - g(a)).norm() < 0.9 * (g(t) - g(a)).norm()
    assert torch.equal(out, gram(t, v, 1.0))
    torch.testing.assert_close(gram(t, v, 1.0, iterations=0), t)


def test_gram_under_inference_mode() -> None:
    t, v = rand(4, 3, 0), rand(5, 3, 1)
    expected = gram(t, v, 1.0, iterations=3)
    with torch.inference_mode():
        ti, vi = t.clone(), v.clone()
        out = gram(ti, vi, 1.0, iterations=3)
    assert torch.equal(out, expected)


def test_attention_weighted_known() -> None:
    t, v = tt([[0.0, 0.0], [2.0, 2.0]]), tt([[4.0, 4.0], [6.0, 6.0]])
    out = attention_weighted(t, v, 0.5, weights=torch.tensor([1.0, 0.0]))
    assert out.tolist() == [[2.0, 2.0], [2.0, 2.0]]
    # default weights (cos + 1)/2: orthogonal rows -> ½, parallel -> 1, antiparallel -> 0
    t2, v2 = tt([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]), tt([[0.0, 1.0], [2.0, 2.0], [-3.0, 0.0]])
    w = torch.tensor([[0.5], [1.0], [0.0]])
    torch.testing.assert_close(attention_weighted(t2, v2, 0.8), 0.8 * w * v2 + (1 - 0.8 * w) * t2)


def test_slerp_known() -> None:
    h = math.sqrt(0.5)
    torch.testing.assert_close(slerp(tt([[1.0, 0.0]]), tt([[0.0, 2.0]]), 0.5), tt([[1.5 * h, 1.5 * h]]))
    angle = math.pi / 6  # α = 1/3 of a right angle
    torch.testing.assert_close(
        slerp(tt([[2.0, 0.0]]), tt([[0.0, 5.0]]), 1 / 3), tt([[3 * math.cos(angle), 3 * math.sin(angle)]])
    )
    assert slerp(tt([[1.0, 0.0]]), tt([[3.0, 0.0]]), 0.5).tolist() == [[2.0, 0.0]]  # θ = 0: lerp
    assert slerp(tt([[0.0, 0.0]]), tt([[0.0, 2.0]]), 0.5).tolist() == [[0.0, 1.0]]  # zero row
    assert slerp(tt([[0.0, 0.0]]), tt([[0.0, 0.0]]), 0.5).tolist() == [[0.0, 0.0]]
    torch.testing.assert_close(slerp(rand(3, 4, 0), rand(3, 4, 1), 1.0), rand(3, 4, 1))


def test_concat_known() -> None:
    t, v = tt([[1.0, 2.0], [3.0, 4.0]]), tt([[2.0, 2.0], [4.0, 4.0], [6.0, 6.0]])
    assert concat(t, v, 0.5).tolist() == [[1, 2], [3, 4], [1, 1], [2, 2], [3, 3]]
    # over max_rows: V area-resampled to max_rows − n_t = 2 rows: [(2+4)/2, (4+6)/2]
    assert concat(t, v, 1.0, max_rows=4).tolist() == [[1, 2], [3, 4], [3, 3], [5, 5]]
    assert concat(t, v, 0.0).tolist() == t.tolist()
    with pytest.raises(BlendError, match="max_rows"):
        concat(t, v, 0.5, max_rows=2)


def test_concat_copies_text_rows_bit_exactly() -> None:
    t = torch.tensor([[-0.0, 1e-40, 3.3e38]], dtype=torch.float32)
    out = concat(t, tt([[1.0, 1.0, 1.0]]), 0.5)
    assert torch.equal(out[:1].view(torch.int32), t.view(torch.int32))


# ------------------------------------------------------------------- against independent implementations


@pytest.mark.parametrize(("n_t", "n_v"), [(5, 9), (9, 5), (1, 7), (7, 1), (13, 4)])
def test_interpolate_area_matches_reference(n_t: int, n_v: int) -> None:
    t, v = rand(n_t, 6, n_t), rand(n_v, 6, 100 + n_v, 3.0, 1.0)
    expected = 0.3 * area_ref(v.double().numpy(), n_t) + 0.7 * t.double().numpy()
    np.testing.assert_allclose(interpolate(t, v, 0.3, resample="area").numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n_t", "n_v"), [(5, 9), (9, 5), (2, 11), (1, 3)])
def test_adain_per_dim_matches_reference(n_t: int, n_v: int) -> None:
    t, v = rand(n_t, 6, n_t, 2.0), rand(n_v, 6, 100 + n_v, 0.5, 3.0)
    expected = adain_per_dim_ref(t.double().numpy(), v.double().numpy(), 0.6)
    np.testing.assert_allclose(adain_per_dim(t, v, 0.6).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n_t", "n_v", "n_n"), [(5, 9, 3), (9, 5, 7), (4, 1, 6), (1, 4, 2)])
def test_style_delta_matches_reference(n_t: int, n_v: int, n_n: int) -> None:
    t, v, n = rand(n_t, 6, n_t), rand(n_v, 6, 100 + n_v, 4.0), rand(n_n, 6, 200 + n_n, 2.0, 1.0)
    expected = style_delta_ref(t.double().numpy(), v.double().numpy(), n.double().numpy(), 1.3)
    np.testing.assert_allclose(style_delta(t, v, 1.3, neutral=n).numpy(), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- every mode


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_alpha_zero_is_bitwise_identity(mode: str, dtype: torch.dtype) -> None:
    t = rand(4, 5, 0, 3.0).to(dtype)
    t[0, 0] = -0.0
    out = blend(t, rand(6, 5, 1, 7.0).to(dtype), mode, 0.0, **required(mode, 5, dtype))
    assert out.dtype == dtype and out.shape == t.shape
    assert torch.equal(out.view(INT_VIEW[dtype]), t.view(INT_VIEW[dtype]))


@pytest.mark.parametrize("mode", MODES)
def test_alpha_nonzero_changes_text(mode: str) -> None:
    t, v = rand(4, 5, 0), rand(6, 5, 1, 3.0, 2.0)
    out = blend(t, v, mode, ON[mode], **required(mode, 5))
    assert out.shape != t.shape or not torch.allclose(out, t)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fill", [(0.0, 0.0), (3.0, -2.0), (1e4, 1e4)], ids=["zeros", "constants", "huge-constants"])
def test_zero_variance_gives_no_nan(mode: str, fill: tuple[float, float]) -> None:
    t, v = torch.full((3, 4), fill[0]), torch.full((5, 4), fill[1])
    opts = {"neutral": torch.full((2, 4), 1.0)} if mode == "style_delta" else {}
    for alpha in (ON[mode], ALPHA_MAX[mode]):
        assert torch.isfinite(blend(t, v, mode, alpha, **opts)).all()


def test_zero_variance_values() -> None:
    t, v = torch.full((3, 2), 5.0), tt([[1.0, 4.0], [3.0, 4.0]])
    assert adain_per_dim(t, v, 1.0).tolist() == [[2.0, 4.0]] * 3  # constant T -> μ_V
    assert adain(t, v, 1.0).tolist() == [[2.5, 2.5], [3.0, 3.0], [3.5, 3.5]]  # constant rows -> μ(A_i)
    assert adain(tt([[1.0, 3.0]]), tt([[2.0, 2.0]]), 1.0).tolist() == [[2.0, 2.0]]  # σ(A)=0 -> μ(A)
    assert adain_per_dim(tt([[1.0], [3.0]]), tt([[2.0], [2.0]]), 1.0).tolist() == [[2.0], [2.0]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", MODES)
def test_low_precision_in_low_precision_out(mode: str, dtype: torch.dtype) -> None:
    t, v = rand(4, 5, 0).to(dtype), rand(6, 5, 1, 3.0)  # V stays float32: T decides the dtype
    out = blend(t, v, mode, ON[mode], **required(mode, 5, dtype))
    assert out.dtype == dtype
    ref = blend(t.float(), v, mode, ON[mode], **required(mode, 5))
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_fp16_output_saturates_instead_of_overflowing() -> None:
    t, v = torch.full((2, 2), 6e4, dtype=torch.float16), torch.full((2, 2), 6e4, dtype=torch.float16)
    out = style_delta(t, v, 2.0, neutral=torch.full((2, 2), -6e4), scale_to_text=False)
    assert out.dtype == torch.float16 and (out == torch.finfo(torch.float16).max).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", [-0.1, 2.1, float("nan"), "0.5", True])
def test_out_of_range_alpha(mode: str, bad: object) -> None:
    hi = ALPHA_MAX[mode]
    if isinstance(bad, float) and bad <= hi:
        bad = hi + 0.01
    name = "interpolate" if mode == "linear" else mode
    rule = "be 0 or 1" if mode == "replace" else rf"be in \[0, {hi:g}\]"
    with pytest.raises(BlendError, match=rf"^{name}: alpha must {rule}"):
        blend(rand(2, 3, 0), rand(2, 3, 1), mode, bad, **required(mode, 3))  # type: ignore[arg-type]


def test_style_delta_accepts_alpha_up_to_two() -> None:
    t, v, n = rand(3, 4, 0), rand(3, 4, 1), rand(3, 4, 2)
    torch.testing.assert_close(style_delta(t, v, 2.0, neutral=n) - t, 2 * (style_delta(t, v, 1.0, neutral=n) - t))


def test_unknown_names_list_valid_ones() -> None:
    t, v = rand(2, 3, 0), rand(2, 3, 1)
    with pytest.raises(BlendError, match="unknown blend mode 'nope'; valid: interpolate, linear, adain"):
        blend(t, v, "nope", 0.5)
    with pytest.raises(BlendError, match="unknown resample mode 'cubic'; valid: area, linear, nearest, truncate"):
        blend(t, v, "adain", 0.5, resample="cubic")
    with pytest.raises(BlendError, match="unknown resample mode"):
        align(v, 3, "cubic")
    with pytest.raises(BlendError, match=r"unknown option.*foo.*'gram'; valid: iterations, lr, resample"):
        blend(t, v, "gram", 0.5, foo=1)
    with pytest.raises(BlendError, match="valid: none"):
        blend(t, v, "adain_per_dim", 0.5, resample="area")
    with pytest.raises(BlendError, match=r"unknown option.*neutrl.*valid: neutral, scale_to_text, resample"):
        blend(t, v, "style_delta", 0.5, neutrl=v)


@pytest.mark.parametrize(
    ("mode", "options", "match"),
    [
        ("style_delta", {}, "'neutral'.*required"),
        ("style_delta", {"neutral": torch.zeros(2, 4)}, "neutral has width 4, expected 3"),
        ("gem_pool", {"p": 0.0}, "option p must be a number > 0"),
        ("svd_style", {"k": 0}, "option k must be an int >= 1"),
        ("svd_style", {"k": 2.5}, "option k"),
        ("whiten", {"shrinkage": 1.5}, r"option shrinkage must be a number in \[0, 1\]"),
        ("gram", {"iterations": -1}, "option iterations"),
        ("gram", {"lr": float("inf")}, "option lr"),
        ("attention_weighted", {"weights": torch.tensor([0.5, 1.5])}, "weights"),
        ("attention_weighted", {"weights": torch.tensor([0.5])}, "weights must be shape"),
        ("concat", {"max_rows": 0}, "option max_rows"),
    ],
)
def test_bad_options(mode: str, options: dict[str, object], match: str) -> None:
    for alpha in (0.0, 0.5):  # validated even when alpha = 0 short-circuits
        with pytest.raises(BlendError, match=match):
            blend(rand(2, 3, 0), rand(2, 3, 1), mode, alpha, **options)


@pytest.mark.parametrize("mode", MODES)
def test_bad_shapes(mode: str) -> None:
    opts = required(mode, 3)
    with pytest.raises(BlendError, match=r"vl has width 4, expected 3 \(the width of text\)"):
        blend(rand(2, 3, 0), rand(2, 4, 1), mode, 0.5, **opts)
    with pytest.raises(BlendError, match=r"2-D"):
        blend(torch.zeros(3), rand(2, 3, 1), mode, 0.5, **opts)
    with pytest.raises(BlendError, match=r"2-D"):
        blend(rand(2, 3, 0), torch.zeros(1, 2, 3), mode, 0.5, **opts)
    with pytest.raises(BlendError, match=r"non-empty"):
        blend(rand(2, 3, 0), torch.zeros(0, 3), mode, 0.5, **opts)
    with pytest.raises(BlendError, match="floating-point"):
        blend(torch.ones(2, 3, dtype=torch.long), rand(2, 3, 1), mode, 0.5, **opts)


def test_registry_and_aliases() -> None:
    assert BLEND_MODES["linear"] is BLEND_MODES["interpolate"] is interpolate is blend_interpolate
    assert blend_adain is adain and blend_adain_per_dim is adain_per_dim
    assert set(MODES) == {
        "interpolate",
        "linear",
        "adain",
        "adain_per_dim",
        "style_delta",
        "gem_pool",
        "svd_style",
        "whiten",
        "gram",
        "attention_weighted",
        "slerp",
        "concat",
        "replace",
    }
    t, v = rand(3, 4, 0), rand(5, 4, 1)
    assert torch.equal(blend(t, v, "slerp", 0.3, resample="nearest"), slerp(t, v, 0.3, resample="nearest"))


def test_blend_stats() -> None:
    stats = blend_stats(tt([[1.0, 3.0]]), torch.tensor([[0.0, -2.0], [2.0, 4.0]], dtype=torch.bfloat16))
    assert stats == pytest.approx(
        {
            "before_std": 1.0,
            "before_mean": 2.0,
            "before_min": 1.0,
            "before_max": 3.0,
            "after_std": math.sqrt(5.0),
            "after_mean": 1.0,
            "after_min": -2.0,
            "after_max": 4.0,
        },
        rel=1e-6,
    )
    with pytest.raises(BlendError, match="non-empty"):
        blend_stats(torch.zeros(0), torch.zeros(1))


# ------------------------------------------------------------------------------------- property test


@st.composite
def blend_case(draw: st.DrawFn, mode: str) -> tuple[torch.Tensor, torch.Tensor, float, dict[str, object]]:
    n_t, n_v, d = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    elements = st.floats(-1e4, 1e4, width=32)

    def tensor(n: int) -> torch.Tensor:
        return torch.from_numpy(draw(hnp.arrays(np.float32, (n, d), elements=elements))).to(dtype)

    text, vl = tensor(n_t), tensor(n_v)
    alpha = draw(st.sampled_from((0.0, 1.0)) if mode == "replace" else st.floats(0.0, ALPHA_MAX[mode]))
    options: dict[str, object] = {}
    if "resample" in inspect.signature(BLEND_MODES[mode]).parameters:
        usable = RESAMPLE_MODES if n_v >= n_t else RESAMPLE_MODES[:3]  # truncate needs n_v >= n_t
        options["resample"] = draw(st.sampled_from(usable))
    if mode == "style_delta":
        options["neutral"] = tensor(n_v)  # same length as V so truncate stays valid
        options["scale_to_text"] = draw(st.booleans())
    elif mode == "gem_pool":
        options["p"] = draw(st.floats(0.5, 8.0))
    elif mode == "svd_style":
        options["k"] = draw(st.integers(1, 8))
    elif mode == "whiten":  # shrinkage 0 needs n_v > D (a singular covariance is refused)
        options["shrinkage"] = draw(st.floats(0.0, 1.0, exclude_min=n_v <= d))
    elif mode == "attention_weighted" and draw(st.booleans()):
        options["weights"] = torch.tensor(draw(st.lists(st.floats(0.0, 1.0), min_size=n_t, max_size=n_t)))
    elif mode == "concat":
        options["max_rows"] = draw(st.integers(n_t + 1, n_t + n_v + 1))
    return text, vl, alpha, options


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_finite_in_finite_out(mode: str, data: st.DataObject) -> None:
    text, vl, alpha, options = data.draw(blend_case(mode))
    out = blend(text, vl, mode, alpha, **options)
    n_t, d = text.shape
    rows = n_t
    if mode == "concat" and alpha > 0:
        rows = min(n_t + vl.shape[0], int(options["max_rows"]))  # type: ignore[call-overload]
    if mode == "replace" and alpha > 0:
        rows = vl.shape[0]  # every VL row (far below the 1504-row limit here)
    assert out.shape == (rows, d)
    assert out.dtype == text.dtype
    assert torch.isfinite(out).all(), (text, vl, alpha, options, out)
