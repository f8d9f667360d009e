"""Tiny random-weight models of the real architectures, built offline.

`build_zoo(out, preset)` writes two folders in the real on-disk formats:

- `zimage/`: a diffusers `ZImagePipeline` (transformer, Flux-style VAE, flow-match scheduler with shift 3.0,
  a transformers `Qwen3Model` text encoder and a `Qwen2Tokenizer` with the Qwen3 chat template);
- `qwen3-vl/`: a transformers `Qwen3VLForConditionalGeneration` with DeepStack, the Qwen3-VL image processor
  settings (patch 16, merge 2, temporal patch 2, mean/std 0.5) and *the same tokenizer*, so VL text positions
  line up with the text encoder's as they do for the real pair.

Both load through the same `from_pretrained` code as the real checkpoints. Weights are seeded, so a build is
deterministic for a given preset and library versions; `zoo_dir(preset)` caches builds under a key of both.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.cache import cache_root
from .loading import quiet_libraries

ZOO_FORMAT = 2  # bump when the built folders change shape

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TEXT_TOKENS = ("<tool_call>", "</tool_call>", "<think>", "</think>")

# The Qwen3 chat template, reduced to what text encoding needs (system, user, assistant, generation prompt,
# `enable_thinking=False` renders an empty think block). Renders like the real one for these cases.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# The Qwen3-VL Instruct template for string or list content (image / text parts).
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN3_VL_THINKING_CHAT_TEMPLATE = QWEN3_VL_CHAT_TEMPLATE.replace(
    "'<|im_start|>assistant\\n' }}", "'<|im_start|>assistant\\n<think>\\n' }}"
)

_CORPUS_WORDS = [
    "a",
    "the",
    "of",
    "and",
    "in",
    "on",
    "with",
    "at",
    "by",
    "from",
    "to",
    "an",
    "under",
    "over",
    "near",
    "beside",
    "behind",
    "above",
    "painting",
    "photo",
    "image",
    "style",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "black",
    "white",
    "grey",
    "brown",
    "golden",
    "silver",
    "dark",
    "bright",
    "soft",
    "warm",
    "cold",
    "fox",
    "cat",
    "dog",
    "bird",
    "horse",
    "house",
    "castle",
    "tree",
    "forest",
    "river",
    "mountain",
    "sea",
    "wave",
    "city",
    "street",
    "car",
    "girl",
    "boy",
    "man",
    "woman",
    "sunset",
    "sunrise",
    "night",
    "day",
    "light",
    "shadow",
    "cloud",
    "sky",
    "rain",
    "snow",
    "desert",
    "field",
    "flower",
    "garden",
    "room",
    "window",
    "door",
    "watercolor",
    "oil",
    "pixel",
    "art",
    "deco",
    "noir",
    "anime",
    "cyberpunk",
    "ukiyo",
    "hexagon",
    "circle",
    "square",
    "scene",
    "portrait",
    "landscape",
    "detailed",
    "simple",
    "sharp",
    "blurry",
    "cinematic",
    "vintage",
    "modern",
    "ancient",
    "tiny",
    "huge",
    "small",
    "large",
    "old",
    "young",
    "eating",
    "standing",
    "sitting",
    "running",
    "flying",
    "spaghetti",
    "homer",
    "simpson",
    "cartoon",
    "realistic",
    "texture",
    "colour",
    "color",
    "pattern",
    "grid",
]


@dataclass(frozen=True)
class ZooSpec:
    """Sizes of one zoo preset. The text stacks share `hidden`, which is also the DiT's `cap_feat_dim`."""

    vocab_target: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    mrope_section: tuple[int, int, int]
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    deepstack: tuple[int, ...]
    dit_dim: int
    dit_layers: int
    dit_refiner_layers: int
    dit_heads: int
    dit_axes_dims: tuple[int, int, int]
    vae_channels: int


# One row per preset, grouped as the spec's fields are: text stacks | vision tower | DiT | VAE.
# fmt: off
PRESETS: dict[str, ZooSpec] = {
    "tiny": ZooSpec(
        vocab_target=1024, hidden=64, layers=8, heads=4, kv_heads=2, head_dim=16, intermediate=128,
        mrope_section=(4, 2, 2), vision_depth=4, vision_hidden=32, vision_heads=2, deepstack=(1, 2, 3),
        dit_dim=64, dit_layers=2, dit_refiner_layers=1, dit_heads=2, dit_axes_dims=(8, 12, 12), vae_channels=16,
    ),
    "small": ZooSpec(
        vocab_target=2048, hidden=256, layers=12, heads=8, kv_heads=2, head_dim=32, intermediate=768,
        mrope_section=(6, 5, 5), vision_depth=6, vision_hidden=128, vision_heads=4, deepstack=(1, 3, 4),
        dit_dim=384, dit_layers=6, dit_refiner_layers=2, dit_heads=6, dit_axes_dims=(16, 24, 24), vae_channels=32,
    ),
}
# fmt: on


def build_key(payload: dict[str, Any]) -> str:
    """Content key of a build: `payload` (what is built) and the library versions that initialise the weights."""
    import diffusers
    import tokenizers
    import transformers

    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "tokenizers": tokenizers.__version__,
    }
    return hashlib.sha256(json.dumps({**payload, **versions}, sort_keys=True).encode()).hexdigest()[:12]


def zoo_key(preset: str) -> str:
    """Content key of a preset build: spec, zoo format and the library versions that initialise the weights."""
    return build_key({"spec": asdict(PRESETS[preset]), "format": ZOO_FORMAT})


def zoo_dir(preset: str = "tiny") -> Path:
    """The cached build of `preset`, built on first use (atomically: a half-built zoo is never visible), as a resolved
    path: a zoo folder linked from elsewhere is named by where it is, as records name every file."""
    if preset not in PRESETS:
        raise ValueError(f"unknown zoo preset '{preset}' (valid: {', '.join(PRESETS)})")
    target = cache_root() / "zoo" / f"{preset}-{zoo_key(preset)}"
    if not target.exists():
        install_zoo(target, preset)
    return target.resolve()


def model_settings(preset: str = "tiny") -> dict[str, str]:
    """`{"models.zimage": ..., "models.vl": ...}`: the two model folders of the cached build of `preset`."""
    root = zoo_dir(preset)
    return {"models.zimage": str(root / "zimage"), "models.vl": str(root / "qwen3-vl")}


def cached_build(name: str, payload: dict[str, Any], build: Callable[[Path], object]) -> Path:
    """The cached output of `build(folder)` under the zoo cache, keyed by `name`, `payload` and the library versions;
    built on first use, atomically (`install_built`)."""
    key = build_key({"name": name, **payload})
    target = cache_root() / "zoo" / f"{name}-{key}"
    if not target.exists():
        install_built(target, build, {"name": name, "key": key})
    return target.resolve()


def install_zoo(target: str | Path, preset: str = "tiny") -> Path:
    """Build `preset` into `target` atomically (`install_built`)."""
    return install_built(target, lambda tmp: build_zoo(tmp, preset), {"preset": preset, "key": zoo_key(preset)})


def install_built(target: str | Path, build: Callable[[Path], object], record: dict[str, Any]) -> Path:
    """Run `build` into a sibling temp folder, write `record` as its zoo.json, then rename it to `target`, so a
    half-built folder is never visible. If another process finished first, its identical build is kept."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        (tmp / "zoo.json").write_text(json.dumps(record) + "\n")
        tmp.rename(target)
    except OSError:
        if not (target / "zoo.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tokenizer(vocab_target: int):
    """A byte-level BPE trained on a fixed corpus, wrapped as `Qwen2Tokenizer` with the Qwen special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    words = _CORPUS_WORDS
    corpus = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(400)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=state["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.add_tokens(list(TEXT_TOKENS))
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def _vocab_size(tokenizer) -> int:
    return (len(tokenizer) + 63) // 64 * 64


def build_text_encoder(spec: ZooSpec, tokenizer):
    """Z-Image's text encoder: a transformers `Qwen3Model` with the real layout at `spec` sizes."""
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=_vocab_size(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=4096,
        rope_theta=1e6,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    torch.manual_seed(1)
    return Qwen3Model(config).eval()


def build_vl_model(spec: ZooSpec, tokenizer):
    """A `Qwen3VLForConditionalGeneration` with DeepStack and the real vision preprocessing geometry."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": _vocab_size(tokenizer),
            "hidden_size": spec.hidden,
            "intermediate_size": spec.intermediate,
            "num_hidden_layers": spec.layers,
            "num_attention_heads": spec.heads,
            "num_key_value_heads": spec.kv_heads,
            "head_dim": spec.head_dim,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": list(spec.mrope_section),
                "mrope_interleaved": True,
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden,
            "intermediate_size": 4 * spec.vision_hidden,
            "num_heads": spec.vision_heads,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": spec.hidden,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": list(spec.deepstack),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(2)
    return Qwen3VLForConditionalGeneration(config).eval()


def build_image_processor():
    """The Qwen3-VL image processor settings (PIL backend: no torchvision needed)."""
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        size={"shortest_edge": 64 * 32 * 32, "longest_edge": 16384 * 32 * 32},
    )


def build_zimage(spec: ZooSpec, tokenizer):
    """A complete diffusers `ZImagePipeline` with random weights at `spec` sizes and the real VAE/scheduler."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )

    torch.manual_seed(3)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=spec.dit_dim,
        n_layers=spec.dit_layers,
        n_refiner_layers=spec.dit_refiner_layers,
        n_heads=spec.dit_heads,
        n_kv_heads=spec.dit_heads,
        qk_norm=True,
        cap_feat_dim=spec.hidden,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=list(spec.dit_axes_dims),
        axes_lens=[1536, 512, 512],
    )
    torch.manual_seed(4)
    c = spec.vae_channels
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=(c, c, c, c),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    return ZImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=build_text_encoder(spec, tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    )


def build_zoo(out: str | Path, preset: str = "tiny") -> Path:
    """Write `out/zimage` and `out/qwen3-vl` for `preset`; returns `out`."""
    spec = PRESETS[preset]
    out = Path(out)
    quiet_libraries()  # a cold cache builds the zoo inside a command: no "Writing model shards" bars in its output
    tokenizer = build_tokenizer(spec.vocab_target)
    build_zimage(spec, tokenizer).save_pretrained(out / "zimage")

    vl_dir = out / "qwen3-vl"
    build_vl_model(spec, tokenizer).save_pretrained(vl_dir)
    vl_tokenizer = build_tokenizer(spec.vocab_target)
    vl_tokenizer.chat_template = QWEN3_VL_CHAT_TEMPLATE
    vl_tokenizer.save_pretrained(vl_dir)
    processor = build_image_processor()
    processor.save_pretrained(vl_dir)
    return out
