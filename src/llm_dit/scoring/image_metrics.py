"""Model-free image metrics for comparing generation settings in sweeps.

Every metric is a small pure function taking a ``PIL.Image.Image`` (any mode) or a numpy array
(``uint8``/``uint16``/``bool``/float, HxW or HxWxC with C in {1, 3, 4}) and returning a Python ``float`` (or None
where it cannot be measured). ``METRICS`` is the one registry of every metric, model-free and model-based (those run
through ``scorer.MetricScorer``): what each measures (``kind``), its direction, inputs and metric model, and whether a
report may rank by it; ``pareto_optimal`` marks the non-dominated runs of a two-metric trade-off.
Computation is done in float32/float64 numpy; no model, no extra dependencies.

Luminance everywhere is ITU-R BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` on values in [0, 1]
(applied to the stored, gamma-encoded sRGB values, as is conventional for SSIM).

Metrics
-------
``color_histogram_similarity``  histogram intersection of 3-D joint RGB histograms, [0, 1], higher better.
``ssim``                        structural similarity on luma (Wang et al. 2004), [-1, 1], higher better.
``grid_artifact_score``         spectral peakiness at the 32-px token period, ~0 clean, lower better; None
                                (not measured) below 4 periods (128 px).
``high_frequency_energy``       energy fraction above a radial frequency cutoff, [0, 1], higher = more detail.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image

__all__ = [
    "CONTENT_KINDS",
    "IMAGE_METRICS",
    "METRICS",
    "RANKED_KINDS",
    "STYLE_KINDS",
    "MetricInfo",
    "color_histogram_similarity",
    "compute_image_metrics",
    "grid_artifact_score",
    "high_frequency_energy",
    "luminance",
    "pareto_optimal",
    "ssim",
    "to_array",
]

ImageLike = Image.Image | np.ndarray

_FLOAT_TOL = 1e-3  # tolerated numerical overshoot of float inputs outside [0, 1] (clipped)
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)


# --------------------------------------------------------------------------------------------- inputs


def to_array(image: ImageLike) -> np.ndarray:
    """Convert an image to a float32 ``HxWx3`` array with values in [0, 1].

    * PIL images of any mode are converted with ``Image.convert("RGB")`` (alpha is dropped, i.e. the
      colour channels are used as stored; palette and greyscale images are expanded to RGB). 16-bit and
      32-bit integer greyscale modes (``I;16*``, ``I``) are scaled by 1/65535, mode ``F`` is taken as
      already being in [0, 1].
    * ``uint8`` arrays are divided by 255, ``uint16`` by 65535, ``bool`` maps to {0, 1}.
    * Float arrays must already be in [0, 1] (overshoot up to 1e-3 is clipped); anything else, including
      NaN/inf, raises ``ValueError`` rather than being silently clipped (e.g. [-1, 1] or [0, 255] floats).
    * Shapes ``HxW``, ``HxWx1`` (greyscale, replicated), ``HxWx3`` and ``HxWx4`` (alpha dropped) are accepted.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            grey = np.asarray(image, dtype=np.float64) / 65535.0
            return to_array(np.clip(grey, 0.0, 1.0).astype(np.float32))
        if image.mode == "F":
            return to_array(np.asarray(image, dtype=np.float32))
        arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return arr.astype(np.float32) / np.float32(255.0)

    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW or HxWxC array with C in (1, 3, 4), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image of shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)

    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / np.float32(255.0)
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / np.float32(65535.0)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError("float image contains NaN or inf")
        lo, hi = float(out.min()), float(out.max())
        if lo < -_FLOAT_TOL or hi > 1.0 + _FLOAT_TOL:
            raise ValueError(f"float image must be in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
        out = np.clip(out, 0.0, 1.0)
    else:
        raise ValueError(f"unsupported array dtype {arr.dtype}; use uint8, uint16, bool or float in [0, 1]")
    return np.ascontiguousarray(out, dtype=np.float32)


def luminance(image: ImageLike) -> np.ndarray:
    """BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` as a float64 ``HxW`` array in [0, 1]."""
    rgb = to_array(image).astype(np.float64)
    return rgb @ _LUMA_WEIGHTS


# --------------------------------------------------------------------------------------------- colour


def color_histogram_similarity(image: ImageLike, reference: ImageLike, bins: int = 16) -> float:
    """Histogram intersection of the 3-D joint RGB histograms of ``image`` and ``reference``.

    Each channel value v in [0, 1] is quantised to ``min(floor(v * bins), bins - 1)``; the joint histogram
    has ``bins**3`` cells and is normalised to sum 1 (so the images may have different sizes):
    ``p = hist(image) / n_image``, ``q = hist(reference) / n_reference``, and

        similarity = Σ_cells min(p, q)

    Range [0, 1]; 1 = identical colour distributions, 0 = no shared colour cell.
    Higher is better (closer to the reference's colours, e.g. for style transfer).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p = _joint_histogram(to_array(image), bins)
    q = _joint_histogram(to_array(reference), bins)
    return float(np.clip(np.minimum(p, q).sum(), 0.0, 1.0))


def _joint_histogram(rgb: np.ndarray, bins: int) -> np.ndarray:
    idx = np.minimum((rgb.astype(np.float64) * bins).astype(np.int64), bins - 1).reshape(-1, 3)
    flat = (idx[:, 0] * bins + idx[:, 1]) * bins + idx[:, 2]
    hist = np.bincount(flat, minlength=bins**3).astype(np.float64)
    return hist / hist.sum()


# --------------------------------------------------------------------------------------------- SSIM

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def ssim(image: ImageLike, baseline: ImageLike) -> float:
    """Mean structural similarity (Wang et al. 2004) between the luma of ``image`` and ``baseline``.

    With μ, σ², σ_xy local statistics under an 11x11 Gaussian window (σ = 1.5, normalised, applied as a
    separable filter over the 'valid' region only, i.e. no padding), data range L = 1,
    C1 = (0.01 L)², C2 = (0.03 L)²:

        SSIM(x, y) = mean over windows of
                     (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))

    If the sizes differ, the luma of ``image`` is resized to the baseline's size with PIL bicubic
    resampling (on a float32 'F' image, then clipped to [0, 1]). Images smaller than 11 px in either
    dimension use the largest odd window that fits (same σ, renormalised).

    Range [-1, 1]; 1 = identical. Higher is better (content preserved relative to the baseline).
    """
    y = luminance(baseline)
    x = luminance(image)
    if x.shape != y.shape:
        as_f = Image.fromarray(x.astype(np.float32))  # float32 -> mode "F", no 8-bit quantisation
        resized = as_f.resize((y.shape[1], y.shape[0]), resample=Image.Resampling.BICUBIC)
        x = np.clip(np.asarray(resized, dtype=np.float64), 0.0, 1.0)

    size = min(_SSIM_WINDOW, *y.shape)
    if size % 2 == 0:
        size -= 1
    taps = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-(taps**2) / (2.0 * _SSIM_SIGMA**2))
    w /= w.sum()

    def filt(a: np.ndarray) -> np.ndarray:
        return _separable_valid(a, w)

    c1 = (_SSIM_K1 * 1.0) ** 2
    c2 = (_SSIM_K2 * 1.0) ** 2
    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x * mu_x
    syy = filt(y * y) - mu_y * mu_y
    sxy = filt(x * y) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return float(np.clip(np.mean(num / den), -1.0, 1.0))


def _separable_valid(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Correlate ``a`` (HxW) with the symmetric 1-D kernel ``w`` along both axes, 'valid' region."""
    k = w.shape[0]
    h, wd = a.shape
    rows = np.zeros((h - k + 1, wd), dtype=np.float64)
    for i in range(k):
        rows += w[i] * a[i : i + h - k + 1, :]
    out = np.zeros((h - k + 1, wd - k + 1), dtype=np.float64)
    for j in range(k):
        out += w[j] * rows[:, j : j + wd - k + 1]
    return out


# --------------------------------------------------------------------------------------------- spectra


def _windowed_power(y: np.ndarray) -> np.ndarray:
    """|FFT2(hann2d * (y - mean(y)))|² as float64 HxW (unshifted)."""
    h, w = y.shape
    win = np.outer(np.hanning(h), np.hanning(w)) if h > 1 and w > 1 else np.ones_like(y)
    spec = np.fft.fft2((y - y.mean()) * win)
    return spec.real**2 + spec.imag**2


_GRID_RING = (2, 6)  # neighbour ring: bins at offsets ±2..±6 from the harmonic's nearest bin
_GRID_CLEAR = 2.0  # a neighbour bin lies at least this many bins from every harmonic frequency
_GRID_MIN_NEIGHBOURS = 2
_GRID_MIN_PERIODS = 4  # an axis is measured only when it holds >= 4 periods (harmonics >= 4 bins apart)
_GRID_EPS_REL = 1e-12  # regulariser relative to the mean spectral energy; caps the score at ~12


def grid_artifact_score(image: ImageLike, period: int = 32) -> float | None:
    """Spectral peakiness at the token-grid period (default 32 px) and its harmonics; None where not measurable.

    Each VL image token covers 32x32 px; misaligned conditioning shows up as a grid with that period,
    i.e. a comb of spectral peaks at frequencies k/period cycles/px. Procedure:

    1. ``Y`` = BT.601 luma, mean subtracted, multiplied by a 2-D Hann window; ``P = |FFT2|²``.
    2. 1-D spectra: ``Px[u] = Σ_v P[v, u]`` (along x, length W) and ``Py[v] = Σ_u P[v, u]`` (along y).
    3. For each axis of length N >= 4·period and each harmonic ``f_k = k·N/period`` (k = 1, 2, … while
       f_k < N/2), with c = round(f_k) and only bins 1..N//2 considered (DC excluded):
       ``peak = max P[c-1 .. c+1]``; ``neigh = median P[b]`` over the ring bins b = c±2 .. c±6 that lie at
       least 2 bins from every harmonic frequency f_j (so a neighbour is never another harmonic's peak or its
       Hann leakage; needs >= 2 such bins, else the harmonic is skipped); and
       ``r_k = (peak + ε) / (neigh + ε)`` with ε = 1e-12 · mean(P) (so the score is bounded, ~12 at most).
    4. ``score = mean over all harmonics of both axes of log10(r_k)``, i.e. log10 of the *geometric* mean
       of the peak/neighbour ratios.

    Why N >= 4·period: the harmonics are N/period bins apart. At 2 periods (64 px for 32) every bin is a
    harmonic or its neighbour, so there is no noise floor to compare with (a real grid would score ≈ 0); from
    4 periods on each harmonic has a clean bin on either side. A shorter axis is skipped; if both are, the
    score is None ("not measured"), never a number that reads as "no grid".

    The geometric mean (rather than the arithmetic mean of r_k) is deliberate: one strong isolated peak
    (a natural periodic texture, or a grid of another period that shares a harmonic, e.g. 24 px shares
    every 4th harmonic of 32 px) only raises the score in proportion to the fraction of harmonics it hits,
    whereas a real period-32 grid raises all of them. A pure period-32 sinusoid (fundamental only) is
    correspondingly diluted by 1/#harmonics (15 per axis for period 32, independent of image size).

    Range: real, ~0 (|score| ≲ 0.15) for natural/noise images, large positive (≳ 1) when a period-``period``
    grid is present; 0.0 for a constant image that is large enough. Non-square images are fine (each axis uses
    its own N). Lower is better (fewer grid artifacts).
    """
    if period < 2:
        raise ValueError(f"period must be >= 2, got {period}")
    y = luminance(image)
    if max(y.shape) < _GRID_MIN_PERIODS * period:
        return None
    power = _windowed_power(y)
    total = float(power.mean())
    if not total > 0.0:
        return 0.0
    eps = _GRID_EPS_REL * total
    logs: list[float] = []
    for spectrum in (power.sum(axis=0), power.sum(axis=1)):  # along x, along y
        n = spectrum.shape[0]
        if n < _GRID_MIN_PERIODS * period:
            continue
        logs.extend(_harmonic_log_ratios(spectrum[: n // 2 + 1], n, period, eps))
    if not logs:
        return None
    return float(np.mean(logs))


def _harmonic_log_ratios(half: np.ndarray, n: int, period: int, eps: float) -> list[float]:
    """log10(peak/neighbour) for each harmonic of ``period`` in a one-sided 1-D spectrum (bins 0..n//2)."""
    nyq = n // 2
    lo_ring, hi_ring = _GRID_RING
    harmonics = [k * n / period for k in range(1, period + 1) if k * n / period <= nyq + _GRID_CLEAR]
    out: list[float] = []
    for f in (h for h in harmonics if h < n / 2):
        c = round(f)
        peak_bins = [b for b in range(c - 1, c + 2) if 1 <= b <= nyq]
        ring_bins = [
            b
            for off in range(lo_ring, hi_ring + 1)
            for b in (c - off, c + off)
            if 1 <= b <= nyq and all(abs(b - h) >= _GRID_CLEAR for h in harmonics)
        ]
        if peak_bins and len(ring_bins) >= _GRID_MIN_NEIGHBOURS:
            peak = float(half[peak_bins].max())
            neigh = float(np.median(half[ring_bins]))
            out.append(math.log10((peak + eps) / (neigh + eps)))
    return out


def high_frequency_energy(image: ImageLike, cutoff: float = 0.25) -> float:
    """Fraction of luma spectral energy above a normalised radial frequency ``cutoff``.

    ``P = |FFT2(hann2d * (Y - mean(Y)))|²`` with Y the BT.601 luma (the Hann window suppresses the
    spurious high frequencies of the implicit periodic-boundary discontinuity). With fx, fy in cycles/px
    (``numpy.fft.fftfreq``, in [-0.5, 0.5)), the normalised radial frequency is
    ``r = sqrt(fx² + fy²) / 0.5`` (r = 1 at the axis Nyquist frequency, up to √2 in the corners), and

        hfe = Σ_{r > cutoff} P / Σ P

    Range [0, 1] (0.0 for a constant image). White noise gives ≈ 1 - π·cutoff²/4 (≈ 0.95 for 0.25),
    smooth images ≈ 0. Higher = more fine detail / noise (neither direction is "better" per se; for
    denoising-quality comparisons treat excess as noise).
    """
    if cutoff < 0:
        raise ValueError(f"cutoff must be >= 0, got {cutoff}")
    y = luminance(image)
    power = _windowed_power(y)
    total = float(power.sum())
    if not total > 0.0:
        return 0.0
    fy = np.fft.fftfreq(y.shape[0])[:, None]
    fx = np.fft.fftfreq(y.shape[1])[None, :]
    r = np.sqrt(fx * fx + fy * fy) / 0.5
    return float(np.clip(power[r > cutoff].sum() / total, 0.0, 1.0))


# --------------------------------------------------------------------------------------------- registry

Needs = Literal["image", "reference", "baseline", "prompt"]
MetricKind = Literal[
    "prompt_adherence", "style_similarity", "content_leak", "content_kept", "quality", "defect", "descriptive"
]
MetricModel = Literal["clip", "siglip", "csd", "dino", "image_reward", "hpsv2"]

# The question a metric answers for reference conditioning ("does the image take the reference's style while keeping
# the prompt?"). prompt_adherence: match to the prompt. style_similarity: closeness to the reference's style; it rises
# with conditioning strength. content_leak: the reference's content copied into the image (lower is better).
# content_kept: what is kept of the cell's text-only image; doing nothing scores best. Style trades off against prompt
# adherence and content kept, so none of these is ever ranked: a report shows them as a trade-off (Pareto front).
# defect / quality: the direction means better whatever the conditioning does, so these are the only ranked kinds.
# descriptive: no better direction.
RANKED_KINDS: tuple[MetricKind, ...] = ("defect", "quality")
STYLE_KINDS: tuple[MetricKind, ...] = ("style_similarity",)
CONTENT_KINDS: tuple[MetricKind, ...] = ("prompt_adherence", "content_kept")


class MetricInfo(NamedTuple):
    """Description of a registered metric: key, value range, direction, required inputs, what it measures (`kind`,
    see RANKED_KINDS), a one-line description for reports and the metric model it runs through (`model`: a role of
    the metric-model set, None for a model-free metric)."""

    name: str
    range: tuple[float, float]
    higher_is_better: bool | None  # None: no preferred direction (descriptive metric)
    needs: Needs
    kind: MetricKind
    measures: str
    model: MetricModel | None = None

    @property
    def ranked(self) -> bool:
        """Whether a report may rank runs by this metric: only kinds whose direction means better for the
        question whatever the conditioning strength, and only with a direction."""
        return self.kind in RANKED_KINDS and self.higher_is_better is not None


_COS = (-1.0, 1.0)
_ANY = (-math.inf, math.inf)

# Every metric, model-free and model-based, in report order. `needs`: "reference" = the reference image, "baseline" =
# the text-only image of the same cell (a sweep's baseline run, an eval's `text` method), "prompt" = the prompt.
METRICS: dict[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo(
            "clip_t",
            _COS,
            True,
            "prompt",
            "prompt_adherence",
            "CLIP-T: cosine of the CLIP image and prompt embeddings",
            "clip",
        ),
        MetricInfo(
            "siglip_t",
            _COS,
            True,
            "prompt",
            "prompt_adherence",
            "SigLIP-T: cosine of the SigLIP image and prompt embeddings",
            "siglip",
        ),
        MetricInfo(
            "csd",
            _COS,
            True,
            "reference",
            "style_similarity",
            "CSD: cosine of the style descriptors of image and reference",
            "csd",
        ),
        MetricInfo(
            "clip_i",
            _COS,
            True,
            "reference",
            "style_similarity",
            "CLIP-I: cosine of the CLIP image embeddings of image and reference",
            "clip",
        ),
        MetricInfo(
            "color_hist_similarity",
            (0.0, 1.0),
            True,
            "reference",
            "style_similarity",
            "colours shared with the reference image (rises with conditioning strength)",
        ),
        MetricInfo(
            "dino_leak",
            _COS,
            False,
            "reference",
            "content_leak",
            "DINOv2 (CLS) cosine to the reference: its content copied into the image",
            "dino",
        ),
        MetricInfo(
            "dino_kept",
            _COS,
            True,
            "baseline",
            "content_kept",
            "DINOv2 (CLS) cosine to the text-only image of the same cell (1 = unchanged)",
            "dino",
        ),
        MetricInfo(
            "ssim_to_baseline",
            _COS,
            True,
            "baseline",
            "content_kept",
            "structure kept from the text-only image of the same cell (1 = unchanged: doing nothing is best)",
        ),
        MetricInfo(
            "image_reward",
            _ANY,
            True,
            "prompt",
            "quality",
            "ImageReward human-preference score (when the package is usable)",
            "image_reward",
        ),
        MetricInfo(
            "hpsv2",
            _ANY,
            True,
            "prompt",
            "quality",
            "HPSv2 human-preference score (when the package is usable)",
            "hpsv2",
        ),
        MetricInfo(
            "grid_artifact_score",
            _ANY,
            False,
            "image",
            "defect",
            "32-px token-grid artefacts (≈ 0 clean; not measured below 128 px)",
        ),
        # More fine detail is not intrinsically better or worse: higher = more detail/noise.
        MetricInfo("high_frequency_energy", (0.0, 1.0), None, "image", "descriptive", "share of fine detail and noise"),
    )
}
IMAGE_METRICS: dict[str, MetricInfo] = {n: i for n, i in METRICS.items() if i.model is None}  # model-free


def compute_image_metrics(
    image: ImageLike,
    reference: ImageLike | None = None,
    baseline: ImageLike | None = None,
) -> dict[str, float | None]:
    """Compute every model-free metric (``IMAGE_METRICS``) whose inputs are present.

    Always: ``grid_artifact_score``, ``high_frequency_energy``; with ``reference``:
    ``color_hist_similarity`` (image vs reference); with ``baseline``: ``ssim_to_baseline``.
    Keys appear in registry order; a value is None where the metric is not measurable (``grid_artifact_score``
    of an image under 128 px).
    """
    img = to_array(image)
    ref = to_array(reference) if reference is not None else None
    base = to_array(baseline) if baseline is not None else None
    results: dict[str, float | None] = {}
    for name, info in IMAGE_METRICS.items():
        if info.needs == "reference" and ref is None:
            continue
        if info.needs == "baseline" and base is None:
            continue
        if name == "color_hist_similarity":
            assert ref is not None
            results[name] = color_histogram_similarity(img, ref)
        elif name == "ssim_to_baseline":
            assert base is not None
            results[name] = ssim(img, base)
        elif name == "grid_artifact_score":
            results[name] = grid_artifact_score(img)
        elif name == "high_frequency_energy":
            results[name] = high_frequency_energy(img)
    return results


def pareto_optimal(points: list[tuple[float, float]]) -> list[bool]:
    """Which points of a two-metric trade-off are Pareto-optimal, both coordinates better when higher.

    Point i is optimal iff no point j dominates it: x_j >= x_i and y_j >= y_i with at least one strict
    inequality. Equal points are all optimal (neither dominates the other). O(n²), fine for a sweep.
    """
    return [not any(xj >= xi and yj >= yi and (xj > xi or yj > yi) for xj, yj in points) for xi, yi in points]
