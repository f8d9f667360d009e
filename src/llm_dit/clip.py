"""Optional model-based metrics: CLIP/SigLIP similarity (via transformers) and ImageReward (if installed).

``ClipScorer.from_pretrained(path_or_id)`` loads any dual-encoder that ``AutoModel`` resolves to a model with
``get_image_features``/``get_text_features`` (CLIP, SigLIP, SigLIP2, ...) together with its ``AutoTokenizer`` and
``AutoImageProcessor``. Similarities are cosines of the projected embeddings, computed in float64:

``clip_image_similarity``  cos(embed(image), embed(reference)), [-1, 1], higher = closer to the reference.
``clip_text_similarity``   cos(embed(image), embed(prompt)), [-1, 1], higher = better prompt adherence.

Absolute values are model-specific (CLIP ViT-B/32 image-text cosines of good matches are ~0.3, not ~1), so
compare them only between runs scored with the same model.

``build_tiny_clip(out)`` writes a random-weight ``CLIPModel`` folder in the real on-disk layout, for offline tests.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections import Counter
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import UserError
from .metrics import ImageLike, MetricInfo, to_array
from .models import quiet_libraries

__all__ = [
    "IMAGE_REWARD_METRIC",
    "MODEL_METRICS",
    "ClipScorer",
    "build_tiny_clip",
    "compute_model_metrics",
    "image_reward",
    "image_reward_available",
]

# ``needs="prompt"``: computed only when a prompt is given (not part of ``metrics.Needs`` yet).
MODEL_METRICS: dict[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo(
            "clip_image_similarity",
            (-1.0, 1.0),
            True,
            "reference",
            "style",
            "closeness to the reference image in the scoring model (rises with conditioning strength)",
        ),
        MetricInfo(
            "clip_text_similarity",
            (-1.0, 1.0),
            True,
            "prompt",
            "content",
            "match to the prompt in the scoring model (the text-only baseline is the reference point)",
        ),
    )
}
IMAGE_REWARD_METRIC = MetricInfo(
    "image_reward", (-math.inf, math.inf), True, "prompt", "quality", "ImageReward human-preference score"
)

# Model types whose text tower was trained on fixed-length, max-padded input (pooling is not at an EOS token).
_MAX_LENGTH_PADDING = {"siglip": 64, "siglip2": 64}


# --------------------------------------------------------------------------------------------- scorer


def _to_pil(image: ImageLike) -> Image.Image:
    """Any ``metrics.to_array`` input as an 8-bit RGB PIL image (PIL RGB/L/RGBA images pass through exactly)."""
    if isinstance(image, Image.Image) and image.mode in ("RGB", "RGBA", "L", "P"):
        return image.convert("RGB")
    return Image.fromarray(np.round(to_array(image) * 255.0).astype(np.uint8), mode="RGB")


def _features(out: Any) -> torch.Tensor:
    """`get_*_features` returns a tensor in transformers < 5 and a ``BaseModelOutputWithPooling`` in 5.x."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise UserError("model returned no pooled embedding from get_*_features; is it a CLIP/SigLIP dual encoder?")
    return pooled


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm()).clamp_min(1e-12)
    return float(cos.clamp(-1.0, 1.0))


def _check_dual_encoder(model, name: str) -> None:
    for method in ("get_image_features", "get_text_features"):
        if not callable(getattr(model, method, None)):
            raise UserError(f"'{name}' is a {type(model).__name__}, not a CLIP/SigLIP dual encoder (no {method})")


class ClipScorer:
    """Image-image and image-text cosine similarity with a CLIP-like dual encoder."""

    def __init__(self, model, tokenizer, image_processor, name: str = "", device: str | torch.device = "cpu"):
        _check_dual_encoder(model, name)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name
        self.device = torch.device(device)
        self.model_type: str = getattr(model.config, "model_type", "")
        text_config = getattr(model.config, "text_config", model.config)
        self.max_text_length: int = int(getattr(text_config, "max_position_embeddings", 77))

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, device: str | torch.device = "cpu") -> ClipScorer:
        """Load model, tokenizer and image processor from a local folder or a Hugging Face model id (float32)."""
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        name = str(path_or_id)
        path = Path(name).expanduser()
        local = path.exists()
        if local:
            if not path.is_dir() or not (path / "config.json").is_file():
                raise UserError(f"CLIP model '{name}' is not a transformers model folder (no config.json)")
            source = str(path)
        elif name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
            raise UserError(f"CLIP model folder '{name}' does not exist")
        else:
            source = name  # a hub id such as "openai/clip-vit-base-patch32"
        quiet_libraries()
        try:
            model = AutoModel.from_pretrained(source, dtype=torch.float32)
            _check_dual_encoder(model, name)
            tokenizer = AutoTokenizer.from_pretrained(source)
            image_processor = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            where = "" if local else " (no such local folder; tried it as a hub model id)"
            raise UserError(f"cannot load CLIP model '{name}'{where}: {first}") from None
        return cls(model.to(device), tokenizer, image_processor, name=name, device=device)

    @torch.no_grad()
    def image_embedding(self, image: ImageLike) -> torch.Tensor:
        """The projected (unnormalised) image embedding, shape ``(dim,)``, float32 on CPU."""
        inputs = self.image_processor(images=_to_pil(image), return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        return _features(self.model.get_image_features(**inputs))[0].float().cpu()

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        """The projected (unnormalised) text embedding, shape ``(dim,)``; prompts are truncated to the model's
        context (77 tokens for CLIP); SigLIP-family models get their training-time max-length padding."""
        if self.model_type in _MAX_LENGTH_PADDING:
            length = min(_MAX_LENGTH_PADDING[self.model_type], self.max_text_length)
            enc = self.tokenizer(
                [prompt], padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            )
        else:
            enc = self.tokenizer([prompt], truncation=True, max_length=self.max_text_length, return_tensors="pt")
        keep = ("input_ids", "attention_mask", "position_ids")
        inputs = {k: v.to(self.device) for k, v in enc.items() if k in keep}
        return _features(self.model.get_text_features(**inputs))[0].float().cpu()

    def image_similarity(self, image: ImageLike, reference: ImageLike) -> float:
        """Cosine of the image embeddings of ``image`` and ``reference``, [-1, 1], higher = closer."""
        return _cosine(self.image_embedding(image), self.image_embedding(reference))

    def text_similarity(self, image: ImageLike, prompt: str) -> float:
        """Cosine of the image embedding of ``image`` and the text embedding of ``prompt``, [-1, 1]."""
        return _cosine(self.image_embedding(image), self.text_embedding(prompt))


def compute_model_metrics(
    scorer: ClipScorer,
    image: ImageLike,
    reference: ImageLike | None = None,
    prompt: str | None = None,
) -> dict[str, float]:
    """Every metric in ``MODEL_METRICS`` whose inputs are present, in ``MODEL_METRICS`` order:
    ``clip_image_similarity`` with ``reference``, ``clip_text_similarity`` with a non-empty ``prompt``.
    The image is embedded once."""
    results: dict[str, float] = {}
    if reference is None and not prompt:
        return results
    emb = scorer.image_embedding(image)
    if reference is not None:
        results["clip_image_similarity"] = _cosine(emb, scorer.image_embedding(reference))
    if prompt:
        results["clip_text_similarity"] = _cosine(emb, scorer.text_embedding(prompt))
    return results


# --------------------------------------------------------------------------------------------- ImageReward


def image_reward_available() -> bool:
    """Whether the optional ``image-reward`` package (module ``ImageReward``) is installed."""
    return importlib.util.find_spec("ImageReward") is not None


@lru_cache(maxsize=2)
def _image_reward_model(name: str, device: str):
    import ImageReward

    return ImageReward.load(name, device=device)


def image_reward(image: ImageLike, prompt: str, model: str = "ImageReward-v1.0", device: str = "cpu") -> float:
    """ImageReward score of ``image`` for ``prompt`` (unbounded, ~N(0, 1) over its training set, higher = better).
    Needs ``pip install image-reward``; the model weights are fetched by that package on first use."""
    if not image_reward_available():
        raise UserError("ImageReward is not installed (pip install image-reward)")
    with torch.no_grad():
        return float(_image_reward_model(model, device).score(prompt, _to_pil(image)))


# --------------------------------------------------------------------------------------------- tiny CLIP

# CLIP's text pre-tokenizer split (openai/clip `bpe_simple_vocab`, as in transformers' CLIPTokenizer).
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte -> printable unicode table, in CLIP's vocabulary order (printable bytes first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def _learn_bpe(words: dict[str, int], n_merges: int) -> list[tuple[str, str]]:
    """Sennrich-style BPE with CLIP's ``</w>`` suffix on each word's last symbol; ties broken by the pair itself,
    so the merges are deterministic (the `tokenizers` trainer's tie order varies between runs with a suffix)."""
    corpus = {(*word[:-1], word[-1] + "</w>"): count for word, count in words.items()}
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in corpus.items():
            for pair in pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: dict[tuple[str, ...], int] = {}
        for symbols, count in corpus.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        corpus = merged
    return merges


def build_clip_tokenizer(vocab_target: int = 1024):
    """A real ``CLIPTokenizer`` whose vocab and merges are learnt from the zoo corpus.

    The corpus is split with CLIP's own normaliser (NFC, whitespace collapse, lowercase) and pre-tokeniser
    (CLIP's regex split + byte-level mapping), exactly as ``CLIPTokenizer`` does, and merges are learnt with the
    ``</w>`` end-of-word suffix (``_learn_bpe``). The vocab is laid out like ``openai/clip-vit-base-patch32``'s
    vocab.json: 256 byte symbols, the same 256 with ``</w>``, one token per merge in merge order, then
    ``<|startoftext|>`` and ``<|endoftext|>`` last, so EOS (also the pad token) has the largest id and both of
    CLIPTextModel's pooling rules (legacy argmax of ids, or first ``eos_token_id``) pick the EOS position.
    """
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    from .zoo import _CORPUS_WORDS

    words = _CORPUS_WORDS
    corpus = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(400)]
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    counts: Counter[str] = Counter()
    for line in corpus:
        counts.update(piece for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))

    base = _bytes_to_unicode()
    merges = _learn_bpe(dict(counts), vocab_target - 2 * len(base) - 2)
    tokens = [*base, *(c + "</w>" for c in base)]
    seen = set(tokens)
    for left, right in merges:
        if left + right not in seen:
            seen.add(left + right)
            tokens.append(left + right)
    tokens += [_BOS, _EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_tiny_clip(out: str | Path) -> Path:
    """Write a tiny random-weight ``CLIPModel`` folder to ``out`` that loads like ``openai/clip-vit-base-patch32``.

    Files: ``config.json`` + ``model.safetensors``; ``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json``
    and ``merges.txt`` of a real ``CLIPTokenizer`` (see ``build_clip_tokenizer``); ``preprocessor_config.json``
    (``CLIPImageProcessor``, 32 px resize + centre crop, OpenAI mean/std; loads as ``CLIPImageProcessorPil``
    without torchvision) and ``processor_config.json`` (``CLIPProcessor``). Text: 32 wide, 2 layers, 77
    positions; vision: 32 wide, 2 layers, 32 px images in 8 px patches; projection 16. Weights are
    deterministic for fixed torch/transformers versions (``torch.manual_seed(0)``).
    """
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer()
    projection_dim = 16
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": projection_dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": tokenizer.model_max_length,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,  # the real id (not the legacy 2): pooled at the first EOS
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "projection_dim": projection_dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=projection_dim,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(out)

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    image_processor.save_pretrained(out)  # the standalone preprocessor_config.json real CLIP folders ship
    # transformers 5 saves only tokenizer.json; real CLIP folders also carry the slow-format vocab and merges.
    state = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (out / "vocab.json").write_text(json.dumps(state["vocab"], ensure_ascii=False) + "\n", encoding="utf-8")
    merges = [" ".join(m) if not isinstance(m, str) else m for m in state["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return out
