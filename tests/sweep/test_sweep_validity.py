"""Sweeps that cannot mislead: matched baselines, presets and inputs that test what they claim, rankings that never
reward doing nothing, grid_artifact_score only where it measures, and the image-free badge (docs/validity.md §3).

End-to-end runs use the tiny zoo at 32x32 px and 2 steps; report tests use synthetic sweep directories."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llm_dit.config.settings import Config
from llm_dit.core.errors import UserError
from llm_dit.maths.blend import CAPTION_LIMIT, BlendError, align, blend, replace
from llm_dit.report.sweep_report import METRICS as REPORT_METRICS
from llm_dit.report.sweep_report import best_runs, build_report, grid_layout, render_grid, tradeoffs
from llm_dit.scoring.image_metrics import METRICS, grid_artifact_score, pareto_optimal, ssim
from llm_dit.sweep.dir import SweepDir
from llm_dit.sweep.run import RunResult, baseline_of, is_conditioning
from llm_dit.sweep.spec import PRESETS, SweepSpec, expand, resolve_spec, run_config

from ..conftest import REPO
from ..report.test_report import find_color, finish, make_reference, spec_runs, variants
from ..scoring.test_metrics import noise_image, smooth_image, with_lines

REF = REPO / "examples" / "reference-images" / "test_scene.png"
OTHER = REPO / "examples" / "reference-images" / "sunset.png"
TINY = ["--models", "tiny", "--width", "32", "--height", "32"]


def results(d: Path) -> list[RunResult]:
    return SweepDir(d).lines()


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------------------------------- matched baselines


def test_steps_by_alphas_gives_two_baselines_each_variant_names_its_own(cli, zoo, tmp_path):
    out = tmp_path / "s"
    r = cli("sweep", "--steps", "2,4", "--alphas", "0.3,0.6", "-i", REF, "-p", "a house", *TINY, "-o", out)
    assert r.code == 0, r.err
    rows = results(out)
    by_id = {x.id: x for x in rows}
    baselines = [x for x in rows if x.kind == "baseline"]
    assert len(baselines) == 2 and all(x.status == "ok" for x in rows)
    assert sorted(b.record["settings"]["generation.steps"] for b in baselines) == [2, 4]
    for v in (x for x in rows if x.kind == "variant"):
        base = by_id[v.baseline]  # the results line names its baseline ...
        assert base.kind == "baseline"
        assert base.record["settings"]["generation.steps"] == v.record["settings"]["generation.steps"]
    spec_runs_ = json.loads((out / "spec.json").read_text())["runs"]  # ... and so does its run entry
    assert {x["id"]: x["baseline"] for x in spec_runs_ if x["kind"] == "variant"} == {
        x.id: x.baseline for x in rows if x.kind == "variant"
    }
    # ssim_to_baseline is measured against the variant's own baseline, not another one
    metrics = json.loads((out / "metrics.json").read_text())
    for v in (x for x in rows if x.kind == "variant"):
        own = ssim(pixels(out / v.output), pixels(out / by_id[v.baseline].output))
        assert metrics[v.id]["ssim_to_baseline"] == pytest.approx(own, abs=1e-9)
    # the grid: one row per steps value, each starting with its own baseline
    (block,) = grid_layout(rows).blocks
    assert block.row_headers == ["steps=2", "steps=4"] and block.row_groups == [0, 1]
    for row in block.cells:
        base, *vs = [c for c in row if c is not None and c.kind != "reference"]
        assert base.kind == "baseline" and all(by_id[c.run_id].baseline == base.run_id for c in vs)
        assert base.caption == f"text only · steps={by_id[base.run_id].settings['generation.steps']}"


def test_every_non_conditioning_setting_reaches_the_baseline_and_nothing_else():
    axes = {
        "generation.steps": [2, 4],
        "generation.width": [32, 48],
        "generation.shift": [2.0, 3.0],
        "generation.guidance": [0.0, 1.5],
        "generation.strength": [0.5, 0.9],
        "encoder.hidden_layer": [-2, -3],
        "encoder.think_block": [False, True],
        "encoder.long_prompt_mode": ["truncate", "interpolate"],
        "encoder.max_length": [64, 512],
        "encoder.system_prompt": [None, "be brief"],
        "vl.alpha": [0.3, 0.6],
        "vl.hidden_layer": [-2, -6],
    }
    spec = SweepSpec(prompts=["a"], images=["x.png"], init_image="init.png", seeds=[0, 1], axes=axes)
    runs = expand(spec)
    by_id = {r.id: r for r in runs}
    vs = [r for r in runs if r.kind == "variant"]
    bases = [r for r in runs if r.kind == "baseline"]
    assert len(vs) == 2 * 2**12 and len(bases) == 2 * 2**10  # the vl.* axes share baselines; ids are unique
    assert len({r.id for r in runs}) == len(runs)
    base_cfg = Config()
    for v in vs:
        b = by_id[v.baseline]
        assert b == baseline_of(v)
        assert (b.prompt, b.init_image, b.image, b.steer, b.neutral_image) == (
            "a",
            "init.png",
            None,
            None,
            None,
        )
        assert b.settings == {k: x for k, x in v.settings.items() if not is_conditioning(k)}
        vc, bc = run_config(base_cfg, v), run_config(base_cfg, b)
        assert vc.generation == bc.generation and vc.encoder == bc.encoder  # seed included
        assert bc.vl == base_cfg.vl  # no conditioning setting of the variant reaches its baseline


def test_strength_sweep_baseline_is_plain_img2img_at_the_same_strength_and_init_image(cli, zoo, tmp_path):
    out = tmp_path / "img2img"
    args = ["--preset", "strength_sweep", "--strengths", "0.5,1.0", "--steps", "2", "-i", REF, "-p", "a house"]
    assert cli("sweep", *args, *TINY, "-o", out).code == 0
    rows = results(out)
    by_id = {x.id: x for x in rows}
    assert [x.kind for x in rows].count("baseline") == 2
    for v in (x for x in rows if x.kind == "variant"):
        base = by_id[v.baseline]
        assert base.init_image == v.init_image == str(REF) and base.image is None
        assert base.record["img2img"] == v.record["img2img"]  # strength and skipped steps
        assert base.record["conditioning"]["source"] == "text"
        assert v.record["conditioning"]["source"] == "reference"


def test_think_comparison_compares_each_variant_with_a_baseline_of_the_same_template(cli, zoo, tmp_path):
    out = tmp_path / "think"
    assert (
        cli("sweep", "--preset", "think_comparison", "-i", REF, "-p", "a house", *TINY, "--steps", "2", "-o", out).code
        == 0
    )
    rows = results(out)
    by_id = {x.id: x for x in rows}
    vs = [x for x in rows if x.kind == "variant"]
    assert len(vs) == 2 and len({v.baseline for v in vs}) == 2
    rendered = set()
    for v in vs:
        base = by_id[v.baseline]
        assert base.record["settings"]["encoder.think_block"] == v.record["settings"]["encoder.think_block"]
        assert base.record["text"]["rendered"] == v.record["text"]["rendered"]  # same template, same T
        rendered.add(v.record["text"]["rendered"])
    assert len(rendered) == 2  # the think block does change the template


# ---------------------------------------------------------------------------------------- presets and inputs


@pytest.mark.parametrize(
    "args",
    [
        ["--preset", "alpha"],
        ["--preset", "vl_only_vs_qwen3"],
        ["--preset", "steps"],
        ["--alphas", "0.3,0.6"],
        ["--steps", "2,4", "--blend", "interpolate"],
    ],
    ids=["alpha", "vl_only", "steps", "alphas-axis", "fixed-blend"],
)
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_a_conditioning_preset_or_axis_without_a_reference_image_exits_2(cli, tmp_path, args, dry):
    out = tmp_path / "x"
    r = cli("sweep", *args, "-p", "a house", *TINY, "-o", out, *(["--dry-run"] if dry else []))
    assert r.code == 2 and "reference image" in r.err and "'images'" in r.err and "Traceback" not in r.err
    assert not out.exists()


def test_a_text_only_sweep_without_a_reference_image_is_still_allowed(cli, zoo, tmp_path):
    r = cli("sweep", "--steps", "2,4", "-p", "a house", *TINY, "--dry-run", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["runs"] == 2  # no conditioning, so nothing to compare with a baseline


def test_replace_gives_the_dit_the_vl_rows_themselves():
    t, v = torch.randn(5, 8), torch.randn(300, 8)
    assert torch.equal(replace(t, v, 1.0), v)  # every row, bit-exact: not pooled to the 5 text rows
    assert torch.equal(blend(t, v, "replace", 0.0), t)
    long = torch.randn(CAPTION_LIMIT + 37, 8)
    assert torch.equal(replace(t, long, 1.0), align(long, CAPTION_LIMIT, "area"))  # area-pooled only beyond the limit
    assert replace(t, v, 1.0, max_rows=100).shape == (100, 8)
    for alpha in (0.5, 0.99, 2.0):
        with pytest.raises(BlendError, match="replace: alpha must be 0 or 1"):
            replace(t, v, alpha)


def test_vl_only_run_conditions_on_every_vl_row_and_records_it(zoo):
    from llm_dit.config.settings import load_config
    from llm_dit.core.files import load_image
    from llm_dit.generation.generate import Generator

    cfg = load_config(
        overrides={"models.zimage": str(zoo / "zimage"), "models.vl": str(zoo / "qwen3-vl"), "vl.blend": "replace"}
    )
    cfg = cfg.model_copy(update={"vl": cfg.vl.model_copy(update={"alpha": 1.0})})
    gen = Generator(cfg)
    image = load_image(REF, "reference")
    p = gen.prepare("a house", image)
    vl_rows, _ = gen.extract(image, "a house")
    assert vl_rows.shape[0] > 100 > p.encoded.embeddings.shape[0]
    assert torch.equal(p.first, vl_rows.to(p.first.dtype))  # the DiT's caption is V, all its rows
    n = int(vl_rows.shape[0])
    assert p.conditioning.record["replace"] == {"vl_rows": n, "caption_rows": n, "pooled": False}


def test_vl_only_vs_qwen3_uses_replace_and_refuses_to_drop_its_baseline(cli, tmp_path):
    for v in PRESETS["vl_only_vs_qwen3"]["variants"][:2]:
        assert v["vl.blend"] == "replace" and v["vl.alpha"] == 1.0
    r = cli("sweep", "--preset", "vl_only_vs_qwen3", "--no-baseline", "-i", REF, "-p", "a", *TINY, "--dry-run")
    assert r.code == 2 and "baseline" in r.err
    spec = SweepSpec(prompts=["a"], images=["x.png"], baseline=False)
    with pytest.raises(Exception, match="cannot run without baselines"):
        resolve_spec(spec, "vl_only_vs_qwen3", {}, {})


def test_layer_preset_covers_the_depth_and_a_layer_beyond_the_model_is_refused_before_work(cli, zoo, tmp_path):
    layers = PRESETS["layer"]["axes"]["vl.hidden_layer"]
    assert min(layers) <= -30 and max(layers) == -2 and {-15, -20, -25} <= set(layers)
    out = tmp_path / "layer"
    for extra in (["--dry-run"], ["-o", out]):
        r = cli("sweep", "--preset", "layer", "-i", REF, "-p", "a house", *TINY, "--steps", "2", *extra)
        assert r.code == 2, r.err
        assert "-10, -15, -20, -25, -30" in r.err and "8 layers" in r.err and "-9..8" in r.err
        assert not out.exists()  # refused before anything is written
    ok = cli("sweep", "--preset", "layer", "--layers", "-2,-9", "-i", REF, "-p", "a", *TINY, "--dry-run", "--json")
    assert ok.code == 0, ok.err
    assert json.loads(ok.out)["unique_extractions"][0]["layers"] == [-9, -2]


def test_an_injection_block_beyond_the_dit_is_refused_before_work(cli, zoo, tmp_path):
    out = tmp_path / "inj"
    r = cli("sweep", "--alphas", "0.3,0.6", "--inject-layers", "2", "-i", REF, "-p", "a", *TINY, "-o", out)
    assert r.code == 2 and "vl.inject_layers" in r.err and "2 main blocks" in r.err
    assert not out.exists()


@pytest.mark.parametrize("preset", ["multilayer", "inject"])
def test_multilayer_and_injection_presets_run_on_the_tiny_zoo(cli, zoo, tmp_path, preset):
    out = tmp_path / preset
    r = cli("sweep", "--preset", preset, "-i", REF, "-p", "a house", *TINY, "--steps", "2", "-o", out)
    assert r.code == 0, r.err
    rows = results(out)
    assert all(x.status == "ok" for x in rows) and [x.kind for x in rows].count("baseline") == 1
    key = {"multilayer": "vl.layers", "inject": "vl.inject_layers"}[preset]
    vs = [x for x in rows if x.kind == "variant"]
    assert [x.settings[key] for x in vs] == PRESETS[preset]["axes"][key]
    images = [pixels(out / x.output).astype(int) for x in rows]
    assert all(np.abs(a - b).max() > 0 for i, a in enumerate(images) for b in images[i + 1 :])  # each value acted
    if preset == "multilayer":  # every weighted layer was extracted
        for x in vs:
            layers = {part.split(":")[0] for part in x.settings[key].split(",")}
            assert set(x.record["conditioning"]["vl"]) == layers


def test_steps_preset_varies_steps_with_and_without_the_reference():
    runs = expand(resolve_spec(SweepSpec(prompts=["a"], images=["x.png"]), "steps", {}, {}))
    by_id = {r.id: r for r in runs}
    vs = [r for r in runs if r.kind == "variant"]
    assert [r.settings["generation.steps"] for r in vs] == [2, 4, 9]
    for v in vs:  # "without the reference": the matched baseline at the same steps
        assert by_id[v.baseline].settings["generation.steps"] == v.settings["generation.steps"]
        assert not any(is_conditioning(k) for k in by_id[v.baseline].settings)


def test_style_delta_sweep_takes_a_neutral_image_and_gives_it_only_to_style_delta_runs(cli, zoo, tmp_path):
    out = tmp_path / "sd"
    args = ["--blend-modes", "style_delta,interpolate", "--alpha", "0.5", "--neutral-image", OTHER]
    plan = cli("sweep", *args, "-i", REF, "-p", "a house", *TINY, "--dry-run", "--json")
    assert plan.code == 0, plan.err
    assert {e["image"] for e in json.loads(plan.out)["unique_extractions"]} == {str(REF), str(OTHER)}
    r = cli("sweep", *args, "-i", REF, "-p", "a house", *TINY, "--steps", "2", "-o", out)
    assert r.code == 0, r.err
    rows = results(out)
    assert all(x.status == "ok" for x in rows), [x.error for x in rows]
    neutral = {x.settings.get("vl.blend"): x.neutral_image for x in rows if x.kind == "variant"}
    assert neutral == {"style_delta": str(OTHER), "interpolate": None}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--blend-modes", "style_delta,interpolate"], "vl.blend 'style_delta' needs a neutral extraction"),
        (["--preset", "style_delta"], "needs a neutral image"),
        (["--preset", "alpha", "--neutral-image", OTHER], "a neutral extraction only acts with vl.blend 'style_delta'"),
        (["--steps", "2,4", "--neutral-image", OTHER], "no run has one"),
    ],
    ids=["axis-without-neutral", "preset-without-neutral", "neutral-unused-by-blend", "neutral-without-runs"],
)
def test_style_delta_and_neutral_image_must_come_together(cli, zoo, tmp_path, args, message):
    image = [] if "--steps" in args else ["-i", REF]
    r = cli("sweep", *args, *image, "-p", "a", *TINY, "--dry-run")
    assert r.code == 2 and message in r.err, r.err


@pytest.mark.parametrize(
    ("spec", "preset", "key"),
    [
        ({}, None, "'prompts'"),
        ({"prompts": ["a"], "fixed": {"vl.alpha": 0.5}}, None, "'images'"),
        ({"prompts": ["a"], "images": ["x.png"]}, "style_delta", "'neutral_image'"),
        ({"prompts": ["a"]}, "steering", "'steer'"),
        ({"prompts": ["a"], "img2img": True}, None, "'init_image'"),
        ({"prompts": ["a"], "images": ["x.png"], "baseline": False}, "vl_only_vs_qwen3", "baseline = false"),
    ],
    ids=["prompts", "images", "neutral", "steer", "init-image", "baseline"],
)
def test_sweep_api_errors_name_spec_keys_not_cli_flags(spec, preset, key):
    """The API names what to set in the spec (a TOML sweep file or `SweepSpec`); only the CLI knows its flags."""
    with pytest.raises(UserError) as e:
        resolve_spec(SweepSpec(**spec), preset, {}, {})
    assert key in str(e.value) and not re.search(r"(^|[\s(/])--?[a-z]", str(e.value)), str(e.value)


def test_style_delta_preset_exists_with_alphas_in_its_range():
    p = PRESETS["style_delta"]
    assert p["fixed"]["vl.blend"] == "style_delta" and max(p["axes"]["vl.alpha"]) > 1.0  # [0, 2]: > 1 extrapolates


def test_sweep_fixed_outlier_threshold_and_reference_stats_reach_every_run(cli, zoo, tmp_path):
    stats = REPO / "src" / "llm_dit" / "data" / "qwen3-4b_layer-2_stats.safetensors"
    args = ["--alphas", "0.3,0.6", "--outlier-threshold", "5", "--reference-stats", stats, "-i", REF, "-p", "a"]
    r = cli("sweep", *args, *TINY, "--dry-run", "--json")
    assert r.code == 0, r.err
    vs = [x for x in json.loads(r.out)["run_list"] if x["kind"] == "variant"]
    assert len(vs) == 2
    for v in vs:
        assert v["settings"]["vl.outlier_threshold"] == 5.0 and v["settings"]["vl.reference_stats"] == str(stats)


def test_normalization_preset_has_no_image_free_by_construction_run():
    runs = expand(resolve_spec(SweepSpec(prompts=["a"], images=["x.png"]), "normalization", {}, {}))
    configs = [run_config(Config(), r).vl for r in runs if r.kind == "variant"]
    assert {c.normalize for c in configs} == {"none", "global", "per_dim", "hybrid"}
    assert not any(c.normalize == "per_dim" and c.blend == "adain_per_dim" for c in configs)


def test_list_presets_says_what_each_preset_needs(cli):
    r = cli("sweep", "--list-presets")
    lines = {line.split()[0]: line for line in r.out.strip().splitlines()}
    assert set(lines) == set(PRESETS)
    assert lines["alpha"].endswith("needs -i") and lines["steering"].endswith("needs --steer")
    assert lines["style_delta"].endswith("needs -i, --neutral-image")
    assert lines["think_comparison"].endswith("needs nothing")


# ---------------------------------------------------------------------------------------- rankings


def test_every_metric_says_what_it_measures_and_only_defects_and_quality_are_ranked():
    assert METRICS is REPORT_METRICS  # one registry for the scorer and the report
    kinds = ("prompt_adherence", "style_similarity", "content_leak", "content_kept", "quality", "defect", "descriptive")
    for info in METRICS.values():
        assert info.kind in kinds and info.measures
        assert info.ranked == (info.kind in ("defect", "quality"))
    assert not METRICS["ssim_to_baseline"].ranked and METRICS["ssim_to_baseline"].kind == "content_kept"
    assert not METRICS["color_hist_similarity"].ranked and METRICS["color_hist_similarity"].kind == "style_similarity"
    assert METRICS["clip_i"].kind == METRICS["csd"].kind == "style_similarity"
    assert METRICS["clip_t"].kind == METRICS["siglip_t"].kind == "prompt_adherence"
    assert METRICS["dino_leak"].kind == "content_leak" and METRICS["dino_leak"].higher_is_better is False
    assert METRICS["dino_kept"].kind == "content_kept" and METRICS["dino_kept"].needs == "baseline"
    assert METRICS["grid_artifact_score"].ranked and METRICS["image_reward"].ranked


def test_pareto_optimal_on_known_points():
    # (content, style): (1, 0) keeps most content; (0, 1) takes most style; (0.5, 0.5) in between; (0.4, 0.4) and
    # (1, 0) duplicated are dominated / equal
    points = [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0), (0.4, 0.4), (0.5, 0.2), (1.0, 0.0)]
    assert pareto_optimal(points) == [True, True, True, False, False, True]
    assert pareto_optimal([]) == []


def ranked_sweep(tmp_path: Path) -> tuple[Path, list[dict], dict[str, str]]:
    """An alpha sweep where doing little scores best on content, the strongest run on style, and an image-free run
    has the fewest grid artefacts: a ranking that rewarded any of these would mislead."""
    runs = spec_runs(PRESETS["alpha"], images=[str(make_reference(tmp_path))])
    vs = {r.settings["vl.alpha"]: r.id for r in variants(runs)}
    base = next(r.id for r in runs if r.kind == "baseline")
    metrics = {
        base: {"grid_artifact_score": -1.0, "color_hist_similarity": 0.9},
        vs[0.1]: {"ssim_to_baseline": 0.99, "color_hist_similarity": 0.10, "grid_artifact_score": 0.30},
        vs[0.3]: {"ssim_to_baseline": 0.90, "color_hist_similarity": 0.40, "grid_artifact_score": 0.20},
        vs[0.5]: {"ssim_to_baseline": 0.80, "color_hist_similarity": 0.30, "grid_artifact_score": 0.10},
        vs[0.7]: {"ssim_to_baseline": 0.70, "color_hist_similarity": 0.90, "grid_artifact_score": 0.05},
        vs[1.0]: {"ssim_to_baseline": 0.99, "color_hist_similarity": 0.95, "grid_artifact_score": None},
    }
    sweep = tmp_path / "sweep"
    finish(sweep, runs, metrics=metrics)
    set_image_dependence(sweep, {vs[0.7]: True, vs[0.1]: False})
    return sweep, runs, {str(a): rid for a, rid in vs.items()} | {"base": base}


def set_image_dependence(sweep: Path, image_free: dict[str, bool]) -> None:
    """Give runs the `image_dependence` record engineer B's check writes (contract in issue 11)."""
    lines = []
    for line in (sweep / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)  # the record on disk, as the check writes it
        if rec["id"] in image_free:
            rec["record"]["image_dependence"] = {
                "checked": True,
                "image_free": image_free[rec["id"]],
                "relative_change": 1e-7 if image_free[rec["id"]] else 0.25,
                "tolerance": 1e-4,
                "probe": "noise",
                "reason": None,
            }
        lines.append(json.dumps(rec))
    (sweep / "results.jsonl").write_text("\n".join(lines) + "\n")


def test_report_ranks_no_baseline_no_image_free_run_and_no_style_or_content_metric(tmp_path):
    sweep, _, ids = ranked_sweep(tmp_path)
    runs = SweepDir(sweep).runs()
    metrics = json.loads((sweep / "metrics.json").read_text())
    best, skipped = best_runs(runs, metrics)
    # the baseline (-1.0) and the image-free alpha 0.7 (0.05) have fewer artefacts, alpha 1.0 was not measured
    # ranked by effect against the shared baseline (-1.0): 0.5's +1.10 beats 0.3's +1.20 and 0.1's +1.30
    assert [(b.metric, b.run_id, b.value, b.baseline_id) for b in best] == [
        ("grid_artifact_score", ids["0.5"], 0.10, ids["base"])
    ]
    assert best[0].effect == pytest.approx(1.10) and best[0].compared == 3
    assert "doing nothing scores best" in skipped["ssim_to_baseline"] and "style" in skipped["color_hist_similarity"]
    text = build_report(sweep)[1].read_text()
    assert dict(re.findall(r'<tr class="best" data-metric="([^"]+)" data-run="([^"]+)"', text)) == {
        "grid_artifact_score": ids["0.5"]
    }


def test_report_shows_style_against_content_as_a_pareto_front(tmp_path):
    sweep, _, ids = ranked_sweep(tmp_path)
    runs = SweepDir(sweep).runs()
    (t,) = tradeoffs(runs, json.loads((sweep / "metrics.json").read_text()))
    assert (t.style, t.content) == ("color_hist_similarity", "ssim_to_baseline")
    front = {rid: optimal for rid, _, _, optimal in t.points}
    # candidates: 0.1 (0.99, 0.10), 0.3 (0.90, 0.40), 0.5 (0.80, 0.30), 1.0 (0.99, 0.95); 0.7 is image-free
    assert front == {ids["0.1"]: False, ids["0.3"]: False, ids["0.5"]: False, ids["1.0"]: True}
    text = build_report(sweep)[1].read_text()
    section = text[text.index('id="tradeoff"') :]
    assert "not a ranking" in text and "<svg" in section
    assert re.findall(r'<tr data-run="([0-9a-f]+)" data-pareto="true"', section) == [ids["1.0"]]
    assert ids["0.7"] not in re.findall(r'<tr data-run="([0-9a-f]+)" data-pareto', section)
    assert ids["base"] not in re.findall(r'<tr data-run="([0-9a-f]+)" data-pareto', section)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_grid_artifact_score_is_valid_or_not_measured_at_small_sizes(size):
    noise = noise_image(size, size, sigma=0.03)
    smooth = smooth_image(size, size)
    scores = {
        "noise": grid_artifact_score(noise),
        "smooth": grid_artifact_score(smooth),
        "grid32": grid_artifact_score(with_lines(noise, 32)),
        "grid32_shifted": grid_artifact_score(with_lines(noise, 32, offset=19)),
        "grid24": grid_artifact_score(with_lines(noise, 24)),
    }
    if size < 128:  # two periods: no noise floor between the harmonics, so no number at all
        assert all(v is None for v in scores.values())
        return
    assert abs(scores["noise"]) < 0.15 and abs(scores["smooth"]) < 0.15
    assert scores["grid32"] - scores["noise"] > 0.8 and scores["grid32_shifted"] - scores["noise"] > 0.8
    assert scores["grid24"] - scores["noise"] < 0.35 * (scores["grid32"] - scores["noise"])


def test_an_unmeasured_metric_reads_not_measured_in_the_report(tmp_path):
    sweep, _, ids = ranked_sweep(tmp_path)
    text = build_report(sweep)[1].read_text()
    row = re.search(rf'<tr data-run="{ids["1.0"]}">(.*?)</tr>', text, re.S).group(1)
    assert "not measured" in row


# ---------------------------------------------------------------------------------------- image-free badge

BADGE = (235, 110, 0)


def test_image_free_runs_carry_a_badge_in_the_grid_and_the_report(tmp_path):
    sweep, _, ids = ranked_sweep(tmp_path)  # alpha 0.7 is image-free, alpha 0.1 checked and image-dependent
    cell = next(c for c in grid_layout(SweepDir(sweep).runs()).run_cells() if c.run_id == ids["0.7"])
    assert cell.badge == "IMAGE-FREE"
    assert [c.run_id for c in grid_layout(SweepDir(sweep).runs()).run_cells() if c.badge] == [ids["0.7"]]
    grid = np.asarray(render_grid(sweep, SweepDir(sweep).runs(), thumb=128))
    with Image.open(sweep / "images" / f"{ids['0.7']}.png") as im:
        color = im.convert("RGB").getpixel((0, 0))
    left, top, right, _, _ = find_color(grid, color)
    b_left, b_top, b_right, b_bottom, count = find_color(grid, BADGE, tol=0)
    assert count > 200  # a visible badge ...
    assert left <= b_left and b_right <= right and top - 20 <= b_top and b_bottom <= top + 20  # ... on that image only
    text = build_report(sweep)[1].read_text()
    table = re.search(r'<table class="sortable" id="runs">(.*?)</table>', text, re.S).group(1)
    badged = re.findall(r'<tr data-run="([0-9a-f]+)">((?:(?!</tr>).)*?class="badge")', table, re.S)
    assert [rid for rid, _ in badged] == [ids["0.7"]]
    free = re.search(rf'<tr data-run="{ids["0.7"]}">(.*?)</tr>', table, re.S).group(1)
    kept = re.search(rf'<tr data-run="{ids["0.1"]}">(.*?)</tr>', table, re.S).group(1)
    assert "IMAGE-FREE</span> (relative change 1e-07)" in free and "<td>no (relative change 0.25)</td>" in kept
