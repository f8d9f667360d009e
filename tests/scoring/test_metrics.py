"""Sanity tests for llm_dit.scoring.image_metrics on synthetic images with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from llm_dit.scoring.image_metrics import (
    IMAGE_METRICS,
    METRICS,
    MetricInfo,
    color_histogram_similarity,
    compute_image_metrics,
    grid_artifact_score,
    high_frequency_energy,
    luminance,
    ssim,
    to_array,
)

# ----------------------------------------------------------------------------------------- fixtures


def smooth_image(h: int = 256, w: int = 320, seed: int = 0) -> np.ndarray:
    """Natural-ish smooth float image: colour gradients plus a few low-frequency Gaussian blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.5 + 0.2 * (xx - yy)], axis=-1)
    for _ in range(6):
        cy, cx = rng.uniform(0, 1, 2)
        s = rng.uniform(0.08, 0.25)
        amp = rng.uniform(-0.2, 0.2, 3)
        img = img + amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[..., None]
    return np.clip(img, 0.0, 1.0)


def noise_image(h: int = 256, w: int = 320, sigma: float = 0.03, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.5 + sigma * rng.standard_normal((h, w, 3)), 0.0, 1.0)


def colourful_image(h: int = 128, w: int = 128) -> np.ndarray:
    """Warm hue sweep (red -> yellow -> green, hue in [0, 0.4)) along x, value along y, uint8.

    Deliberately not the full hue wheel: a full wheel maps onto itself under channel permutations,
    which would make channel-swap recolouring invisible to a colour histogram.
    """
    yy, xx = np.mgrid[0:h, 0:w]
    hue = 0.4 * xx / w
    val = 0.4 + 0.6 * yy / h
    r = np.clip(np.abs(hue * 6 - 3) - 1, 0, 1)
    g = np.clip(2 - np.abs(hue * 6 - 2), 0, 1)
    b = np.clip(2 - np.abs(hue * 6 - 4), 0, 1)
    return (np.stack([r, g, b], axis=-1) * val[..., None] * 255).round().astype(np.uint8)


def with_lines(img: np.ndarray, period: int, depth: float = 0.2, offset: int = 5) -> np.ndarray:
    """Thin (1 px) dark horizontal and vertical lines every ``period`` px."""
    out = img.copy()
    out[offset::period, :, :] -= depth
    out[:, offset::period, :] -= depth
    return np.clip(out, 0.0, 1.0)


# ----------------------------------------------------------------------------------------- to_array


def test_to_array_uint8_and_float_roundtrip() -> None:
    arr = colourful_image(16, 24)
    out = to_array(arr)
    assert out.dtype == np.float32
    assert out.shape == (16, 24, 3)
    np.testing.assert_allclose(out * 255, arr.astype(np.float32), atol=1e-4)
    np.testing.assert_array_equal(to_array(out), out)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB", "1", "I;16", "F"])
def test_to_array_accepts_pil_modes(mode: str) -> None:
    rgb = Image.fromarray(colourful_image(20, 30))
    if mode in ("I;16", "F"):
        grey = np.asarray(rgb.convert("L"), dtype=np.float64) / 255.0
        img = (
            Image.fromarray((grey * 65535).round().astype(np.uint16))
            if mode == "I;16"
            else Image.fromarray(grey.astype(np.float32))
        )
        expected = np.repeat(grey[..., None], 3, axis=2)
    else:
        img = rgb.convert(mode)
        expected = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    assert img.mode == mode
    out = to_array(img)
    assert out.shape == (20, 30, 3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_to_array_greyscale_and_rgba_arrays() -> None:
    grey = np.array([[0, 255], [128, 64]], dtype=np.uint8)
    out = to_array(grey)
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[..., 0], out[..., 2])
    assert out[1, 0, 1] == pytest.approx(128 / 255)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 7
    np.testing.assert_allclose(to_array(rgba)[..., 0], 1.0)
    assert to_array(rgba).shape == (2, 2, 3)


@pytest.mark.parametrize(
    "bad",
    [
        np.full((4, 4, 3), 2.0, dtype=np.float32),  # [0, 255]-style float
        np.full((4, 4, 3), -0.5, dtype=np.float32),  # [-1, 1]-style float
        np.full((4, 4, 3), np.nan, dtype=np.float32),
        np.zeros((3, 4, 4, 3), dtype=np.uint8),  # batch
        np.zeros((4, 4, 2), dtype=np.uint8),
        np.zeros((4, 4, 3), dtype=np.int32),
    ],
)
def test_to_array_rejects_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        to_array(bad)


def test_luminance_is_bt601() -> None:
    px = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(luminance(px)[0], [0.299, 0.587, 0.114, 1.0], atol=1e-6)


# ----------------------------------------------------------------------------------------- colour


def test_histogram_identical_is_one() -> None:
    img = colourful_image()
    assert color_histogram_similarity(img, img) == pytest.approx(1.0, abs=1e-12)
    # Different sizes but identical colour distribution (nearest 2x upscale) -> still 1.
    big = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)
    assert color_histogram_similarity(big, Image.fromarray(img)) == pytest.approx(1.0, abs=1e-12)


def test_histogram_recolouring_orders_similarity() -> None:
    img = colourful_image()
    swapped = img[..., ::-1].copy()  # R <-> B
    partial = img.copy()
    partial[:, : img.shape[1] // 2] = swapped[:, : img.shape[1] // 2]
    full_sim = color_histogram_similarity(swapped, img)
    part_sim = color_histogram_similarity(partial, img)
    assert full_sim < 0.6
    assert full_sim < part_sim < 1.0 - 0.2
    # Symmetric by construction (intersection of normalised histograms).
    assert color_histogram_similarity(img, swapped) == pytest.approx(full_sim)


def test_histogram_disjoint_colours_is_zero_and_bins_validated() -> None:
    red = np.zeros((8, 8, 3), dtype=np.uint8)
    red[..., 0] = 255
    blue = np.zeros((5, 9, 3), dtype=np.uint8)
    blue[..., 2] = 255
    assert color_histogram_similarity(red, blue) == 0.0
    # With a single bin every colour falls in the same cell.
    assert color_histogram_similarity(red, blue, bins=1) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        color_histogram_similarity(red, blue, bins=0)


# ----------------------------------------------------------------------------------------- SSIM


def _ssim_reference_torch(x: np.ndarray, y: np.ndarray) -> float:
    """Independent SSIM via torch conv2d with a 2-D 11x11 Gaussian kernel (valid region)."""
    t = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(t**2) / (2 * 1.5**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :])[None, None]
    a = torch.from_numpy(x)[None, None]
    b = torch.from_numpy(y)[None, None]

    def f(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, k)

    mx, my = f(a), f(b)
    vx, vy, cxy = f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(m.mean())


def test_ssim_identical_is_one() -> None:
    img = smooth_image(64, 80)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-9)
    assert ssim(Image.fromarray((img * 255).astype(np.uint8)), (img * 255).astype(np.uint8)) == pytest.approx(
        1.0, abs=1e-9
    )


def test_ssim_matches_independent_torch_implementation() -> None:
    base = smooth_image(64, 72, seed=3)
    noisy = noise_image(64, 72, sigma=0.1, seed=1) - 0.5 + base
    noisy = np.clip(noisy, 0, 1)
    expected = _ssim_reference_torch(luminance(noisy), luminance(base))
    assert ssim(noisy, base) == pytest.approx(expected, abs=1e-9)
    assert expected < 0.95  # the comparison is non-trivial


def test_ssim_decreases_monotonically_with_noise() -> None:
    base = smooth_image(96, 128, seed=1)
    eps = np.random.default_rng(7).standard_normal(base.shape)
    scores = [ssim(np.clip(base + s * eps, 0, 1), base) for s in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)]
    assert scores[0] == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(scores)), scores
    assert scores[-1] < 0.3


def test_ssim_negative_for_inverted_structure() -> None:
    base = noise_image(48, 48, sigma=0.2, seed=2)
    assert ssim(1.0 - base, base) < -0.5


def textured_image(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth image plus a blocky mid-frequency texture (structure that SSIM can tell apart)."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.uniform(-0.15, 0.15, (h // 4 + 1, w // 4 + 1)), np.ones((4, 4)))[:h, :w]
    return np.clip(smooth_image(h, w, seed) + blocks[..., None], 0.0, 1.0)


def test_ssim_differently_sized_images() -> None:
    base = textured_image(64, 96, seed=4)
    base_u8 = (base * 255).round().astype(np.uint8)
    upscaled = Image.fromarray(base_u8).resize((192, 128), Image.Resampling.BICUBIC)
    same_content = ssim(upscaled, base_u8)
    assert 0.9 < same_content <= 1.0
    other = textured_image(128, 192, seed=9)
    assert ssim(other, base_u8) < same_content - 0.3


def test_ssim_tiny_images_use_smaller_window() -> None:
    a = noise_image(6, 9, sigma=0.2, seed=5)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(np.clip(a + 0.3, 0, 1), a) < 1.0


# ----------------------------------------------------------------------------------------- grid


def test_grid_score_near_zero_for_clean_images() -> None:
    for img in (smooth_image(), noise_image(), np.random.default_rng(0).uniform(0, 1, (256, 320, 3))):
        assert abs(grid_artifact_score(img)) < 0.15


@pytest.mark.parametrize("base", ["smooth", "noise"])
def test_grid_32px_raises_score_and_24px_much_less(base: str) -> None:
    img = smooth_image() if base == "smooth" else noise_image(sigma=0.03)
    clean = grid_artifact_score(img)
    g32 = grid_artifact_score(with_lines(img, 32)) - clean
    g24 = grid_artifact_score(with_lines(img, 24)) - clean
    assert g32 > 1.0
    assert g24 < 0.35 * g32
    # The grid's phase (where the token boundaries fall) does not matter.
    shifted = grid_artifact_score(with_lines(img, 32, offset=19)) - clean
    assert shifted == pytest.approx(g32, rel=0.25)


def test_grid_score_periodic_additive_pattern() -> None:
    img = smooth_image(288, 224, seed=2)
    tile = np.random.default_rng(3).uniform(-0.03, 0.03, (32, 32, 1))
    pattern = np.tile(tile, (288 // 32, 224 // 32, 1))
    assert grid_artifact_score(np.clip(img + pattern, 0, 1)) > grid_artifact_score(img) + 1.0


def test_grid_score_respects_period_argument() -> None:
    img = with_lines(smooth_image(), 24)
    assert grid_artifact_score(img, period=24) > grid_artifact_score(img, period=32) + 1.0
    with pytest.raises(ValueError):
        grid_artifact_score(img, period=1)


def test_grid_score_small_and_non_square_images() -> None:
    assert grid_artifact_score(smooth_image(40, 60)) is None  # both sides < 4 * period: not measured
    assert grid_artifact_score(with_lines(smooth_image(40, 60), 32)) is None
    assert grid_artifact_score(np.full((128, 128, 3), 0.5)) == 0.0  # constant image
    # Only the 320-px axis is long enough; the grid is still detected from it.
    strip = smooth_image(48, 320, seed=5)
    assert grid_artifact_score(with_lines(strip, 32)) > grid_artifact_score(strip) + 1.0
    # Non-multiple-of-32 sizes (harmonics fall between FFT bins).
    odd = smooth_image(250, 333, seed=6)
    assert grid_artifact_score(with_lines(odd, 32)) > grid_artifact_score(odd) + 1.0


# ----------------------------------------------------------------------------------------- high frequency


def test_high_frequency_energy_noise_vs_gradient() -> None:
    white = np.random.default_rng(0).uniform(0, 1, (128, 160, 3))
    yy, xx = np.mgrid[0:128, 0:160]
    gradient = np.repeat(((xx + yy) / (128 + 160))[..., None], 3, axis=2)
    hf_noise = high_frequency_energy(white)
    hf_grad = high_frequency_energy(gradient)
    # White noise: energy fraction outside the disc r <= 0.25 is ~ 1 - pi * 0.25**2 / 4 ~= 0.951.
    assert hf_noise == pytest.approx(1 - math.pi * 0.25**2 / 4, abs=0.02)
    assert hf_grad < 0.01
    assert high_frequency_energy(smooth_image()) < 0.01


def test_high_frequency_energy_cutoff_and_edge_cases() -> None:
    white = np.random.default_rng(1).uniform(0, 1, (64, 64, 3))
    fractions = [high_frequency_energy(white, c) for c in (0.0, 0.25, 0.5, 1.0, 1.5)]
    assert all(a > b for a, b in itertools.pairwise(fractions))
    assert fractions[0] > 0.99 and fractions[-1] == 0.0  # r <= sqrt(2) everywhere
    assert high_frequency_energy(np.zeros((32, 32, 3), dtype=np.uint8)) == 0.0
    with pytest.raises(ValueError):
        high_frequency_energy(white, -0.1)


# ----------------------------------------------------------------------------------------- registry


def test_registry_describes_four_model_free_metrics() -> None:
    assert set(IMAGE_METRICS) == {
        "color_hist_similarity",
        "ssim_to_baseline",
        "grid_artifact_score",
        "high_frequency_energy",
    }
    assert {n: i for n, i in METRICS.items() if i.model is None} == IMAGE_METRICS
    for name, info in METRICS.items():
        assert isinstance(info, MetricInfo)
        assert info.name == name
        assert info.needs in ("image", "reference", "baseline", "prompt")
        assert info.range[0] < info.range[1]
    assert METRICS["color_hist_similarity"].needs == "reference"
    assert METRICS["ssim_to_baseline"].needs == "baseline"
    assert METRICS["grid_artifact_score"].higher_is_better is False
    assert METRICS["ssim_to_baseline"].higher_is_better is True


def test_compute_image_metrics_selects_by_inputs() -> None:
    img = (smooth_image(128, 128) * 255).astype(np.uint8)
    only = compute_image_metrics(img)
    assert set(only) == {"grid_artifact_score", "high_frequency_energy"}
    ref = colourful_image(64, 64)
    full = compute_image_metrics(Image.fromarray(img), reference=ref, baseline=img)
    assert list(full) == list(IMAGE_METRICS)
    assert full["ssim_to_baseline"] == pytest.approx(1.0)
    assert full["color_hist_similarity"] == pytest.approx(color_histogram_similarity(img, ref))
    assert full["grid_artifact_score"] == pytest.approx(grid_artifact_score(img))
    assert full["high_frequency_energy"] == pytest.approx(high_frequency_energy(img))
    for name, value in full.items():
        lo, hi = METRICS[name].range
        assert isinstance(value, float) and lo <= value <= hi
    with_ref = compute_image_metrics(img, reference=ref)
    assert set(with_ref) == {"color_hist_similarity", "grid_artifact_score", "high_frequency_energy"}


def test_histogram_intersection_exact_value() -> None:
    red, blue = np.array([255, 0, 0], np.uint8), np.array([0, 0, 255], np.uint8)
    a = np.empty((4, 8, 3), np.uint8)
    a[:3], a[3:] = red, blue  # 75 % red, 25 % blue
    b = np.empty((2, 10, 3), np.uint8)
    b[:1], b[1:] = red, blue  # 50 % red, 50 % blue (different size)
    # Σ min(p, q) = min(.75, .5) + min(.25, .5) = 0.75
    assert color_histogram_similarity(a, b) == pytest.approx(0.75, abs=1e-12)
