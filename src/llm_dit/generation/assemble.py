"""Assembly: a `Source` (`llm_dit.conditioning.source`) and the loaded `Components` in, `Conditioning` out.

The steps follow the components' stages, so `models.low_memory` can release each model once its work is done:
`encode_text` does everything the text encoder contributes to one image (T, T's attention-sink rows named by their
tokens, the negative rows for CFG, the reference statistics an extraction reads); `build_conditioning` then
extracts with the VL model (a reference or neutral image) or checks given rows, and blends. `image_dependence` is
the same assembly with a noise probe in place of the reference (`conditioning.imagedep`). `check_request` rejects
settings and inputs that could not do what they say, before any model loads: the one check of one image, whose
`CheckedRequest` is then prepared without checking again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from PIL import Image

from ..conditioning.imagedep import PROBE_SEED, describe_probe, measure, not_checked, probe_image, refuse_image_free
from ..conditioning.source import (
    CaptionRows,
    Conditioning,
    Reference,
    Source,
    Steering,
    Styled,
    Text,
    VLRows,
    as_source,
    blend_conditioning,
    check_neutral,
    check_reference_weights,
    combine_layers,
    drop_sinks,
    extracts,
    find_sink_rows,
    neutral_of,
    parse_layer_weights,
    steer_conditioning,
)
from ..config.settings import Config, EncoderConfig, VLConfig
from ..core.errors import UserError
from ..core.files import sha256_file
from ..core.numerics import check_rows, require_finite
from ..maths.blend import CAPTION_LIMIT, check_alpha, check_options, mode_options, replace_rows
from ..maths.compose import KINDS, combine_checked, combine_styles, extract_style, style_texts
from ..maths.refstats import ReferenceStats
from ..maths.schedule import parse_schedule
from ..models.loading import model_identity
from ..models.text import EncodedPrompt
from ..models.vl import VLEmbeddings, image_sha256
from .components import Components, caption_width
from .render import denoising_steps

Stats = dict[int, ReferenceStats] | ReferenceStats


def check_source(config: Config, source: Source) -> None:
    """What a source must fit before it is assembled with `config`, refused before any model loads: a reference's
    weights (`source.check_reference_weights`), style_delta's neutral (`source.check_neutral`) and style files made
    with these settings (`check_styles`). What `Generator.condition` checks; part of `check_request`."""
    if isinstance(source, Reference):
        check_reference_weights(source)
    check_neutral(config.vl.blend, source)
    if isinstance(source, Styled):
        check_styles(config, source)


@dataclass(frozen=True, eq=False)
class CheckedRequest:
    """One image's inputs checked against its config by `check_request`, before any model loads: what
    `Generator.prepare_checked` prepares without checking anything again. `alphas`: the alpha of every denoising
    step diffusers runs (`step_alphas`)."""

    config: Config
    prompt: str
    source: Source
    init_image: Image.Image | None
    negative: Reference | None
    alphas: tuple[float, ...]


def check_request(
    config: Config,
    prompt: str,
    source: Source | Image.Image | None = None,
    *,
    init_image: Image.Image | None = None,
    negative: Reference | Image.Image | None = None,
) -> CheckedRequest:
    """`prompt` conditioned by `source` (a PIL image: `Reference(image)`; None: `Text()`) with `config`, checked:
    the one place each rule of one image runs (`Generator.prepare` for the Python API, `runner.check_run` for each
    sweep run). Refuses settings and inputs that cannot act as they say: the source's fit (`check_source`), a
    negative reference (an image: blended with the source's neutral) without CFG or without VL rows to blend it
    with, a schedule with DiT injection, settings whose caption rows cannot depend on the image
    (`imagedep.refuse_image_free`: a reference, given VL rows as their file says they were extracted, style files),
    unknown blend options and alphas outside the blend's range."""
    source, v = as_source(source), config.vl
    if isinstance(negative, Image.Image):
        negative = Reference(negative, neutral_of(source))
    alphas = step_alphas(config, init_image is not None)
    check_source(config, source)
    if negative is not None:
        if config.generation.guidance <= 0:
            raise UserError(
                "a negative image builds CFG's negative rows, and 'generation.guidance' is 0 (CFG off): set a "
                "guidance > 0 or leave the negative image out"
            )
        if not isinstance(source, Reference | VLRows):
            raise UserError(
                "a negative image is blended with the vl settings of a reference conditioning: give a reference "
                "image (or VL embeddings) too"
            )
        check_source(config, negative)
    if v.inject_layers and parse_schedule(v.alpha_schedule).kind != "constant":
        raise UserError("an alpha schedule and DiT block injection cannot be combined; choose one")
    refuse_image_free(v, source)
    if isinstance(source, Reference | VLRows | Styled):
        check_options(v.blend, [*v.blend_options, *(["neutral"] if v.blend == "style_delta" else [])])
        for a in set(alphas):
            check_alpha(v.blend, a)
    return CheckedRequest(config, prompt, source, init_image, negative, tuple(alphas))


def step_alphas(config: Config, img2img: bool) -> list[float]:
    """The alpha of every denoising step diffusers runs for one image (`vl.alpha_schedule` over the steps it runs:
    fewer with an init image, `render.denoising_steps`): what `check_request` checks and the schedule callback
    applies."""
    steps = denoising_steps(config.generation, img2img)
    return parse_schedule(config.vl.alpha_schedule).alphas(steps, config.vl.alpha)


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


def probe_key(vl: VLConfig, image: Image.Image, prompt: str | None) -> tuple[Any, ...]:
    """What an extraction's output (`extract`) depends on besides the loaded models, as a memo key
    (`Components.probe_rows`): the image's SHA-256 (pixels and size), the text, the layers and their weights,
    `vl.normalize` and every `EXTRACTION_ARGUMENTS` setting, and where the statistics come from
    (`vl.reference_stats`; else the text encoder's at these layers and `vl.sink_ratio`, a key member already).
    Not in it, since they act after extraction: alpha, its schedule, the blend and its options, the adapter."""
    settings = vl.model_dump(include=EXTRACTION_ARGUMENTS)
    return (
        image_sha256(image),
        prompt,
        tuple(sorted(layer_weights(vl).items())),
        vl.normalize,
        vl.reference_stats,
        tuple(sorted((k, repr(value)) for k, value in settings.items())),
    )


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
        case Styled():
            return style_conditioning(config, text, source, prompt)
    return blend_vl(components, config, prompt, text, source)


def blend_vl(
    components: Components,
    config: Config,
    prompt: str,
    text: TextSide,
    source: Reference | VLRows,
    *,
    probe: bool = False,
) -> Conditioning:
    """T blended with V by `vl.blend`: V extracted from each reference image (or given, sink rows dropped), passed
    through `vl.adapter`, with the neutral extraction for `style_delta`; each reference's style (`compose`) combined
    by its weight. The record says what each step did and lists every reference with its hash and weight.
    `probe`: the images are the image-dependence probe's, their extractions served by `Components.probe_rows`
    (`probe_key`): the same rows, made once per process instead of once per run."""
    t, v, width = text.encoded.embeddings, config.vl, components.caption_width
    sinks = dict(text.sinks_record)
    record: dict[str, Any] = {"blend": v.blend, "blend_options": v.blend_options, "sinks": sinks}
    if isinstance(source, VLRows):
        given, sinks["vl"] = given_vl_rows(source.rows, components, v, "VL embeddings")
        rows, weights = [given], [1.0]
    else:
        if components.vl.hidden_size != width:
            raise UserError(
                f"the Qwen3-VL hidden size {components.vl.hidden_size} does not match the DiT caption width "
                f"{width}: these models cannot be combined"
            )
        weights, rows, references = source.weighting, [], []
        for image, weight in zip(source.images, weights, strict=True):
            if probe:
                make = partial(extract, components, v, image, prompt, text.stats)
                vl, extracted = components.probe_rows(probe_key(v, image, prompt), make)
            else:
                vl, extracted = extract(components, v, image, prompt, text.stats)
            rows.append(vl)
            meta = {str(layer): e.metadata() for layer, e in extracted.items()}
            references.append({"sha256": image_sha256(image), "weight": weight, "vl": meta})
        record["references"] = references
        if len(references) == 1:
            record["vl"] = references[0]["vl"]
    rows, adapter = adapted(components, config, rows)
    if adapter is not None:
        record["adapter"] = adapter
    options = blend_options(v)
    extraction = dict(options)
    if v.blend == "style_delta":
        if isinstance(source.neutral, Image.Image):
            extraction["neutral"], neutral_layers = extract(components, v, source.neutral, prompt, text.stats)
            record["neutral_vl"] = {str(layer): e.metadata() for layer, e in neutral_layers.items()}
            record["neutral"] = "image"
        else:
            extraction["neutral"], sinks["neutral"] = given_vl_rows(source.neutral, components, v, "neutral embeddings")
            record["neutral"] = "embeddings"
    record["resample"] = options.get("resample")  # None: this mode pairs no rows, so no alignment ran
    if v.blend == "replace":  # the rows the DiT receives, and whether they had to be pooled
        n_v = max(int(vl.shape[0]) for vl in rows)
        record["replace"] = replace_rows(n_v, int(options.get("max_rows", CAPTION_LIMIT)))
    styles = [extract_style(v.blend, vl, extraction) for vl in rows]
    style = combine_checked(styles, weights)
    cond = Conditioning(t, source.kind, blend_conditioning(t, style, v.blend, options, text.sinks, v.sink_rows), record)
    if len(styles) > 1:  # each reference alone, for the composability measure (`compose.linearity`)
        cond.singles = tuple(blend_conditioning(t, s, v.blend, options, text.sinks, v.sink_rows) for s in styles)
        cond.weights = tuple(weights)
    return cond


def adapted(
    components: Components, config: Config, rows: list[torch.Tensor]
) -> tuple[list[torch.Tensor], dict[str, Any] | None]:
    """VL rows passed through `vl.adapter` (none set: as they are), and the adapter's metadata for the record."""
    v = config.vl
    if not v.adapter:
        return rows, None
    adapter, meta = components.adapter(v.adapter, config)
    with torch.no_grad():
        return [require_finite(adapter(vl), f"adapter {v.adapter}") for vl in rows], meta


def blend_options(v: VLConfig) -> dict[str, Any]:
    """`vl.blend_options`, with `vl.resample` for a mode that aligns rows (unless the options set it)."""
    options = dict(v.blend_options)
    if "resample" in mode_options(v.blend):
        options.setdefault("resample", v.resample)
    return options


STYLE_SETTINGS = ("layers", "token_mode", "normalize", "model", "width", "adapter")
"""What a style file depends on beyond its blend kind and extraction options (`style_settings`)."""


def style_settings(config: Config) -> dict[str, Any]:
    """The settings a style made with `config` carries and is checked against when combined or applied: the VL
    layers and weights, token mode, normalisation, the VL model's fingerprint, the width of its rows (the DiT
    caption width, read from `models.zimage`'s config) and the adapter file's SHA-256 (None: no adapter). With
    per-dim or hybrid normalisation also `clip_sigma` (and `hybrid_weight` for hybrid): recorded for
    `imagedep.style_made_with`, not compared when applied."""
    v = config.vl
    settings = {
        "layers": {str(layer): w for layer, w in layer_weights(v).items()},
        "token_mode": v.token_mode,
        "normalize": v.normalize,
        "model": model_identity(config.models.vl)["fingerprint"],
        "width": caption_width(config.models.zimage),
        "adapter": sha256_file(v.adapter) if v.adapter else None,
    }
    if v.normalize in ("per_dim", "hybrid"):
        settings["clip_sigma"] = v.clip_sigma
    if v.normalize == "hybrid":
        settings["hybrid_weight"] = v.hybrid_weight
    return settings


def check_styles(config: Config, source: Styled) -> None:
    """Refuse, before any model loads, style files that do not fit these settings: another blend kind, or another
    layer, token mode, normalisation, model, width or adapter (`STYLE_SETTINGS`)."""
    blend, expected = config.vl.blend, style_settings(config)
    for style, _, label in source.named():
        if KINDS[blend] != style.kind:
            raise UserError(
                f"style file {label} holds a style of blend mode '{style.mode}', which vl.blend '{blend}' cannot "
                f"apply: use "
                f"vl.blend '{style.mode}' or extract the style again"
            )
        for key in STYLE_SETTINGS:
            if style.settings.get(key) != expected[key]:
                raise UserError(
                    f"style file {label} was made with {key} {style.settings.get(key)!r}, these settings give "
                    f"{expected[key]!r}: extract it again with these settings"
                )


def style_conditioning(config: Config, text: TextSide, source: Styled, prompt: str = "") -> Conditioning:
    """T blended by `vl.blend` with the combination of the style files at their scales (checked: `check_styles`); the
    record notes a file extracted with another text than `prompt` (`compose.style_texts`)."""
    t, v = text.encoded.embeddings, config.vl
    options = blend_options(v)
    style = combine_styles(list(source.styles))
    texts, note = style_texts(source.named(), prompt)
    files = [
        {"file": label, "scale": scale, "mode": s.mode, "settings": s.settings, "sources": list(s.sources)} | t
        for (s, scale, label), t in zip(source.named(), texts, strict=True)
    ]
    record = {
        "blend": v.blend,
        "blend_options": v.blend_options,
        "sinks": dict(text.sinks_record),
        "styles": files,
        "resample": options.get("resample"),
    } | ({"note": note} if note else {})
    return Conditioning(t, source.kind, blend_conditioning(t, style, v.blend, options, text.sinks, v.sink_rows), record)


def image_dependence(
    components: Components,
    config: Config,
    prompt: str,
    text: TextSide,
    source: Source,
    cond: Conditioning,
    alphas: list[float],
) -> dict[str, Any]:
    """The `image_dependence` record (`conditioning.imagedep`): `cond` assembled once more with the probe image in place
    of the reference (same size, so the same token counts), compared at every alpha used after the DiT's caption
    norm (`Components.caption_norm`). The probe's extraction (VL pass, sinks, masking, normalisation) is made once
    per `probe_key` in a process (`Components.probe_rows`); the rest (adapter, blend at each alpha) per run. With
    several references the probe replaces every one of them (each by the noise image of its own size, weights
    kept): the check asks whether the caption rows depend on the reference images at all."""
    if isinstance(source, VLRows | Styled):
        given = "style files" if isinstance(source, Styled) else "given VL rows"
        if isinstance(source, VLRows) and source.extraction is None:
            return not_checked(f"{given} of unknown extraction settings: no image to replace by the probe")
        return not_checked(f"{given}: no image to replace by the probe (as extracted, not image-free by construction)")
    if not isinstance(source, Reference):
        return not_checked("not conditioned on a reference image")
    if not config.vl.image_check:
        return not_checked("vl.image_check is off")
    images = source.images
    seed = PROBE_SEED
    if any(image_sha256(probe_image(im.size, seed)) == image_sha256(im) for im in images):
        seed += 1  # a reference is the probe itself: use another noise image
    probes = tuple(probe_image(im.size, seed) for im in images)
    probed = replace(source, image=probes[0] if len(probes) == 1 else probes)
    probe = blend_vl(components, config, prompt, text, probed, probe=True)
    described = describe_probe(images[0].size, seed)
    if len(images) > 1:
        described += f", in place of each of the {len(images)} references (at its own size)"
    return measure(cond.at, probe.at, cond.text, alphas, described, components.caption_norm)
