import json

import numpy as np
import pytest
import torch
from PIL import Image

from llm_dit.conditioning.source import Reference, combine_layers, parse_layer_weights
from llm_dit.core.errors import UserError
from llm_dit.core.files import load_tensors
from llm_dit.generation.generate import Generator

from ..conftest import REPO, tiny_config

REF = REPO / "examples" / "reference-images" / "purple_hexagon.png"
SMALL = ["--steps", "2", "--width", "64", "--height", "64", "--seed", "5"]


def pixels(path):
    return np.asarray(Image.open(path)).astype(int)


def test_alpha_zero_is_pixel_identical_to_text_only_and_alpha_changes_it(cli, zoo, tmp_path):
    base = ["--models", "tiny", "-p", "a house", *SMALL]
    assert cli("generate", *base, "-o", tmp_path / "t.png").code == 0
    assert cli("generate", *base, "-i", REF, "--alpha", "0", "-o", tmp_path / "a0.png").code == 0
    r = cli("generate", *base, "-i", REF, "--alpha", "0.3", "-o", tmp_path / "a3.png")
    assert r.code == 0, r.err
    assert np.array_equal(pixels(tmp_path / "t.png"), pixels(tmp_path / "a0.png"))
    assert not np.array_equal(pixels(tmp_path / "t.png"), pixels(tmp_path / "a3.png"))
    rec = json.loads((tmp_path / "a3.json").read_text())
    c = rec["conditioning"]
    assert c["source"] == "reference" and c["blend"] == "adain_per_dim" and c["alpha"] == 0.3
    assert c["blend_stats"]["before_std"] != c["blend_stats"]["after_std"]
    assert c["vl"]["-6"]["spans"]["image_pad"] is not None and c["vl"]["-6"]["token_mode"] == "full"
    assert rec["settings"]["vl.hidden_layer"] == -6 and "vl" in rec["models"]


def test_img2img_with_reference_and_strength(cli, zoo, tmp_path):
    base = ["--models", "tiny", "-p", "a house", "-i", REF, "--init-image", REF, *SMALL, "--steps", "4"]
    assert cli("generate", *base, "--strength", "0.75", "-o", tmp_path / "a.png").code == 0
    assert cli("generate", *base, "--strength", "0.5", "-o", tmp_path / "b.png").code == 0
    assert not np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))
    rec = json.loads((tmp_path / "a.json").read_text())
    assert rec["settings"]["generation.strength"] == 0.75 and rec["img2img"] == {"strength": 0.75, "skipped_steps": 1}
    assert rec["inputs"]["init_image"]["sha256"] == rec["inputs"]["reference_image"]["sha256"]


def test_default_strength_acts_at_the_default_steps(cli, zoo, tmp_path, recwarn):
    """Before: at the default strength 0.9 and 9 steps diffusers skipped no step, so two different init images gave
    bit-identical images (that still differed from text-to-image). Text-only, so only the init image differs."""
    other = REPO / "examples" / "reference-images" / "sunset.png"
    base = ["--models", "tiny", "-p", "a house", "--width", "32", "--height", "32"]  # default steps and strength
    for name, init in (("a", REF), ("b", other)):
        r = cli("generate", *base, "--init-image", init, "-o", tmp_path / f"{name}.png")
        assert r.code == 0 and "no effect" not in r.err, r.err
    assert not np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))
    rec = json.loads((tmp_path / "a.json").read_text())
    assert rec["settings"]["generation.steps"] == 9 and rec["img2img"]["skipped_steps"] >= 1


def test_strength_sweep_values_each_skip_a_step_at_its_steps():
    from llm_dit.config.settings import Config
    from llm_dit.generation.render import denoising_steps
    from llm_dit.sweep.spec import SweepSpec, expand, resolve_spec, run_config

    spec = resolve_spec(SweepSpec(prompts=["a"], images=["x.png"]), "strength_sweep", {}, {})
    configs = [run_config(Config(), r).generation for r in expand(spec) if r.kind == "variant"]
    assert len(configs) == 4 and all(denoising_steps(g, True) < g.steps for g in configs)


def test_strength_that_skips_no_step_is_warned_about(gen):
    ref = Image.open(REF).convert("RGB")
    g = Generator(
        gen.config.model_copy(
            update={"generation": gen.config.generation.model_copy(update={"steps": 4, "strength": 0.9})}
        ),
        gen.cache,
    )
    with pytest.warns(UserWarning, match="init image has no effect"):
        g.prepare("a house", ref, init_image=ref)


@pytest.fixture(scope="module")
def gen(zoo):
    return Generator(tiny_config(zoo, **{"generation.steps": 3}))


def with_vl(gen, **changes):
    return Generator(gen.config.model_copy(update={"vl": gen.config.vl.model_copy(update=changes)}), gen.cache)


def test_every_vl_setting_reaches_the_conditioning(gen):
    ref = Image.open(REF).convert("RGB")
    base, _ = gen.condition("a fox", ref)
    c0 = base.at(0.3)
    for change in (
        {"hidden_layer": -2},
        {"token_mode": "image_only"},
        {"normalize": "global"},
        {"blend": "interpolate"},
        {"blend": "interpolate", "resample": "nearest"},
        {"layers": "-6:0.5,-2:0.5"},
        {"outlier_masking": "zero", "outlier_threshold": 1.05},
    ):
        other, _ = with_vl(gen, **change).condition("a fox", ref)
        assert not torch.equal(other.at(0.3), c0), change


def test_multi_layer_weights_from_one_forward_pass(gen):
    ref = Image.open(REF).convert("RGB")
    g = with_vl(gen, layers="-6:0.7,-2:0.3")
    rows, meta = g.extract(ref, "a wave")
    single = {layer: gen.components.vl.extract(ref, "a wave", layer).embeddings for layer in (-6, -2)}
    torch.testing.assert_close(rows, 0.7 * single[-6] + 0.3 * single[-2])
    assert set(meta) == {-6, -2} and meta[-6].hidden_layer == -6
    assert parse_layer_weights("-6") == {-6: 1.0}
    with pytest.raises(UserError, match="LAYER"):
        parse_layer_weights("-6:x")
    torch.testing.assert_close(
        combine_layers({1: torch.ones(2, 2), 2: torch.ones(2, 2)}, {1: 0.25, 2: 0.5}), torch.full((2, 2), 0.75)
    )


def test_style_delta_needs_a_neutral_extraction(gen):
    ref = Image.open(REF).convert("RGB")
    with pytest.raises(UserError, match="neutral"):
        with_vl(gen, blend="style_delta").condition("a fox", ref)
    neutral = Image.new("RGB", (64, 64), (128, 128, 128))
    cond, _ = with_vl(gen, blend="style_delta").condition("a fox", Reference(ref, neutral))
    assert cond.at(0.3).shape == cond.text.shape and not torch.equal(cond.at(0.3), cond.text)


def test_embedding_files_round_trip_into_generation(cli, zoo, tmp_path):
    assert cli("extract", "--models", "tiny", "-i", REF, "-t", "a house", "-o", tmp_path / "v.safetensors").code == 0
    assert cli("encode", "--models", "tiny", "-p", "a house", "-o", tmp_path / "t.safetensors").code == 0
    base = ["--models", "tiny", "-p", "a house", *SMALL]
    assert cli("generate", *base, "-i", REF, "-o", tmp_path / "img.png").code == 0
    r = cli("generate", *base, "--vl-embeddings", tmp_path / "v.safetensors", "-o", tmp_path / "file.png")
    assert r.code == 0, r.err
    # extract with the same settings as generate -> the same image from the file
    assert np.array_equal(pixels(tmp_path / "img.png"), pixels(tmp_path / "file.png"))
    # precomputed caption rows are used as they are: text rows -> the text-only image
    assert cli("generate", *base, "-o", tmp_path / "text.png").code == 0
    r = cli("generate", *base, "--embeddings", tmp_path / "t.safetensors", "-o", tmp_path / "emb.png")
    assert r.code == 0, r.err
    assert np.array_equal(pixels(tmp_path / "text.png"), pixels(tmp_path / "emb.png"))
    _, meta = load_tensors(tmp_path / "v.safetensors")
    assert meta["kind"] == "vl_embeddings" and meta["hidden_layer"] == -6 and len(meta["image_sha256"]) == 64


def test_low_memory_stages_text_encoder_then_vl_then_dit(gen):
    models = gen.config.models.model_copy(update={"low_memory": True})
    vl = gen.config.vl.model_copy(update={"normalize": "per_dim"})
    g = Generator(gen.config.model_copy(update={"models": models, "vl": vl}))
    cond, _ = g.condition("a fox", Image.open(REF).convert("RGB"))
    loaded = g.components.loaded()
    assert "text_encoder" not in loaded and "vl" in loaded  # text encoder gone before the VL model ran
    assert cond.record["vl"]["-6"]["settings"]["normalization"] == "per_dim"
    g.components.stage("pipeline")
    _ = g.components.pipeline
    assert g.components.loaded() == ["pipeline"]


def test_schedule_and_injection_reach_generation(cli, zoo, tmp_path):
    base = ["--models", "tiny", "-p", "a house", "-i", REF, *SMALL, "--steps", "4"]
    assert cli("generate", *base, "-o", tmp_path / "const.png").code == 0
    r = cli("generate", *base, "--alpha-schedule", "linear:0.0,0.6", "-o", tmp_path / "ramp.png")
    assert r.code == 0, r.err
    c = json.loads((tmp_path / "ramp.json").read_text())["conditioning"]
    assert c["alphas"] == pytest.approx([0.0, 0.2, 0.4, 0.6]) and c["alphas_used"] == pytest.approx(c["alphas"])
    r = cli("generate", *base, "--inject-layers", "1", "-o", tmp_path / "inject.png")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "inject.json").read_text())["settings"]["vl.inject_layers"] == [1]
    images = [pixels(tmp_path / f"{n}.png") for n in ("const", "ramp", "inject")]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[0], images[2])
    r = cli("generate", *base, "--inject-layers", "7", "-o", tmp_path / "bad.png")
    assert r.code == 2 and "blocks" in r.err and not (tmp_path / "bad.png").exists()
