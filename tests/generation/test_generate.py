import json

import numpy as np
import pytest
import torch
from PIL import Image

from llm_dit.config.settings import load_config
from llm_dit.generation.generate import Generator
from llm_dit.generation.render import denoise


def diffusers_image(zoo, **kwargs):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(zoo / "zimage")
    pipe.set_progress_bar_config(disable=True)
    return pipe(**kwargs).images[0]


def test_cli_generate_is_pixel_identical_to_diffusers_on_the_same_text_rows(cli, zoo, tmp_path):
    """The generation path (scheduler, DiT, VAE) is diffusers' own: given the caption rows `llm-dit encode` writes,
    diffusers' ZImagePipeline makes the CLI's image pixel for pixel (same kernels on the same shapes, so bit-exact
    on any CPU). The text encoding itself is diffusers' up to float32 rounding only: diffusers pads the prompt to
    512 tokens with an attention mask, llm-dit encodes it unpadded, and the two matrix shapes round differently
    (3-5e-8 here), which can flip a pixel by one level; so rows are compared to rounding and the end-to-end image
    from the prompt to one level."""
    from diffusers import ZImagePipeline
    from safetensors.torch import load_file

    small = ["--zimage", zoo / "zimage", "--steps", 2, "--width", 64, "--height", 64, "--seed", 7, "--guidance", 0]
    out, rows_file = tmp_path / "a.png", tmp_path / "t.safetensors"
    assert cli("generate", *small, "-p", "a red fox", "-o", out).code == 0
    assert cli("encode", "--zimage", zoo / "zimage", "-p", "a red fox", "-o", rows_file).code == 0
    rows = load_file(rows_file)["embeddings"]
    pipe = ZImagePipeline.from_pretrained(zoo / "zimage")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe.encode_prompt("a red fox", do_classifier_free_guidance=False)[0][0]
    torch.testing.assert_close(rows, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())

    ours = np.asarray(Image.open(out))
    kwargs = dict(height=64, width=64, num_inference_steps=2, guidance_scale=0.0)
    same_rows = pipe(prompt_embeds=[rows], generator=torch.Generator("cpu").manual_seed(7), **kwargs).images[0]
    assert ours.shape == (64, 64, 3) and ours.std() > 1  # not a blank image
    assert np.array_equal(ours, np.asarray(same_rows))
    from_prompt = pipe(prompt="a red fox", generator=torch.Generator("cpu").manual_seed(7), **kwargs).images[0]
    assert np.abs(ours.astype(int) - np.asarray(from_prompt).astype(int)).max() <= 1


def test_sidecar_records_settings_models_versions_and_timings(cli, zoo, tmp_path):
    out = tmp_path / "b.png"
    r = cli(
        "generate",
        "--zimage",
        zoo / "zimage",
        "-p",
        "a cat",
        "--steps",
        2,
        "--width",
        32,
        "--height",
        48,
        "--seed",
        3,
        "--shift",
        2.0,
        "-o",
        out,
    )
    assert r.code == 0, r.err
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["prompt"] == "a cat" and rec["seed"] == 3
    s = rec["settings"]
    assert (s["generation.steps"], s["generation.width"], s["generation.height"]) == (2, 32, 48)
    assert s["generation.shift"] == 2.0 and s["encoder.hidden_layer"] == -2
    assert s["models.zimage"] == str(zoo / "zimage")
    assert {"torch", "diffusers", "transformers"} <= rec["versions"].keys()
    assert {"condition", "load", "denoise"} <= rec["timings_s"].keys()
    assert Image.open(out).size == (32, 48)


@pytest.fixture(scope="module")
def gen(zoo):
    cfg = load_config(
        overrides={
            "models.zimage": str(zoo / "zimage"),
            "generation.width": 64,
            "generation.height": 64,
            "generation.steps": 4,
        }
    )
    return Generator(cfg)


def run(gen, **changes):
    g = gen.config.generation.model_copy(update=changes)
    emb = gen.encode("a house").embeddings
    neg = [gen.encode("").embeddings] if g.guidance > 0 else None
    pipe = gen.components.pipeline
    return np.asarray(
        denoise(pipe, [emb], g, [g.seed], negative_prompt_embeds=neg, init_image=changes.get("init"))[0]
    ).astype(int)


@pytest.mark.parametrize("change", [{"seed": 1}, {"steps": 3}, {"shift": 1.0}, {"guidance": 2.0}])
def test_each_generation_setting_changes_the_image(gen, change):
    assert np.abs(run(gen) - run(gen, **change)).max() > 0


def test_shift_reaches_the_scheduler(gen):
    g = gen.config.generation.model_copy(update={"shift": 1.5, "steps": 2})
    seen = []

    def cb(pipe, i, t, kw):
        seen.append(pipe.scheduler.config.shift)
        return {}

    denoise(gen.components.pipeline, [gen.encode("x").embeddings], g, [0], callback=cb)
    assert seen == [1.5, 1.5]


def test_img2img_strength_semantics(gen):
    init = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3)))
    emb = [gen.encode("a house").embeddings]
    steps_run = {}
    images = {}
    for strength in (0.5, 0.75, 0.9, 1.0):
        g = gen.config.generation.model_copy(update={"strength": strength, "steps": 4})
        calls = []
        images[strength] = np.asarray(
            denoise(
                gen.components.pipeline,
                emb,
                g,
                [0],
                init_image=init,
                callback=lambda p, i, t, kw, calls=calls: calls.append(i) or {},
            )[0]
        )
        steps_run[strength] = len(calls)
    # diffusers skips the first int(N - N * strength) steps (0.9 of 4 skips int(0.4) = 0)
    assert steps_run == {0.5: 2, 0.75: 3, 0.9: 4, 1.0: 4}
    assert not np.array_equal(images[0.5], images[0.9])
    # below strength 1 the init image shapes the result
    other = Image.fromarray(np.asarray(init)[:, ::-1].copy())
    g = gen.config.generation.model_copy(update={"strength": 0.5, "steps": 4})
    other_image = denoise(gen.components.pipeline, emb, g, [0], init_image=other)[0]
    assert not np.array_equal(images[0.5], np.asarray(other_image))


def test_batch_of_prompts_matches_single_calls(gen):
    g = gen.config.generation
    a, b = gen.encode("a house").embeddings, gen.encode("a red fox in the snow").embeddings
    batched = denoise(gen.components.pipeline, [a, b], g, [1, 2])
    single = [denoise(gen.components.pipeline, [e], g, [s])[0] for e, s in ((a, 1), (b, 2))]
    for x, y in zip(batched, single, strict=True):
        assert np.abs(np.asarray(x).astype(int) - np.asarray(y).astype(int)).max() <= 1


def test_low_memory_releases_the_text_encoder_before_the_dit_loads(zoo):
    cfg = load_config(overrides={"models.zimage": str(zoo / "zimage"), "models.low_memory": True})
    g = Generator(cfg)
    g.encode("x")
    assert "text_encoder" in g.components.loaded()
    g.components.stage("pipeline")
    _ = g.components.pipeline
    assert "text_encoder" not in g.components.loaded()
