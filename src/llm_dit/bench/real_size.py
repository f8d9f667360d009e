"""The `real-size` preset of `llm-dit bench` (opt-in: 32 GB disk, 13 GiB RAM): random bf16 weights at the real
models' sizes, then the peak memory of each stage and of the low-memory generation, each in a fresh process."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UserError
from ..models.zoo import zoo_dir
from .harness import STAGES, WEIGHTS, figure, machine, memory_probe

REAL_SIZE = "real-size"


# The real configurations (FACTS.md §1), applied to the tiny zoo's config files: sizes change, token ids and the
# tokenizer stay the zoo's (they index into the real vocabulary size), so every loader and code path is the real one.
_QWEN3_4B = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6,
}  # fmt: skip


REAL_CONFIGS: dict[str, dict[str, Any]] = {
    "zimage/text_encoder": {**_QWEN3_4B, "max_position_embeddings": 40960, "tie_word_embeddings": True},
    "zimage/transformer": {
        "dim": 3840, "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "cap_feat_dim": 2560,
        "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
    },
    "zimage/vae": {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32},
    "qwen3-vl": {
        "tie_word_embeddings": True,
        "text_config": {
            **_QWEN3_4B, "max_position_embeddings": 262144,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                "mrope_interleaved": True},
        },
        "vision_config": {
            "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "out_hidden_size": 2560,
            "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17],
        },
    },
}  # fmt: skip


REAL_DISK_GB = 32.0  # 29.4 GB of bf16 safetensors (research-realckpt §6.2) and a margin


REAL_RAM_GIB = 13.0  # staged peak ≈ 11.9 GiB (the DiT stage) and the VAE decode


REAL_SIZE_PIXELS = 256  # output side: 256 DiT image tokens


SHARD_BYTES = 2 << 30


def meta_model(component: str, config: dict[str, Any]) -> torch.nn.Module:
    """`component` (a key of `REAL_CONFIGS`) built from its config dict on the meta device: names and shapes only."""
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import AutoConfig, AutoModel, Qwen3VLForConditionalGeneration

    with torch.device("meta"):
        if component == "zimage/transformer":
            return ZImageTransformer2DModel.from_config(config)
        if component == "zimage/vae":
            return AutoencoderKL.from_config(config)
        cfg = AutoConfig.for_model(**config)
        return Qwen3VLForConditionalGeneration(cfg) if component == "qwen3-vl" else AutoModel.from_config(cfg)


def _merged(config: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    out = dict(config)
    for key, value in updates.items():
        out[key] = _merged(out.get(key, {}), value) if isinstance(value, dict) and key != "rope_parameters" else value
    return out


def real_config(component: str, config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a tiny zoo component's) with the real sizes of `REAL_CONFIGS`; per-layer lists the zoo's depth
    wrote (`layer_types`) are dropped so transformers derives them for the real depth."""
    out = _merged(config, REAL_CONFIGS[component])
    for section in (out, out.get("text_config", {})):
        section.pop("layer_types", None)
    return out


def _unique_tensors(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """`{name: shape}` of the persistent tensors a checkpoint stores, tied weights once (transformers re-ties)."""
    tied = set(dict(model.named_parameters(remove_duplicate=False))) - set(dict(model.named_parameters()))
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in tied}


def _fill(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random bf16 weights of a trained model's scale: zero biases, unit norms, N(0, 0.02) elsewhere (made in row
    blocks so the float32 temporary of the 742 MiB embedding never exists whole)."""
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    if len(shape) == 1 and "norm" in name:
        return torch.ones(shape, dtype=torch.bfloat16)
    out = torch.empty(shape, dtype=torch.bfloat16)
    for block in out.view(shape[0], -1).split(4096) if len(shape) else [out]:
        block.copy_(torch.randn(block.shape, generator=gen) * 0.02)
    return out


def write_random_checkpoint(component: str, config: dict[str, Any], folder: Path, stem: str) -> int:
    """Random bf16 weights for `config` in `folder`, written shard by shard (one shard in memory at a time) with the
    index `from_pretrained` reads; returns the bytes written. The model is built on the meta device for its names."""
    from safetensors.torch import save_file

    model = meta_model(component, config)
    tensors = _unique_tensors(model)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    gen = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: _fill(n, s, gen) for n, s in shard}, folder / file, metadata={"format": "pt"})
        weight_map |= {n: file for n, _ in shard}
        total += (folder / file).stat().st_size
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return total


def build_real_size(work: Path, scale: str = "real", progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`work/zimage` and `work/qwen3-vl` with random bf16 weights: the tiny zoo's folders (tokenizer, scheduler,
    processor, configs) with the configurations of `REAL_CONFIGS` (`scale="tiny"`: the zoo's own sizes, the dry
    path that tests this code). A finished build is marked by `work/built.json` and reused."""
    marker = work / "built.json"
    if marker.is_file() and json.loads(marker.read_text()).get("scale") == scale:
        return json.loads(marker.read_text())
    say = progress or (lambda _: None)
    if work.exists():
        shutil.rmtree(work)
    zoo = zoo_dir("tiny")
    shutil.copytree(zoo, work, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    written: dict[str, Any] = {}
    for component in REAL_CONFIGS:
        folder = work / component
        config = json.loads((folder / "config.json").read_text())
        if scale == "real":
            config = real_config(component, config)
            (folder / "config.json").write_text(json.dumps(config, indent=2))
        say(f"writing random bf16 weights: {component}")
        t0 = time.perf_counter()
        stem = "model" if component in ("qwen3-vl", "zimage/text_encoder") else "diffusion_pytorch_model"
        nbytes = write_random_checkpoint(component, config, folder, stem)
        written[component] = {"gb": round(nbytes / 1e9, 3), "write_s": round(time.perf_counter() - t0, 1)}
    result = {"scale": scale, "components": written, "total_gb": round(sum(w["gb"] for w in written.values()), 2)}
    marker.write_text(json.dumps(result, indent=2))
    return result


def _meminfo_gib(field: str) -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 2**20


def check_real_size(work: Path) -> dict[str, float]:
    """Refuse (one line) before anything is written when `work`'s disk or the free RAM cannot hold the bench."""
    work.mkdir(parents=True, exist_ok=True)
    built = (work / "built.json").is_file()
    disk = shutil.disk_usage(work).free / 1e9
    ram = _meminfo_gib("MemAvailable")
    if (disk < REAL_DISK_GB and not built) or ram < REAL_RAM_GIB:
        raise UserError(
            f"bench --preset {REAL_SIZE} needs {REAL_DISK_GB:g} GB free disk in {work} (has {disk:.1f}) and "
            f"{REAL_RAM_GIB:g} GiB available RAM (has {ram:.1f}); it writes 29.4 GB of random bf16 weights and runs "
            f"the 4 B encoders and the 6 B DiT one at a time on the CPU"
        )
    return {"disk_free_gb": round(disk, 1), "ram_available_gib": round(ram, 1)}


def real_size_overrides(work: Path) -> dict[str, Any]:
    """The low-memory bf16 pipeline on CPU at a small output size (2 steps) on the built folders."""
    return {
        "models.zimage": str(work / "zimage"),
        "models.vl": str(work / "qwen3-vl"),
        "encoder.device": "cpu",
        "vl.device": "cpu",
        "generation.device": "cpu",
        "encoder.dtype": "bfloat16",
        "vl.dtype": "bfloat16",
        "generation.dtype": "bfloat16",
        "generation.width": REAL_SIZE_PIXELS,
        "generation.height": REAL_SIZE_PIXELS,
        "generation.steps": 2,
        "vl.image_check": False,
    }


def _gib(mb: float) -> float:
    return round(mb / 1024, 2)


def run_real_size(
    work: Path, scale: str = "real", progress: Callable[[str], None] | None = None, threads: int | None = None
) -> dict[str, Any]:
    """The `real-size` preset: check disk and RAM (`check_real_size`; `scale="tiny"` skips it), build the folders,
    then peak RSS above the post-import baseline of each stage alone (text encoder, VL model, DiT + VAE), each in
    a fresh process, and of the whole low-memory generation, against the sum of the stages. Each stage is probed
    twice: as it runs (memory-mapped weights count only once read) and with every weight read first
    (`touch_weights`: what a GPU holds, since moving a model there copies all of it), with the weights' size."""
    say = progress or (lambda _: None)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"preset": REAL_SIZE, "scale": scale, "date": date.today().isoformat(), **machine()}
    out["machine"]["ram_total_gib"] = round(_meminfo_gib("MemTotal"), 1)
    out["resources"] = check_real_size(work) if scale == "real" else {}
    out["build"] = build_real_size(work, scale, say)
    overrides = real_size_overrides(work)
    stages: dict[str, Any] = {}
    for what in (*STAGES, "staged"):
        say(f"peak memory: {what}")
        m = memory_probe(overrides, what, threads)
        stages[what] = {"peak_above_base_gib": _gib(m["peak_mb"] - m["base_mb"]), "seconds": m["seconds"]}
        if what in STAGES:
            say(f"peak memory: {what}, every weight read first")
            w = memory_probe(overrides, what + WEIGHTS, threads)
            stages[what] |= {
                "weights_gib": _gib(w["weights_mb"]),
                "all_weights_peak_above_base_gib": _gib(w["peak_mb"] - w["base_mb"]),
            }
    out["stages"] = stages
    out["sum_of_stages_gib"] = round(sum(stages[s]["peak_above_base_gib"] for s in STAGES), 2)
    out["staged_vs_sum"] = figure(
        stages["staged"]["peak_above_base_gib"], out["sum_of_stages_gib"], "staged peak / sum of stages"
    )
    all_weights = {s: stages[s]["all_weights_peak_above_base_gib"] for s in STAGES}
    out["all_weights_sum_gib"] = round(sum(all_weights.values()), 2)
    out["all_weights_staged_peak_gib"] = max(all_weights.values())  # stages run one at a time, each released
    out["output_size"] = REAL_SIZE_PIXELS
    out["wall_time_s"] = round(time.perf_counter() - t0, 1)
    return out
