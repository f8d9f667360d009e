"""The command line's one table of options, and the glue that builds each command's options from it.

Every option that carries a value to the API is one `Option` in `OPTIONS`: its flag(s), the key the API knows the
value by, the type of the value, its help, whether it is a list option and, for settings a sweep can vary, the flag
of that axis. A key is either a config key (`vl.alpha`: dotted, applied with `config.with_overrides` through
`load_config`) or the name of an API argument or sweep-spec field (`images`, `resume`).

A command takes the options of some tags (`takes`): the decorator extends the command's signature with them (so
typer builds the options and `--help` lists them, grouped in panels) and gives the command one `Given` instead:
`{key: value}` of the options set on the command line, and a sweep's axes. Every list option accepts `a,b` and
repeated flags, which accumulate (`split_items`, the one parser). Errors raised by the API name keys; as one leaves
the command, `takes` puts the command's flags beside them (`with_flags`).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer

from ..core.errors import UserError
from ..core.modes import ADHERENCE_TOLERANCE, EXECUTOR_NAMES, INSPECT_LAYERS, SCHEDULES, ZOO_PRESETS
from .settings import Config, load_config


def blend_option(item: str) -> tuple[str, float | int | bool]:
    """`"p=3"` -> `("p", 3)`, `"eps=0.1"` -> `("eps", 0.1)`, `"x=true"` -> `("x", True)`."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError("expected KEY=VALUE")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    try:
        return key, int(value) if value.lstrip("-").isdigit() else float(value)
    except ValueError:
        raise ValueError("value must be a number or true/false") from None


def weight_list(item: str) -> list[float]:
    """`"0.5,0.5"` -> `[0.5, 0.5]`: the weights of one reference set."""
    try:
        return [float(w) for w in item.split(",")]
    except ValueError:
        raise ValueError("expected numbers separated by commas, e.g. 0.5,0.5") from None


def adapter_or_none(item: str) -> str | None:
    """An adapter file of the `--adapters` axis, or `none` for a run without adapter."""
    return None if item == "none" else item


def lora_set(item: str) -> list[str]:
    """One LoRA set: `FILE[:SCALE]` items joined by `,` (`--lora` splits them first), or `none` for no LoRA."""
    return [] if item == "none" else [s.strip() for s in item.split(",") if s.strip()]


def flatten(sets: list[list[str]]) -> list[str]:
    return [item for s in sets for item in s]


@dataclass(frozen=True)
class Option:
    """One row of the table. `kind` is the type of the value (of each item, for a list option); `item` converts
    one item of a list option (default: `kind`) and `join` makes the option's value of the items (default: the
    list); `sep` splits one given value into items (`None`: only repeated flags). `axis` is the flag that varies
    `key` in a sweep (`axis_help` its help, `axis_sep` its separator); `tags` say which commands take the option."""

    key: str
    flags: tuple[str, ...]
    help: str
    tags: tuple[str, ...]
    kind: type = str
    many: bool = False
    sep: str | None = ","
    item: Callable[[str], Any] | None = None
    join: Callable[[list[Any]], Any] | None = None
    axis: str | None = None
    axis_help: str = ""
    axis_sep: str = ","
    default: Any = None
    minimum: int | None = None
    metavar: str = ""  # of one item of a list option (default: its kind's name)
    quoted: bool = False  # API errors quote this argument as 'key' (with_flags puts the flags beside it)
    examples: tuple[str, str] = ("", "")  # two items of a list option, for the test that every list option parses

    @property
    def config_key(self) -> bool:
        return "." in self.key


FLAG = ""
"""The metavar of a flag (an option that takes no value, `--json`): nothing. Without one, typer's rich help (0.29)
shows a flag's type as if it took a value (`--json <bool>`); click's plain help shows none."""


def row(key: str, flags: str, help: str, tags: str, kind: type = str, **kw: Any) -> Option:
    """A row of the table on one line: `flags` and `tags` are space-separated."""
    return Option(key, tuple(flags.split()), help, tuple(tags.split()), kind, **kw)


# Tags: config (--config, --profile), zoo (--models), zimage, vl-model, low-memory, dit (how the DiT loads),
# quantization;
# generation (generate's generation.* flags), training (train-adapter's), conditioning (generate's vl.* flags),
# extraction (extract's), vl-rows (steer's and train-adapter's), encoder (encode's); inputs (generate's files),
# sweep (a sweep's inputs), run (how a sweep runs), scoring (metrics), inspect, bench.
# fmt: off
OPTIONS: tuple[Option, ...] = (
    # where the config comes from, and the models
    row("config", "--config", "Config TOML (default: $LLM_DIT_CONFIG, else the packaged config.toml).", "config", Path),
    row("profile", "--profile", "Profile in the config file.", "config", default="default"),
    row("models", "--models", f"Use a built-in zoo preset for both models ({', '.join(ZOO_PRESETS)}).", "zoo"),
    row("models.zimage", "--zimage", "Z-Image folder or hub id", "zimage"),
    row("models.vl", "--vl", "Qwen3-VL folder or hub id", "vl-model"),
    row("models.low_memory", "--low-memory/--no-low-memory", "Release components after use", "low-memory", bool),
    row("models.transformer", "--transformer", "Single-file DiT (.safetensors or .gguf) in place of the Z-Image "
      "folder's", "dit", Path),
    row("models.offload", "--offload", "CPU offload of the DiT + VAE (needs an accelerator)", "dit"),
    row("models.compile", "--compile/--no-compile", "torch.compile the DiT's repeated blocks", "dit", bool),
    row("models.encoder_quantization", "--encoder-quantization", "Text-encoder weight quantisation", "quantization"),
    row("models.vl_quantization", "--vl-quantization", "Qwen3-VL weight quantisation", "quantization"),
    # generation
    row("generation.strength", "--strength", "Img2img strength", "generation", float, axis="--strengths",
      examples=("0.5", "0.75")),
    row("generation.steps", "--steps", "Denoising steps", "generation eval", int, axis="--steps", examples=("2", "4")),
    row("generation.width", "--width", "Width, multiple of 16", "generation training eval", int),
    row("generation.height", "--height", "Height, multiple of 16", "generation training eval", int),
    row("generation.seed", "--seed", "Seed of the CPU generator", "generation training", int, axis="--seeds",
      axis_help="Seeds: every run is repeated per seed", examples=("0", "1")),
    row("generation.guidance", "--guidance", "CFG scale, 0 = off", "generation eval", float),
    row("generation.shift", "--shift", "Scheduler shift", "generation training eval", float),
    row("generation.loras", "--lora", "LoRA of the DiT, FILE or FILE:SCALE (scale 1 by default)", "generation eval",
      many=True, item=lora_set, join=flatten, metavar="file[:scale]", axis="--lora-sets", axis_sep=";",
      axis_help="LoRA sets to vary, each FILE[:SCALE],... or 'none'", examples=("a.safetensors:0.8", "b.safetensors")),
    # conditioning: how V is extracted and blended
    row("vl.alpha", "--alpha", "Blend strength", "conditioning", float, axis="--alphas", examples=("0.3", "0.6")),
    row("vl.blend", "--blend", "Blend mode (docs/methods.md)", "conditioning", axis="--blend-modes",
      examples=("interpolate", "adain_per_dim")),
    row("vl.resample", "--resample", "Length alignment", "conditioning"),
    row("vl.token_mode", "--token-mode", "VL rows to keep", "conditioning extraction vl-rows", axis="--token-modes",
      examples=("full", "image_only")),
    row("vl.max_pixels", "--max-pixels", "Cap on the reference's resized area in pixels (image tokens = area / 1024)",
      "conditioning extraction", int),
    row("vl.hidden_layer", "--vl-layer", "VL hidden layer", "conditioning vl-rows", int, axis="--layers",
      examples=("-2", "-6")),
    row("vl.hidden_layer", "--layer", "VL hidden layer (transformers' hidden_states index)", "extraction", int),
    row("vl.layers", "--vl-layers", "Weighted VL layers LAYER:WEIGHT, e.g. -6:0.7,-16:0.3", "conditioning",
      many=True, join=",".join, metavar="layer:weight", examples=("-6:0.7", "-2:0.3")),
    row("vl.normalize", "--normalize", "Normalisation of the VL rows", "conditioning extraction", axis="--normalize",
      examples=("none", "global")),
    row("vl.outlier_masking", "--outlier-masking", "Outlier masking", "conditioning extraction",
      axis="--outlier-masking", examples=("none", "clamp")),
    row("vl.outlier_threshold", "--outlier-threshold", "Outlier threshold t > 1", "conditioning extraction", float),
    row("vl.alpha_schedule", "--alpha-schedule", f"Alpha schedule, e.g. linear:0,0.6 (kinds: {', '.join(SCHEDULES)})",
      "conditioning", axis="--schedules", axis_sep=";", examples=("constant", "linear:0,0.6")),
    row("vl.inject_layers", "--inject-layers", "DiT blocks that see the blend, e.g. 0,1", "conditioning", int,
      many=True, examples=("0", "1")),
    row("vl.blend_options", "--blend-option", "Blend mode option KEY=VALUE (number or true/false)", "conditioning",
      many=True, item=blend_option, join=dict, metavar="key=value", examples=("p=4", "eps=0.1")),
    row("vl.reference_stats", "--reference-stats", "Statistics file (llm-dit stats)", "conditioning extraction", Path),
    row("vl.adapter", "--adapter", "Trained adapter file (llm-dit train-adapter)", "conditioning", Path,
      axis="--adapters", axis_help="Adapter files to vary, 'none' = no adapter", item=adapter_or_none, metavar="path",
      examples=("none", "a.safetensors")),
    row("encoder.hidden_layer", "--layer", "Text-encoder hidden layer", "encoder", int),
    # conditioning inputs of one image (arguments of tasks.generate_file)
    row("image", "-i --image", "Reference image(s) (VL conditioning); several are combined by --reference-weights.",
      "inputs", Path, many=True, metavar="path", examples=("A.png", "B.png")),
    row("reference_weights", "--reference-weights", "Weight of each reference image, in order (default: 1/n each; "
      "used as given, negative = away from it).", "inputs", float, many=True, quoted=True, examples=("0.6", "0.4")),
    row("init_image", "--init-image", "Image-to-image from this image.", "inputs sweep", Path, quoted=True),
    row("steer", "--steer", "Steering direction file (llm-dit steer); in eval, a `steer` method.", "inputs sweep eval",
      Path, quoted=True),
    row("vl_embeddings", "--vl-embeddings", "VL rows from `llm-dit extract` instead of -i.", "inputs", Path),
    row("neutral_image", "--neutral-image", "Neutral image: the unstyled reference blend style_delta needs.",
      "inputs sweep", Path, quoted=True),
    row("neutral_embeddings", "--neutral-embeddings", "Neutral VL rows for style_delta.", "inputs", Path,
      quoted=True),
    row("embeddings", "--embeddings", "Use these caption rows as they are.", "inputs", Path),
    row("style", "--style", "Style file FILE[:SCALE] (llm-dit style extract/combine); several are combined.",
      "inputs sweep", many=True, sep=None, metavar="file[:scale]", quoted=True,
      examples=("a.safetensors", "b.safetensors:0.5")),
    row("negative_image", "--negative-image", "CFG's negative rows: the empty prompt blended with this image "
      "(needs --guidance > 0); in a sweep, of every run with a reference image.", "inputs sweep", Path, quoted=True),
    # a sweep's inputs (SweepSpec fields) and how it runs
    row("images", "-i --image", "Reference images, each its own run; A.png+B.png is one run on a reference set.",
      "sweep", many=True, metavar="path", quoted=True, examples=("A.png", "B.png+C.png")),
    row("reference_weights", "--reference-weights", "Weights of each reference set, e.g. '0.5,0.5;0.8,0.2': every "
      "set is run with each weight list (default: 1/n each).", "sweep", many=True, sep=";", item=weight_list,
      metavar="w1,w2", quoted=True, examples=("0.5,0.5", "0.8,0.2")),
    row("prompts", "-p --prompt", "Prompts (not split at commas: they may hold some).", "sweep", many=True, sep=None,
      examples=("a house", "a barn, at dusk"), quoted=True),
    row("resume", "--resume", "Finish an interrupted sweep in OUTPUT.", "run", bool, default=False, quoted=True),
    row("batch_size", "--batch-size", "Runs per diffusers call when they can share one.", "run", int, default=1,
      minimum=1),
    row("executor", "--executor", f"Where runs execute: {', '.join(EXECUTOR_NAMES)}.", "run", default="local"),
    row("metric_models", "--metric-models", "Metric models: default (the real ids), tiny (the tiny zoo), "
      "ROLE=ID_OR_PATH or ROLE=none (roles: clip, siglip, csd, dino, image_reward, hpsv2); later items override. "
      "Unset: model-free metrics only.", "run scoring", many=True, metavar="spec", examples=("tiny", "dino=none")),
    row("metric_device", "--metric-device", "Device of the metric models (default cpu).", "run scoring",
      default="cpu"),
    # an eval's suite and methods (arguments of suite.load_suite, evalmethods.methods_of, evaluate.run_eval)
    row("suite", "--suite", "Suite: builtin (8 style references x 24 prompts), a folder of images (with "
      "--prompts-file) or hf:DATASET (a datasets folder or hub id).", "eval", default="builtin", quoted=True),
    row("references", "--references", "References in the suite (the first N; default all).", "eval", int, minimum=1,
      quoted=True),
    row("prompt_count", "--prompts", "Prompts in the suite (the first N; default all).", "eval", int, minimum=1,
      quoted=True),
    row("seed_count", "--seeds", "Seeds 0..N-1 of every cell.", "eval", int, default=1, minimum=1, quoted=True),
    row("quick", "--quick", "A first look: 2 references x 2 prompts x 1 seed.", "eval", bool, default=False),
    row("prompts_file", "--prompts-file", "Prompts of the suite, one a line.", "eval", Path, quoted=True),
    row("image_column", "--image-column", "Image column of a datasets suite.", "eval", quoted=True),
    row("prompt_column", "--prompt-column", "Prompt column of a datasets suite (else --prompts-file/builtin).",
      "eval", quoted=True),
    row("split", "--split", "Split of a datasets suite.", "eval", default="train"),
    row("methods", "--method", "Method KIND[:KEY=V1,V2[:KEY=...]] (kinds: text, caption, img2img, vl, steer, "
      "omni), e.g. vl:alpha=0.3,0.5; values crossed.", "eval", many=True, sep=None, metavar="method",
      examples=("vl:alpha=0.3,0.5", "img2img:strength=0.5")),
    row("presets", "--preset", "Sweep presets as vl methods (one method per run of the preset).", "eval", many=True,
      metavar="name", examples=("alpha", "token")),
    row("img2img_strengths", "--img2img-strengths", "img2img methods at these strengths.", "eval", float, many=True,
      examples=("0.5", "0.7")),
    row("adapter", "--adapter", "Trained adapter file: an 'adapter' method.", "eval", Path, quoted=True),
    row("omni", "--omni", "Z-Image Omni weights (a diffusers ZImageOmniPipeline folder).", "eval", Path,
      quoted=True),
    row("eval_spec", "--eval-spec", "Eval spec TOML: a method table per method (name, kind, settings).", "eval", Path,
      quoted=True),
    row("tolerance", "--adherence-tolerance", "Prompt-adherence loss a method may show (CI lower bound of the "
      "paired difference >= -TOL) and still beat caption.", "eval", float, default=ADHERENCE_TOLERANCE, quoted=True),
    # bench
    row("only", "--only", "Only these groups of figures, e.g. studio (a wrong name lists them).", "bench",
      many=True, metavar="group", examples=("studio", "sweep")),
    # inspect
    row("layers", "--layers", f"Hidden layers (default: {', '.join(map(str, INSPECT_LAYERS))} and the configured VL "
      "layers).", "inspect", int, many=True, examples=("-2", "-6")),
)
# fmt: on

# Titles of the --help panels, by tag (the first of a command's tags that an option has places it).
PANELS = {
    "config": "Configuration and models",
    "zoo": "Configuration and models",
    "zimage": "Configuration and models",
    "vl-model": "Configuration and models",
    "low-memory": "Configuration and models",
    "dit": "Configuration and models",
    "quantization": "Configuration and models",
    "generation": "Generation settings",
    "training": "Generation settings",
    "conditioning": "Conditioning settings",
    "extraction": "Extraction settings",
    "vl-rows": "Extraction settings",
    "encoder": "Encoder settings",
    "inputs": "Conditioning inputs",
    "sweep": "Sweep inputs",
    "eval": "Eval suite and methods",
}
AXES_PANEL = "Sweep axes (an axis of one value is a fixed setting)"


def choices(key: str) -> tuple[str, ...]:
    """The valid values of a config key whose type is a mode list (`Literal[...]`, built from the mode tuples of
    the module that implements the modes), else `()`."""
    section, _, name = key.partition(".")
    sub = Config.model_fields.get(section)
    f = sub.annotation.model_fields.get(name) if sub is not None else None
    return get_args(f.annotation) if f is not None and get_origin(f.annotation) is Literal else ()


def split_items(values: Iterable[str], sep: str | None) -> list[str]:
    """The items of a list option: every given value split at `sep` (`None`: not split), stripped, empty items
    dropped; repeated flags accumulate in order, so `--x a,b` and `--x a --x b` give the same items."""
    items: list[str] = []
    for value in values:
        items += [s.strip() for s in (value.split(sep) if sep else [value])]
    return [s for s in items if s]


_KIND_ERRORS = {int: "expected an integer", float: "expected a number"}


def parse_list(values: list[str] | None, flag: str, sep: str | None, item: Callable[[str], Any]) -> list[Any] | None:
    """`split_items`, each item converted by `item`; `None` when the flag was not given. A bad item is a
    `UserError` naming the flag."""
    if not values:
        return None
    out = []
    for s in split_items(values, sep):
        try:
            out.append(item(s))
        except ValueError as e:
            why = _KIND_ERRORS.get(item, str(e))  # type: ignore[call-overload]
            raise UserError(f"bad {flag} '{s}': {why}") from None
    return out


@dataclass(frozen=True)
class Param:
    """One option of one command: the table row, whether it is the row's sweep axis, and its parameter name."""

    option: Option
    axis: bool

    @property
    def flags(self) -> tuple[str, ...]:
        return (self.option.axis,) if self.axis else self.option.flags

    @property
    def many(self) -> bool:
        return self.axis or self.option.many

    @property
    def sep(self) -> str | None:
        return self.option.axis_sep if self.axis else self.option.sep

    @property
    def name(self) -> str:
        long = next(f for f in self.flags if f.startswith("--"))
        return long.split("/")[0].removeprefix("--").replace("-", "_")

    def parse(self, raw: Any) -> Any:
        """The value of this option from what typer parsed (`None`: not given)."""
        o = self.option
        if not self.many:
            return str(raw) if isinstance(raw, Path) and o.config_key else raw
        items = parse_list(raw, self.flags[-1], self.sep, o.item or o.kind)
        return items if items is None or self.axis or o.join is None else o.join(items)

    def parameter(self, panel: str | None) -> inspect.Parameter:
        """The typer parameter: list options as repeatable strings (`parse` splits and converts them)."""
        o = self.option
        valid = choices(o.key)
        help = (o.axis_help or f"Values of {o.key} to vary") + "." if self.axis else o.help
        if o.config_key and not self.axis:
            help += f" ({o.key})."
        if valid:
            help += f" One of: {', '.join(valid)}."
        if self.many:
            sep = {",": "comma-separated", ";": "';'-separated"}.get(self.sep or "")
            help += f" {sep.capitalize()} or repeated." if sep else " Repeatable."
        kind = list[str] if self.many else o.kind
        item = o.metavar or {int: "int", float: "float"}.get(o.item or o.kind, "text")
        if self.many:
            metavar = f"<{item}{self.sep or ''}...>"
        elif o.kind is bool:
            metavar = FLAG  # a flag takes no value
        else:
            metavar = None
        info = typer.Option(*self.flags, help=help, rich_help_panel=panel, min=o.minimum, metavar=metavar)
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=o.default, annotation=Annotated[kind | None, info]
        )


@dataclass(frozen=True)
class Given:
    """The table options one command was given: `values` {key: value} (options left unset are not in it) and, in a
    sweep, `axes` {config key: values}."""

    values: dict[str, Any]
    axes: dict[str, list[Any]] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def of(self, tag: str) -> dict[str, Any]:
        """`{key: value}` (`None`: not given) of the table's options with `tag` that are API arguments, not config
        keys (e.g. a command's input files)."""
        return {o.key: self.values.get(o.key) for o in OPTIONS if tag in o.tags and not o.config_key}

    def settings(self, *sections: str) -> dict[str, Any]:
        """The config keys given, `{"section.key": value}` (of `sections` only, when named)."""
        return {k: v for k, v in self.values.items() if "." in k and (not sections or k.partition(".")[0] in sections)}

    def config(self, *sections: str) -> Config:
        """The config of `--config`, `--profile`, `--models` and the settings given (of `sections` only, when
        named): `resolve_config`."""
        v = self.values
        return resolve_config(v.get("config"), v.get("profile", "default"), v.get("models"), self.settings(*sections))


def resolve_config(
    path: Path | None = None,
    profile: str = "default",
    models: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """The config file `path` and `profile`, then the zoo preset `models` (both model paths, built on first use),
    then `overrides` ({"section.key": value}), each level applied by `config.with_overrides` in `load_config`."""
    given: dict[str, Any] = {}
    if models is not None:
        from ..models.zoo import model_settings

        if models not in ZOO_PRESETS:
            raise UserError(f"unknown --models preset '{models}' (valid: {', '.join(ZOO_PRESETS)})")
        given = model_settings(models)
    return load_config(path, profile, given | (overrides or {}))


def command_params(tags: Iterable[str], axes: bool = False) -> tuple[list[Param], dict[str, str]]:
    """The options of the table's rows with any of `tags` (with `axes`, also each row's sweep axis; a fixed flag
    that is its own axis flag is only the axis) and each one's help panel."""
    tags = list(tags)
    params: list[Param] = []
    panels: dict[str, str] = {}
    for o in OPTIONS:
        tag = next((t for t in tags if t in o.tags), None)
        if tag is None:
            continue
        if not (axes and o.axis in o.flags):
            params.append(Param(o, axis=False))
            panel = PANELS.get(tag, "")
            panels[params[-1].name] = f"{panel} (fixed for every run)" if axes and o.config_key and panel else panel
        if axes and o.axis:
            params.append(Param(o, axis=True))
            panels[params[-1].name] = AXES_PANEL
    return params, panels


def takes(*tags: str, axes: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator of a command: adds the options of the table rows with any of `tags` (with `axes`, the sweep axes
    too) to its signature, and calls it with `given: Given` in their place. A `UserError` the command raises is
    raised again in the command line's words (`with_flags`)."""
    params, panels = command_params(tags, axes)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "given"]
        names = [p.name for p in own] + [p.name for p in params]
        if len(set(names)) != len(names):
            raise RuntimeError(f"{func.__name__}: two options named alike in {names}")

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            values: dict[str, Any] = {}
            axes_given: dict[str, list[Any]] = {}
            for p in params:
                value = p.parse(kwargs.pop(p.name))
                if value is not None:
                    (axes_given if p.axis else values)[p.option.key] = value
            try:
                return func(**kwargs, given=Given(values, axes_given))
            except UserError as e:
                message = with_flags(str(e), params)
                if message == str(e):
                    raise
                raise UserError(message) from e

        new = [p.parameter(panels[p.name] or None) for p in params]
        wrapper.__signature__ = inspect.Signature([*own, *new])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *new]}
        wrapper.params = params  # type: ignore[attr-defined]
        return wrapper

    return decorate


def with_flags(message: str, params: Iterable[Param]) -> str:
    """`message` of an API error in the command line's words, for `params`, the options of the command that raised
    it: a config key, or an argument the API quotes (`Option.quoted`), gets its flags after its first quoted mention
    (`'vl.alpha'` -> `'vl.alpha' (--alpha)`, `'resume'` -> `'resume' (--resume)`); a config key named only bare
    (a word of its own, inside a phrase such as `vl.blend 'style_delta'`) gets them at the end
    (`(vl.blend: --blend)`)."""
    flags: dict[str, list[str]] = {}
    for p in params:
        if p.option.config_key or p.option.quoted:
            flags.setdefault(p.option.key, []).append("/".join(p.flags))
    words = set(re.findall(r"[\w.]+", message))  # `vl.blend` is one word, `vl.blend_options` another
    bare = []
    for key, names in flags.items():
        shown, quoted = ", ".join(dict.fromkeys(names)), f"'{key}'"
        if quoted in message:
            message = message.replace(quoted, f"{quoted} ({shown})", 1)
        elif "." in key and key in words:
            bare.append(f"{key}: {shown}")
    return f"{message} ({'; '.join(bare)})" if bare else message
