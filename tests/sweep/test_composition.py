"""Composition end to end (issue 14): several weighted references in generate and sweep, negative references,
style files, and the composability preset, on the tiny zoo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from llm_dit.conditioning.source import Reference, Styled
from llm_dit.core.errors import UserError
from llm_dit.core.files import load_tensors, save_tensors
from llm_dit.generation.generate import Generator
from llm_dit.generation.tasks import style_extract_file
from llm_dit.maths.blend import BLEND_MODES
from llm_dit.maths.compose import combine_styles, load_style, load_styles
from llm_dit.models.zoo import zoo_dir
from llm_dit.sweep.dir import SweepDir

from ..conftest import REPO, tiny_config

IMAGES = REPO / "examples" / "reference-images"
TINY = ["--models", "tiny", "--width", "32", "--height", "32", "--steps", "1"]


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three small reference images (64x64: one probe size)."""
    root = tmp_path_factory.mktemp("refs")
    out = {}
    for name, file in (("a", "house2.png"), ("b", "sunset.png"), ("c", "purple_hexagon.png")):
        out[name] = root / f"{name}.png"
        Image.open(IMAGES / file).convert("RGB").resize((64, 64)).save(out[name])
    return out


def rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def test_one_reference_of_weight_one_gives_the_same_rows_as_reference_image(zoo, refs):
    gen = Generator(tiny_config(zoo, **{"vl.blend": "adain_per_dim"}))
    single, _ = gen.condition("a fox", Reference(rgb(refs["a"])))
    listed, _ = gen.condition("a fox", Reference([rgb(refs["a"])], weights=[1.0]))
    pair, _ = gen.condition("a fox", Reference([rgb(refs["a"]), rgb(refs["b"])], weights=[0.5, 0.5]))
    assert torch.equal(single.at(0.6), listed.at(0.6))
    assert not torch.allclose(single.at(0.6), pair.at(0.6))
    assert [r["weight"] for r in pair.record["references"]] == [0.5, 0.5]
    assert "vl" in single.record and "vl" not in pair.record  # several references: each in `references`


def test_generate_takes_several_references_and_records_each_with_hash_and_weight(cli, refs, tmp_path):
    out = tmp_path / "g.png"
    args = ["-p", "a fox", "-i", refs["a"], "-i", refs["b"], "--reference-weights", "1.5,-0.5", "-o", out]
    r = cli("generate", *TINY, *args)
    assert r.code == 0, r.err
    record = json.loads(out.with_suffix(".json").read_text())
    used = record["conditioning"]["references"]
    assert [u["weight"] for u in used] == [1.5, -0.5] and len({u["sha256"] for u in used}) == 2
    files = record["inputs"]["reference_images"]
    assert [Path(f["path"]).name for f in files] == ["a.png", "b.png"] and [f["weight"] for f in files] == [1.5, -0.5]
    dep = record["image_dependence"]
    assert dep["checked"] and dep["image_free"] is False and "each of the 2 references" in dep["probe"]


@pytest.mark.parametrize(
    ("weights", "message"),
    [("0.5", "1 weight"), ("0,0", "all zero"), ("1,nan", "not finite"), ("1,abc", "bad --reference-weights")],
)
def test_bad_reference_weights_are_one_line_errors_and_write_nothing(cli, refs, tmp_path, weights, message):
    out = tmp_path / "g.png"
    r = cli("generate", *TINY, "-p", "x", "-i", refs["a"], "-i", refs["b"], "--reference-weights", weights, "-o", out)
    assert r.code == 2 and message in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1 and not out.exists() and not out.with_suffix(".json").exists()


def test_multi_reference_sweep_runs_one_vl_pass_per_unique_reference(cli, refs, tmp_path):
    a, b, c = (str(refs[k]) for k in "abc")
    out = tmp_path / "s"
    args = ["-p", "a composed tower", "-i", f"{a}+{b}", "-i", f"{a}+{c}", "--reference-weights", "0.5,0.5;1.5,-0.5"]
    r = cli("sweep", *TINY, *args, "--alphas", "0.3,0.6", "--dry-run", "--json")
    assert r.code == 0, r.err
    work = json.loads(r.out)
    assert len(work["unique_extractions"]) == 3 and len(work["probe_extractions"]) == 1
    assert work["runs"] == 1 + 2 * 2 * 2  # one shared baseline; 2 sets x 2 weight lists x 2 alphas
    r = cli("sweep", *TINY, *args, "--alphas", "0.3,0.6", "-o", out)
    assert r.code == 0, r.err
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["completed"] == 9 and summary["vl_forward_passes"] == 3 + 1  # three references and one probe
    variants = [x for x in SweepDir(out).lines() if x.kind == "variant"]
    assert {tuple(x.reference_weights) for x in variants} == {(0.5, 0.5), (1.5, -0.5)}
    for x in variants:
        used = x.record["conditioning"]["references"]
        assert [u["weight"] for u in used] == x.reference_weights
    assert Image.open(out / "grid.png").size[1] > 0


def test_sweep_refuses_weights_that_do_not_fit_a_reference_set(cli, refs, tmp_path):
    a, b = str(refs["a"]), str(refs["b"])
    r = cli("sweep", *TINY, "-p", "x", "-i", f"{a}+{b}", "--reference-weights", "1,2,3", "-o", tmp_path / "s")
    assert r.code == 2 and "3 weight(s) for 2 reference(s)" in r.err and not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------ negative references


def test_negative_image_builds_the_cfg_negative_rows_from_a_reference_blend(zoo, refs):
    gen = Generator(tiny_config(zoo, **{"generation.guidance": 2.0, "vl.blend": "adain_per_dim", "vl.alpha": 0.5}))
    plain = gen.prepare("a fox", rgb(refs["a"]))
    away_b = gen.prepare("a fox", rgb(refs["a"]), negative=rgb(refs["b"]))
    away_c = gen.prepare("a fox", rgb(refs["a"]), negative=rgb(refs["c"]))
    empty = gen.encode("").embeddings
    assert torch.equal(plain.negative, empty)  # no negative image: the empty prompt's rows, as before
    assert away_b.negative.shape == empty.shape and not torch.allclose(away_b.negative, empty)
    assert not torch.allclose(away_b.negative, away_c.negative)  # the rows depend on the negative image
    assert torch.equal(away_b.first, plain.first)  # the positive rows are untouched
    negative = away_b.conditioning.record["negative"]
    assert negative["source"] == "reference" and negative["alpha"] == 0.5 and len(negative["references"]) == 1


def test_negative_image_without_guidance_is_refused(cli, refs, tmp_path):
    out = tmp_path / "n.png"
    r = cli("generate", *TINY, "-p", "x", "-i", refs["a"], "--negative-image", refs["b"], "-o", out)
    assert r.code == 2 and "--guidance" in r.err and len(r.err.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_a_sweep_with_a_negative_image_equals_generate_and_its_baseline_keeps_the_empty_prompt(cli, refs, tmp_path):
    """`sweep --negative-image`: every reference run's image equals `generate --negative-image` with the same
    settings, its record names the negative image; the text-only baseline (the comparison) has none."""
    base = [*TINY, "--guidance", "2", "--blend", "adain_per_dim", "-p", "a fox", "-i", refs["a"]]
    out = tmp_path / "s"
    r = cli("sweep", *base, "--negative-image", refs["b"], "--alphas", "0.3,0.6", "-o", out)
    assert r.code == 0, r.err
    lines = SweepDir(out).lines()
    variants = [x for x in lines if x.kind == "variant"]
    [baseline] = [x for x in lines if x.kind == "baseline"]
    assert len(variants) == 2 and all(x.status == "ok" for x in lines)
    assert baseline.negative_image is None and baseline.record["conditioning"].get("negative") is None
    for x in variants:
        assert x.negative_image == str(refs["b"]) and x.record["conditioning"]["negative"]["source"] == "reference"
    alpha = variants[1].settings["vl.alpha"]
    single = tmp_path / "g.png"
    r = cli("generate", *base, "--negative-image", refs["b"], "--alpha", str(alpha), "-o", single)
    assert r.code == 0, r.err
    assert rgb(single).tobytes() == rgb(out / variants[1].output).tobytes()
    plain = tmp_path / "plain.png"
    assert cli("generate", *base, "--alpha", str(alpha), "-o", plain).code == 0
    assert rgb(single).tobytes() != rgb(plain).tobytes()  # the negative image acted


def test_a_sweep_refuses_a_negative_image_it_cannot_use_before_any_run(cli, refs, tmp_path):
    for args, message in (
        (["-i", refs["a"]], "--guidance"),  # CFG off
        (["--guidance", "2"], "no run has one"),  # no reference run
    ):
        out = tmp_path / message.strip("-").replace(" ", "_")
        r = cli("sweep", *TINY, "-p", "x", *args, "--negative-image", refs["b"], "-o", out)
        assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
        assert not out.exists()


# -------------------------------------------------------------------------------------------------- style files


MODES = [m for m in BLEND_MODES if m != "linear"]  # `linear` is `interpolate` under another name


def test_a_style_file_from_an_image_applied_at_scale_one_equals_conditioning_on_that_image(zoo, refs, tmp_path):
    """Every mode: the file holds what the mode transfers (rows, moments, a style vector, whitened rows or the
    delta rows), extracted with the prompt as text, so applying it at scale 1 gives the same caption rows."""
    for mode in MODES:
        cfg = tiny_config(zoo, **{"vl.blend": mode})
        neutral = refs["c"] if mode == "style_delta" else None
        file = tmp_path / f"{mode}.safetensors"
        style_extract_file(cfg, refs["a"], file, neutral=neutral, text="a fox")
        gen = Generator(cfg)
        alpha = 1.0 if mode == "replace" else 0.5
        by_image, _ = gen.condition("a fox", Reference(rgb(refs["a"]), rgb(neutral) if neutral else None))
        by_file, _ = gen.condition("a fox", Styled(*load_styles([file])))
        assert torch.equal(by_image.at(alpha), by_file.at(alpha)), mode
        if mode == "style_delta":  # the delta is rescaled to T's std: a lone scale would not act, so it is refused
            with pytest.raises(UserError, match="acts only through its sign"):
                gen.condition("a fox", Styled(*load_styles([f"{file}:0.5"])))
            continue
        scaled, _ = gen.condition("a fox", Styled(*load_styles([f"{file}:0.5"])))
        assert not torch.equal(scaled.at(alpha), by_file.at(alpha)), f"{mode}: scale 0.5 had no effect"


def test_style_extract_and_combine_round_trip_through_the_cli(cli, refs, tmp_path):
    a, b, c = (tmp_path / f"{k}.safetensors" for k in "abc")
    for image, out in ((refs["a"], a), (refs["b"], b)):
        r = cli(
            "style", "extract", "--models", "tiny", "--blend", "adain_per_dim", "-i", image, "-t", "a fox", "-o", out
        )
        assert r.code == 0, r.err
    assert cli("style", "combine", f"{a}:0.6", f"{b}:0.4", "-o", c).code == 0
    combined = load_style(c)
    assert combined.mode == "adain_per_dim" and [s["weight"] for s in combined.sources] == [0.6, 0.4]
    expected = combine_styles([(load_style(a), 0.6), (load_style(b), 0.4)])
    for name in ("mean", "std"):
        assert torch.equal(combined.parts[0][0][name], expected.parts[0][0][name])
    # applying the combined file is conditioning on the two images with those weights
    gen = Generator(tiny_config(zoo_dir("tiny"), **{"vl.blend": "adain_per_dim"}))
    by_images, _ = gen.condition("a fox", Reference([rgb(refs["a"]), rgb(refs["b"])], weights=[0.6, 0.4]))
    by_file, _ = gen.condition("a fox", Styled(*load_styles([c])))
    assert torch.equal(by_images.at(0.3), by_file.at(0.3))
    out = tmp_path / "g.png"
    r = cli("generate", *TINY, "--blend", "adain_per_dim", "-p", "a fox", "--style", f"{c}:0.8", "-o", out)
    assert r.code == 0, r.err
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["conditioning"]["source"] == "style" and record["conditioning"]["styles"][0]["scale"] == 0.8
    assert record["inputs"]["styles"][0]["scale"] == 0.8


def test_style_files_of_other_settings_are_refused_and_nothing_is_written(cli, refs, tmp_path):
    six, two = tmp_path / "six.safetensors", tmp_path / "two.safetensors"
    base = ["style", "extract", "--models", "tiny", "--blend", "adain_per_dim", "-i", refs["a"]]
    assert cli(*base, "-o", six).code == 0 and cli(*base, "--vl-layer", "-2", "-o", two).code == 0
    r = cli("style", "combine", f"{six}:0.5", f"{two}:0.5", "-o", tmp_path / "c.safetensors")
    assert r.code == 2 and "different layers" in r.err and not (tmp_path / "c.safetensors").exists()
    tensors, meta = load_tensors(six)
    for key, value in (("model", "0123456789abcdef"), ("width", 7)):
        forged = tmp_path / f"{key}.safetensors"
        save_tensors(forged, tensors, meta | {"settings": meta["settings"] | {key: value}})
        out = tmp_path / f"{key}.png"
        r = cli("generate", *TINY, "--blend", "adain_per_dim", "-p", "x", "--style", forged, "-o", out)
        assert r.code == 2 and f"made with {key}" in r.err and len(r.err.strip().splitlines()) == 1
        assert not out.exists()
    for args, message in (
        (["--blend", "adain", "--style", six], "cannot apply"),
        (["--blend", "adain_per_dim", "--vl-layer", "-2", "--style", six], "made with layers"),
    ):
        r = cli("generate", *TINY, "-p", "x", *args, "-o", tmp_path / "g.png")
        assert r.code == 2 and message in r.err and not (tmp_path / "g.png").exists()


# ----------------------------------------------------------------------------------------- composability preset


def test_composability_preset_runs_and_reports_linearity(cli, refs, tmp_path):
    out = tmp_path / "c"
    r = cli("sweep", *TINY, "--preset", "composability", "-p", "a fox", "-i", refs["a"], "-i", refs["b"], "-o", out)
    assert r.code == 0, r.err
    lines = SweepDir(out).lines()
    assert len(lines) == 16 and all(x.status == "ok" for x in lines)  # baseline + 3 blends x (a, b, 3 weights)
    sets = [x for x in lines if "+" in (x.image or "")]
    assert len(sets) == 9
    for x in sets:
        c = x.record["conditioning"]["composition"]
        if x.settings["vl.blend"] in ("interpolate", "adain_per_dim"):  # affine in what they combine, Σw = 1
            assert c["residual"] < 1e-5 and c["cosine"] > 0.99999
        else:  # slerp: spherical, not linear
            assert c["residual"] > 1e-3
    html = (out / "report.html").read_text()
    section = html[html.index('id="composability"') : html.index("<h2>Runs")]
    assert section.count('<tr data-run="') >= 9 and 'data-space="conditioning"' in section
    assert 'data-space="image"' in section and "not measured" not in section


def test_composability_preset_needs_two_images(cli, refs, tmp_path):
    r = cli("sweep", *TINY, "--preset", "composability", "-p", "x", "-i", refs["a"], "--dry-run")
    assert r.code == 2 and "exactly two" in r.err


def test_sweep_runs_on_style_files_with_a_shared_baseline(cli, refs, tmp_path):
    style = tmp_path / "s.safetensors"
    base = ["--models", "tiny", "--blend", "adain_per_dim"]
    assert cli("style", "extract", *base, "-i", refs["a"], "-t", "a fox", "-o", style).code == 0
    out = tmp_path / "s"
    r = cli(
        "sweep",
        *TINY,
        "--blend",
        "adain_per_dim",
        "-p",
        "a fox",
        "--style",
        f"{style}:0.5",
        "--alphas",
        "0.3,0.6",
        "-o",
        out,
    )
    assert r.code == 0, r.err
    lines = SweepDir(out).lines()
    variants = [x for x in lines if x.kind == "variant"]
    assert len(lines) == 3 and len(variants) == 2 and all(x.status == "ok" for x in lines)
    for x in variants:
        assert x.style == [f"{style}:0.5"] and x.record["conditioning"]["styles"][0]["scale"] == 0.5
    r = cli("sweep", *TINY, "-p", "x", "-i", refs["a"], "--style", style, "--dry-run")
    assert r.code == 2 and "instead of 'images'" in r.err


def test_a_sweep_refuses_a_style_file_of_other_settings_before_any_run(cli, refs, tmp_path):
    """A style extracted at layer -6 in a sweep whose blend axis includes a mode of another kind, or at another
    layer: one line naming the run and the setting, exit 2, no run directory (not one failed run per variant)."""
    style = tmp_path / "s.safetensors"
    assert (
        cli("style", "extract", "--models", "tiny", "--blend", "adain_per_dim", "-i", refs["a"], "-o", style).code == 0
    )
    for args, message in (
        (["--blend", "adain_per_dim", "--layers", "-6,-2"], "made with layers"),
        (["--blend", "adain_per_dim", "--blend-modes", "adain_per_dim,adain"], "cannot apply"),
    ):
        out = tmp_path / message.replace(" ", "_")
        r = cli("sweep", *TINY, "-p", "a fox", "--style", style, "--alphas", "0.3", *args, "-o", out)
        assert r.code == 2, r.err
        assert message in r.err and "sweep run '" in r.err and len(r.err.strip().splitlines()) == 1
        assert not out.exists()
