"""CSD (Contrastive Style Descriptors, Somepalli et al. 2024): its published checkpoint converted once to a
transformers ``CLIPVisionModelWithProjection`` folder, without executing pickle code.

The published file (``tomg-group-umd/CSD-ViT-L`` ``pytorch_model.bin``, or the Google-Drive ``checkpoint.pth`` of
``learn2phoenix/CSD``) is a training checkpoint: ``{"model_state_dict": {"module.backbone.…": …,
"module.last_layer_style": [1024, 768], "module.last_layer_content": …}, "args": argparse.Namespace(…), …}`` in
OpenAI-CLIP module layout (``CSD/train_csd.py``; DDP ``module.`` prefix; numpy scalars inside ``args``).

Loading (``load_csd_checkpoint``): ``torch.serialization.get_unsafe_globals_in_checkpoint`` lists the pickle
globals by disassembling the file; anything outside ``ALLOWED_GLOBALS`` (``argparse.Namespace`` and the numpy
scalar/dtype names the numpy 1 and 2 pickles use) is refused with a one-line error before anything is unpickled;
then ``torch.load(weights_only=True)`` inside ``torch.serialization.safe_globals(ALLOWED_GLOBALS)`` (scoped, not the
process-wide ``add_safe_globals``). Keys other than ``backbone.*``, ``last_layer_style`` and
``last_layer_content`` are refused.

Conversion (``convert_csd``): the OpenAI ViT maps onto ``CLIPVisionModel`` key by key (as transformers'
``convert_clip_original_pytorch_to_hf.py``: ``in_proj`` split into q/k/v, ``c_fc``/``c_proj`` to ``fc1``/``fc2``,
``ln_pre``/``ln_post``), and the style head ``last_layer_style`` (a bias-free ``[width, dim]`` matrix applied as
``ln_post(CLS) @ P``) is exactly ``visual_projection`` (weight ``P.T``). So ``image_embeds`` of the converted model
is CSD's style descriptor before its L2 normalisation (a cosine does not need it). The config is read off the
tensor shapes; heads = width // 64 (the OpenAI ViT rule; 16 for ViT-L/14); activation ``quick_gelu`` (a ``gelu``
tower loads without a missing key and computes something else: ``embedders.load_embedder`` refuses it). The
content head is kept in ``content_head.safetensors``; ``csd.json`` records the source file, its size and sha256.
Preprocessing: ``CLIPImageProcessor`` (shortest edge resize, bicubic, centre crop, OpenAI mean/std) = CSD's
``Resize(224, BICUBIC)`` / ``CenterCrop(224)`` / ``Normalize`` (the crop offset differs by 1 px when the margin
is ≡ 3 mod 4; square images are exact).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UserError

__all__ = ["ALLOWED_GLOBALS", "convert_csd", "convert_state_dict", "csd_config", "load_csd_checkpoint"]

CSD_PUBLISHED = {
    "repo": "tomg-group-umd/CSD-ViT-L",
    "file": "pytorch_model.bin",
    "revision": "5bc26a6fb0487f3f00a2a7313135103a005b1b67",
}  # not downloaded or verified here (docs/methods.md §11)


def _allowed_globals() -> list[Any]:
    """The pickle globals a CSD checkpoint may name: the training args and numpy scalars inside them."""
    import numpy as np
    from numpy._core.multiarray import scalar

    return [
        argparse.Namespace,
        np.dtype,
        np.dtypes.Float64DType,
        np.dtypes.Float32DType,
        np.dtypes.Int64DType,
        np.dtypes.BoolDType,
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),  # the name numpy 1.x pickles use (the published file)
    ]


ALLOWED_GLOBALS = _allowed_globals()


def _global_name(entry: Any) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


_STATE_PREFIXES = ("backbone.", "last_layer_style", "last_layer_content")


def load_csd_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``model_state_dict`` of a CSD training checkpoint (``module.`` prefix stripped), loaded without executing
    pickle code; a checkpoint that needs any other pickle global is refused before anything is unpickled."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"CSD checkpoint '{path}' does not exist")
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # any failure to read the pickle means: not a torch checkpoint
        raise UserError(f"'{path}' is not a torch checkpoint: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    extra = sorted(set(found) - {_global_name(g) for g in ALLOWED_GLOBALS})
    if extra:
        raise UserError(
            f"refusing CSD checkpoint '{path}': it names pickle globals outside the allow-list: {', '.join(extra)}"
            " (nothing was unpickled)"
        )
    with torch.serialization.safe_globals(ALLOWED_GLOBALS):
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # mmap needs the zip format; the legacy format loads without it
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("model_state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"CSD checkpoint '{path}' has no 'model_state_dict' (is it the CSD training checkpoint?)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    unknown = sorted(k for k in state if not k.startswith(_STATE_PREFIXES))
    if unknown or "last_layer_style" not in state:
        what = f"unexpected keys {', '.join(unknown[:3])}" if unknown else "no 'last_layer_style' (the style head)"
        raise UserError(f"CSD checkpoint '{path}' is not a CSD model: {what}")
    return state


def csd_config(state: dict[str, torch.Tensor]):
    """The ``CLIPVisionConfig`` of a CSD state dict, read off its tensor shapes (heads = width // 64)."""
    from transformers import CLIPVisionConfig

    b = "backbone."
    width, _, patch, _ = state[b + "conv1.weight"].shape
    grid = math.isqrt(state[b + "positional_embedding"].shape[0] - 1)
    layers = 0
    while f"{b}transformer.resblocks.{layers}.ln_1.weight" in state:
        layers += 1
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=state[f"{b}transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        image_size=grid * patch,
        patch_size=patch,
        projection_dim=state["last_layer_style"].shape[1],
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CSD ``model_state_dict`` (OpenAI layout) as a ``CLIPVisionModelWithProjection`` state dict."""
    b, v = "backbone.", "vision_model."
    out = {
        v + "embeddings.class_embedding": state[b + "class_embedding"],
        v + "embeddings.patch_embedding.weight": state[b + "conv1.weight"],
        v + "embeddings.position_embedding.weight": state[b + "positional_embedding"],
    }
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for p in ("weight", "bias"):
            out[f"{v}{theirs}.{p}"] = state[f"{b}{ours}.{p}"]
    i = 0
    while f"{b}transformer.resblocks.{i}.ln_1.weight" in state:
        s, d = f"{b}transformer.resblocks.{i}.", f"{v}encoder.layers.{i}."
        for p in ("weight", "bias"):
            q, k, val = state[f"{s}attn.in_proj_{p}"].chunk(3, dim=0)
            out[f"{d}self_attn.q_proj.{p}"], out[f"{d}self_attn.k_proj.{p}"], out[f"{d}self_attn.v_proj.{p}"] = (
                q,
                k,
                val,
            )
            for ours, theirs in (
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ):
                out[f"{d}{theirs}.{p}"] = state[f"{s}{ours}.{p}"]
        i += 1
    out["visual_projection.weight"] = state["last_layer_style"].t()  # x @ P == Linear(weight = P.T)
    return {k: t.detach().clone().contiguous().float() for k, t in out.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_csd(checkpoint: str | Path, out: str | Path) -> Path:
    """Convert the CSD checkpoint to a ``CLIPVisionModelWithProjection`` folder ``out`` (config.json,
    model.safetensors, preprocessor_config.json, content_head.safetensors, csd.json), written atomically: built in
    a sibling temporary folder and renamed into place. ``out`` must not exist or be empty."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output '{out}' already exists and is not an empty folder")
    checkpoint = Path(checkpoint).expanduser()
    state = load_csd_checkpoint(checkpoint)
    config = csd_config(state)
    model = CLIPVisionModelWithProjection(config).eval()
    missing, unexpected = model.load_state_dict(convert_state_dict(state), strict=False)
    if missing or unexpected:
        raise UserError(f"CSD checkpoint '{checkpoint}' does not fit a CLIP ViT: missing {missing[:3]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        size = config.image_size
        CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
            tmp
        )
        if "last_layer_content" in state:
            save_file(
                {"last_layer_content": state["last_layer_content"].contiguous().float()},
                tmp / "content_head.safetensors",
            )
        record = {
            "converted_from": checkpoint.name,
            "bytes": checkpoint.stat().st_size,
            "sha256": _sha256(checkpoint),
            "published": CSD_PUBLISHED,
            "embedding": "image_embeds = post_layernorm(CLS) @ last_layer_style (CSD style descriptor, unnormalised)",
        }
        (tmp / "csd.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
