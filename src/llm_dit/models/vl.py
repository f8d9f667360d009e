"""Qwen3-VL extraction: the hidden rows of a chosen layer after the model has seen the reference image.

The prompt is the model's own chat template with one image part and the text after it. Token spans come from the
token ids themselves (`<|vision_start|>`, `<|image_pad|>` x (H/32)(W/32), `<|vision_end|>`), so they stay right
with a system prompt and with the Thinking variant's template. One forward pass serves any number of layers and
stops after the deepest one (`hooks.capture_hidden_states`): no layer above it, no LM head, no logits.

Post-processing, in this order, on float32 CPU rows: token-mode selection, attention-sink detection (sink rows
dropped, or kept out of the statistics), outlier masking of the image-pad rows against reference statistics of the
same layer, normalisation. Raw rows are cached on disk per (model, image, text, layer), so any
later extraction with other settings skips the forward pass.

The research notes' names are re-exported here: the blend functions and the outlier analysis.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..core.errors import UserError, check_choice
from ..core.files import load_image
from ..core.modes import TOKEN_MODES
from ..core.numerics import check_number
from ..maths.blend import (
    blend_adain,
    blend_adain_per_dim,
    blend_interpolate,
    blend_with_style_delta,
    compute_style_delta,
)
from ..maths.normalize import normalize
from ..maths.outliers import get_outlier_dimensions, mask_outlier_dimensions
from ..maths.sinks import SINK_RATIO, check_sink_rows, describe_sinks, find_sinks
from ..maths.stats import describe
from .hooks import capture_hidden_states
from .loading import LazyEncoder, check_vl, load_model, model_identity

DEFAULT_CAPTION_PROMPT = "Describe this image in one sentence."
STYLE_CAPTION_PROMPT = (
    "Describe only the visual style of this image in one sentence: its medium, colour palette, lighting and "
    "texture. Do not describe its subject."
)
"""The instruction of the eval's `caption` method: the reference's style in words, to append to a prompt."""
_BROKEN = "a broken checkpoint, or fp16 overflow (try vl.dtype float32)"


@dataclass(frozen=True)
class Spans:
    """Half-open row ranges of one prompt: the image block with its two markers, its pad rows only, and the
    text before and after it."""

    total: int
    image: tuple[int, int] | None
    image_pad: tuple[int, int] | None

    @property
    def before(self) -> tuple[int, int]:
        return (0, self.image[0] if self.image else self.total)

    @property
    def after(self) -> tuple[int, int]:
        return (self.image[1] if self.image else self.total, self.total)

    def rows(self, token_mode: str) -> torch.Tensor:
        """Row indices kept by `token_mode` (see `TOKEN_MODES`)."""
        check_choice(token_mode, TOKEN_MODES, "token mode")
        if token_mode == "full":
            return torch.arange(self.total)
        if self.image is None:
            if token_mode == "text_only":
                return torch.arange(self.total)
            raise UserError(f"token mode '{token_mode}' needs an image block, but the prompt has none")
        if token_mode == "text_only":
            return torch.cat([torch.arange(*self.before), torch.arange(*self.after)])
        return torch.arange(*(self.image if token_mode == "image_only" else self.image_pad))

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "image": self.image,
            "image_pad": self.image_pad,
            "before": self.before,
            "after": self.after,
        }


def find_spans(ids: Sequence[int], start_id: int, end_id: int, pad_id: int) -> Spans:
    """Spans of a token-id sequence with at most one image block."""
    starts = [i for i, t in enumerate(ids) if t == start_id]
    ends = [i for i, t in enumerate(ids) if t == end_id]
    if not starts:
        return Spans(len(ids), None, None)
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise UserError(f"expected one image block, found {len(starts)} starts and {len(ends)} ends")
    s, e = starts[0], ends[0]
    if any(t != pad_id for t in ids[s + 1 : e]):
        raise UserError("the image block holds tokens other than <|image_pad|>")
    return Spans(len(ids), (s, e + 1), (s + 1, e))


_HASHED: dict[int, tuple[weakref.ref, str]] = {}


def image_sha256(image: Image.Image) -> str:
    """Content hash of the decoded RGB pixels (independent of the file format the image came in). Remembered per
    live image object, so a sweep reusing one reference hashes it once (images are not modified in place here)."""
    seen = _HASHED.get(id(image))
    if seen is not None and seen[0]() is image:
        return seen[1]
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
    key = id(image)
    _HASHED[key] = (weakref.ref(image, lambda _: _HASHED.pop(key, None)), digest)
    return digest


def pick_reference(reference: Any, layer: int) -> Any:
    """Reference statistics of `layer` from a `{layer: stats}` mapping or a single `ReferenceStats` (or any object
    with `per_dim_mean`/`per_dim_std`). No default and no fallback: missing statistics, or statistics of another
    layer, are a `UserError` saying how to compute matching ones (statistics of one layer mis-scale another)."""
    how = f"compute matching ones with `llm-dit stats --layer {layer}` (Python: TextEncoder.reference_stats)"
    if reference is None:
        raise UserError(f"normalisation and outlier masking need reference statistics of layer {layer}: {how}")
    if isinstance(reference, Mapping) and not {"per_dim_mean", "per_dim_std"} <= reference.keys():
        if layer not in reference:
            have = ", ".join(map(str, reference)) or "none"
            raise UserError(f"no reference statistics for layer {layer} (given: layers {have}); {how}")
        reference = reference[layer]
    ref_layer = getattr(reference, "layer", None)
    if ref_layer is not None and ref_layer != layer:
        raise UserError(
            f"reference statistics (vl.reference_stats) are from layer {ref_layer}, extracting layer {layer}; {how}"
        )
    return reference


@dataclass
class VLEmbeddings:
    """Rows extracted from one layer, plus everything needed to reproduce and audit them."""

    embeddings: torch.Tensor  # [n, D] float32 CPU
    hidden_layer: int
    token_mode: str
    spans: Spans
    prompt: str
    token_ids: list[int]
    variant: str
    stats_before: dict[str, float]
    stats_after: dict[str, float]
    masked_dimensions: list[tuple[int, float]]
    settings: dict[str, Any]
    model: dict[str, str]
    image_sha256: str | None
    cache: str
    image_pad_rows: torch.Tensor = field(repr=False)  # bool [n]: which kept rows are image-pad rows
    sinks: dict[str, Any] = field(default_factory=dict)  # sinks.describe_sinks of this layer + "action"
    sink_rows: torch.Tensor | None = field(default=None, repr=False)  # bool [n]: sink rows still in `embeddings`
    outliers_unchanged: list[tuple[int, float]] = field(default_factory=list)  # flagged, left alone (clamp)

    def metadata(self) -> dict[str, Any]:
        """JSON-able description for embedding files and output records."""
        return {
            "kind": "vl_embeddings",
            "hidden_layer": self.hidden_layer,
            "token_mode": self.token_mode,
            "spans": self.spans.as_dict(),
            "prompt": self.prompt,
            "variant": self.variant,
            "stats_before": self.stats_before,
            "stats_after": self.stats_after,
            "masked_dimensions": self.masked_dimensions,
            "outliers_unchanged": self.outliers_unchanged,
            "sinks": self.sinks,
            "settings": self.settings,
            "model": self.model,
            "image_sha256": self.image_sha256,
            "shape": list(self.embeddings.shape),
        }


class VLEmbeddingExtractor(LazyEncoder):
    """A Qwen3-VL model (loaded on the first cache miss), its tokenizer and image processor, and a tensor cache."""

    default_device = "cpu"

    def __init__(self, config, tokenizer, image_processor, **encoder: Any) -> None:
        """The Qwen3-VL `config`, `tokenizer`, `image_processor`, and `LazyEncoder`'s arguments (load, identity,
        dtype, cache, device)."""
        super().__init__(**encoder)
        self.config = config
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.ids = {
            "start": config.vision_start_token_id,
            "end": config.vision_end_token_id,
            "pad": config.image_token_id,
        }
        self._prepared: OrderedDict[tuple, tuple[dict[str, torch.Tensor], str]] = OrderedDict()

    @classmethod
    def _parts(cls, path_or_id: str, trust_remote_code: bool) -> tuple[dict[str, Any], Callable[..., torch.nn.Module]]:
        """Config, tokenizer and image processor (PIL backend: torchvision is not needed); the weights load on the
        first cache miss."""
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration

        check_vl(path_or_id)
        remote = {"trust_remote_code": trust_remote_code}
        try:
            config = AutoConfig.from_pretrained(path_or_id, **remote)
            tokenizer = AutoTokenizer.from_pretrained(path_or_id, **remote)
            with warnings.catch_warnings():  # "falling back to the PIL backend" without torchvision: expected
                warnings.simplefilter("ignore")
                image_processor = AutoImageProcessor.from_pretrained(path_or_id, **remote)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load Qwen3-VL from {path_or_id}: {str(e).splitlines()[0]}") from None
        if not tokenizer.chat_template:
            raise UserError(f"{path_or_id} has no chat template (expected one in its tokenizer files)")
        parts = {"config": config, "tokenizer": tokenizer, "image_processor": image_processor}
        parts["identity"] = model_identity(path_or_id)
        return parts, partial(load_model, Qwen3VLForConditionalGeneration, path_or_id, **remote)

    @property
    def num_layers(self) -> int:
        return self.config.text_config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.text_config.hidden_size

    @property
    def variant(self) -> str:
        """`thinking` when the chat template opens a think block in the generation prompt, else `instruct`."""
        probe = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
        )
        return "thinking" if probe.endswith("<think>\n") else "instruct"

    def prepare(
        self,
        image: Image.Image | None,
        text: str | None,
        system_prompt: str | None = None,
        max_pixels: int | None = None,
    ) -> tuple[dict[str, torch.Tensor], str]:
        """Model inputs and the rendered prompt: one image part (if any) followed by the text. The last few are
        kept, keyed by the image's content hash, so a sweep preprocesses each reference once. `max_pixels`
        (`vl.max_pixels`) caps the area the image processor resizes the image to (`image_size`)."""
        key = (image_sha256(image) if image is not None else None, text, system_prompt, self.tokenizer.chat_template)
        key += (max_pixels,)
        if key not in self._prepared:
            self._prepared[key] = self._prepare(image, text, system_prompt, max_pixels)
            while len(self._prepared) > 8:
                self._prepared.popitem(last=False)
        return self._prepared[key]

    def image_size(self, max_pixels: int | None) -> dict[str, int]:
        """The image processor's `size` (`shortest_edge`/`longest_edge`: the min and max resized AREA in pixels)
        with `max_pixels` as the max (and the min lowered to it when above): Qwen-VL resizes a larger image down
        to at most that many pixels, so a reference costs at most `max_pixels / (patch * merge)^2` image tokens."""
        size = dict(self.image_processor.size)
        if max_pixels is not None:
            size = {"shortest_edge": min(size["shortest_edge"], max_pixels), "longest_edge": max_pixels}
        return size

    def _prepare(
        self, image: Image.Image | None, text: str | None, system_prompt: str | None, max_pixels: int | None
    ) -> tuple[dict[str, torch.Tensor], str]:
        content: list[dict[str, str]] = [{"type": "image"}] if image is not None else []
        if text:
            content.append({"type": "text", "text": text})
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": content})
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs: dict[str, torch.Tensor] = {}
        if image is not None:
            vision = self.image_processor(images=[image], return_tensors="pt", size=self.image_size(max_pixels))
            merge = self.image_processor.merge_size
            count = int(vision["image_grid_thw"][0].prod()) // (merge * merge)
            prompt = prompt.replace("<|image_pad|>", "<|image_pad|>" * count, 1)
            inputs = {"pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        if image is not None:  # modality of each token (text 0, image 1), which M-RoPE positions need
            inputs["mm_token_type_ids"] = (ids == self.ids["pad"]).int()
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **inputs}, prompt

    @torch.no_grad()
    def hidden_rows(
        self,
        image: Image.Image | None,
        text: str | None,
        layers: Sequence[int],
        system_prompt: str | None = None,
        max_pixels: int | None = None,
    ) -> tuple[dict[int, torch.Tensor], list[int], str, str]:
        """Raw rows `[N, D]` (float32, CPU) of every layer in `layers` from at most one forward pass:
        `(rows_by_layer, token_ids, prompt, "hit" | "miss")`. Layers already cached are not recomputed."""
        inputs, prompt = self.prepare(image, text, system_prompt, max_pixels)
        ids = inputs["input_ids"][0].tolist()

        def forward(missing: list[int]) -> dict[int, torch.Tensor]:
            device, dtype = self.model.device, self.model.dtype
            moved = {k: v.to(device, dtype) if k == "pixel_values" else v.to(device) for k, v in inputs.items()}
            captured = capture_hidden_states(
                self.model.model.language_model, missing, lambda: self.model.model(**moved, use_cache=False)
            )
            return {layer: hidden[0].float().cpu() for layer, hidden in captured.items()}

        key = {
            "token_ids_sha256": hashlib.sha256(str(ids).encode()).hexdigest(),
            "image": image_sha256(image) if image is not None else None,
        }
        if max_pixels is not None and image is not None:  # the resized pixels the rows come from
            key["image_size"] = self.image_size(max_pixels)
        meta = {"prompt": prompt}
        rows, ran = self.cached_rows("vl", key, layers, forward, "VL extraction", _BROKEN, meta)
        return rows, ids, prompt, "miss" if ran else "hit"

    def extract(
        self,
        image: Image.Image | str | Path | None,
        text: str | None = None,
        hidden_layer: int = -6,
        **settings: Any,
    ) -> VLEmbeddings:
        """Rows of one layer; see `extract_layers` for the settings."""
        return self.extract_layers(image, text, [hidden_layer], **settings)[hidden_layer]

    def extract_layers(
        self,
        image: Image.Image | str | Path | None,
        text: str | None = None,
        hidden_layers: Sequence[int] = (-6,),
        token_mode: str = "full",
        normalization: str = "none",
        outlier_masking: str = "none",
        outlier_threshold: float = 10.0,
        system_prompt: str | None = None,
        reference: Any = None,
        clip_sigma: float | None = None,
        hybrid_weight: float = 0.5,
        sink_ratio: float = SINK_RATIO,
        sink_rows: str = "exclude",
        max_pixels: int | None = None,
    ) -> dict[int, VLEmbeddings]:
        """Extract every layer of `hidden_layers` from one forward pass.

        `token_mode` picks rows (`TOKEN_MODES`). Attention sinks are then found once per layer on those rows
        (`sinks.find_sinks`, ratio `sink_ratio`); a row that is a sink at any of the layers counts as one at all of
        them, so every layer keeps the same rows. `sink_rows="exclude"` drops them; `"include"` keeps them, and
        masking and normalisation fit their statistics on the content rows only and apply to every row.
        `outlier_masking` (`none|zero|clamp|scale|reference`) then rewrites outlier dimensions of the image-pad rows
        only; `normalization` (`none|global|per_dim|hybrid`) then maps the rows onto `reference`, the text
        encoder's statistics of the same layer (a `ReferenceStats` or `{layer: ReferenceStats}`). Masking or
        normalisation without reference statistics, or with another layer's, is a `UserError`.
        """
        check_sink_rows(sink_rows)
        if isinstance(image, str | Path):
            image = load_image(image, "reference image")
        rows_by_layer, ids, prompt, status = self.hidden_rows(image, text, hidden_layers, system_prompt, max_pixels)
        spans = find_spans(ids, self.ids["start"], self.ids["end"], self.ids["pad"])
        keep = spans.rows(token_mode)
        pad = torch.zeros(spans.total, dtype=torch.bool)
        if spans.image_pad:
            pad[slice(*spans.image_pad)] = True
        kept = {layer: rows[keep] for layer, rows in rows_by_layer.items()}
        sinks = torch.stack([find_sinks(x, sink_ratio) for x in kept.values()]).any(0)
        if bool(sinks.all()):
            raise UserError("every kept VL row is an attention sink at one of the layers; raise vl.sink_ratio")
        exclude = sink_rows == "exclude"
        out_rows = ~sinks if exclude else torch.ones_like(sinks)
        fit = None if exclude or not bool(sinks.any()) else ~sinks  # the rows statistics are fitted on
        pad = pad[keep][out_rows]
        positions = keep.tolist()
        settings = {
            "hidden_layers": list(hidden_layers),
            "token_mode": token_mode,
            "normalization": normalization,
            "outlier_masking": outlier_masking,
            "outlier_threshold": outlier_threshold,
            "system_prompt": system_prompt,
            "clip_sigma": clip_sigma,
            "hybrid_weight": hybrid_weight,
            "sink_ratio": sink_ratio,
            "sink_rows": sink_rows,
            "text": text,
            "image_size": self.image_size(max_pixels) if image is not None else None,
        }
        out = {}
        for layer, rows in kept.items():
            found = describe_sinks(
                rows, sinks, sink_ratio, positions=positions, token=lambda p: self.tokenizer.decode([ids[p]])
            )
            x = rows[out_rows]
            before = describe(x if fit is None else x[fit])
            masked: list[tuple[int, float]] = []
            unchanged: list[tuple[int, float]] = []
            ref = None
            if outlier_masking != "none" or normalization != "none":
                ref = pick_reference(reference, layer)
            if outlier_masking != "none":
                x, info = mask_outlier_dimensions(x, outlier_threshold, outlier_masking, ref, rows=pad, content=fit)
                masked = list(zip(info["masked_dimensions"], info["ratios"], strict=True))
                unchanged = info["unchanged_dimensions"]
            if normalization != "none":
                x = normalize(x, normalization, ref, clip_sigma=clip_sigma, hybrid_weight=hybrid_weight, content=fit)
            out[layer] = VLEmbeddings(
                embeddings=x.float(),
                hidden_layer=layer,
                token_mode=token_mode,
                spans=spans,
                prompt=prompt,
                token_ids=ids,
                variant=self.variant,
                stats_before=before,
                stats_after=describe(x if fit is None else x[fit]),
                masked_dimensions=masked,
                settings=settings | {"hidden_layer": layer},
                model=self.identity,
                image_sha256=image_sha256(image) if image is not None else None,
                cache=status,
                image_pad_rows=pad,
                sinks=found | {"action": "dropped" if exclude else "blended"},
                sink_rows=sinks[out_rows],
                outliers_unchanged=unchanged,
            )
        return out


__all__ = [
    "TOKEN_MODES",
    "Spans",
    "VLEmbeddingExtractor",
    "VLEmbeddings",
    "blend_adain",
    "blend_adain_per_dim",
    "blend_interpolate",
    "blend_with_style_delta",
    "compute_style_delta",
    "find_spans",
    "get_outlier_dimensions",
    "mask_outlier_dimensions",
    "pick_reference",
]


def caption_image(
    extractor: VLEmbeddingExtractor,
    image: Image.Image | str | Path,
    prompt: str = DEFAULT_CAPTION_PROMPT,
    max_new_tokens: int = 40,
    words_only: bool = False,
) -> str:
    """The Qwen3-VL model's own greedy caption of `image` (chat template, image then `prompt`), at most
    `max_new_tokens` tokens, special tokens dropped, a Thinking model's think block removed, whitespace
    collapsed. `words_only`: the tokens that show nothing (whitespace, control characters: `blank_token_ids`) are
    never chosen, so the caption is words or empty (the model ended it at once)."""
    if isinstance(image, str | Path):
        image = load_image(image, "image")
    check_number(max_new_tokens, "max_new_tokens", lambda n: n >= 1, "an integer >= 1", integer=True)
    model = extractor.model
    inputs, _ = extractor.prepare(image, prompt)
    inputs = {
        k: v.to(model.device, model.dtype) if k == "pixel_values" else v.to(model.device) for k, v in inputs.items()
    }
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
    config.max_new_tokens = max_new_tokens
    if words_only:
        config.suppress_tokens = blank_token_ids(extractor.tokenizer)
    out = model.generate(**inputs, generation_config=config)
    new = out[0, inputs["input_ids"].shape[1] :]
    text = extractor.tokenizer.decode(new, skip_special_tokens=True)
    return " ".join(text.rsplit("</think>", 1)[-1].split())


def blank_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the tokenizer's ordinary (not special) tokens whose text shows nothing: only whitespace and
    non-printable characters."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids])
    return [i for i, t in zip(ids, texts, strict=True) if not "".join(c for c in t if c.isprintable()).strip()]
