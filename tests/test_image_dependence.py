"""Image dependence: settings the image cannot change are refused, every other reference-conditioned image is
measured against a noise probe and flagged when its caption rows do not depend on the image (llm_dit.imagedep)."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from llm_dit.assemble import build_conditioning
from llm_dit.cache import TensorCache
from llm_dit.condition import Reference, VLRows
from llm_dit.config import VLConfig, load_config
from llm_dit.errors import UserError
from llm_dit.generate import Generator
from llm_dit.imagedep import (
    PROBE_SEED,
    TOLERANCE,
    image_free_by_construction,
    measure,
    probe_image,
    relative_change,
)
from llm_dit.sweepdir import SweepDir
from llm_dit.vl import image_sha256

from .conftest import REPO, tiny_config

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
    """Relative change of the caption rows at alpha 0.3 when `reference` is replaced by `other` (no refusal)."""
    cond, text = g.condition("a fox", reference)
    swapped = build_conditioning(g.components, g.config, "a fox", text, Reference(other))
    return measure(cond.at, swapped.at, cond.text, [0.3], "test")["relative_change"]


# ------------------------------------------------------------------------------------------- the measure


def test_relative_change_on_known_numbers():
    t = torch.zeros(2, 2)
    c = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # ‖C − T‖ = 5
    p = torch.tensor([[3.0, 0.0], [0.0, 3.0]])  # ‖C − C_probe‖ = 1
    assert relative_change(c, p, t) == pytest.approx(0.2)
    assert relative_change(t, t, t) == 0.0  # alpha 0: C = T for both
    # concat: T is zero-padded to C's rows, so the appended rows count in full
    appended = torch.cat([t, torch.tensor([[0.0, 2.0]])])
    assert relative_change(appended, torch.cat([t, torch.tensor([[0.0, 1.0]])]), t) == pytest.approx(0.5)
    rec = measure(lambda a: c * a, lambda a: p * a, t, [0.0, 0.5, 1.0], "probe")
    assert rec["relative_change"] == pytest.approx(0.2) and rec["image_free"] is False
    assert rec["per_alpha"] == pytest.approx({"0": 0.0, "0.5": 0.2, "1": 0.2})
    rec = measure(lambda a: c, lambda a: c + 1e-5, t, [0.3], "probe")
    assert rec["image_free"] is True and rec["relative_change"] < TOLERANCE and "tolerance" in rec["reason"]
    rec = measure(lambda a: c, lambda a: appended, t, [0.3], "probe")
    assert rec["image_free"] is False and rec["relative_change"] is None and "row count" in rec["reason"]


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
    assert r.code == 2 and "vl.normalize=per_dim" in r.err and "image-free by construction" in r.err
    assert not (out / "results.jsonl").exists() and not (out / "spec.json").exists()
    r = cli(*args, "--dry-run")
    assert r.code == 2 and "vl.normalize=per_dim" in r.err
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
    assert dep["relative_change"] < 1e-5 and dep["tolerance"] == TOLERANCE
    assert dep["probe"] == f"uniform RGB noise 512x512, numpy PCG64 seed {PROBE_SEED}"
    assert "within the tolerance" in dep["reason"]


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
    assert set(dep["per_alpha"]) == {"0", "0.6"} and dep["per_alpha"]["0"] == 0.0
    assert dep["relative_change"] == dep["per_alpha"]["0.6"] > 0.1 and dep["image_free"] is False


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
        dep = x["record"]["image_dependence"]
        if x["kind"] == "variant":
            assert dep["checked"] is True and dep["image_free"] is False and dep["relative_change"] > 0
        else:
            assert dep["checked"] is False
