"""Image dependence: settings the image cannot change are refused, every other reference-conditioned image is
measured against a noise probe and flagged when its caption rows do not depend on the image (conditioning.imagedep)."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from llm_dit.conditioning.imagedep import (
    PROBE_SEED,
    SHARE_FLOOR,
    SIZE_FLOOR,
    TOLERANCE,
    CaptionNorm,
    image_free_by_construction,
    measure,
    probe_image,
    share_and_size,
)
from llm_dit.conditioning.source import Reference, VLRows
from llm_dit.config.settings import VLConfig, load_config
from llm_dit.core.cache import TensorCache
from llm_dit.core.errors import UserError
from llm_dit.generation.assemble import build_conditioning, probe_key
from llm_dit.generation.generate import Generator
from llm_dit.maths.compose import Style, load_style
from llm_dit.models.vl import image_sha256
from llm_dit.sweep.dir import SweepDir

from ..conftest import REPO, tiny_config

IMAGES = REPO / "examples" / "reference-images"
REF = IMAGES / "purple_hexagon.png"
OTHER = IMAGES / "house2.png"
SMALL = ["--steps", "2", "--width", "64", "--height", "64", "--seed", "5"]
TINY = ["--models", "tiny", "--width", "32", "--height", "32", "--steps", "2"]

# Provably image-free (docs/methods.md §6.4), and combinations next to them that are not.
IMAGE_FREE = {
    "per_dim+adain_per_dim": {"normalize": "per_dim"},
    "hybrid_w1+adain_per_dim": {"normalize": "hybrid", "hybrid_weight": 1.0},
    "per_dim+gem_pool_p2": {"normalize": "per_dim", "blend": "gem_pool", "blend_options": {"p": 2}},
    "per_dim+one_weighted_layer": {"normalize": "per_dim", "layers": "-6:0.7"},
}
NOT_BY_CONSTRUCTION = {
    "none+adain_per_dim": {},
    "global+adain_per_dim": {"normalize": "global"},
    "hybrid_w0.5+adain_per_dim": {"normalize": "hybrid"},
    "per_dim_clip2+adain_per_dim": {"normalize": "per_dim", "clip_sigma": 2.0},
    "per_dim+two_layers": {"normalize": "per_dim", "layers": "-6:0.5,-2:0.5"},
    "per_dim+gem_pool_p3": {"normalize": "per_dim", "blend": "gem_pool"},
    "per_dim+interpolate": {"normalize": "per_dim", "blend": "interpolate"},
    "per_dim+adain": {"normalize": "per_dim", "blend": "adain"},
}


def rgb(path):
    return Image.open(path).convert("RGB")


@pytest.fixture(scope="module")
def gen(zoo):
    return Generator(tiny_config(zoo))


def with_vl(gen, **changes):
    """A generator with other `vl` settings sharing `gen`'s loaded models and cache."""
    return gen.with_config(gen.config.model_copy(update={"vl": gen.config.vl.model_copy(update=changes)}))


def measured(g, reference, other):
    """Share of the caption rows' change at alpha 0.3 (after the DiT's caption norm) that changes when `reference`
    is replaced by `other` (no refusal)."""
    cond, text = g.condition("a fox", reference)
    swapped = build_conditioning(g.components, g.config, "a fox", text, Reference(other))
    return measure(cond.at, swapped.at, cond.text, [0.3], "test", g.components.caption_norm)["share"]


# ------------------------------------------------------------------------------------------- the measure


# Rows of RMS 1 in D = 4: the caption norm with unit scale and eps 0 leaves them as they are.
R1, R2, R3, R4 = [1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]
EXACT = CaptionNorm(None, 0.0, "unit scale, eps 0")


def test_share_and_size_on_known_numbers():
    t = torch.tensor([R1, R2])  # f(T) = T, ‖f(T)‖ = √8
    c = torch.tensor([R3, R2])  # f(C) − f(T) = [1, −1, −1, −1]: ‖·‖ = 2, size = 2/√8
    p = torch.tensor([R4, R2])  # f(C) − f(C_probe) = [2, −2, 0, 0]: ‖·‖ = √8, share = √8/2
    assert share_and_size(c, p, t, EXACT) == pytest.approx((8**0.5 / 2, 2 / 8**0.5))
    # what the DiT sees: rescaling a row changes nothing after its RMSNorm
    assert share_and_size(
        torch.tensor([[6.0, 0, 0, 0], R2]), torch.tensor([R4, [0.5, -0.5, 0.5, -0.5]]), t * 7, EXACT
    ) == (
        pytest.approx(8**0.5 / 2),
        pytest.approx(2 / 8**0.5),
    )
    assert share_and_size(t, t, t, EXACT) == (0.0, 0.0)  # alpha 0: C = T for both
    # the learned scale g weighs the dimensions: g = [3, 1, 1, 1] makes f(C) − f(T) = [3, −1, −1, −1] (‖·‖ = √12),
    # ‖f(T)‖ = √(2·12), f(C) − f(C_probe) = [6, −2, 0, 0] (‖·‖ = √40)
    g = CaptionNorm(torch.tensor([3.0, 1.0, 1.0, 1.0]), 0.0, "g")
    assert share_and_size(c, p, t, g) == pytest.approx((40**0.5 / 12**0.5, 12**0.5 / 24**0.5))
    # eps: a row of mean square m is scaled by 1/√(m + eps), as the DiT's norm does
    assert CaptionNorm(None, 3.0, "eps 3")(torch.tensor([R3])) == pytest.approx(torch.tensor([[1.0, 0, 0, 0]]))
    # concat: T is zero-padded to C's rows (f(0) = 0), so the appended rows count in full
    appended, other = torch.cat([t, torch.tensor([R3])]), torch.cat([t, torch.tensor([R4])])
    assert share_and_size(appended, other, t, EXACT) == pytest.approx((8**0.5 / 2, 2 / 8**0.5))
    # fewer rows than T (replace): C is zero-padded, T's missing rows count in full
    assert share_and_size(t[:1], t[:1], t, EXACT) == pytest.approx((0.0, 2 / 8**0.5))


def test_measure_flags_each_floor_and_names_it():
    t = torch.tensor([R1, R2])
    c, p = torch.tensor([R3, R2]), torch.tensor([R4, R2])

    def rec(ref, probe, alphas=(0.3,)):
        return measure(ref, probe, t, list(alphas), "probe", EXACT)

    # share √2, size 0.707 at every alpha > 0 (C(α) = T + α(C − T) is not a rescale): image-dependent
    dep = rec(lambda a: t + a * (c - t), lambda a: t + a * (p - t), [0.0, 0.5, 1.0])
    assert dep["image_free"] is False and dep["below"] == [] and dep["reason"] is None
    assert dep["share"] == dep["relative_change"] and dep["share_floor"] == dep["tolerance"] == SHARE_FLOOR
    assert dep["size_floor"] == SIZE_FLOOR and dep["norm"] == {"eps": 0.0, "weight": "unit scale, eps 0"}
    assert dep["per_alpha"]["0"] == {"share": 0.0, "size": 0.0}
    assert dep["per_alpha"]["1"] == pytest.approx({"share": 8**0.5 / 2, "size": 2 / 8**0.5})
    assert dep["size"] == pytest.approx(dep["per_alpha"]["1"]["size"])
    # share floor: the probe gives (almost) the same rows
    dep = rec(lambda a: c, lambda a: c + 1e-6)
    assert dep["image_free"] is True and dep["below"] == ["share"] and dep["share"] < SHARE_FLOOR
    assert "share floor 0.005" in dep["reason"]
    # size floor: an image-dependent change (share > 1) at α = 1e-4. Row 1 of T + α(C − T) is
    # [1 + α, 1 − α, 1 − α, 1 − α], of mean square 1 − α + α²: after the norm it moves from R1 by
    # ≈ α·[1.5, −0.5, −0.5, −0.5] (‖·‖ = α√3), so size ≈ α√3/√8
    dep = rec(lambda a: t + 1e-4 * (c - t), lambda a: t + 1e-4 * (p - t))
    assert dep["image_free"] is True and dep["below"] == ["size"] and dep["share"] > 1
    assert dep["size"] == pytest.approx(1e-4 * 3**0.5 / 8**0.5, rel=1e-3) and "size floor 0.01" in dep["reason"]
    # above the size floor (α = 0.02: size ≈ 0.0122): image-dependent
    assert rec(lambda a: t + 0.02 * (c - t), lambda a: t + 0.02 * (p - t))["image_free"] is False
    # alpha 0 only: both floors, the reason says why
    dep = rec(lambda a: t, lambda a: t, [0.0])
    assert dep["image_free"] is True and set(dep["below"]) == {"size", "share"} and "alpha 0" in dep["reason"]
    # a probe with another row count: no share, the row count named
    dep = rec(lambda a: c, lambda a: torch.cat([c, torch.tensor([R4])]))
    assert dep["image_free"] is False and dep["share"] is None and "row count" in dep["reason"]


def test_a_change_that_only_rescales_rows_is_invisible_to_the_dit():
    """Issue 22.5: row-wise adain on zero-mean rows only rescales each row of T, which the DiT's caption RMSNorm
    undoes. On raw rows the probe changes the blend by a large share; after the norm the change is nil."""
    from llm_dit.maths.blend import blend

    gen = torch.Generator().manual_seed(0)
    t, v, w = (torch.randn(6, 32, generator=gen) for _ in range(3))
    t, v, w = (x - x.mean(1, keepdim=True) for x in (t, v, w))  # zero-mean rows
    c, p = blend(t, v, "adain", 0.5), blend(t, w, "adain", 0.5)
    raw = (c - p).norm() / (c - t).norm()
    assert raw > 0.1  # what the raw rows would say
    _, size = share_and_size(c, p, t, CaptionNorm(None, 1e-5, "unit"))
    assert size < 1e-4  # f(C) = f(T) up to eps: nothing reaches the DiT
    dep = measure(
        lambda a: blend(t, v, "adain", a),
        lambda a: blend(t, w, "adain", a),
        t,
        [0.5],
        "p",
        CaptionNorm(None, 1e-5, "u"),
    )
    assert dep["image_free"] is True and "size" in dep["below"]


def test_probe_is_seeded_noise_of_the_reference_size():
    a, b = probe_image((48, 32)), probe_image((48, 32))
    assert a.size == (48, 32) and a.mode == "RGB" and image_sha256(a) == image_sha256(b)
    assert image_sha256(probe_image((48, 32), PROBE_SEED + 1)) != image_sha256(a)
    pixels = np.asarray(a)
    assert 100 < pixels.mean() < 155 and pixels.std() > 60  # uniform noise, no structure of any reference


# ------------------------------------------------------------------------------ refusal by construction


@pytest.mark.parametrize("settings", IMAGE_FREE.values(), ids=IMAGE_FREE.keys())
def test_image_free_combinations_are_refused_before_any_model_loads(zoo, settings):
    assert image_free_by_construction(VLConfig(**settings)) is not None
    cfg = load_config(overrides={"models.zimage": str(zoo / "zimage"), "models.vl": str(zoo / "qwen3-vl")})
    g = Generator(cfg.model_copy(update={"vl": cfg.vl.model_copy(update=settings)}))
    with pytest.raises(UserError, match="image-free by construction"):
        g.prepare("a fox", rgb(REF))
    assert not g.components.loaded()


@pytest.mark.parametrize("settings", IMAGE_FREE.values(), ids=IMAGE_FREE.keys())
def test_what_the_predicate_refuses_is_measured_image_free(gen, settings):
    """The proof checked by measurement: two unrelated images give the same caption rows (float noise only)."""
    g = with_vl(gen, **settings)
    ref = rgb(REF)
    assert measured(g, ref, rgb(OTHER).resize(ref.size)) < 1e-5
    assert measured(g, ref, probe_image(ref.size)) < 1e-5


@pytest.mark.parametrize("settings", NOT_BY_CONSTRUCTION.values(), ids=NOT_BY_CONSTRUCTION.keys())
def test_near_misses_are_not_refused_and_depend_on_the_image(gen, settings):
    assert image_free_by_construction(VLConfig(**settings)) is None
    ref = rgb(REF)
    assert measured(with_vl(gen, **settings), ref, probe_image(ref.size)) > 10 * TOLERANCE


def test_cli_refuses_per_dim_with_adain_per_dim(cli, zoo, tmp_path):
    out = tmp_path / "x.png"
    r = cli("generate", "--models", "tiny", "-p", "a fox", "-i", REF, "--normalize", "per_dim", *SMALL, "-o", out)
    assert r.code == 2 and "image-free by construction" in r.err and "vl.normalize = per_dim" in r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_sweep_with_an_image_free_run_refuses_up_front(cli, zoo, tmp_path):
    out = tmp_path / "s"
    args = ["sweep", "--normalize", "none,per_dim", "-i", REF, "-p", "a fox", *TINY, "-o", out]
    r = cli(*args)
    assert r.code == 2 and "sweep run 'normalize=per_dim'" in r.err and "image-free by construction" in r.err
    assert "vl.normalize = per_dim" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (out / "results.jsonl").exists() and not (out / "spec.json").exists()
    r = cli(*args, "--dry-run")
    assert r.code == 2 and "sweep run 'normalize=per_dim'" in r.err
    # the same axis with a blend that reads V's rows is accepted
    assert cli(*args, "--blend", "interpolate", "--dry-run").code == 0


# ------------------------------------------------------------------------------------ measured and flagged


def test_image_free_run_that_is_not_so_by_construction_is_measured_and_flagged(cli, zoo, tmp_path):
    # hybrid weight 1 with a clip that never clips (|z| <= sqrt(n) < 1e6) is per_dim in effect, but the
    # predicate does not claim it: only the measurement can tell
    config = tmp_path / "c.toml"
    config.write_text('[default.vl]\nnormalize = "hybrid"\nhybrid_weight = 1.0\nclip_sigma = 1e6\n')
    out = tmp_path / "free.png"
    with pytest.warns(UserWarning, match="the image has no effect"):
        r = cli("generate", "--config", config, "--models", "tiny", "-p", "a fox", "-i", REF, *SMALL, "-o", out)
    assert r.code == 0, r.err
    dep = json.loads(out.with_suffix(".json").read_text())["image_dependence"]
    assert dep["checked"] is True and dep["image_free"] is True
    assert dep["relative_change"] == dep["share"] < 1e-5 and dep["tolerance"] == TOLERANCE
    assert dep["size"] > 10 * SIZE_FLOOR and dep["below"] == ["share"]
    assert dep["probe"] == f"uniform RGB noise 512x512, numpy PCG64 seed {PROBE_SEED}"
    assert "share floor" in dep["reason"]


def test_a_run_with_a_tiny_share_of_image_is_flagged_by_the_share_floor(gen):
    # hybrid with w = 0.999: 0.1 % global normalisation, the only part that sees the image (share ~1.2e-3 after
    # the norm), in a change of size ~0.16
    with pytest.warns(UserWarning, match="the image has no effect on this run: .*share floor"):
        p = with_vl(gen, normalize="hybrid", hybrid_weight=0.999).prepare("a fox", rgb(REF))
    dep = p.image_dependence
    assert dep["image_free"] is True and dep["below"] == ["share"] and dep["size"] > 10 * SIZE_FLOOR


def test_svd_style_at_full_rank_is_flagged(gen):
    # k >= min(n_v, D) makes s = mean(V) = the reference mean: image-free, known only once n_v is known
    g = with_vl(gen, normalize="per_dim", blend="svd_style", blend_options={"k": 100000})
    with pytest.warns(UserWarning, match="the image has no effect"):
        p = g.prepare("a fox", rgb(REF))
    assert p.image_dependence["image_free"] is True and p.image_dependence["relative_change"] < 1e-5


def test_normal_combination_is_image_dependent_with_its_change_recorded(cli, zoo, tmp_path):
    out = tmp_path / "dep.png"
    r = cli("generate", "--models", "tiny", "-p", "a fox", "-i", REF, *SMALL, "-o", out)
    assert r.code == 0, r.err
    dep = json.loads(out.with_suffix(".json").read_text())["image_dependence"]
    assert dep["checked"] is True and dep["image_free"] is False
    assert dep["relative_change"] > 0.1 and dep["reason"] is None


def test_interpolate_after_per_dim_normalisation_depends_on_the_image(gen):
    p = with_vl(gen, normalize="per_dim", blend="interpolate").prepare("a fox", rgb(REF))
    assert p.image_dependence["image_free"] is False and p.image_dependence["relative_change"] > 0.1


def test_alpha_zero_is_image_free_and_says_why(gen):
    with pytest.warns(UserWarning, match="no effect"):
        p = with_vl(gen, alpha=0.0).prepare("a fox", rgb(REF))
    dep = p.image_dependence
    assert dep["image_free"] is True and dep["relative_change"] == 0.0 and "alpha 0" in dep["reason"]


def test_a_schedule_is_measured_at_every_alpha_it_uses(gen):
    p = with_vl(gen, alpha_schedule="linear:0.0,0.6").prepare("a fox", rgb(REF))
    dep = p.image_dependence
    assert set(dep["per_alpha"]) == {"0", "0.6"} and dep["per_alpha"]["0"] == {"share": 0.0, "size": 0.0}
    assert dep["share"] == dep["per_alpha"]["0.6"]["share"] > 0.1 and dep["image_free"] is False
    assert dep["size"] == dep["per_alpha"]["0.6"]["size"] > 10 * SIZE_FLOOR


def test_probe_goes_through_the_cache_and_the_switch_turns_it_off(gen, tmp_path):
    ref = rgb(IMAGES / "sunset.png")
    g = Generator(gen.config, TensorCache(tmp_path / "cache"))
    g.prepare("a lighthouse", ref)
    assert g.components.forward_passes()["vl"] == 2  # the reference and the probe
    g.prepare("a lighthouse", ref)
    assert g.components.forward_passes()["vl"] == 2  # both from the cache
    off_config = gen.config.model_copy(update={"vl": gen.config.vl.model_copy(update={"image_check": False})})
    off = Generator(off_config, TensorCache(tmp_path / "cache2"))
    p = off.prepare("a lighthouse", ref)
    assert off.components.forward_passes()["vl"] == 1
    assert p.image_dependence["checked"] is False and "vl.image_check" in p.image_dependence["reason"]


def test_a_reference_equal_to_the_probe_is_checked_against_another_probe(gen):
    ref = probe_image((64, 64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = gen.prepare("a fox", ref)
    assert not [w for w in caught if "no effect" in str(w.message)]
    assert p.image_dependence["probe"].endswith(f"seed {PROBE_SEED + 1}")
    assert p.image_dependence["image_free"] is False


def test_runs_without_a_reference_are_not_checked(gen):
    for source in (None, VLRows(gen.extract(rgb(REF), "a fox")[0])):
        dep = gen.prepare("a fox", source).image_dependence
        assert dep["checked"] is False and dep["image_free"] is None and dep["reason"]


# ----------------------------------------------------------------------------------------------- sweeps


def test_sweep_plans_one_probe_per_size_and_records_the_check(cli, zoo, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    rgb(REF).resize((64, 64)).save(a)
    rgb(OTHER).resize((64, 64)).save(b)
    args = ["--alphas", "0.3,0.6", "-i", a, "-i", b, "-p", "a tower", *TINY]
    r = cli("sweep", *args, "-o", tmp_path / "x", "--dry-run", "--json")
    assert r.code == 0, r.err
    work = json.loads(r.out)
    assert len(work["unique_extractions"]) == 2 and len(work["probe_extractions"]) == 1  # same size: one probe
    assert work["probe_extractions"][0]["probe"] == [64, 64]
    out = tmp_path / "s"
    assert cli("sweep", *args, "-o", out).code == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["vl_forward_passes"] == 3 and summary["plan"]["probe_extractions"] == 1
    rows = SweepDir(out).lines()
    for x in rows:
        dep = x.record["image_dependence"]
        if x.kind == "variant":
            assert dep["checked"] is True and dep["image_free"] is False and dep["relative_change"] > 0
        else:
            assert dep["checked"] is False


# ----------------------------------------------------------------- the DiT's caption norm (issue 22.5)


def rows_for_the_norm(width: int) -> torch.Tensor:
    """Rows where eps matters and where it does not: ordinary rows, a row of mean square ~1e-8 (< eps), zeros."""
    x = torch.randn(6, width, generator=torch.Generator().manual_seed(1)) * 3
    x[1] *= 1e-4
    x[2] = 0
    return x


def learned(transformer):
    """`transformer` with a learned-looking caption-norm scale (the tiny zoo's is all ones)."""
    with torch.no_grad():
        g = torch.rand(transformer.cap_embedder[0].weight.shape, generator=torch.Generator().manual_seed(2))
        transformer.cap_embedder[0].weight.copy_(0.25 + 2 * g)
    return transformer


@pytest.fixture(scope="module")
def dits(zoo, tmp_path_factory):
    """The tiny DiT with a learned caption-norm scale as a Z-Image folder (one file and sharded) and as single
    files in the original layout (`model.diffusion_model.` safetensors, GGUF Q8_0); and the module itself."""
    from diffusers import ZImageTransformer2DModel

    from ..checkpoints import to_original, write_gguf

    dit = learned(ZImageTransformer2DModel.from_pretrained(zoo / "zimage", subfolder="transformer"))
    out = tmp_path_factory.mktemp("norm")
    for name, shard in (("folder", "10GB"), ("sharded", "100KB")):
        folder = out / name
        folder.mkdir()
        for part in (zoo / "zimage").iterdir():
            if part.name != "transformer":
                (folder / part.name).symlink_to(part)
        dit.save_pretrained(folder / "transformer", max_shard_size=shard)
    orig = to_original(dit.state_dict())
    save_file({"model.diffusion_model." + k: v for k, v in orig.items()}, out / "comfy.safetensors")
    write_gguf(orig, out / "dit_Q8_0.gguf")
    save_file({k: v for k, v in orig.items() if "cap_embedder" not in k}, out / "no_norm.safetensors")
    return out, dit


def test_the_caption_norm_is_the_dits_cap_embedder_norm(zoo):
    """Same function as the loaded DiT's `cap_embedder[0]`, eps included, on the tiny zoo."""
    from diffusers import ZImageTransformer2DModel

    from llm_dit.generation.components import caption_norm

    dit = ZImageTransformer2DModel.from_pretrained(zoo / "zimage", subfolder="transformer")
    norm = caption_norm(str(zoo / "zimage"))
    assert norm.eps == dit.cap_embedder[0].eps == 1e-5 and norm.source.startswith("cap_embedder.0.weight of ")
    x = rows_for_the_norm(norm.weight.numel())
    with torch.no_grad():
        assert torch.equal(norm(x), dit.cap_embedder[0](x))
        # eps matters for the small row: without it the row would be scaled to RMS 1
        assert norm(x)[1].pow(2).mean() < 0.01 and CaptionNorm(None, 0.0, "")(x)[1].pow(2).mean() > 0.99


@pytest.mark.parametrize("layout", ["folder", "sharded", "comfy.safetensors", "dit_Q8_0.gguf"])
def test_the_learned_scale_is_read_from_every_checkpoint_layout(zoo, dits, layout):
    from llm_dit.generation.components import caption_norm
    from llm_dit.models.loading import load_transformer

    out, dit = dits
    if layout in ("folder", "sharded"):
        norm = caption_norm(str(out / layout))
    else:
        norm = caption_norm(str(zoo / "zimage"), str(out / layout))
        dit = load_transformer(str(out / layout), str(zoo / "zimage"), torch.float32)
    assert layout in norm.source and norm.weight.std() > 0.1  # not the unit scale
    x = rows_for_the_norm(norm.weight.numel())
    with torch.no_grad():
        assert torch.allclose(norm(x), dit.cap_embedder[0](x), rtol=1e-6, atol=1e-7)


def test_a_checkpoint_without_the_norm_falls_back_to_unit_scale_and_says_so(zoo, dits, tmp_path):
    from llm_dit.generation.components import caption_norm

    out, _ = dits
    norm = caption_norm(str(zoo / "zimage"), str(out / "no_norm.safetensors"))
    assert norm.weight is None and norm.source.startswith("unit scale (fallback:") and "no_norm" in norm.source
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert caption_norm(str(zoo / "zimage"), str(bad)).source.startswith("unit scale (fallback: cannot read")


def test_the_record_names_the_norm_and_reading_it_loads_no_dit(gen):
    dep = with_vl(gen).prepare("a fox", rgb(REF)).image_dependence
    assert dep["norm"]["eps"] == 1e-5 and dep["norm"]["weight"].startswith("cap_embedder.0.weight of ")
    assert "pipeline" not in gen.components.loaded()
    assert gen.components.caption_norm is gen.components.caption_norm  # read once per components


def test_a_tiny_alpha_is_below_the_size_floor_and_flagged_through_the_cli(cli, zoo, tmp_path):
    """Issue 22.5: alpha 1e-4 changes the image by at most one level of 255 (SSIM 0.9999998), yet its share is
    the same as at alpha 0.3; the size floor flags it. Alpha 0.3 is far above the floor."""
    tiny, normal = tmp_path / "tiny.png", tmp_path / "normal.png"
    with pytest.warns(UserWarning, match="the image has no effect on this run: .*size floor"):
        r = cli("generate", "--models", "tiny", "-p", "a fox", "-i", REF, "--alpha", "0.0001", *SMALL, "-o", tiny)
    assert r.code == 0, r.err
    dep = json.loads(tiny.with_suffix(".json").read_text())["image_dependence"]
    assert dep["image_free"] is True and dep["below"] == ["size"] and dep["size"] < SIZE_FLOOR / 10
    assert dep["share"] > 0.1 and dep["size_floor"] == SIZE_FLOOR and "size floor" in dep["reason"]
    assert (
        cli("generate", "--models", "tiny", "-p", "a fox", "-i", REF, "--alpha", "0.3", *SMALL, "-o", normal).code == 0
    )
    dep = json.loads(normal.with_suffix(".json").read_text())["image_dependence"]
    assert dep["image_free"] is False and dep["below"] == [] and dep["size"] > 10 * SIZE_FLOOR


def test_a_sweep_flags_its_tiny_alpha_run_only(cli, zoo, tmp_path):
    from llm_dit.report.grid import image_free

    out = tmp_path / "s"
    r = cli("sweep", "--alphas", "0.0001,0.3", "-i", REF, "-p", "a tower", *TINY, "-o", out)
    assert r.code == 0, r.err
    flags = {x.settings["vl.alpha"]: image_free(x) for x in SweepDir(out).lines() if x.kind == "variant"}
    assert flags == {0.0001: True, 0.3: False}


# ------------------------------------------------- image-free by construction, every source (issue 22.6)


def test_style_extract_refuses_image_free_settings(cli, zoo, tmp_path):
    """Issue 22.6: such files differed by ≤ 5.6e-9 across unrelated images."""
    out = tmp_path / "s.safetensors"
    for extra in (
        ["--normalize", "per_dim"],
        ["--normalize", "per_dim", "--blend", "gem_pool", "--blend-option", "p=2"],
    ):
        r = cli("style", "extract", "--models", "tiny", *extra, "-i", REF, "-o", out)
        assert r.code == 2 and "image-free by construction" in r.err and "vl.normalize = per_dim" in r.err, r.err
        assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1 and not out.exists()
    # the same extraction with a blend that reads the rows is made, and records what the rule reads
    r = cli("style", "extract", "--models", "tiny", "--normalize", "per_dim", "--blend", "adain", "-i", REF, "-o", out)
    assert r.code == 0, r.err
    assert load_style(str(out)).settings["clip_sigma"] is None


def test_given_vl_rows_extracted_per_dim_are_refused_with_a_moment_only_blend(cli, zoo, tmp_path):
    rows, out = tmp_path / "rows.safetensors", tmp_path / "x.png"
    assert cli("extract", "--models", "tiny", "--normalize", "per_dim", "-i", REF, "-t", "a fox", "-o", rows).code == 0
    r = cli("generate", "--models", "tiny", "-p", "a fox", "--vl-embeddings", rows, *SMALL, "-o", out)
    assert r.code == 2 and "image-free by construction" in r.err and "given VL rows" in r.err, r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".json").exists()
    # the same rows with a blend that reads them
    r = cli(
        "generate",
        "--models",
        "tiny",
        "-p",
        "a fox",
        "--vl-embeddings",
        rows,
        "--blend",
        "interpolate",
        *SMALL,
        "-o",
        out,
    )
    assert r.code == 0, r.err
    dep = json.loads(out.with_suffix(".json").read_text())["image_dependence"]
    assert dep["checked"] is False and "not image-free by construction" in dep["reason"]


def test_a_style_file_that_is_image_free_is_refused_when_applied(cli, zoo, tmp_path):
    """A file made before the extraction refused (here: a none-normalised file relabelled per_dim, as such a file
    would read) is refused by generate and by a sweep, nothing written."""
    from llm_dit.core.files import load_tensors, save_tensors

    made, style, out = tmp_path / "made.safetensors", tmp_path / "old.safetensors", tmp_path / "x.png"
    assert cli("style", "extract", "--models", "tiny", "-i", REF, "-t", "a fox", "-o", made).code == 0
    tensors, meta = load_tensors(made)
    meta["settings"] |= {"normalize": "per_dim"}
    save_tensors(style, tensors, meta)
    r = cli(
        "generate", "--models", "tiny", "-p", "a fox", "--style", style, "--normalize", "per_dim", *SMALL, "-o", out
    )
    assert r.code == 2 and "image-free by construction" in r.err and f"style file {style}" in r.err, r.err
    assert not out.exists() and len(r.err.strip().splitlines()) == 1
    sweep = tmp_path / "s"
    r = cli("sweep", "--style", style, "--normalize", "per_dim", "--alphas", "0.3", "-p", "a fox", *TINY, "-o", sweep)
    assert r.code == 2 and "image-free by construction" in r.err, r.err
    assert not (sweep / "results.jsonl").exists()


@pytest.mark.parametrize("settings", IMAGE_FREE.values(), ids=IMAGE_FREE.keys())
def test_every_source_follows_the_one_rule(settings):
    """`source_image_free` judges a reference by the run's settings, given rows by their file's extraction
    settings with the run's blend, a style file by its own settings and mode: one rule, one wording."""
    from llm_dit.conditioning.imagedep import source_image_free
    from llm_dit.conditioning.source import Styled

    vl = VLConfig(**settings)
    reason = image_free_by_construction(vl)
    assert source_image_free(vl, Reference(probe_image((8, 8)))) == reason
    # rows extracted with these settings, used with the run's blend (the run's own normalisation does not act)
    layers = {"-6": 0.7} if vl.layers else {"-6": 1.0}
    extraction = {
        "settings": {"normalization": vl.normalize, "clip_sigma": None, "hybrid_weight": vl.hybrid_weight},
        "layer_weights": layers,
    }
    run = vl.model_copy(update={"normalize": "none", "layers": None})
    rows = torch.zeros(2, 4)
    assert source_image_free(run, VLRows(rows, extraction=extraction)).endswith(reason)
    assert source_image_free(run, VLRows(rows)) is None  # unknown origin: not judged (and recorded as such)
    assert (
        source_image_free(run.model_copy(update={"blend": "interpolate"}), VLRows(rows, extraction=extraction)) is None
    )
    # a style file made with these settings, applied whatever the run says
    style = Style(
        vl.blend,
        (({}, 1.0),),
        {"mode": vl.blend, "normalize": vl.normalize, "layers": layers, "adapter": None}
        | {"hybrid_weight": vl.hybrid_weight, "clip_sigma": None}
        | ({"p": vl.blend_options["p"]} if "p" in vl.blend_options else {}),
    )
    assert source_image_free(run, Styled([(style, 1.0)], ["a.safetensors"])).endswith(reason)
    clipped = Style(style.mode, style.parts, style.settings | {"clip_sigma": 2.0})
    assert source_image_free(run, Styled([(clipped, 1.0)], ["a.safetensors"])) is None


ROW_SHAPING = [
    {"normalize": "global"},
    {"normalize": "hybrid", "hybrid_weight": 0.3},
    {"normalize": "per_dim", "clip_sigma": 3.0},
    {"hidden_layer": -2},
    {"layers": "-2:0.5,-6:0.5"},
    {"token_mode": "image_only"},
    {"max_pixels": 64 * 64},
    {"outlier_masking": "zero"},
    {"outlier_masking": "zero", "outlier_threshold": 3.0},
    {"system_prompt": "You describe images."},
    {"sink_ratio": 30.0},
    {"sink_rows": "include"},
]


@pytest.mark.parametrize("change", ROW_SHAPING, ids=lambda c: ",".join(c))
def test_a_setting_that_shapes_the_probe_rows_is_not_served_from_the_memo(gen, change):
    g = gen.with_config(gen.config.model_copy())
    g.components._probe_rows.clear()
    g.prepare("a fox", rgb(REF))
    changed = with_vl(g, **change)
    before = probe_key(g.config.vl, probe_image((512, 512)), "a fox")
    assert probe_key(changed.config.vl, probe_image((512, 512)), "a fox") != before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some of these settings make a run image-free
        changed.prepare("a fox", rgb(REF))
    assert len(g.components._probe_rows) == 2  # a miss: a second entry


def test_the_probe_key_ignores_alpha_blend_and_adapter_but_not_the_image_or_text(gen):
    vl, probe = gen.config.vl, probe_image((512, 512))
    key = probe_key(vl, probe, "a fox")
    for change in ({"alpha": 0.7}, {"alpha_schedule": "linear:0.1:0.9"}, {"blend": "adain"}, {"blend_options": {}}):
        assert probe_key(vl.model_copy(update=change), probe, "a fox") == key
    assert probe_key(vl, probe, "a cat") != key
    assert probe_key(vl, probe_image((512, 256)), "a fox") != key


def test_probe_rows_from_the_memo_give_the_same_record_and_image(zoo):
    # two runs that differ only in alpha: the second one's probe rows come from the memo; a fresh generator
    # (empty memo, no tensor cache) makes them anew
    cfg = tiny_config(zoo)
    at = {a: cfg.model_copy(update={"vl": cfg.vl.model_copy(update={"alpha": a})}) for a in (0.6, 0.3)}
    warm = Generator(at[0.6], cache=False)
    warm.prepare("a fox", rgb(REF))
    passes = warm.components.forward_passes()["vl"]
    served = warm.with_config(at[0.3])
    fresh = Generator(at[0.3], cache=False)
    a, b = served.prepare("a fox", rgb(REF)), fresh.prepare("a fox", rgb(REF))
    assert warm.components.forward_passes()["vl"] - passes == 1  # the reference's pass only: the probe's was kept
    assert fresh.components.forward_passes()["vl"] == 2
    assert a.image_dependence == b.image_dependence and a.image_dependence["checked"] is True
    assert torch.equal(a.first, b.first)
    ra, rb = served.render([a])[0], fresh.render([b])[0]
    assert np.array_equal(np.asarray(ra.image), np.asarray(rb.image))
    assert ra.record["image_dependence"] == rb.record["image_dependence"]
