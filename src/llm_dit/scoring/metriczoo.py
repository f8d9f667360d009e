"""Tiny random-weight metric models of the real architectures, built offline (the metric models' zoo).

``metric_zoo_dir()`` is the cached build (under the zoo cache, keyed by format and library versions) that
``--metric-models tiny`` uses: ``clip/`` (``CLIPModel``), ``siglip/`` (``SiglipModel`` with a CLIP BPE tokenizer:
the real SigLIP tokenizer needs sentencepiece), ``dino/`` (``Dinov2Model``), ``csd-checkpoint.pth`` (a CSD
training checkpoint in the ORIGINAL OpenAI/CSD layout: ``module.`` prefix, ``argparse.Namespace`` args with numpy
scalars) and ``csd/``, that checkpoint converted by ``csd.convert_csd`` -- so the conversion path runs end to end.
Every folder loads through the same ``from_pretrained`` code as the real checkpoints; weights are seeded.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from .csd import convert_csd

__all__ = [
    "METRIC_ZOO_FORMAT",
    "build_clip_tokenizer",
    "build_metric_zoo",
    "build_tiny_clip",
    "build_tiny_csd_checkpoint",
    "build_tiny_dinov2",
    "build_tiny_siglip",
    "metric_zoo_dir",
]

METRIC_ZOO_FORMAT = 1  # bump when the built folders change shape

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

    from ..models.zoo import _CORPUS_WORDS

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


# --------------------------------------------------------------------------------------------- SigLIP, DINOv2, CSD

_TINY_LAYERS = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def build_tiny_siglip(out: str | Path) -> Path:
    """A tiny random-weight ``SiglipModel`` folder (32 px images in 8 px patches, text context 64) with the CLIP
    BPE tokenizer of ``build_clip_tokenizer`` (the real SigLIP tokenizer needs sentencepiece) and a
    ``SiglipImageProcessor`` (squash-resize to 32 px, mean = std = 0.5)."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    out = Path(out)
    tokenizer = build_clip_tokenizer()
    ids = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    config = SiglipConfig(
        text_config={"vocab_size": len(tokenizer), "max_position_embeddings": 64, **ids, **_TINY_LAYERS},
        vision_config={"image_size": 32, "patch_size": 8, **_TINY_LAYERS},
    )
    torch.manual_seed(0)
    SiglipModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def build_tiny_dinov2(out: str | Path) -> Path:
    """A tiny random-weight ``Dinov2Model`` folder (32 px in 8 px patches) with the ``BitImageProcessor`` settings
    of ``facebook/dinov2-*`` scaled down (shortest edge 36, centre crop 32, ImageNet mean/std)."""
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    out = Path(out)
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=8, image_size=32
    )
    Dinov2Model(config).eval().save_pretrained(out)
    BitImageProcessorPil(
        size={"shortest_edge": 36},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out)
    return out


def tiny_csd_state(width: int = 128, layers: int = 2, patch: int = 8, image: int = 32, dim: int = 32):
    """A random CSD ``model_state_dict`` in OpenAI/CSD layout (no ``module.`` prefix): an OpenAI ``VisionTransformer``
    (``backbone.*``, ``proj`` removed) and the two ``[width, dim]`` heads. Weights seeded; scales like the real
    init (so activations stay O(1))."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    b, w = "backbone.", width
    state = {
        b + "class_embedding": randn(w, scale=w**-0.5),
        b + "positional_embedding": randn((image // patch) ** 2 + 1, w, scale=w**-0.5),
        b + "conv1.weight": randn(w, 3, patch, patch, scale=(3 * patch * patch) ** -0.5),
    }
    for ln in ("ln_pre", "ln_post"):
        state[f"{b}{ln}.weight"], state[f"{b}{ln}.bias"] = 1.0 + randn(w, scale=0.1), randn(w, scale=0.1)
    for i in range(layers):
        s = f"{b}transformer.resblocks.{i}."
        for ln in ("ln_1", "ln_2"):
            state[f"{s}{ln}.weight"], state[f"{s}{ln}.bias"] = 1.0 + randn(w, scale=0.1), randn(w, scale=0.1)
        shapes = {"attn.in_proj": (3 * w, w), "attn.out_proj": (w, w), "mlp.c_fc": (4 * w, w), "mlp.c_proj": (w, 4 * w)}
        for name, (rows, cols) in shapes.items():
            key = "attn.in_proj_weight" if name == "attn.in_proj" else f"{name}.weight"
            state[s + key] = randn(rows, cols, scale=cols**-0.5)
            state[s + ("attn.in_proj_bias" if name == "attn.in_proj" else f"{name}.bias")] = randn(rows, scale=0.02)
    state["last_layer_style"] = randn(w, dim, scale=w**-0.5)
    state["last_layer_content"] = randn(w, dim, scale=w**-0.5)
    return state


def build_tiny_csd_checkpoint(path: str | Path) -> Path:
    """Write a tiny CSD training checkpoint in the published file's layout (``CSD/train_csd.py``): the DDP
    ``module.`` prefix, optimiser states, ``iter`` and ``args`` as an ``argparse.Namespace`` holding numpy scalars
    (so loading it needs the allow-list of ``csd.load_csd_checkpoint``)."""
    path = Path(path)
    state = {f"module.{k}": v for k, v in tiny_csd_state().items()}
    args = argparse.Namespace(arch="vit_large", lr=np.float64(1e-4), lam_style=np.float32(1.0), eval_k=[1, 10, 100])
    torch.save(
        {"model_state_dict": state, "opt_bb": {"state": {}, "param_groups": []}, "iter": 1, "args": args},
        path,
    )
    return path


def build_metric_zoo(out: str | Path) -> Path:
    """Write the tiny metric models (``clip``, ``siglip``, ``dino``, ``csd-checkpoint.pth``, ``csd``) to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_clip(out / "clip")
    build_tiny_siglip(out / "siglip")
    build_tiny_dinov2(out / "dino")
    convert_csd(build_tiny_csd_checkpoint(out / "csd-checkpoint.pth"), out / "csd")
    return out


def metric_zoo_dir() -> Path:
    """The cached build of the tiny metric models, built on first use (atomically, like ``zoo.zoo_dir``)."""
    from ..models.zoo import cached_build

    return cached_build("metrics", {"format": METRIC_ZOO_FORMAT}, build_metric_zoo)
