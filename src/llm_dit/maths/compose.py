"""Composition: each blend mode split into the part that reads V and the part that applies to T, so one value, a
`Style`, serves a single reference, a weighted set of references (negative weights included) and style files.

    style = extract_style(mode, V, options)            # what the mode transfers from V (no T needed)
    style = combine_styles([(style_a, w_a), ...])      # the weighted combination of that kind (formulas below)
    C     = apply_style(mode, T, style, alpha, options)

`blend(T, V, mode, alpha)` is `apply_style(mode, T, extract_style(mode, V), alpha)`, bit for bit, for every mode
(tests/maths/test_compose.py). Weights are used as given, never renormalised (like `vl.layers`): weights summing to 1
keep the scale of what is combined, and `1.5,-0.5` is a + 0.5·(a − b), an extrapolation away from b.

Kinds, what a style of that kind holds, and how weights w_k combine (A(·) = `blend.align` to T's row count):

| kind | modes | holds | combination |
|---|---|---|---|
| rows | interpolate, linear, slerp, attention_weighted | V_k | V̄ = Σ w_k·A(V_k), blended as V |
| rows | concat, replace | V_k | V̄ = Σ w_k·A_m(V_k), m = the most rows of any V_k |
| row_moments | adain | V_k | per row i: μ_i = Σ w_k·μ(A(V_k)_i), σ_i = max(Σ w_k·σ(A(V_k)_i), 0) |
| moments | adain_per_dim | μ_k, σ_k [1, D] | μ = Σ w_k·μ_k, σ = max(Σ w_k·σ_k, 0) |
| vector | gem_pool, svd_style | s_k [D] | s = Σ w_k·s_k, then T + α·(s − μ_T) |
| whitened | whiten | Z_k = (V_k − μ)·C_V^(−1/2) | R = Σ w_k·A(Z_k·C_T^(1/2) + μ_T) |
| gram | gram | V_k | target Gram G = Σ w_k·G(A(V_k)) (may be indefinite with w_k < 0: X is pushed away) |
| delta | style_delta | V_k, neutral N_k | Δ = Σ w_k·(A(V_k) − A(N_k)), then `blend_with_style_delta` |

Row-wise kinds keep every reference's rows with its weight and sum them only at apply time, once T's row count is
known; `moments` and `vector` styles are summed when combined (they do not depend on T). A negative weight moves the
combination away from that reference in what the mode transfers; a std that the weights would make negative is
clamped at 0 (the rows collapse to the mean in that dimension).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.errors import UserError, check_choice
from ..core.files import load_tensors
from ..core.numerics import check_rows
from .blend import (
    BLEND_MODES,
    EPS_NORM,
    BlendError,
    _weighted_sum,
    align,
    apply_mean_shift,
    apply_moments,
    apply_whitened,
    blend,
    blend_with_style_delta,
    check_alpha,
    check_options,
    compute_style_delta,
    gem_vector,
    gram_match,
    moments,
    svd_vector,
    whitened,
)

KINDS: dict[str, str] = {
    "interpolate": "rows",
    "linear": "rows",
    "slerp": "rows",
    "attention_weighted": "rows",
    "concat": "rows",
    "replace": "rows",
    "adain": "row_moments",
    "adain_per_dim": "moments",
    "gem_pool": "vector",
    "svd_style": "vector",
    "whiten": "whitened",
    "gram": "gram",
    "style_delta": "delta",
}
"""The kind of style each blend mode transfers (see the module docstring)."""

EXTRACTION_OPTIONS = {"gem_pool": ("p",), "svd_style": ("k",), "whiten": ("shrinkage",)}
"""Blend options read when a style is extracted (the style depends on them); every other option acts at apply."""

SUMMED_KINDS = ("moments", "vector")  # combined into one part when combined; the others keep weighted parts
UNALIGNED_MODES = ("concat", "replace")  # row modes that do not align V to T: parts align to the longest part


@dataclass(frozen=True, eq=False)
class Style:
    """What a blend mode transfers from one or several references: weighted `parts` (each a dict of tensors and
    its weight). `settings`: what it was extracted with (mode, extraction options, and, for files, the VL layer,
    token mode, model and width), compared before styles combine or apply. `sources`: where it came from (for
    files: each source image's path, SHA-256 and weight), never compared."""

    mode: str
    parts: tuple[tuple[dict[str, Tensor], float], ...]
    settings: dict[str, Any] = field(default_factory=dict)
    sources: tuple[dict[str, Any], ...] = ()

    @property
    def kind(self) -> str:
        return KINDS[self.mode]


def check_weights(
    weights: Sequence[object], n: int, what: str = "reference", name: str = "'reference_weights'"
) -> list[float]:
    """`weights` as floats: one per `what` (n of them), each finite, not all zero; else `UserError` naming them
    `name`."""
    if len(weights) != n:
        raise UserError(f"{name} has {len(weights)} weight(s) for {n} {what}(s): give one per {what}")
    out = []
    for w in weights:
        try:
            x = float(w)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UserError(f"{name}: bad weight {w!r} (expected a number)") from None
        if not math.isfinite(x):
            raise UserError(f"{name}: weight {w!r} is not finite")
        out.append(x)
    if all(x == 0 for x in out):
        raise UserError(f"{name} are all zero: nothing would be combined")
    return out


def equal_weights(n: int) -> list[float]:
    """The default weights of n references: 1/n each (so they sum to 1; one reference: exactly 1.0)."""
    return [1.0 / n] * n


def extract_style(mode: str, vl: Tensor, options: Mapping[str, Any] | None = None) -> Style:
    """The style `mode` transfers from VL rows `vl` [n, D] (float), with weight 1. `options`: the blend options;
    those of `EXTRACTION_OPTIONS` act here (defaults as in the mode), `neutral` (rows) is required by
    style_delta. The others are ignored here and act in `apply_style`."""
    check_choice(mode, BLEND_MODES, "blend mode", BlendError)
    options = dict(options or {})
    check_rows(vl, f"{mode}: vl", finite=False, error=BlendError)
    kind = KINDS[mode]
    v = vl.float()
    settings = {"mode": mode} | {k: options[k] for k in EXTRACTION_OPTIONS.get(mode, ()) if k in options}
    if kind == "moments":
        mean, std = moments(v, 0)
        return Style(mode, (({"mean": mean, "std": std}, 1.0),), settings)
    if kind == "vector":
        # validate as the mode does (p > 0, k >= 1) by a zero-strength call; alpha 0 returns before any maths
        blend(v[:1], v, mode, 0.0, **{k: options[k] for k in EXTRACTION_OPTIONS[mode] if k in options})
        vector = gem_vector(v, options.get("p", 3.0)) if mode == "gem_pool" else svd_vector(v, options.get("k", 8))
        return Style(mode, (({"vector": vector}, 1.0),), settings)
    if kind == "whitened":
        shrinkage = options.get("shrinkage", 0.1)
        blend(v[:1], v, "whiten", 0.0, shrinkage=shrinkage)  # the mode's checks (shrinkage, singular covariance)
        return Style(mode, (({"rows": whitened(v, shrinkage)}, 1.0),), settings)
    if kind == "delta":
        neutral = options.get("neutral")
        if neutral is None:
            raise BlendError("style_delta: option 'neutral' (tensor [n_n, D]) is required")
        check_rows(neutral, "style_delta: neutral", width=v.shape[1], width_of="the width of vl", error=BlendError)
        return Style(mode, (({"rows": vl, "neutral": neutral}, 1.0),), settings)
    return Style(mode, (({"rows": vl}, 1.0),), settings)


def _check_compatible(styles: Sequence[Style]) -> None:
    """Styles combine only when made alike: same kind of style and the same settings (layer, token mode, model,
    width, extraction options)."""
    first = styles[0]
    for other in styles[1:]:
        if other.kind != first.kind:
            raise UserError(f"styles of blend modes {first.mode!r} and {other.mode!r} cannot be combined")
        differ = sorted(k for k in {**first.settings, **other.settings} if k != "mode" and _differs(first, other, k))
        if differ:
            raise UserError(f"styles made with different {', '.join(differ)} cannot be combined")


def _differs(a: Style, b: Style, key: str) -> bool:
    return a.settings.get(key) != b.settings.get(key)


def combine_styles(weighted: Sequence[tuple[Style, float]]) -> Style:
    """The weighted combination of styles of one kind (formulas in the module docstring): `moments` and `vector`
    styles are summed now (Σ w_k·x_k); row-wise kinds keep each part with its weight multiplied by w_k and are
    summed at apply time. One style with weight 1 is returned as it is (bit for bit the single reference). The
    weights are checked here (`check_weights`); `combine_checked` takes weights checked already."""
    if not weighted:
        raise UserError("no styles to combine")
    weights = check_weights([w for _, w in weighted], len(weighted), "style", "style weights")
    return combine_checked([s for s, _ in weighted], weights)


def combine_checked(styles: Sequence[Style], weights: Sequence[float]) -> Style:
    """`combine_styles` of `styles` with `weights` already checked (a reference's, by the conditioning's own
    check), so no rule runs twice."""
    _check_compatible(styles)
    if len(styles) == 1 and weights[0] == 1:
        return styles[0]
    first = styles[0]
    parts = [(tensors, w * pw) for s, w in zip(styles, weights, strict=True) for tensors, pw in s.parts]
    if first.kind in SUMMED_KINDS:
        names = parts[0][0]
        summed = {k: _weighted_sum([p[k] for p, _ in parts], [w for _, w in parts]) for k in names}
        parts = [(summed, 1.0)]
    sources = tuple(
        src | {"weight": src.get("weight", 1.0) * w} for s, w in zip(styles, weights, strict=True) for src in s.sources
    )
    return Style(first.mode, tuple(parts), dict(first.settings), sources)


def _rows(style: Style, name: str = "rows") -> list[tuple[Tensor, float]]:
    return [(tensors[name], w) for tensors, w in style.parts]


def _single(style: Style) -> bool:
    return len(style.parts) == 1 and style.parts[0][1] == 1


def apply_style(
    mode: str, text: Tensor, style: Style, alpha: float, options: Mapping[str, Any] | None = None
) -> Tensor:
    """The caption rows of `style` blended into T by `mode` at `alpha` (`options`: the blend options; those that
    acted at extraction must match the style's). A single part of weight 1 of a row-wise kind is `blend` itself."""
    check_choice(mode, BLEND_MODES, "blend mode", BlendError)
    if KINDS[mode] != style.kind:
        raise UserError(f"a style of blend mode {style.mode!r} cannot be applied with blend mode {mode!r}")
    options = dict(options or {})
    check_options(mode, options)
    for k in EXTRACTION_OPTIONS.get(mode, ()):
        if k in options and options[k] != style.settings.get(k, options[k]):
            raise UserError(
                f"the style was extracted with {mode} option {k}={style.settings.get(k)}, not {options[k]}: "
                f"extract it again with these options"
            )
    apply_opts = {k: v for k, v in options.items() if k not in EXTRACTION_OPTIONS.get(mode, ()) and k != "neutral"}
    kind = style.kind
    scaled = kind == "delta" and apply_opts.get("scale_to_text", True)
    if scaled and len(style.parts) == 1 and abs(style.parts[0][1]) != 1:
        raise UserError(
            f"style_delta rescales the delta to T's scale (scale_to_text), so the weight {style.parts[0][1]:g} of a "
            f"single style acts only through its sign: set the strength with alpha (or blend option "
            f"scale_to_text=false)"
        )
    if kind in ("rows", "gram", "row_moments", "delta"):
        for tensors, _ in style.parts:  # the mode's own checks of T, V, options and alpha, for every part
            extra = {"neutral": tensors["neutral"]} if kind == "delta" else {}
            single = blend(text, tensors["rows"], mode, alpha if _single(style) else 0.0, **apply_opts, **extra)
        if _single(style):
            return single
    check_rows(text, f"{mode}: text", finite=False, error=BlendError)
    alpha = check_alpha(mode, alpha)
    if alpha == 0:
        return text.clone()
    resample = apply_opts.get("resample", "area")
    if kind == "moments":
        (tensors, _w), *_ = style.parts
        std = tensors["std"].clamp_min(0)
        return apply_moments(text, tensors["mean"], std, alpha, 0, mode)
    if kind == "vector":
        return apply_mean_shift(text, style.parts[0][0]["vector"], alpha, mode)
    if kind == "whitened":
        shrinkage = style.settings.get("shrinkage", options.get("shrinkage", 0.1))
        return apply_whitened(text, _rows(style), alpha, shrinkage, resample)
    n = text.shape[0]
    if kind == "rows":
        if mode in UNALIGNED_MODES:
            n = max(int(t["rows"].shape[0]) for t, _ in style.parts)
        rows = [align(v.to(text.device), n, resample) for v, _ in _rows(style)]
        return blend(text, _weighted_sum(rows, [w for _, w in style.parts]), mode, alpha, **apply_opts)
    if kind == "gram":
        iterations, lr = apply_opts.get("iterations", 50), apply_opts.get("lr", 1e-2)
        return gram_match(text, _rows(style), alpha, iterations, lr, resample)
    if kind == "row_moments":
        stats = [moments(align(v.to(text.device), n, resample), 1) for v, _ in _rows(style)]
        weights = [w for _, w in style.parts]
        mean = _weighted_sum([m for m, _ in stats], weights)
        std = _weighted_sum([s for _, s in stats], weights).clamp_min(0)
        return apply_moments(text, mean, std, alpha, 1, mode)
    # delta
    deltas = [compute_style_delta(t["rows"].to(text.device), t["neutral"], n, resample) for t, _ in style.parts]
    delta = _weighted_sum(deltas, [w for _, w in style.parts])
    return blend_with_style_delta(text, delta, alpha, apply_opts.get("scale_to_text", True))


STYLE_FORMAT = "llm-dit style"


def style_tensors(style: Style) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A style as safetensors content: tensors `"<part>.<name>"` (contiguous, float32) and metadata with the mode,
    kind, part weights and settings (`files.save_tensors` stores each value as JSON)."""
    tensors = {f"{i}.{k}": v.float().contiguous() for i, (p, _) in enumerate(style.parts) for k, v in p.items()}
    meta = {
        "format": STYLE_FORMAT,
        "mode": style.mode,
        "kind": style.kind,
        "weights": [w for _, w in style.parts],
        "settings": style.settings,
        "sources": list(style.sources),
    }
    return tensors, meta


def style_from_tensors(tensors: Mapping[str, Tensor], meta: Mapping[str, Any], label: str) -> Style:
    """The `Style` of `style_tensors`' content (metadata decoded); `UserError` naming `label` when it is not a
    style file."""
    if meta.get("format") != STYLE_FORMAT or meta.get("mode") not in KINDS or not isinstance(meta.get("weights"), list):
        raise UserError(f"{label} is not an llm-dit style file (make one with `llm-dit style extract`)")
    parts: list[dict[str, Tensor]] = [{} for _ in meta["weights"]]
    try:
        for key, value in tensors.items():
            index, _, name = key.partition(".")
            parts[int(index)][name] = value
    except (ValueError, IndexError):
        raise UserError(f"{label} is not an llm-dit style file (tensor {key!r})") from None
    weights = [float(w) for w in meta["weights"]]
    settings, sources = dict(meta.get("settings") or {}), tuple(meta.get("sources") or ())
    return Style(meta["mode"], tuple(zip(parts, weights, strict=True)), settings, sources)


def load_style(path: str | Path) -> Style:
    """A style file (`llm-dit style extract` / `combine`)."""
    return style_from_tensors(*load_tensors(path, "style file"), f"style file {path}")


def split_scale(item: str | Path) -> tuple[str, float]:
    """`"s.safetensors:0.5"` -> `("s.safetensors", 0.5)`; a file without `:SCALE` has scale 1."""
    path, sep, scale = str(item).rpartition(":")
    if not sep:
        return str(item), 1.0
    try:
        return path, float(scale)
    except ValueError:
        raise UserError(f"bad style '{item}': expected FILE[:SCALE], e.g. style.safetensors:0.5") from None


def load_styles(items: Sequence[str | Path]) -> tuple[list[tuple[Style, float]], list[str]]:
    """Style files `FILE[:SCALE]` (`split_scale`) with their scales, each file loaded once, and their paths."""
    styles = [split_scale(item) for item in items]
    loaded: dict[str, Style] = {}
    for path, _ in styles:
        loaded.setdefault(path, load_style(path))
    return [(loaded[p], scale) for p, scale in styles], [p for p, _ in styles]


def style_texts(named: Sequence[tuple[Style, float, str]], prompt: str) -> tuple[list[dict[str, Any]], str | None]:
    """Whether each style file `(style, scale, label)` was extracted with `prompt` as its VL text, as generation
    extracts a reference (the prompt after the image): only then can it equal conditioning on its image bit for
    bit. Per file `{"text", "text_matches_prompt"}`: the text its sources were extracted with (one text, or the list
    when they differ) and `True`/`False`, or `None` when it cannot matter (token mode `image_only`: the image rows
    precede the text in causal attention) or is unknown (a source without a recorded `text`, from an older
    llm-dit). Returns those and a note naming every file made with another text (None when none is), which is also
    issued as a warning."""
    fields, notes = [], []
    for style, _, label in named:
        texts = [src.get("text", ...) for src in style.sources]
        known = bool(texts) and ... not in texts
        shown = (texts[0] if len(set(texts)) == 1 else texts) if known else None
        matches = None if not known or style.settings.get("token_mode") == "image_only" else set(texts) == {prompt}
        fields.append({"text": shown, "text_matches_prompt": matches})
        if matches is False:
            said = " and ".join("no text" if t is None else repr(t) for t in dict.fromkeys(texts))
            notes.append(
                f"style file {label} was extracted with the text {said}, not this prompt {prompt!r}: its rows are "
                "not this prompt's, so it does not equal conditioning on its image (extract it with the prompt as "
                "its text, style extract --text, for that)"
            )
    note = "; ".join(notes) or None
    if note:
        warnings.warn(note, stacklevel=3)
    return fields, note


def linearity(base: Tensor, combined: Tensor, singles: Sequence[Tensor], weights: Sequence[float]) -> dict | None:
    """How far a combination is from the weighted sum of its parts' effects (the composability measure), in
    float64: effect E = X_w − B of the combination, sum of effects S = Σ_k w_k·(X_k − B) of each reference alone
    (B: the text rows, or the baseline image). Returns ‖S‖ (`sum_of_effects`), ⟨E, S⟩/‖S‖ (`projection`: equals
    ‖S‖ when linear), ‖E‖ (`effect`), ‖E − S‖/‖S‖ (`residual`: 0 when linear) and cos(E, S) (`cosine`); None when
    the shapes differ (e.g. concat of references of different lengths) or S is zero."""
    if any(x.shape != base.shape for x in (combined, *singles)):
        return None
    b = base.double()
    effect = combined.double() - b
    total = torch.stack([float(w) * (x.double() - b) for x, w in zip(singles, weights, strict=True)]).sum(0)
    norm = float(total.norm())
    if norm < EPS_NORM:
        return None
    effect_norm = float(effect.norm())
    projection = float((effect * total).sum()) / norm
    return {
        "sum_of_effects": norm,
        "projection": projection,
        "effect": effect_norm,
        "residual": float((effect - total).norm()) / norm,
        "cosine": projection / effect_norm if effect_norm > EPS_NORM else 0.0,
    }
