"""Image dependence: does a reference-conditioned image depend on the reference at all?

Two guards, both cheap (conditioning only, no DiT):

- `image_free_by_construction(vl)`: settings whose caption rows provably cannot depend on the image. They are
  refused before any model loads (generate, sweeps, the Python API); docs/methods.md §6.4 gives the proofs.
- `measure`: every other reference-conditioned image is built a second time with a fixed probe image in place of
  the reference (`probe_image`: seeded uniform noise of the reference's size, so token counts match) and the two
  caption rows are compared at every alpha the run uses. With `C_ref`, `C_probe` the caption rows and `T` the text
  rows (zero-padded to `C`'s row count when `C` has more rows, as `concat` does):

      relative change r(α) = ‖C_ref(α) − C_probe(α)‖_F / max(‖C_ref(α) − T‖_F, 1e-12)

  i.e. the share of the conditioning's departure from the text that changes when the image changes. The run is
  image-free when max_α r(α) ≤ `TOLERANCE` (1e-3). At α = 0 every blend returns `T`, so r = 0: an α-0 run is
  (truthfully) image-free.

The result is the record field `image_dependence`: `{"checked", "image_free", "relative_change", "tolerance",
"probe", "reason"}` (plus `per_alpha` when a schedule uses several alphas).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .condition import parse_layer_weights

TOLERANCE = 1e-3
PROBE_SEED = 20251111
_TINY = 1e-12

# Per-column statistics of V that a blend mode reads *and nothing else*: with those fixed, the blend cannot see
# the image. adain_per_dim reads V's per-column mean and std; gem_pool with p = 2 reads per-column mean(V²) and
# the sign of the per-column mean, both fixed by them (mean(V²) = σ² + μ²).
_MOMENT_ONLY_BLENDS = {
    "adain_per_dim": "adain_per_dim reads only V's per-column mean and std",
    "gem_pool": "gem_pool with p = 2 reads only V's per-column mean of squares (σ² + μ²) and the sign of its mean",
}


def image_free_by_construction(vl: Any) -> str | None:
    """Why settings `vl` (a `VLConfig`) give caption rows that cannot depend on the reference image, or None.

    Image-free by construction, for a reference image:
        per-dim moments fixed:  vl.normalize = per_dim, or hybrid with vl.hybrid_weight = 1; no vl.clip_sigma
        one layer:              vl.layers unset, or exactly one layer with a non-zero weight (a weighted sum of
                                two normalised layers has a column std that depends on their covariance)
        no adapter:             (a full-matrix adapter mixes columns; adapters also require vl.normalize none)
        a moment-only blend:    vl.blend = adain_per_dim, or gem_pool with p = 2
    Per-dim normalisation gives every column of V exactly the reference mean μ_ref_d and std σ_ref_d, whatever
    the image; a moment-only blend then reads nothing else of V.
    """
    if vl.normalize == "per_dim":
        fixed = "vl.normalize = per_dim"
    elif vl.normalize == "hybrid" and vl.hybrid_weight == 1.0:
        fixed = "vl.normalize = hybrid with vl.hybrid_weight = 1 (pure per-dim)"
    else:
        return None
    if vl.clip_sigma is not None or vl.adapter:
        return None
    if vl.layers and sum(w != 0 for w in parse_layer_weights(vl.layers).values()) != 1:
        return None
    if vl.blend not in _MOMENT_ONLY_BLENDS or (vl.blend == "gem_pool" and vl.blend_options.get("p", 3.0) != 2):
        return None
    return (
        f"{fixed} with vl.blend = {vl.blend} is image-free by construction: per-dim normalisation gives every VL "
        f"column the reference mean and std whatever the image, and {_MOMENT_ONLY_BLENDS[vl.blend]}; "
        f"use another blend (e.g. interpolate) or vl.normalize none or global"
    )


def probe_image(size: tuple[int, int], seed: int = PROBE_SEED) -> Image.Image:
    """The probe: uniform RGB noise of `size` (width, height), pixel values from numpy's PCG64 seeded `seed`."""
    w, h = size
    pixels = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def describe_probe(size: tuple[int, int], seed: int = PROBE_SEED) -> str:
    return f"uniform RGB noise {size[0]}x{size[1]}, numpy PCG64 seed {seed}"


def relative_change(c_ref: Tensor, c_probe: Tensor, text: Tensor) -> float:
    """‖C_ref − C_probe‖_F / max(‖C_ref − T‖_F, 1e-12), float32; `T` is zero-padded to `C_ref`'s row count when
    it has fewer rows (`concat`'s appended rows count in full). `C_ref` and `C_probe` must have the same shape."""
    c, p, t = c_ref.float(), c_probe.float(), text.float().to(c_ref.device)
    if t.shape[0] < c.shape[0]:
        t = torch.cat([t, t.new_zeros(c.shape[0] - t.shape[0], t.shape[1])])
    effect = (c - t[: c.shape[0]]).norm().item()
    return (c - p).norm().item() / max(effect, _TINY)


def measure(
    reference: Callable[[float], Tensor],
    probe: Callable[[float], Tensor],
    text: Tensor,
    alphas: Sequence[float],
    probe_description: str,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """The `image_dependence` record of caption rows `reference(α)` against `probe(α)` at every distinct α used."""

    def record(image_free: bool, change: float | None, reason: str | None) -> dict[str, Any]:
        return {
            "checked": True,
            "image_free": image_free,
            "relative_change": change,
            "tolerance": tolerance,
            "probe": probe_description,
            "reason": reason,
        }

    per_alpha: dict[float, float] = {}
    for a in dict.fromkeys(float(x) for x in alphas):
        c, p = reference(a), probe(a)
        if c.shape != p.shape:
            rows = f"the probe gives {p.shape[0]} caption rows, the reference {c.shape[0]}"
            return record(False, None, f"at alpha {a:g} {rows}: the row count depends on the image")
        per_alpha[a] = relative_change(c, p, text)
    worst = max(per_alpha.values())
    reason = None
    if all(a == 0 for a in per_alpha):
        reason = "alpha 0: every blend returns the text rows, nothing of the image reaches the DiT"
    elif worst <= tolerance:
        reason = (
            f"the caption rows change by {worst:.3g} (relative) when the reference is replaced by the probe, "
            f"within the tolerance {tolerance:g}"
        )
    out = record(worst <= tolerance, worst, reason)
    if len(per_alpha) > 1:
        out["per_alpha"] = {f"{a:g}": r for a, r in per_alpha.items()}
    return out


def not_checked(reason: str, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The `image_dependence` record of a run that was not checked, with why."""
    return {
        "checked": False,
        "image_free": None,
        "relative_change": None,
        "tolerance": tolerance,
        "probe": None,
        "reason": reason,
    }
