"""Tests for scoring.embedders (dual encoders) and the tiny CLIP of scoring.metriczoo, built offline once per module."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llm_dit.core.errors import UserError
from llm_dit.scoring.embedders import DualEncoder, cosine_matrix, load_embedder
from llm_dit.scoring.metriczoo import build_clip_tokenizer, build_tiny_clip

PROMPT_A = "a photo of a cat"
PROMPT_B = "a blurry mountain at night, oil painting"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


@pytest.fixture(scope="module")
def scorer(tiny_clip: Path) -> DualEncoder:
    encoder = load_embedder("clip", tiny_clip)
    assert isinstance(encoder, DualEncoder)
    return encoder


def image_similarity(encoder: DualEncoder, image, reference) -> float:
    return float(cosine_matrix(encoder.embed_images([image]), encoder.embed_images([reference]))[0, 0])


def text_similarity(encoder: DualEncoder, image, prompt: str) -> float:
    return float(cosine_matrix(encoder.embed_images([image]), encoder.embed_texts([prompt]))[0, 0])


def noise(seed: int = 0, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size, 3))


def halves(size: int = 48) -> np.ndarray:
    img = np.zeros((size, size, 3))
    img[:, : size // 2] = 1.0
    return img


# ----------------------------------------------------------------------------------------- folder


def test_folder_has_real_clip_layout(tiny_clip: Path) -> None:
    names = {p.name for p in tiny_clip.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "preprocessor_config.json",
    } <= names
    config = json.loads((tiny_clip / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    assert json.loads((tiny_clip / "preprocessor_config.json").read_text())["image_processor_type"] == (
        "CLIPImageProcessor"
    )
    assert json.loads((tiny_clip / "tokenizer_config.json").read_text())["tokenizer_class"] == "CLIPTokenizer"
    merges = (tiny_clip / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version") and all(len(m.split(" ")) == 2 for m in merges[1:])


def test_folder_reloads_through_auto_classes(tiny_clip: Path) -> None:
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer

    model = AutoModel.from_pretrained(tiny_clip)
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip)
    image_processor = AutoImageProcessor.from_pretrained(tiny_clip)
    processor = AutoProcessor.from_pretrained(tiny_clip)
    assert type(model).__name__ == "CLIPModel"
    assert type(tokenizer).__name__ == "CLIPTokenizer"
    assert type(image_processor).__name__.startswith("CLIPImageProcessor")
    assert type(processor).__name__ == "CLIPProcessor"

    # Tokenizer: CLIP conventions (lowercase, </w> word ends, BOS ... EOS) and ids consistent with the model.
    text = model.config.text_config
    assert text.vocab_size == len(tokenizer)
    assert tokenizer.tokenize("A Photo, OF!") == ["a</w>", "photo</w>", ",</w>", "of</w>", "!</w>"]
    ids = tokenizer(PROMPT_A)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == text.bos_token_id
    assert ids[-1] == tokenizer.eos_token_id == text.eos_token_id == len(tokenizer) - 1
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == PROMPT_A
    assert json.loads((tiny_clip / "vocab.json").read_text()) == tokenizer.get_vocab()

    pixels = image_processor(images=Image.new("RGB", (80, 50), (10, 200, 30)), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 32, 32)
    with torch.no_grad():
        emb = model.get_image_features(pixel_values=pixels).pooler_output
    assert tuple(emb.shape) == (1, 16)


def test_text_embedding_pools_at_eos(tiny_clip: Path, scorer: DualEncoder) -> None:
    """The pooled state is the EOS position: padding a short prompt in a batch must not change its embedding."""
    model, tokenizer = scorer.model, scorer.tokenizer
    enc = tokenizer([PROMPT_B, PROMPT_A], padding=True, return_tensors="pt")
    short = enc["input_ids"][1]
    eos = int((short == tokenizer.eos_token_id).nonzero()[0])
    assert eos < short.shape[0] - 1  # padded with EOS after the first one
    with torch.no_grad():
        out = model.text_model(**enc)
        batch = model.get_text_features(**enc).pooler_output
    expected = model.text_projection(out.last_hidden_state[1, eos])
    torch.testing.assert_close(batch[1], expected)
    torch.testing.assert_close(scorer.embed_texts([PROMPT_A])[0], batch[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch[1], model.text_projection(out.last_hidden_state[1, -1]), atol=1e-4)


def test_build_is_deterministic(tiny_clip: Path, tmp_path: Path) -> None:
    again = build_tiny_clip(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "merges.txt"):
        assert (again / name).read_bytes() == (tiny_clip / name).read_bytes(), name


# ----------------------------------------------------------------------------------------- similarity


def test_image_similarity_with_itself_is_one(scorer: DualEncoder) -> None:
    img = noise(0)
    assert image_similarity(scorer, img, img) == pytest.approx(1.0, abs=1e-5)
    as_pil = Image.fromarray((img * 255).round().astype(np.uint8))
    assert image_similarity(scorer, as_pil, as_pil.convert("RGBA")) == pytest.approx(1.0, abs=1e-5)


def test_image_similarity_with_a_different_image_is_lower(scorer: DualEncoder) -> None:
    sims = [image_similarity(scorer, noise(0), halves()), image_similarity(scorer, halves(), noise(0))]
    assert sims[0] == pytest.approx(sims[1], abs=1e-9)  # symmetric
    assert -1.0 <= sims[0] < 0.999


def test_text_similarity_in_range_and_depends_on_prompt(scorer: DualEncoder) -> None:
    img = noise(1)
    a, b = text_similarity(scorer, img, PROMPT_A), text_similarity(scorer, img, PROMPT_B)
    for value in (a, b):
        assert isinstance(value, float) and math.isfinite(value) and -1.0 <= value <= 1.0
    assert abs(a - b) > 1e-3
    assert text_similarity(scorer, img, PROMPT_A) == a  # deterministic (eval mode, no dropout)


def test_long_prompt_is_truncated_to_context(scorer: DualEncoder) -> None:
    long_prompt = " ".join(["a cat"] * 200)
    assert math.isfinite(text_similarity(scorer, noise(2), long_prompt))


# ----------------------------------------------------------------------------------------- errors


def _assert_one_line_user_error(path_or_id: str | Path, match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        load_embedder("clip", path_or_id)
    assert "\n" not in str(info.value)


def test_missing_path_raises_user_error(tmp_path: Path) -> None:
    _assert_one_line_user_error(tmp_path / "no-such-model", "does not exist")


def test_folder_without_config_raises_user_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _assert_one_line_user_error(tmp_path / "empty", "config.json")


def test_unknown_hub_id_offline_raises_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_one_line_user_error("llm-dit-tests/no-such-clip-model", "no such local folder; tried it as a hub model id")


def test_non_dual_encoder_raises_user_error(tiny_clip: Path, tmp_path: Path) -> None:
    from transformers import CLIPTextModel

    text_only = CLIPTextModel.from_pretrained(tiny_clip)
    text_only.save_pretrained(tmp_path / "text-only")
    _assert_one_line_user_error(tmp_path / "text-only", "not a CLIP/SigLIP dual encoder")


# ----------------------------------------------------------------------------------------- SigLIP


def test_siglip_text_is_padded_to_max_length(scorer: DualEncoder) -> None:
    """SigLIP-family models get fixed-length (max_length) padding; CLIP pads to the longest text only."""
    from transformers import SiglipConfig, SiglipModel

    calls: list[dict] = []

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, *args, **kwargs):
            calls.append(kwargs)
            enc = self.inner(*args, **kwargs)
            calls[-1]["length"] = enc["input_ids"].shape[-1]
            return enc

    tokenizer = build_clip_tokenizer()
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = SiglipConfig(
        text_config={"vocab_size": len(tokenizer), "max_position_embeddings": 64, **layers},
        vision_config={"image_size": 32, "patch_size": 8, **layers},
    )
    torch.manual_seed(0)
    siglip = DualEncoder(SiglipModel(config), Recording(tokenizer), scorer.image_processor, source="tiny-siglip")
    value = text_similarity(siglip, noise(4), PROMPT_A)
    assert math.isfinite(value) and -1.0 <= value <= 1.0
    assert calls[-1]["padding"] == "max_length" and calls[-1]["length"] == 64

    clip_scorer = DualEncoder(scorer.model, Recording(scorer.tokenizer), scorer.image_processor, source="tiny-clip")
    clip_scorer.embed_texts([PROMPT_A])
    assert calls[-1]["padding"] is True and calls[-1]["length"] == len(scorer.tokenizer(PROMPT_A)["input_ids"])
