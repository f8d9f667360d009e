"""Tests for llm_dit.maths.refstats, .normalize and .outliers: shipped statistics, normalisation, outlier masking."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from llm_dit.maths.normalize import NORMALIZATION_MODES, normalize
from llm_dit.maths.outliers import OUTLIER_MODES, get_outlier_dimensions, mask_outlier_dimensions, std_ratios
from llm_dit.maths.refstats import ReferenceStats, compute_reference_stats, shipped_stats
from llm_dit.maths.stats import StatsError

# Recorded in the source .json next to the .npz the shipped file was converted from.
RECORDED_GLOBAL_STD = 61.09568786621094
RECORDED_GLOBAL_MEAN = 0.31115710735321045


def pop_std(t: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    t = t.double()
    return t.std(correction=0) if dim is None else t.std(dim=dim, correction=0)


def with_moments(n: int, mean: torch.Tensor, std: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """float32 rows ``[n, D]`` whose columns have exactly (up to rounding) the given population mean/std."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, mean.numel(), generator=g, dtype=torch.float64)
    z = (z - z.mean(0)) / z.std(0, correction=0)
    return (z * std.double() + mean.double()).float()


# ---------------------------------------------------------------------------------------------------------
# Shipped statistics
# ---------------------------------------------------------------------------------------------------------


def test_shipped_stats_load_with_documented_values():
    ref = shipped_stats()
    assert ref.per_dim_mean.shape == (2560,)
    assert ref.per_dim_std.shape == (2560,)
    assert ref.per_dim_mean.dtype == torch.float32
    assert ref.per_dim_std.dtype == torch.float32
    assert (ref.model, ref.layer, ref.prompt_count, ref.token_count) == ("Qwen/Qwen3-4B", -2, 10, 220)
    assert ref.per_dim_std[4].item() == pytest.approx(2752.6, abs=0.05)
    assert ref.per_dim_std[396].item() == pytest.approx(948.7, abs=0.05)
    assert ref.per_dim_mean[4].item() == pytest.approx(924.87, abs=0.01)
    assert ref.per_dim_mean[396].item() == pytest.approx(-206.41, abs=0.01)
    assert ref.global_std == pytest.approx(RECORDED_GLOBAL_STD, rel=0.01)
    assert ref.global_mean == pytest.approx(RECORDED_GLOBAL_MEAN, abs=1e-4)
    assert float(ref.metadata["global_std"]) == pytest.approx(RECORDED_GLOBAL_STD, rel=1e-9)
    assert "fblissjr/llm-dit-experiments" in ref.metadata["attribution"]
    assert ref.metadata["license"] == "Apache-2.0"


def test_shipped_stats_returns_independent_copies():
    a = shipped_stats()
    a.per_dim_std.zero_()
    assert shipped_stats().per_dim_std[4].item() == pytest.approx(2752.6, abs=0.05)


def test_global_std_is_pooled_population_std():
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(50, 6, generator=g) * torch.tensor([1.0, 2, 3, 40, 5, 6]) + torch.tensor(
        [0.0, -10, 5, 100, 2, 0]
    )
    stats = compute_reference_stats(rows, layer=-6, model="m", prompt_count=3)
    assert stats.global_std == pytest.approx(pop_std(rows).item(), rel=1e-5)
    assert stats.global_mean == pytest.approx(rows.double().mean().item(), rel=1e-5, abs=1e-5)


def test_compute_reference_stats_population_float32_from_bf16():
    rows = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]], dtype=torch.bfloat16)
    stats = compute_reference_stats(rows, layer=-2, model="Qwen/Qwen3-4B", prompt_count=1)
    assert stats.per_dim_mean.dtype == torch.float32
    torch.testing.assert_close(stats.per_dim_mean, torch.tensor([2.0, 1.0]))
    # population std of [0, 2, 4] is sqrt(8/3), not the sample std 2
    torch.testing.assert_close(stats.per_dim_std, torch.tensor([math.sqrt(8 / 3), 0.0]))
    assert (stats.token_count, stats.prompt_count, stats.layer) == (3, 1, -2)


# ---------------------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, monkeypatch):
    rows = torch.randn(20, 8, generator=torch.Generator().manual_seed(2)) * 3 + 1
    stats = compute_reference_stats(rows, layer=-6, model="Qwen/Qwen3-4B", prompt_count=4)
    stats = ReferenceStats(
        stats.per_dim_mean,
        stats.per_dim_std,
        layer=stats.layer,
        model=stats.model,
        prompt_count=stats.prompt_count,
        token_count=stats.token_count,
        metadata={"source": "unit test"},
    )
    path = tmp_path / "sub" / "stats.safetensors"
    stats.save(path)
    stats.save(path)  # overwriting works
    assert sorted(p.name for p in path.parent.iterdir()) == ["stats.safetensors"]  # no temp file left

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", no_pickle)
    back = ReferenceStats.load(path)
    assert torch.equal(back.per_dim_mean, stats.per_dim_mean)
    assert torch.equal(back.per_dim_std, stats.per_dim_std)
    assert (back.layer, back.model, back.prompt_count, back.token_count) == (-6, "Qwen/Qwen3-4B", 4, 20)
    assert back.metadata["source"] == "unit test"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["layer"] == "-6"
    assert meta["prompt_count"] == "4"
    assert meta["token_count"] == "20"
    assert float(meta["global_std"]) == pytest.approx(pop_std(rows).item(), rel=1e-5)


def test_load_errors_are_one_line_stats_errors(tmp_path):
    with pytest.raises(StatsError, match="not found") as missing:
        ReferenceStats.load(tmp_path / "nope.safetensors")

    only_mean = tmp_path / "only_mean.safetensors"
    save_file({"per_dim_mean": torch.zeros(4)}, str(only_mean), metadata={"layer": "-2"})
    with pytest.raises(StatsError, match=r"missing tensor.*per_dim_std") as no_std:
        ReferenceStats.load(only_mean)

    bad_shape = tmp_path / "bad_shape.safetensors"
    meta = {"model": "m", "layer": "-2", "prompt_count": "1", "token_count": "2"}
    save_file({"per_dim_mean": torch.zeros(4), "per_dim_std": torch.ones(3)}, str(bad_shape), metadata=meta)
    with pytest.raises(StatsError, match="shape mismatch") as shape:
        ReferenceStats.load(bad_shape)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x04 this is not safetensors")
    with pytest.raises(StatsError) as junk:
        ReferenceStats.load(garbage)

    for exc in (missing, no_std, shape, junk):
        assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------------------
# Outlier analysis
# ---------------------------------------------------------------------------------------------------------


def test_outliers_against_shipped_stats_in_both_directions():
    ref = shipped_stats()
    target = ref.per_dim_std.clone()
    target[396] /= 600  # VL spread 600x smaller than the text encoder's
    target[4] /= 42
    target[100] *= 20  # 20x larger
    target[7] *= 5  # within the threshold: not reported
    target[8] /= 5
    emb = with_moments(64, ref.per_dim_mean, target, seed=3)

    found = get_outlier_dimensions(emb, threshold=10.0, reference=ref)
    with pytest.raises(StatsError, match="reference statistics are required"):
        get_outlier_dimensions(emb, threshold=10.0)  # never a packaged default

    assert [d for d, _ in found] == [396, 4, 100]
    ratios = dict(found)
    assert ratios[396] == pytest.approx(1 / 600, rel=1e-3)
    assert ratios[4] == pytest.approx(1 / 42, rel=1e-3)
    assert ratios[100] == pytest.approx(20, rel=1e-3)


def test_outlier_order_is_by_severity_in_either_direction():
    ref = {"per_dim_mean": np.zeros(5, np.float32), "per_dim_std": np.ones(5, np.float32)}
    target = torch.tensor([15.0, 1 / 30, 1.0, 100.0, 1 / 12])
    emb = with_moments(10, torch.zeros(5), target, seed=4)
    found = get_outlier_dimensions(emb, threshold=10.0, reference=ref)
    assert [d for d, _ in found] == [3, 1, 0, 4]
    r = std_ratios(emb, ref)
    assert r.dtype == torch.float32
    torch.testing.assert_close(r, target, rtol=1e-4, atol=0)


def test_reference_may_be_stats_mapping_or_object():
    mean, std = torch.zeros(3), torch.tensor([1.0, 2.0, 0.5])
    emb = with_moments(6, mean, torch.tensor([30.0, 2.0, 0.01]), seed=5)
    stats = ReferenceStats(mean, std, layer=-2, model="m", prompt_count=1, token_count=6)
    as_dict = {"per_dim_mean": mean.numpy(), "per_dim_std": std.numpy()}
    as_obj = SimpleNamespace(per_dim_mean=mean, per_dim_std=std)
    results = [get_outlier_dimensions(emb, 10.0, reference=r) for r in (stats, as_dict, as_obj)]
    assert results[0] == results[1] == results[2]
    assert [d for d, _ in results[0]] == [2, 0]


def test_outlier_argument_errors():
    ref = {"per_dim_mean": torch.zeros(3), "per_dim_std": torch.ones(3)}
    emb = torch.randn(4, 3)
    for bad in (1.0, 0.5, -3.0, math.inf):
        with pytest.raises(StatsError, match="threshold"):
            get_outlier_dimensions(emb, threshold=bad, reference=ref)
        with pytest.raises(StatsError, match="threshold"):
            mask_outlier_dimensions(emb, threshold=bad, reference=ref)
    with pytest.raises(StatsError, match=r"width 5.*width 3"):
        get_outlier_dimensions(torch.randn(4, 5), reference=ref)
    with pytest.raises(StatsError, match="valid: none, zero, clamp, scale, reference"):
        mask_outlier_dimensions(emb, mode="median", reference=ref)


def test_single_row_reports_no_outliers():
    ref = {"per_dim_mean": torch.zeros(3), "per_dim_std": torch.ones(3)}
    emb = torch.tensor([[1.0, 2.0, 3.0]])
    assert get_outlier_dimensions(emb, reference=ref) == []
    out, info = mask_outlier_dimensions(emb, mode="zero", reference=ref)
    assert info["masked_dimensions"] == []
    assert torch.equal(out, emb)


# Hand-computed masking example, threshold 10, reference std 1 everywhere.
#   col 0: [-20, 20]      mean 0, std 20   -> ratio 20   (too large)
#   col 1: [4.96, 5.04]   mean 5, std 0.04 -> ratio 0.04 (too small, severity 25: first)
#   col 2: [1, 3]         ratio 1          -> kept
#   col 3: [-5, 5]        ratio 5          -> kept
MASK_REF = {"per_dim_mean": torch.tensor([7.0, 5.0, -3.0, 0.0]), "per_dim_std": torch.ones(4)}
MASK_EMB = torch.tensor([[-20.0, 4.96, 1.0, -5.0], [20.0, 5.04, 3.0, 5.0]])
MASK_EXPECTED = {
    "none": [[-20.0, 4.96], [20.0, 5.04]],
    "zero": [[0.0, 0.0], [0.0, 0.0]],
    # ratio 20 -> 10: 0 + x * 10/20; ratio 0.04 < 1/10 is left unchanged (clamp only compresses)
    "clamp": [[-10.0, 4.96], [10.0, 5.04]],
    # x * 20^-1/2 = ±sqrt(20); 5 + (x - 5) * 0.04^-1/2 = 5 ± 0.2
    "scale": [[-math.sqrt(20), 4.8], [math.sqrt(20), 5.2]],
    "reference": [[7.0, 5.0], [7.0, 5.0]],
}


@pytest.mark.parametrize("mode", OUTLIER_MODES)
def test_mask_modes_on_hand_computed_example(mode):
    before = MASK_EMB.clone()
    out, info = mask_outlier_dimensions(MASK_EMB, threshold=10.0, mode=mode, reference=MASK_REF)
    assert torch.equal(MASK_EMB, before)  # never in place
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[:, :2], torch.tensor(MASK_EXPECTED[mode]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 2:], MASK_EMB[:, 2:])
    assert info["mode"] == mode
    assert info["threshold"] == 10.0
    if mode == "none":
        assert info["masked_dimensions"] == []
        assert info["ratios"] == []
    elif mode == "clamp":
        assert info["masked_dimensions"] == [0]
        assert info["ratios"] == pytest.approx([20.0], rel=1e-4)
        assert [d for d, _ in info["unchanged_dimensions"]] == [1]
    else:
        assert info["masked_dimensions"] == [1, 0]
        assert info["ratios"] == pytest.approx([0.04, 20.0], rel=1e-4)


def test_clamp_and_scale_reach_their_target_ratios():
    ref = {"per_dim_mean": torch.zeros(3), "per_dim_std": torch.tensor([2.0, 1.0, 1.0])}
    emb = with_moments(16, torch.tensor([1.0, -2.0, 0.0]), torch.tensor([200.0, 0.001, 1.0]), seed=6)
    clamped, _ = mask_outlier_dimensions(emb, 10.0, mode="clamp", reference=ref)
    scaled, _ = mask_outlier_dimensions(emb, 10.0, mode="scale", reference=ref)
    assert not torch.allclose(clamped, scaled)
    # clamp compresses the wide column to t and leaves the near-constant one alone (see test_sinks.py)
    torch.testing.assert_close(std_ratios(clamped, ref), torch.tensor([10.0, 0.001, 1.0]), rtol=1e-4, atol=0)
    torch.testing.assert_close(std_ratios(scaled, ref), torch.tensor([10.0, math.sqrt(0.001), 1.0]), rtol=1e-4, atol=0)
    # both keep the column means
    torch.testing.assert_close(clamped.mean(0), emb.mean(0), rtol=0, atol=1e-3)
    torch.testing.assert_close(scaled.mean(0), emb.mean(0), rtol=0, atol=1e-3)


@pytest.mark.parametrize("rows", [torch.tensor([True, True, False]), torch.tensor([0, 1])])
def test_rows_restrict_analysis_and_modification(rows):
    # Row 2 would make column 2 an outlier (and column 1 look normal) if it were analysed.
    emb = torch.cat([MASK_EMB, torch.tensor([[1000.0, 90.0, 900.0, 3.0]])])
    before = emb.clone()
    out, info = mask_outlier_dimensions(emb, 10.0, mode="clamp", reference=MASK_REF, rows=rows)
    assert torch.equal(emb, before)
    assert info["masked_dimensions"] == [0] and [d for d, _ in info["unchanged_dimensions"]] == [1]
    assert info["row_count"] == 2
    torch.testing.assert_close(out[:2, :2], torch.tensor(MASK_EXPECTED["clamp"]), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[2], emb[2])

    _, all_rows = mask_outlier_dimensions(emb, 10.0, mode="clamp", reference=MASK_REF)
    assert 2 in all_rows["masked_dimensions"]


def test_zero_variance_dimension_is_handled_without_nan():
    ref = {"per_dim_mean": torch.tensor([1.0, 2.0]), "per_dim_std": torch.tensor([1.0, 0.0])}
    emb = torch.tensor([[3.0, 0.5], [3.0, 1.5], [3.0, 2.5]])  # column 0 constant, reference std 0 in col 1
    found = get_outlier_dimensions(emb, 10.0, reference=ref)
    # ratio 0 (infinitely too small) before ratio 1/1e-6 (reference std floored at 1e-6)
    assert [d for d, _ in found] == [0, 1]
    assert found[0][1] == 0.0
    assert found[1][1] == pytest.approx(math.sqrt(2 / 3) * 1e6, rel=1e-5)
    for mode in OUTLIER_MODES:
        out, _ = mask_outlier_dimensions(emb, 10.0, mode=mode, reference=ref)
        assert torch.isfinite(out).all(), mode
    clamped, _ = mask_outlier_dimensions(emb, 10.0, mode="clamp", reference=ref)
    torch.testing.assert_close(clamped[:, 0], emb[:, 0])  # a constant column stays constant
    for mode in NORMALIZATION_MODES:
        out = normalize(emb, mode, ref)
        assert torch.isfinite(out).all(), mode
    torch.testing.assert_close(normalize(emb, "per_dim", ref)[:, 0], torch.ones(3))  # -> reference mean
    assert torch.isfinite(normalize(torch.full((4, 2), 7.0), "global", ref)).all()


# ---------------------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------------------

# Reference: means [10, 20, 30], stds [1, 2, 4] -> pooled std sqrt(7 + 200/3) = sqrt(221/3).
NORM_REF = ReferenceStats(
    torch.tensor([10.0, 20.0, 30.0]),
    torch.tensor([1.0, 2.0, 4.0]),
    layer=-2,
    model="m",
    prompt_count=1,
    token_count=2,
)
# Columns: mean 2 / std 1, mean 4 / std 2, constant 0. All elements: mean 2, std sqrt(13/3).
NORM_EMB = torch.tensor([[1.0, 2.0, 0.0], [3.0, 6.0, 0.0]])
PER_DIM_EXPECTED = torch.tensor([[9.0, 18.0, 30.0], [11.0, 22.0, 30.0]])
# 2 + (x - 2) * sqrt(221/3) / sqrt(13/3) = 2 + (x - 2) * sqrt(17)
GLOBAL_EXPECTED = 2.0 + (NORM_EMB - 2.0) * math.sqrt(17.0)


def test_normalize_none_returns_input_as_float32():
    emb = NORM_EMB.to(torch.bfloat16)
    out = normalize(emb, "none", NORM_REF)
    assert out.dtype == torch.float32
    assert torch.equal(out, NORM_EMB)
    assert normalize(NORM_EMB, "none", NORM_REF) is not NORM_EMB


def test_normalize_per_dim_known_numbers():
    assert NORM_REF.global_std == pytest.approx(math.sqrt(221 / 3), rel=1e-6)
    out = normalize(NORM_EMB, "per_dim", NORM_REF)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, PER_DIM_EXPECTED)


def test_normalize_global_known_numbers_keeps_mean():
    out = normalize(NORM_EMB, "global", NORM_REF)
    torch.testing.assert_close(out, GLOBAL_EXPECTED)
    assert out.double().mean().item() == pytest.approx(2.0, abs=1e-5)
    assert pop_std(out).item() == pytest.approx(NORM_REF.global_std, rel=1e-5)


def test_normalize_hybrid_known_numbers():
    out = normalize(NORM_EMB, "hybrid", NORM_REF, hybrid_weight=0.25)
    torch.testing.assert_close(out, 0.25 * PER_DIM_EXPECTED + 0.75 * GLOBAL_EXPECTED)
    torch.testing.assert_close(normalize(NORM_EMB, "hybrid", NORM_REF, hybrid_weight=1.0), PER_DIM_EXPECTED)
    torch.testing.assert_close(normalize(NORM_EMB, "hybrid", NORM_REF, hybrid_weight=0.0), GLOBAL_EXPECTED)


def test_per_dim_output_has_reference_moments():
    ref = shipped_stats()
    g = torch.Generator().manual_seed(7)
    emb = (torch.randn(300, 2560, generator=g) * 13.0 + 2.0).to(torch.bfloat16)
    out = normalize(emb, "per_dim", ref)
    assert out.dtype == torch.float32
    torch.testing.assert_close(pop_std(out, 0).float(), ref.per_dim_std, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.double().mean(0).float(), ref.per_dim_mean, rtol=0, atol=1e-3)


def test_global_output_has_reference_global_std():
    ref = shipped_stats()
    emb = torch.randn(100, 2560, generator=torch.Generator().manual_seed(8)) * 13.25 + 0.5
    out = normalize(emb, "global", ref)
    assert pop_std(out).item() == pytest.approx(ref.global_std, rel=1e-4)
    assert out.double().mean().item() == pytest.approx(emb.double().mean().item(), abs=1e-3)


def test_per_dim_clip_sigma():
    # column [0, 0, 0, 0, 10]: mean 2, std 4 -> z = [-0.5 x4, 2]
    emb = torch.tensor([[0.0], [0.0], [0.0], [0.0], [10.0]])
    ref = {"per_dim_mean": torch.tensor([100.0]), "per_dim_std": torch.tensor([10.0])}
    plain = normalize(emb, "per_dim", ref)
    clipped = normalize(emb, "per_dim", ref, clip_sigma=1.5)
    torch.testing.assert_close(plain.flatten(), torch.tensor([95.0, 95, 95, 95, 120]))
    torch.testing.assert_close(clipped.flatten(), torch.tensor([95.0, 95, 95, 95, 115]))
    with pytest.raises(StatsError, match="clip_sigma"):
        normalize(emb, "per_dim", ref, clip_sigma=0.0)


def test_normalize_argument_errors():
    with pytest.raises(StatsError, match="valid: none, global, per_dim, hybrid"):
        normalize(NORM_EMB, "whiten", NORM_REF)
    with pytest.raises(StatsError, match=r"width 4.*width 3"):
        normalize(torch.zeros(2, 4), "per_dim", NORM_REF)
    with pytest.raises(StatsError, match="hybrid_weight"):
        normalize(NORM_EMB, "hybrid", NORM_REF, hybrid_weight=1.5)
    with pytest.raises(StatsError, match="2-D"):
        normalize(torch.zeros(3), "per_dim", NORM_REF)
    with pytest.raises(StatsError, match=r"non-finite|NaN"):
        normalize(torch.tensor([[1.0, math.nan, 0.0]]), "global", NORM_REF)


def test_normalize_does_not_modify_input():
    emb = NORM_EMB.clone()
    for mode in NORMALIZATION_MODES:
        normalize(emb, mode, NORM_REF, clip_sigma=0.5)
        assert torch.equal(emb, NORM_EMB), mode


# ---------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------

DTYPE_LIMITS = {torch.float32: 2.0**100, torch.bfloat16: 2.0**100, torch.float16: 65504.0}


@st.composite
def embedding_cases(draw):
    dtype = draw(st.sampled_from(list(DTYPE_LIMITS)))
    limit = DTYPE_LIMITS[dtype]
    n = draw(st.integers(1, 9))
    d = draw(st.integers(1, 7))
    value = st.floats(-limit, limit, allow_nan=False, allow_infinity=False, width=32)
    emb = torch.tensor(draw(st.lists(value, min_size=n * d, max_size=n * d)), dtype=torch.float32)
    emb = emb.reshape(n, d).to(dtype)
    ref_mean = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=d, max_size=d))
    ref_std = draw(st.lists(st.floats(0.0, 1e6, width=32), min_size=d, max_size=d))
    rows = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    options = {
        "clip": draw(st.none() | st.floats(0.1, 5.0)),
        "weight": draw(st.floats(0.0, 1.0)),
        "threshold": draw(st.floats(1.5, 1e3)),
    }
    ref = {"per_dim_mean": torch.tensor(ref_mean), "per_dim_std": torch.tensor(ref_std)}
    return emb, ref, rows, options


@settings(max_examples=150, deadline=None)
@given(embedding_cases())
def test_every_mode_gives_finite_float32_of_same_shape(case):
    emb, ref, rows, options = case
    before = emb.clone()
    for mode in NORMALIZATION_MODES:
        out = normalize(emb, mode, ref, clip_sigma=options["clip"], hybrid_weight=options["weight"])
        assert out.dtype == torch.float32
        assert out.shape == emb.shape
        assert torch.isfinite(out).all(), mode
    for mode in OUTLIER_MODES:
        for selection in (None, rows):
            out, info = mask_outlier_dimensions(emb, options["threshold"], mode, ref, rows=selection)
            assert out.dtype == torch.float32
            assert out.shape == emb.shape
            assert torch.isfinite(out).all(), mode
            assert len(info["masked_dimensions"]) == len(info["ratios"])
            if selection is not None:
                untouched = ~selection
                assert torch.equal(out[untouched], emb[untouched].float())
    assert torch.equal(emb, before)
