"""Assembly: a `Source` (`llm_dit.condition`) and the loaded `Components` in, `Conditioning` out.

The steps follow the components' stages, so `models.low_memory` can release each model once its work is done:
`encode_text` does everything the text encoder contributes to one image (T, T's attention-sink rows named by their
tokens, the negative rows for CFG, the reference statistics an extraction reads); `build_conditioning` then
extracts with the VL model (a reference or neutral image) or checks given rows, and blends. `image_dependence` is
the same assembly with a noise probe in place of the reference (`llm_dit.imagedep`). `refuse` rejects settings and
inputs that could not do what they say, before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image

from .blend import CAPTION_LIMIT, check_alpha, check_options, mode_options, replace_rows
from .components import Components
from .condition import (
    CaptionRows,
    Conditioning,
    Reference,
    Source,
    Steering,
    Text,
    VLRows,
    blend_conditioning,
    combine_layers,
    drop_sinks,
    extracts,
    find_sink_rows,
    parse_layer_weights,
    steer_conditioning,
)
from .config import Config, EncoderConfig, VLConfig
from .errors import UserError
from .imagedep import PROBE_SEED, describe_probe, image_free_by_construction, measure, not_checked, probe_image
from .numerics import check_rows, require_finite
from .schedule import parse_schedule
from .stats import ReferenceStats
from .text import EncodedPrompt
from .vl import VLEmbeddings, image_sha256

Stats = dict[int, ReferenceStats] | ReferenceStats


def refuse(config: Config, source: Source, alphas: list[float]) -> None:
    """Settings and inputs that cannot act as they say, refused before any model loads: a schedule with DiT
    injection, settings whose caption rows cannot depend on a reference image (`imagedep`), unknown blend options
    and alphas outside the blend's range."""
    v = config.vl
    if v.inject_layers and parse_schedule(v.alpha_schedule).kind != "constant":
        raise UserError("an alpha schedule and DiT block injection cannot be combined; choose one")
    if isinstance(source, Reference) and (reason := image_free_by_construction(v)):
        raise UserError(reason)
    if isinstance(source, Reference | VLRows):
        check_options(v.blend, [*v.blend_options, *(["neutral"] if v.blend == "style_delta" else [])])
        for a in set(alphas):
            check_alpha(v.blend, a)


def layer_weights(vl: VLConfig) -> dict[int, float]:
    """The VL layers an extraction combines and their weights: `vl.layers` when set, else `{vl.hidden_layer: 1}`."""
    return parse_layer_weights(vl.layers) if vl.layers else {vl.hidden_layer: 1.0}


def encode(components: Components, encoder: EncoderConfig, prompt: str) -> EncodedPrompt:
    """`prompt`'s caption rows T with the `encoder` settings (all but where it runs, its device and dtype)."""
    return components.text_encoder.encode(prompt, **encoder.model_dump(exclude={"device", "dtype"}))


def given_rows(rows: torch.Tensor, components: Components, label: str) -> torch.Tensor:
    """Rows given as they are (caption rows, VL rows, neutral rows): `[n, caption width]`, float, finite."""
    return check_rows(rows, label, width=components.caption_width, width_of="the DiT caption width")


def given_vl_rows(
    rows: torch.Tensor, components: Components, vl: VLConfig, label: str
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Given VL rows treated like extracted ones: checked (`given_rows`), float32, sink rows found and, with
    `vl.sink_rows = "exclude"`, dropped (`condition.drop_sinks`). Returns the rows and the sinks record."""
    return drop_sinks(given_rows(rows, components, label).float(), vl.sink_ratio, vl.sink_rows)


def extraction_stats(components: Components, vl: VLConfig) -> Stats | None:
    """The reference statistics an extraction with `vl` reads (normalisation or outlier masking), else None."""
    if vl.normalize == "none" and vl.outlier_masking == "none":
        return None
    return components.reference_stats(list(layer_weights(vl)), vl)


EXTRACTION_ARGUMENTS = {
    "token_mode",
    "max_pixels",
    "outlier_masking",
    "outlier_threshold",
    "system_prompt",
    "clip_sigma",
    "hybrid_weight",
    "sink_ratio",
    "sink_rows",
}
"""`vl` settings `VLEmbeddingExtractor.extract_layers` takes under their own names (`vl.normalize` is its
`normalization`, the layers and statistics come from `layer_weights` and `extraction_stats`)."""


def extract(
    components: Components, vl: VLConfig, image: Image.Image, prompt: str | None, stats: Stats | None
) -> tuple[torch.Tensor, dict[int, VLEmbeddings]]:
    """VL rows of `image` + `prompt` with the `vl` settings, layers combined by their weights (one forward pass);
    also each layer's extraction (spans, statistics, settings) for records. `stats`: `extraction_stats`."""
    weights = layer_weights(vl)
    settings = vl.model_dump(include=EXTRACTION_ARGUMENTS)
    extracted = components.vl.extract_layers(
        image, prompt, list(weights), normalization=vl.normalize, reference=stats, **settings
    )
    return combine_layers({layer: e.embeddings for layer, e in extracted.items()}, weights), extracted


@dataclass(frozen=True, eq=False)
class TextSide:
    """Everything the text encoder contributes to one image, done before the VL model runs (`encode_text`)."""

    encoded: EncodedPrompt
    sinks: torch.Tensor | None  # T's attention-sink rows; None when nothing is blended into T
    sinks_record: dict[str, Any]  # `ratio`, `rows` (vl.sink_rows) and `text`: T's sink rows with their tokens
    negative: torch.Tensor | None  # the empty prompt's rows, for CFG (generation.guidance > 0)
    stats: Stats | None  # the reference statistics the extraction reads (`extraction_stats`)


def encode_text(components: Components, config: Config, prompt: str, source: Source) -> TextSide:
    """The text encoder's whole share of one image conditioned by `source`: T, its sink rows (named by token while
    the tokenizer is at hand), the negative rows, and the statistics the extraction will read."""
    encoded = encode(components, config.encoder, prompt)
    sinks, record = None, {}
    if not isinstance(source, Text | CaptionRows):
        v, ids = config.vl, encoded.token_ids
        token = None
        if len(ids) == encoded.embeddings.shape[0]:  # rows are tokens (not resampled by a long-prompt mode)

            def token(position: int) -> str:
                return components.text_encoder.tokenizer.decode([ids[position]])

        sinks, found = find_sink_rows(encoded.embeddings, v.sink_ratio, v.sink_rows, "text", token)
        record = {"ratio": v.sink_ratio, "rows": v.sink_rows, "text": found}
    negative = encode(components, config.encoder, "").embeddings if config.generation.guidance > 0 else None
    stats = extraction_stats(components, config.vl) if extracts(source) else None
    return TextSide(encoded, sinks, record, negative, stats)


def build_conditioning(
    components: Components, config: Config, prompt: str, text: TextSide, source: Source
) -> Conditioning:
    """`Conditioning` of `source` on T (`text` from `encode_text`): T itself, the given caption rows, T steered
    along a direction, or T blended with V (see `blend_vl`)."""
    t, v = text.encoded.embeddings, config.vl
    match source:
        case Text():
            return Conditioning(t, source.kind)
        case CaptionRows(rows=rows):
            return Conditioning(given_rows(rows, components, "embeddings"), source.kind)
        case Steering(direction=direction):
            combine = steer_conditioning(t, direction, text.sinks, v.sink_rows)
            return Conditioning(t, source.kind, combine, {"sinks": dict(text.sinks_record)})
    return blend_vl(components, config, prompt, text, source)


def blend_vl(
    components: Components, config: Config, prompt: str, text: TextSide, source: Reference | VLRows
) -> Conditioning:
    """T blended with V by `vl.blend`: V extracted from the reference image or given (sink rows dropped), passed
    through `vl.adapter`, with the neutral extraction for `style_delta`; the record says what each step did."""
    t, v, width = text.encoded.embeddings, config.vl, components.caption_width
    sinks = dict(text.sinks_record)
    record: dict[str, Any] = {"blend": v.blend, "blend_options": v.blend_options, "sinks": sinks}
    if isinstance(source, VLRows):
        vl, sinks["vl"] = given_vl_rows(source.rows, components, v, "VL embeddings")
    else:
        if components.vl.hidden_size != width:
            raise UserError(
                f"the Qwen3-VL hidden size {components.vl.hidden_size} does not match the DiT caption width "
                f"{width}: these models cannot be combined"
            )
        vl, extracted = extract(components, v, source.image, prompt, text.stats)
        record["vl"] = {str(layer): e.metadata() for layer, e in extracted.items()}
    if v.adapter:
        adapter, record["adapter"] = components.adapter(v.adapter, config)  # its metadata, for the record
        with torch.no_grad():
            vl = require_finite(adapter(vl), f"adapter {v.adapter}")
    options = dict(v.blend_options)
    if "resample" in mode_options(v.blend):
        options.setdefault("resample", v.resample)
    if v.blend == "style_delta":
        if isinstance(source.neutral, Image.Image):
            options["neutral"], neutral_layers = extract(components, v, source.neutral, prompt, text.stats)
            record["neutral_vl"] = {str(layer): e.metadata() for layer, e in neutral_layers.items()}
            record["neutral"] = "image"
        else:
            options["neutral"], sinks["neutral"] = given_vl_rows(source.neutral, components, v, "neutral embeddings")
            record["neutral"] = "embeddings"
    record["resample"] = options.get("resample")  # None: this mode pairs no rows, so no alignment ran
    if v.blend == "replace":  # the rows the DiT receives, and whether they had to be pooled
        record["replace"] = replace_rows(int(vl.shape[0]), int(options.get("max_rows", CAPTION_LIMIT)))
    return Conditioning(t, source.kind, blend_conditioning(t, vl, v.blend, options, text.sinks, v.sink_rows), record)


def image_dependence(
    components: Components,
    config: Config,
    prompt: str,
    text: TextSide,
    source: Source,
    cond: Conditioning,
    alphas: list[float],
) -> dict[str, Any]:
    """The `image_dependence` record (`llm_dit.imagedep`): `cond` assembled once more with the probe image in place
    of the reference (same size, so the same token counts), compared at every alpha used."""
    if not isinstance(source, Reference):
        return not_checked("not conditioned on a reference image")
    if not config.vl.image_check:
        return not_checked("vl.image_check is off")
    size = source.image.size
    seed = PROBE_SEED
    if image_sha256(probe_image(size, seed)) == image_sha256(source.image):
        seed += 1  # the reference is the probe itself: use another noise image
    probe = build_conditioning(components, config, prompt, text, replace(source, image=probe_image(size, seed)))
    return measure(cond.at, probe.at, cond.text, alphas, describe_probe(size, seed))
