"""What acted: a run's resolved settings split into those that shaped its image and those that did not.

A record must never show a value that did not act (`--vl-embeddings` skips extraction, a schedule replaces
`vl.alpha`, `generation.strength` needs an init image...). `split_settings` is the one place that decides it:
every config key has a rule in `RULES` (a test checks that no key is missing), which returns None when the setting
acted for this image, else a short reason. The record's `settings` holds the settings that acted and
`inactive_settings` maps every other one to its reason. `extraction_settings` applies the same rules to a Qwen3-VL
extraction on its own (extracted rows in a file, a steering direction's examples).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config.settings import Config
from ..core.modes import parse_lora
from ..maths.schedule import parse_schedule


@dataclass(frozen=True)
class Facts:
    """What happened to one image, beyond its config."""

    source: str  # text | reference | vl_embeddings | embeddings | steer (Conditioning.source)
    extracted: bool  # a Qwen3-VL extraction ran (a reference image, or a neutral image for style_delta)
    img2img: bool  # an init image was used
    token_count: int  # tokens of the rendered prompt before shortening
    shortened: bool  # the prompt was shortened to encoder.max_length
    resampled: bool  # the blend paired rows, so vl.resample aligned V


Rule = Callable[[Config, Facts], str | None]

_NOT_CONDITIONED = {
    "text": "text-only conditioning",
    "embeddings": "caption rows given as they are (embeddings)",
}
_NO_EXTRACTION = {
    **_NOT_CONDITIONED,
    "vl_embeddings": "VL rows given (vl_embeddings): no extraction ran",
    "steer": "steering direction: no extraction ran",
    "style": "style files given: no extraction ran (each file's settings are in conditioning.styles)",
}


def _text_rows(c: Config, f: Facts) -> str | None:
    if f.source == "embeddings" and c.generation.guidance == 0:
        return "caption rows given as they are: no text rows reach the DiT"
    return None


def _shortening(c: Config, f: Facts) -> str | None:
    if reason := _text_rows(c, f):
        return reason
    if not f.shortened:
        return f"the prompt has {f.token_count} tokens, within encoder.max_length {c.encoder.max_length}: not shortened"
    return None


def _conditioned(c: Config, f: Facts) -> str | None:
    """Settings of a function of alpha: blends and steering."""
    return _NOT_CONDITIONED.get(f.source)


def _blended(c: Config, f: Facts) -> str | None:
    """Settings of a blend of VL rows into T."""
    if f.source == "steer":
        return "steering adds a direction to T: no VL rows are blended"
    return _NOT_CONDITIONED.get(f.source)


def _extracted(c: Config, f: Facts) -> str | None:
    return None if f.extracted else _NO_EXTRACTION.get(f.source, "no VL extraction ran")


def _both(*rules: Rule) -> Rule:
    def rule(c: Config, f: Facts) -> str | None:
        return next((r for r in (g(c, f) for g in rules) if r is not None), None)

    return rule


def _single_layer(c: Config, f: Facts) -> str | None:
    return "vl.layers gives the layers" if c.vl.layers else None


def _layers(c: Config, f: Facts) -> str | None:
    return None if c.vl.layers else "unset: vl.hidden_layer gives the layer"


def _masking(c: Config, f: Facts) -> str | None:
    if c.vl.token_mode == "text_only":
        return "token mode text_only keeps no image-pad rows to mask"
    return None


def _threshold(c: Config, f: Facts) -> str | None:
    return _masking(c, f) or ("vl.outlier_masking is none" if c.vl.outlier_masking == "none" else None)


def _clip(c: Config, f: Facts) -> str | None:
    v = c.vl
    if v.normalize not in ("per_dim", "hybrid"):
        return f"vl.normalize is {v.normalize}: no per-dim part to clip"
    if v.normalize == "hybrid" and v.hybrid_weight == 0:
        return "vl.hybrid_weight is 0: the per-dim part has no weight"
    return None


def _hybrid(c: Config, f: Facts) -> str | None:
    return None if c.vl.normalize == "hybrid" else f"vl.normalize is {c.vl.normalize}, not hybrid"


def _statistics(c: Config, f: Facts) -> str | None:
    if c.vl.normalize == "none" and (c.vl.outlier_masking == "none" or _masking(c, f)):
        return "no normalisation or outlier masking read reference statistics"
    return None


def _alpha(c: Config, f: Facts) -> str | None:
    if parse_schedule(c.vl.alpha_schedule).kind != "constant":
        return f"vl.alpha_schedule {c.vl.alpha_schedule} sets the alphas (conditioning.alphas)"
    return None


def _resample(c: Config, f: Facts) -> str | None:
    return None if f.resampled else f"blend {c.vl.blend} pairs no rows: nothing was aligned"


def _image_check(c: Config, f: Facts) -> str | None:
    return None if f.source == "reference" else "no reference image to replace by the probe"


def _strength(c: Config, f: Facts) -> str | None:
    return None if f.img2img else "no init image: text-to-image"


def _loras(c: Config, f: Facts) -> str | None:
    if not c.generation.loras:
        return "no LoRA"
    return None if any(parse_lora(item)[1] for item in c.generation.loras) else "every LoRA scale is 0"


def _transformer(c: Config, f: Facts) -> str | None:
    return None if c.models.transformer else "unset: the DiT of models.zimage"


def _max_pixels(c: Config, f: Facts) -> str | None:
    return None if c.vl.max_pixels else "unset: the image processor's own limit"


def _acts(c: Config, f: Facts) -> str | None:
    return None


RULES: dict[str, Rule] = {
    "models.zimage": _acts,
    "models.vl": _extracted,
    "models.low_memory": _acts,
    "models.trust_remote_code": _acts,
    "models.transformer": _transformer,
    "models.offload": _acts,
    "models.compile": _acts,
    "models.encoder_quantization": _text_rows,
    "models.vl_quantization": _extracted,
    "encoder.device": _text_rows,
    "encoder.dtype": _text_rows,
    "encoder.hidden_layer": _text_rows,
    "encoder.max_length": _shortening,
    "encoder.long_prompt_mode": _shortening,
    "encoder.system_prompt": _text_rows,
    "encoder.think_block": _text_rows,
    "generation.device": _acts,
    "generation.dtype": _acts,
    "generation.width": _acts,
    "generation.height": _acts,
    "generation.steps": _acts,
    "generation.guidance": _acts,
    "generation.shift": _acts,
    "generation.seed": _acts,
    "generation.strength": _strength,
    "generation.loras": _loras,
    "vl.device": _extracted,
    "vl.dtype": _extracted,
    "vl.hidden_layer": _both(_extracted, _single_layer),
    "vl.layers": _both(_extracted, _layers),
    "vl.token_mode": _extracted,
    "vl.max_pixels": _both(_extracted, _max_pixels),
    "vl.system_prompt": _extracted,
    "vl.normalize": _extracted,
    "vl.clip_sigma": _both(_extracted, _clip),
    "vl.hybrid_weight": _both(_extracted, _hybrid),
    "vl.reference_stats": _both(_extracted, _statistics),
    "vl.outlier_masking": _both(_extracted, _masking),
    "vl.outlier_threshold": _both(_extracted, _threshold),
    # sink settings (vl.sink_*): they decide which rows of T and V the statistics and the blend use
    "vl.sink_ratio": _conditioned,  # blends and steering: which rows of T (and V) are content
    "vl.sink_rows": _conditioned,
    "vl.image_check": _image_check,
    "vl.alpha": _both(_conditioned, _alpha),
    "vl.alpha_schedule": _conditioned,
    "vl.blend": _blended,
    "vl.blend_options": _blended,
    "vl.resample": _both(_blended, _resample),
    "vl.inject_layers": _conditioned,
    "vl.adapter": _blended,
}


def split_settings(config: Config, facts: Facts) -> tuple[dict[str, Any], dict[str, str]]:
    """`(settings that acted, {setting that did not act: why})` over every key of `config.flat()`. A key without
    a rule counts as acting (the test suite makes sure every key has one)."""
    acted: dict[str, Any] = {}
    inactive: dict[str, str] = {}
    for key, value in config.flat().items():
        reason = RULES.get(key, _acts)(config, facts)
        if reason is None:
            acted[key] = value
        else:
            inactive[key] = reason
    return acted, inactive


EXTRACTION_KEYS = (
    "vl.hidden_layer",
    "vl.layers",
    "vl.token_mode",
    "vl.max_pixels",
    "vl.system_prompt",
    "vl.outlier_masking",
    "vl.outlier_threshold",
    "vl.normalize",
    "vl.clip_sigma",
    "vl.hybrid_weight",
    "vl.reference_stats",
    "vl.sink_ratio",
    "vl.sink_rows",
)
"""The settings that shape the rows of a Qwen3-VL extraction (the model is recorded on its own)."""

_EXTRACTION = Facts(source="reference", extracted=True, img2img=False, token_count=0, shortened=False, resampled=False)


def extraction_settings(config: Config) -> dict[str, Any]:
    """The settings that acted on the rows of an extraction from a reference image (`Generator.extract`): the
    `EXTRACTION_KEYS` that `RULES` count as acting for one, e.g. `vl.layers` or `vl.hidden_layer`, a threshold
    only with masking, `vl.reference_stats` only when masking or normalisation reads it."""
    acted, _ = split_settings(config, _EXTRACTION)
    return {key: acted[key] for key in EXTRACTION_KEYS if key in acted}
