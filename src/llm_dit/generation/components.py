"""Components: the models of one models/devices choice, each loaded on first use, sharing one tensor cache.

A `Components` holds Z-Image's text encoder, the Qwen3-VL extractor and the diffusers pipeline, plus what is
computed from them once: reference statistics per layer, trained adapters per file, the image-dependence probe's
processed VL rows (`probe_rows`). It depends only on the
config keys in `COMPONENT_KEYS` (model paths, `models.*`, devices and dtypes), so one `Components` serves every run
of a sweep whatever the runs' other settings; what a call needs of those settings is passed to it.

Reading a component loads it (and only it). Releasing is explicit: `release(...)` drops components, and
`stage(next)` is the low-memory step the caller writes before the next stage of the data flow (text encoder ->
VL model -> DiT): with `models.low_memory` it releases the encoders the next stage does not need, so peak memory is
the largest component's, not the sum.
"""

from __future__ import annotations

import re
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from ..adapter.model import Adapter, check_use
from ..conditioning.imagedep import NORM_KEY, CaptionNorm
from ..config.settings import PLACEMENT_KEYS, Config, VLConfig
from ..core.cache import TensorCache
from ..core.errors import UserError
from ..core.files import sha256_file
from ..core.modes import parse_lora
from ..maths.refstats import ReferenceStats
from ..models.loading import (
    LazyEncoder,
    check_lora,
    check_offload,
    load_pipeline,
    local_folder,
    read_model_json,
    release_memory,
    weight_refs,
)
from ..models.text import TextEncoder
from ..models.vl import VLEmbeddingExtractor

Name = Literal["text_encoder", "vl", "pipeline"]
NAMES: tuple[Name, ...] = ("text_encoder", "vl", "pipeline")
COMPONENT_KEYS = (
    "models.zimage",
    "models.vl",
    "models.trust_remote_code",
    "models.transformer",
    "models.offload",
    "models.compile",
    "models.encoder_quantization",
    "models.vl_quantization",
    *sorted(PLACEMENT_KEYS),
)
"""The config keys a `Components` depends on; every other key may differ between the runs it serves."""

PROBE_MEMO = 32
"""At most this many probe extractions are kept in process (`Components.probe_rows`)."""
T = TypeVar("T")

_EARLIER: dict[str, tuple[Name, ...]] = {"vl": ("text_encoder",), "pipeline": ("text_encoder", "vl")}


def component_settings(config: Config) -> dict[str, Any]:
    """`{key: value}` of `COMPONENT_KEYS` in `config`."""
    flat = config.flat()
    return {key: flat[key] for key in COMPONENT_KEYS}


def caption_width(zimage: str) -> int:
    """The caption width (`cap_feat_dim`) of the Z-Image DiT at `zimage`, read from its config without loading it."""
    return read_model_json(zimage, "transformer/config.json", "a Z-Image folder")["cap_feat_dim"]


def caption_norm(zimage: str, transformer: str | None = None) -> CaptionNorm:
    """The DiT's caption RMSNorm (`imagedep.CaptionNorm`) without loading the DiT: `eps` = `norm_eps` of
    `zimage`'s `transformer/config.json` (diffusers' default 1e-5 when absent), the scale `g` = the one vector
    `imagedep.NORM_KEY` read from the checkpoint: the safetensors files of `zimage`'s `transformer/` (headers
    searched, one tensor read), or the single-file DiT `transformer` (.safetensors, or .gguf dequantised by
    gguf-py; ComfyUI's `model.diffusion_model.` prefix accepted, as diffusers' converter strips it). When the
    vector cannot be found or read the norm falls back to unit scale, and its `source` says so (it goes into the
    record)."""
    config = read_model_json(zimage, "transformer/config.json", "a Z-Image folder")
    eps = float(config.get("norm_eps", 1e-5))
    where = transformer or f"{zimage} transformer/"
    try:
        weight = _norm_vector(zimage, transformer)
    except Exception as e:  # any unreadable checkpoint: the fallback, recorded
        return CaptionNorm(None, eps, f"unit scale (fallback: cannot read {NORM_KEY} from {where}: {e})")
    if weight is None:
        return CaptionNorm(None, eps, f"unit scale (fallback: {where} has no {NORM_KEY})")
    return CaptionNorm(weight.float().flatten().contiguous(), eps, f"{NORM_KEY} of {where}")


def _norm_vector(zimage: str, transformer: str | None) -> torch.Tensor | None:
    """`imagedep.NORM_KEY` of the DiT checkpoint (see `caption_norm`), or None when no file holds it."""
    from safetensors import safe_open

    def named(key: str) -> bool:
        return key.removeprefix("model.diffusion_model.") == NORM_KEY

    if transformer:
        file = Path(transformer).expanduser()
        if file.suffix == ".gguf":
            import gguf
            import numpy as np

            for t in gguf.GGUFReader(str(file)).tensors:
                if named(t.name):
                    data = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
                    return torch.from_numpy(data)
            return None
        files = [file]
    else:
        folder = local_folder(zimage) / "transformer"
        files = sorted(folder.glob("*.safetensors"))
    for path in files:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if named(key):
                    return f.get_tensor(key)
    return None


def check_adapter_width(path: str, adapter: Adapter, width: int) -> None:
    """Refuse an adapter whose width is not the DiT caption width `width`."""
    if adapter.dim != width:
        raise UserError(f"adapter {path} has width {adapter.dim}, the DiT caption width is {width}")


def _modules(component: Any) -> list[torch.nn.Module]:
    """The loaded torch modules of a component: an encoder's model once its weights have loaded, the pipeline's
    modules (DiT, VAE)."""
    if isinstance(component, LazyEncoder):
        return component.loaded_weights()
    return [m for m in component.components.values() if isinstance(m, torch.nn.Module)]


class Components:
    """The text encoder, VL extractor and pipeline of one models/devices choice (see the module docstring)."""

    def __init__(self, config: Config, cache: TensorCache | None = None) -> None:
        self.settings = component_settings(config)
        check_offload(self.settings["models.offload"])  # before any model loads
        self.cache = cache
        self._released_passes = {"text_encoder": 0, "vl": 0}
        self._stats: dict[tuple[int, float], ReferenceStats] = {}
        self._stats_files: dict[str, ReferenceStats] = {}
        self._adapters: dict[str, tuple[Adapter, dict[str, Any]]] = {}
        self._loras: dict[str, tuple[str, str]] = {}  # resolved LoRA path -> (adapter name, sha256)
        self._probe_rows: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def differences(self, config: Config) -> list[str]:
        """The `COMPONENT_KEYS` whose value in `config` differs from these components' (none: they serve it)."""
        return [key for key, value in component_settings(config).items() if self.settings[key] != value]

    @cached_property
    def text_encoder(self) -> TextEncoder:
        """Z-Image's tokenizer and text encoder (weights on the first cache miss)."""
        s = self.settings
        key = "models.encoder_quantization"
        return TextEncoder.from_pretrained(
            s["models.zimage"],
            s["encoder.device"],
            s["encoder.dtype"],
            self.cache,
            s["models.trust_remote_code"],
            (s[key], key),
        )

    @cached_property
    def vl(self) -> VLEmbeddingExtractor:
        """The Qwen3-VL extractor (weights on the first cache miss)."""
        s = self.settings
        key = "models.vl_quantization"
        return VLEmbeddingExtractor.from_pretrained(
            s["models.vl"], s["vl.device"], s["vl.dtype"], self.cache, s["models.trust_remote_code"], (s[key], key)
        )

    @cached_property
    def pipeline(self):
        """The diffusers Z-Image pipeline without its text encoder (`models.load_pipeline`)."""
        s = self.settings
        return load_pipeline(
            s["models.zimage"],
            s["generation.device"],
            s["generation.dtype"],
            s["models.trust_remote_code"],
            s["models.transformer"],
            s["models.offload"],
            s["models.compile"],
        )

    def dit(self, loras: list[str]) -> tuple[Any, list[dict[str, Any]]]:
        """The pipeline with exactly `loras` (`generation.loras` items, `FILE[:SCALE]`) active, and what acted:
        `[{path, sha256, scale}]` of the LoRAs whose scale is not 0. Each file is checked (`models.check_lora`)
        and loaded once (diffusers' `load_lora_weights`, which converts the trainers' key layouts); scales are
        the adapters' weights (`set_adapters`), so changing them between runs reloads nothing. No LoRA: the
        loaded adapters are disabled."""
        pipe = self.pipeline
        names, weights, acted = [], [], []
        for item in loras:
            path, scale = parse_lora(item)
            name, sha256 = self._lora(pipe, path)
            names.append(name)
            weights.append(scale)
            if scale != 0:
                acted.append({"path": path, "sha256": sha256, "scale": scale})
        if names:
            pipe.enable_lora()
            pipe.set_adapters(names, adapter_weights=weights)
        elif self._loras:
            pipe.disable_lora()
        return pipe, acted

    def _lora(self, pipe, path: str) -> tuple[str, str]:
        key = str(Path(path).expanduser().resolve())
        if key not in self._loras:
            check_lora(path, pipe.transformer)
            name = f"lora{len(self._loras)}_{re.sub(r'[^A-Za-z0-9]+', '_', Path(path).stem)}"
            with warnings.catch_warnings():  # peft warns that a second adapter joins the first: intended here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                pipe.load_lora_weights(key, adapter_name=name)
            self._loras[key] = name, sha256_file(Path(key))
        return self._loras[key]

    @cached_property
    def caption_width(self) -> int:
        """The DiT's caption width (`cap_feat_dim`), read from its config without loading it."""
        return caption_width(self.settings["models.zimage"])

    @cached_property
    def caption_norm(self) -> CaptionNorm:
        """The DiT's caption RMSNorm (`caption_norm`): one vector read from the checkpoint, once."""
        return caption_norm(self.settings["models.zimage"], self.settings["models.transformer"])

    def load(self, *names: Name, weights: bool = False) -> None:
        """Make these components now rather than on first use: the encoders' tokenizers and processors (with
        `weights`, their weights too) and the pipeline whole. Nothing but `Components` holds them afterwards, so
        `stage` can still release them (a caller that kept a reference would pin their memory)."""
        for name in names:
            component = getattr(self, name)
            if weights and name != "pipeline":
                component.load_weights()

    def loaded(self) -> list[Name]:
        """The components held now."""
        return [name for name in NAMES if name in self.__dict__]

    def release(self, *names: Name) -> None:
        """Drop these components (their forward passes still count) and return their memory (`release_memory`,
        told which weights must now be freed)."""
        weights = [ref for name in names for ref in self._drop(name)]
        release_memory(weights)

    def _drop(self, name: Name) -> list[weakref.ref]:
        """Forget the component `name`; weak references to its weights (none when it was not loaded)."""
        component = self.__dict__.pop(name, None)
        if name == "pipeline":
            self._loras.clear()  # the adapters went with it
        if component is None:
            return []
        if name in self._released_passes:
            self._released_passes[name] += component.forward_passes
        return weight_refs(*_modules(component))

    def stage(self, next: Literal["vl", "pipeline"]) -> None:
        """The step before the stage that runs `next`: with `models.low_memory`, release the encoders of the stages
        before it (the text encoder before the VL model, both encoders before the DiT); without it, nothing. The
        caller finishes everything an earlier component must do for this image first."""
        if self.settings["models.low_memory"] and (earlier := [n for n in _EARLIER[next] if n in self.loaded()]):
            self.release(*earlier)

    def forward_passes(self) -> dict[str, int]:
        """Forward passes run so far by the VL model and the text encoder (released ones included)."""
        n = {
            name: done + (self.__dict__[name].forward_passes if name in self.__dict__ else 0)
            for name, done in self._released_passes.items()
        }
        return {"vl": n["vl"], "text": n["text_encoder"]}

    def reference_stats(self, layers: list[int], vl: VLConfig) -> dict[int, ReferenceStats] | ReferenceStats:
        """The statistics normalisation and masking read: the file `vl.reference_stats` when set (loaded once), else
        the text encoder's statistics at exactly these layers over content rows (attention sinks at `vl.sink_ratio`
        left out), computed once per layer and sink ratio."""
        if vl.reference_stats:
            return self._stats_file(vl.reference_stats)
        missing = [layer for layer in layers if (layer, vl.sink_ratio) not in self._stats]
        if missing:
            computed = self.text_encoder.reference_stats(missing, sink_ratio=vl.sink_ratio)
            self._stats |= {(layer, vl.sink_ratio): stats for layer, stats in computed.items()}
        return {layer: self._stats[layer, vl.sink_ratio] for layer in layers}

    def _stats_file(self, path: str) -> ReferenceStats:
        if path not in self._stats_files:
            stats = ReferenceStats.load(path)
            if "sink_ratio" not in stats.metadata:
                warnings.warn(
                    f"vl.reference_stats {path} were computed without leaving out attention-sink rows "
                    f"(sink-contaminated: a few rows set the spread of some dimensions); recompute them with "
                    f"`llm-dit stats --layer {stats.layer}`",
                    stacklevel=3,
                )
            self._stats_files[path] = stats
        return self._stats_files[path]

    def probe_rows(self, key: tuple[Any, ...], make: Callable[[], T]) -> T:
        """The probe's processed VL rows under `key` (`assemble.probe_key`), made by `make` on the first use and
        kept for the other runs of this process (at most `PROBE_MEMO` keys, least recently used dropped first).
        The caller owns the key: it must hold everything the rows depend on, so a hit is what `make` would give."""
        if key in self._probe_rows:
            self._probe_rows.move_to_end(key)
        else:
            self._probe_rows[key] = make()
            while len(self._probe_rows) > PROBE_MEMO:
                self._probe_rows.popitem(last=False)
        return self._probe_rows[key]

    def adapter(self, path: str, config: Config) -> tuple[Adapter, dict[str, Any]]:
        """The trained adapter at `path` and its metadata (with the file's `sha256`), loaded once per path and
        checked against `config` on every use (`adapter.model.check_use`: the settings it was trained with must match;
        a sweep changes them between runs)."""
        if path not in self._adapters:
            adapter, meta = Adapter.load(path)
            check_adapter_width(path, adapter, self.caption_width)
            self._adapters[path] = adapter, {"sha256": sha256_file(path), **meta}
        check_use(path, self._adapters[path][1], config)
        return self._adapters[path]
