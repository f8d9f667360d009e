"""Composition maths (`llm_dit.maths.compose`): extract/combine/apply equal `blend` for one reference, and each kind's
weighted combination (negative weights included) on known numbers."""

from __future__ import annotations

import pytest
import torch

from llm_dit.core.errors import UserError
from llm_dit.maths.blend import BLEND_MODES, BlendError, _gram_loss, blend
from llm_dit.maths.compose import (
    KINDS,
    apply_style,
    check_weights,
    combine_styles,
    extract_style,
    linearity,
    style_from_tensors,
    style_tensors,
)

MODES = tuple(BLEND_MODES)


def tt(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def rand(n: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * scale


def opts(mode: str, dtype: torch.dtype = torch.float32) -> dict[str, object]:
    return {"neutral": rand(5, 12, 3, 2.0).to(dtype)} if mode == "style_delta" else {}


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16 if x.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_single_reference_weight_one_is_bit_identical_to_blend(mode: str, dtype: torch.dtype) -> None:
    t, v = rand(7, 12, 1).to(dtype), rand(11, 12, 2, 3.0).to(dtype)
    alpha = 1.0 if mode == "replace" else 0.7
    expected = blend(t, v, mode, alpha, **opts(mode, dtype))
    style = extract_style(mode, v, opts(mode, dtype))
    combined = combine_styles([(style, 1.0)])
    # the same through a style file's content (float32 tensors, metadata)
    from_file = style_from_tensors(*style_tensors(combined), "s")
    for s in (combined, from_file):
        out = apply_style(mode, t, s, alpha)
        assert out.dtype == expected.dtype and out.shape == expected.shape
        assert torch.equal(bits(out), bits(expected)), mode


def apply2(
    mode: str,
    t: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    w: tuple[float, float],
    alpha: float = 1.0,
    **options: object,
) -> torch.Tensor:
    sa, sb = extract_style(mode, a, options), extract_style(mode, b, options)
    return apply_style(mode, t, combine_styles([(sa, w[0]), (sb, w[1])]), alpha, options)


def test_rows_kind_combines_aligned_rows_and_extrapolates_with_a_negative_weight() -> None:
    t, a, b = tt([[0.0, 0.0]]), tt([[2.0, 4.0]]), tt([[4.0, 0.0], [4.0, 0.0]])  # b aligns to one row [4, 0]
    torch.testing.assert_close(apply2("interpolate", t, a, b, (0.5, 0.5)), tt([[3.0, 2.0]]))
    torch.testing.assert_close(apply2("interpolate", t, a, b, (0.5, 0.5), 0.5), tt([[1.5, 1.0]]))
    # 1.5a − 0.5b = a + 0.5(a − b): away from b
    torch.testing.assert_close(apply2("interpolate", t, a, b, (1.5, -0.5)), tt([[1.0, 6.0]]))
    # slerp and attention_weighted take the same combined rows
    combined = tt([[3.0, 2.0]])
    for mode in ("slerp", "attention_weighted"):
        t2 = tt([[1.0, 1.0]])
        torch.testing.assert_close(apply2(mode, t2, a, b, (0.5, 0.5), 0.6), blend(t2, combined, mode, 0.6))


def test_concat_and_replace_align_parts_to_the_longest_reference() -> None:
    t, a, b = tt([[9.0, 9.0]]), tt([[2.0, 2.0]]), tt([[0.0, 0.0], [4.0, 4.0]])
    rows = tt([[1.0, 1.0], [3.0, 3.0]])  # 0.5·[a, a] + 0.5·b
    torch.testing.assert_close(apply2("concat", t, a, b, (0.5, 0.5)), torch.cat([t, rows]))
    torch.testing.assert_close(apply2("replace", t, a, b, (0.5, 0.5)), rows)


def test_adain_per_dim_combines_moments_and_clamps_a_negative_std() -> None:
    t = tt([[-1.0], [1.0]])  # μ 0, σ 1
    a, b, c = tt([[1.0], [3.0]]), tt([[10.0], [10.0]]), tt([[0.0], [4.0]])  # (μ, σ): (2, 1), (10, 0), (2, 2)
    torch.testing.assert_close(apply2("adain_per_dim", t, a, b, (0.5, 0.5)), tt([[5.5], [6.5]]))  # μ 6, σ 0.5
    torch.testing.assert_close(apply2("adain_per_dim", t, a, b, (2.0, -1.0)), tt([[-8.0], [-4.0]]))  # μ −6, σ 2
    torch.testing.assert_close(apply2("adain_per_dim", t, a, c, (1.0, -1.0)), tt([[0.0], [0.0]]))  # σ −1 -> 0


def test_adain_combines_per_row_moments() -> None:
    t, a, b = tt([[0.0, 2.0]]), tt([[1.0, 3.0]]), tt([[5.0, 5.0]])  # row (μ, σ): T (1, 1), a (2, 1), b (5, 0)
    torch.testing.assert_close(apply2("adain", t, a, b, (0.5, 0.5)), tt([[3.0, 4.0]]))  # μ 3.5, σ 0.5


@pytest.mark.parametrize("mode", ["gem_pool", "svd_style"])
def test_vector_kinds_sum_style_vectors(mode: str) -> None:
    t = tt([[0.0, 0.0], [2.0, 2.0]])  # μ_T [1, 1]
    a, b = tt([[2.0, 2.0]]), tt([[4.0, 0.0]])  # one row: gem (p = 1) and svd both give s = the row
    options = {"p": 1.0} if mode == "gem_pool" else {"k": 1}
    out = apply2(mode, t, a, b, (0.5, 0.5), **options)  # s = [3, 1]
    torch.testing.assert_close(out, tt([[2.0, 0.0], [4.0, 2.0]]))
    out = apply2(mode, t, a, b, (2.0, -1.0), **options)  # s = [0, 4]
    torch.testing.assert_close(out, tt([[-1.0, 3.0], [1.0, 5.0]]))


def test_whiten_combines_recoloured_rows() -> None:
    t = tt([[0.0], [2.0]])  # μ 1, σ 1: recolouring maps whitened z to z + 1
    a, b = tt([[0.0], [10.0]]), tt([[5.0], [1.0]])  # whitened: [−1, 1] and [1, −1]
    torch.testing.assert_close(apply2("whiten", t, a, b, (0.75, 0.25)), tt([[0.5], [1.5]]), atol=1e-5, rtol=0)


def test_style_delta_combines_deltas() -> None:
    t, n = tt([[1.0, 1.0]]), tt([[0.0, 0.0]])
    a, b = tt([[2.0, 0.0]]), tt([[0.0, 4.0]])
    out = apply2("style_delta", t, a, b, (0.5, -0.25), 1.0, neutral=n, scale_to_text=False)
    torch.testing.assert_close(out, tt([[2.0, 0.0]]))  # Δ = 0.5·[2, 0] − 0.25·[0, 4] = [1, −1]


def test_gram_target_is_the_weighted_gram_matrix() -> None:
    x, t, a, b = rand(3, 4, 0), rand(3, 4, 1), rand(3, 4, 2), rand(3, 4, 3)
    w = (0.7, -0.4)
    g = w[0] * a.T @ a + w[1] * b.T @ b
    n, d = x.shape
    explicit = (x.T @ x - g).square().sum() / (n * n * d * d) + (x - t).square().sum() / (n * d)
    implicit = _gram_loss(x, [(a, w[0]), (b, w[1])], t) + g.square().sum() / (n * n * d * d)
    torch.testing.assert_close(implicit, explicit)
    # the combined style moves T; a and a alike at (0.5, 0.5) is a alone
    out = apply2("gram", t, a, a, (0.5, 0.5), 1.0, iterations=5)
    torch.testing.assert_close(out, blend(t, a, "gram", 1.0, iterations=5))


def test_nested_combination_multiplies_weights() -> None:
    t, a, b, c = tt([[0.0]]), tt([[1.0]]), tt([[2.0]]), tt([[4.0]])
    s = {k: extract_style("interpolate", v) for k, v in {"a": a, "b": b, "c": c}.items()}
    ab = combine_styles([(s["a"], 0.5), (s["b"], 0.5)])
    out = apply_style("interpolate", t, combine_styles([(ab, 0.5), (s["c"], 0.5)]), 1.0)
    torch.testing.assert_close(out, tt([[0.25 + 0.5 + 2.0]]))


def test_bad_weights_and_incompatible_styles_are_refused() -> None:
    for weights, message in (([1.0], "1 weight.*2 reference"), ([0, 0], "all zero"), ([1, float("nan")], "finite")):
        with pytest.raises(UserError, match=message):
            check_weights(weights, 2)
    a = rand(3, 4, 0)
    with pytest.raises(UserError, match="'interpolate' and 'adain_per_dim' cannot be combined"):
        combine_styles([(extract_style("interpolate", a), 0.5), (extract_style("adain_per_dim", a), 0.5)])
    p2, p3 = extract_style("gem_pool", a, {"p": 2.0}), extract_style("gem_pool", a, {"p": 3.0})
    with pytest.raises(UserError, match="different p"):
        combine_styles([(p2, 0.5), (p3, 0.5)])
    with pytest.raises(UserError, match=r"extracted with gem_pool option p=2\.0, not 3\.0"):
        apply_style("gem_pool", a, p2, 0.5, {"p": 3.0})
    with pytest.raises(UserError, match="cannot be applied with blend mode 'adain'"):
        apply_style("adain", a, p2, 0.5)
    with pytest.raises(BlendError, match="alpha"):
        apply_style("interpolate", a, combine_styles([(extract_style("interpolate", a), 0.5)] * 2), 1.5)


def test_every_mode_has_a_kind() -> None:
    assert set(KINDS) == set(BLEND_MODES)


AFFINE = ("interpolate", "linear", "concat", "replace", "adain", "adain_per_dim", "gem_pool", "svd_style", "whiten")


@pytest.mark.parametrize("mode", [*AFFINE, "style_delta", "slerp", "attention_weighted", "gram"])
def test_a_negative_weight_moves_the_conditioning_away_from_that_reference(mode: str) -> None:
    """With weights (1.5, −0.5), C − C_b = 1.5·(C_a − C_b) where C is affine in what the mode transfers (every mode
    but slerp, attention_weighted and gram, and style_delta's rescaling); in every mode C is farther from C_b."""
    t, a, b = rand(6, 12, 1), rand(6, 12, 2, 2.0), rand(6, 12, 3, 0.5) + 1.0
    options = {"neutral": rand(6, 12, 4), "scale_to_text": False} if mode == "style_delta" else {}
    alpha = 1.0 if mode == "replace" else 0.5
    c_a, c_b = (blend(t, v, mode, alpha, **options) for v in (a, b))
    c_w = apply2(mode, t, a, b, (1.5, -0.5), alpha, **options)
    if mode in AFFINE or mode == "style_delta":
        torch.testing.assert_close(c_w - c_b, 1.5 * (c_a - c_b), atol=2e-4, rtol=1e-4)
    assert (c_w - c_b).norm() > (c_a - c_b).norm()


def test_linearity_on_known_numbers() -> None:
    base, a, b = tt([[0.0, 0.0]]), tt([[2.0, 0.0]]), tt([[0.0, 2.0]])
    exact = linearity(base, tt([[1.0, 1.0]]), [a, b], [0.5, 0.5])  # E = S = [1, 1]
    assert exact is not None and exact["residual"] == 0 and exact["projection"] == pytest.approx(2**0.5)
    bent = linearity(base, tt([[2.0, 1.0]]), [a, b], [0.5, 0.5])  # E = [2, 1]: E − S = [1, 0]
    assert bent is not None
    assert bent["residual"] == pytest.approx(1 / 2**0.5) and bent["projection"] == pytest.approx(3 / 2**0.5)
    assert bent["cosine"] == pytest.approx(3 / (2**0.5 * 5**0.5))
    assert linearity(base, tt([[1.0, 1.0], [0.0, 0.0]]), [a, b], [0.5, 0.5]) is None  # shapes differ
