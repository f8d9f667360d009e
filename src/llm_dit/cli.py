"""The `llm-dit` command: a thin layer that parses options, resolves the config and calls the Python API.

Every failure caused by input (a file, a value, a model) is a `UserError`: one line on stderr, exit code 2, no
traceback (`--debug` shows it).
"""

from __future__ import annotations

import json
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .config import Config, load_config
from .errors import UserError, check_choice

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Condition Z-Image on a reference image through Qwen3-VL hidden states.",
)
models_app = typer.Typer(no_args_is_help=True, help="Build or inspect models.")
config_app = typer.Typer(no_args_is_help=True, help="Show the resolved configuration.")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")

console = Console(stderr=True)
_state = {"debug": False}

# Options shared by every command that loads models, with the same names everywhere.
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Config TOML (default: packaged config.toml).")]
ProfileOpt = Annotated[str, typer.Option("--profile", help="Profile in the config file.")]
ModelsOpt = Annotated[
    str | None, typer.Option("--models", help="Use a built-in zoo preset ('tiny' or 'small') for both models.")
]
ZImageOpt = Annotated[str | None, typer.Option("--zimage", help="Z-Image folder or hub id (models.zimage).")]
VLOpt = Annotated[str | None, typer.Option("--vl", help="Qwen3-VL folder or hub id (models.vl).")]
LowMemOpt = Annotated[
    bool | None, typer.Option("--low-memory/--no-low-memory", help="Release components after use (models.low_memory).")
]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug


def resolve(
    config: Path | None, profile: str, models: str | None, zimage: str | None, vl: str | None, **flags: Any
) -> Config:
    """Config from file + profile, then `--models`, then explicit flags (`section__key=value`)."""
    overrides = {k.replace("__", "."): v for k, v in flags.items()}
    if models is not None:
        from .zoo import PRESETS, zoo_dir

        if models not in PRESETS:
            raise UserError(f"unknown --models preset '{models}' (valid: {', '.join(PRESETS)})")
        root = zoo_dir(models)
        overrides |= {"models.zimage": str(root / "zimage"), "models.vl": str(root / "qwen3-vl")}
    overrides |= {
        "models.zimage": zimage or overrides.get("models.zimage"),
        "models.vl": vl or overrides.get("models.vl"),
    }
    return load_config(config, profile, overrides)


@models_app.command("tiny")
def models_tiny(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")],
    preset: Annotated[str, typer.Option("--preset", help="tiny or small.")] = "tiny",
) -> None:
    """Build random-weight Z-Image and Qwen3-VL models of the real architectures, offline."""
    from .zoo import PRESETS, install_zoo

    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}' (valid: {', '.join(PRESETS)})")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder is not empty: {out}")
    if out.exists():
        out.rmdir()
    install_zoo(out, preset)
    print(out / "zimage")
    print(out / "qwen3-vl")


@config_app.command("show")
def config_show(config: ConfigOpt = None, profile: ProfileOpt = "default") -> None:
    """Print the resolved config of a profile as TOML-like sections."""
    cfg = load_config(config, profile)
    for section, values in cfg.model_dump().items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}")
        print()


# Generation settings, the same flags on `generate` and (as fixed values for every run) on `sweep`.
StrengthOpt = Annotated[float | None, typer.Option("--strength", help="Img2img strength (generation.strength).")]
WidthOpt = Annotated[int | None, typer.Option("--width", help="Width, multiple of 16 (generation.width).")]
HeightOpt = Annotated[int | None, typer.Option("--height", help="Height, multiple of 16 (generation.height).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of the CPU generator (generation.seed).")]
GuidanceOpt = Annotated[float | None, typer.Option("--guidance", help="CFG scale, 0 = off (generation.guidance).")]
ShiftOpt = Annotated[float | None, typer.Option("--shift", help="Scheduler shift (generation.shift).")]

# Conditioning options of `generate` (and fixed values of sweeps): each names its config key.
AlphaOpt = Annotated[float | None, typer.Option("--alpha", help="Blend strength (vl.alpha).")]
BlendOpt = Annotated[str | None, typer.Option("--blend", help="Blend mode (vl.blend); see docs/methods.md.")]
ResampleOpt = Annotated[str | None, typer.Option("--resample", help="Length alignment (vl.resample).")]
TokenModeOpt = Annotated[str | None, typer.Option("--token-mode", help="VL rows to keep (vl.token_mode).")]
VLLayerOpt = Annotated[int | None, typer.Option("--vl-layer", help="VL hidden layer (vl.hidden_layer).")]
VLLayersOpt = Annotated[str | None, typer.Option("--vl-layers", help="Weighted VL layers, e.g. -6:0.7,-16:0.3.")]
NormalizeOpt = Annotated[str | None, typer.Option("--normalize", help="none|global|per_dim|hybrid (vl.normalize).")]
MaskingOpt = Annotated[
    str | None, typer.Option("--outlier-masking", help="none|zero|clamp|scale|reference (vl.outlier_masking).")
]
ThresholdOpt = Annotated[float | None, typer.Option("--outlier-threshold", help="vl.outlier_threshold.")]
ScheduleOpt = Annotated[str | None, typer.Option("--alpha-schedule", help="e.g. linear:0,0.6 (vl.alpha_schedule).")]
InjectOpt = Annotated[str | None, typer.Option("--inject-layers", help="DiT blocks, e.g. 0,1 (vl.inject_layers).")]
BlendOptionOpt = Annotated[
    list[str] | None, typer.Option("--blend-option", help="Mode option KEY=VALUE, repeatable (vl.blend_options).")
]
ClipOpt = Annotated[
    str | None, typer.Option("--clip-model", help="CLIP/SigLIP id or path for model-based metrics (optional).")
]


AdapterOpt = Annotated[Path | None, typer.Option("--adapter", help="Trained adapter file (vl.adapter).")]
StatsOpt = Annotated[Path | None, typer.Option("--reference-stats", help="Statistics file (vl.reference_stats).")]


def parse_blend_options(items: list[str] | None) -> dict[str, float | int | bool] | None:
    """`["p=3", "k=8"]` -> `{"p": 3.0, "k": 8}`; values are numbers or true/false."""
    if not items:
        return None
    out: dict[str, float | int | bool] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"bad --blend-option '{item}': expected KEY=VALUE")
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
            continue
        try:
            out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            raise UserError(f"bad --blend-option '{item}': value must be a number or true/false") from None
    return out


def parse_int_list(spec: str | None, label: str) -> list[int] | None:
    if spec is None:
        return None
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"bad {label} '{spec}': expected integers separated by commas") from None


@app.command()
def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to draw.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write (a .json sidecar goes next to it).")],
    image: Annotated[Path | None, typer.Option("--image", "-i", help="Reference image (VL conditioning).")] = None,
    init_image: Annotated[Path | None, typer.Option("--init-image", help="Image-to-image from this image.")] = None,
    strength: StrengthOpt = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (generation.steps).")] = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    seed: SeedOpt = None,
    guidance: GuidanceOpt = None,
    shift: ShiftOpt = None,
    alpha: AlphaOpt = None,
    blend: BlendOpt = None,
    resample: ResampleOpt = None,
    token_mode: TokenModeOpt = None,
    vl_layer: VLLayerOpt = None,
    vl_layers: VLLayersOpt = None,
    normalize: NormalizeOpt = None,
    outlier_masking: MaskingOpt = None,
    outlier_threshold: ThresholdOpt = None,
    alpha_schedule: ScheduleOpt = None,
    inject_layers: InjectOpt = None,
    blend_option: BlendOptionOpt = None,
    reference_stats: StatsOpt = None,
    adapter: AdapterOpt = None,
    steer: Annotated[Path | None, typer.Option("--steer", help="Steering direction file (llm-dit steer).")] = None,
    vl_embeddings: Annotated[Path | None, typer.Option(help="VL rows from `llm-dit extract` instead of -i.")] = None,
    neutral_embeddings: Annotated[Path | None, typer.Option(help="Neutral VL rows for style_delta.")] = None,
    neutral_image: Annotated[Path | None, typer.Option(help="Neutral image for style_delta.")] = None,
    embeddings: Annotated[Path | None, typer.Option(help="Use these caption rows as they are.")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = "default",
    models: ModelsOpt = None,
    zimage: ZImageOpt = None,
    vl: VLOpt = None,
    low_memory: LowMemOpt = None,
) -> None:
    """Generate one image; writes OUTPUT and OUTPUT.json with every setting that made it."""
    from .condition import source_of
    from .files import load_embeddings, load_image, save_image
    from .generate import Generator
    from .records import input_files
    from .steer import load_direction

    if output.suffix.lower() != ".png":
        raise UserError(f"output must be a .png file: {output}")
    cfg = resolve(
        config,
        profile,
        models,
        zimage,
        vl,
        generation__strength=strength,
        generation__steps=steps,
        generation__width=width,
        generation__height=height,
        generation__seed=seed,
        generation__guidance=guidance,
        generation__shift=shift,
        models__low_memory=low_memory,
        vl__alpha=alpha,
        vl__blend=blend,
        vl__resample=resample,
        vl__token_mode=token_mode,
        vl__hidden_layer=vl_layer,
        vl__layers=vl_layers,
        vl__normalize=normalize,
        vl__outlier_masking=outlier_masking,
        vl__outlier_threshold=outlier_threshold,
        vl__alpha_schedule=alpha_schedule,
        vl__inject_layers=parse_int_list(inject_layers, "--inject-layers"),
        vl__blend_options=parse_blend_options(blend_option),
        vl__reference_stats=str(reference_stats) if reference_stats else None,
        vl__adapter=str(adapter) if adapter else None,
    )
    if neutral_image and neutral_embeddings:
        raise UserError("give one of --neutral-image, --neutral-embeddings")
    neutral_rows = load_embeddings(neutral_embeddings, "neutral embeddings") if neutral_embeddings else None
    source = source_of(
        reference=load_image(image, "reference image") if image else None,
        vl_rows=load_embeddings(vl_embeddings, "VL embeddings") if vl_embeddings else None,
        caption_rows=load_embeddings(embeddings, "embeddings") if embeddings else None,
        direction=load_direction(steer)[0] if steer else None,
        neutral=load_image(neutral_image, "neutral image") if neutral_image else neutral_rows,
    )
    init = load_image(init_image, "init image") if init_image else None
    result = Generator(cfg).generate(prompt, source, init_image=init)
    files = {
        "reference_image": image,
        "init_image": init_image,
        "vl_embeddings": vl_embeddings,
        "neutral_image": neutral_image,
        "neutral_embeddings": neutral_embeddings,
        "embeddings": embeddings,
        "steer": steer,
    }
    save_image(result.image, output, result.record | {"inputs": input_files(files), "output": str(output)})
    print(output)


LayerOpt = Annotated[int | None, typer.Option("--layer", help="Hidden layer (transformers' hidden_states index).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]


@app.command()
def extract(
    image: Annotated[Path, typer.Option("--image", "-i", help="Reference image.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="safetensors file to write.")],
    text: Annotated[str | None, typer.Option("--text", "-t", help="Text after the image.")] = None,
    layer: LayerOpt = None,
    token_mode: TokenModeOpt = None,
    normalize: NormalizeOpt = None,
    outlier_masking: MaskingOpt = None,
    outlier_threshold: ThresholdOpt = None,
    reference_stats: StatsOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    profile: ProfileOpt = "default",
    models: ModelsOpt = None,
    zimage: ZImageOpt = None,
    vl: VLOpt = None,
) -> None:
    """Extract Qwen3-VL rows of one layer (or the weighted layers of vl.layers) for an image (+ text) into a
    safetensors file."""
    from .assemble import layer_weights
    from .files import load_image, save_tensors
    from .generate import Generator
    from .records import extraction_metadata

    cfg = resolve(
        config,
        profile,
        models,
        zimage,
        vl,
        vl__hidden_layer=layer,
        vl__token_mode=token_mode,
        vl__normalize=normalize,
        vl__outlier_masking=outlier_masking,
        vl__outlier_threshold=outlier_threshold,
        vl__reference_stats=str(reference_stats) if reference_stats else None,
    )
    rows, extracted = Generator(cfg).extract(load_image(image, "image"), text)
    e = next(iter(extracted.values()))
    meta = extraction_metadata(rows, extracted, layer_weights(cfg.vl), image)
    save_tensors(output, {"embeddings": rows}, meta)
    summary = {
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
    print(json.dumps(summary) if as_json else output)


@app.command()
def encode(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt to encode.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="safetensors file to write.")],
    layer: LayerOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    profile: ProfileOpt = "default",
    models: ModelsOpt = None,
    zimage: ZImageOpt = None,
) -> None:
    """Encode a prompt with Z-Image's text encoder (caption rows as the DiT sees them) into a safetensors file."""
    from .files import save_tensors
    from .generate import Generator
    from .records import encoding_metadata

    cfg = resolve(config, profile, models, zimage, None, encoder__hidden_layer=layer)
    gen = Generator(cfg)
    te = gen.components.text_encoder
    before = te.forward_passes
    encoded = gen.encode(prompt)
    meta = encoding_metadata(prompt, encoded, cfg.encoder, te.identity)
    save_tensors(output, {"embeddings": encoded.embeddings}, meta)
    summary = {
        "output": str(output),
        "cache": "miss" if te.forward_passes > before else "hit",
        "shape": list(encoded.embeddings.shape),
        "hidden_layer": encoded.hidden_layer,
    }
    print(json.dumps(summary) if as_json else output)


@app.command()
def stats(
    output: Annotated[Path, typer.Option("--output", "-o", help="safetensors file to write.")],
    layer: Annotated[int, typer.Option("--layer", help="Hidden layer.")] = -2,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Text file, one prompt a line.")] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = "default",
    models: ModelsOpt = None,
    zimage: ZImageOpt = None,
) -> None:
    """Per-dimension reference statistics of the text encoder at one layer (default: built-in prompt set)."""
    from .generate import Generator
    from .text import STATS_PROMPTS

    cfg = resolve(config, profile, models, zimage, None)
    lines = STATS_PROMPTS
    if prompts is not None:
        if not prompts.is_file():
            raise UserError(f"prompts file not found: {prompts}")
        lines = tuple(line.strip() for line in prompts.read_text().splitlines() if line.strip())
        if not lines:
            raise UserError(f"prompts file has no prompts: {prompts}")
    result = Generator(cfg).components.text_encoder.reference_stats([layer], lines, cfg.vl.sink_ratio)[layer]
    result.save(output)
    sinks = json.loads(result.metadata["sinks"])
    rows = result.token_count + len(sinks)
    print(
        f"layer {layer}: {len(sinks)} attention-sink row(s) of {rows} left out (vl.sink_ratio "
        f"{cfg.vl.sink_ratio:g}; all listed in the file's 'sinks' metadata)",
        file=sys.stderr,
    )
    for line in sink_lines(sinks)[:STATS_SINK_LINES]:
        print(f"  {line}", file=sys.stderr)
    if len(sinks) > STATS_SINK_LINES:
        print(f"  ... {len(sinks) - STATS_SINK_LINES} more", file=sys.stderr)
    print(output)


STATS_SINK_LINES = 12


def sink_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per sink row of a `stats.describe_sinks` record: where it is, its token, the dims that carry it."""
    out = []
    for r in rows:
        where = (f"prompt {r['prompt']} " if "prompt" in r else "") + f"position {r['position']}"
        token = f" {r['token']!r}" if r.get("token") is not None else ""
        dims = ", ".join(f"dim {d} = {v:.4g}" for d, v in r["dims"])
        out.append(f"{where}{token}: {dims} ({r['ratio_to_median']:.3g}x the median row's max)")
    return out


@app.command("inspect")
def inspect_cmd(
    image: Annotated[Path, typer.Option("--image", "-i", help="Reference image.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt after the image.")],
    layers: Annotated[
        list[int] | None,
        typer.Option("--layers", help="Hidden layers (repeatable; default -2, -6, -8 and the configured VL layers)."),
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    profile: ProfileOpt = "default",
    models: ModelsOpt = None,
    zimage: ZImageOpt = None,
    vl: VLOpt = None,
) -> None:
    """Compare VL rows with the text encoder's, per layer: spans, statistics, outliers, image influence."""
    from rich.table import Table

    from .assemble import layer_weights
    from .diagnostics import INSPECT_LAYERS, inspect_layers
    from .files import load_image
    from .generate import Generator
    from .vl import pick_reference

    cfg = resolve(config, profile, models, zimage, vl)
    components = Generator(cfg).components
    v, enc = cfg.vl, cfg.encoder
    # acted: the prompt templates, the statistics the ratios use and, without --layers, the configured VL layers
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
        load_image(image, "image"),
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
    if as_json:
        print(json.dumps(report, indent=2))
        return
    out = Console()
    for layer, r in report["layers"].items():
        table = Table(title=f"layer {layer}", show_header=True)
        for col in ("span", "tokens", "mean", "std"):
            table.add_column(col)
        for span, n in r["tokens"].items():
            st = r["span_stats"].get(span, {})
            table.add_row(span, str(n), f"{st.get('mean', float('nan')):.4g}", f"{st.get('std', float('nan')):.4g}")
        out.print(table)
        for key in ("std_ratio_image_pad", "std_ratio_text"):
            ratio = r[key]
            if "median" in ratio:
                out.print(
                    f"  {key}: median {ratio['median']:.3g}, outliers above {ratio['outliers_above']}, "
                    f"below {ratio['outliers_below']}, worst {[(d, round(x, 3)) for d, x in ratio['worst']]}"
                )
        corr = r["correlation_with_text_encoder"]
        out.print(
            f"  image influence at prompt rows: {r['image_influence']:.4g}; "
            f"per-dim correlation with the text encoder: mean {corr['mean']:.3g}, median {corr['median']:.3g}"
        )
        for who, found in r["sinks"].items():
            label = "VL" if who == "vl" else "text encoder"
            count = found["count"] or "none"
            out.print(f"  attention sinks ({label}, ratio {found['ratio']:g}): {count}", markup=False)
            for line in sink_lines(found["rows"]):
                out.print(f"    {line}", markup=False, highlight=False)


@app.command()
def steer(
    pairs: Annotated[Path, typer.Option("--pairs", help="TOML: \\[\\[pairs]] prompt/positive/negative, or two sets.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Direction file (safetensors).")],
    method: Annotated[str, typer.Option("--method", help="mean_difference or pca.")] = "mean_difference",
    layer: VLLayerOpt = None,
    token_mode: TokenModeOpt = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = "default",
    models: ModelsOpt = None,
    zimage: ZImageOpt = None,
    vl: VLOpt = None,
) -> None:
    """Build a steering direction from contrastive VL extractions (styled vs neutral images, same prompt)."""
    import tomllib

    from .assemble import layer_weights
    from .files import load_image
    from .generate import Generator
    from .records import direction_metadata
    from .steer import direction_mean_difference, direction_pca, save_direction

    methods = {"mean_difference": direction_mean_difference, "pca": direction_pca}
    if method not in methods:
        raise UserError(f"unknown method '{method}' (valid: {', '.join(methods)})")
    try:
        data = tomllib.loads(pairs.read_text())
    except FileNotFoundError:
        raise UserError(f"pairs file not found: {pairs}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"pairs file {pairs} is not valid TOML: {e}") from None
    if "pairs" in data:
        items = [(p.get("prompt", ""), p["positive"], p["negative"]) for p in data["pairs"]]
        examples = {"positive": [(t, pos) for t, pos, _ in items], "negative": [(t, neg) for t, _, neg in items]}
    elif {"positive", "negative"} <= data.keys():
        examples = {side: [(data.get("prompt", ""), path) for path in data[side]] for side in ("positive", "negative")}
    else:
        raise UserError(f"pairs file {pairs} needs [[pairs]] tables or 'positive' and 'negative' lists")
    cfg = resolve(config, profile, models, zimage, vl, vl__hidden_layer=layer, vl__token_mode=token_mode)
    gen = Generator(cfg)
    # the same rows generation would blend: every vl extraction setting acts (layers, system prompt, masking...)
    rows = {
        side: [gen.extract(load_image(pairs.parent / path, f"{side} image"), text or None)[0] for text, path in entries]
        for side, entries in examples.items()
    }
    direction = methods[method](rows["positive"], rows["negative"])
    examples_used = {k: [p for _, p in v] for k, v in examples.items()}
    meta = direction_metadata(method, cfg, layer_weights(cfg.vl), gen.components.vl.identity, examples_used)
    save_direction(output, direction, meta)
    print(output)


@app.command("train-adapter")
def train_adapter_cmd(
    images: Annotated[Path, typer.Option("--images", help="Folder of training images (png, jpg, webp).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Adapter file (safetensors).")],
    captions: Annotated[
        Path | None, typer.Option("--captions", help="JSON {name: caption} or NAME<TAB>CAPTION.")
    ] = None,
    kind: Annotated[str, typer.Option("--kind", help="linear, low_rank or affine.")] = "linear",
    rank: Annotated[int | None, typer.Option("--rank", help="Rank of a low_rank adapter.")] = None,
    lam: Annotated[float, typer.Option("--lam", help="Ridge penalty of the closed-form initialisation.")] = 1e-2,
    finetune_steps: Annotated[int, typer.Option(help="Flow-matching steps through the frozen DiT (0 = none).")] = 0,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate.")] = 1e-3,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Checkpoints (default: OUTPUT.ckpt/).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the checkpoint.")] = True,
    vl_layer: VLLayerOpt = None,
    token_mode: TokenModeOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    seed: SeedOpt = None,
    shift: ShiftOpt = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = "default",
    models: ModelsOpt = None,
    zimage: ZImageOpt = None,
    vl: VLOpt = None,
) -> None:
    """Train a small adapter from Qwen3-VL rows to the DiT's caption space (ridge init, optional fine-tuning)."""
    from .adapter import read_captions, train_adapter
    from .generate import Generator

    if not images.is_dir():
        raise UserError(f"images folder not found: {images}")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise UserError(f"no images (png, jpg, webp) in {images}")
    cfg = resolve(
        config,
        profile,
        models,
        zimage,
        vl,
        vl__hidden_layer=vl_layer,
        vl__token_mode=token_mode,
        generation__width=width,
        generation__height=height,
        generation__seed=seed,
        generation__shift=shift,
    )
    adapter, meta = train_adapter(
        Generator(cfg),
        files,
        read_captions(captions),
        kind=kind,
        rank=rank,
        lam=lam,
        steps=finetune_steps,
        lr=lr,
        checkpoint_dir=checkpoint_dir or output.with_suffix(".ckpt"),
        resume=resume,
    )
    adapter.save(output, meta)
    print(output)


@app.command()
def sweep(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Sweep directory.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="A built-in sweep (see --list-presets).")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Sweep spec TOML (fixed, axes, prompts...).")] = None,
    list_presets: Annotated[bool, typer.Option("--list-presets", help="List presets with run counts.")] = False,
    image: Annotated[list[Path] | None, typer.Option("--image", "-i", help="Reference image (repeatable).")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Prompt (repeatable).")] = None,
    prompts_file: Annotated[Path | None, typer.Option(help="Text file, one prompt a line.")] = None,
    init_image: Annotated[Path | None, typer.Option(help="Init image for every run (image-to-image).")] = None,
    img2img: Annotated[bool, typer.Option("--img2img", help="Start each run from its reference image.")] = False,
    steer: Annotated[Path | None, typer.Option("--steer", help="Steering direction for the runs.")] = None,
    neutral_image: Annotated[
        Path | None, typer.Option(help="Neutral image of the runs with blend style_delta (their unstyled reference).")
    ] = None,
    alphas: Annotated[str | None, typer.Option(help="Axis vl.alpha, comma-separated.")] = None,
    layers: Annotated[str | None, typer.Option(help="Axis vl.hidden_layer.")] = None,
    token_modes: Annotated[str | None, typer.Option(help="Axis vl.token_mode.")] = None,
    blend_modes: Annotated[str | None, typer.Option(help="Axis vl.blend.")] = None,
    normalize: Annotated[str | None, typer.Option(help="Axis vl.normalize.")] = None,
    outlier_masking: Annotated[str | None, typer.Option(help="Axis vl.outlier_masking.")] = None,
    strengths: Annotated[str | None, typer.Option(help="Axis generation.strength.")] = None,
    steps: Annotated[str | None, typer.Option(help="Axis generation.steps.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds (each run is repeated per seed).")] = None,
    schedules: Annotated[str | None, typer.Option(help="Axis vl.alpha_schedule (';'-separated).")] = None,
    adapters: Annotated[str | None, typer.Option(help="Axis vl.adapter: adapter files or 'none'.")] = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    seed: SeedOpt = None,
    guidance: GuidanceOpt = None,
    shift: ShiftOpt = None,
    strength: StrengthOpt = None,
    alpha: AlphaOpt = None,
    blend: BlendOpt = None,
    resample: ResampleOpt = None,
    token_mode: TokenModeOpt = None,
    vl_layer: VLLayerOpt = None,
    vl_layers: VLLayersOpt = None,
    alpha_schedule: ScheduleOpt = None,
    inject_layers: InjectOpt = None,
    blend_option: BlendOptionOpt = None,
    outlier_threshold: ThresholdOpt = None,
    reference_stats: StatsOpt = None,
    no_baseline: Annotated[bool, typer.Option("--no-baseline", help="Leave out the pure-text baselines.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted sweep in OUTPUT.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and stop.")] = False,
    as_json: JsonOpt = False,
    batch_size: Annotated[int, typer.Option(help="Runs per diffusers call when they can share one.", min=1)] = 1,
    executor: Annotated[str, typer.Option(help="local or ray.")] = "local",
    clip_model: ClipOpt = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = "default",
    models: ModelsOpt = None,
    zimage: ZImageOpt = None,
    vl: VLOpt = None,
    low_memory: LowMemOpt = None,
) -> None:
    """Run a sweep: every combination of the axes (plus the pure-text baseline) with metrics, grid and report."""
    from .experiment import EXECUTORS
    from .sweep import PRESETS, SweepSpec, expand, plan_sweep, preset_needs, resolve_spec

    if list_presets:
        for name in PRESETS:
            needs = preset_needs(name)
            inputs = {"steer": "s"} if "--steer" in needs else {"images": ["i"], "neutral_image": "n"}
            probe = resolve_spec(SweepSpec(prompts=["p"], **inputs), name, {}, {})
            needs = ", ".join(preset_needs(name)) or "nothing"
            print(
                f"{name:18} {len(expand(probe)):3d} runs per prompt x image x seed (baselines included); needs {needs}"
            )
        return
    check_choice(executor, EXECUTORS, "executor")
    if output is None and not dry_run:
        raise UserError("give the sweep directory with --output/-o")
    base_spec = SweepSpec.from_toml(spec) if spec else SweepSpec()
    prompts = list(prompt or [])
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise UserError(f"prompts file not found: {prompts_file}")
        prompts += [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
    updates: dict[str, Any] = {
        "baseline": base_spec.baseline and not no_baseline,
        "img2img": base_spec.img2img or img2img,
    }
    if prompts:
        updates["prompts"] = prompts
    if image:
        updates["images"] = [str(p) for p in image]
    if init_image:
        updates["init_image"] = str(init_image)
    if steer:
        updates["steer"] = str(steer)
    if neutral_image:
        updates["neutral_image"] = str(neutral_image)
    if seeds or seed is not None:
        updates["seeds"] = [int(x) for x in parse_list(seeds, int, "--seeds")] if seeds else [seed]
    axes = {
        "vl.alpha": parse_list(alphas, float, "--alphas"),
        "vl.hidden_layer": parse_list(layers, int, "--layers"),
        "vl.token_mode": parse_list(token_modes, str, "--token-modes"),
        "vl.blend": parse_list(blend_modes, str, "--blend-modes"),
        "vl.normalize": parse_list(normalize, str, "--normalize"),
        "vl.outlier_masking": parse_list(outlier_masking, str, "--outlier-masking"),
        "generation.strength": parse_list(strengths, float, "--strengths"),
        "generation.steps": parse_list(steps, int, "--steps"),
        "vl.alpha_schedule": schedules.split(";") if schedules else None,
        "vl.adapter": [None if a.strip() == "none" else a.strip() for a in adapters.split(",")] if adapters else None,
    }
    fixed = {
        "generation.width": width,
        "generation.height": height,
        "generation.guidance": guidance,
        "generation.shift": shift,
        "generation.strength": strength,
        "vl.alpha": alpha,
        "vl.blend": blend,
        "vl.resample": resample,
        "vl.token_mode": token_mode,
        "vl.hidden_layer": vl_layer,
        "vl.layers": vl_layers,
        "vl.alpha_schedule": alpha_schedule,
        "vl.inject_layers": parse_int_list(inject_layers, "--inject-layers"),
        "vl.blend_options": parse_blend_options(blend_option),
        "vl.outlier_threshold": outlier_threshold,
        "vl.reference_stats": str(reference_stats) if reference_stats else None,
    }
    resolved = resolve_spec(base_spec.model_copy(update=updates), preset, axes, fixed)
    cfg = resolve(config, profile, models, zimage, vl, models__low_memory=low_memory)
    if dry_run:
        work = plan_sweep(cfg, resolved)
        if as_json:
            print(json.dumps(work.as_dict() | {"run_list": work.runs}, indent=2, default=str))
        else:
            print(
                f"{len(work.runs)} runs, {len(work.unique_extractions)} unique VL extractions "
                f"({sum(len(e['layers']) for e in work.unique_extractions)} layers) "
                f"+ {len(work.probe_extractions)} image-check probe extractions, "
                f"{len(work.unique_encodes)} unique text encodes"
            )
        return
    from .experiment import run_experiment

    result = run_experiment(
        cfg, resolved, output, resume=resume, batch_size=batch_size, executor=executor, clip_model=clip_model
    )
    summary = result.summary
    if as_json:
        print(json.dumps(summary | {"grid": str(result.grid), "report": str(result.report)}, indent=2))
    else:
        console.print(
            f"{summary['completed']}/{summary['runs']} runs done ({summary['failed']} failed), "
            f"{summary['vl_forward_passes']} VL and {summary['text_forward_passes']} text forward passes"
        )
        print(result.report)


def parse_list(spec: str | None, kind: type, label: str) -> list[Any] | None:
    """`"0.1,0.3"` -> `[0.1, 0.3]`."""
    if spec is None:
        return None
    try:
        return [kind(x.strip()) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"bad {label} '{spec}': expected {kind.__name__} values separated by commas") from None


@app.command()
def metrics(sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory.")], clip_model: ClipOpt = None) -> None:
    """Recompute metrics.json for a sweep directory."""
    from .scoring import write_metrics
    from .sweepdir import SweepDir

    print(json.dumps(write_metrics(SweepDir.existing(sweep_dir), clip_model), indent=2))


@app.command()
def report(sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory.")]) -> None:
    """Rebuild grid.png and report.html for a sweep directory."""
    from .report import build_report
    from .sweepdir import SweepDir

    for path in build_report(SweepDir.existing(sweep_dir)):
        print(path)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where to write the demo outputs.")] = Path("out/demo"),
    image: Annotated[Path | None, typer.Option("--image", "-i", help="Reference image.")] = None,
) -> None:
    """The whole pipeline on the tiny offline models: a reference-conditioned image with its sidecar, then the
    `vl_only_vs_qwen3` sweep with metrics, grid and report. Rerunning it finishes or reuses earlier work."""
    from .experiment import run_experiment
    from .files import load_image, save_image
    from .generate import Generator
    from .sweep import SweepSpec, resolve_spec

    ref = image or Path(str(resources.files("llm_dit") / "data" / "demo_reference.png"))
    prompt = "a house by the sea at sunset"
    small = {"generation.width": 128, "generation.height": 128, "generation.steps": 4}
    cfg = resolve(None, "default", "tiny", None, None, **{k.replace(".", "__"): v for k, v in small.items()})
    result = Generator(cfg).generate(prompt, load_image(ref, "reference image"))
    single = save_image(result.image, out / "reference_conditioned.png", result.record)
    print(f"reference-conditioned image: {single} (settings in {single.with_suffix('.json')})")

    spec = resolve_spec(SweepSpec(prompts=[prompt], images=[str(ref)]), "vl_only_vs_qwen3", {}, small)
    sweep = run_experiment(cfg, spec, out / "sweep", resume=True)
    print(f"sweep: {sweep.summary['completed']} runs, {sweep.summary['vl_forward_passes']} VL forward passes")
    print(f"report: {sweep.report}")


@app.command()
def bench(
    preset: Annotated[str, typer.Option("--preset", help="Model zoo preset: tiny or small.")] = "small",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures to this JSON file.")] = None,
    repeats: Annotated[int, typer.Option(help="Timed repetitions per figure (after one warm-up).", min=1)] = 5,
) -> None:
    """Benchmark against diffusers and the naive workflow; every figure is a ratio measured side by side."""
    from .bench import SIZES, run_bench
    from .files import write_json

    if preset not in SIZES:
        raise UserError(f"unknown preset '{preset}' (valid: {', '.join(SIZES)})")
    result = run_bench(preset, repeats, progress=lambda step: console.print(f"[dim]bench: {step}[/]"))
    if json_out is not None:
        write_json(json_out, result)
    for name, fig in result.items():
        if isinstance(fig, dict) and "ratio" in fig:
            met = "" if "met" not in fig else ("  ok" if fig["met"] else "  MISSED")
            print(f"{name:34} ratio {fig['ratio']:<8} target {fig.get('target', '-'):<7}{met}")
    rerun = result["cache_rerun_forward_passes"]
    print(f"{'cache_rerun_forward_passes':34} vl {rerun['vl']} text {rerun['text']}")


def _quiet_libraries() -> None:
    """Keep the terminal for llm-dit's own output: no per-file progress bars or info logs from HF libraries."""
    import diffusers
    import transformers

    for lib in (transformers, diffusers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def main() -> None:
    """Console entry point: runs the app and turns `UserError` into one line and exit code 2."""
    _quiet_libraries()
    warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"
    try:
        app()
    except UserError as e:
        if _state["debug"]:
            raise
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
