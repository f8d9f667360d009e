"""The methods an eval compares, and each (method, cell) as one sweep run.

A method is a name, a kind and its settings (one value per key). Kinds:

| kind | what conditions the image | settings |
|---|---|---|
| `text` | the prompt alone (always first: every other method is paired with it) | `generation.*` |
| `caption` | the prompt plus Qwen3-VL's one-sentence description of the reference's style | `generation.*` |
| `img2img` | the prompt, from the reference as init image (a strength that skips no step is refused) | `generation.*` |
| `vl` | the prompt with the reference's Qwen3-VL rows (blend, alpha, layers, adapter...) | `vl.*`, `generation.*` |
| `steer` | the prompt with a steering direction (`steer` = the direction file) | `vl.*`, `generation.*` |
| `omni` | Z-Image Omni (diffusers `ZImageOmniPipeline`) with the reference | refused (see `omni_weights`) |

A method differs from its `text` and `caption` baselines only in what it compares (`compared`: its conditioning,
`sweep.is_conditioning`, and an img2img method's strength). Any other setting (`encoder.think_block`,
`generation.steps`, ...) gives it its own matched baselines: `text` and `caption` methods with the same
other settings (`methods_of` adds them, named like `text think_block=True`; `Method.baselines` names them), so what
the setting does to every method is not credited to the image.

Written on the command line as `KIND[:KEY=V1,V2[:KEY=V1,V2...]]`, e.g. `vl:alpha=0.3,0.5:blend=adain` (values of
a key are crossed into one method each, named by its label, e.g. `vl alpha=0.3 blend=adain`; a short key is a
`vl.*` field, else a `generation.*` one; values whose text holds `,` or `:`, such as `vl.layers`, go in an eval
spec file), or in an eval spec TOML as `[[method]]` tables (`name`, `kind`, `settings`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..config.settings import Config, load_toml_model, with_overrides
from ..core.errors import UserError, check_choice
from ..generation.render import denoising_steps
from ..sweep.run import is_conditioning
from ..sweep.spec import ListedRun, preset_spec
from .suite import Cell

KINDS = ("text", "caption", "img2img", "vl", "steer", "omni")
BASELINES = ("text", "caption")
"""The kinds every other method is paired with (each method with the pair of its `shared_settings`)."""
DEFAULT_METHODS = ("text", "caption", "img2img:strength=0.5", "vl")
"""What an eval compares when no method is given: the prompt alone, the caption, image-to-image at strength 0.5
(it skips half the steps at any step count), and VL conditioning with the profile's settings."""
OMNI_REFUSAL = (
    "the omni method needs Z-Image Omni weights (a diffusers ZImageOmniPipeline folder) in 'omni'; none are public"
)


class Method(BaseModel):
    """One method of an eval: its name (unique in the eval), kind (`KINDS`) and settings (`{"vl.alpha": 0.3}`);
    `steer` is the direction file of a `steer` method."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: str
    settings: dict[str, Any] = {}
    steer: str | None = None
    baselines: dict[str, str] = {}
    """The methods it is paired with, `{"text": NAME, "caption": NAME}` (`methods_of` sets them; empty: the plain
    `text` and `caption`)."""

    def baseline(self, kind: str) -> str:
        """The name of this method's `text` or `caption` baseline (`kind`)."""
        return self.baselines.get(kind, kind)

    def pairs(self) -> dict[str, str]:
        """`{baseline kind: its name}` of the baselines this method is compared with: `text` and `caption`; a
        `caption` method only `text`, a `text` method none."""
        kinds = BASELINES[: BASELINES.index(self.kind)] if self.kind in BASELINES else BASELINES
        return {kind: self.baseline(kind) for kind in kinds}


class EvalSpec(BaseModel):
    """An eval spec file: its methods (`[[method]]` tables)."""

    model_config = ConfigDict(extra="forbid")

    method: list[Method] = []

    @classmethod
    def from_toml(cls, path: str | Path) -> EvalSpec:
        return load_toml_model(cls, path, "eval spec")


def setting_key(key: str) -> str:
    """`alpha` -> `vl.alpha`, `strength` -> `generation.strength`; a dotted key as it is. `UserError` for a key
    that is no field of either section."""
    if "." in key:
        return key
    for section in ("vl", "generation"):
        if key in Config.model_fields[section].annotation.model_fields:  # type: ignore[union-attr]
            return f"{section}.{key}"
    raise UserError(f"method setting '{key}' is no vl.* or generation.* setting")


def compared(kind: str, key: str) -> bool:
    """Whether setting `key` of a `kind` method is part of what the eval compares, so its `text` and `caption`
    baselines do not share it: a conditioning setting (`sweep.is_conditioning`, the sweep's rule for what a run's
    baseline drops) or an img2img method's `generation.strength` (it acts only with the init image)."""
    return is_conditioning(key) or (kind == "img2img" and key == "generation.strength")


def shared_settings(method: Method, base: Config | None = None) -> dict[str, Any]:
    """The settings of `method` its baselines must share (every one not `compared`), less those equal to the
    eval's config `base` (applied as a run's settings are, `method_config`): already what the plain `text` and
    `caption` run at."""
    shared = {k: v for k, v in method.settings.items() if not compared(method.kind, k)}
    if base is None or not shared:
        return shared
    flat = base.flat()
    return {k: v for k, v in shared.items() if method_config(base, method, {k: v}).flat().get(k, v) != flat.get(k)}


def method_config(base: Config, method: Method, settings: dict[str, Any]) -> Config:
    """`base` with `settings` of `method` applied as its sweep runs' settings are (`sweep.run_config`)."""
    return with_overrides(base, settings, f"the settings of sweep run {method.name}")


def setting_value(text: str) -> Any:
    """A method setting's value: an integer, a number, true/false, none, else the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def label(kind: str, settings: dict[str, Any]) -> str:
    """A method's name from its kind and settings: `vl alpha=0.3 blend=adain`."""
    return " ".join([kind, *(f"{k.split('.')[-1]}={v}" for k, v in settings.items())])


def parse_method(text: str) -> list[Method]:
    """The methods of one `KIND[:KEY=V1,V2...]` item, its values crossed (one method per combination)."""
    kind, *parts = text.strip().split(":")
    check_choice(kind, KINDS, "method kind")
    axes: dict[str, list[Any]] = {}
    for part in parts:
        key, sep, values = part.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UserError(f"method '{text}': expected KIND:KEY=V1,V2 (got '{part}')")
        axes[setting_key(key.strip())] = [setting_value(v.strip()) for v in values.split(",") if v.strip()]
    combos = [dict(zip(axes, vs, strict=True)) for vs in itertools.product(*axes.values())] or [{}]
    return [Method(name=label(kind, c), kind=kind, settings=c) for c in combos]


def preset_methods(name: str) -> list[Method]:
    """The `vl` methods of sweep preset `name`: its fixed settings with each crossing of its axes, or each of its
    variants. Presets that need inputs an eval has no place for (a steering direction, a neutral image, an init
    image of their own) are refused."""
    p = preset_spec(name)
    if "needs" in p or p.get("img2img"):
        why = {"steer": "a steering direction (use --steer)", "neutral": "a neutral image"}.get(p.get("needs", ""))
        raise UserError(f"preset '{name}' cannot be an eval method: it needs {why or 'its own init image'}")
    axes = p.get("axes", {})
    combos = [dict(zip(axes, vs, strict=True)) for vs in itertools.product(*axes.values())] or [{}]
    variants = p.get("variants") or [{}]
    methods = []
    for variant, combo in itertools.product(variants, combos):
        settings = {**p.get("fixed", {}), **{k: v for k, v in variant.items() if k != "label"}, **combo}
        tag = " ".join(filter(None, [variant.get("label"), *(f"{k.split('.')[-1]}={v}" for k, v in combo.items())]))
        methods.append(Method(name=f"{name} {tag}".strip(), kind="vl", settings=settings))
    return methods


def omni_weights(path: str | Path | None) -> Path:
    """The Z-Image Omni folder `path` when it is one (research note §6: `model_index.json` names
    `ZImageOmniPipeline` with `siglip` and `siglip_processor`, and the transformer has a `siglip_feat_dim`); else
    `UserError(OMNI_REFUSAL)`."""
    if path is None:
        raise UserError(OMNI_REFUSAL)
    folder = Path(path)
    try:
        index = json.loads((folder / "model_index.json").read_text())
        transformer = json.loads((folder / "transformer" / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{OMNI_REFUSAL} ({folder} is not a diffusers pipeline folder)") from None
    if not (
        index.get("_class_name") == "ZImageOmniPipeline"
        and "siglip" in index
        and "siglip_processor" in index
        and transformer.get("siglip_feat_dim") is not None
    ):
        raise UserError(f"{OMNI_REFUSAL} ({folder} is not a ZImageOmniPipeline with a SigLIP image path)")
    return folder


def methods_of(
    items: Iterable[str] = (),
    *,
    presets: Iterable[str] = (),
    img2img_strengths: Sequence[float] = (),
    adapter: str | None = None,
    steer: str | None = None,
    spec: str | Path | None = None,
    omni: str | Path | None = None,
    base: Config | None = None,
) -> list[Method]:
    """The methods of an eval: `text` and `caption` first (always: the baselines every verdict needs), then the
    matched baselines, then those of the spec file, `items` (`parse_method`), the
    presets, image-to-image at each strength, the trained `adapter` (a `vl` method), the steering direction `steer`;
    `DEFAULT_METHODS` when none is given. Names must be unique; `omni` is refused unless `omni` is an Omni
    folder (and then refused as not run yet: no Omni method may claim a result it did not produce).

    Matched baselines: a method with settings other than what it compares (`shared_settings`, against the eval's
    config `base` when given) is paired with a `text` and a `caption` method of those settings (a given one, else
    added, named `label(kind, settings)`); `Method.baselines` names each method's pair."""
    methods = list(EvalSpec.from_toml(spec).method) if spec is not None else []
    if given := [m.name for m in methods if m.baselines]:
        raise UserError(f"method {given[0]!r} sets 'baselines': the eval pairs each method with its matched baselines")
    for item in items:
        methods += parse_method(item)
    for name in presets:
        methods += preset_methods(name)
    methods += [Method(name=f"img2img strength={s}", kind="img2img", settings={"generation.strength": s}) for s in
                img2img_strengths]  # fmt: skip
    if adapter is not None:
        methods.append(Method(name="adapter", kind="vl", settings={"vl.adapter": str(adapter)}))
    if steer is not None:
        methods.append(Method(name="steer", kind="steer", steer=str(steer)))
    if not methods:
        methods = [m for item in DEFAULT_METHODS for m in parse_method(item)]
    if any(m.kind == "omni" for m in methods) or omni is not None:
        omni_weights(omni)
        raise UserError("the omni method is not implemented yet (the Z-Image Omni weights in 'omni' were found)")
    for m in methods:
        check_choice(m.kind, KINDS, "method kind")
        if m.kind == "steer" and not m.steer:
            raise UserError(f"method '{m.name}' (steer) needs 'steer', a direction file")
        if m.kind in ("text", "caption", "img2img") and (cond := [k for k in m.settings if is_conditioning(k)]):
            raise UserError(
                f"method '{m.name}' ({m.kind}) sets {', '.join(cond)}: vl.* settings act only in vl methods"
            )
        if m.kind == "img2img" and "generation.strength" not in m.settings:
            raise UserError(f"method '{m.name}' (img2img) needs a strength: img2img:strength=0.5")
        if m.kind != "img2img" and "generation.strength" in m.settings:
            raise UserError(f"method '{m.name}' sets generation.strength: it acts only in img2img methods")
        if "generation.seed" in m.settings:
            raise UserError(f"method '{m.name}' sets generation.seed: the suite's seeds are every method's seeds")
    return matched(methods, base)


def matched(methods: Sequence[Method], base: Config | None = None) -> list[Method]:
    """`text`, `caption`, then per group of `shared_settings` other than none (in first-seen order) its `text`
    and `caption` (the first given one, else a new one), then the other methods; each with its `baselines` (a
    `caption` method: its `text`; a `text` method: none). A given `text` or `caption` without settings is the
    plain one (dropped: it is always there)."""
    groups: dict[str, dict[str, Any]] = {}
    for m in methods:
        if shared := shared_settings(m, base):
            groups.setdefault(json.dumps(shared, sort_keys=True, default=str), shared)
    baselines: dict[tuple[str, str], Method] = {(kind, "{}"): Method(name=kind, kind=kind) for kind in BASELINES}
    for key, shared in groups.items():
        for kind in BASELINES:
            given = next((m for m in methods if m.kind == kind and _group(m, base) == key), None)
            baselines[(kind, key)] = given or Method(name=label(kind, shared), kind=kind, settings=shared)

    def paired(m: Method) -> Method:
        key = _group(m, base)
        return m.model_copy(update={"baselines": {kind: baselines[(kind, key)].name for kind in m.pairs()}})

    chosen = {id(m) for m in baselines.values()}
    out = [paired(m) for m in baselines.values()]
    out += [paired(m) for m in methods if id(m) not in chosen and (m.settings or m.kind not in BASELINES)]
    names = [m.name for m in out]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise UserError(f"two methods named {', '.join(map(repr, dupes))}: give each a different name or settings")
    return out


def _group(method: Method, base: Config | None) -> str:
    return json.dumps(shared_settings(method, base), sort_keys=True, default=str)


def method_run(method: Method, cell: Cell, caption: str | None = None) -> ListedRun:
    """The run of `method` on `cell`: the cell's prompt (with the reference's caption appended for `caption`), its
    seed, and what conditions it: the reference's VL rows (`vl`), the reference as init image (`img2img`), the
    steering direction (`steer`), or nothing."""
    prompt = cell.prompt
    if method.kind == "caption":
        if not caption:
            raise UserError(f"method 'caption' has no caption of reference {cell.reference.name}")
        prompt = f"{cell.prompt.rstrip('. ')}. {caption}"
    ref = cell.reference.path
    return ListedRun(
        prompt=prompt,
        image=ref if method.kind == "vl" else None,
        init_image=ref if method.kind == "img2img" else None,
        steer=method.steer if method.kind == "steer" else None,
        label=method.name,
        settings={**method.settings, "generation.seed": cell.seed},
    )


def check_strengths(base: Config, methods: Sequence[Method]) -> None:
    """Refuse an img2img method whose strength skips no denoising step at its steps (diffusers skips the first
    `int(N - N*strength)`: none means the init image, noised to pure noise, does nothing)."""
    for m in methods:
        if m.kind != "img2img":
            continue
        g = method_config(base, m, m.settings).generation
        if denoising_steps(g, True) == g.steps:
            raise UserError(
                f"method '{m.name}': strength {g.strength} at {g.steps} steps skips no denoising step (diffusers "
                f"skips int(N - N*strength)), so the reference would do nothing; choose a strength that skips one"
            )
