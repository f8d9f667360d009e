"""The model-based metrics (llm_dit.scoring.scorer, embedders, csd, reward) on the tiny metric zoo: each equals a direct
computation with the library's own classes (CSD: an independent OpenAI-layout forward of the original checkpoint),
known answers, embed-once caching, the CSD pickle safety and usable-vs-installed quality packages."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from llm_dit.core.errors import UserError
from llm_dit.scoring import reward
from llm_dit.scoring.csd import convert_csd, load_csd_checkpoint
from llm_dit.scoring.embedders import load_embedder
from llm_dit.scoring.image_metrics import METRICS
from llm_dit.scoring.metriczoo import build_tiny_csd_checkpoint, metric_zoo_dir, tiny_csd_state
from llm_dit.scoring.scorer import MetricScorer, ScoreItem, default_csd_dir, metric_model_set

PROMPTS = ["a photo of a cat", "a blurry mountain at night, oil painting"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo_root() -> Path:
    return metric_zoo_dir()


@pytest.fixture(scope="module")
def scorer(zoo_root: Path) -> MetricScorer:
    return MetricScorer("tiny")


def scene(seed: int, size: int = 64) -> np.ndarray:
    """Flat-coloured discs on black: structure plus a few distinct colours."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3))
    for _ in range(6):
        cx, cy, radius = rng.random(3) * [size, size, size / 3] + [0, 0, size / 10]
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = rng.random(3)
    return img


def recolour(img: np.ndarray) -> np.ndarray:
    """Same structure, other colours: the RGB channels rotated."""
    return img[..., [2, 0, 1]]


def pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(img * 255).astype(np.uint8))


# ----------------------------------------------------------------------------------- equal to a direct computation


def test_clip_t_and_clip_i_equal_clip_model_logits(scorer: MetricScorer, zoo_root: Path) -> None:
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(zoo_root / "clip").eval()
    tok = CLIPTokenizer.from_pretrained(zoo_root / "clip")
    proc = CLIPImageProcessorPil.from_pretrained(zoo_root / "clip")
    a, b = pil(scene(0)), pil(scene(1))
    with torch.no_grad():
        out = model(**tok(PROMPTS, padding=True, return_tensors="pt"), **proc(images=[a, b], return_tensors="pt"))
        clip_t = out.logits_per_image / model.logit_scale.exp()  # [image, prompt] cosines
        feats = model.get_image_features(**proc(images=[a, b], return_tensors="pt")).pooler_output
    got = scorer.score([ScoreItem(a, PROMPTS[0], reference=b), ScoreItem(b, PROMPTS[1], reference=a)])
    assert got[0]["clip_t"] == pytest.approx(float(clip_t[0, 0]), abs=1e-6)
    assert got[1]["clip_t"] == pytest.approx(float(clip_t[1, 1]), abs=1e-6)
    direct_i = float(F.cosine_similarity(feats[0:1], feats[1:2]))
    assert got[0]["clip_i"] == pytest.approx(direct_i, abs=1e-6) and got[1]["clip_i"] == pytest.approx(
        direct_i, abs=1e-6
    )


def test_siglip_t_equals_siglip_model_logits(scorer: MetricScorer, zoo_root: Path) -> None:
    from transformers import AutoTokenizer, SiglipImageProcessorPil, SiglipModel

    model = SiglipModel.from_pretrained(zoo_root / "siglip").eval()
    tok = AutoTokenizer.from_pretrained(zoo_root / "siglip")
    proc = SiglipImageProcessorPil.from_pretrained(zoo_root / "siglip")
    image = pil(scene(2))
    text = tok(PROMPTS, padding="max_length", max_length=64, return_tensors="pt")  # SigLIP's training padding
    with torch.no_grad():
        out = model(**text, **proc(images=[image], return_tensors="pt"))
    direct = (out.logits_per_image - model.logit_bias) / model.logit_scale.exp()
    got = scorer.score([ScoreItem(image, p) for p in PROMPTS])
    assert [g["siglip_t"] for g in got] == pytest.approx(direct[0].tolist(), abs=1e-6)


def test_dino_metrics_equal_the_layernormed_cls_token(scorer: MetricScorer, zoo_root: Path) -> None:
    from transformers import BitImageProcessorPil, Dinov2Model

    model = Dinov2Model.from_pretrained(zoo_root / "dino").eval()
    proc = BitImageProcessorPil.from_pretrained(zoo_root / "dino")
    image, reference, text_image = pil(scene(3)), pil(scene(4)), pil(scene(5))
    with torch.no_grad():
        hidden = model(**proc(images=[image, reference, text_image], return_tensors="pt"), output_hidden_states=True)
        cls = model.layernorm(hidden.hidden_states[-1])[:, 0]  # CLS after the final layer norm, not a patch mean
    got = scorer.score([ScoreItem(image, reference=reference, baseline=text_image)])[0]
    assert got["dino_leak"] == pytest.approx(float(F.cosine_similarity(cls[0:1], cls[1:2])), abs=1e-6)
    assert got["dino_kept"] == pytest.approx(float(F.cosine_similarity(cls[0:1], cls[2:3])), abs=1e-6)
    patch_mean = hidden.last_hidden_state[:, 1:].mean(dim=1)
    assert abs(got["dino_leak"] - float(F.cosine_similarity(patch_mean[0:1], patch_mean[1:2]))) > 1e-4


def _openai_csd_style(state: dict[str, torch.Tensor], image: Image.Image, size: int = 32) -> torch.Tensor:
    """CSD_CLIP.forward's style output from the ORIGINAL OpenAI-layout weights, written independently of
    transformers: CSD's preprocessing (Resize(size, bicubic), CenterCrop, ToTensor, OpenAI Normalize), the OpenAI
    VisionTransformer (conv1, class + positional embedding, ln_pre, resblocks with nn.MultiheadAttention and
    QuickGELU, ln_post on CLS) and ``normalize(feature @ last_layer_style)``."""
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    x = (x - mean) / std
    b = "backbone."
    width = state[b + "conv1.weight"].shape[0]
    x = F.conv2d(x, state[b + "conv1.weight"], stride=state[b + "conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state[b + "class_embedding"].expand(1, 1, width), x], dim=1) + state[b + "positional_embedding"]
    x = F.layer_norm(x, (width,), state[b + "ln_pre.weight"], state[b + "ln_pre.bias"], eps=1e-5)
    i = 0
    while f"{b}transformer.resblocks.{i}.ln_1.weight" in state:
        s = f"{b}transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(width, max(1, width // 64), batch_first=True)
        attn.load_state_dict(
            {
                "in_proj_weight": state[s + "attn.in_proj_weight"],
                "in_proj_bias": state[s + "attn.in_proj_bias"],
                "out_proj.weight": state[s + "attn.out_proj.weight"],
                "out_proj.bias": state[s + "attn.out_proj.bias"],
            }
        )
        y = F.layer_norm(x, (width,), state[s + "ln_1.weight"], state[s + "ln_1.bias"], eps=1e-5)
        x = x + attn(y, y, y, need_weights=False)[0]
        y = F.layer_norm(x, (width,), state[s + "ln_2.weight"], state[s + "ln_2.bias"], eps=1e-5)
        y = F.linear(y, state[s + "mlp.c_fc.weight"], state[s + "mlp.c_fc.bias"])
        y = y * torch.sigmoid(1.702 * y)  # QuickGELU
        x = x + F.linear(y, state[s + "mlp.c_proj.weight"], state[s + "mlp.c_proj.bias"])
        i += 1
    feature = F.layer_norm(x[:, 0], (width,), state[b + "ln_post.weight"], state[b + "ln_post.bias"], eps=1e-5)
    return F.normalize(feature @ state["last_layer_style"], dim=1)[0]


def test_csd_equals_the_original_openai_layout_forward(scorer: MetricScorer) -> None:
    state = tiny_csd_state()  # the weights the tiny checkpoint was written from (same seed)
    image, reference = pil(scene(6, 80)), pil(scene(7, 80))
    with torch.no_grad():
        direct = float(_openai_csd_style(state, image) @ _openai_csd_style(state, reference))
    got = scorer.score([ScoreItem(image, reference=reference)])[0]["csd"]
    assert got == pytest.approx(direct, abs=1e-5)
    assert got < 0.99  # different images: the comparison is not vacuous


def test_converted_csd_matches_the_checkpoint_tensors(zoo_root: Path) -> None:
    from transformers import CLIPVisionModelWithProjection

    state = load_csd_checkpoint(zoo_root / "csd-checkpoint.pth")
    model = CLIPVisionModelWithProjection.from_pretrained(zoo_root / "csd")
    assert model.config.hidden_act == "quick_gelu" and model.config.num_attention_heads == 2
    torch.testing.assert_close(model.visual_projection.weight, state["last_layer_style"].T, rtol=0, atol=0)
    record = json.loads((zoo_root / "csd" / "csd.json").read_text())
    assert record["bytes"] == (zoo_root / "csd-checkpoint.pth").stat().st_size and len(record["sha256"]) == 64


# ----------------------------------------------------------------------------------- known answers


def test_identical_images_score_one_and_unrelated_lower(scorer: MetricScorer) -> None:
    a, b = scene(8), scene(9)
    same, other = scorer.score([ScoreItem(a, reference=a, baseline=a), ScoreItem(a, reference=b, baseline=b)])
    for name in ("csd", "clip_i", "color_hist_similarity", "dino_leak", "dino_kept", "ssim_to_baseline"):
        assert same[name] == pytest.approx(1.0, abs=1e-6), name
        assert other[name] < same[name] - 1e-3, name


def test_recoloured_image_keeps_structure_but_not_colour(scorer: MetricScorer, zoo_root: Path, tmp_path: Path) -> None:
    """A DINOv2 whose patch embedding sees only the sum of the (normalised) channels is exactly blind to a channel
    rotation: the known answer is dino = 1 for the recoloured image while its colours differ."""
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(zoo_root / "dino")
    std = torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        w = model.embeddings.patch_embeddings.projection.weight
        w.copy_(w[:, :1] * std[None, :, None, None] / std[0])  # weight_c ∝ std_c: Σ_c w_c (v_c - m_c) / std_c
    model.save_pretrained(tmp_path / "dino")
    for name in ("preprocessor_config.json",):
        (tmp_path / "dino" / name).write_bytes((zoo_root / "dino" / name).read_bytes())
    blind = MetricScorer({"dino": str(tmp_path / "dino")})
    a = scene(10)
    recoloured, unrelated = blind.score(
        [ScoreItem(a, reference=recolour(a), baseline=recolour(a)), ScoreItem(a, reference=scene(11))]
    )
    # reference = baseline: one cached embedding, but leak and kept are cosines from differently shaped float64
    # matmuls (2 items vs 1), equal only up to rounding
    assert recoloured["dino_leak"] == pytest.approx(1.0, abs=1e-5)
    assert recoloured["dino_kept"] == pytest.approx(recoloured["dino_leak"], rel=1e-12, abs=1e-12)
    assert unrelated["dino_leak"] < 0.999
    assert recoloured["color_hist_similarity"] < 0.5  # the colours changed
    assert recoloured["ssim_to_baseline"] > unrelated.get("ssim_to_baseline", 0.5)  # structure (luma) mostly kept
    plain = scorer.score([ScoreItem(a, reference=recolour(a))])[0]
    assert plain["color_hist_similarity"] == recoloured["color_hist_similarity"]


# ----------------------------------------------------------------------------------- scale: load once, embed once


def test_each_distinct_image_and_prompt_is_embedded_once_per_model(
    scorer: MetricScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    again_loaded = MetricScorer("tiny", batch_size=3)
    assert all(again_loaded.embedders[r] is e for r, e in scorer.embedders.items())  # loaded once per process
    scorer = again_loaded  # a fresh embedding cache
    calls: dict[str, list[int]] = {}
    for role, embedder in scorer.embedders.items():
        inner = embedder.embed_images

        def counting(images, batch_size=None, role=role, inner=inner):
            calls.setdefault(role, []).append(len(images))
            assert batch_size == 3
            return inner(images, batch_size)

        monkeypatch.setattr(embedder, "embed_images", counting)
    ref, text_image = scene(12), scene(13)
    cells = [ScoreItem(text_image, PROMPTS[0], reference=ref)]  # the text method's image: itself has no baseline
    cells += [ScoreItem(scene(14 + i), PROMPTS[0], reference=ref, baseline=text_image) for i in range(3)]
    first = scorer.score(cells)
    # 4 generated images + 1 reference (the text image is both scored and a baseline): 5 distinct, in one call
    assert calls == {"clip": [5], "siglip": [4], "csd": [5], "dino": [5]}
    again = scorer.score(cells)
    assert again == first and calls == {"clip": [5], "siglip": [4], "csd": [5], "dino": [5]}  # all cached
    assert len([k for k in scorer._texts if k[0] == "clip"]) == 1  # one distinct prompt
    assert "dino_kept" not in first[0] and all("dino_kept" in c for c in first[1:])


def test_batches_give_the_same_embeddings_as_single_images(zoo_root: Path) -> None:
    encoder = load_embedder("csd", zoo_root / "csd")
    images = [scene(20 + i) for i in range(5)]
    encoder.batch_size = 2
    batched = encoder.embed_images(images)
    single = torch.cat([encoder.embed_images([im]) for im in images])
    assert batched.shape == (5, 32) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_describe_records_models_and_precision(scorer: MetricScorer) -> None:
    record = scorer.describe()
    assert (
        record["models"]["dino"]["class"] == "Dinov2Model" and record["models"]["dino"]["embedding"] == "pooler_output"
    )
    assert record["models"]["csd"]["embedding"] == "image_embeds"
    assert "float64" in record["precision"]
    assert record["metrics"]["clip_t"]["model"] == record["models"]["clip"]["source"]
    assert set(record["metrics"]) == set(scorer.metrics) and "image_reward" not in record["metrics"]


# ----------------------------------------------------------------------------------- choosing metric models


def test_metric_models_spec(zoo_root: Path) -> None:
    tiny = metric_model_set("tiny")
    assert tiny["clip"] == str(zoo_root / "clip") and tiny["image_reward"] is None
    mixed = metric_model_set(["tiny", "siglip=none", "dino=/x/dino"])
    assert mixed["siglip"] is None and mixed["dino"] == "/x/dino" and mixed["csd"] == str(zoo_root / "csd")
    default = metric_model_set("default")
    assert default["clip"] == "openai/clip-vit-large-patch14" and default["dino"] == "facebook/dinov2-base"
    assert default["csd"] == str(default_csd_dir())
    assert metric_model_set(None) == {} and metric_model_set([]) == {}
    for bad in ("huge", "clop=x", "clip="):
        with pytest.raises(UserError, match="ROLE=ID_OR_PATH") as info:
            metric_model_set(bad)
        assert "\n" not in str(info.value)


def test_a_bad_metric_device_is_a_one_line_error() -> None:
    with pytest.raises(UserError, match="metric_device: 'gpu0' is not a torch device"):
        MetricScorer(None, device="gpu0")
    assert MetricScorer(None, device=None).device == "cpu"


def test_default_csd_without_conversion_is_absent_with_reason() -> None:
    off = {"clip": None, "siglip": None, "dino": None, "image_reward": None, "hpsv2": None}
    scorer = MetricScorer(["default", *(f"{k}=none" for k in off)])
    assert "csd" not in scorer.metrics and "convert-csd" in scorer.unavailable["csd"]
    assert "csd" not in scorer.score([ScoreItem(scene(1), reference=scene(2))])[0]


def test_a_gelu_csd_tower_is_refused(zoo_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "csd"
    folder.mkdir()
    for f in (zoo_root / "csd").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"hidden_act": "gelu"}))
    with pytest.raises(UserError, match="quick_gelu"):
        load_embedder("csd", folder)


def test_a_wrong_model_for_a_role_is_refused(zoo_root: Path) -> None:
    with pytest.raises(UserError, match="not a DINOv2 model"):
        load_embedder("dino", zoo_root / "clip")


# ----------------------------------------------------------------------------------- CSD pickle safety


def _touch_marker(path: str) -> None:  # what an unexpected global would run on unpickling
    Path(path).write_text("executed")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch_marker, (self.marker,))


def test_the_tiny_checkpoint_needs_the_allow_list(zoo_root: Path) -> None:
    """It is in the published layout: plain weights_only loading refuses it (Namespace, numpy scalars)."""
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(zoo_root / "csd-checkpoint.pth", weights_only=True)
    state = load_csd_checkpoint(zoo_root / "csd-checkpoint.pth")
    assert "last_layer_style" in state and not any(k.startswith("module.") for k in state)


def test_a_checkpoint_written_with_numpy_1_loads(zoo_root: Path, tmp_path: Path) -> None:
    """The published file was pickled under numpy 1.x, which names `numpy.core.multiarray.scalar`: the allow-list
    carries that name too (allow-listing the numpy 2 class alone does not load it)."""
    import zipfile

    old = tmp_path / "numpy1.pth"
    with zipfile.ZipFile(zoo_root / "csd-checkpoint.pth") as zin, zipfile.ZipFile(old, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            zout.writestr(info, data)
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(old)
    torch.testing.assert_close(load_csd_checkpoint(old), load_csd_checkpoint(zoo_root / "csd-checkpoint.pth"))


def test_a_checkpoint_with_an_unexpected_global_is_refused_and_nothing_runs(tmp_path: Path, cli) -> None:
    marker = tmp_path / "marker"
    ckpt = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"last_layer_style": torch.zeros(2, 2)}, "args": _Payload(marker)}, ckpt)
    expected = re.escape("outside the allow-list: tests.scoring.test_metric_models._touch_marker")
    with pytest.raises(UserError, match=expected) as info:
        load_csd_checkpoint(ckpt)
    assert "\n" not in str(info.value) and not marker.exists()
    r = cli("models", "convert-csd", ckpt, "-o", tmp_path / "out")
    assert r.code == 2 and "allow-list" in r.err and "Traceback" not in r.err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_checkpoint_with_foreign_keys_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "other.pth"
    torch.save({"model_state_dict": {"module.encoder.weight": torch.zeros(2)}}, ckpt)
    with pytest.raises(UserError, match=re.escape("not a CSD model: unexpected keys encoder.weight")):
        load_csd_checkpoint(ckpt)


def test_convert_csd_command_writes_a_loadable_folder(tmp_path: Path, cli) -> None:
    ckpt = build_tiny_csd_checkpoint(tmp_path / "ckpt.pth")
    r = cli("models", "convert-csd", ckpt, "-o", tmp_path / "csd")
    assert r.code == 0, r.err
    names = {p.name for p in (tmp_path / "csd").iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "content_head.safetensors"} <= names
    assert load_embedder("csd", tmp_path / "csd").embed_images([scene(1)]).shape == (1, 32)
    with pytest.raises(UserError, match="already exists"):
        convert_csd(ckpt, tmp_path / "csd")


# ----------------------------------------------------------------------------------- ImageReward / HPSv2


@pytest.fixture
def fresh_probe():
    reward._probe.cache_clear()
    yield
    reward._probe.cache_clear()


def test_installed_but_broken_quality_package_is_absent_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_probe
) -> None:
    """ImageReward 1.5 is installed but fails to import under transformers 5: absent, reason recorded, no NaN.
    (Before, `find_spec` called it available and scoring died in the import.)"""
    package = tmp_path / "site" / "ImageReward"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise ImportError(\"cannot import name 'find_pruneable_heads_and_indices'\")\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "ImageReward", raising=False)
    assert importlib.util.find_spec("ImageReward") is not None  # installed
    scorer = MetricScorer({"image_reward": "ImageReward-v1.0"})
    assert scorer.unavailable["image_reward"].startswith("ImageReward is not usable here: ImportError: cannot import")
    assert "\n" not in scorer.unavailable["image_reward"]
    assert "image_reward" not in scorer.metrics
    assert "image_reward" not in scorer.score([ScoreItem(scene(1), PROMPTS[0])])[0]
    assert scorer.describe()["unavailable"] == scorer.unavailable


def test_a_usable_quality_package_is_scored(monkeypatch: pytest.MonkeyPatch, fresh_probe) -> None:
    seen: list[tuple[str, str]] = []

    def score(images, prompt, hps_version="v2.0"):
        seen.append((prompt, hps_version))
        return [0.25 + 0.01 * len(prompt)]

    monkeypatch.setitem(sys.modules, "hpsv2", types.SimpleNamespace(score=score))
    scorer = MetricScorer({"hpsv2": "v2.1"})
    assert "hpsv2" in scorer.metrics and not scorer.unavailable
    got = scorer.score([ScoreItem(scene(1), p) for p in PROMPTS] + [ScoreItem(scene(2))])
    assert [g.get("hpsv2") for g in got] == [pytest.approx(0.25 + 0.01 * len(p)) for p in PROMPTS] + [None]
    assert seen == [(p, "v2.1") for p in PROMPTS]


def test_every_model_metric_names_its_model_role() -> None:
    roles = {"clip", "siglip", "csd", "dino", "image_reward", "hpsv2"}
    assert {i.model for i in METRICS.values() if i.model} == roles


def test_every_metric_is_documented_in_methods() -> None:
    from ..conftest import REPO

    text = (REPO / "docs" / "methods.md").read_text()
    section = text[text.index("## 11. Metrics") : text.index("## 12.")]
    missing = [n for n in METRICS if f"| `{n}`" not in section]
    assert not missing, missing
