"""Records: the one author of what llm-dit writes about how an output was made.

- `sidecar`: the record of one generated image (the PNG's `.json`, a sweep's `results.jsonl` line): the settings
  that acted and why the others did not (`generation.provenance`), what conditioned the DiT (`conditioning`), the
  image-dependence check, models, versions, seed, tokens and timings;
- `input_files`, `file_fields`: the path and sha256 of every input file of a command, and its output. One rule for
  paths: every file a record names (`inputs.*.path`, `output`, `models.*.path`, `conditioning.adapter.path`) is an
  absolute, resolved path, so a record read anywhere names the same files; `settings` (and `models.*.id`) keep the
  values as they were given, since they say what was asked;
- `extraction_metadata`, `encoding_metadata`, `direction_metadata`: the metadata of the files `extract`, `encode`
  and `steer` write;
- `library_versions`: the versions every record carries.

`provenance.py` stays the table of rules (which setting acts when); this module applies it.
"""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..config.settings import Config, EncoderConfig
from ..core.files import sha256_file
from ..maths.blend import blend_stats
from ..maths.stats import describe
from ..models.inject import injected_rows
from ..models.loading import file_identity, model_identity
from ..models.text import EncodedPrompt
from ..models.vl import VLEmbeddings
from .provenance import Facts, extraction_settings, split_settings
from .render import Prepared, Rendered, denoising_steps


@functools.cache
def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape an output (read once per process)."""
    out = {"python": platform.python_version()}
    for name in ("llm-dit", "torch", "diffusers", "transformers", "safetensors", "tokenizers", "pillow", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def facts(p: Prepared) -> Facts:
    """What happened to one prepared image, beyond its config (the input of `provenance.split_settings`)."""
    cond = p.conditioning
    return Facts(
        source=cond.source,
        extracted=cond.source == "reference" or cond.record.get("neutral") == "image",
        img2img=p.init_image is not None,
        token_count=p.encoded.token_count,
        shortened=p.encoded.shortened,
        resampled=cond.record.get("resample") is not None,
    )


def conditioning(p: Prepared, rendered: Rendered | None = None) -> dict[str, Any]:
    """What conditioned the DiT: the source, the alphas per step, and the caption rows it received (with DiT
    injection: `T` for the pipeline and the blocks not chosen, `C` aligned to `T`'s rows in the chosen ones).
    Without `rendered` (before the DiT ran): what it will receive."""
    cond = p.conditioning
    record = cond.record | {"source": cond.source, "alpha": None, "alphas": []}
    if "adapter" in record:  # the adapter as the record names it: its path, the file's sha256, its metadata
        record["adapter"] = {"path": str(Path(p.config.vl.adapter).resolve()), **record["adapter"]}
    received = p.first
    if cond.combine is not None:
        g = p.config.generation
        per_step = p.alphas * denoising_steps(g, p.init_image is not None) if len(p.alphas) == 1 else p.alphas
        rows = [int(cond.at(a).shape[0]) for a in per_step]
        record |= {
            "alpha": per_step[0] if len(set(per_step)) == 1 else None,  # one alpha acted, else see `alphas`
            "alpha_schedule": p.config.vl.alpha_schedule,
            "alphas": per_step,
            "caption_rows": rows[0] if len(set(rows)) == 1 else rows,
        }
        if rendered is not None and rendered.injected_blocks:
            received = injected_rows(p.first, cond.text.shape[0])
            record["caption_rows"] = int(cond.text.shape[0])  # the pipeline's prompt_embeds: T
            record["injection"] = {
                "blocks": rendered.injected_blocks,
                "caption_rows": int(received.shape[0]),  # C in the chosen blocks, aligned to T's rows
                "resampled_from": int(p.first.shape[0]) if p.first.shape[0] != received.shape[0] else None,
            }
    else:
        record["caption_rows"] = int(p.first.shape[0])
    record["blend_stats"] = blend_stats(cond.text, received)
    if rendered is not None:
        record["batch_size"] = len(rendered.images)
        if rendered.alphas_used is not None:
            record["alphas_used"] = rendered.alphas_used
    return record


def sidecar(p: Prepared, rendered: Rendered | None = None) -> dict[str, Any]:
    """The record of one image: the settings that acted (`settings`) and why the others did not
    (`inactive_settings`), the image-dependence check, models, text, `conditioning`, img2img, library versions and
    timings. Without `rendered`: the record as far as `prepare` knows it (no DiT has run)."""
    happened = facts(p)
    settings, inactive = split_settings(p.config, happened)
    models = {"zimage": model_identity(p.config.models.zimage)}
    if p.config.models.transformer:
        models["transformer"] = file_identity(p.config.models.transformer)
    if happened.extracted:
        models["vl"] = model_identity(p.config.models.vl)
    if rendered is not None and rendered.loras:
        models["loras"] = rendered.loras
    g = p.config.generation
    img2img = None
    if p.init_image is not None:
        img2img = {"strength": g.strength, "skipped_steps": g.steps - denoising_steps(g, True)}
    return {
        "prompt": p.prompt,
        "seed": g.seed,
        "settings": settings,
        "inactive_settings": inactive,
        "image_dependence": p.image_dependence,
        "models": models,
        "text": {
            "rendered": p.encoded.rendered,
            "token_count": p.encoded.token_count,
            "caption_rows": int(p.encoded.embeddings.shape[0]),
            "shortened": p.encoded.shortened,
        },
        "conditioning": conditioning(p, rendered),
        "img2img": img2img,
        "versions": library_versions(),
        "timings_s": {k: round(v, 4) for k, v in p.times.items()},
    }


def file_fields(output: Path, inputs: dict[str, Path | None]) -> dict[str, Any]:
    """A written image's `inputs` (`input_files`) and `output`, both absolute and resolved (the module's path rule)."""
    return {"inputs": input_files(inputs), "output": str(Path(output).resolve())}


def input_files(paths: dict[str, Path | None]) -> dict[str, dict[str, str]]:
    """`{role: {"path", "sha256"}}` of every input file given (`None`: not given, left out)."""
    return {role: {"path": str(p.resolve()), "sha256": sha256_file(p)} for role, p in paths.items() if p is not None}


def extraction_metadata(
    rows: torch.Tensor, extracted: dict[int, VLEmbeddings], weights: dict[int, float], image: Path
) -> dict[str, Any]:
    """Metadata of an extracted-rows file (`llm-dit extract`): the extraction's own description and, when
    weighted layers acted (`vl.layers`), the rows are `Σ w_l V_l`: the per-layer figures move to `layers` and the
    top-level statistics are those of the weighted rows."""
    e = next(iter(extracted.values()))
    meta = e.metadata() | {
        "layer_weights": {str(layer): w for layer, w in weights.items()},
        "image": str(image),
        "versions": library_versions(),
    }
    if weights != {e.hidden_layer: 1.0}:
        per_layer = ("hidden_layer", "stats_before", "stats_after", "masked_dimensions")
        meta |= {
            "hidden_layer": None,
            "stats_before": None,
            "stats_after": describe(rows),
            "masked_dimensions": None,
            "layers": {str(layer): {k: x.metadata()[k] for k in per_layer} for layer, x in extracted.items()},
        }
    return meta


def encoding_metadata(prompt: str, encoded: EncodedPrompt, encoder: EncoderConfig, model: dict) -> dict[str, Any]:
    """Metadata of an encoded-prompt file (`llm-dit encode`)."""
    return {
        "kind": "text_embeddings",
        "prompt": prompt,
        "rendered": encoded.rendered,
        "hidden_layer": encoded.hidden_layer,
        "settings": encoder.model_dump(),
        "model": model,
        "versions": library_versions(),
    }


def direction_metadata(
    method: str, config: Config, weights: dict[int, float], model: dict, examples: dict[str, list[str]]
) -> dict[str, Any]:
    """Metadata of a steering-direction file (`llm-dit steer`): how its examples were extracted (the settings
    that acted, `provenance.extraction_settings`) and which images they were."""
    return {
        "method": method,
        "hidden_layer": None if config.vl.layers else config.vl.hidden_layer,
        "layer_weights": {str(k): w for k, w in weights.items()},
        "token_mode": config.vl.token_mode,
        "settings": extraction_settings(config),
        "model": model,
        "examples": examples,
        "versions": library_versions(),
    }
