"""Conditioning: the caption rows the DiT sees, made from text rows T and Qwen3-VL rows V.

What conditions an image is one typed value, a `Source`: `Text()` (T alone), `Reference(image)` (V extracted from a
reference image), `VLRows(rows)` (V given), `Steering(direction)` (T moved along a direction) or `CaptionRows(rows)`
(the caption rows themselves). `generation.assemble` turns a source into `Conditioning` with the loaded models; this
module holds only the data and the maths, so it imports no model.

`Conditioning.at(alpha)` is the one function of alpha that generation, alpha schedules and DiT injection all
evaluate, so every path blends with exactly the same mode, options and inputs.

Attention sinks are handled here, in one place, so no blend mode has to know about them: with `vl.sink_rows =
"exclude"` a blend (or a steering step) sees only T's content rows and T's sink rows are put back bit for bit
(`keep_sink_rows`); modes that do not write into T's rows (`WHOLE_TEXT_MODES`) get T whole. V's sink rows are
dropped before the blend (`drop_sinks`, or at extraction).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image

from ..core.errors import UserError
from ..maths.compose import Style, apply_style, check_weights, equal_weights
from ..maths.sinks import describe_sinks, find_sinks
from ..maths.steer import apply_direction

WHOLE_TEXT_MODES = ("concat", "replace")
"""Blend modes that write nothing into T's rows (`concat` copies T and appends V; `replace` gives the DiT V
itself): they get T whole, sink rows included, and only V's content rows."""


@dataclass(frozen=True, eq=False)
class Text:
    """Text-only conditioning: the caption rows are T at every alpha."""

    kind: ClassVar[str] = "text"


@dataclass(frozen=True, eq=False)
class Reference:
    """V extracted from `image` with the `vl` settings, blended into T. `image` may be several images: each is
    extracted and their styles combined by `weights` (default 1/n each; used as given, negative ones allowed;
    `llm_dit.maths.compose`). `neutral` (an image or VL rows) is the unstyled extraction `vl.blend = "style_delta"`
    subtracts (from every reference); no other blend takes one."""

    image: Image.Image | Sequence[Image.Image]
    neutral: Image.Image | torch.Tensor | None = None
    weights: Sequence[float] | None = None
    kind: ClassVar[str] = "reference"

    @property
    def images(self) -> tuple[Image.Image, ...]:
        """The reference images (one or several)."""
        return (self.image,) if isinstance(self.image, Image.Image) else tuple(self.image)

    @property
    def weighting(self) -> list[float]:
        """Each image's weight: `weights` as floats, else 1/n each (checked by `check_reference_weights`)."""
        return equal_weights(len(self.images)) if self.weights is None else [float(w) for w in self.weights]


@dataclass(frozen=True, eq=False)
class VLRows:
    """V given as rows `[n, D]` (e.g. from `llm-dit extract`): no extraction runs. `neutral` as for `Reference`.
    `extraction`: the metadata of the file the rows came from (its `settings`, `layer_weights`), when known: what
    `imagedep.source_image_free` judges them by."""

    rows: torch.Tensor
    neutral: Image.Image | torch.Tensor | None = None
    extraction: Mapping[str, Any] | None = None
    kind: ClassVar[str] = "vl_embeddings"


@dataclass(frozen=True, eq=False)
class Styled:
    """Style files (`llm-dit style extract` / `combine`) applied with their scales: `styles` = [(style, scale)],
    combined by `compose.combine_styles` and applied by `vl.blend` (which must be the files' blend kind)."""

    styles: Sequence[tuple[Style, float]]
    labels: Sequence[str] = ()  # the files, for records and errors
    kind: ClassVar[str] = "style"

    def named(self) -> list[tuple[Style, float, str]]:
        """Each style with its scale and label (default `#1`, `#2`, ...)."""
        labels = list(self.labels) or [f"#{i + 1}" for i in range(len(self.styles))]
        return [(style, scale, label) for (style, scale), label in zip(self.styles, labels, strict=True)]


@dataclass(frozen=True, eq=False)
class Steering:
    """T + α·σ·d̂ along a unit `direction` `[D]` (`llm_dit.maths.steer`)."""

    direction: torch.Tensor
    kind: ClassVar[str] = "steer"


@dataclass(frozen=True, eq=False)
class CaptionRows:
    """The caption rows `[n, D]` themselves, used as they are (e.g. from `llm-dit encode`)."""

    rows: torch.Tensor
    kind: ClassVar[str] = "embeddings"


Source = Text | Reference | VLRows | Styled | Steering | CaptionRows
"""What conditions one image: exactly one of these, so no two inputs can compete."""

_NEUTRAL_ALONE = (
    "a neutral extraction only acts on a reference image or VL embeddings (with vl.blend 'style_delta'); "
    "this conditioning has neither: remove it"
)


def as_source(source: Source | Image.Image | None) -> Source:
    """`None` -> `Text()`, a PIL image -> `Reference(image)`, a source as it is."""
    if source is None:
        return Text()
    return Reference(source) if isinstance(source, Image.Image) else source


def source_of(
    *,
    reference: Image.Image | Sequence[Image.Image] | None = None,
    weights: Sequence[float] | None = None,
    vl_rows: torch.Tensor | None = None,
    caption_rows: torch.Tensor | None = None,
    direction: torch.Tensor | None = None,
    neutral: Image.Image | torch.Tensor | None = None,
    styles: Styled | None = None,
    vl_extraction: Mapping[str, Any] | None = None,
) -> Source:
    """The one source of inputs that arrive as optional values (command-line files): at most one of them, and
    `neutral` only with a reference image or VL rows. `reference` may be several images, combined by `weights`.
    `vl_extraction`: the metadata of the file `vl_rows` came from (`VLRows.extraction`)."""
    made = [
        source
        for source in (
            None if reference is None else Reference(reference, neutral, weights),
            None if vl_rows is None else VLRows(vl_rows, neutral, vl_extraction),
            None if caption_rows is None else CaptionRows(caption_rows),
            None if direction is None else Steering(direction),
            styles,
        )
        if source is not None
    ]
    if len(made) > 1:
        raise UserError("give one of: reference images, VL embeddings, embeddings, a steering direction, style files")
    source = made[0] if made else Text()
    if neutral is not None and not isinstance(source, Reference | VLRows):
        raise UserError(_NEUTRAL_ALONE)
    return source


def neutral_of(source: Source) -> Image.Image | torch.Tensor | None:
    """The neutral extraction `source` carries (only `Reference` and `VLRows` can carry one)."""
    return source.neutral if isinstance(source, Reference | VLRows) else None


def extracts(source: Source) -> bool:
    """Does `source` run a Qwen3-VL extraction (a reference image, or a neutral image)?"""
    return isinstance(source, Reference) or isinstance(neutral_of(source), Image.Image)


def check_neutral(blend: str, source: Source) -> None:
    """A neutral extraction acts only in `style_delta` on VL rows (a reference image or VL rows), and that mode
    needs one: refuse any other combination, before a model loads, rather than ignore the input (a neutral without
    VL rows cannot be expressed: only `Reference` and `VLRows` carry one). The one rule and wording of style_delta's
    neutral: `generate`, the Python API, sweeps (`assemble.check_source`) and `style extract` all refuse through it."""
    neutral = neutral_of(source) is not None
    if neutral and blend != "style_delta":
        raise UserError(
            f"a neutral extraction only acts with vl.blend 'style_delta' (vl.blend is '{blend}'): remove it or "
            f"set vl.blend = 'style_delta'"
        )
    if isinstance(source, Reference | VLRows) and blend == "style_delta" and not neutral:
        raise UserError(
            "vl.blend 'style_delta' needs a neutral extraction (the `neutral` input: a neutral image or neutral "
            "embeddings)"
        )


def check_reference_weights(reference: Reference) -> None:
    """The rule of a reference's weights: at least one image, and `weights` (when given) one finite number per
    image, not all zero (`compose.check_weights`). Checked once per image made (`assemble.check_source`), before
    any model loads; `weighting` then reads them as they are."""
    n = len(reference.images)
    if n == 0:
        raise UserError("a reference needs at least one image")
    if reference.weights is not None:
        check_weights(list(reference.weights), n)


def parse_layer_weights(spec: str) -> dict[int, float]:
    """`"-6:0.7,-16:0.3"` -> `{-6: 0.7, -16: 0.3}`; a bare layer has weight 1 (`"-6"` -> `{-6: 1.0}`)."""
    out: dict[int, float] = {}
    for part in spec.split(","):
        layer, _, weight = part.strip().partition(":")
        try:
            out[int(layer)] = float(weight) if weight else 1.0
        except ValueError:
            raise UserError(f"bad layer weights '{spec}': expected LAYER[:WEIGHT],... e.g. -6:0.7,-16:0.3") from None
    if not out:
        raise UserError(f"bad layer weights '{spec}': no layers")
    return out


def combine_layers(rows: dict[int, torch.Tensor], weights: dict[int, float]) -> torch.Tensor:
    """`Σ_l w_l · V_l` over layers (all `[n, D]`, same rows), float32. Weights are used as given (not
    renormalised), so `-6:1.0` is exactly layer -6 and `-6:0.5,-8:0.5` is the mean of the two."""
    return torch.stack([w * rows[layer].float() for layer, w in weights.items()]).sum(0)


Combine = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass
class Conditioning:
    """T plus whatever is blended into it. `combine(T, alpha)` gives the caption rows at `alpha`; `None` means
    plain text conditioning (the rows are T at every alpha)."""

    text: torch.Tensor
    source: str  # text | reference | vl_embeddings | embeddings | steer
    combine: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    negative: Conditioning | None = None  # CFG's negative conditioning, when built from a reference
    singles: tuple[Combine, ...] = ()  # several references: each one's conditioning alone (composability)
    weights: tuple[float, ...] = ()  # and their weights
    _memo: dict[float, torch.Tensor] = field(default_factory=dict, repr=False)

    def at(self, alpha: float) -> torch.Tensor:
        """Caption rows at `alpha` (memoised: a schedule revisiting an alpha costs nothing)."""
        if self.combine is None:
            return self.text
        if alpha not in self._memo:
            self._memo[alpha] = self.combine(self.text, alpha)
        return self._memo[alpha]


def find_sink_rows(
    rows: torch.Tensor, ratio: float, sink_rows: str, role: str, token: Callable[[int], str] | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Sink mask of one tensor (`sinks.find_sinks`, once) and its record: `sinks.describe_sinks` plus `action`,
    what is done with them: `unchanged` (T, exclude), `dropped` (V, exclude) or `blended` (include)."""
    mask = find_sinks(rows, ratio)
    action = "blended" if sink_rows == "include" else ("unchanged" if role == "text" else "dropped")
    return mask, describe_sinks(rows, mask, ratio, token=token) | {"action": action}


def drop_sinks(rows: torch.Tensor, ratio: float, sink_rows: str) -> tuple[torch.Tensor, dict[str, Any]]:
    """Given VL rows (`vl_embeddings`, neutral embeddings) treated like extracted ones: sink rows found once and,
    with `exclude`, dropped. Returns the rows the blend gets and the record."""
    mask, record = find_sink_rows(rows, ratio, sink_rows, "vl")
    return (rows[~mask] if sink_rows == "exclude" else rows), record


def keep_sink_rows(combine: Combine, sinks: torch.Tensor | None) -> Combine:
    """`combine` restricted to T's content rows, T's sink rows put back bit for bit:
    `C = T; C[content] = combine(T[content], α)`. Every statistic `combine` takes over T's rows (AdaIN moments,
    σ(T), covariances) is then a content-row statistic. No sinks: `combine` itself."""
    if sinks is None or not bool(sinks.any()):
        return combine

    def kept(t: torch.Tensor, alpha: float) -> torch.Tensor:
        content = ~sinks.to(t.device)
        out = t.clone()
        out[content] = combine(t[content], alpha)
        return out

    return kept


def blend_conditioning(
    text: torch.Tensor,
    style: Style,
    mode: str,
    options: dict[str, Any],
    text_sinks: torch.Tensor | None = None,
    sink_rows: str = "exclude",
) -> Combine:
    """`alpha -> apply_style(mode, T, style, alpha, options)` (for one reference of weight 1: `blend(T, V, mode,
    alpha, **options)` itself), checked once at alpha 0 so bad shapes or options fail here, not midway through
    denoising (`Generator.prepare` checks names and alphas earlier, before any model runs). With `sink_rows =
    "exclude"` and T's sink mask, the blend sees T's content rows only (`keep_sink_rows`; modes of
    `WHOLE_TEXT_MODES` get T whole); `include` blends every row, as before."""
    combine: Combine = lambda t, alpha: apply_style(mode, t, style, alpha, options)  # noqa: E731
    if sink_rows == "exclude" and mode not in WHOLE_TEXT_MODES:
        combine = keep_sink_rows(combine, text_sinks)
    combine(text, 0.0)
    return combine


def steer_conditioning(
    text: torch.Tensor, direction: torch.Tensor, text_sinks: torch.Tensor | None, sink_rows: str = "exclude"
) -> Combine:
    """`alpha -> T + α·σ·d̂` (`steer.apply_direction`) with σ over T's content rows: `exclude` steers only the
    content rows (sink rows unchanged); `include` steers every row."""
    if sink_rows == "exclude":
        return keep_sink_rows(lambda t, alpha: apply_direction(t, direction, alpha), text_sinks)
    content = None if text_sinks is None else ~text_sinks
    return lambda t, alpha: apply_direction(t, direction, alpha, content=content)
