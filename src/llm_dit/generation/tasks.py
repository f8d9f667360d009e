"""One call per single-output command: read the input files, run the `Generator`, write the output with its record.

`llm-dit generate`, `extract`, `encode`, `stats`, `inspect`, `steer` and `train-adapter` are each one of these calls
on a resolved `Config`; a notebook working with the same files calls them too. Errors name config keys and these
functions' arguments (`'neutral_image'`), never command-line flags.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..adapter.train import read_captions, train_adapter
from ..conditioning.imagedep import refuse_image_free
from ..conditioning.source import Reference, Styled, check_neutral, source_of
from ..config.settings import Config
from ..core.errors import UserError, check_choice
from ..core.files import load_embeddings, load_embeddings_file, load_image, read_lines, save_image, save_tensors
from ..core.modes import INSPECT_LAYERS
from ..maths.blend import check_options
from ..maths.compose import combine_styles, extract_style, load_styles, split_scale, style_tensors
from ..maths.refstats import ReferenceStats
from ..maths.sinks import sink_report
from ..maths.steer import DIRECTIONS, load_direction, save_direction
from ..models.text import STATS_PROMPTS, render_prompt
from ..models.vl import pick_reference
from .assemble import adapted, blend_options, layer_weights, style_settings
from .diagnostics import inspect_layers
from .generate import Generator
from .records import (
    direction_metadata,
    encoding_metadata,
    extraction_metadata,
    file_fields,
    input_files,
    library_versions,
)
from .render import OnStep

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def generator_for(config: Config, warm: Generator | None) -> Generator:
    """A generator for `config`: on the components of `warm` (a long-lived process's loaded models and cache, e.g.
    the studio's) when given, else a new one."""
    return warm.with_config(config) if warm is not None else Generator(config)


def generate_file(
    config: Config,
    prompt: str,
    output: str | Path,
    *,
    image: str | Path | list[str | Path] | None = None,
    reference_weights: list[float] | None = None,
    init_image: str | Path | None = None,
    steer: str | Path | None = None,
    vl_embeddings: str | Path | None = None,
    neutral_image: str | Path | None = None,
    neutral_embeddings: str | Path | None = None,
    embeddings: str | Path | None = None,
    negative_image: str | Path | None = None,
    style: list[str] | None = None,
    generator: Generator | None = None,
    on_step: OnStep | None = None,
    durable: bool = True,
    read_image: Callable[[str | Path, str], Image.Image] = load_image,
) -> Path:
    """One image into `output` (PNG) and its sidecar, conditioned by at most one of `image` (a reference, or several
    combined by `reference_weights`: default 1/n each),
    `vl_embeddings` (VL rows of `extract`), `embeddings` (caption rows used as they are) and `steer` (a direction
    file); `neutral_image` or `neutral_embeddings` for style_delta; `init_image` for image-to-image;
    `negative_image` for CFG's negative rows (guidance > 0); `style`: style files `FILE[:SCALE]`
    (`style_extract_file`), combined. The record lists every input file with its SHA-256. `generator`: warm
    components to use (`generator_for`); `on_step`: progress after each denoising step; `durable=False`: the PNG and
    sidecar are written atomically but not fsynced (the studio's drafts, `files.save_image`); `read_image`: how the
    input images are read (`files.load_image`; the studio's keeps the images it read last decoded)."""
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise UserError(f"output must be a .png file: {output}")
    if neutral_image and neutral_embeddings:
        raise UserError("give one of 'neutral_image', 'neutral_embeddings'")
    images = [] if image is None else [image] if isinstance(image, str | Path) else list(image)
    if reference_weights is not None and not images:
        raise UserError("'reference_weights' weigh reference images: give them with 'image'")
    neutral_rows = load_embeddings(neutral_embeddings, "neutral embeddings") if neutral_embeddings else None
    vl_rows, vl_meta = load_embeddings_file(vl_embeddings, "VL embeddings") if vl_embeddings else (None, None)
    source = source_of(
        reference=[read_image(p, "reference image") for p in images] or None,
        weights=reference_weights,  # checked with the rest by `Generator.prepare`
        vl_rows=vl_rows,
        vl_extraction=vl_meta,
        caption_rows=load_embeddings(embeddings, "embeddings") if embeddings else None,
        direction=load_direction(steer)[0] if steer else None,
        neutral=read_image(neutral_image, "neutral image") if neutral_image else neutral_rows,
        styles=Styled(*load_styles(style)) if style else None,
    )
    init = read_image(init_image, "init image") if init_image else None
    negative = read_image(negative_image, "negative image") if negative_image else None
    result = generator_for(config, generator).generate(
        prompt, source, init_image=init, negative=negative, on_step=on_step
    )
    files = {
        "reference_image": images[0] if len(images) == 1 else None,
        "init_image": init_image,
        "vl_embeddings": vl_embeddings,
        "neutral_image": neutral_image,
        "neutral_embeddings": neutral_embeddings,
        "embeddings": embeddings,
        "steer": steer,
        "negative_image": negative_image,
    }
    fields = file_fields(output, {role: Path(p) if p else None for role, p in files.items()})
    inputs = fields["inputs"]
    if style:
        inputs["styles"] = [input_files({"file": Path(p)})["file"] | {"scale": s} for p, s in map(split_scale, style)]
    if len(images) > 1:  # every reference file with its hash and weight, in order
        used = result.record["conditioning"]["references"]
        files_used = input_files({str(i): Path(p) for i, p in enumerate(images)})
        inputs["reference_images"] = [files_used[str(i)] | {"weight": r["weight"]} for i, r in enumerate(used)]
    return save_image(result.image, output, result.record | fields, durable)


def _style_output(output: str | Path) -> Path:
    output = Path(output)
    if output.suffix != ".safetensors":
        raise UserError(f"a style file is written as safetensors: give an output ending in .safetensors ({output})")
    return output


def style_extract_file(
    config: Config,
    image: str | Path,
    output: str | Path,
    *,
    neutral: str | Path | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    """The style `vl.blend` transfers from `image` (+ `text` after it, as generation puts the prompt) with these
    settings (`compose.extract_style`): VL rows extracted as generation extracts a reference, passed through
    `vl.adapter`; with `style_delta`, `neutral` (required) is subtracted. Written to `output` (safetensors) with
    the settings it depends on (`assemble.style_settings`), the models and the source hashes."""
    output, v = _style_output(output), config.vl
    picture = load_image(image, "image")
    unstyled = None if neutral is None else load_image(neutral, "neutral image")
    reference = Reference(picture, unstyled)
    refuse_image_free(v, reference)  # the rules `generate` applies to the same image, before any model loads
    check_neutral(v.blend, reference)
    gen = Generator(config)
    check_options(v.blend, [*v.blend_options, *(["neutral"] if v.blend == "style_delta" else [])])
    rows, _ = gen.extract(picture, text)
    options = blend_options(v)
    if unstyled is not None:
        options["neutral"] = gen.extract(unstyled, text)[0]
    (rows,), adapter = adapted(gen.components, config, [rows])
    if adapter is not None and "neutral" in options:
        options["neutral"] = adapted(gen.components, config, [options["neutral"]])[0][0]
    style = extract_style(v.blend, rows, options)
    sources = [input_files({"image": Path(image)})["image"] | {"weight": 1.0, "text": text}]
    if neutral is not None:
        sources[0]["neutral"] = input_files({"neutral": Path(neutral)})["neutral"]
    style = replace(style, settings=style.settings | style_settings(config), sources=tuple(sources))
    tensors, meta = style_tensors(style)
    meta |= {"text": text, "models": {"vl": gen.components.vl.identity}, "versions": library_versions()}
    save_tensors(output, tensors, meta)
    return {"output": str(output), "mode": style.mode, "kind": style.kind, "settings": style.settings}


def style_combine_file(styles: list[str], output: str | Path) -> dict[str, Any]:
    """The weighted combination of style files `FILE[:WEIGHT]` (`compose.combine_styles`: refused when their blend
    kind, layer, token mode, normalisation, model, width, adapter or extraction options differ) into `output`."""
    output = _style_output(output)
    if not styles:
        raise UserError("give the style files to combine, as FILE:WEIGHT")
    combined = combine_styles(load_styles(styles)[0])
    tensors, meta = style_tensors(combined)
    used = [{"file": p, "weight": w} for p, w in map(split_scale, styles)]
    meta |= {"combined": used, "versions": library_versions()}
    save_tensors(output, tensors, meta)
    return {"output": str(output), "mode": combined.mode, "parts": len(combined.parts)}


def extract_file(
    config: Config, image: str | Path, output: str | Path, text: str | None = None, generator: Generator | None = None
) -> dict[str, Any]:
    """VL rows of `image` + `text` with the `vl` settings (weighted layers combined) into a safetensors file;
    returns a summary (output, cache hit or miss, shape, layer, token mode, spans, variant, masked dims, sinks).
    `generator`: warm components to use (`generator_for`)."""
    rows, extracted = generator_for(config, generator).extract(load_image(image, "reference image"), text)
    e = next(iter(extracted.values()))
    meta = extraction_metadata(rows, extracted, layer_weights(config.vl), Path(image))
    save_tensors(output, {"embeddings": rows}, meta)
    return {
        "output": str(output),
        "cache": e.cache,
        "shape": list(rows.shape),
        "hidden_layer": meta["hidden_layer"],
        "token_mode": e.token_mode,
        "spans": e.spans.as_dict(),
        "variant": e.variant,
        "masked_dimensions": meta["masked_dimensions"],
        "sinks": e.sinks,
    }


def encode_file(config: Config, prompt: str, output: str | Path) -> dict[str, Any]:
    """The caption rows the DiT would see for `prompt` (`encoder` settings) into a safetensors file; returns a
    summary (output, cache hit or miss, shape, layer)."""
    gen = Generator(config)
    te = gen.components.text_encoder
    before = te.forward_passes
    encoded = gen.encode(prompt)
    meta = encoding_metadata(prompt, encoded, config.encoder, te.identity)
    save_tensors(output, {"embeddings": encoded.embeddings}, meta)
    return {
        "output": str(output),
        "cache": "miss" if te.forward_passes > before else "hit",
        "shape": list(encoded.embeddings.shape),
        "hidden_layer": encoded.hidden_layer,
    }


def stats_prompts(prompts: str | Path | None) -> tuple[str, ...]:
    """The built-in statistics prompts, or those of the file `prompts` (one a line; at least one)."""
    lines = STATS_PROMPTS if prompts is None else tuple(read_lines(prompts, "prompts file"))
    if not lines:
        raise UserError(f"prompts file has no prompts: {prompts}")
    return lines


def stats_file(
    config: Config, output: str | Path, layer: int = -2, prompts: str | Path | None = None
) -> ReferenceStats:
    """Per-dimension statistics of the text encoder's content rows at `layer` (attention sinks left out, by
    `vl.sink_ratio`) over the built-in prompts or those of the file `prompts` (one a line), saved to `output`."""
    lines = stats_prompts(prompts)
    result = Generator(config).components.text_encoder.reference_stats([layer], lines, config.vl.sink_ratio)[layer]
    result.save(output)
    return result


def sink_report_of(config: Config, layer: int = -2, prompts: str | Path | None = None) -> dict[str, Any]:
    """`sinks.sink_report` of the text encoder's rows at `layer` for the prompts `stats_file` uses (the same
    rendering, the same rows): whether `vl.sink_ratio` separates this model's attention sinks from its content
    rows. Adds the `layer`, the `model` and the number of `prompts`."""
    lines = stats_prompts(prompts)
    encoder = Generator(config).components.text_encoder
    tok = encoder.tokenizer
    ids = [tok(render_prompt(tok, prompt), add_special_tokens=False).input_ids for prompt in lines]
    rows = [encoder.hidden_rows(i, [layer])[layer] for i in ids]
    report = sink_report(rows, config.vl.sink_ratio, token=lambda p, position: tok.decode([ids[p][position]]))
    return {"layer": layer, "model": encoder.identity["id"], "prompts": len(lines)} | report


def inspect_image(
    config: Config,
    image: str | Path,
    prompt: str,
    layers: list[int] | None = None,
    generator: Generator | None = None,
) -> dict[str, Any]:
    """`diagnostics.inspect_layers` of `image` + `prompt` at `layers` (default: `INSPECT_LAYERS` and the layers
    generation would extract), each against its reference statistics; `settings` lists the config keys that
    acted. `generator`: warm components to use (`generator_for`)."""
    components = generator_for(config, generator).components
    v, enc = config.vl, config.encoder
    # acted: the prompt templates, the statistics the ratios use and, without `layers`, the configured VL layers
    acted: dict[str, Any] = {}
    if layers:
        wanted = list(dict.fromkeys(layers))
    else:
        acted = {"vl.layers": v.layers} if v.layers else {"vl.hidden_layer": v.hidden_layer}
        wanted = sorted({*INSPECT_LAYERS, *layer_weights(v)}, reverse=True)
    refs = components.reference_stats(wanted, v)
    if not isinstance(refs, dict):  # one statistics file (vl.reference_stats) for every layer; warns on a mismatch
        refs = {layer: pick_reference(refs, layer) for layer in wanted}
    report = inspect_layers(
        components.vl,
        components.text_encoder,
        load_image(image, "reference image"),
        prompt,
        wanted,
        refs,
        system_prompt=v.system_prompt,
        text_system_prompt=enc.system_prompt,
        think_block=enc.think_block,
        sink_ratio=v.sink_ratio,
    )
    report["settings"] = acted | {
        "vl.sink_ratio": v.sink_ratio,
        "vl.system_prompt": v.system_prompt,
        "encoder.system_prompt": enc.system_prompt,
        "encoder.think_block": enc.think_block,
        "vl.reference_stats": v.reference_stats,  # None: the text encoder's statistics of each layer
    }
    return report


def read_pairs(path: Path) -> dict[str, list[tuple[str, str]]]:
    """`{"positive": [(prompt, image)], "negative": [...]}` from a pairs TOML: `[[pairs]]` tables with `prompt`,
    `positive`, `negative`, or one `prompt` with `positive` and `negative` lists (image paths as written)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"pairs file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"pairs file {path} is not valid TOML: {e}") from None
    if "pairs" in data:
        items = [(p.get("prompt", ""), p["positive"], p["negative"]) for p in data["pairs"]]
        return {"positive": [(t, pos) for t, pos, _ in items], "negative": [(t, neg) for t, _, neg in items]}
    if {"positive", "negative"} <= data.keys():
        return {side: [(data.get("prompt", ""), image) for image in data[side]] for side in ("positive", "negative")}
    raise UserError(f"pairs file {path} needs [[pairs]] tables or 'positive' and 'negative' lists")


def steer_file(config: Config, pairs: str | Path, output: str | Path, method: str = "mean_difference") -> Path:
    """A steering direction from the contrastive examples of the pairs file (`read_pairs`; images relative to its
    folder), each extracted exactly as generation extracts a reference, into `output`."""
    direction_of = DIRECTIONS[check_choice(method, DIRECTIONS, "method")]
    pairs = Path(pairs)
    examples = read_pairs(pairs)
    gen = Generator(config)
    # the same rows generation would blend: every vl extraction setting acts (layers, system prompt, masking...)
    rows = {
        side: [gen.extract(load_image(pairs.parent / path, f"{side} image"), text or None)[0] for text, path in entries]
        for side, entries in examples.items()
    }
    direction = direction_of(rows["positive"], rows["negative"])
    used = {side: [path for _, path in entries] for side, entries in examples.items()}
    meta = direction_metadata(method, config, layer_weights(config.vl), gen.components.vl.identity, used)
    return save_direction(output, direction, meta)


def train_adapter_file(
    config: Config,
    images: str | Path,
    output: str | Path,
    *,
    captions: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    **training: Any,
) -> Path:
    """An adapter trained on the images of the folder `images` (`IMAGE_SUFFIXES`) with `captions` (missing ones
    are written by the VL model) into `output`; `training` are `adapter.train.train_adapter`'s settings (kind, rank,
    lam, steps, lr, resume); checkpoints in `checkpoint_dir` (default: OUTPUT.ckpt/)."""
    folder, output = Path(images), Path(output)
    if not folder.is_dir():
        raise UserError(f"images folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no images (png, jpg, webp) in {folder}")
    checkpoints = checkpoint_dir or output.with_suffix(".ckpt")
    adapter, meta = train_adapter(
        Generator(config), files, read_captions(captions), checkpoint_dir=checkpoints, **training
    )
    return adapter.save(output, meta)
