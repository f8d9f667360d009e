"""Model loading: one place that turns a path or hub id plus a device and dtype into a loaded component.

Each component (text encoder, DiT + VAE, Qwen3-VL) loads on its own device and dtype and can be freed after use.
A path that does not exist locally is treated as a hub id; either way a missing or wrong model is a `UserError`
naming what was expected.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import hashlib
import importlib.util
import json
import weakref
from collections.abc import Callable, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import torch

from ..core.errors import UserError, check_choice
from ..core.modes import OFFLOADS, QUANTIZATIONS
from ..core.numerics import require_finite
from .hooks import layer_position

if TYPE_CHECKING:
    from ..core.cache import TensorCache


class ModelError(UserError):
    """A model path or id that cannot be loaded as the expected family."""


def resolve_device(name: str) -> torch.device:
    """`auto` = cuda when available, else cpu; anything else is passed to `torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available")
    return device


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` = bfloat16 on cuda (the checkpoints' dtype), float32 on cpu (bf16 matmuls are slow there)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[check_choice(name, ("auto", *DTYPES), "dtype")]


def _looks_local(path_or_id: str) -> bool:
    return path_or_id.startswith(("/", ".", "~")) or Path(path_or_id).exists() or path_or_id.count("/") != 1


def read_model_json(path_or_id: str, filename: str, expected: str) -> dict:
    """Read `filename` from a local folder or the hub (cache first); `expected` names the model family."""
    if _looks_local(path_or_id):
        file = Path(path_or_id).expanduser() / filename
        if not Path(path_or_id).expanduser().is_dir():
            raise ModelError(f"model not found: {path_or_id} (expected {expected})")
        if not file.is_file():
            raise ModelError(f"{path_or_id} is not {expected}: it has no {filename}")
    else:
        from huggingface_hub import hf_hub_download

        try:
            file = Path(hf_hub_download(path_or_id, filename))
        except Exception as e:  # offline, unknown repo, gated: all one message
            raise ModelError(f"cannot fetch {path_or_id} ({expected}): {type(e).__name__}") from None
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path_or_id}: {filename} is not valid JSON ({e})") from None


def local_folder(path_or_id: str) -> Path:
    """The folder holding a model's files: the path itself, or the hub snapshot already in the local cache."""
    if _looks_local(path_or_id):
        return Path(path_or_id).expanduser().resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path_or_id, local_files_only=True))


def model_identity(path_or_id: str, subfolder: str = "") -> dict[str, str]:
    """What names a model's weights in cache keys and records: the id as given, the resolved folder and a
    fingerprint of its JSON files and weight files (names, sizes and their first and last 64 KiB). Computed once
    per folder state (the folder's files and modification times) in a process."""
    folder = local_folder(path_or_id) / subfolder
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors"))
    state = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return dict(_fingerprint(path_or_id, folder, state))


@functools.lru_cache(maxsize=64)
def _fingerprint(path_or_id: str, folder: Path, state: tuple) -> tuple[tuple[str, str], ...]:
    h = hashlib.sha256()
    for name, size, _ in state:
        file = Path(name)
        h.update(f"{file.relative_to(folder)}:{size}".encode())
        with open(file, "rb") as f:
            h.update(f.read(1 << 16))
            f.seek(max(0, size - (1 << 16)))
            h.update(f.read())
    return (("id", path_or_id), ("path", str(folder)), ("fingerprint", h.hexdigest()[:16]))


def check_zimage(path_or_id: str) -> None:
    index = read_model_json(path_or_id, "model_index.json", "a diffusers Z-Image folder")
    if not index.get("_class_name", "").startswith("ZImage"):
        raise ModelError(f"{path_or_id} is a {index.get('_class_name', 'unknown')} folder, expected a Z-Image pipeline")


def check_vl(path_or_id: str) -> dict:
    config = read_model_json(path_or_id, "config.json", "a Qwen3-VL model folder")
    if config.get("model_type") != "qwen3_vl":
        raise ModelError(f"{path_or_id} is a '{config.get('model_type')}' model, expected qwen3_vl (Qwen3-VL)")
    return config


def quiet_libraries() -> None:
    """The one output policy of the CLI and the Python API alike: transformers and diffusers log errors only and
    show no per-file progress bars ("Loading weights", "Loading pipeline components"), so a script's stderr holds
    llm-dit's own messages. Applied where models load (`load_pipeline`, `load_model`); set the libraries' verbosity
    again after loading to see theirs."""
    import diffusers
    import transformers

    for lib in (transformers, diffusers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def file_identity(path: str) -> dict[str, str]:
    """What names a single weight file in records: the path as given, the resolved path and a fingerprint of its
    name, size and first and last 64 KiB (as `model_identity` for a folder; no full hash of a multi-GB file)."""
    file = Path(path).expanduser().resolve()
    state = ((str(file), file.stat().st_size, file.stat().st_mtime_ns),)
    return {**dict(_fingerprint(path, file.parent, state)), "path": str(file)}


def _header_shapes(path: Path) -> dict[str, torch.Tensor]:
    """`{name: empty meta tensor of the stored logical shape}` from a safetensors or GGUF header (no weights read)."""
    if path.suffix == ".gguf":
        try:
            import gguf
        except ImportError:
            raise ModelError(f"{path} is a GGUF file: install the gguf package (pip install 'gguf>=0.10')") from None
        tensors = gguf.GGUFReader(str(path)).tensors
        return {t.name: torch.empty(tuple(reversed(t.shape.tolist())), device="meta") for t in tensors}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}  # noqa: SIM118


def check_transformer_file(path: str, zimage: str) -> None:
    """Refuse a single-file DiT that is not the transformer `zimage`'s config describes, from the file's header
    alone: diffusers' conversion of the original (ComfyUI) key layout runs on meta tensors and the result must have
    exactly the keys and shapes of the config's model. diffusers itself fails late on such a file ("Cannot copy
    out of meta tensor")."""
    from diffusers import ZImageTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    file = Path(path).expanduser()
    if file.suffix not in (".safetensors", ".gguf") or not file.is_file():
        raise ModelError(f"models.transformer must be an existing .safetensors or .gguf file: {path}")
    try:
        got = convert_z_image_transformer_checkpoint_to_diffusers(_header_shapes(file))
    except ModelError:
        raise
    except Exception as e:  # an unreadable header or a layout the converter cannot read: one message
        raise ModelError(f"{path} is not a Z-Image transformer file: {str(e).splitlines()[0][:200]}") from None
    with torch.device("meta"):
        config = ZImageTransformer2DModel.load_config(local_folder(zimage) / "transformer")
        want = ZImageTransformer2DModel.from_config(config).state_dict()
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k].shape != got[k].shape)
    if missing or unexpected or wrong:
        example = (wrong or missing or unexpected)[0]
        raise ModelError(
            f"{path} is not a transformer of {zimage}'s Z-Image configuration: {len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} of another shape (e.g. {example})"
        )


def load_transformer(path: str, zimage: str, dtype: torch.dtype):
    """A single-file DiT (`models.transformer`): `from_single_file` with the configuration of `zimage`'s
    `transformer/` (offline; without it diffusers would fetch Z-Image-Turbo's config from the hub), `.gguf`
    through diffusers' GGUF quantisation (weights stay quantised, dequantised per layer in `dtype`)."""
    from diffusers import GGUFQuantizationConfig, ZImageTransformer2DModel

    check_transformer_file(path, zimage)
    quant = {"quantization_config": GGUFQuantizationConfig(compute_dtype=dtype)} if path.endswith(".gguf") else {}
    try:
        file, config = str(Path(path).expanduser()), str(local_folder(zimage))
        model = ZImageTransformer2DModel.from_single_file
        return model(file, config=config, subfolder="transformer", dtype=dtype, **quant)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the transformer file {path}: {str(e).splitlines()[0]}") from None


"""`models.offload`: diffusers' model CPU offload (one component on the accelerator at a time) or sequential
offload (layer by layer through accelerate hooks; least memory, slowest)."""


def check_offload(offload: str) -> None:
    """Refuse offload where there is no accelerator to offload to (diffusers would fail only at load time)."""
    if check_choice(offload, OFFLOADS, "models.offload") != "none" and not torch.accelerator.is_available():
        raise UserError(
            f"models.offload = {offload} moves the DiT and VAE between the CPU and an accelerator, and this machine "
            "has none (torch.accelerator.is_available() is False): use models.offload = none"
        )


def load_pipeline(
    path_or_id: str,
    device: str,
    dtype: str,
    trust_remote_code: bool = False,
    transformer: str | None = None,
    offload: str = "none",
    compile: bool = False,
):
    """The diffusers `ZImagePipeline` (DiT, VAE, scheduler, tokenizer) without its text encoder: llm-dit encodes
    prompts itself and loads the encoder exactly once (`text.TextEncoder`). `transformer`: a single-file DiT
    (`load_transformer`) in place of the folder's. `offload` (`OFFLOADS`): diffusers' CPU offload instead of
    placing the pipeline on `device`. `compile`: regional `torch.compile` of the DiT's repeated blocks
    (`compile_repeated_blocks`: each block compiled once, reused by all 30; the first call pays the compile)."""
    check_offload(offload)
    from diffusers import ZImagePipeline

    check_zimage(path_or_id)
    dev = resolve_device(device)
    quiet_libraries()
    dt = resolve_dtype(dtype, dev)
    parts = {"transformer": load_transformer(transformer, path_or_id, dt)} if transformer else {}
    try:
        pipe = ZImagePipeline.from_pretrained(
            path_or_id, dtype=dt, text_encoder=None, trust_remote_code=trust_remote_code, **parts
        )
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load Z-Image from {path_or_id}: {str(e).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    if offload == "model":
        pipe.enable_model_cpu_offload()
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload()
    else:
        pipe.to(dev)
    if compile:
        pipe.transformer.compile_repeated_blocks()
    freeze_loaded()
    return pipe


def check_lora(path: str, transformer: torch.nn.Module) -> None:
    """Refuse, before the pipeline is touched, a file that is not a LoRA of this Z-Image transformer. diffusers'
    converter (`ZImagePipeline.lora_state_dict`: kohya, ComfyUI/ai-toolkit `diffusion_model.` + `.alpha`, peft, the
    original fused `qkv` tree) gives `transformer.<module>.lora_A/B` keys; each must name a Linear of the
    transformer with matching in/out width. A failed `load_lora_weights` would leave an empty peft wrapper behind
    and fail with errors that differ per trainer."""
    from diffusers import ZImagePipeline

    if not Path(path).is_file():
        raise ModelError(f"LoRA file not found: {path}")
    try:
        state = ZImagePipeline.lora_state_dict(path)
    except Exception as e:  # the converter's errors vary per format: all one message
        raise ModelError(f"{path} is not a Z-Image LoRA: {str(e).splitlines()[0][:200]}") from None
    modules = dict(transformer.named_modules())

    def fits(key: str, value: torch.Tensor) -> bool:
        name, _, kind = key.removeprefix("transformer.").rpartition(".lora_")
        module = modules.get(name) if key.startswith("transformer.") else None
        module = getattr(module, "base_layer", module)  # a layer that already carries LoRAs wraps the Linear
        if not isinstance(module, torch.nn.Linear) or value.ndim != 2:
            return False
        return value.shape[1] == module.in_features if kind.startswith("A") else value.shape[0] == module.out_features

    bad = [key for key, value in state.items() if not fits(key, value)]
    if bad or not state:
        example = f" (e.g. {bad[0]})" if bad else ""
        raise ModelError(
            f"{path} is not a LoRA of this Z-Image transformer: {len(bad)} of {len(state)} tensors fit no "
            f"layer of it{example}"
        )


"""Weight quantisation of the text encoder and Qwen3-VL through transformers' `quantization_config`: bitsandbytes
8-bit (LLM.int8) and 4-bit (NF4), torchao int8 weight-only."""


def quantization_config(kind: str, key: str):
    """transformers' `quantization_config` for `kind` (`QUANTIZATIONS`; `none`: `None`). A backend that is not
    installed is a one-line `UserError` naming `key`, before any weights load."""
    if check_choice(kind, QUANTIZATIONS, key) == "none":
        return None
    from transformers import BitsAndBytesConfig, TorchAoConfig

    if kind in ("8bit", "4bit"):
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError(
                f"{key} = {kind} needs bitsandbytes: pip install 'llm-dit[quant]' (or bitsandbytes>=0.46.1)"
            )
        return BitsAndBytesConfig(load_in_8bit=kind == "8bit", load_in_4bit=kind == "4bit")
    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError:
        raise UserError(f"{key} = {kind} needs torchao: pip install 'llm-dit[quant]' (or torchao)") from None
    return TorchAoConfig(quant_type=Int8WeightOnlyConfig())


def load_model(model_class, path_or_id: str, device: torch.device, dtype: torch.dtype, **kwargs):
    """`model_class.from_pretrained(...)` on `device` in eval mode; loading failures become one-line errors. With
    a `quantization_config` the weights are quantised as they load, straight onto `device` (a quantised model
    cannot be moved afterwards)."""
    if kwargs.get("quantization_config") is not None:
        kwargs["device_map"] = {"": device}
    quiet_libraries()
    try:
        model = model_class.from_pretrained(path_or_id, dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load {model_class.__name__} from {path_or_id}: {str(e).splitlines()[0]}") from None
    model = (model if "device_map" in kwargs else model.to(device)).eval()
    freeze_loaded()
    return model


def freeze_loaded() -> None:
    """Collect garbage, then leave everything alive (the libraries, the model just loaded) out of later collections
    (`gc.freeze`), so that `release_memory`'s collection walks only what was made since: a full collection walks
    every tracked object, ~0.5M once torch, transformers and diffusers are imported, 0.1-0.3 s per release. The
    collection here walks what is not frozen yet (everything only at a process's first load, or after a fallback),
    so no garbage is frozen. A frozen object is still freed when its last reference goes, as a released model's weights
    are; one held only by a reference cycle is found by the full collection `release_memory` falls back to."""
    gc.collect()
    gc.freeze()


def weight_refs(*modules: torch.nn.Module) -> list[weakref.ref]:
    """Weak references to every parameter and buffer of `modules`: what `release_memory` checks was freed."""
    return [weakref.ref(t) for m in modules for t in (*m.parameters(), *m.buffers())]


def release_memory(weights: Sequence[weakref.ref] = ()) -> None:
    """Return freed tensors' memory to the system (call after dropping the last reference to a component):
    collect garbage, trim glibc's heap (freed CPU tensors otherwise stay in the process) and empty CUDA's cache.
    The collection leaves out what `freeze_loaded` froze; when one of `weights` (`weight_refs` of the released
    components) is still alive after it, a frozen reference cycle may hold it, so everything is unfrozen and
    collected, as every release did before the freeze."""
    gc.collect()
    if any(ref() is not None for ref in weights):
        gc.unfreeze()
        gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class LazyEncoder:
    """What the text encoder and the Qwen3-VL extractor share: weights loaded on the first cache miss (`model`), where
    and in which dtype they run, the model's identity, an optional tensor cache of hidden rows and a forward-pass
    count. A subclass gives `num_layers`, its default device and `_parts` (what loads before the weights)."""

    num_layers: int
    default_device = "auto"
    quantization = "none"  # QUANTIZATIONS: in every cache key when not none (quantised weights give other rows)

    def __init__(
        self,
        load: Callable[[], torch.nn.Module],
        identity: dict[str, str],
        dtype: torch.dtype,
        cache: TensorCache | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.device = device or torch.device("cpu")  # where and in which dtype the model runs: in every cache key
        self.dtype = dtype
        self.identity = identity
        self.cache = cache
        self.forward_passes = 0
        self._load = load

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str,
        device: str | None = None,
        dtype: str = "auto",
        cache: TensorCache | None = None,
        trust_remote_code: bool = False,
        quantization: tuple[str, str] = ("none", ""),
    ) -> Self:
        """The tokenizer, config and processors of `path_or_id` now, its weights on the first cache miss. `device`
        (default: the class's `default_device`) and `dtype` as `resolve_device` and `resolve_dtype` take them;
        `quantization` = (one of `QUANTIZATIONS`, the config key that chose it)."""
        dev = resolve_device(device or cls.default_device)
        dt = resolve_dtype(dtype, dev)
        quant = quantization_config(*quantization)
        parts, load = cls._parts(path_or_id, trust_remote_code)
        load = partial(load, device=dev, dtype=dt, **({"quantization_config": quant} if quant else {}))
        encoder = cls(**parts, load=load, dtype=dt, cache=cache, device=dev)
        encoder.quantization = quantization[0]
        return encoder

    @classmethod
    def _parts(cls, path_or_id: str, trust_remote_code: bool) -> tuple[dict[str, Any], Callable[..., torch.nn.Module]]:
        """The constructor's arguments that load before the weights (with `identity`), and `load_model` bound to all
        but the device and dtype."""
        raise NotImplementedError

    @cached_property
    def model(self) -> torch.nn.Module:
        """The weights, loaded on first use."""
        return self._load()

    def loaded_weights(self) -> list[torch.nn.Module]:
        """The weights if they are loaded (none before the first cache miss): what a release must see freed."""
        return [self.__dict__["model"]] if "model" in self.__dict__ else []

    def load_weights(self) -> torch.nn.Module:
        """The weights, loaded now if they are not yet (`model` loads them on the first cache miss)."""
        return self.model

    def cached_rows(
        self,
        kind: str,
        key: dict[str, Any],
        layers: Sequence[int],
        forward: Callable[[list[int]], dict[int, torch.Tensor]],
        stage: str,
        hint: str,
        meta: dict[str, Any] | None = None,
    ) -> tuple[dict[int, torch.Tensor], list[int]]:
        """`({layer: rows}, layers that ran)`: the rows of every layer in `layers` (checked against `num_layers`), from
        the tensor cache (`kind`, `key` plus the model's identity, dtype, device and the layer) where present, the
        others from one call `forward(missing)` (one forward pass), which are then cached with `meta`. Every row
        set read or computed must be finite (`numerics.require_finite`, naming "`stage` layer L"; `hint` says why)."""
        for layer in layers:
            layer_position(layer, self.num_layers)
        base = {"model": self.identity, "dtype": str(self.dtype), "device": self.device.type, **key}
        if self.quantization != "none":
            base["quantization"] = self.quantization
        rows: dict[int, torch.Tensor] = {}
        for layer in layers:
            if self.cache and (hit := self.cache.get(kind, {**base, "layer": layer})):
                rows[layer] = require_finite(hit[0]["rows"], f"{stage} layer {layer}", hint)
        missing = [layer for layer in layers if layer not in rows]
        if missing:
            computed = forward(missing)
            self.forward_passes += 1
            for layer in missing:
                rows[layer] = require_finite(computed[layer], f"{stage} layer {layer}", hint)
                if self.cache:
                    self.cache.put(kind, {**base, "layer": layer}, {"rows": rows[layer]}, meta or {})
        return rows, missing
