"""Configuration: validated profiles from TOML, overridden by explicit settings.

Precedence, lowest first: field defaults below < `[default]` of the config file < `[PROFILE]` of the config
file (when a profile other than `default` is chosen) < CLI flags / keyword overrides. The config file is
`--config FILE`, else `$LLM_DIT_CONFIG`, else the packaged `config.toml`. Every key is checked: an unknown key or
a bad value is a `ConfigError` naming the key, the profile and the file.

`vl.hidden_layer` and `vl.layers` are two ways to choose the VL layer(s), so they follow precedence as one setting
(`layer_choice`): the level that sets either wins, and one level setting both is an error.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import UserError

LongPromptMode = Literal["truncate", "interpolate", "pool", "attention_pool"]
MAX_CAPTION_TOKENS = 1504  # the DiT's RoPE table (1536) minus the padding to a multiple of 32

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


class EncoderConfig(_Section):
    device: str = "auto"
    dtype: str = "auto"
    hidden_layer: int = -2
    max_length: int = Field(512, ge=1, le=MAX_CAPTION_TOKENS)
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
    strength: float = Field(0.9, gt=0.0, le=1.0)

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
    token_mode: Literal["full", "text_only", "image_only", "image_no_markers"] = "full"
    system_prompt: str | None = None
    normalize: Literal["none", "global", "per_dim", "hybrid"] = "none"
    clip_sigma: float | None = Field(None, gt=0.0)
    hybrid_weight: float = Field(0.5, ge=0.0, le=1.0)
    reference_stats: str | None = None  # safetensors file; default: computed with the text encoder, same layer
    outlier_masking: Literal["none", "zero", "clamp", "scale", "reference"] = "none"
    outlier_threshold: float = Field(10.0, gt=1.0)
    sink_ratio: float = Field(20.0, gt=1.0, allow_inf_nan=False)  # sink: max|row| > sink_ratio x the median row's
    sink_rows: Literal["exclude", "include"] = "exclude"  # exclude: T's sink rows unchanged, V's dropped
    alpha: float = 0.3
    blend: str = "adain_per_dim"
    resample: Literal["area", "linear", "nearest", "truncate"] = "area"
    blend_options: dict[str, float | int | bool] = {}
    alpha_schedule: str = "constant"
    inject_layers: list[int] = []
    adapter: str | None = None  # a trained adapter (llm-dit train-adapter) applied to the VL rows before blending
    image_check: bool = True  # measure whether the caption rows depend on the reference (llm_dit.imagedep)

    @field_validator("blend")
    @classmethod
    def _known_blend(cls, v: str) -> str:
        from .blend import BLEND_MODES

        if v not in BLEND_MODES:
            raise ValueError(f"unknown blend mode '{v}' (valid: {', '.join(BLEND_MODES)})")
        return v

    @field_validator("alpha_schedule")
    @classmethod
    def _known_schedule(cls, v: str) -> str:
        from .schedule import parse_schedule

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


def default_config_path() -> Path:
    env = os.environ.get("LLM_DIT_CONFIG")
    return Path(env) if env else Path(str(resources.files("llm_dit") / "config.toml"))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _describe(err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"bad value for '{key}': {e['msg'].removeprefix('Value error, ')}"


def layer_choice(level: dict[str, Any], where: str) -> dict[str, Any]:
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


def _nest(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for dotted, value in flat.items():
        section, _, key = dotted.partition(".")
        out.setdefault(section, {})[key] = value
    return out


def load_config(
    path: str | Path | None = None, profile: str = "default", overrides: dict[str, Any] | None = None
) -> Config:
    """Resolve `profile` from the config file and apply `overrides` (`{"generation.steps": 4, ...}`; `None`
    values are ignored, so unset CLI flags leave the profile's values alone)."""
    path = Path(path) if path is not None else default_config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    if profile not in data and profile != "default":
        raise ConfigError(f"profile '{profile}' not in {path} (profiles: {', '.join(data) or 'none'})")

    layers = [("default", data.get("default", {}))]
    if profile != "default":
        layers.append((profile, data[profile]))
    merged: dict = {}
    for name, layer in layers:
        if not isinstance(layer, dict):
            raise ConfigError(f"profile '{name}' in {path} must be a table")
        try:
            Config.model_validate(layer)
        except ValidationError as e:
            raise ConfigError(f"{_describe(e)} in profile '{name}' of {path}") from None
        vl = layer.get("vl", {})
        choice = layer_choice({f"vl.{k}": v for k, v in vl.items()}, f"profile '{name}' of {path}")
        merged = _merge(_merge(merged, layer), _nest(choice))

    given = {dotted: value for dotted, value in (overrides or {}).items() if value is not None}
    merged = _merge(merged, _nest(given | layer_choice(given, "the overrides (command-line settings)")))
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(f"{_describe(e)} (profile '{profile}', {path} and command-line settings)") from None
