"""Configuration: validated profiles from TOML, overridden by explicit settings.

Precedence, lowest first: field defaults below < `[default]` of the config file < `[PROFILE]` of the config
file (when a profile other than `default` is chosen) < CLI flags / keyword overrides. The config file is
`--config FILE`, else `$LLM_DIT_CONFIG`, else the packaged `config.toml`. Every key is checked: an unknown key or
a bad value is a `ConfigError` naming the key, the profile and the file.

Every level above the field defaults is applied by `with_overrides` (`{"section.key": value}`), the one way settings
are overridden: profiles, keyword overrides (CLI flags) and each sweep run's settings. `vl.hidden_layer` and
`vl.layers` are two ways to choose the VL layer(s), so they follow precedence as one setting (`layer_choice`): the
level that sets either wins, and one level setting both is an error.

The mode lists and limits are not written here: each field's type is built from the tuple of the module that
implements the modes (`core.modes`: `BLEND_MODE_NAMES`, `NORMALIZATION_MODES`, `TOKEN_MODES`, ...).
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..core.errors import UserError
from ..core.modes import (
    BLEND_MODE_NAMES,
    CAPTION_LIMIT,
    LONG_PROMPT_MODES,
    NORMALIZATION_MODES,
    OFFLOADS,
    OUTLIER_MODES,
    QUANTIZATIONS,
    RESAMPLE_MODES,
    SINK_RATIO,
    SINK_ROW_MODES,
    TOKEN_MODES,
    parse_lora,
)
from ..maths.schedule import parse_schedule

# Field types built from the modules' own mode lists (`Literal[("a", "b")]` is `Literal["a", "b"]`).
LongPromptMode = Literal[LONG_PROMPT_MODES]
TokenMode = Literal[TOKEN_MODES]
NormalizationMode = Literal[NORMALIZATION_MODES]
OutlierMode = Literal[OUTLIER_MODES]
SinkRowMode = Literal[SINK_ROW_MODES]
BlendModeName = Literal[BLEND_MODE_NAMES]
ResampleMode = Literal[RESAMPLE_MODES]
Offload = Literal[OFFLOADS]
Quantization = Literal[QUANTIZATIONS]

# Settings that change only where and when things run, never the numbers a run produces (up to dtype rounding): the
# only keys a packaged hardware profile (e.g. `rtx4090`) may set.
PLACEMENT_KEYS = frozenset(
    {
        "models.low_memory",
        "encoder.device",
        "encoder.dtype",
        "generation.device",
        "generation.dtype",
        "vl.device",
        "vl.dtype",
    }
)


class ConfigError(UserError):
    """An invalid config file, profile or override."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(_Section):
    zimage: str = "Tongyi-MAI/Z-Image-Turbo"
    vl: str = "Qwen/Qwen3-VL-4B-Instruct"
    low_memory: bool = False
    trust_remote_code: bool = False
    transformer: str | None = None  # a single-file DiT (.safetensors or .gguf) in place of models.zimage's
    offload: Offload = "none"  # diffusers' CPU offload of the DiT + VAE (needs an accelerator)
    compile: bool = False  # torch.compile the DiT's repeated blocks
    encoder_quantization: Quantization = "none"  # the text encoder's weights: bitsandbytes 8bit/4bit, torchao int8
    vl_quantization: Quantization = "none"  # Qwen3-VL's weights, vision tower included


class EncoderConfig(_Section):
    device: str = "auto"
    dtype: str = "auto"
    hidden_layer: int = -2
    max_length: int = Field(512, ge=1, le=CAPTION_LIMIT)
    long_prompt_mode: LongPromptMode = "interpolate"
    system_prompt: str | None = None
    think_block: bool = False


class GenerationConfig(_Section):
    device: str = "auto"
    dtype: str = "auto"
    width: int = Field(1024, ge=16)
    height: int = Field(1024, ge=16)
    steps: int = Field(9, ge=1)
    guidance: float = Field(0.0, ge=0.0)
    shift: float = Field(3.0, gt=0.0)
    seed: int = Field(0, ge=0)
    strength: float = Field(0.75, gt=0.0, le=1.0)  # skips int(N - N*strength) steps: acts from 4 steps up
    loras: list[str] = []  # LoRA files of the DiT, each FILE or FILE:SCALE (scale 1 when not given)

    @field_validator("loras")
    @classmethod
    def _lora_items(cls, v: list[str]) -> list[str]:
        paths = [parse_lora(item) for item in v]
        for item, (path, scale) in zip(v, paths, strict=True):
            if not path or not math.isfinite(scale):
                raise ValueError(f"'{item}' is not FILE or FILE:SCALE with a finite scale")
        if len({path for path, _ in paths}) != len(paths):
            raise ValueError("a LoRA file is given twice: give each file once, with its scale")
        return v

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"must be a multiple of 16 (got {v})")
        return v


class VLConfig(_Section):
    device: str = "cpu"
    dtype: str = "auto"
    hidden_layer: int = -6
    layers: str | None = None  # weighted layers "-6:0.7,-16:0.3"; replaces hidden_layer when set
    token_mode: TokenMode = "full"
    max_pixels: int | None = Field(None, ge=1024)  # cap on the reference's resized area (None: the processor's)
    system_prompt: str | None = None
    normalize: NormalizationMode = "none"
    clip_sigma: float | None = Field(None, gt=0.0)
    hybrid_weight: float = Field(0.5, ge=0.0, le=1.0)
    reference_stats: str | None = None  # safetensors file; default: computed with the text encoder, same layer
    outlier_masking: OutlierMode = "none"
    outlier_threshold: float = Field(10.0, gt=1.0)
    sink_ratio: float = Field(SINK_RATIO, gt=1.0, allow_inf_nan=False)  # sink: max|row| > sink_ratio x the median row's
    sink_rows: SinkRowMode = "exclude"  # exclude: T's sink rows unchanged, V's dropped
    alpha: float = 0.3
    blend: BlendModeName = "adain_per_dim"
    resample: ResampleMode = "area"
    blend_options: dict[str, float | int | bool] = {}
    alpha_schedule: str = "constant"
    inject_layers: list[int] = []
    adapter: str | None = None  # a trained adapter (llm-dit train-adapter) applied to the VL rows before blending
    image_check: bool = True  # measure whether the caption rows depend on the reference (llm_dit.conditioning.imagedep)

    @field_validator("alpha_schedule")
    @classmethod
    def _known_schedule(cls, v: str) -> str:
        try:
            parse_schedule(v)
        except UserError as e:
            raise ValueError(str(e)) from None
        return v


class Config(_Section):
    models: ModelsConfig = ModelsConfig()
    encoder: EncoderConfig = EncoderConfig()
    generation: GenerationConfig = GenerationConfig()
    vl: VLConfig = VLConfig()

    def flat(self) -> dict[str, Any]:
        """`{"section.key": value}` for every setting: the form recorded in output metadata."""
        return {f"{s}.{k}": v for s, sec in self.model_dump().items() for k, v in sec.items()}


MODELS_ENV = "LLM_DIT_MODELS"  # the model-location switch: see `locate_models`


def locate_models(config: Config) -> Config:
    """`$LLM_DIT_MODELS` = a zoo preset (`tiny`, `small`): the default hub ids (`models.zimage`, `models.vl` still at
    their defaults after every level) resolve to that preset's offline build, so documented commands run as written
    without downloads. Any other model path or id is left alone. The config, and so every record, holds the folder
    that was used (and the records its fingerprint). Unset or empty: nothing changes."""
    preset = os.environ.get(MODELS_ENV, "")
    if not preset:
        return config
    from ..models.zoo import PRESETS, model_settings

    if preset not in PRESETS:
        raise ConfigError(f"unknown ${MODELS_ENV} '{preset}' (valid: {', '.join(PRESETS)}, or unset)")
    defaults = Config().flat()
    current = config.flat()
    located = {k: v for k, v in model_settings(preset).items() if current[k] == defaults[k]}
    return with_overrides(config, located, f"${MODELS_ENV}={preset}") if located else config


def _toml_value(value: Any) -> str:
    """One config value as TOML: JSON's spelling of strings, numbers, booleans and lists is TOML's too; a table
    is written inline."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def as_toml(config: Config, profile: str = "default") -> str:
    """`config` as a config file: one `[PROFILE.section]` table per section, unset keys as comments, so that
    `load_config(FILE, profile)` reads back the same config (with `vl.layers` set, `vl.hidden_layer` is left out:
    one level may set only one of them)."""
    lines: list[str] = []
    for section, values in config.model_dump().items():
        lines.append(f"[{profile}.{section}]")
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} is unset")
            elif f"{section}.{key}" == "vl.hidden_layer" and config.vl.layers is not None:
                lines.append(f"# {key}: replaced by layers")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def default_config_path() -> Path:
    env = os.environ.get("LLM_DIT_CONFIG")
    return Path(env) if env else Path(str(resources.files("llm_dit.config") / "config.toml"))


def _describe(err: ValidationError, where: str) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"unknown key '{key}' in {where}"
    if e["type"] == "literal_error":  # a mode field: say what was given and what is valid
        return f"bad value for '{key}' in {where}: {e['input']!r} is not one of {e['ctx']['expected']}"
    return f"bad value for '{key}' in {where}: {e['msg'].removeprefix('Value error, ')}"


LAYER_KEYS = ("vl.hidden_layer", "vl.layers")


def layer_choice(level: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The flat `vl.*` layer settings one precedence level contributes: `{}` when it sets neither
    `vl.hidden_layer` nor `vl.layers` (`None` = unset); `{"vl.hidden_layer": L, "vl.layers": None}` when it sets
    the single layer, so an explicit layer clears weighted layers set at a lower level; `{"vl.layers": S}` when it
    sets the weighted layers (they replace `vl.hidden_layer` anyway). Both at one level: `ConfigError`."""
    hidden, layers = level.get("vl.hidden_layer"), level.get("vl.layers")
    if hidden is not None and layers is not None:
        raise ConfigError(
            f"vl.hidden_layer ({hidden}) and vl.layers ('{layers}') are both set in {where}: set one "
            f"(vl.layers replaces vl.hidden_layer)"
        )
    if hidden is not None:
        return {"vl.hidden_layer": hidden, "vl.layers": None}
    return {"vl.layers": layers} if layers is not None else {}


def with_overrides(config: Config, overrides: Mapping[str, Any], where: str = "the overrides") -> Config:
    """A new `config` with `overrides` (`{"section.key": value}`) applied as one precedence level above it, the
    whole result validated. An unknown key or a bad value is a `ConfigError` naming the key and `where` (the level,
    e.g. "profile 'fast' of FILE"). Values are applied as given (`None` too), except `vl.hidden_layer` and
    `vl.layers`: what they contribute is `layer_choice`'s (`None` = unset)."""
    data = config.model_dump()
    given = {k: v for k, v in overrides.items() if k not in LAYER_KEYS} | layer_choice(overrides, where)
    for dotted, value in given.items():
        section, _, key = dotted.partition(".")
        if section not in data:
            raise ConfigError(f"unknown key '{section}' in {where}")
        if not key:
            raise ConfigError(f"'{section}' in {where} is a section, not a key: name a key as '{section}.KEY'")
        if key not in data[section]:
            raise ConfigError(f"unknown key '{dotted}' in {where}")
        data[section][key] = value
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, where)) from None


def _dotted(table: dict[str, Any]) -> dict[str, Any]:
    """A profile table `{section: {key: value}}` as `{"section.key": value}` (a section that is not a table is kept
    under its own name, for `with_overrides` to refuse)."""
    out: dict[str, Any] = {}
    for section, values in table.items():
        if isinstance(values, dict):
            out |= {f"{section}.{key}": value for key, value in values.items()}
        else:
            out[section] = values
    return out


SpecT = TypeVar("SpecT", bound=BaseModel)


def load_toml_model(model: type[SpecT], path: str | Path, label: str) -> SpecT:
    """`model` validated from the TOML file `path` (a sweep spec, an eval spec); `UserError` (one line) naming
    `label`, the file and the first bad key."""
    path = Path(path)
    try:
        return model.model_validate(tomllib.loads(path.read_text()))
    except FileNotFoundError:
        raise UserError(f"{label} not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{label} {path} is not valid TOML: {e}") from None
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"{label} {path}: '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None


def load_config(
    path: str | Path | None = None, profile: str = "default", overrides: Mapping[str, Any] | None = None
) -> Config:
    """Resolve `profile` from the config file and apply `overrides` (`{"generation.steps": 4, ...}`; `None`
    values are ignored, so unset CLI flags leave the profile's values alone). Each level (`[default]`, the
    profile, the overrides) is applied by `with_overrides`; then `$LLM_DIT_MODELS` locates default model ids
    (`locate_models`)."""
    path = Path(path) if path is not None else default_config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    if profile not in data and profile != "default":
        raise ConfigError(f"profile '{profile}' not in {path} (profiles: {', '.join(data) or 'none'})")

    levels = [("default", data.get("default", {}))]
    if profile != "default":
        levels.append((profile, data[profile]))
    config = Config()
    for name, table in levels:
        if not isinstance(table, dict):
            raise ConfigError(f"profile '{name}' in {path} must be a table")
        config = with_overrides(config, _dotted(table), f"profile '{name}' of {path}")
    given = {dotted: value for dotted, value in (overrides or {}).items() if value is not None}
    return locate_models(with_overrides(config, given, "the overrides (command-line settings)"))
