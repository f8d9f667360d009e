"""Every mode name, limit and text form that settings, flags and their help name, in one torch-free module.

The config's types (`config.settings`), the option table (`config.options`) and the CLI's help are built from
these, so `llm-dit --help`, a flag or choice error, `config show` and every refusal that needs no model import no
torch, diffusers or transformers. Each feature that implements a mode imports its names from here; where a feature
keeps a table keyed by mode (`maths.blend.BLEND_MODES`, `maths.steer.DIRECTIONS`, `models.zoo.PRESETS`), its keys
are these names in this order (tests/cli/test_cli_start.py checks it).
"""

from __future__ import annotations

# maths
BLEND_MODE_NAMES = (
    "interpolate", "linear", "adain", "adain_per_dim", "style_delta", "gem_pool", "svd_style", "whiten", "gram",
    "attention_weighted", "slerp", "concat", "replace",
)  # fmt: skip
RESAMPLE_MODES = ("area", "linear", "nearest", "truncate")
CAPTION_LIMIT = 1504
"""The most caption rows Z-Image's DiT takes (its RoPE's caption axis)."""
SCHEDULES = ("constant", "linear", "cosine", "step", "list")
NORMALIZATION_MODES = ("none", "global", "per_dim", "hybrid")
OUTLIER_MODES = ("none", "zero", "clamp", "scale", "reference")
SINK_RATIO = 20.0
"""A row is an attention sink when its max |x| exceeds this many times the median row's (`maths.sinks.find_sinks`)."""
SINK_ROW_MODES = ("exclude", "include")
"""What happens to sink rows (config ``vl.sink_rows``): ``exclude`` keeps T's sink rows out of every blend
(unchanged) and drops V's; ``include`` blends them as content. Statistics use content rows either way."""
DIRECTION_METHODS = ("mean_difference", "pca")

# models
OFFLOADS = ("none", "model", "sequential")
QUANTIZATIONS = ("none", "8bit", "4bit", "int8")
LONG_PROMPT_MODES = ("truncate", "interpolate", "pool", "attention_pool")
TOKEN_MODES = ("full", "text_only", "image_only", "image_no_markers")
ZOO_PRESETS = ("tiny", "small")

# adapter, sweeps, evals, inspect
ADAPTER_KINDS = ("linear", "low_rank", "affine")
EXECUTOR_NAMES = ("local", "ray")
"""Where a sweep's runs execute: `sweep.runner.run_local` or `sweep.distributed.run_on_ray` (`experiment.run`)."""
ADHERENCE_TOLERANCE = 0.01
"""How much prompt adherence (the CLIP-T cosine, or SigLIP-T's) a method may lose against caption and still be
called better: the lower bound of the paired difference's CI must be >= -0.01 (a cosine difference; CLIP ViT-L/14
scores of matching prompts sit around 0.25-0.30, so 0.01 is a few percent of the score)."""
INSPECT_LAYERS = (-2, -6, -8)
"""`llm-dit inspect`'s survey of hidden layers, to which it adds the configured VL layers."""


def parse_lora(item: str) -> tuple[str, float]:
    """`FILE[:SCALE]` -> `(FILE, SCALE)`; scale 1.0 when the text after the last `:` is not a number."""
    path, sep, scale = item.rpartition(":")
    if sep and path:
        try:
            return path, float(scale)
        except ValueError:
            pass
    return item, 1.0
