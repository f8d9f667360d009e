"""Sweeps: a spec of fixed settings and axes, expanded into runs, and the plan of their work: each run's config
resolved once, the runs that could not do what they say refused, and the unique forward passes listed, so none is
wasted. `experiment.run_sweep` runs a plan into a sweep directory (`sweepdir.SweepDir`).

A run (`run.Run`) is a set of config overrides (`{"vl.alpha": 0.3, ...}`) plus a prompt, a reference image and a
seed. Each conditioned run is compared with its own text-only baseline (`run.baseline_of`: the run minus its
conditioning, see `run.is_conditioning`), one more run (`kind: baseline`) shared by every variant that differs from
it only in conditioning, unless disabled; the variant names it (`baseline`).
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from ..adapter.model import Adapter
from ..conditioning.source import parse_layer_weights
from ..config.settings import Config, VLConfig, load_toml_model, with_overrides
from ..core.errors import UserError, check_choice
from ..core.files import load_image
from ..maths.blend import BLEND_MODES
from ..maths.normalize import NORMALIZATION_MODES
from ..maths.outliers import OUTLIER_MODES
from ..maths.refstats import ReferenceStats
from ..maths.steer import load_direction
from ..models.hooks import layer_position
from ..models.inject import block_indices
from ..models.loading import check_vl, read_model_json
from ..models.vl import TOKEN_MODES
from .run import Run, baseline_of, is_conditioning

SET_SEP = "+"  # `a.png+b.png`: one run conditioned on a reference set (the images combined by weight)


def reference_paths(image: str | None) -> list[str]:
    """The image files of a run's `image`: one path, or the paths of a reference set `a.png+b.png`."""
    return [] if image is None else [p.strip() for p in image.split(SET_SEP)]


class ListedRun(BaseModel):
    """One run given as it is (`SweepSpec.runs`): its prompt, the reference image or steering direction that
    conditions it (none: text only), its init image and its settings (the seed among them: a listed run is not
    repeated per seed). No baseline is added for it."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    image: str | None = None
    init_image: str | None = None
    steer: str | None = None
    label: str = "run"
    settings: dict[str, Any] = {}


class SweepSpec(BaseModel):
    """What to run. `axes` are crossed; `variants` are listed runs (each a set of overrides) crossed with the axes;
    every run is repeated for each prompt x image x seed. `runs` are runs listed as they are (after the crossed
    ones, `fixed` below their own settings): what `llm-dit eval` runs, each (method, cell) one run."""

    model_config = ConfigDict(extra="forbid")

    name: str = "sweep"
    fixed: dict[str, Any] = {}
    axes: dict[str, list[Any]] = {}
    variants: list[dict[str, Any]] = []
    prompts: list[str] = Field(default_factory=list)
    images: list[str] = Field(default_factory=list)  # an item `a.png+b.png` is a reference set (SET_SEP)
    reference_weights: list[list[float]] = []  # weight lists crossed with every reference set (default: 1/n each)
    compose: bool = False  # also run the set of all single images (a+b), to compare with each alone
    init_image: str | None = None
    img2img: bool = False  # each run starts from its reference image unless init_image is set
    steer: str | None = None  # a steering direction file: runs are conditioned by it instead of the image
    style: list[str] = []  # style files FILE[:SCALE], combined: runs are conditioned by them instead of an image
    neutral_image: str | None = None  # the unstyled reference of runs with blend style_delta (used by no other run)
    negative_image: str | None = None  # CFG's negative rows of every reference run: "" blended with this image
    seeds: list[int] = Field(default_factory=lambda: [0])
    baseline: bool = True
    runs: list[ListedRun] = []

    @classmethod
    def from_toml(cls, path: str | Path) -> SweepSpec:
        """The spec in the TOML file `path`; its relative paths (`PATH_FIELDS`, `PATH_SETTINGS`) are relative to
        the file's folder, as a steering pairs file's are."""
        path = Path(path)
        return load_toml_model(cls, path, "sweep spec").relative_to(path.parent)

    def relative_to(self, folder: Path) -> SweepSpec:
        """This spec with its relative input paths (`PATH_FIELDS`, and the `PATH_SETTINGS` values of `fixed`,
        `axes` and `variants`) joined to `folder`; absolute paths and unset values are kept."""

        def join(value: Any) -> Any:
            return str(folder / value) if isinstance(value, str) and not Path(value).is_absolute() else value

        def settings(values: dict[str, Any]) -> dict[str, Any]:
            return {k: join(v) if k in PATH_SETTINGS else v for k, v in values.items()}

        update: dict[str, Any] = {"images": [join(p) for p in self.images]}
        update |= {field: join(getattr(self, field)) for field in PATH_FIELDS if field != "images"}
        update["fixed"] = settings(self.fixed)
        update["axes"] = {k: [join(v) for v in vs] if k in PATH_SETTINGS else vs for k, vs in self.axes.items()}
        update["variants"] = [settings(v) for v in self.variants]
        return self.model_copy(update=update)


PATH_FIELDS = ("images", "init_image", "neutral_image", "negative_image", "steer")
"""`SweepSpec` fields that name input files."""
PATH_SETTINGS = ("vl.adapter", "vl.reference_stats")
"""Settings a sweep may set whose values name input files."""

PRESETS: dict[str, dict[str, Any]] = {
    "alpha": {"axes": {"vl.alpha": [0.1, 0.3, 0.5, 0.7, 1.0]}},
    # the depth of the real 36-layer Qwen3-VL; a layer beyond the model's depth is refused before any work
    "layer": {"axes": {"vl.hidden_layer": [-2, -4, -6, -8, -10, -15, -20, -25, -30]}},
    "token": {"axes": {"vl.token_mode": list(TOKEN_MODES)}},
    # interpolate, not the default adain_per_dim: per_dim + adain_per_dim reads only moments per_dim fixes (image-free)
    "normalization": {
        "fixed": {"vl.blend": "interpolate"},
        "axes": {"vl.normalize": list(NORMALIZATION_MODES)},
    },
    "outlier": {
        "fixed": {"vl.hidden_layer": -2, "vl.token_mode": "full", "vl.alpha": 1.0, "vl.blend": "interpolate"},
        "axes": {"vl.outlier_masking": list(OUTLIER_MODES)},
    },
    "full": {
        "axes": {
            "vl.hidden_layer": [-2, -6],
            "vl.token_mode": ["full", "image_only"],
            "vl.alpha": [0.3, 0.6],
            "vl.blend": ["interpolate", "adain_per_dim"],
        }
    },
    # `replace`: the DiT receives the VL rows themselves; the comparison is with the text-only baseline, so it stays
    "vl_only_vs_qwen3": {
        "baseline_required": True,
        "variants": [
            {"label": "vl_text_tokens", "vl.token_mode": "text_only", "vl.alpha": 1.0, "vl.blend": "replace"},
            {"label": "vl_full_sequence", "vl.token_mode": "full", "vl.alpha": 1.0, "vl.blend": "replace"},
            {"label": "blend_0.3", "vl.alpha": 0.3},
        ],
    },
    "style_transfer": {
        "fixed": {"generation.steps": 4, "vl.blend": "adain_per_dim", "vl.token_mode": "full"},
        "axes": {"vl.alpha": [0.3, 0.4, 0.5]},
    },
    "blend_comparison": {
        "axes": {"vl.blend": ["interpolate", "adain", "adain_per_dim", "slerp"], "vl.alpha": [0.3, 0.5]},
    },
    # each value skips at least one of the default 9 steps (diffusers skips int(N - N*strength)): each one acts
    "strength_sweep": {"img2img": True, "axes": {"generation.strength": [0.5, 0.6, 0.7, 0.8]}},
    "think_comparison": {"axes": {"encoder.think_block": [False, True]}},
    # every blend mode but the `linear` alias, `style_delta` (needs a neutral image: see its own preset) and
    # `replace` (alpha is a 0/1 switch, not a strength: see vl_only_vs_qwen3)
    "blend_all": {"axes": {"vl.blend": [m for m in BLEND_MODES if m not in ("linear", "style_delta", "replace")]}},
    "pooling": {"axes": {"vl.blend": ["gem_pool", "svd_style", "whiten"], "vl.alpha": [0.3, 0.6]}},
    "schedule": {
        "axes": {
            "vl.alpha_schedule": ["constant", "linear:0.0,0.6", "linear:0.6,0.0", "cosine:0.6,0.0", "step:0.5,0.6,0.0"]
        }
    },
    "steering": {"needs": "steer", "axes": {"vl.alpha": [0.5, 1.0, 2.0]}},
    # with and without the reference (each steps value has its own baseline): why 4 steps beat 9 for style transfer
    "steps": {
        "fixed": {"vl.blend": "adain_per_dim", "vl.token_mode": "full", "vl.alpha": 0.4},
        "axes": {"generation.steps": [2, 4, 9]},
    },
    "style_delta": {"needs": "neutral", "fixed": {"vl.blend": "style_delta"}, "axes": {"vl.alpha": [0.5, 1.0, 1.5]}},
    # weighted layer sets valid on the tiny zoo's 8 layers and on the real model's 36
    "multilayer": {"axes": {"vl.layers": ["-6", "-2:0.5,-6:0.5", "-6:0.5,-8:0.5", "-2:0.25,-4:0.25,-6:0.25,-8:0.25"]}},
    # C in every block (no injection), only the first block, only the last (valid for any depth)
    "inject": {"axes": {"vl.inject_layers": [[], [0], [-1]]}},
    # linearity of composition: a alone, b alone and a+b at three weights, in an affine, a moment and a nonlinear
    # mode (the report compares each combination with the weighted sum of the single-reference effects)
    "composability": {
        "needs": "two images",
        "compose": True,
        "reference_weights": [[0.25, 0.75], [0.5, 0.5], [0.75, 0.25]],
        "fixed": {"vl.alpha": 0.5},
        "axes": {"vl.blend": ["interpolate", "adain_per_dim", "slerp"]},
    },
}


def preset_needs(name: str) -> list[str]:
    """The inputs preset `name` cannot run without, as command-line flags (for `--list-presets`)."""
    p = preset_spec(name)
    keys = [*p.get("fixed", {}), *p.get("axes", {}), *(k for v in p.get("variants", []) for k in v)]
    flags = {"steer": "--steer", "neutral": "--neutral-image", "two images": "-i A -i B"}
    needs = ["-i"] if p.get("needs") not in ("steer", "two images") and any(map(is_conditioning, keys)) else []
    needs += ["-i or --init-image"] if p.get("img2img") and not needs else []
    return needs + ([flags[p["needs"]]] if "needs" in p else [])


def preset_spec(name: str) -> dict[str, Any]:
    return PRESETS[check_choice(name, PRESETS, "preset")]


def expand(spec: SweepSpec) -> list[Run]:
    """All runs of `spec`, per prompt x image x seed; with baselines on, each conditioned variant names its
    baseline (`baseline_of`) in `baseline`, and that baseline precedes the first variant paired with it. Duplicates
    (e.g. a baseline shared by several variants) appear once. A variant with a reference image gets the spec's
    `neutral_image` when its settings choose `vl.blend = style_delta` or leave the blend to the profile
    (`runner.check_run` refuses a neutral image given to a run whose resolved blend is not style_delta), and its
    `negative_image` (CFG's negative rows; its text-only baseline keeps the empty prompt's). The listed
    runs (`runs`) follow, as they are."""
    # a one-valued axis is a fixed setting: it applies to the baselines too and stays out of the labels
    fixed = {**spec.fixed, **{k: v[0] for k, v in spec.axes.items() if len(v) == 1}}
    axes = {k: v for k, v in spec.axes.items() if len(v) > 1}
    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())] or [{}]
    variants = spec.variants or [{}]
    images: list[str | None] = list(spec.images) or [None]
    runs: list[Run] = []
    seen: set[str] = set()

    def add(run: Run) -> None:
        if run.id not in seen:
            seen.add(run.id)
            runs.append(run)

    if spec.compose:
        singles = [i for i in images if i is not None and SET_SEP not in i]
        images = [*images, SET_SEP.join(singles)]
    weight_lists: list[list[float] | None] = list(spec.reference_weights) or [None]
    # weight lists weigh reference sets; a single image is run as it is
    combos_of_image = [
        (image, weights)
        for image in images
        for weights in (weight_lists if image is not None and SET_SEP in image else [None])
    ]
    for prompt, (image, weights), seed in itertools.product(spec.prompts, combos_of_image, spec.seeds):
        init = spec.init_image or (reference_paths(image)[0] if spec.img2img and image else None)
        negative = spec.negative_image if image is not None and not spec.steer and not spec.style else None
        group = {
            "prompt": prompt,
            "image": image,
            "reference_weights": weights,
            "init_image": init,
            "steer": spec.steer,
            "style": list(spec.style) or None,
            "negative_image": negative or None,
        }
        settings_base = {**fixed, "generation.seed": seed}
        for variant, combo in itertools.product(variants, combos):
            settings = {**settings_base, **{k: v for k, v in variant.items() if k != "label"}, **combo}
            label = " ".join(
                filter(None, [variant.get("label"), *(f"{k.split('.')[-1]}={v}" for k, v in combo.items())])
            )
            uses_neutral = (
                image is not None and not spec.steer and settings.get("vl.blend", "style_delta") == "style_delta"
            )
            neutral = spec.neutral_image if uses_neutral else None
            fields = {**group, "neutral_image": neutral, "label": label or "run", "settings": settings}
            base = None
            if spec.baseline and (image is not None or spec.steer or spec.style):
                base = baseline_of(Run(**fields))
                add(base)
            add(Run(**fields, baseline=base.id if base else None))
    for listed in spec.runs:
        add(Run(**listed.model_dump(exclude={"settings"}), settings={**spec.fixed, **listed.settings}))
    return runs


def run_config(base: Config, run: Run) -> Config:
    """The resolved config of one run: `base` with the run's settings applied by `config.with_overrides`, one
    precedence level above `base`: a run's `vl.hidden_layer` clears the profile's `vl.layers`, and a run setting
    both is an error."""
    return with_overrides(base, run.settings, f"the settings of sweep run {run.id}")


def resolve_spec(
    spec: SweepSpec, preset: str | None, cli_axes: dict[str, list[Any]], cli_fixed: dict[str, Any]
) -> SweepSpec:
    """Preset (if any) < spec file < CLI axes and fixed values; checks what a sweep may not vary."""
    data = spec.model_dump()
    needs = None
    who = "this sweep"
    if preset:
        p = dict(preset_spec(preset))
        needs = p.pop("needs", None)
        data["fixed"] = {**p.pop("fixed", {}), **data["fixed"]}
        data["axes"] = {**p.pop("axes", {}), **data["axes"]}
        data["variants"] = data["variants"] or p.pop("variants", [])
        data["img2img"] = data["img2img"] or p.pop("img2img", False)
        data["compose"] = data["compose"] or p.pop("compose", False)
        data["reference_weights"] = data["reference_weights"] or p.pop("reference_weights", [])
        data["name"] = preset if spec.name == "sweep" else spec.name
        who = f"preset '{preset}'"
        if needs == "steer" and not data["steer"]:
            raise UserError(f"preset '{preset}' needs a steering direction: set 'steer' (a direction file)")
        if p.pop("baseline_required", False) and not data["baseline"]:
            raise UserError(
                f"preset '{preset}' compares every run with its text-only baseline: it cannot run without baselines"
                " (baseline = false)"
            )
    data["axes"] |= {k: v for k, v in cli_axes.items() if v}
    data["fixed"] |= {k: v for k, v in cli_fixed.items() if v is not None}
    for key in (*data["axes"], *data["fixed"]):
        if key.startswith("models.") or key.split(".")[-1] in ("device", "dtype"):
            raise UserError(f"'{key}' cannot vary within a sweep: models and devices are fixed per sweep")
    keys = [*data["fixed"], *data["axes"], *(k for v in data["variants"] for k in v if k != "label")]
    conditioning = sorted({k for k in keys if is_conditioning(k)})
    if data["style"] and (data["images"] or data["steer"]):
        raise UserError("'style' files condition the runs instead of 'images' or 'steer': give one of them")
    if conditioning and not (data["images"] or data["steer"] or data["style"]):
        raise UserError(
            f"{who} sets {', '.join(conditioning)}: conditioning settings act only on a reference image; "
            "give one in 'images'"
        )
    if needs == "two images" and len([i for i in data["images"] if SET_SEP not in i]) != 2:
        raise UserError(f"{who} composes two reference images a and b: give exactly two with -i ('images')")
    if needs == "neutral" and not data["neutral_image"]:
        raise UserError(f"{who} needs a neutral image (the unstyled reference of style_delta): set 'neutral_image'")
    if data["reference_weights"] and not data["images"]:
        raise UserError("'reference_weights' weigh reference images: give them in 'images'")
    if data["img2img"] and not (data["init_image"] or data["images"]):
        raise UserError("an image-to-image sweep needs 'images' (used as the init image) or 'init_image'")
    if not data["prompts"]:
        raise UserError("a sweep needs at least one prompt in 'prompts'")
    return SweepSpec.model_validate(data)


def reference_conditioned(run: Run) -> bool:
    """A run whose caption rows are made from its reference image."""
    return run.kind == "variant" and run.image is not None and not run.steer


@dataclass(frozen=True)
class Plan:
    """The work of a list of runs: each run's config, resolved once (`run_config`), and the forward passes they
    need, each listed once: VL extractions (`image`, `text`, `system_prompt`, `layers`: all layers of one image and
    text in one pass), image-check probe extractions (`probe`: the noise image's size, instead of `image`) and text
    encodes (`prompt`, `encoder`: the text encoder's settings). Made by `plan`; `only` narrows it to some runs."""

    runs: list[Run]
    configs: dict[str, Config]  # run id -> the run's resolved config
    unique_extractions: list[dict[str, Any]]
    probe_extractions: list[dict[str, Any]]
    unique_encodes: list[dict[str, Any]]

    image_sizes: dict[str, tuple[int, int] | None]  # reference image path -> its decoded size (None: unreadable)

    @classmethod
    def of(cls, runs: list[Run], configs: dict[str, Config], inputs: Inputs) -> Plan:
        """The plan of `runs` whose configs are `configs`: the unique forward passes listed (see `plan`); image
        sizes (for the probes) come from `inputs`, which decodes each image once for the whole sweep."""
        extractions: dict[str, dict[str, Any]] = {}
        probes: dict[str, dict[str, Any]] = {}
        encodes: dict[str, dict[str, Any]] = {}
        sizes: dict[str, tuple[int, int] | None] = {}
        for run in runs:
            cfg = configs[run.id]
            enc = cfg.encoder.model_dump(exclude={"device", "dtype"})  # the text encoder's own arguments
            key = json.dumps([run.prompt, enc], sort_keys=True)
            encodes.setdefault(key, {"prompt": run.prompt, "encoder": enc})
            if not reference_conditioned(run):
                continue
            v = cfg.vl
            layers = list(parse_layer_weights(v.layers)) if v.layers else [v.hidden_layer]
            extra = filter(None, [run.neutral_image, run.negative_image])
            for image in [*reference_paths(run.image), *extra]:
                key = json.dumps([image, run.prompt, v.system_prompt, v.max_pixels])
                entry = extractions.setdefault(
                    key, {"image": image, "text": run.prompt, "layers": [], **_extraction_inputs(v)}
                )
                entry["layers"] = sorted(set(entry["layers"]) | set(layers))
            for path in reference_paths(run.image) if v.image_check else []:
                if path not in sizes:
                    sizes[path] = inputs.size(path, "reference image")
                if (size := sizes[path]) is None:
                    continue
                key = json.dumps([size, run.prompt, v.system_prompt, v.max_pixels])
                entry = probes.setdefault(
                    key, {"probe": list(size), "text": run.prompt, "layers": [], **_extraction_inputs(v)}
                )
                entry["layers"] = sorted(set(entry["layers"]) | set(layers))
        return cls(runs, configs, list(extractions.values()), list(probes.values()), list(encodes.values()), sizes)

    def config(self, run: Run) -> Config:
        """The resolved config of one of the plan's runs."""
        return self.configs[run.id]

    def only(self, ids: Collection[str]) -> Plan:
        """The plan of the runs whose id is in `ids`, in the same order (their configs are not resolved again)."""
        runs = [run for run in self.runs if run.id in ids]
        return Plan.of(runs, {run.id: self.configs[run.id] for run in runs}, Inputs(self.image_sizes))

    def passes(self) -> dict[str, int]:
        """How many forward passes of each kind the plan lists (a sweep summary's `plan`)."""
        return {
            "unique_extractions": len(self.unique_extractions),
            "probe_extractions": len(self.probe_extractions),
            "unique_encodes": len(self.unique_encodes),
        }

    def as_dict(self) -> dict[str, Any]:
        """The plan as JSON-able data (what `sweep --dry-run --json` prints): the number of runs and the passes."""
        return {
            "runs": len(self.runs),
            "unique_extractions": self.unique_extractions,
            "probe_extractions": self.probe_extractions,
            "unique_encodes": self.unique_encodes,
        }


def _extraction_inputs(v: VLConfig) -> dict[str, Any]:
    """The settings of a VL forward pass besides image, text and layers: the system prompt and `vl.max_pixels`."""
    return {"system_prompt": v.system_prompt, "max_pixels": v.max_pixels}


def check_runs(base: Config, spec: SweepSpec, plan: Plan) -> None:
    """Refuse, before any work, runs that could not do what they say (`UserError`, one line): a run that sets
    conditioning settings (`vl.*`) with nothing they act on (no reference image, steering direction or style file:
    a listed run of `runs`, which `resolve_spec` does not see), a VL layer beyond the Qwen3-VL model's depth, a DiT
    block beyond the transformer's, a neutral or negative image given to no run at all. Depths are read from the
    models' config files (no weights load). What each run's image is made from is checked with its inputs, by the
    rules `Generator.prepare` applies (`runner.check_run`)."""
    vl_depth = functools.cache(lambda: int(check_vl(base.models.vl)["text_config"]["num_hidden_layers"]))
    dit_blocks = functools.cache(
        lambda: int(read_model_json(base.models.zimage, "transformer/config.json", "a Z-Image folder")["n_layers"])
    )
    beyond: dict[str, set[int]] = {}
    for run in plan.runs:
        unconditioned = run.image is None and not run.steer and not run.style
        if run.kind == "variant" and unconditioned and (keys := sorted(filter(is_conditioning, run.settings))):
            raise UserError(
                f"sweep run '{run.label}' sets {', '.join(keys)}, and has no reference image: conditioning "
                "settings act only on a reference image (or a steering direction or style files); give the run "
                "an 'image' or leave them out"
            )
        if run.kind != "variant" or (run.image is None and not run.steer):
            continue
        v = plan.config(run).vl
        if v.inject_layers:
            try:
                block_indices(v.inject_layers, dit_blocks())
            except UserError as e:
                raise UserError(f"run '{run.label}': vl.inject_layers: {e}") from None
        if run.steer:
            continue
        key, layers = (
            ("vl.layers", parse_layer_weights(v.layers)) if v.layers else ("vl.hidden_layer", [v.hidden_layer])
        )
        for layer in layers:
            try:
                layer_position(layer, vl_depth())
            except UserError:
                beyond.setdefault(key, set()).add(layer)
    if beyond:
        depth = vl_depth()
        what = "; ".join(f"{k} {', '.join(map(str, sorted(b, reverse=True)))}" for k, b in beyond.items())
        raise UserError(
            f"{what}: beyond the depth of the Qwen3-VL model {base.models.vl} ({depth} layers, valid layers "
            f"{-(depth + 1)}..{depth}); choose layers within it"
        )
    if spec.neutral_image and not any(run.neutral_image for run in plan.runs):
        raise UserError(
            "'neutral_image' is used only by runs with a reference image and blend style_delta: no run has one"
        )
    if spec.negative_image and not any(run.negative_image for run in plan.runs):
        raise UserError("'negative_image' is used only by runs conditioned on a reference image: no run has one")


def plan(base: Config, runs: list[Run], inputs: Inputs | None = None) -> Plan:
    """The work `runs` need (`Plan`), deduplicated: each run's config resolved once (`run_config`); each unique
    (image, text, VL system prompt) extracted once with all its layers in one forward pass (a style_delta run's
    neutral image and a run's negative image too); so is each unique (probe size, text, VL system prompt) of the
    image-dependence check (`vl.image_check`: the probe is a noise image of the reference's size); each unique
    (prompt, encoder settings) encoded once. Refuses a run with a bad setting (naming the run). `inputs`: where
    the reference images are decoded (once each; the executor reuses them)."""
    return Plan.of(runs, {run.id: run_config(base, run) for run in runs}, inputs or Inputs())


def plan_sweep(base: Config, spec: SweepSpec, inputs: Inputs | None = None) -> Plan:
    """The plan of every run of `spec` (`expand`, `plan`), checked by `check_runs`: what a dry run shows and what
    `experiment.run_sweep` runs (once `runner.check_plan` has read every input and checked every run: the
    `runner.CheckedPlan` of `experiment.checked_plan`). `inputs`: see `plan`."""
    work = plan(base, expand(spec), inputs)
    check_runs(base, spec, work)
    return work


class Inputs:
    """The files a sweep's runs name (reference, neutral and init images, steering directions, adapters, reference
    statistics), each read once: checking a plan (`runner.check_plan`) reads them, the runs reuse them. `sizes`:
    image sizes already known (a plan's `image_sizes`), so narrowing a plan decodes nothing."""

    def __init__(self, sizes: dict[str, tuple[int, int] | None] | None = None) -> None:
        self._images: dict[str, Image.Image] = {}
        self._directions: dict[str, Any] = {}
        self._adapters: dict[str, tuple[Adapter, dict[str, Any]]] = {}
        self._stats: dict[str, ReferenceStats] = {}
        self._sizes = dict(sizes or {})

    def image(self, path: str | None, label: str) -> Image.Image | None:
        if path is None:
            return None
        if path not in self._images:
            self._images[path] = load_image(path, label)
            self._sizes[path] = self._images[path].size
        return self._images[path]

    def size(self, path: str | None, label: str) -> tuple[int, int] | None:
        """The decoded size of an image file; None when there is none or it cannot be read (`runner.check_run`
        refuses it with the reason)."""
        if path is not None and path not in self._sizes:
            try:
                self.image(path, label)
            except UserError:
                self._sizes[path] = None
        return self._sizes.get(path) if path is not None else None

    def direction(self, path: str):
        if path not in self._directions:
            self._directions[path] = load_direction(path)[0]
        return self._directions[path]

    def adapter(self, path: str) -> tuple[Adapter, dict[str, Any]]:
        """The adapter file at `path` and its metadata (`adapter.model.Adapter.load`: kind, tensors, values checked)."""
        if path not in self._adapters:
            self._adapters[path] = Adapter.load(path)
        return self._adapters[path]

    def stats(self, path: str) -> ReferenceStats:
        """The reference-statistics file at `path` (`stats.ReferenceStats.load`)."""
        if path not in self._stats:
            self._stats[path] = ReferenceStats.load(path)
        return self._stats[path]
