"""Image dependence: does a reference-conditioned image depend on the reference at all, and by how much?

Two guards, both cheap (conditioning only, no DiT forward pass):

- `image_free_by_construction(vl, made_with)`: settings whose caption rows provably cannot depend on the image.
  One rule for every source (`source_image_free`): a reference image (the run's settings), VL rows given from a
  file (the file's extraction settings with the run's blend) and style files (each file's extraction settings and
  mode). They are refused before any model loads (generate, sweeps, `style extract`, the Python API);
  docs/methods.md §6.4 gives the proofs.
- `measure`: every other reference-conditioned image is built a second time with a fixed probe image in place of
  the reference (`probe_image`: seeded uniform noise of the reference's size, so token counts match). Both are
  compared **after the DiT's caption RMSNorm** `f` (`CaptionNorm`: `cap_embedder[0]` of Z-Image's DiT, with the
  checkpoint's learned scale `g`), since that is what the DiT sees of them:

      f(x)_i = x_i · rsqrt(mean_d x_id² + eps) · g                       (per row i, float32)

  With `C_ref`, `C_probe` the caption rows and `T` the text rows (the shorter of `C` and `T` zero-padded to the
  other's row count; `f(0) = 0`, so missing or appended rows count in full):

      share(α) = ‖f(C_ref(α)) − f(C_probe(α))‖_F / max(‖f(C_ref(α)) − f(T)‖_F, 1e-12)
      size(α)  = ‖f(C_ref(α)) − f(T)‖_F / max(‖f(T)‖_F, 1e-12)

  `share`: how much of the conditioning's change changes when the image changes (the image's share of it);
  `size`: how large the conditioning's change is against the baseline's rows. The run has no image effect
  (`image_free: true`) when max_α share ≤ `SHARE_FLOOR` (5e-3) or max_α size ≤ `SIZE_FLOOR` (1e-2); `below`
  names the floor(s) met. At α = 0 every blend returns `T`: size = share = 0, image-free.

The result is the record field `image_dependence` (`RECORD_KEYS`); `relative_change` is `share` and `tolerance`
is `share_floor` (their names before the size measure); `per_alpha` (`{α: {"share", "size"}}`) when a schedule
uses several alphas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..core.errors import UserError
from .source import Reference, Styled, VLRows, parse_layer_weights

SIZE_FLOOR = 1e-2
"""A conditioning change of at most this size relative to the baseline's rows (after the caption RMSNorm): no
image effect. Measured on the tiny zoo (docs/methods.md §6.4, 81 runs): the 36 runs of size ≤ 0.01 are within one
level of 255 of their baseline (SSIM ≥ 0.99997), the first two-level difference is at 0.0164; α 1e-4 gives sizes
5e-5 to 9e-5, α 0.3 gives 0.21 to 0.39."""
SHARE_FLOOR = 5e-3
"""At most this share of the conditioning's change depends on the image: no image effect. The image's own part
then moves the rows by share × size ≤ 5e-3 × 1.5 = 0.0075 of the baseline's at the largest size measured on the
tiny zoo (1.5, α = 1): under `SIZE_FLOOR`, however large the change."""
TOLERANCE = SHARE_FLOOR  # the share floor's name before the size floor existed
PROBE_SEED = 20251111
NORM_KEY = "cap_embedder.0.weight"
"""The DiT's caption RMSNorm scale (`ZImageTransformer2DModel.cap_embedder[0].weight`) in diffusers' key layout."""
RECORD_KEYS = (
    "checked",
    "image_free",
    "share",
    "size",
    "relative_change",
    "share_floor",
    "size_floor",
    "tolerance",
    "below",
    "norm",
    "probe",
    "reason",
)
_TINY = 1e-12

# Per-column statistics of V that a blend mode reads *and nothing else*: with those fixed, the blend cannot see
# the image. adain_per_dim reads V's per-column mean and std; gem_pool with p = 2 reads per-column mean(V²) and
# the sign of the per-column mean, both fixed by them (mean(V²) = σ² + μ²).
_MOMENT_ONLY_BLENDS = {
    "adain_per_dim": "adain_per_dim reads only V's per-column mean and std",
    "gem_pool": "gem_pool with p = 2 reads only V's per-column mean of squares (σ² + μ²) and the sign of its mean",
}
_MADE_WITH = ("normalize", "hybrid_weight", "clip_sigma", "layers", "adapter", "blend", "p")


def image_free_by_construction(vl: Any, made_with: Mapping[str, Any] | None = None) -> str | None:
    """Why VL rows made and blended with settings `vl` (a `VLConfig`) give caption rows that cannot depend on the
    reference image, or None. `made_with` (`rows_made_with`, `style_made_with`) overrides what a file records of
    how its rows were made: `normalize`, `hybrid_weight`, `clip_sigma`, `layers` (`{layer: weight}`), `adapter`
    (bool), `blend`, `p` (gem_pool's exponent).

    Image-free by construction, for a reference image:
        per-dim moments fixed:  normalize = per_dim, or hybrid with hybrid_weight = 1; no clip_sigma
        one layer:              layers unset, or exactly one layer with a non-zero weight (a weighted sum of
                                two normalised layers has a column std that depends on their covariance)
        no adapter:             (a full-matrix adapter mixes columns; adapters also require vl.normalize none)
        a moment-only blend:    blend = adain_per_dim, or gem_pool with p = 2
    Per-dim normalisation gives every column of V exactly the reference mean μ_ref_d and std σ_ref_d, whatever
    the image; a moment-only blend then reads nothing else of V.
    """
    s = {
        "normalize": vl.normalize,
        "hybrid_weight": vl.hybrid_weight,
        "clip_sigma": vl.clip_sigma,
        "layers": parse_layer_weights(vl.layers) if vl.layers else {vl.hidden_layer: 1.0},
        "adapter": bool(vl.adapter),
        "blend": vl.blend,
        "p": vl.blend_options.get("p", 3.0),
    } | {k: v for k, v in (made_with or {}).items() if k in _MADE_WITH}
    if s["normalize"] == "per_dim":
        fixed = "vl.normalize = per_dim"
    elif s["normalize"] == "hybrid" and s["hybrid_weight"] == 1.0:
        fixed = "vl.normalize = hybrid with vl.hybrid_weight = 1 (pure per-dim)"
    else:
        return None
    if s["clip_sigma"] is not None or s["adapter"]:
        return None
    if sum(float(w) != 0 for w in s["layers"].values()) != 1:
        return None
    blend = s["blend"]
    if blend not in _MOMENT_ONLY_BLENDS or (blend == "gem_pool" and float(s["p"]) != 2):
        return None
    return (
        f"{fixed} with vl.blend = {blend} is image-free by construction: per-dim normalisation gives every VL "
        f"column the reference mean and std whatever the image, and {_MOMENT_ONLY_BLENDS[blend]}; "
        f"use another blend (e.g. interpolate) or vl.normalize none or global"
    )


def rows_made_with(extraction: Mapping[str, Any]) -> dict[str, Any]:
    """What the metadata of a VL-rows file (`llm-dit extract`: `settings`, `layer_weights`) records of how its
    rows were made, as `image_free_by_construction`'s `made_with`; the blend, its options and the adapter are the
    run's (they act when the rows are used)."""
    settings = extraction.get("settings") or {}
    out: dict[str, Any] = {}
    if "normalization" in settings:
        out["normalize"] = settings["normalization"]
    for key in ("hybrid_weight", "clip_sigma"):
        if key in settings:
            out[key] = settings[key]
    layers = extraction.get("layer_weights")
    if isinstance(layers, Mapping):
        out["layers"] = {int(k): float(w) for k, w in layers.items()}
    return out


def style_made_with(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What a style file's settings (`compose.Style.settings`) record of how its style was made, as
    `image_free_by_construction`'s `made_with`: the file's mode is the blend that read V. A file that does not
    record `clip_sigma` (made before it was recorded) counts as made without one."""
    out: dict[str, Any] = {"blend": settings.get("mode"), "clip_sigma": settings.get("clip_sigma")}
    out["adapter"] = bool(settings.get("adapter"))
    for key in ("normalize", "hybrid_weight", "p"):
        if key in settings:
            out[key] = settings[key]
    if isinstance(settings.get("layers"), Mapping):
        out["layers"] = {int(k): float(w) for k, w in settings["layers"].items()}
    return out


def source_image_free(vl: Any, source: Any) -> str | None:
    """`image_free_by_construction` for whatever VL rows condition a run, with the source named: a reference image
    (the run's settings), given VL rows whose extraction settings are known (`VLRows.extraction`), style files
    (each file's settings). None: not image-free by construction, or nothing to judge (text, caption rows,
    steering, VL rows of unknown origin)."""
    if isinstance(source, Reference):
        return image_free_by_construction(vl)
    if isinstance(source, VLRows) and source.extraction is not None:
        reason = image_free_by_construction(vl, rows_made_with(source.extraction))
        return None if reason is None else f"the given VL rows (as extracted) with this blend: {reason}"
    if isinstance(source, Styled):
        for style, _, label in source.named():
            if reason := image_free_by_construction(vl, style_made_with(style.settings)):
                return f"style file {label} (as extracted): {reason}"
    return None


def refuse_image_free(vl: Any, source: Any) -> None:
    """The rule: a source whose caption rows cannot depend on the image (`source_image_free`) is refused with the
    reason (`UserError`), before any model loads. Checked once per image made (`assemble.check_request`: generate,
    the Python API, every sweep run) and by `style extract`."""
    if reason := source_image_free(vl, source):
        raise UserError(reason)


@dataclass(frozen=True)
class CaptionNorm:
    """The RMSNorm Z-Image's DiT applies to caption rows first (`cap_embedder[0]`, diffusers' `RMSNorm`):
    `f(x)_i = x_i · rsqrt(mean_d x_id² + eps) · g`, in float32. `weight`: `g` `[D]` read from the checkpoint (None:
    unit scale, the fallback when it could not be read); `source`: where `g` came from, or why the fallback."""

    weight: Tensor | None
    eps: float
    source: str

    def __call__(self, rows: Tensor) -> Tensor:
        x = rows.float()
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y if self.weight is None else y * self.weight.to(device=y.device, dtype=torch.float32)

    def record(self) -> dict[str, Any]:
        return {"eps": self.eps, "weight": self.source}


UNIT_NORM = CaptionNorm(None, 1e-5, "unit scale (no DiT checkpoint given)")


def probe_image(size: tuple[int, int], seed: int = PROBE_SEED) -> Image.Image:
    """The probe: uniform RGB noise of `size` (width, height), pixel values from numpy's PCG64 seeded `seed`."""
    w, h = size
    pixels = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def describe_probe(size: tuple[int, int], seed: int = PROBE_SEED) -> str:
    return f"uniform RGB noise {size[0]}x{size[1]}, numpy PCG64 seed {seed}"


def _padded(x: Tensor, rows: int) -> Tensor:
    return x if x.shape[0] >= rows else torch.cat([x, x.new_zeros(rows - x.shape[0], x.shape[1])])


def share_and_size(
    c_ref: Tensor, c_probe: Tensor | None, text: Tensor, norm: Callable[[Tensor], Tensor] = UNIT_NORM
) -> tuple[float | None, float]:
    """`(share, size)` of the module docstring, float32, after `norm`; the shorter of `C_ref` and `T` is
    zero-padded to the other's rows. `c_probe` None (or of another shape than `C_ref`): share None."""
    c = norm(c_ref)
    t = norm(text.to(c_ref.device))
    n = max(c.shape[0], t.shape[0])
    c, t = _padded(c, n), _padded(t, n)
    effect = (c - t).norm().item()
    size = effect / max(t.norm().item(), _TINY)
    if c_probe is None or c_probe.shape != c_ref.shape:
        return None, size
    return (c - _padded(norm(c_probe), n)).norm().item() / max(effect, _TINY), size


def measure(
    reference: Callable[[float], Tensor],
    probe: Callable[[float], Tensor],
    text: Tensor,
    alphas: Sequence[float],
    probe_description: str,
    norm: CaptionNorm = UNIT_NORM,
    share_floor: float = SHARE_FLOOR,
    size_floor: float = SIZE_FLOOR,
) -> dict[str, Any]:
    """The `image_dependence` record of caption rows `reference(α)` against `probe(α)` at every distinct α used,
    both seen through the DiT's caption norm `norm`."""
    per_alpha: dict[float, tuple[float | None, float]] = {}
    mismatch = None
    for a in dict.fromkeys(float(x) for x in alphas):
        c, p = reference(a), probe(a)
        if c.shape != p.shape and mismatch is None:
            mismatch = f"at alpha {a:g} the probe gives {p.shape[0]} caption rows, the reference {c.shape[0]}"
        per_alpha[a] = share_and_size(c, p, text, norm)
    size = max(s for _, s in per_alpha.values())
    shares = [r for r, _ in per_alpha.values() if r is not None]
    share = None if mismatch else max(shares)
    below = []
    if size <= size_floor:
        below.append("size")
    if share is not None and share <= share_floor:
        below.append("share")
    reason = None
    if all(a == 0 for a in per_alpha):
        reason = "alpha 0: every blend returns the text rows, nothing of the image reaches the DiT"
    elif "size" in below:
        reason = (
            f"the conditioning changes the caption rows the DiT sees by {size:.3g} of the baseline's (size), at or "
            f"below the size floor {size_floor:g}: too small a change to show in the image"
        )
    elif "share" in below:
        reason = (
            f"the caption rows the DiT sees change by {share:.3g} of the conditioning's change (share) when the "
            f"reference is replaced by the probe, at or below the share floor {share_floor:g}"
        )
    elif mismatch:
        reason = f"{mismatch}: the row count depends on the image"
    out = {
        "checked": True,
        "image_free": bool(below),
        "share": share,
        "size": size,
        "relative_change": share,
        "share_floor": share_floor,
        "size_floor": size_floor,
        "tolerance": share_floor,
        "below": below,
        "norm": norm.record(),
        "probe": probe_description,
        "reason": reason,
    }
    if len(per_alpha) > 1:
        out["per_alpha"] = {f"{a:g}": {"share": r, "size": s} for a, (r, s) in per_alpha.items()}
    return out


def not_checked(reason: str) -> dict[str, Any]:
    """The `image_dependence` record of a run that was not checked, with why."""
    return {key: None for key in RECORD_KEYS} | {
        "checked": False,
        "share_floor": SHARE_FLOOR,
        "size_floor": SIZE_FLOOR,
        "tolerance": SHARE_FLOOR,
        "below": [],
        "reason": reason,
    }
