"""Checkpoint files written offline against the tiny zoo's DiT, for the LoRA and single-file tests: LoRAs in the
layouts trainers write (diffusers/peft with alpha in the header, ComfyUI/ai-toolkit `diffusion_model.` + `.alpha`),
a LoRA of another architecture, and the transformer in the ORIGINAL (non-diffusers, ComfyUI) key layout as
safetensors and GGUF."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import save_file

RANK, ALPHA = 4, 8.0
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"]


def lora_state(transformer: torch.nn.Module, seed: int = 7) -> dict[str, torch.Tensor]:
    """A random LoRA of `transformer` built with peft (A and B both random: peft's default B is zero), keys
    `<module>.lora_A.weight` / `.lora_B.weight`."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    t = copy.deepcopy(transformer)
    torch.manual_seed(seed)
    t.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights=False), "build")
    with torch.no_grad():
        for name, p in t.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(t, adapter_name="build").items()}


def write_peft_lora(state: dict[str, torch.Tensor], path: Path) -> Path:
    """The diffusers/peft layout: `transformer.` keys, alpha and rank in the safetensors header."""
    from diffusers import ZImagePipeline

    meta = {"r": RANK, "lora_alpha": ALPHA, "target_modules": TARGETS}
    ZImagePipeline.save_lora_weights(
        path.parent, transformer_lora_layers=state, weight_name=path.name, transformer_lora_adapter_metadata=meta
    )
    return path


def write_comfy_lora(state: dict[str, torch.Tensor], path: Path) -> Path:
    """The ComfyUI / ai-toolkit layout: `diffusion_model.` prefix, lora_A/lora_B, alpha as `.alpha` tensors."""
    out = {}
    for k, v in state.items():
        out["diffusion_model." + k] = v
        if k.endswith(".lora_A.weight"):
            out["diffusion_model." + k.removesuffix(".lora_A.weight") + ".alpha"] = torch.tensor(ALPHA)
    save_file(out, path)
    return path


def write_flux_lora(path: Path) -> Path:
    """A LoRA of another architecture (Flux single-stream block names)."""
    save_file(
        {
            "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 64),
            "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(64, 4),
        },
        path,
    )
    return path


def hand_merge(transformer: torch.nn.Module, state: dict[str, torch.Tensor], scale: float) -> None:
    """`W += scale * (alpha / r) * B @ A` in place, for every LoRA pair of `state`."""
    params = dict(transformer.named_parameters())
    with torch.no_grad():
        for k, a in state.items():
            if k.endswith(".lora_A.weight"):
                module = k.removesuffix(".lora_A.weight")
                params[module + ".weight"] += scale * (ALPHA / RANK) * (state[module + ".lora_B.weight"] @ a)


def to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of diffusers' `convert_z_image_transformer_checkpoint_to_diffusers`: fused `attention.qkv`,
    `attention.out`, `q_norm`/`k_norm`, `x_embedder`, `final_layer` (ComfyUI's NextDiT names)."""
    out = {}
    for k, v in state.items():
        if ".attention.to_k." in k or ".attention.to_v." in k:
            continue
        if k.endswith(".attention.to_q.weight"):
            p = k.removesuffix(".to_q.weight")
            out[p + ".qkv.weight"] = torch.cat(
                [state[p + ".to_q.weight"], state[p + ".to_k.weight"], state[p + ".to_v.weight"]]
            )
            continue
        for new, old in (
            ("final_layer.", "all_final_layer.2-1."),
            ("x_embedder.", "all_x_embedder.2-1."),
            (".attention.out.", ".attention.to_out.0."),
            (".attention.q_norm.", ".attention.norm_q."),
            (".attention.k_norm.", ".attention.norm_k."),
        ):
            k = k.replace(old, new)
        out[k] = v.contiguous()
    return out


def write_gguf(state: dict[str, torch.Tensor], path: Path, qtype: str = "Q8_0") -> Path:
    """`state` as GGUF: `qtype` (gguf-py writes Q8_0, Q4_0, Q5_0...; not the K-quants) where a 2-D weight's rows
    are a multiple of the 32-value block, else F32."""
    import gguf

    kind = gguf.GGMLQuantizationType[qtype]
    writer = gguf.GGUFWriter(str(path), arch="z_image")
    for k, v in state.items():
        a = v.float().numpy()
        if a.ndim == 2 and a.shape[-1] % 32 == 0 and k.endswith(".weight"):
            q = gguf.quants.quantize(a, kind)
            writer.add_tensor(k, q, raw_shape=q.shape, raw_dtype=kind)
        else:
            writer.add_tensor(k, a)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
