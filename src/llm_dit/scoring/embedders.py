"""The metric models: image (and text) embedders loaded once through transformers, batched, on a chosen device.

``load_embedder(role, source, device)`` loads the model of one role of the metric-model set from a local folder or a
Hugging Face id:

- ``clip`` / ``siglip``: ``DualEncoder`` (any ``AutoModel`` with ``get_image_features``/``get_text_features``:
  CLIP, SigLIP, SigLIP2). Image and text embeddings are the projected pooled features (``pooler_output`` of
  ``get_*_features`` in transformers 5). CLIP text is padded to the longest prompt of a batch (pooled at the first
  EOS, so padding does not change it); SigLIP text to its training length 64 (``padding="max_length"``; its text
  tower pools the last position), both with the tokenizer's attention mask (what the HF processor gives).
- ``dino``: ``VisionEncoder`` over ``Dinov2Model``, embedding = ``pooler_output`` (the layer-normed CLS token).
- ``csd``: ``VisionEncoder`` over a converted CSD folder (``CLIPVisionModelWithProjection``, see ``csd.py``),
  embedding = ``image_embeds`` (``post_layernorm(CLS) @ style head``); refused unless its activation is
  ``quick_gelu`` (the OpenAI ViT's).

Images go through the folder's image processor with the PIL backend (``backend="pil"``: the same pixels with or
without torchvision installed). Embeddings are returned unnormalised, float32, on the CPU, ``[n, dim]``;
similarities are cosines computed in float64 (``cosine_matrix``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.errors import UserError
from .image_metrics import ImageLike, to_array

__all__ = ["DualEncoder", "Embedder", "VisionEncoder", "cosine_matrix", "load_embedder", "to_pil"]

ROLES = ("clip", "siglip", "csd", "dino")
# Model types whose text tower was trained on fixed-length, max-padded input (pooling is not at an EOS token).
_MAX_LENGTH_PADDING = {"siglip": 64, "siglip2": 64}
DEFAULT_BATCH_SIZE = 16


def to_pil(image: ImageLike) -> Image.Image:
    """Any ``metrics.to_array`` input as an 8-bit RGB PIL image (PIL RGB/L/RGBA/P images pass through exactly)."""
    if isinstance(image, Image.Image) and image.mode in ("RGB", "RGBA", "L", "P"):
        return image.convert("RGB")
    return Image.fromarray(np.round(to_array(image) * 255.0).astype(np.uint8), mode="RGB")


def _pooled(out: Any) -> torch.Tensor:
    """`get_*_features` returns a tensor in transformers < 5 and a ``BaseModelOutputWithPooling`` in 5.x."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise UserError("model returned no pooled embedding from get_*_features; is it a CLIP/SigLIP dual encoder?")
    return pooled


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines of every row of ``a`` ``[n, d]`` with every row of ``b`` ``[m, d]``, float64 ``[n, m]``, in [-1, 1]."""
    a64 = a.double() / a.double().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b64 = b.double() / b.double().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (a64 @ b64.T).clamp(-1.0, 1.0)


class Embedder:
    """One metric model: ``embed_images(images) -> [n, dim]`` float32 CPU embeddings, in batches of ``batch_size``
    (the attribute, or the call's argument)."""

    role: str = ""

    def __init__(self, model, image_processor, source: str = "", device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.image_processor = image_processor
        self.source = source
        self.batch_size = DEFAULT_BATCH_SIZE

    def _image_forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageLike], batch_size: int | None = None) -> torch.Tensor:
        """Embeddings of ``images`` (any ``metrics.to_array`` input), ``[len(images), dim]`` float32 on the CPU."""
        out: list[torch.Tensor] = []
        step = batch_size or self.batch_size
        for start in range(0, len(images), step):
            batch = [to_pil(image) for image in images[start : start + step]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            out.append(self._image_forward(pixels.to(self.model.dtype)).float().cpu())
        return torch.cat(out) if out else torch.empty(0, 0)


class DualEncoder(Embedder):
    """CLIP-like dual encoder (CLIP, SigLIP, SigLIP2): projected image and text embeddings."""

    def __init__(self, model, tokenizer, image_processor, source: str = "", device: str | torch.device = "cpu"):
        _check_dual_encoder(model, source)
        super().__init__(model, image_processor, source, device)
        self.tokenizer = tokenizer
        self.model_type: str = getattr(model.config, "model_type", "")
        text_config = getattr(model.config, "text_config", model.config)
        self.max_text_length: int = int(getattr(text_config, "max_position_embeddings", 77))

    def _image_forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixel_values))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The text tower's inputs for ``texts``: truncated to the model's context (77 tokens for CLIP); SigLIP-family
        models get their training-time max-length padding, others pad to the longest text."""
        if self.model_type in _MAX_LENGTH_PADDING:
            length = min(_MAX_LENGTH_PADDING[self.model_type], self.max_text_length)
            enc = self.tokenizer(
                list(texts), padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            )
        else:
            enc = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_text_length, return_tensors="pt"
            )
        keep = ("input_ids", "attention_mask", "position_ids")
        return {k: v.to(self.device) for k, v in enc.items() if k in keep}

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Projected text embeddings of ``texts``, ``[len(texts), dim]`` float32 on the CPU."""
        step = batch_size or self.batch_size
        out = [
            _pooled(self.model.get_text_features(**self.tokenize(texts[start : start + step]))).float().cpu()
            for start in range(0, len(texts), step)
        ]
        return torch.cat(out) if out else torch.empty(0, 0)


class VisionEncoder(Embedder):
    """An image-only tower whose embedding is one named output (``pooler_output`` for DINOv2, ``image_embeds`` for
    the converted CSD model)."""

    def __init__(self, model, image_processor, output: str, source: str = "", device: str | torch.device = "cpu"):
        super().__init__(model, image_processor, source, device)
        self.output = output

    def _image_forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(pixel_values=pixel_values), self.output)


def _processor(source: str):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(source, backend="pil")


def _check_dual_encoder(model, name: str) -> None:
    for method in ("get_image_features", "get_text_features"):
        if not callable(getattr(model, method, None)):
            raise UserError(f"'{name}' is a {type(model).__name__}, not a CLIP/SigLIP dual encoder (no {method})")


def _source(role: str, name: str) -> str:
    """A local folder (must hold a config.json) or a hub id; a path-like name that does not exist is refused."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(f"{role} model '{name}' is not a transformers model folder (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise UserError(f"{role} model folder '{name}' does not exist")
    return name


def load_embedder(role: str, name: str | Path, device: str | torch.device = "cpu") -> Embedder:
    """Load the ``role`` model (one of ``ROLES``) from a local folder or hub id, float32 on ``device``."""
    from transformers import AutoModel, AutoTokenizer, CLIPVisionModelWithProjection

    if role not in ROLES:
        raise UserError(f"unknown metric model role '{role}' (valid: {', '.join(ROLES)})")
    name = str(name)
    source = _source(role, name)
    try:
        if role == "csd":
            model = CLIPVisionModelWithProjection.from_pretrained(source, dtype=torch.float32)
            act = model.config.hidden_act
            if act != "quick_gelu":
                raise UserError(f"csd model '{name}' uses activation '{act}', not the OpenAI ViT's quick_gelu")
            return VisionEncoder(model, _processor(source), "image_embeds", name, device)
        model = AutoModel.from_pretrained(source, dtype=torch.float32)
        if role == "dino":
            if getattr(model.config, "model_type", "") not in ("dinov2", "dinov2_with_registers"):
                raise UserError(f"dino model '{name}' is a {type(model).__name__}, not a DINOv2 model")
            return VisionEncoder(model, _processor(source), "pooler_output", name, device)
        _check_dual_encoder(model, name)
        return DualEncoder(model, AutoTokenizer.from_pretrained(source), _processor(source), name, device)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = "" if Path(name).expanduser().exists() else " (no such local folder; tried it as a hub model id)"
        raise UserError(f"cannot load {role} model '{name}'{where}: {first}") from None
